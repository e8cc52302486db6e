"""`masksmith label DATA [--model RUN/model.msb]`: open the dataset and the model, print where, and serve."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from masksmith.data.encoding import describe_encoding
from masksmith.errors import ConfigError
from masksmith.serve import require_serve_extra
from masksmith.serve.label.config import DEFAULT_MAX_UPLOAD_BYTES, DEFAULT_PORT
from masksmith.serve.label.store import LabelOptions
from masksmith.serve.options import DEFAULT_HEADER_TIMEOUT_S, DEFAULT_MAX_CONNECTIONS, check_binding
from masksmith.serve.server import bind, connection_room, run_app, server_config, url_of

REQUEST_TIMEOUT_S = 30.0  # a request's time limit: what Ctrl-C waits at most for requests in flight


def label(data: str | Path, model_path: str | Path | None = None, options: LabelOptions = LabelOptions(), *,
          host: str = "127.0.0.1", port: int = DEFAULT_PORT, token: str | None = None, threads: int | None = None,
          max_upload_bytes: int | None = None, access_log: bool = True, out: TextIO = sys.stdout) -> None:
    """Serve the labelling page for DATA until Ctrl-C."""
    require_serve_extra()
    from masksmith.serve.label.app import Session, create_app
    from masksmith.serve.label.store import LabelStore
    from masksmith.serve.model import ServedModel

    check_binding(host, token, "label", f"the images and masks of {data}")
    if not 0 <= port <= 65535:
        raise ConfigError(f"label: port must be 0..65535, got {port}")
    if threads is not None and threads < 1:
        raise ConfigError(f"label: threads must be at least 1, got {threads}")
    connections = connection_room(DEFAULT_MAX_CONNECTIONS)
    model = ServedModel.load(model_path, threads=threads) if model_path is not None else None
    store = LabelStore.open(data, options, model.predictor.meta if model is not None else None)
    session = Session(store, str(data), options, model, max_upload_bytes=max_upload_bytes or DEFAULT_MAX_UPLOAD_BYTES,
                      threads=threads)
    app = create_app(session, token)
    sock = bind(host, port)
    url = url_of(sock)
    labels = store.labels
    summary = session.summary()
    print(f"masksmith label: {url}{'?token=…' if token else ''}", file=out)
    print(f"  data     {data}: {summary['images']} images, {summary['done']} with a mask; "
          f"{labels.num_classes} classes, {describe_encoding(labels.encoding)}", file=out)
    for reason in store.listing.left_out[:5]:
        print(f"  left out {reason}", file=out)
    if len(store.listing.left_out) > 5:
        print(f"  left out … and {len(store.listing.left_out) - 5} more", file=out)
    if model is not None:
        print(f"  model    {model_path}  id {model.model_id}: predicting every image in the background", file=out)
    print(f"  retrain  {session.command()}", file=out)
    print("  Ctrl-C stops the server", file=out, flush=True)
    run_app(server_config(app, timeout_s=REQUEST_TIMEOUT_S, header_timeout_s=DEFAULT_HEADER_TIMEOUT_S,
                          max_connections=connections, access_log=access_log), sock)
