"""The FastAPI application: /v1/segment, /v1/model, /healthz, /readyz, /metrics and the web page at /."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from concurrent.futures import Future
from importlib import resources
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from masksmith.inference.work_budget import WorkCost, mode_bytes
from masksmith.serve.batcher import Done, MicroBatcher, QueueFull
from masksmith.serve.encode import FORMATS, mask_document, overlay_png
from masksmith.serve.guard import Guard
from masksmith.serve.metrics import Metrics
from masksmith.serve.model import Job, ServedModel
from masksmith.serve.options import AUTO_BATCH_LIMIT, ServeOptions
from masksmith.serve.upload import Decoded, Rejected, Upload, decode_image, read_upload
from masksmith.visualize import mask_png_bytes

log = logging.getLogger("masksmith.serve")
STATIC = resources.files("masksmith.serve") / "static"
ROUTES = ("/", "/healthz", "/readyz", "/metrics", "/v1/model", "/v1/segment")
# Large images admitted at once, from their header check to their answer: one, so that beside the small
# ones large images take at most one work budget of memory and one image's decoding, prediction and
# encoding of CPU.
LARGE_AT_ONCE = 1
# An image is large when it costs more than this share of the work budget: a full batch of smaller ones
# (at most AUTO_BATCH_LIMIT, 8) stays within it.
LARGE_SHARE = 1 / AUTO_BATCH_LIMIT


def _route_label(path: str) -> str:
    # Fixed labels only: scanners probing random paths must not grow the metrics without bound.
    if path in ROUTES:
        return path
    return "/static" if path.startswith("/static/") else "other"


class State:
    """What the routes share: the model, its two lanes, the metrics and readiness.

    Images that batch together run on `batcher`. Large ones (tiled, or costing more than LARGE_SHARE of
    the work budget) run one at a time on `large`, a lane of their own whose worker,
    between steps of its work, lets the small images queued meanwhile go first: one large image
    never holds a batch of small ones hostage.
    """

    def __init__(self, model: ServedModel, options: ServeOptions):
        self.model = model
        self.options = options
        self.metrics = Metrics(options.max_batch or AUTO_BATCH_LIMIT)
        self.ready = False
        self.batcher: MicroBatcher[Job] = MicroBatcher(
            model.run_batch, model.batch_key, max_batch=options.max_batch or 1,
            max_wait_s=options.max_wait_ms / 1000.0, max_queue=options.max_queue, on_batch=self.metrics.batch)
        self.large: MicroBatcher[Job] = MicroBatcher(
            lambda jobs: model.run_batch(jobs, wait_turn=self.batcher.wait_idle), id, max_batch=1,
            max_wait_s=0.0, max_queue=LARGE_AT_ONCE, on_batch=self.metrics.batch)
        self.large_slots = threading.BoundedSemaphore(LARGE_AT_ONCE)

    def runs_alone(self, cost: WorkCost) -> bool:
        """Whether an image goes to the large lane: tiled, or over LARGE_SHARE of the work budget."""
        return cost.tiles > 1 or cost.peak_bytes > LARGE_SHARE * self.options.max_work_bytes

    def unready_reason(self) -> str | None:
        """Why the server cannot take work in time now, or None when it can."""
        if not self.ready:
            return "the model is not loaded and warmed up"
        limit = self.options.timeout_s
        busy = self.batcher.busy_s
        if busy > limit:
            return f"one batch has run for {busy:.0f} s, over the request limit of {limit:g} s"
        wait = self.batcher.expected_wait_s()
        if wait > limit:
            return f"the queue holds about {wait:.0f} s of work, over the request limit of {limit:g} s"
        return None


class Ticket:
    """A request's place on the large lane, held from its header check to its answer."""

    def __init__(self, slots: threading.BoundedSemaphore):
        self._slots = slots
        self.held = False

    def take(self) -> bool:
        """Take a place if one is free (never waits)."""
        self.held = self._slots.acquire(blocking=False)
        return self.held

    def release(self) -> None:
        """Give the place back (once)."""
        if self.held:
            self.held = False
            self._slots.release()


def _threshold(model: ServedModel, text: str | None) -> float | None:
    if text is None or text == "":
        return None
    if model.predictor.meta.num_classes != 2:
        raise Rejected(400, "threshold applies to binary models only; this model has "
                            f"{model.predictor.meta.num_classes} classes")
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise Rejected(400, f"threshold must be a probability in [0, 1], got {text!r}")
    return value


