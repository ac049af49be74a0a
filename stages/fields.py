"""Pydantic field types shared by the stage configs."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, ValidationInfo

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
