"""The routes of `masksmith label`: the page, the queue, an image and its mask, saves, the assist, the model.

The page names images by id only (layout.image_id); no route takes a path. Masks travel as zlib-deflated
bytes of class indices, row by row (the browser's CompressionStream("deflate") makes and reads them), with
the size in the query or the X-Mask-Width/-Height headers; an upload may also be a class-index PNG.
Without a token, requests must name a loopback Host (a web page cannot rebind its domain to this port),
and a POST from a browser must come from the page's own origin.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shlex
import zlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, AsyncIterator
from urllib.parse import urlsplit

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from masksmith.errors import MasksmithError
from masksmith.serve.guard import Guard
from masksmith.serve.label.assist import region_document
from masksmith.serve.label.config import DEFAULT_MAX_UPLOAD_BYTES
from masksmith.serve.label.layout import Entry
from masksmith.serve.label.predictions import Prediction, Predictions
from masksmith.serve.label.store import NO_MASK, STARTS, Conflict, LabelOptions, LabelStore, decode_png_mask
from masksmith.serve.model import ServedModel, file_checksum
from masksmith.serve.options import is_loopback
from masksmith.serve.upload import Rejected, read_body

log = logging.getLogger("masksmith.serve")
STATIC = resources.files("masksmith.serve.label") / "static"
SERVE_STATIC = resources.files("masksmith.serve") / "static"
ID = re.compile(r"[0-9a-f]{16}")
DONE_STATES = ("labelled", "corrected", "drawn")
MASK_TYPE = "application/octet-stream"


@dataclass
class Session:
    """What the routes share: the dataset, the model and its predictions, and the retraining command."""

    store: LabelStore
    data: str  # DATA as given on the command line, for the command the page shows
    options: LabelOptions = field(default_factory=LabelOptions)
    model: ServedModel | None = None
    predictions: Predictions | None = None
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    threads: int | None = None
    runs: Path = Path("runs")  # where the next training run goes when there is no model yet
    _next_run: Path | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.model is not None and self.predictions is None:
            self.predictions = self._predictions_of(self.model)

    def _predictions_of(self, model: ServedModel) -> Predictions:
        return Predictions(model, list(self.store.entries.values()), self.prediction_order)

    # --- the queue --------------------------------------------------------------------------------------

    def state(self, entry: Entry) -> str:
        """The store's state, or 'predicted' for an image without mask whose prediction is ready."""
        state = self.store.state(entry)
        if state == "unlabelled" and self.predictions is not None and entry.id in self.predictions.scores:
            return "predicted"
        return state

    def queue(self) -> list[dict[str, Any]]:
        """Every image with its state, unlabelled first, each part most uncertain first (then by name)."""
        scores = dict(self.predictions.scores) if self.predictions is not None else {}
        rows = []
        for entry in self.store.entries.values():
            state = self.state(entry)
            score = scores.get(entry.id)
            rows.append({"id": entry.id, "name": entry.relative, "state": state,
                         "entropy": None if score is None else round(score[0], 6),
                         "uncertain": None if score is None else round(score[1], 6)})

        def key(row: dict[str, Any]) -> tuple:
            scored = row["entropy"] is not None
            return (row["state"] in DONE_STATES, not scored, -(row["entropy"] or 0.0), -(row["uncertain"] or 0.0),
                    row["name"])

        return sorted(rows, key=key)

    def prediction_order(self) -> list[str]:
        """Images to predict first: those without a mask, then the rest, by name."""
        entries = sorted(self.store.entries.values(), key=lambda e: (self.store.has_mask(e), e.relative))
        return [entry.id for entry in entries]

    # --- the loop ---------------------------------------------------------------------------------------

    def next_run(self) -> Path:
        """The run folder the retraining command writes (and the reload looks in): chosen when a model is
        loaded, beside its run folder, as the first labelN that does not exist then."""
        if self._next_run is None:
            base = self.model.path.parent.parent if self.model is not None else self.runs
            number = 1
            while (base / f"label{number}").exists():
                number += 1
            self._next_run = base / f"label{number}"
        return self._next_run

    def command(self) -> str:
        """The command that retrains from the current model on the masks so far."""
        parts = ["masksmith", "train", shlex.quote(self.data)]
        if self.model is not None:
            parts += ["--init", shlex.quote(str(self.model.path))]
        parts += ["--max-time", "5", "--out", shlex.quote(str(self.next_run()))]
        if any(not self.store.has_mask(entry) for entry in self.store.entries.values()):
            parts.append("--skip-unpaired")  # train on the labelled images; the rest wait for the page
        options = self.options
        for flag, value in (("--classes", options.classes), ("--foreground", options.foreground),
                            ("--palette", options.palette), ("--ignore-index", options.ignore_index),
                            ("--mask-suffix", options.mask_suffix)):
            if value is not None:
                parts += [flag, shlex.quote(str(value))]
        if options.ignore_color is not None:
            parts += ["--ignore-color", ",".join(str(v) for v in options.ignore_color)]
        return " ".join(parts)

    def load_model(self, model: ServedModel) -> None:
        """Use another model: its classes must be the dataset's; predictions and the order start again."""
        labels = self.store.labels
        if model.predictor.meta.num_classes != labels.num_classes:
            raise Rejected(409, f"{model.path.name}: {model.predictor.meta.num_classes} classes, but the dataset "
                                f"has {labels.num_classes}; not loaded")
        if self.predictions is not None:
            self.predictions.stop()
        self.model = model
        self._next_run = None
        self.predictions = self._predictions_of(model)
        self.predictions.start()

    def newer_model(self) -> Path | None:
        """A bundle to reload: the next run's model.msb, or the current file when its contents changed."""
        candidates = [self.next_run() / "model.msb"]
        if self.model is not None:
            candidates.append(self.model.path)
        for path in candidates:
            if path.is_file() and (self.model is None or file_checksum(path) != self.model.checksum):
                return path
        return None

    def summary(self) -> dict[str, Any]:
        """The page's header: the data, classes, model, counts, progress and the command."""
        labels, store = self.store.labels, self.store
        states = [self.state(entry) for entry in store.entries.values()]
        counts = {state: states.count(state) for state in ("unlabelled", "predicted", *DONE_STATES)}
        model = None
        if self.model is not None:
            model = {"id": self.model.model_id, "file": str(self.model.path), "checksum": self.model.checksum}
        return {
            "data": self.data, "images": len(states), "done": sum(counts[s] for s in DONE_STATES), "counts": counts,
            "classes": [{"index": i, "name": name, "color": list(color)}
                        for i, (name, color) in enumerate(zip(labels.class_names, labels.colors))],
            "ignore": {"index": labels.ignore_index} if store.writable_ignore else None,
            "encoding": labels.encoding.to_dict(), "model": model,
            "progress": self.predictions.progress() if self.predictions is not None else None,
            "command": self.command(), "next_model": str(self.next_run() / "model.msb"),
            "left_out": store.listing.left_out[:20], "left_out_count": len(store.listing.left_out),
        }


# --- requests ---------------------------------------------------------------------------------------------


def _entry(session: Session, image_id: str) -> Entry:
    entry = session.store.entry(image_id) if ID.fullmatch(image_id) else None
    if entry is None:
        raise Rejected(404, f"no image with id {image_id[:40]!r} (images are named by the ids of /api/queue)")
    return entry


async def _prediction(session: Session, entry: Entry, without_model: str) -> Prediction:
    """The model's prediction for `entry` (404 saying `without_model` when the page runs without one, 422 when it
    cannot be made)."""
    if session.predictions is None:
        raise Rejected(404, f"{without_model}: start masksmith label with --model RUN/model.msb")
    try:
        return await run_in_threadpool(session.predictions.get, entry.id)
    except MasksmithError as error:
        raise Rejected(422, str(error)) from None


def _int(request: Request, name: str, low: int, high: int) -> int:
    text = request.query_params.get(name, "")
    if not text.isdigit() or not low <= int(text) <= high:
        raise Rejected(400, f"{name} must be a whole number {low}..{high}, got {text[:20]!r}")
    return int(text)


def _mask_response(mask: np.ndarray, version: str | None = None) -> Response:
    headers = {"X-Mask-Width": str(mask.shape[1]), "X-Mask-Height": str(mask.shape[0]), "Cache-Control": "no-store"}
    if version is not None:
        headers["X-Mask-Version"] = version
    return Response(zlib.compress(np.ascontiguousarray(mask).tobytes(), 6), media_type=MASK_TYPE, headers=headers)


def _inflate(body: bytes, height: int, width: int) -> np.ndarray:
    """Exactly height x width bytes from a zlib stream, never inflating more (a zlib bomb stops there)."""
    expected = height * width
    inflater = zlib.decompressobj()
    try:
        data = inflater.decompress(body, expected + 1)
    except zlib.error as error:
        raise Rejected(400, f"the mask body is not a zlib stream ({error})") from None
    if len(data) != expected or not inflater.eof or inflater.unconsumed_tail:
        raise Rejected(422, f"the mask body inflates to {'more than ' if len(data) > expected else ''}"
                            f"{min(len(data), expected + 1)} bytes, not {height} x {width} = {expected}")
    return np.frombuffer(data, np.uint8).reshape(height, width)


def _read_mask_or_reject(store: LabelStore, entry: Entry) -> tuple[np.ndarray, str]:
    for _ in range(3):  # the version is of the very bytes decoded: read again if the file changed meanwhile
        before = store.version(entry)
        if before == NO_MASK:
            raise Rejected(404, f"{entry.relative} has no mask yet")
        try:
            mask = store.read_mask(entry)
        except MasksmithError as error:
            raise Rejected(422, str(error)) from None
        if store.version(entry) == before:
            return mask, before
    raise Rejected(409, f"{entry.relative}: the mask keeps changing on disk; try again")


async def _upload(request: Request, session: Session, entry: Entry) -> np.ndarray:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in (MASK_TYPE, "image/png"):
        raise Rejected(415, f"content type {media or 'none'!r}: send the mask as {MASK_TYPE} (zlib of the class "
                            "indices, with width and height in the query) or as image/png (a class-index PNG)")
    body = await read_body(request, session.max_upload_bytes)
    if not body:
        raise Rejected(400, "empty mask upload (0 bytes)")
    try:
        height, width = await run_in_threadpool(session.store.image_size, entry)
    except MasksmithError as error:
        raise Rejected(422, str(error)) from None
    if media == "image/png":
        try:
            return await run_in_threadpool(decode_png_mask, body, "mask upload")
        except MasksmithError as error:
            raise Rejected(422, str(error)) from None
        except Exception as error:  # PIL's many types for broken PNGs
            raise Rejected(422, f"mask upload: not a readable PNG ({' '.join(str(error).split())})") from None
    given = (_int(request, "height", 1, 1 << 20), _int(request, "width", 1, 1 << 20))
    if given != (height, width):
        raise Rejected(422, f"the mask is {given[1]}x{given[0]} but {entry.relative} is {width}x{height}")
    return await run_in_threadpool(_inflate, body, height, width)


def _origin_ok(request: Request) -> bool:
    origin = request.headers.get("origin")
    if origin is None:
        return True  # not a browser's cross-site request: curl, scripts, tests
    return urlsplit(origin).netloc == request.headers.get("host", "")


def create_app(session: Session, token: str | None = None) -> Any:
    """The ASGI application of a labelling session (wrapped in serve's token guard)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if session.predictions is not None:
            session.predictions.start()
        try:
            yield
        finally:
            if session.predictions is not None:
                await run_in_threadpool(session.predictions.stop, 30.0)

    api = FastAPI(title="masksmith label", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    api.state.label = session

    @api.exception_handler(Rejected)
    async def rejected(request: Request, error: Rejected) -> JSONResponse:
        log.info("%s %s -> %d: %s", request.method, request.url.path, error.status, error.message)
        return JSONResponse({"error": error.message}, status_code=error.status, headers=error.headers)

    @api.middleware("http")
    async def local_only(request: Request, call_next: Any) -> Response:
        host = urlsplit(f"//{request.headers.get('host', '')}").hostname or ""
        if token is None and not is_loopback(host):
            return JSONResponse({"error": f"Host {host!r} is not this machine's loopback address; "
                                          "open the page at the URL masksmith label printed"}, status_code=403)
        if request.method not in ("GET", "HEAD") and not _origin_ok(request):
            return JSONResponse({"error": "cross-origin request refused"}, status_code=403)
        return await call_next(request)

    @api.get("/")
    async def page() -> FileResponse:
        return FileResponse(str(STATIC / "label.html"), media_type="text/html")

    @api.get("/api/session")
    async def summary() -> dict[str, Any]:
        return await run_in_threadpool(session.summary)

    @api.get("/api/queue")
    async def queue(request: Request) -> dict[str, Any]:
        wanted = request.query_params.get("state", "")
        rows = await run_in_threadpool(session.queue)
        return {"images": [row for row in rows if not wanted or row["state"] == wanted]}

    @api.get("/api/images/{image_id}")
    async def image_facts(image_id: str) -> dict[str, Any]:
        entry = _entry(session, image_id)

        def facts() -> dict[str, Any]:
            try:
                height, width = session.store.image_size(entry)
            except MasksmithError as error:
                raise Rejected(422, str(error)) from None
            predictions = session.predictions
            prediction = None
            if predictions is not None:
                prediction = ("failed" if entry.id in predictions.failed else
                              "ready" if entry.id in predictions.scores else "pending")
            return {"id": entry.id, "name": entry.relative, "width": width, "height": height,
                    "state": session.state(entry), "version": session.store.version(entry),
                    "record": session.store.record(entry), "prediction": prediction,
                    "prediction_error": predictions.failed.get(entry.id) if predictions is not None else None}

        return await run_in_threadpool(facts)

    @api.get("/api/images/{image_id}/image")
    async def image(image_id: str) -> Response:
        entry = _entry(session, image_id)
        try:
            data, media = await run_in_threadpool(session.store.image_for_browser, entry)
        except MasksmithError as error:
            raise Rejected(422, str(error)) from None
        return Response(data, media_type=media, headers={"Cache-Control": "no-cache"})

    @api.get("/api/images/{image_id}/mask")
    async def mask(image_id: str) -> Response:
        entry = _entry(session, image_id)
        values, version = await run_in_threadpool(_read_mask_or_reject, session.store, entry)
        return _mask_response(values, version)

    @api.get("/api/images/{image_id}/prediction")
    async def prediction(image_id: str) -> Response:
        predicted = await _prediction(session, _entry(session, image_id), "no model")
        response = _mask_response(predicted.mask())
        response.headers["X-Model-Id"] = session.predictions.model.model_id
        return response

    @api.post("/api/images/{image_id}/mask")
    async def save(image_id: str, request: Request) -> dict[str, Any]:
        entry = _entry(session, image_id)
        query = request.query_params
        version, start = query.get("version", ""), query.get("start", "")
        if start not in STARTS:
            raise Rejected(400, f"start must be one of {', '.join(STARTS)} (what the edit began from), got {start[:20]!r}")
        if not version:
            raise Rejected(400, "version is missing: send the X-Mask-Version the mask was loaded with "
                                f"(or {NO_MASK!r} for an image without mask)")
        values = await _upload(request, session, entry)
        problem = await run_in_threadpool(session.store.check_mask, entry, values)
        if problem is not None:
            raise Rejected(422, problem)
        model = session.model.checksum if session.model is not None else None
        try:
            saved = await run_in_threadpool(session.store.save, entry, values, version, start, model)
        except Conflict as conflict:
            raise Rejected(409, f"{entry.relative}: the mask on disk changed since this page loaded it (another tab "
                                "or program saved it); reload it, or overwrite it knowingly",
                           {"X-Mask-Version": conflict.current}) from None
        except MasksmithError as error:
            raise Rejected(409, str(error)) from None
        except OSError as error:
            raise Rejected(500, f"{entry.target}: cannot write the mask ({error.strerror or error})") from None
        log.info("saved %s (%s)", entry.target, saved["state"])
        return {**saved, "id": entry.id}

    @api.post("/api/images/{image_id}/region")
    async def region(image_id: str, request: Request) -> dict[str, Any]:
        predicted = await _prediction(session, _entry(session, image_id), "the region assist needs a model")
        x = _int(request, "x", 0, predicted.width - 1)
        y = _int(request, "y", 0, predicted.height - 1)
        return await run_in_threadpool(region_document, predicted.mask(), x, y)

    @api.post("/api/model/reload")
    async def reload() -> dict[str, Any]:
        path = await run_in_threadpool(session.newer_model)
        if path is None:
            raise Rejected(404, f"no newer model: train one with the command shown (it writes "
                                f"{session.next_run() / 'model.msb'})")
        try:
            model = await run_in_threadpool(ServedModel.load, path, None, session.threads)
        except MasksmithError as error:
            raise Rejected(422, str(error)) from None
        await run_in_threadpool(session.load_model, model)
        return await run_in_threadpool(session.summary)

    api.mount("/static/label", StaticFiles(directory=str(STATIC)), name="label-static")
    api.mount("/static", StaticFiles(directory=str(SERVE_STATIC)), name="static")

    guarded = Guard(api, token, lambda path, status, seconds: None)
    guarded.state = session  # type: ignore[attr-defined]
    return guarded

