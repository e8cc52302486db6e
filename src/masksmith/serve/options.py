"""The server's settings: batching, queue, limits, binding and token, each checked once at startup."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from masksmith.errors import ConfigError
from masksmith.inference.work_budget import DEFAULT_MAX_ASPECT, DEFAULT_SERVE_WORK_MB, MB, WorkBudget

# PIL format names an upload may have (what `predict` reads from files, less .npy arrays).
ACCEPTED_FORMATS = ("PNG", "JPEG", "MPO", "TIFF", "BMP", "WEBP", "GIF")
# 25 megapixels: a large photo; its float tensors and probabilities stay within a few hundred MB.
DEFAULT_MAX_PIXELS = 25_000_000
DEFAULT_MAX_UPLOAD_BYTES = 32 * 1024 * 1024
AUTO_BATCH_LIMIT = 8  # the largest batch size tried when --max-batch is measured at startup
# Open connections at once; kept below the process's descriptor limit (raised at startup), so accept()
# never fails for want of descriptors.
DEFAULT_MAX_CONNECTIONS = 256
# Seconds a client has to send a request's headers (from connecting, or from the end of the previous answer).
DEFAULT_HEADER_TIMEOUT_S = 10.0
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
    max_work_bytes: int = DEFAULT_SERVE_WORK_MB * MB  # the work budget of one image (inference.work_budget)
    max_aspect: float = DEFAULT_MAX_ASPECT
    timeout_s: float = 30.0
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    threads: int | None = None
    device: str = "cpu"  # where the PyTorch backend runs: cpu, cuda, or auto (cuda when there is one)
    formats: tuple[str, ...] = ACCEPTED_FORMATS

    def __post_init__(self) -> None:
        positive = {"max_batch": 1 if self.max_batch is None else self.max_batch, "max_queue": self.max_queue,
                    "max_upload_bytes": self.max_upload_bytes, "max_pixels": self.max_pixels,
                    "max_connections": self.max_connections}
        for name, value in positive.items():
            if int(value) < 1:
                raise ConfigError(f"serve: {name} must be at least 1, got {value}")
        if self.max_wait_ms < 0:
            raise ConfigError(f"serve: max_wait_ms must be >= 0, got {self.max_wait_ms}")
        for name, seconds in (("timeout", self.timeout_s), ("header_timeout", self.header_timeout_s)):
            if not seconds > 0:
                raise ConfigError(f"serve: {name} must be a positive number of seconds, got {seconds}")
        WorkBudget(self.max_work_bytes, self.max_aspect)  # a ConfigError for a limit below its minimum
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"serve: port must be 0..65535, got {self.port}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"serve: threads must be at least 1, got {self.threads}")
        if self.device not in SERVE_DEVICES:
            raise ConfigError(f"serve: device must be one of {', '.join(SERVE_DEVICES)}, got {self.device!r}")
        unknown = sorted(set(self.formats) - set(ACCEPTED_FORMATS))
        if unknown:
            raise ConfigError(f"serve: unknown image formats {unknown}; choose from {', '.join(ACCEPTED_FORMATS)}")
        # Anyone who can reach the port could run the model (and read its card): require a secret.
        check_binding(self.host, self.token, "serve", "the model")

    @property
    def budget(self) -> WorkBudget:
        """The work budget every upload is checked against, from its header, before decoding."""
        return WorkBudget(self.max_work_bytes, self.max_aspect)


def check_binding(host: str, token: str | None, command: str, exposed: str) -> None:
    """The one rule for where a masksmith server listens: loopback freely, any other address only with a token."""
    if token is not None and not token.strip():
        raise ConfigError(f"{command}: --token is empty")
    if not is_loopback(host) and token is None:
        raise ConfigError(f"{command}: binding to {host} exposes {exposed} beyond this machine; "
                          "give --token SECRET (clients send 'Authorization: Bearer SECRET')")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost': addresses only this machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface
