"""Running the app under uvicorn: bind, say where and what is served, drain in-flight requests on Ctrl-C."""

from __future__ import annotations

import logging
import socket
import sys
from pathlib import Path
from typing import TextIO

from masksmith.errors import ConfigError
from masksmith.serve import require_serve_extra
from masksmith.serve.options import ServeOptions


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0: a free one), with a clear error when the address is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit this. uvicorn given a socket does not set it, and without it every
    # keep-alive response waited ~40 ms for the client's delayed ACK (Nagle's algorithm).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise ConfigError(f"serve: cannot listen on {host}:{port} ({error.strerror or error})") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    """http://HOST:PORT/ of a bound socket."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def serve(model_path: str | Path, options: ServeOptions, *, backend: str | None = None, access_log: bool = True,
          out: TextIO = sys.stdout) -> None:
    """Load the model, print the URL, model, backend and threads, and serve until Ctrl-C (which drains)."""
    require_serve_extra()
    import uvicorn

    from masksmith.serve.app import create_app
    from masksmith.serve.model import ServedModel

    model = ServedModel.load(model_path, backend=backend, threads=options.threads, device=options.device)
    app = create_app(model, options)
    sock = bind(options.host, options.port)
    url = url_of(sock)
    meta = model.predictor.meta
    page = f"{url}?token=…" if options.token else url
    print(f"masksmith serve: {url}  (web page {page}, API {url}v1/segment)", file=out)
    print(f"  model    {model_path}  id {model.model_id}  ({meta.num_classes} classes: "
          f"{', '.join(meta.class_names[:6])}{' …' if meta.num_classes > 6 else ''})", file=out)
    batches = f"batches up to {options.max_batch} images" if options.max_batch else "batch size measured at startup"
    print(f"  backend  {model.predictor.backend_name} on {model.predictor.device}, {model.threads} threads; {batches} "
          f"(wait {options.max_wait_ms:g} ms), queue {options.max_queue}", file=out)
    print(f"  limits   {options.max_upload_bytes / 2**20:g} MiB upload, {options.max_pixels} pixels, "
          f"{options.timeout_s:g} s per request{'; token required' if options.token else ''}", file=out)
    print("  Ctrl-C stops accepting requests and finishes those in flight", file=out, flush=True)
    logging.getLogger("masksmith.serve").setLevel(logging.INFO)
    config = uvicorn.Config(app, log_level="info", access_log=access_log, lifespan="on",
                            # Ctrl-C: wait for requests in flight, at most one request time limit.
                            timeout_graceful_shutdown=int(options.timeout_s) + 1)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
