"""Running the app under uvicorn: bind, say where and what is served, drain in-flight requests on Ctrl-C.

uvicorn runs with masksmith's h11 protocol (serve.connections: header and body deadlines, a connection
cap kept below the process's descriptor limit) and an access log that never shows the token.
"""

from __future__ import annotations

import logging
import re
import resource
import socket
import sys
from pathlib import Path
from typing import Any, TextIO

from masksmith.errors import ConfigError
from masksmith.serve import require_serve_extra
from masksmith.serve.options import ServeOptions

# Descriptors kept for everything but client connections: the listening socket, the event loop, log
# files, the static files being sent, the model's and the thread pools' own.
DESCRIPTOR_RESERVE = 64
# The listen backlog, which is also how many connections asyncio accepts in one turn of the event loop,
# before any of them can be counted and refused: a larger one lets one burst of clients take that many
# descriptors at once, and accept() then fails for want of them.
ACCEPT_BATCH = 128
# Seconds a body may take beyond --timeout: the request's own 408 comes first, the deadline only closes
# a connection whose body still trickles in after it.
BODY_GRACE_S = 1.0


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
    sock.listen(ACCEPT_BATCH)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    """http://HOST:PORT/ of a bound socket."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


class RedactToken(logging.Filter):
    """Blanks the value of a token=... query parameter in log lines (the access log prints every query)."""

    PATTERN = re.compile(r"(?i)([?&;]token=)[^&;\s\"]*")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self.PATTERN.sub(r"\1[redacted]", arg) if isinstance(arg, str) else arg
                                for arg in record.args)
        if isinstance(record.msg, str):
            record.msg = self.PATTERN.sub(r"\1[redacted]", record.msg)
        return True


def connection_room(wanted: int) -> int:
    """Connections the process can hold open: raises the soft descriptor limit toward the hard one to fit
    `wanted`, then leaves DESCRIPTOR_RESERVE descriptors for everything else, MAX_REFUSING for
    connections being refused, and two accept batches for connections not yet counted."""
    from masksmith.serve.connections import MAX_REFUSING

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    others = DESCRIPTOR_RESERVE + MAX_REFUSING + 2 * ACCEPT_BATCH
    needed = wanted + others
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass  # keep the soft limit there is
    room = wanted if soft == resource.RLIM_INFINITY else min(wanted, soft - others)
    if room < 1:
        raise ConfigError(f"serve: this process may open only {soft} files, too few to serve connections "
                          f"(raise it with ulimit -n to at least {needed})")
    return room


def server_config(app: Any, *, timeout_s: float, header_timeout_s: float, max_connections: int,
                  access_log: bool = True, log_level: str = "info") -> Any:
    """The uvicorn.Config masksmith's servers run with (`serve`, `label`, the tests' live servers): the
    limited h11 protocol, the accept backlog, a drain on Ctrl-C and the token-blind access log."""
    import uvicorn

    from masksmith.serve.connections import ConnectionLimits, limited_protocol

    limits = ConnectionLimits(max_connections, header_timeout_s, timeout_s + BODY_GRACE_S)
    config = uvicorn.Config(app, http=limited_protocol(limits), log_level=log_level, access_log=access_log,
                            lifespan="on", backlog=ACCEPT_BATCH,
                            # Ctrl-C: wait for requests in flight, at most one request time limit.
                            timeout_graceful_shutdown=int(timeout_s) + 1)
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(existing, RedactToken) for existing in access.filters):
        access.addFilter(RedactToken())
    return config


def serve(model_path: str | Path, options: ServeOptions, *, backend: str | None = None, access_log: bool = True,
          out: TextIO = sys.stdout) -> None:
    """Load the model, print the URL, model, backend and threads, and serve until Ctrl-C (which drains)."""
    require_serve_extra()
    from masksmith.serve.app import create_app
    from masksmith.serve.model import ServedModel

    connections = connection_room(options.max_connections)
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
          f"{options.max_work_bytes / 2**20:g} MiB of work and aspect {options.max_aspect:g}:1 per image, "
          f"{options.timeout_s:g} s per request{'; token required' if options.token else ''}", file=out)
    fewer = (f" (the descriptor limit allows no more than {connections})"
             if connections < options.max_connections else "")
    print(f"  clients  {connections} connections at once{fewer}, headers within {options.header_timeout_s:g} s",
          file=out)
    print("  Ctrl-C stops accepting requests and finishes those in flight", file=out, flush=True)
    run_app(server_config(app, timeout_s=options.timeout_s, header_timeout_s=options.header_timeout_s,
                          max_connections=connections, access_log=access_log), sock)


def run_app(config: Any, sock: socket.socket) -> None:
    """Serve a uvicorn.Config (server_config) on a bound socket until Ctrl-C, which drains requests in
    flight (`masksmith serve` and `masksmith label` both run here); closes the socket."""
    require_serve_extra()
    import uvicorn

    logging.getLogger("masksmith.serve").setLevel(logging.INFO)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
