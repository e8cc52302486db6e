"""The base of every command's options model (check, evaluate, predict, export, serve, convert).

A command's options are one pydantic model: each field's default, bounds and description are stated there once,
and `masksmith.cli.options` turns the fields into the command's flags, its `--help` and the options table of
its docs page. Name-valued fields (a Literal, or `choices` in the field's extra) refuse an unknown name
before any data is read, with the closest valid one.

Field extras (json_schema_extra) the generator reads: `flags` (the field's flags when not --field-name),
`default_text` (how a computed default is shown), `envvar`, `kind` (how the command line writes the value),
`choices` (the valid names, from the constant that owns them) and `cli_only` (presentation options such as
--json that the Python API does not take).
"""

from __future__ import annotations

import typing
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from masksmith.core.registry import did_you_mean
from masksmith.errors import ConfigError

# An R,G,B option value (an ignored color).
RgbColor = Annotated[list[Annotated[int, Field(ge=0, le=255)]], Field(min_length=3, max_length=3)]


def field_extra(field: Any) -> dict[str, Any]:
    """A field's json_schema_extra as a dict (empty when it has none)."""
    return field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}


def extra(*flags: str, **values: Any) -> dict[str, Any]:
    """json_schema_extra for a field: its flags (--field-name is added unless a long one is given) and the
    other extras named in the module docstring."""
    return {**({"flags": list(flags)} if flags else {}), **values}


def long_flag(name: str, field: Any) -> str:
    """The field's first long flag, as help and errors name it."""
    named = [flag for flag in field_extra(field).get("flags", []) if flag.startswith("--")]
    return named[0].split("/")[0] if named else "--" + name.replace("_", "-")


def literal_names(annotation: Any) -> tuple[str, ...]:
    """The names a Literal (or an optional Literal) allows; () for any other type."""
    if typing.get_origin(annotation) is Literal:
        return tuple(str(value) for value in typing.get_args(annotation))
    for arg in typing.get_args(annotation):
        if typing.get_origin(arg) is Literal:
            return literal_names(arg)
    return ()


def valid_names(field: Any) -> tuple[str, ...]:
    """The names a name-valued field accepts (its `choices` extra or its Literal); () for free values."""
    return tuple(field_extra(field).get("choices", ())) or literal_names(field.annotation)


C = TypeVar("C", bound="CommandConfig")


class CommandConfig(BaseModel):
    """Options of one command; subclasses name the command in COMMAND."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    COMMAND: ClassVar[str] = ""

    @field_validator("*", mode="before")
    @classmethod
    def _known_name(cls, value: Any, info: ValidationInfo) -> Any:
        # Before pydantic's own Literal check, whose message lists the names but suggests none.
        valid = valid_names(cls.model_fields[info.field_name]) if info.field_name else ()
        if valid and isinstance(value, str) and value not in valid:
            kind = info.field_name.replace("_", " ")
            raise ValueError(f"unknown {kind} {value!r}{did_you_mean(value, valid)}; valid: {', '.join(valid)}")
        return value

    @classmethod
    def of(cls: type[C], **values: Any) -> C:
        """The validated options; a ConfigError naming each bad option (as its flag) in one line otherwise."""
        try:
            return cls(**values)
        except ValidationError as error:
            parts = []
            for item in error.errors():
                name = str(item["loc"][0]) if item["loc"] else ""
                if item["type"] == "extra_forbidden":
                    parts.append(f"unknown option {name!r}{did_you_mean(name, cls.model_fields)}")
                    continue
                where = long_flag(name, cls.model_fields[name]) if name in cls.model_fields else "options"
                if any(part.startswith(f"{where}: ") for part in parts):
                    continue  # a union's other members: the first reason is enough
                parts.append(f"{where}: {item['msg'].removeprefix('Value error, ')}")
            raise ConfigError(f"{cls.COMMAND}: " + "; ".join(parts)) from None

    def api_values(self) -> dict[str, Any]:
        """The options the Python API takes as keywords (all but the command line's presentation options)."""
        return {name: getattr(self, name) for name, field in type(self).model_fields.items()
                if not field_extra(field).get("cli_only")}
