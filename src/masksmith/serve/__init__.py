"""`masksmith serve`: an HTTP API and a web page for a model bundle (.msb) or ONNX export (.onnx).

Needs the serve extra (FastAPI, uvicorn, python-multipart); `require_serve_extra` says so in one
line when it is missing. The modules below import FastAPI, so import them after that check.
"""

from __future__ import annotations

import importlib.util

from masksmith.errors import MasksmithError

SERVE_PACKAGES = {"fastapi": "fastapi", "uvicorn": "uvicorn", "python_multipart": "python-multipart"}


def require_serve_extra() -> None:
    """Raise a one-line MasksmithError naming the pip install when a serve dependency is missing."""
    missing = [name for module, name in SERVE_PACKAGES.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise MasksmithError(f"masksmith serve needs {', '.join(missing)}: pip install 'masksmith[serve]'")
