"""The options of `masksmith serve`: one model, the source of its flags, help and docs table.

Each default is ServeOptions' (serve/options.py, which owns the server's limits), shown in the units the
command line takes (MiB for byte limits)."""

from __future__ import annotations

from pydantic import Field

from masksmith.core.command_config import CommandConfig, extra
from masksmith.inference.backend_choice import BACKEND_HELP, DEFAULT_BACKEND
from masksmith.inference.backend_choice import CHOICES as BACKEND_CHOICES
from masksmith.inference.work_budget import MB
from masksmith.serve.options import AUTO_BATCH_LIMIT, SERVE_DEVICES, ServeOptions

_DEFAULT = ServeOptions()


class ServeConfig(CommandConfig):
    """Every option of `masksmith serve`; ServeOptions checks their values when the server is configured."""

    COMMAND = "serve"

    host: str = Field(_DEFAULT.host, description="address to listen on; anything but loopback needs --token")
    port: int = Field(_DEFAULT.port, description="TCP port (0: a free one)")
    token: str | None = Field(_DEFAULT.token, description="bearer token required on every route but /healthz",
                              json_schema_extra=extra(envvar="MASKSMITH_SERVE_TOKEN"))
    backend: str = Field(DEFAULT_BACKEND, description=BACKEND_HELP, json_schema_extra=extra(choices=BACKEND_CHOICES))
    threads: int | None = Field(_DEFAULT.threads, description="compute threads",
                                json_schema_extra=extra(default_text="one per physical core"))
    device: str = Field(_DEFAULT.device, description="where the torch backend runs (onnx: the CPU)",
                        json_schema_extra=extra(choices=SERVE_DEVICES))
    max_batch: int | None = Field(_DEFAULT.max_batch, description="most images run together in one batch "
                                  "(1: batching off)", json_schema_extra=extra(
                                      default_text=f"the size of 1..{AUTO_BATCH_LIMIT} with the most images/s, "
                                                   "measured at startup"))
    max_wait_ms: float = Field(_DEFAULT.max_wait_ms, description="how long a request may wait for others to batch with")
    max_queue: int = Field(_DEFAULT.max_queue, description="waiting requests before new ones get 503 + Retry-After")
    max_upload_mb: float = Field(_DEFAULT.max_upload_bytes / MB, description="largest request body in MiB (413 above)")
    max_pixels: int = Field(_DEFAULT.max_pixels, description="largest image in pixels, refused from its header (413)")
    max_work_mb: float = Field(_DEFAULT.max_work_bytes / MB, description="most MiB predicting one image may "
                               "allocate, estimated from its header (413 above; the estimate counts tiles, logits "
                               "and the answer)")
    max_aspect: float = Field(_DEFAULT.max_aspect, description="most extreme aspect ratio (long side / short side) "
                              "accepted (413)")
    timeout: float = Field(_DEFAULT.timeout_s, description="seconds a request may take before it is answered 408")
    header_timeout: float = Field(_DEFAULT.header_timeout_s, description="seconds a client has to send a request's "
                                  "headers (408, closed)")
    max_connections: int = Field(_DEFAULT.max_connections, description="open connections at once; more get 503 and "
                                 "are closed")
    quiet: bool = Field(False, description="no access log", json_schema_extra=extra("-q"))

    def serve_options(self) -> ServeOptions:
        """The server's settings (checked there: a ConfigError names the first bad one)."""
        return ServeOptions(host=self.host, port=self.port, token=self.token, max_batch=self.max_batch,
                            max_wait_ms=self.max_wait_ms, max_queue=self.max_queue,
                            max_upload_bytes=int(self.max_upload_mb * MB), max_pixels=self.max_pixels,
                            max_work_bytes=int(self.max_work_mb * MB), max_aspect=self.max_aspect,
                            timeout_s=self.timeout, header_timeout_s=self.header_timeout,
                            max_connections=self.max_connections, threads=self.threads, device=self.device)
