"""Reading a command's YAML file: one section validated against a pydantic model, errors as one line."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from scaling.errors import InputError

Model = TypeVar("Model", bound=BaseModel)


def validation_message(err: ValidationError, model: type[BaseModel], prefix: str = "") -> str:
    """One line for the first error of a pydantic ValidationError: the dotted field, the value and what is allowed.

    Validators that write "field: value ... allowed" get their field appended to the path (unless
    the path already ends in it); unknown keys list the settings allowed in that section, found
    through lists and optional sections too.
    """
    first = err.errors()[0]
    loc = [str(part) for part in first["loc"]]
    where = ".".join(part for part in [prefix, *loc] if part)
    if first["type"] == "value_error":
        message = str(first["ctx"]["error"])
        field, _, rest = message.partition(": ")
        if rest and " " not in field:
            if field in loc:
                return f"{where}: {rest}"
            return f"{'.'.join(part for part in [where, field] if part)}: {rest}"
        return f"{where}: {message}"
    if first["type"] == "missing":
        return f"{where}: is required"
    if first["type"] == "extra_forbidden":
        return f"{where}: unknown setting; allowed: {', '.join(_allowed(model, loc[:-1]))}"
    return f"{where}: {first['input']!r} is not allowed: {first['msg']}"


def _allowed(model: type[BaseModel], path: list[str]) -> list[str]:
    """The setting names of the section at `path` (list indices skipped)."""
    current: type[BaseModel] | None = model
    for part in path:
        if part.isdigit():
            continue
        field = current.model_fields.get(part) if current else None
        current = _section_model(field.annotation) if field else None
    return list(current.model_fields) if current else []


def _section_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _section_model(arg)
        if found is not None:
            return found
    return None


def read_yaml(path: Path) -> dict:
    """The mapping in a YAML file; InputError if the file is missing, malformed or not a mapping."""
    if not path.is_file():
        raise InputError(f"config: {str(path)!r} does not exist")
    try:
        document: Any = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise InputError(f"config: {str(path)!r} is not valid YAML: {str(err).splitlines()[0]}") from err
    if not isinstance(document, dict):
        raise InputError(f"config: {str(path)!r} does not hold a mapping of settings")
    return document


def read_section(document: dict, section: str, model: type[Model], path: Path, what: str) -> Model:
    """`document[section]` validated as `model`; InputError naming the dotted field if absent or bad."""
    if not isinstance(document.get(section), dict):
        raise InputError(f"config: {str(path)!r} has no '{section}:' section ({what})")
    try:
        return model.model_validate(document[section])
    except ValidationError as err:
        raise InputError(validation_message(err, model, prefix=section)) from err


