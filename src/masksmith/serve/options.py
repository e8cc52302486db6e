"""The server's settings: batching, queue, limits, binding and token, each checked once at startup."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from masksmith.errors import ConfigError

# PIL format names an upload may have (what `predict` reads from files, less .npy arrays).
ACCEPTED_FORMATS = ("PNG", "JPEG", "MPO", "TIFF", "BMP", "WEBP", "GIF")
# 25 megapixels: a large photo; its float tensors and probabilities stay within a few hundred MB.
DEFAULT_MAX_PIXELS = 25_000_000
DEFAULT_MAX_UPLOAD_BYTES = 32 * 1024 * 1024
AUTO_BATCH_LIMIT = 8  # the largest batch size tried when --max-batch is measured at startup
SERVE_DEVICES = ("cpu", "cuda", "auto")


@dataclass(frozen=True)
class ServeOptions:
    """How `masksmith serve` batches, queues and limits requests, and where it listens."""

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    max_batch: int | None = None  # None: the batch size with the most images/s, measured at startup
    max_wait_ms: float = 5.0
    max_queue: int = 64
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    timeout_s: float = 30.0
    threads: int | None = None
    device: str = "cpu"  # where the PyTorch backend runs: cpu, cuda, or auto (cuda when there is one)
    formats: tuple[str, ...] = ACCEPTED_FORMATS

    def __post_init__(self) -> None:
        positive = {"max_batch": 1 if self.max_batch is None else self.max_batch, "max_queue": self.max_queue,
                    "max_upload_bytes": self.max_upload_bytes, "max_pixels": self.max_pixels}
        for name, value in positive.items():
            if int(value) < 1:
                raise ConfigError(f"serve: {name} must be at least 1, got {value}")
        if self.max_wait_ms < 0:
            raise ConfigError(f"serve: max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.timeout_s <= 0:
            raise ConfigError(f"serve: timeout must be a positive number of seconds, got {self.timeout_s}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"serve: port must be 0..65535, got {self.port}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"serve: threads must be at least 1, got {self.threads}")
        if self.device not in SERVE_DEVICES:
            raise ConfigError(f"serve: device must be one of {', '.join(SERVE_DEVICES)}, got {self.device!r}")
        if self.token is not None and not self.token.strip():
            raise ConfigError("serve: --token is empty")
        unknown = sorted(set(self.formats) - set(ACCEPTED_FORMATS))
        if unknown:
            raise ConfigError(f"serve: unknown image formats {unknown}; choose from {', '.join(ACCEPTED_FORMATS)}")
        if not is_loopback(self.host) and self.token is None:
            # Anyone who can reach the port could run the model (and read its card): require a secret.
            raise ConfigError(f"serve: binding to {self.host} exposes the model beyond this machine; "
                              "give --token SECRET (clients send 'Authorization: Bearer SECRET')")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost': addresses only this machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface
