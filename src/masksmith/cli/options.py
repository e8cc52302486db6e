"""Options models → command-line options, their help and the options tables of the docs pages.

Every option of `masksmith train` comes from a TrainConfig field, and every option of check, evaluate,
predict, export, serve, label and convert from a field of that command's CommandConfig (COMMAND_CONFIGS): its flag
(--field-name, plus the field's extra `flags`), its help (the field's description, the valid names from the
registries or the Literal, the default) and how its text is parsed. A new field therefore appears on the
command line, in `--help` and in the options table at once.

`python -m masksmith.cli.options` prints train's table; `--write PAGE` puts every table that belongs to the
page between its markers (TABLE_PAGES; a test checks that each page matches its configs).
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Literal, Optional

import typer
import yaml
from pydantic import BaseModel
from rich.markup import escape

from masksmith.config import MONITORED_METRICS, TrainConfig
from masksmith.core.command_config import CommandConfig, field_extra, valid_names
from masksmith.errors import ConfigError

# Fields whose type alone does not say how the command line writes them.
_KIND_BY_FIELD = {"size": "size", "ignore_color": "color", "model_options": "pairs", "augment": "str",
                  "classes": "str"}
_CLI_TYPES: dict[str, Any] = {"bool": Optional[bool], "int": Optional[int], "float": Optional[float],
                              "str": Optional[str], "size": Optional[str], "color": Optional[str],
                              "floats": Optional[str], "pairs": Optional[List[str]], "list": Optional[List[str]]}
_METAVARS = {"size": "SIDE|HxW", "color": "R,G,B", "floats": "X,Y,...", "pairs": "NAME=VALUE"}
# The command's own parameters, which are not config fields.
COMMAND_ONLY = ("data", "config", "resume")


@dataclass(frozen=True)
class CliOption:
    """One config field as a command-line option."""

    field: str
    flags: tuple[str, ...]
    kind: str
    help: str

    @property
    def long_flag(self) -> str:
        """The first long flag, as the help and the error messages name it."""
        return self.flags[0].split("/")[0]


Config = type[BaseModel]


def _kind(name: str, annotation: Any, config: Config = TrainConfig) -> str:
    kind = field_extra(config.model_fields[name]).get("kind")
    if kind:
        return kind
    if config is TrainConfig and name in _KIND_BY_FIELD:
        return _KIND_BY_FIELD[name]
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = args[0] if len(args) == 1 else str
    origin = typing.get_origin(annotation)
    if annotation is bool:
        return "bool"
    if annotation is int:
        return "int"
    if annotation is float:
        return "float"
    # A bounded element (Annotated[float, Field(ge=...)]) is read like a plain one.
    elements = [typing.get_args(arg)[0] if typing.get_origin(arg) is typing.Annotated else arg
                for arg in typing.get_args(annotation)]
    if origin is list and elements in ([float], [int]):
        return "floats"
    if origin is list:
        return "list"
    if origin is dict:
        return "pairs"
    return "str"


def choices(name: str, config: Config = TrainConfig) -> list[str] | None:
    """The valid values of a name-valued option, from the registries (models, losses, augmentation presets,
    encoders), the metric list, the field's `choices` or its Literal; None for free-form options."""
    if config is not TrainConfig:
        return list(valid_names(config.model_fields[name])) or None
    if name == "model":
        from masksmith.models import MODELS

        return MODELS.names()
    if name == "loss":
        from masksmith.training.losses import LOSSES

        return LOSSES.names()
    if name == "augment":
        from masksmith.training.augment import AUGMENTATIONS

        return AUGMENTATIONS.names()
    if name == "encoder":
        from masksmith.models.encoders import ENCODERS

        return list(ENCODERS)
    if name == "monitor":
        return list(MONITORED_METRICS)
    annotation = TrainConfig.model_fields[name].annotation
    if typing.get_origin(annotation) is Literal:
        return [str(value) for value in typing.get_args(annotation)]
    return None


def _choices_text(name: str, config: Config = TrainConfig) -> str:
    valid = choices(name, config)
    description = config.model_fields[name].description or ""
    if not valid or all(value in description for value in valid):
        return ""  # the description names them already
    if config is TrainConfig and name == "loss":
        return f" (terms: {', '.join(valid)}; sums such as 0.5*dice+ce)"
    if config is TrainConfig and name == "encoder":
        return f" (unet: {', '.join(valid)})"
    return f" ({' | '.join(valid)})"


def default_text(name: str, config: Config = TrainConfig) -> str:
    """The default as the help and the table show it; planned options say so, computed ones say how."""
    field = config.model_fields[name]
    extra = field_extra(field)
    if "default_text" in extra:
        return str(extra["default_text"])
    if field.is_required():
        return "required"
    default = field.get_default(call_default_factory=True)
    shown = "none" if default is None or default == {} else (
        "x".join(map(str, default)) if isinstance(default, list) else str(default).lower()
        if isinstance(default, bool) else str(default))
    return f"{shown}, or planned from the data" if extra.get("planned") else shown


def _command_only(config: Config) -> tuple[str, ...]:
    return COMMAND_ONLY if config is TrainConfig else ()


def cli_options(config: Config = TrainConfig) -> list[CliOption]:
    """Every field of `config` as an option, in the config's order (TrainConfig: all but COMMAND_ONLY)."""
    options = []
    for name, field in config.model_fields.items():
        if name in _command_only(config):
            continue
        kind = _kind(name, field.annotation, config)
        named = list(field_extra(field).get("flags", []))
        long_name = "--" + name.replace("_", "-")
        if not any(flag.startswith("--") for flag in named):
            named.insert(0, long_name)
        if kind == "bool" and not any("/" in flag for flag in named):
            # --x / --no-x: None when neither is typed, so only typed flags count as given.
            first = next(i for i, flag in enumerate(named) if flag.startswith("--"))
            named[first] = f"{named[first]}/--no-{named[first][2:]}"
        help_text = f"{field.description}{_choices_text(name, config)}"
        options.append(CliOption(name, tuple(named), kind, help_text))
    return options


def typer_parameters(config: Config = TrainConfig) -> list[inspect.Parameter]:
    """The generated options as keyword parameters Typer reads from a function signature."""
    parameters = []
    for option in cli_options(config):
        field = config.model_fields[option.field]
        # Escaped: help is rich markup, where "[height, width]" would vanish as an unknown tag.
        shown = "" if field.is_required() else f" [default: {default_text(option.field, config)}]"
        info = typer.Option(... if field.is_required() else None, *option.flags, help=escape(f"{option.help}{shown}"),
                            metavar=_METAVARS.get(option.kind), show_default=False,
                            envvar=field_extra(field).get("envvar"))
        parameters.append(inspect.Parameter(option.field, inspect.Parameter.KEYWORD_ONLY, default=info,
                                            annotation=_CLI_TYPES[option.kind]))
    return parameters


def parse_cli_values(values: dict[str, Any], config: Config = TrainConfig) -> dict[str, Any]:
    """Command-line texts into config values; options not typed (None, an empty list) are left out."""
    by_field = {option.field: option for option in cli_options(config)}
    parsed: dict[str, Any] = {}
    for name, value in values.items():
        if value is None or value == [] or value == ():
            continue
        option = by_field[name]
        parse = _PARSERS.get(option.kind)
        parsed[name] = parse(value, option.long_flag) if parse else value
    return parsed


def generated_command(body: Callable[..., Any], config: type[CommandConfig]) -> Callable[..., Any]:
    """`body(ARGUMENTS..., options)` as a Typer command: its own parameters (the positional arguments) followed
    by one option per field of `config`; the options typed are validated into `config` and passed as `options`."""
    own = [p for p in inspect.signature(body).parameters.values() if p.name != "options"]

    @functools.wraps(body)
    def command(**values: Any) -> Any:
        arguments = {p.name: values.pop(p.name) for p in own}
        return body(**arguments, options=config.of(**parse_cli_values(values, config)))

    command.__signature__ = inspect.Signature([*own, *typer_parameters(config)])  # type: ignore[attr-defined]
    return command


def parse_size(text: str, flag: str = "--size") -> int | list[int]:
    """'256' → 256, '384x256' (or 384,256) → [384, 256] (height, width)."""
    parts = [p.strip() for p in str(text).lower().replace(",", "x").split("x")]
    if len(parts) not in (1, 2) or not all(p.isdigit() for p in parts):
        raise ConfigError(f"{flag} {text!r}: expected a side such as 256, or HEIGHTxWIDTH such as 384x256")
    return int(parts[0]) if len(parts) == 1 else [int(p) for p in parts]


def parse_color(text: str, flag: str = "--ignore-color") -> list[int]:
    """'255,255,255' → [255, 255, 255]."""
    parts = [p.strip() for p in str(text).replace(" ", ",").split(",") if p.strip()]
    if len(parts) != 3 or not all(p.isdigit() and int(p) <= 255 for p in parts):
        raise ConfigError(f"{flag} {text!r}: expected R,G,B with values 0..255")
    return [int(p) for p in parts]


def parse_floats(text: str, flag: str) -> list[float]:
    """'0.5,0.5,0.5' → [0.5, 0.5, 0.5]."""
    try:
        return [float(p) for p in str(text).replace(" ", ",").split(",") if p.strip()]
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: expected numbers separated by commas, e.g. 0.5,0.5,0.5") from None


def parse_pairs(pairs: list[str], flag: str) -> dict[str, Any]:
    """['depth=3', 'base_channels=16'] → {'depth': 3, 'base_channels': 16}, values read as YAML scalars."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} {pair!r}: expected NAME=VALUE")
        try:
            options[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"{flag} {pair!r}: the value is not a readable number, word or list") from None
    return options


_PARSERS = {"size": parse_size, "color": parse_color, "floats": parse_floats, "pairs": parse_pairs}


def _table_fields(config: Config) -> list[CliOption]:
    """The options a table lists: a converter's own (those every converter takes have a table of their own)."""
    parent = config.__mro__[1]
    inherited = set(parent.model_fields) if parent is not CommandConfig and issubclass(parent, CommandConfig) else set()
    return [option for option in cli_options(config) if option.field not in inherited]


def options_table(config: Config = TrainConfig) -> str:
    """The options as a Markdown table (option, flag, default, description) for the command's docs page; the
    option column is also the Python API's keyword (the presentation options say they are the CLI's own)."""
    rows = ["| option | flag | default | description |", "|---|---|---|---|"]
    for option in _table_fields(config):
        field = config.model_fields[option.field]
        flags = ", ".join(f"`{flag}`" for flag in option.flags)
        description = (field.description or "") + _choices_text(option.field, config)
        if field_extra(field).get("cli_only"):
            description += " (command line only)"
        rows.append(f"| `{option.field}` | {flags} | {default_text(option.field, config)} | "
                    f"{description.replace('|', '&#124;').replace('<', '&lt;')} |")
    return "\n".join(rows) + "\n"


def _command_configs() -> dict[str, Config]:
    from masksmith.data.check.config import CheckConfig
    from masksmith.data.convert.config import (ConvertConfig, LabelmeConvertConfig, LabelStudioConvertConfig,
                                               YoloConvertConfig)
    from masksmith.evaluation.config import EvaluateConfig
    from masksmith.inference.config import ExportConfig, PredictConfig
    from masksmith.serve.config import ServeConfig
    from masksmith.serve.label.config import LabelConfig

    return {"train": TrainConfig, "check": CheckConfig, "convert": ConvertConfig,
            "convert labelme": LabelmeConvertConfig, "convert yolo": YoloConvertConfig,
            "convert labelstudio": LabelStudioConvertConfig, "evaluate": EvaluateConfig, "predict": PredictConfig,
            "export": ExportConfig, "serve": ServeConfig, "label": LabelConfig}


# The options model of each command (`convert`: the options every converter takes; a converter's own model
# holds its other options).
COMMAND_CONFIGS: dict[str, Config] = _command_configs()
OPTIONS_TABLE_FILE = "docs/training.md"
# Which commands' tables each docs page holds.
TABLE_PAGES: dict[str, tuple[str, ...]] = {
    "docs/training.md": ("train",),
    "docs/data.md": ("check", "convert", "convert labelme", "convert yolo", "convert labelstudio"),
    "docs/evaluation.md": ("evaluate",),
    "docs/inference.md": ("predict", "export"),
    "docs/serve.md": ("serve",),
    "docs/labelling.md": ("label",),
}
TABLE_START, TABLE_END = "<!-- options-table:start -->\n", "<!-- options-table:end -->"


def table_markers(command: str = "train") -> tuple[str, str]:
    """The markers around a command's table (train's table has the plain ones)."""
    if command == "train":
        return TABLE_START, TABLE_END
    name = command.replace(" ", "-")
    return f"<!-- options-table:{name}:start -->\n", f"<!-- options-table:{name}:end -->"


def with_options_table(page: str, source: str = OPTIONS_TABLE_FILE, command: str = "train") -> str:
    """`page` with the command's generated table between its markers; ConfigError when it has none."""
    start, end = table_markers(command)
    if start not in page or end not in page.split(start, 1)[1]:
        raise ConfigError(f"{source}: no options table markers ({start.strip()} ... {end})")
    head, rest = page.split(start, 1)
    return head + start + options_table(COMMAND_CONFIGS[command]) + end + rest.split(end, 1)[1]


def with_options_tables(page: str, source: str) -> str:
    """`page` with the table of every command TABLE_PAGES gives it (by the page's file name; train's otherwise)."""
    commands = next((names for path, names in TABLE_PAGES.items() if Path(path).name == Path(source).name),
                    ("train",))
    for command in commands:
        page = with_options_table(page, source, command)
    return page


def _main(argv: list[str]) -> None:
    if not argv:
        print(options_table(), end="")
        return
    if len(argv) != 2 or argv[0] != "--write":
        raise SystemExit("usage: python -m masksmith.cli.options [--write docs/PAGE.md]")
    from masksmith.core.fileio import write_text_atomic

    page = Path(argv[1])
    try:
        write_text_atomic(page, with_options_tables(page.read_text(encoding="utf-8"), str(page)))
    except (ConfigError, OSError) as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    import sys

    _main(sys.argv[1:])
