"""`predict --engine ray`: batch prediction as a Ray Data pipeline, for folders, globs and manifests of any size.

The driver plans the work exactly as the local engine does (masksmith.inference.files: which images, under which
output names, which are already done) and streams the (path, output name) rows through Ray Data into an
actor pool. Each actor loads the model once and, for each call (ROWS_PER_CALL rows), decodes the images,
runs them through the model --batch-size at a time and encodes and writes each mask with the local engine's
own functions, so both engines write the same bytes. The rows that come back are only the outcome of each
image (written, or why not), so the driver's memory does not grow with the images' size, and Ray's
streaming executor bounds what is in flight.

Decoding and writing run inside the actor, next to the model, rather than in stages of their own: a decoded
image then never travels through Ray's object store (a copy per stage). They run in threads beside the
model's (masksmith.inference.pipeline), so the model waits neither for the next batch nor for the last
masks. On a GPU cluster, give each actor CPUs for that work (--threads).

On a cluster, the bundle, the inputs and OUT must be at the same paths on every node (a shared file system).
"""

from __future__ import annotations

import functools
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from masksmith.errors import ConfigError, MasksmithError
from masksmith.inference.files import (
    PREDICT_BATCH_SIZE,
    PredictionPlan,
    check_mask_format,
    plan_predictions,
    read_batch,
    write_failures,
    write_prediction,
)
from masksmith.inference.inputs import InputImage
from masksmith.inference.pipeline import Prefetch, Writer, pipeline_depth
from masksmith.inference.predictor import PredictReport
from masksmith.inference.work_budget import WorkBudget, check_file

INSTALL_HINT = "pip install 'masksmith[ray]'"
# Ray keeps every block's metadata on the driver: a million one-batch blocks would cost more than the rows.
MAX_BLOCKS = 10_000
# Rows an actor takes per call (measured on 2 cores, 256x256 PNGs, a small U-Net: one call per 4-image
# batch ran at about half the local engine's images/s; see benchmarks/batch_predict.py).
ROWS_PER_CALL = 64


def import_ray() -> Any:
    """The `ray` module with Ray Data; a MasksmithError naming the install command when it is missing."""
    try:
        import ray
        import ray.data  # noqa: F401  (the data library is a separate extra of Ray's)
    except ImportError:
        raise MasksmithError(f"--engine ray needs Ray Data, which is not installed: {INSTALL_HINT}") from None
    return ray


@dataclass(frozen=True)
class RayOptions:
    """How the Ray engine runs: where (the cluster's address; a local one when None), how many actors,
    the batch each actor runs at once, and the CPU threads and GPUs each actor holds."""

    address: str | None = None
    actors: int | None = None  # default: as many as the cluster's CPUs (or GPUs) allow
    batch_size: int = PREDICT_BATCH_SIZE
    threads: int = 1  # CPUs (and torch threads) per actor
    gpus_per_actor: float = 0.0
    load_options: dict[str, Any] = field(default_factory=dict)  # device, backend, tile, overlap, blend, tta

    def __post_init__(self) -> None:
        if self.actors is not None and self.actors < 1:
            raise ConfigError(f"--actors must be at least 1, got {self.actors}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {self.threads}")
        if not 0 <= self.gpus_per_actor <= 64:
            raise ConfigError(f"--gpus-per-actor must be between 0 and 64, got {self.gpus_per_actor}")