def _flag(text: str | None, name: str) -> bool:
    if text is None or text.lower() in ("", "0", "false", "no"):
        return False
    if text.lower() in ("1", "true", "yes"):
        return True
    raise Rejected(400, f"{name} must be true or false, got {text!r}")


def _answer_kind(answer: str, with_polygons: bool) -> str:
    """The work budget's name for what is encoded from the mask."""
    if answer == "json":
        return "polygons" if with_polygons else "json"
    return "overlay" if answer == "overlay" else "mask"


def _decode_and_queue(state: State, upload: Upload, threshold: float | None, answer: str,
                      ticket: Ticket) -> tuple[Decoded, Job, Future, float]:
    """Check the work an upload costs, decode it and queue it on its lane, in one worker-thread hop
    (each hop costs on a busy CPU)."""
    started = time.perf_counter()
    lane = state.batcher

    def admit(height: int, width: int, mode: str) -> None:
        nonlocal lane
        cost = state.options.budget.check(upload.name, state.model.predictor, height, width,
                                          source_bytes=mode_bytes(mode), answer=answer)
        if state.runs_alone(cost):
            if not ticket.take():
                raise Rejected(503, f"server busy: {LARGE_AT_ONCE} large images are in progress; retry shortly",
                               {"Retry-After": "1"})
            lane = state.large

    try:
        decoded = decode_image(upload, state.model.predictor.meta.in_channels, state.options, admit)
    except BaseException:
        state.batcher.withdraw()
        raise
    decode_s = time.perf_counter() - started
    job = Job(decoded.array, threshold)
    if lane is not state.batcher:
        state.batcher.withdraw()  # announced to the batches of small images, but it runs on the large lane
    try:
        future = lane.submit(job, announced=lane is state.batcher)
    except QueueFull as error:
        raise Rejected(503, f"server busy ({error}); retry shortly", {"Retry-After": "1"}) from None
    return decoded, job, future, decode_s


async def _wait(state: State, job: Job, future: Future, deadline: float) -> Done:
    """The batch result of a queued image, within the request's time limit."""
    try:
        return await asyncio.wait_for(asyncio.wrap_future(future), max(0.0, deadline - time.perf_counter()))
    except asyncio.TimeoutError:
        # Still queued: it is dropped. Already running: it stops at its next step (tile chunk, stage).
        future.cancel()
        job.abandoned.set()
        raise Rejected(408, f"the request took longer than its limit of {state.options.timeout_s:g} s "
                            "(raise it with --timeout)") from None


def _server_timing(timings: dict[str, float]) -> str:
    return ", ".join(f"{name};dur={value:.2f}" for name, value in timings.items())


async def segment(request: Request) -> Response:
    """POST /v1/segment: the image's mask (palette PNG), overlay (PNG) or JSON document."""
    state: State = request.app.state.serve
    started = time.perf_counter()
    deadline = started + state.options.timeout_s
    query = request.query_params
    answer = query.get("format", "png").lower()
    if answer not in FORMATS:
        raise Rejected(400, f"format must be one of {', '.join(FORMATS)}, got {answer!r}")
    with_polygons = _flag(query.get("polygons"), "polygons")
    if with_polygons and answer != "json":
        raise Rejected(400, "polygons come in the JSON answer: add format=json")
    threshold = _threshold(state.model, query.get("threshold"))
    if not state.ready:
        raise Rejected(503, "the model is still warming up", {"Retry-After": "1"})
    # Announced from here on, so that a batch forming now waits (up to --max-wait-ms) for this image.
    state.batcher.announce()
    try:
        upload = await asyncio.wait_for(read_upload(request, state.options), state.options.timeout_s)
    except asyncio.TimeoutError:
        state.batcher.withdraw()
        raise Rejected(408, f"the upload took longer than the request limit of {state.options.timeout_s:g} s") from None
    except BaseException:
        state.batcher.withdraw()
        raise
    ticket = Ticket(state.large_slots)
    try:
        return await _segment_upload(state, upload, threshold, answer, with_polygons, ticket, started, deadline)
    finally:
        ticket.release()


