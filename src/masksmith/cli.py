"""The `masksmith` command line: each command is a thin wrapper over the Python API."""

from __future__ import annotations

import functools
import inspect
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer
from rich.console import Console
from rich.markup import escape

from masksmith.errors import MasksmithError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Image segmentation: train, evaluate and predict from images + masks.")
err = Console(stderr=True, highlight=False)


def _error_line(message: str) -> None:
    # Escaped: a message such as "pip install 'masksmith[serve]'" must not be read as markup.
    err.print(f"[red]error:[/red] {escape(message)}", markup=True, highlight=False, soft_wrap=True)


def os_error_message(error: OSError) -> str:
    """A failed system call as one line: the file it names and the system's reason (No space left on device,
    Read-only file system, Permission denied, Disk quota exceeded, ...)."""
    cause = error.strerror or str(error)
    if error.filename is None:
        return cause
    name = os.fsdecode(error.filename) if isinstance(error.filename, (str, bytes, os.PathLike)) else error.filename
    return f"{name}: {cause}"


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a MasksmithError, or a failed read or write of a file (an OSError: a full disk, a read-only folder),
    into one red line and exit code 2, instead of a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except MasksmithError as error:
            _error_line(str(error))
            raise typer.Exit(2) from None
        except OSError as error:
            if error.errno is None:  # not a failed system call: a library's own complaint, a bug to see whole
                raise
            _error_line(os_error_message(error))
            raise typer.Exit(2) from None

    return wrapper


def _train(
    data: Optional[Path] = typer.Argument(None, help="dataset folder (or give data: in --config)"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config; options below override it"),
    resume: Optional[Path] = typer.Option(None, help="continue the run in this folder from its last checkpoint"),
    **flags: Any,
) -> None:
    """Train a segmentation model; writes a run folder with model.msb, curves and metrics.

    Every other option is a config field (generated from TrainConfig); only the options typed count as
    given, so the auto plan fills the rest."""
    from masksmith.train_options import parse_cli_values
    from masksmith.training import train as run_training

    if data is None and config is None and resume is None:
        raise MasksmithError("give a DATA folder, a --config file, or --resume RUN_FOLDER")
    result = run_training(data, config=config, resume=resume, **parse_cli_values(flags))
    from masksmith.parallel import detect_launch

    if detect_launch().leader:  # under torchrun or SLURM every process returns here; rank 0 wrote the model
        typer.echo(f"model: {result.bundle}")


def _train_signature() -> inspect.Signature:
    """_train's own parameters followed by one keyword parameter per TrainConfig field."""
    from masksmith.train_options import typer_parameters

    own = [p for p in inspect.signature(_train).parameters.values() if p.kind is not p.VAR_KEYWORD]
    return inspect.Signature([*own, *typer_parameters()])


_train.__signature__ = _train_signature()  # type: ignore[attr-defined]
app.command("train")(user_errors(_train))


@app.command()
@user_errors
def check(
    data: Path = typer.Argument(..., help="dataset folder"),
    classes: Optional[str] = typer.Option(None, help="classes.txt, one name per line, background first"),
    foreground: Optional[int] = typer.Option(None, min=0, max=65535,
                                             help="binary masks: the pixel value meaning foreground"),
    palette: Optional[str] = typer.Option(None, help="RGB color masks: palette file (labelmap.txt, name,r,g,b)"),
    ignore_color: Optional[str] = typer.Option(None, help="RGB color masks: ignored color as R,G,B"),
    mask_suffix: Optional[str] = typer.Option(None, help="mask file suffix, e.g. _mask"),
    ignore_index: int = typer.Option(255, min=0, max=255, help="mask value that marks pixels to ignore"),
    workers: Optional[int] = typer.Option(None, min=1, max=256, help="worker processes [default: all cores]"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="where report.json and fingerprint.json go "
                                       "[default: runs/check-DATANAME]"),
    json_output: bool = typer.Option(False, "--json", help="print the report as JSON instead of tables"),
    strict: bool = typer.Option(False, "--strict", help="exit 1 when there are warnings"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Check a dataset: pairing, unreadable files, sizes, mask values, class frequencies, duplicates, leakage.

    Exit code 0 when clean, 2 on errors, 1 on warnings with --strict."""
    import json

    from masksmith.data.check import print_report
    from masksmith.steps import check as check_data
    from masksmith.train_options import parse_color

    color = parse_color(ignore_color) if ignore_color is not None else None
    result = check_data(data, classes=classes, foreground=foreground, mask_suffix=mask_suffix,
                        ignore_index=ignore_index, workers=workers, progress=not (quiet or json_output),
                        palette=palette, ignore_color=color, out=out)
    if json_output:
        typer.echo(json.dumps(result.report.to_dict(), indent=1))
    elif not quiet:
        print_report(result.report, Console())
        typer.echo(f"report: {result.report_path}, fingerprint: {result.fingerprint_path}")
    raise typer.Exit(result.report.exit_code(strict))


@app.command()
@user_errors
def evaluate(
    bundle: Path = typer.Argument(..., help="model bundle (model.msb), or a cross-validation run folder (its folds' "
                                  "ensemble)"),
    rest: List[Path] = typer.Argument(..., metavar="[MODEL...] DATA", help="more models (an ensemble averages "
                                      "their probabilities), then the labelled dataset folder"),
    split: str = typer.Option("val", help="val | test | train | all (val, train: the split recorded at training "
                              "when DATA has no such folder)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="[default: next to the bundle]"),
    mask_suffix: Optional[str] = typer.Option(None),
    threshold: Optional[float] = typer.Option(None, help="binary: foreground probability threshold"),
    html: bool = typer.Option(False, "--html", help="also write OUT/report.html: one self-contained page "
                              "(metrics, per-class bars, confusion matrix, curves, sortable per-image table)"),
    tta: bool = typer.Option(False, "--tta", help="average each prediction over flipped copies, as predict --tta"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Score a model on labelled images: per-class IoU, Dice, precision, recall; plots and a gallery."""
    from masksmith.evaluation import evaluate as run_evaluation
    from masksmith.report import print_results

    *more, data = rest  # evaluate MODEL [MODEL...] DATA: the last argument is the data
    result = run_evaluation([bundle, *more] if more else bundle, data, split=split, out=out,
                            mask_suffix=mask_suffix, threshold=threshold, progress=not quiet, html=html, tta=tta)
    if not quiet:
        print_results(result)
    typer.echo(f"report: {result['out']}")
    if html:
        typer.echo(f"html: {result['html']}")
    _exit_on_failures([(row["name"], row["reason"]) for row in result["failed"]], "evaluated")


@app.command()
@user_errors
def predict(
    bundle: Path = typer.Argument(..., help="model bundle (model.msb), exported model (model.onnx) or a "
                                  "cross-validation run folder"),
    inputs: List[str] = typer.Argument(..., help="image files, folders or glob patterns; leading .msb/.onnx files "
                                       "and CV run folders are more models (an ensemble of their probabilities)"),
    out: Path = typer.Option(..., "--out", "-o", help="output folder for <name>.png masks"),
    overlay: bool = typer.Option(False, "--overlay", help="also write blended overlays to OUT/overlays/"),
    threshold: Optional[float] = typer.Option(None, help="binary: foreground probability threshold"),
    mask_format: str = typer.Option("palette", help="palette: indexed PNG of class indices; dataset: the "
                                    "training masks' own encoding (0/255, RGB colors, ...)"),
    batch_size: int = typer.Option(4, "--batch-size", "-b", min=1, max=4096),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    backend: Optional[str] = typer.Option(None, help="torch | onnx [default: onnx for .onnx files, else torch]"),
    tile: Optional[int] = typer.Option(None, min=1, max=65536, help="predict in tiles of this many pixels "
                                       "[default: automatic for crop-trained models on images over 2x the "
                                       "training size]"),
    overlap: Optional[int] = typer.Option(None, min=0, max=65536, help="tile overlap in pixels [default: tile/4]"),
    blend: str = typer.Option("gaussian", help="how overlapping tiles are blended: gaussian | linear"),
    tta: bool = typer.Option(False, "--tta", help="average over flipped copies: the flips the model was trained "
                             "with (default/light/elastic: 4 forward passes per image, upright: 2)"),
    annotation_format: str = typer.Option("png", "--format", help="png: the masks only; labelme: also "
                                          "OUT/<name>.json per image (polygons to correct in Labelme) and "
                                          "OUT/labels.txt; coco: also OUT/coco.json (RLE regions with scores)"),
    polygon_tolerance: float = typer.Option(1.0, "--polygon-tolerance", help="labelme: how far (pixels) a "
                                            "simplified polygon may stray from the mask's outline; 0: exact"),
    rank: bool = typer.Option(False, "--rank", help="also write OUT/ranking.csv: images by uncertainty, most "
                              "uncertain first (the ones to label next)"),
    resume: bool = typer.Option(False, "--resume", help="skip images whose outputs are already in OUT"),
    engine: str = typer.Option("local", help="local: this process; ray: a Ray Data pipeline with an actor pool "
                               "(pip install 'masksmith[ray]')"),
    address: Optional[str] = typer.Option(None, help="ray: the cluster to join (auto, or HOST:PORT) "
                                          "[default: a local Ray instance]"),
    actors: Optional[int] = typer.Option(None, min=1, max=100_000,
                                         help="ray: model replicas [default: the cluster's CPUs / --threads]"),
    threads: int = typer.Option(1, min=1, max=1024, help="ray: CPUs (and torch threads) per actor"),
    gpus_per_actor: float = typer.Option(0.0, "--gpus-per-actor", help="ray: GPUs per actor (with --device cuda)"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Predict masks at each image's original size, as palette PNGs (and overlays, annotations, a ranking)."""
    from masksmith.annotations import annotation_sinks, check_annotation_options
    from masksmith.ensemble import load_models, split_models
    from masksmith.fileio import refuse_if_locked
    from masksmith.inference.pipeline import pipeline_depth
    from masksmith.predict import check_threshold, predict_files
    from masksmith.predict_io import check_mask_format, plan_predictions
    from masksmith.predict_record import PredictionRecord, prediction_output

    models, inputs = split_models(bundle, inputs)
    if not inputs:
        raise MasksmithError(f"no images to predict: every argument after the model is a model too ({models[-1]})")
    check_annotation_options(annotation_format, polygon_tolerance, rank)  # before the model loads
    check_mask_format(mask_format)
    check_threshold(threshold)
    depth = pipeline_depth()  # a bad $MASKSMITH_PIPELINE_DEPTH is refused before any work
    if engine not in ("local", "ray"):
        raise MasksmithError(f"--engine must be local or ray, got {engine!r}")
    load_options = dict(device=device, backend=backend, tile=tile, overlap=overlap, blend=blend, tta=tta)
    if engine == "ray":
        from masksmith.ray_engine import RayOptions, import_ray, predict_with_ray

        import_ray()  # a missing extra is named before OUT is made
        if annotation_format != "png" or rank:
            raise MasksmithError("--format labelme/coco and --rank gather every image in one process: "
                                 "use --engine local for them")
        ray_options = RayOptions(address=address, actors=actors, batch_size=batch_size, threads=threads,
                                 gpus_per_actor=gpus_per_actor, load_options=load_options)
    refuse_if_locked(out, kind="prediction")  # at once, before the model loads; the lock itself is taken below
    predictor = load_models(models, **load_options) if engine == "local" else None
    # Planned before OUT is claimed: outputs that would replace an input are refused with OUT untouched.
    plan = plan_predictions(inputs, out, overlay_images=overlay, resume=resume)
    record = PredictionRecord.of(models, {
        "--threshold": threshold, "--tta": tta, "--tile": tile, "--overlap": overlap, "--blend": blend,
        "--mask-format": mask_format, "--format": annotation_format,
        "--polygon-tolerance": polygon_tolerance if annotation_format == "labelme" else None,
        "--overlay": overlay}, inputs)
    with prediction_output(out, record, resume=resume):  # locked, checked against a resumed folder, recorded
        if predictor is None:
            report = predict_with_ray(models, inputs, out, options=ray_options, overlay_images=overlay,
                                      threshold=threshold, mask_format=mask_format, resume=resume,
                                      progress=not quiet, plan=plan, depth=depth)
        else:
            sinks = annotation_sinks(out, predictor.class_names, annotation_format=annotation_format,
                                     tolerance=polygon_tolerance, rank=rank)
            report = predict_files(predictor, inputs, out, overlay_images=overlay, threshold=threshold,
                                   batch_size=batch_size, mask_format=mask_format, progress=not quiet, sinks=sinks,
                                   resume=resume, plan=plan, depth=depth)
    passes = predictor.tta_passes if predictor is not None else None  # forward passes per image (local engine)
    typer.echo(f"wrote {len(report.written)} masks to {out}" + (f" ({len(report.skipped)} already there)"
                                                                 if report.skipped else ""))
    if tta and report.written:
        per_image = 1000 * report.seconds / len(report.written)
        cost = f"{passes} forward passes per image, ~{passes}x the inference time, " if passes else ""
        typer.echo(f"tta: {cost}{per_image:.0f} ms per image with TTA")
    _exit_on_failures(report.failed, "read")


def _exit_on_failures(failed: list[tuple[Any, str]], verb: str) -> None:
    """List the files a folder run went past (each reason names its file) and exit 1; nothing if none."""
    if not failed:
        return
    err.print(f"[red]{len(failed)} file(s) could not be {verb}:[/red]", markup=True)
    for _, reason in failed:
        err.print(f"  {reason}", markup=False, soft_wrap=True)
    raise typer.Exit(1)


@app.command("export")
@user_errors
def export_command(
    bundle: Path = typer.Argument(..., help="model bundle (model.msb)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="[default: the bundle's name with .onnx "
                                       "(.int8.onnx with --int8)]"),
    export_format: str = typer.Option("onnx", "--format", help="export format: onnx"),
    int8: bool = typer.Option(False, "--int8", help="static int8 quantization of the convolutions"),
    calibration: Optional[List[str]] = typer.Option(None, "--calibration", help="images for int8 calibration "
                                                    "(files, folders or globs; real images)"),
    opset: int = typer.Option(18, min=7, max=30, help="ONNX opset"),
) -> None:
    """Export a bundle to ONNX (fp32 or int8) with its metadata, verified against PyTorch."""
    from masksmith.steps import export

    report = export(bundle, out, export_format=export_format, opset=opset, int8=int8,
                    calibration=calibration or None)
    typer.echo(report.summary())


@app.command("serve")
@user_errors
def serve_command(
    model: Path = typer.Argument(..., help="model bundle (model.msb) or exported model (model.onnx)"),
    host: str = typer.Option("127.0.0.1", help="address to listen on; anything but loopback needs --token"),
    port: int = typer.Option(8000, help="TCP port (0: a free one)"),
    token: Optional[str] = typer.Option(None, envvar="MASKSMITH_SERVE_TOKEN",
                                        help="bearer token required on every route but /healthz"),
    backend: Optional[str] = typer.Option(None, help="torch | onnx [default: onnx for .onnx files, else torch]"),
    threads: Optional[int] = typer.Option(None, help="compute threads [default: one per physical core]"),
    device: str = typer.Option("cpu", help="cpu | cuda | auto: where the torch backend runs (onnx: the CPU)"),
    max_batch: Optional[int] = typer.Option(None, help="most images run together in one batch (1: batching off) "
                                            "[default: the size of 1..8 with the most images/s, measured at startup]"),
    max_wait_ms: float = typer.Option(5.0, help="how long a request may wait for others to batch with"),
    max_queue: int = typer.Option(64, help="waiting requests before new ones get 503 + Retry-After"),
    max_upload_mb: float = typer.Option(32.0, help="largest request body in MiB (413 above)"),
    max_pixels: int = typer.Option(25_000_000, help="largest image in pixels, refused from its header (413)"),
    max_work_mb: float = typer.Option(2048.0, help="most MiB predicting one image may allocate, estimated from "
                                      "its header (413 above; the estimate counts tiles, logits and the answer)"),
    max_aspect: float = typer.Option(100.0, help="most extreme aspect ratio (long side / short side) accepted (413)"),
    timeout: float = typer.Option(30.0, help="seconds a request may take before it is answered 408"),
    header_timeout: float = typer.Option(10.0, help="seconds a client has to send a request's headers (408, closed)"),
    max_connections: int = typer.Option(256, help="open connections at once; more get 503 and are closed"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no access log"),
) -> None:
    """Serve a model over HTTP: POST /v1/segment, GET /v1/model, /healthz, /readyz, /metrics, a web page at /."""
    from masksmith.serve import require_serve_extra

    require_serve_extra()
    from masksmith.serve.options import ServeOptions
    from masksmith.serve.server import serve

    options = ServeOptions(host=host, port=port, token=token, max_batch=max_batch, max_wait_ms=max_wait_ms,
                           max_queue=max_queue, max_upload_bytes=int(max_upload_mb * 2**20), max_pixels=max_pixels,
                           max_work_bytes=int(max_work_mb * 2**20), max_aspect=max_aspect, timeout_s=timeout,
                           header_timeout_s=header_timeout, max_connections=max_connections, threads=threads,
                           device=device)
    serve(model, options, backend=backend, access_log=not quiet)


@app.command("label")
@user_errors
def label_command(
    data: Path = typer.Argument(..., help="dataset folder (images/ + masks/, split folders, VOC, or a folder of images)"),
    model: Optional[Path] = typer.Option(None, "--model", help="model bundle (model.msb) or ONNX export: its "
                                         "predictions start each mask, rank the queue and drive the region assist"),
    classes: Optional[str] = typer.Option(None, help="classes.txt, one name per line, background first "
                                          "[default: DATA/classes.txt]"),
    foreground: Optional[int] = typer.Option(None, help="binary masks: the pixel value meaning foreground"),
    palette: Optional[str] = typer.Option(None, help="RGB color masks: palette file (labelmap.txt, name,r,g,b)"),
    ignore_color: Optional[str] = typer.Option(None, help="RGB color masks: ignored color as R,G,B"),
    ignore_index: Optional[int] = typer.Option(None, help="mask value that marks pixels to ignore [default: 255]"),
    mask_suffix: Optional[str] = typer.Option(None, help="mask file suffix, e.g. _mask"),
    host: str = typer.Option("127.0.0.1", help="address to listen on; anything but loopback needs --token"),
    port: int = typer.Option(8001, help="TCP port (0: a free one)"),
    token: Optional[str] = typer.Option(None, envvar="MASKSMITH_LABEL_TOKEN", help="bearer token required on "
                                        "every route (in a browser, open /?token=TOKEN once)"),
    threads: Optional[int] = typer.Option(None, help="compute threads of the model [default: one per core]"),
    max_upload_mb: float = typer.Option(64.0, help="largest mask upload in MiB (413 above)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no access log"),
) -> None:
    """Label DATA in the browser: draw and correct masks, saved in the dataset's own encoding."""
    from masksmith.serve import require_serve_extra

    require_serve_extra()
    from masksmith.serve.label.server import label
    from masksmith.serve.label.store import LabelOptions
    from masksmith.train_options import parse_color

    color = tuple(parse_color(ignore_color)) if ignore_color is not None else None
    options = LabelOptions(classes=classes, foreground=foreground, palette=palette, ignore_color=color,
                           ignore_index=ignore_index, mask_suffix=mask_suffix)
    label(data, model, options, host=host, port=port, token=token, threads=threads,
          max_upload_bytes=int(max_upload_mb * 2**20), access_log=not quiet)


convert_app = typer.Typer(no_args_is_help=True, help="Turn annotations into images + masks (VOC layout).")
app.add_typer(convert_app, name="convert")


# Options every converter takes (shared objects: typer only reads them).
_INSTANCES = typer.Option(True, "--instances/--no-instances", help="write SegmentationObject/ "
                          "(at most 254 instances an image)")
_VIZ = typer.Option(True, "--viz/--no-viz", help="write *Visualization/ overlays")
_QUIET = typer.Option(False, "--quiet", "-q")


def _finish_conversion(report: Any, out: Path) -> None:
    typer.echo(f"wrote {len(report.written)} masks, {len(report.class_names)} classes, to {out}")
    _exit_on_failures(report.failed, "converted")


@convert_app.command("labelme")
@user_errors
def convert_labelme_command(
    src: Path = typer.Argument(..., help="folder of Labelme JSON files (images beside them or embedded)"),
    out: Path = typer.Argument(..., help="output folder (VOC layout)"),
    labels: Optional[Path] = typer.Option(None, help="labels.txt: __ignore__, _background_, then the classes"),
    instances: bool = typer.Option(True, "--instances/--no-instances", help="write SegmentationObject/"),
    visualize: bool = _VIZ,
    quiet: bool = _QUIET,
) -> None:
    """Labelme JSON → JPEGImages/, SegmentationClass/ (palette PNG), class_names.txt."""
    from masksmith.data.convert import convert_labelme

    report = convert_labelme(src, out, labels, instances=instances, visualize=visualize, progress=not quiet)
    _finish_conversion(report, out)


@convert_app.command("coco")
@user_errors
def convert_coco_command(
    annotations: Path = typer.Argument(..., help="COCO annotations JSON (polygons or RLE)"),
    images: Path = typer.Argument(..., help="folder holding the images"),
    out: Path = typer.Argument(..., help="output folder (VOC layout)"),
    instances: bool = _INSTANCES,
    visualize: bool = _VIZ,
    quiet: bool = _QUIET,
) -> None:
    """COCO instances → index masks; category ids mapped to contiguous classes; iscrowd → ignore."""
    from masksmith.data.convert import convert_coco

    report = convert_coco(annotations, images, out, visualize=visualize, progress=not quiet, instances=instances)
    _finish_conversion(report, out)


@convert_app.command("yolo")
@user_errors
def convert_yolo_command(
    src: Path = typer.Argument(..., help="YOLO dataset folder: data.yaml, images/ and labels/ (per split)"),
    out: Path = typer.Argument(..., help="output folder (VOC layout)"),
    data: Optional[Path] = typer.Option(None, help="the dataset YAML with the class names [default: SRC/data.yaml]"),
    instances: bool = _INSTANCES,
    visualize: bool = _VIZ,
    quiet: bool = _QUIET,
) -> None:
    """YOLO segmentation labels (Ultralytics, Roboflow) → index masks; later lines over earlier ones."""
    from masksmith.data.convert import convert_yolo

    report = convert_yolo(src, out, data, instances=instances, visualize=visualize, progress=not quiet)
    _finish_conversion(report, out)


@convert_app.command("labelstudio")
@user_errors
def convert_labelstudio_command(
    export: Path = typer.Argument(..., help="Label Studio JSON export (polygon and brush labels)"),
    images: Path = typer.Argument(..., help="folder holding the images"),
    out: Path = typer.Argument(..., help="output folder (VOC layout)"),
    labels: Optional[Path] = typer.Option(None, help="labels file, one label a line, in class order "
                                          "[default: the labels used, sorted]"),
    instances: bool = _INSTANCES,
    visualize: bool = _VIZ,
    quiet: bool = _QUIET,
) -> None:
    """Label Studio polygons and brushes → index masks; regions in the order they were made."""
    from masksmith.data.convert import convert_labelstudio

    report = convert_labelstudio(export, images, out, labels, instances=instances, visualize=visualize,
                                 progress=not quiet)
    _finish_conversion(report, out)


@convert_app.command("cvat")
@user_errors
def convert_cvat_command(
    annotations: Path = typer.Argument(..., help="CVAT for images 1.1 annotations.xml"),
    images: Path = typer.Argument(..., help="folder holding the images"),
    out: Path = typer.Argument(..., help="output folder (VOC layout)"),
    instances: bool = _INSTANCES,
    visualize: bool = _VIZ,
    quiet: bool = _QUIET,
) -> None:
    """CVAT polygons, boxes and masks → index masks, stacked by z_order as CVAT's mask export does."""
    from masksmith.data.convert import convert_cvat

    report = convert_cvat(annotations, images, out, instances=instances, visualize=visualize, progress=not quiet)
    _finish_conversion(report, out)


@app.command()
def models() -> None:
    """List the model architectures and their options."""
    from masksmith.models import MODELS, model_options

    for name in MODELS.names():
        options = ", ".join(f"{key}={value!r}" for key, value in model_options(name).items())
        typer.echo(f"{name}: {options}")


@app.command()
def augmentations() -> None:
    """List the augmentation presets."""
    from masksmith.augment import AUGMENTATIONS

    for name in AUGMENTATIONS.names():
        typer.echo(name)


def _one_line_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> str:
    return f"warning: {message}\n"


def main() -> None:
    """Console-script entry point."""
    # Data warnings (skipped files, folders left out) are for users: no source lines, no class names.
    warnings.formatwarning = _one_line_warning
    app()


if __name__ == "__main__":
    main()
    sys.exit(0)
