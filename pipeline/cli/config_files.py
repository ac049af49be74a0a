"""Reading a command's YAML file: one section validated against a pydantic model, errors as one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from scaling.errors import InputError

Model = TypeVar("Model", bound=BaseModel)


def validation_message(err: ValidationError, model: type[BaseModel], prefix: str = "") -> str:
    """One line for the first error of a pydantic ValidationError: the field, the value and what is allowed."""
    first = err.errors()[0]
    loc = [str(part) for part in first["loc"]]
    if first["type"] == "value_error":
        # our validators write "field: value ... allowed"; make the field a full dotted path
        message = str(first["ctx"]["error"])
        field, _, rest = message.partition(": ")
        if rest and " " not in field:
            loc = loc if loc and loc[-1] == field else [*loc, field]
            message = rest
        return f"{'.'.join([prefix, *loc]).strip('.')}: {message}"
    where = ".".join([prefix, *loc]).strip(".")
    if first["type"] == "extra_forbidden":
        allowed = ", ".join(_fields_at(model, loc[:-1]))
        return f"{where}: unknown setting; allowed: {allowed}"
    return f"{where}: {first['input']!r} is not allowed: {first['msg']}"


def _fields_at(model: type[BaseModel], path: list[str]) -> list[str]:
    for name in path:
        field = model.model_fields.get(name)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    return list(model.model_fields)


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