async def _segment_upload(state: State, upload: Upload, threshold: float | None, answer: str, with_polygons: bool,
                          ticket: Ticket, started: float, deadline: float) -> Response:
    """Decode, queue and wait for one upload, then encode its answer."""
    model, meta = state.model, state.model.predictor.meta
    decoded, job, future, decode_s = await run_in_threadpool(
        _decode_and_queue, state, upload, threshold, _answer_kind(answer, with_polygons), ticket)
    done = await _wait(state, job, future, deadline)
    timings = {"decode": 1000 * decode_s, "queue": 1000 * done.queue_s, "inference": 1000 * done.inference_s}
    headers = {"X-Model-Id": model.model_id, "X-Batch-Size": str(done.batch_size)}

    def encode() -> bytes:
        encode_started = time.perf_counter()
        mask, colors = done.value, model.predictor.colors
        if answer == "json":
            document = mask_document(mask, meta.class_names, colors, with_polygons=with_polygons,
                                     model={"id": model.model_id, "checksum": model.checksum}, timings_ms=timings)
            timings["encode"] = 1000 * (time.perf_counter() - encode_started)
            document["timings_ms"] = {name: round(value, 3) for name, value in timings.items()}
            return json.dumps(document).encode()
        if answer == "overlay":
            body = overlay_png(decoded.array, mask, colors, meta.ignore_index)
        else:
            body = mask_png_bytes(mask, colors, ignore_index=meta.ignore_index)
        timings["encode"] = 1000 * (time.perf_counter() - encode_started)
        return body

    body = await run_in_threadpool(encode)
    headers["Server-Timing"] = _server_timing({**timings, "total": 1000 * (time.perf_counter() - started)})
    return Response(body, media_type="application/json" if answer == "json" else "image/png", headers=headers)


def create_app(model: ServedModel, options: ServeOptions) -> Any:
    """The ASGI application serving `model` (wrapped in the token/metrics guard)."""
    state = State(model, options)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(model.warm_up)
        if options.max_batch is None:
            state.batcher.max_batch = await run_in_threadpool(model.best_batch_size, AUTO_BATCH_LIMIT)
            print(f"  batching: up to {state.batcher.max_batch} images per batch (the most images/s of batch sizes "
                  f"1..{AUTO_BATCH_LIMIT} measured just now; set --max-batch to choose)", flush=True)
        model.card["batching"] = {"max_batch": state.batcher.max_batch, "max_wait_ms": options.max_wait_ms,
                                  "chosen": "--max-batch" if options.max_batch else "measured at startup"}
        state.batcher.start()
        state.large.start()
        state.ready = True
        try:
            yield
        finally:
            # uvicorn has already let in-flight requests finish; finish anything still queued, then stop.
            state.ready = False
            await run_in_threadpool(state.large.stop, options.timeout_s)
            await run_in_threadpool(state.batcher.stop, options.timeout_s)

    api = FastAPI(title="masksmith", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    api.state.serve = state

    @api.exception_handler(Rejected)
    async def rejected(request: Request, error: Rejected) -> JSONResponse:
        # A refused request is the client's problem, not the server's: one log line, no traceback.
        log.info("%s %s -> %d: %s", request.method, request.url.path, error.status, error.message)
        return JSONResponse({"error": error.message}, status_code=error.status, headers=error.headers)

    api.add_api_route("/v1/segment", segment, methods=["POST"])

    @api.get("/v1/model")
    async def model_card() -> dict[str, Any]:
        return model.card

    @api.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @api.get("/readyz")
    async def readyz() -> JSONResponse:
        # Not ready while a request sent now could not be answered within its time limit.
        reason = state.unready_reason()
        if reason is None:
            return JSONResponse({"ready": True})
        return JSONResponse({"ready": False, "reason": reason}, status_code=503)

    @api.get("/metrics")
    async def metrics() -> PlainTextResponse:
        lanes = (state.batcher, state.large)
        text = state.metrics.render(sum(lane.depth for lane in lanes), sum(lane.running for lane in lanes),
                                    lambda: state.unready_reason() is None)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @api.get("/")
    async def page() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"), media_type="text/html")

    api.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    def record(path: str, status: int, seconds: float) -> None:
        route = _route_label(path)
        state.metrics.request(route, status, seconds if route == "/v1/segment" else None)

    guarded = Guard(api, options.token, record)
    guarded.state = state  # type: ignore[attr-defined]  # tests and the server reach the state here
    return guarded
