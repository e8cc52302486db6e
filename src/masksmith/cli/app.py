"""The `masksmith` command line: each command is a thin wrapper over the Python API."""

from __future__ import annotations

import functools
import inspect
import os
import warnings
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer
from rich.console import Console
from rich.markup import escape

from masksmith.cli.options import generated_command
from masksmith.core.command_config import CommandConfig
from masksmith.data.check.config import CheckConfig
from masksmith.data.convert.config import (ConvertConfig, LabelmeConvertConfig, LabelStudioConvertConfig,
                                           YoloConvertConfig)
from masksmith.errors import MasksmithError
from masksmith.evaluation.config import EvaluateConfig
from masksmith.inference.config import ExportConfig, PredictConfig
from masksmith.inference.work_budget import MB
from masksmith.serve.config import ServeConfig
from masksmith.serve.label.config import LabelConfig

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
    from masksmith.cli.options import parse_cli_values
    from masksmith.training import train as run_training

    if data is None and config is None and resume is None:
        raise MasksmithError("give a DATA folder, a --config file, or --resume RUN_FOLDER")
    result = run_training(data, config=config, resume=resume, **parse_cli_values(flags))
    from masksmith.training.parallel import detect_launch

    if detect_launch().leader:  # under torchrun or SLURM every process returns here; rank 0 wrote the model
        typer.echo(f"model: {result.bundle}")


def _train_signature() -> inspect.Signature:
    """_train's own parameters followed by one keyword parameter per TrainConfig field."""
    from masksmith.cli.options import typer_parameters

    own = [p for p in inspect.signature(_train).parameters.values() if p.kind is not p.VAR_KEYWORD]
    return inspect.Signature([*own, *typer_parameters()])


_train.__signature__ = _train_signature()  # type: ignore[attr-defined]
app.command("train")(user_errors(_train))


def _command(name: str, config: type[CommandConfig], group: typer.Typer | None = None) -> Callable[..., Any]:
    """Register `body` as the command `name`, its options generated from `config` (cli.options)."""

    def register(body: Callable[..., Any]) -> Callable[..., Any]:
        (group or app).command(name)(user_errors(generated_command(body, config)))
        return body

    return register


@_command("check", CheckConfig)
def check(data: Path = typer.Argument(..., help="dataset folder"), *, options: CheckConfig) -> None:
    """Check a dataset: pairing, unreadable files, sizes, mask values, class frequencies, duplicates, leakage.

    Exit code 0 when clean, 2 on errors, 1 on warnings with --strict."""
    from masksmith.data.check import print_report
    from masksmith.data.check.step import check as check_data

    result = check_data(data, **options.api_values(), progress=not (options.quiet or options.json_output))
    if options.json_output:
        typer.echo(result.to_json())
    elif not options.quiet:
        print_report(result.report, Console())
        typer.echo(f"report: {result.report_path}, fingerprint: {result.fingerprint_path}")
    raise typer.Exit(result.report.exit_code(options.strict))


@_command("evaluate", EvaluateConfig)
def evaluate(
    bundle: Path = typer.Argument(..., help="model bundle (model.msb), or a cross-validation run folder (its folds' "
                                  "ensemble)"),
    rest: List[Path] = typer.Argument(..., metavar="[MODEL...] DATA", help="more models (an ensemble averages "
                                      "their probabilities), then the labelled dataset folder"),
    *, options: EvaluateConfig,
) -> None:
    """Score a model on labelled images: per-class IoU, Dice, precision, recall; plots and a gallery."""
    from masksmith.evaluation.report import print_results
    from masksmith.evaluation.scoring import evaluate as run_evaluation

    *more, data = rest  # evaluate MODEL [MODEL...] DATA: the last argument is the data
    result = run_evaluation([bundle, *more] if more else bundle, data, **options.api_values(),
                            progress=not options.quiet)
    if not options.quiet:
        print_results(result.to_dict())
    typer.echo(f"report: {result.out}")
    if result.html is not None:
        typer.echo(f"html: {result.html}")
    _exit_on_failures([(row.name, row.reason) for row in result.failed], "evaluated")


@_command("predict", PredictConfig)
def predict(
    bundle: Path = typer.Argument(..., help="model bundle (model.msb), exported model (model.onnx) or a "
                                  "cross-validation run folder"),
    inputs: List[str] = typer.Argument(..., help="image files, folders or glob patterns; leading .msb/.onnx files "
                                       "and CV run folders are more models (an ensemble of their probabilities)"),
    *, options: PredictConfig,
) -> None:
    """Predict masks at each image's original size, as palette PNGs (and overlays, annotations, a ranking)."""
    from masksmith.annotations import annotation_sinks, check_annotation_options
    from masksmith.core.fileio import refuse_if_locked
    from masksmith.inference.ensemble import load_models, split_models
    from masksmith.inference.files import plan_predictions
    from masksmith.inference.pipeline import pipeline_depth
    from masksmith.inference.predictor import check_threshold, predict_files
    from masksmith.inference.record import PredictionRecord, prediction_output

    o = options
    models, inputs = split_models(bundle, inputs)
    if not inputs:
        raise MasksmithError(f"no images to predict: every argument after the model is a model too ({models[-1]})")
    check_annotation_options(o.annotation_format, o.polygon_tolerance, o.rank)  # before the model loads
    check_threshold(o.threshold)
    depth = pipeline_depth()  # a bad $MASKSMITH_PIPELINE_DEPTH is refused before any work
    if o.engine == "ray":
        from masksmith.inference.ray_engine import RayOptions, import_ray, predict_with_ray

        import_ray()  # a missing extra is named before OUT is made
        if o.annotation_format != "png" or o.rank:
            raise MasksmithError("--format labelme/coco and --rank gather every image in one process: "
                                 "use --engine local for them")
        ray_options = RayOptions(address=o.address, actors=o.actors, batch_size=o.batch_size, threads=o.threads,
                                 gpus_per_actor=o.gpus_per_actor, load_options=o.load_options())
    refuse_if_locked(o.out, kind="prediction")  # at once, before the model loads; the lock itself is taken below
    predictor = load_models(models, **o.load_options()) if o.engine == "local" else None
    _say_int8(predictor)
    # Planned before OUT is claimed: outputs that would replace an input are refused with OUT untouched.
    plan = plan_predictions(inputs, o.out, overlay_images=o.overlay, resume=o.resume)
    record = PredictionRecord.of(models, {
        "--threshold": o.threshold, "--tta": o.tta, "--tile": o.tile, "--overlap": o.overlap, "--blend": o.blend,
        "--mask-format": o.mask_format, "--format": o.annotation_format,
        "--polygon-tolerance": o.polygon_tolerance if o.annotation_format == "labelme" else None,
        "--overlay": o.overlay}, inputs)
    with prediction_output(o.out, record, resume=o.resume):  # locked, checked against a resumed folder, recorded
        if predictor is None:
            report = predict_with_ray(models, inputs, o.out, options=ray_options, overlay_images=o.overlay,
                                      threshold=o.threshold, mask_format=o.mask_format, resume=o.resume,
                                      progress=not o.quiet, plan=plan, depth=depth)
        else:
            sinks = annotation_sinks(o.out, predictor.class_names, annotation_format=o.annotation_format,
                                     tolerance=o.polygon_tolerance, rank=o.rank)
            report = predict_files(predictor, inputs, o.out, overlay_images=o.overlay, threshold=o.threshold,
                                   batch_size=o.batch_size, mask_format=o.mask_format, progress=not o.quiet,
                                   sinks=sinks, resume=o.resume, plan=plan, depth=depth)
    passes = predictor.tta_passes if predictor is not None else None  # forward passes per image (local engine)
    typer.echo(report.summary(o.out, tta=o.tta, tta_passes=passes))
    _exit_on_failures(report.failed, "read")


def _say_int8(predictor: Any) -> None:
    """An int8 model changes masks: say by how much (its export measured it), once, on stderr."""
    from masksmith.inference.export import int8_note

    for member in getattr(predictor, "members", [predictor]):
        header = getattr(getattr(member, "backend", None), "header", None)
        note = int8_note(header) if header is not None else None
        if note:
            err.print(note, markup=False, highlight=False, soft_wrap=True)


def _exit_on_failures(failed: list[tuple[Any, str]], verb: str) -> None:
    """List the files a folder run went past (each reason names its file) and exit 1; nothing if none."""
    if not failed:
        return
    err.print(f"[red]{len(failed)} file(s) could not be {verb}:[/red]", markup=True)
    for _, reason in failed:
        err.print(f"  {reason}", markup=False, soft_wrap=True)
    raise typer.Exit(1)


@_command("export", ExportConfig)
def export_command(bundle: Path = typer.Argument(..., help="model bundle (model.msb)"), *,
                   options: ExportConfig) -> None:
    """Export a bundle to ONNX (fp32 or int8) with its metadata, verified against PyTorch."""
    from masksmith.inference.export import export

    typer.echo(export(bundle, **options.api_values()).summary())


@_command("serve", ServeConfig)
def serve_command(model: Path = typer.Argument(..., help="model bundle (model.msb) or exported model (model.onnx)"),
                  *, options: ServeConfig) -> None:
    """Serve a model over HTTP: POST /v1/segment, GET /v1/model, /healthz, /readyz, /metrics, a web page at /."""
    from masksmith.serve import require_serve_extra

    require_serve_extra()
    from masksmith.serve.server import serve

    serve(model, options.serve_options(), backend=options.backend, access_log=not options.quiet)


@_command("label", LabelConfig)
def label_command(
    data: Path = typer.Argument(..., help="dataset folder (images/ + masks/, split folders, VOC, or a folder of images)"),
    *, options: LabelConfig,
) -> None:
    """Label DATA in the browser: draw and correct masks, saved in the dataset's own encoding."""
    from masksmith.serve import require_serve_extra

    require_serve_extra()
    from masksmith.serve.label.server import label

    label(data, options.model, options.label_options(), host=options.host, port=options.port, token=options.token,
          threads=options.threads, max_upload_bytes=int(options.max_upload_mb * MB), access_log=not options.quiet)


convert_app = typer.Typer(no_args_is_help=True, help="Turn annotations into images + masks (VOC layout).")
app.add_typer(convert_app, name="convert")


def _finish_conversion(report: Any, out: Path) -> None:
    typer.echo(f"wrote {len(report.written)} masks, {len(report.class_names)} classes, to {out}")
    _exit_on_failures(report.failed, "converted")


@_command("labelme", LabelmeConvertConfig, convert_app)
def convert_labelme_command(
    src: Path = typer.Argument(..., help="folder of Labelme JSON files (images beside them or embedded)"),
    out: Path = typer.Argument(..., help="output folder (VOC layout)"),
    *, options: LabelmeConvertConfig,
) -> None:
    """Labelme JSON → JPEGImages/, SegmentationClass/ (palette PNG), class_names.txt."""
    from masksmith.data.convert import convert_labelme

    report = convert_labelme(src, out, options.labels, instances=options.instances, visualize=options.visualize,
                             progress=not options.quiet)
    _finish_conversion(report, out)


@_command("coco", ConvertConfig, convert_app)
def convert_coco_command(
    annotations: Path = typer.Argument(..., help="COCO annotations JSON (polygons or RLE)"),
    images: Path = typer.Argument(..., help="folder holding the images"),
    out: Path = typer.Argument(..., help="output folder (VOC layout)"),
    *, options: ConvertConfig,
) -> None:
    """COCO instances → index masks; category ids mapped to contiguous classes; iscrowd → ignore."""
    from masksmith.data.convert import convert_coco

    report = convert_coco(annotations, images, out, visualize=options.visualize, progress=not options.quiet,
                          instances=options.instances)
    _finish_conversion(report, out)


@_command("yolo", YoloConvertConfig, convert_app)
def convert_yolo_command(
    src: Path = typer.Argument(..., help="YOLO dataset folder: data.yaml, images/ and labels/ (per split)"),
    out: Path = typer.Argument(..., help="output folder (VOC layout)"),
    *, options: YoloConvertConfig,
) -> None:
    """YOLO segmentation labels (Ultralytics, Roboflow) → index masks; later lines over earlier ones."""
    from masksmith.data.convert import convert_yolo

    report = convert_yolo(src, out, options.data, instances=options.instances, visualize=options.visualize,
                          progress=not options.quiet)
    _finish_conversion(report, out)


@_command("labelstudio", LabelStudioConvertConfig, convert_app)
def convert_labelstudio_command(
    export: Path = typer.Argument(..., help="Label Studio JSON export (polygon and brush labels)"),
    images: Path = typer.Argument(..., help="folder holding the images"),
    out: Path = typer.Argument(..., help="output folder (VOC layout)"),
    *, options: LabelStudioConvertConfig,
) -> None:
    """Label Studio polygons and brushes → index masks; regions in the order they were made."""
    from masksmith.data.convert import convert_labelstudio

    report = convert_labelstudio(export, images, out, options.labels, instances=options.instances,
                                 visualize=options.visualize, progress=not options.quiet)
    _finish_conversion(report, out)


@_command("cvat", ConvertConfig, convert_app)
def convert_cvat_command(
    annotations: Path = typer.Argument(..., help="CVAT for images 1.1 annotations.xml"),
    images: Path = typer.Argument(..., help="folder holding the images"),
    out: Path = typer.Argument(..., help="output folder (VOC layout)"),
    *, options: ConvertConfig,
) -> None:
    """CVAT polygons, boxes and masks → index masks, stacked by z_order as CVAT's mask export does."""
    from masksmith.data.convert import convert_cvat

    report = convert_cvat(annotations, images, out, instances=options.instances, visualize=options.visualize,
                          progress=not options.quiet)
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
    from masksmith.training.augment import AUGMENTATIONS

    for name in AUGMENTATIONS.names():
        typer.echo(name)


def _one_line_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> str:
    return f"warning: {message}\n"


def main() -> None:
    """Console-script entry point."""
    # Data warnings (skipped files, folders left out) are for users: no source lines, no class names.
    warnings.formatwarning = _one_line_warning
    app()