def actor_count(options: RayOptions, resources: dict[str, float]) -> int:
    """The actors to start: the option, or as many as the cluster's CPUs (and GPUs, when asked for) hold."""
    if options.actors is not None:
        return options.actors
    by_cpu = int(resources.get("CPU", 1) // options.threads)
    if options.gpus_per_actor > 0:
        by_gpu = int(resources.get("GPU", 0) // options.gpus_per_actor)
        if by_gpu < 1:
            raise ConfigError(f"--gpus-per-actor {options.gpus_per_actor}: the Ray cluster has "
                              f"{resources.get('GPU', 0):g} GPU(s)")
        return max(1, min(by_cpu, by_gpu))
    return max(1, by_cpu)


class Segmenter:
    """One actor of the pool: the model, loaded once, and the writing options; called with batches of rows."""

    def __init__(self, models: Sequence[str], out_dir: str, *, threads: int, batch_size: int,
                 load_options: dict[str, Any], threshold: float | None, mask_format: str, overlay_images: bool,
                 depth: int | None = None):
        import torch

        from masksmith.inference.ensemble import load_models

        torch.set_num_threads(threads)
        self.predictor = load_models(list(models), **load_options)
        self.out_dir, self.batch_size = Path(out_dir), batch_size
        self.threshold, self.mask_format, self.overlay_images = threshold, mask_format, overlay_images
        self.budget = WorkBudget.offline()
        self.depth = pipeline_depth() if depth is None else depth

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [InputImage(Path(path), Path(relative)) for path, relative in zip(rows["path"], rows["relative"])]
        outcome: dict[str, tuple[str, str]] = {}
        batches = [items[start:start + self.batch_size] for start in range(0, len(items), self.batch_size)]
        # As the local engine: the next batches are decoded and the last masks written beside the model.
        with (Prefetch(batches, self._read, depth=self.depth) as reads,
              Writer(depth=self.depth * self.batch_size) as writer):
            for _, (arrays, readable, failed) in reads:
                outcome.update({str(path): ("", reason) for path, reason in failed})
                self._predict_batch(arrays, readable, outcome, writer)
        paths = [str(item.path) for item in items]
        return {"index": rows["index"],
                "mask": np.array([outcome[path][0] for path in paths], dtype=object),
                "reason": np.array([outcome[path][1] for path in paths], dtype=object)}

    def _read(self, items: list[InputImage]) -> tuple[list[np.ndarray], list[InputImage], list[tuple[Path, str]]]:
        answer = "overlay" if self.overlay_images else "mask"
        return read_batch(items, self.predictor.meta.in_channels,
                          lambda path: check_file(self.predictor, path, self.budget, answer))

    def _predict_batch(self, arrays: list[np.ndarray], readable: list[InputImage],
                       outcome: dict[str, tuple[str, str]], writer: Writer) -> None:
        """Predict as one batch and hand each mask to `writer`; outcome[path]: (mask written, "") or ("", why not)."""
        if not arrays:
            return
        try:
            probabilities = self.predictor.probabilities(arrays)
        except Exception as error:  # a model failure is every image's failure, reported, never the run's end
            outcome.update({str(item.path): ("", f"{item.path}: prediction failed ({error})") for item in readable})
            return
        for item, array, probs in zip(readable, arrays, probabilities):
            try:
                mask = self.predictor.decide(probs, self.threshold)
            except MasksmithError as error:
                outcome[str(item.path)] = ("", f"{item.path}: could not write its prediction ({error})")
                continue
            writer.submit(functools.partial(self._write, item, array, mask, outcome), array.nbytes + mask.nbytes)

    def _write(self, item: InputImage, array: np.ndarray, mask: np.ndarray,
               outcome: dict[str, tuple[str, str]]) -> None:
        try:
            target = write_prediction(self.predictor.meta, mask, array, self.out_dir, item.relative,
                                      mask_format=self.mask_format, overlay_images=self.overlay_images)
            outcome[str(item.path)] = (str(target), "")
        except (OSError, MasksmithError) as error:
            outcome[str(item.path)] = ("", f"{item.path}: could not write its prediction ({error})")


def prepare_models(models: Sequence[str | Path], load_options: dict[str, Any]) -> None:
    """Choose each model's backend in the driver, before the actors start: a bundle's ONNX export is made and
    cached once here, so the actors read it instead of all exporting at once, and the one-line notes (why a
    model runs on PyTorch) reach the user, which an actor's would not (its output stays in Ray's logs)."""
    from masksmith.inference.backend_choice import BackendNote, choose
    from masksmith.inference.ensemble import expand_models

    for member in expand_models([Path(model) for model in models]):
        choice = choose(member, load_options.get("backend"), load_options.get("device", "auto"))
        if choice.note:
            warnings.warn(choice.note, BackendNote, stacklevel=2)


def _connect(ray: Any, address: str | None) -> bool:
    """Join the cluster at `address` (or start a local one); True when this call started it."""
    if ray.is_initialized():
        return False
    ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
             configure_logging=True)
    return True


def _rows(items: Sequence[InputImage]) -> Iterator[dict[str, Any]]:
    # Absolute paths: an actor's working folder is not the driver's (on another node it may not exist).
    # The index names the item in the outcome, so reports show each path as the user gave it.
    for index, item in enumerate(items):
        yield {"index": index, "path": os.path.abspath(item.path), "relative": str(item.relative)}


def predict_with_ray(models: Sequence[str | Path], inputs: Sequence[str | Path], out_dir: str | Path, *,
                     options: RayOptions = RayOptions(), overlay_images: bool = False,
                     threshold: float | None = None, mask_format: str = "palette", resume: bool = False,
                     progress: bool = True, plan: PredictionPlan | None = None,
                     depth: int | None = None) -> PredictReport:
    """Predict files, folders, globs or manifests into OUT with a Ray Data pipeline (see the module's text).

    The same outputs as `predict.predict_files`: OUT/<relative path>.png masks, overlays, OUT/failures.csv;
    `resume` skips images whose outputs exist. `report.seconds` is the pipeline's wall time. `plan`: the
    inputs' plan_predictions, when the caller made it already. `depth`: each actor's batches decoded ahead
    and waiting to be written (masksmith.inference.pipeline; default $MASKSMITH_PIPELINE_DEPTH, 0: sequential).
    """
    check_mask_format(mask_format)
    depth = pipeline_depth() if depth is None else depth
    ray = import_ray()
    out_dir = Path(out_dir)
    if plan is None:
        plan = plan_predictions(inputs, out_dir, overlay_images=overlay_images, resume=resume)
    report = PredictReport(failed=list(plan.failed), skipped=plan.skipped)
    if plan.items:
        prepare_models(models, options.load_options)
        started_here = _connect(ray, options.address)
        try:
            started = time.perf_counter()
            for index, mask, reason in _run_pipeline(ray, models, plan.items, out_dir, options,
                                                     overlay_images=overlay_images, threshold=threshold,
                                                     mask_format=mask_format, progress=progress, depth=depth):
                if reason:
                    report.failed.append((plan.items[index].path, reason))
                else:
                    report.written.append(Path(mask))
            report.seconds = time.perf_counter() - started
        finally:
            if started_here:
                ray.shutdown()
    write_failures(out_dir, report.failed)
    return report


def _run_pipeline(ray: Any, models: Sequence[str | Path], items: Sequence[InputImage], out_dir: Path,
                  options: RayOptions, *, overlay_images: bool, threshold: float | None, mask_format: str,
                  progress: bool, depth: int) -> Iterator[tuple[int, str, str]]:
    """(index in `items`, mask written or "", reason or "") for every item, as the actors finish them."""
    from tqdm import tqdm

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # one bar, ours, counting images
    # An actor is handed ROWS_PER_CALL rows at a time (one block each, at most MAX_BLOCKS blocks) and runs
    # them through the model --batch-size at a time: Ray's cost per call is paid once per many images.
    per_call = max(ROWS_PER_CALL, options.batch_size)
    blocks = max(1, min(MAX_BLOCKS, -(-len(items) // per_call)))
    actors = min(actor_count(options, ray.cluster_resources()), blocks)
    rows = ray.data.from_items(list(_rows(items)), override_num_blocks=blocks)
    results = rows.map_batches(
        Segmenter, batch_size=per_call, batch_format="numpy", concurrency=actors,
        num_cpus=options.threads, num_gpus=options.gpus_per_actor or None,
        fn_constructor_kwargs=dict(models=[str(m) for m in models], out_dir=str(out_dir.resolve()),
                                   threads=options.threads, batch_size=options.batch_size,
                                   load_options=options.load_options,
                                   threshold=threshold, mask_format=mask_format, overlay_images=overlay_images,
                                   depth=depth))
    with tqdm(total=len(items), desc=f"predicting (ray, {actors} actors)", unit="img", disable=not progress) as bar:
        for row in results.iter_rows():
            bar.update(1)
            yield int(row["index"]), str(row["mask"]), str(row["reason"])
