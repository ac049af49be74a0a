"""Quantities written the way researchers write them: `1e22`, `25e9`, `25B`, `1.5T`, `350M`, `4K`."""

from __future__ import annotations

import math
import re

from scaling.errors import InputError

_SUFFIXES = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12, "P": 1e15}
_PATTERN = re.compile(r"^\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*([KMBGTP]?)\s*$", re.IGNORECASE)


def parse_quantity(text: str | float | int, field: str) -> float:
    """Parse a positive finite quantity such as `25B` or `1e22`; raise InputError naming `field` otherwise."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        match = _PATTERN.match(str(text))
        if match is None:
            raise InputError(
                field, f"{text!r} is not a quantity; use a number like 1e22, 25e9, 25B or 1.5T (suffixes K, M, B, T, P)"
            )
        value = float(match.group(1)) * _SUFFIXES.get(match.group(2).upper(), 1.0)
    if not math.isfinite(value) or value <= 0:
        raise InputError(field, f"{text!r} must be a positive finite number")
    return value


def format_quantity(value: float, digits: int = 4) -> str:
    """Render a count compactly for people with `digits` significant digits: 237.3B, 7.026B, 1.5T."""
    for suffix, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.{digits}g}{suffix}"
    return f"{value:.{digits}g}"
