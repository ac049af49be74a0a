"""Pydantic field types shared by the stage configs."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, StringConstraints, ValidationInfo

from scaling.errors import InputError
from scaling.units import parse_quantity


def _whole_count(value: Any, info: ValidationInfo) -> int:
    field = info.field_name or "value"
    number = parse_quantity(value, field)
    if number != int(number):
        raise InputError(field, f"{value!r} is not a whole number of tokens or characters")
    return int(number)


Count = Annotated[int, BeforeValidator(_whole_count)]
"""A positive whole count written as `25M`, `1.5B`, `1e9` or `4096`."""

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
NAME_LENGTH = 120  # a run's directory is `<name>-<16 hex digits>`: far below the usual 255-byte limit

StoreName = Annotated[str, StringConstraints(pattern=NAME_PATTERN, max_length=NAME_LENGTH)]
"""A name that becomes part of a path in the store: letters, digits, '.', '_', '-', at most 120 characters."""
