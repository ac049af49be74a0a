"""Reading YAML config files: a whole file or one section, validated against a pydantic model, errors as one line."""

from __future__ import annotations

import reprlib
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from scaling.errors import InputError

Model = TypeVar("Model", bound=BaseModel)

MAX_CONFIG_BYTES = 1 << 20  # a sweep file is a few KB; anything near this is not a config
MAX_EXPANDED_VALUES = 100_000  # values in the document with YAML aliases expanded (a "billion laughs" stops here)
SHOWN_CHARACTERS = 200  # at most this much of a rejected input is quoted in an error
_BOUNDED_REPR = reprlib.Repr()  # Python 3.11's Repr takes its limits as attributes
_BOUNDED_REPR.maxlevel = 3
_BOUNDED_REPR.maxtuple = _BOUNDED_REPR.maxlist = _BOUNDED_REPR.maxdict = _BOUNDED_REPR.maxset = 8
_BOUNDED_REPR.maxstring = _BOUNDED_REPR.maxother = _BOUNDED_REPR.maxlong = SHOWN_CHARACTERS


def validation_error(err: ValidationError, model: type[BaseModel], prefix: str = "") -> InputError:
    """The first error of a pydantic ValidationError as one InputError: the dotted field, the value and what is allowed.

    A validator that raised an InputError names its own field: it is placed under the error's
    location (unless the location already ends in it). Unknown keys list the settings allowed in
    that section, found through lists and optional sections too.
    """
    first = err.errors()[0]
    loc = [str(part) for part in first["loc"]]
    where = ".".join(part for part in [prefix, *loc] if part)
    cause = first.get("ctx", {}).get("error")
    if isinstance(cause, InputError):
        if cause.field.rpartition(".")[2] in loc:
            return InputError(where, cause.problem)
        return cause.within(where)
    if first["type"] == "value_error":
        return InputError(where, str(cause))
    if first["type"] == "missing":
        return InputError(where, "is required")
    if first["type"] == "extra_forbidden":
        return InputError(where, f"unknown setting; allowed: {', '.join(_allowed(model, loc[:-1]))}")
    return InputError(where, f"{_shown(first['input'])} is not allowed: {first['msg']}")


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
    """The mapping in a YAML file; InputError if the file is missing, too large, not UTF-8 text, malformed,
    not a mapping, or if its aliases expand past `MAX_EXPANDED_VALUES` values."""
    shown = _shown(str(path))
    if not path.is_file():
        raise InputError("config", f"{shown} does not exist")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise InputError("config", f"{shown} is {size:,} bytes; a config file may hold at most {MAX_CONFIG_BYTES:,}")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError("config", f"{shown} is not UTF-8 text (byte {data[err.start]:#04x} at offset {err.start})") from None
    if "\x00" in text:
        raise InputError("config", f"{shown} is a binary file, not YAML text")
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_expansion(node, shown)
        document: Any = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as err:
        raise InputError("config", f"{shown} is not valid YAML: {_shown(str(err).splitlines()[0])}") from None
    finally:
        loader.dispose()
    if not isinstance(document, dict):
        raise InputError("config", f"{shown} does not hold a mapping of settings")
    return document


def _check_expansion(root: yaml.Node, shown: str) -> None:
    """InputError when the document, with every alias expanded, would hold more than `MAX_EXPANDED_VALUES` values."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key not in sizes:
            sizes[key] = 1  # a node met again while being counted (a recursive alias) counts once
            if isinstance(node, yaml.SequenceNode):
                sizes[key] = 1 + sum(size(child) for child in node.value)
            elif isinstance(node, yaml.MappingNode):
                sizes[key] = 1 + sum(size(k) + size(v) for k, v in node.value)
        if sizes[key] > MAX_EXPANDED_VALUES:
            raise InputError("config", f"{shown} expands (through YAML aliases) past {MAX_EXPANDED_VALUES:,} values")
        return sizes[key]

    size(root)


def _shown(value: Any) -> str:
    """`repr(value)` cut to at most `SHOWN_CHARACTERS`, computed without expanding large nested values."""
    text = _BOUNDED_REPR.repr(value)
    return text if len(text) <= SHOWN_CHARACTERS else text[: SHOWN_CHARACTERS - 3] + "..."


def read_section(document: dict, section: str, model: type[Model], path: Path, what: str) -> Model:
    """`document[section]` validated as `model`; InputError naming the dotted field if absent or bad."""
    if not isinstance(document.get(section), dict):
        raise InputError("config", f"{_shown(str(path))} has no '{section}:' section ({what})")
    try:
        return model.model_validate(document[section])
    except ValidationError as err:
        raise validation_error(err, model, prefix=section) from None


