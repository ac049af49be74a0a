"""How much of the validation split the training region holds verbatim, in 64-token windows.

A validation window is WINDOW (64) consecutive tokens of one validation document: inside the
validation split, without an end-of-document token. It is *found within a budget of U* unique
tokens when the same 64 tokens occur in the first U tokens of the training region (the budget a
run with that U trains on). The contamination at U is the share of validation windows found
within U: how much of what the validation loss scores a run with that budget may have seen.

The tokenize stage records where the first occurrence of each found window ends, counted from the
start of the training region (`contamination.npy`, sorted), so the share at any budget is exact:
the found windows whose first occurrence ends at or before U, over all windows. The manifest keeps
the share at every power of two of tokens up to the training region, and overall.

Windows are compared by a 64-bit polynomial hash of their tokens (two different windows share one
with probability about 2^-64); the training region is read in chunks of CHUNK tokens, so memory
stays bounded by the chunk whatever the corpus.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

WINDOW = 64
CHUNK = 1 << 20
FILE = "contamination.npy"
_BASE = 0x100000001B3  # odd
_WORD = 1 << 64


def window_hashes(tokens: np.ndarray, width: int = WINDOW) -> np.ndarray:
    """The hash of every `width`-token window of `tokens` (`width` a power of two), by doubling spans."""
    hashes = np.asarray(tokens, dtype=np.uint64)
    span = 1
    while span < width:
        hashes = hashes[:-span] * np.uint64(pow(_BASE, span, _WORD)) + hashes[span:]
        span *= 2
    return hashes


def validation_windows(tokens: np.ndarray, eod: int) -> np.ndarray:
    """The hashes of the validation windows of the validation tokens: those holding no end-of-document token."""
    if len(tokens) < WINDOW:
        return np.zeros(0, dtype=np.uint64)
    ends = np.concatenate([[0], np.cumsum(np.asarray(tokens) == eod)])
    clean = ends[WINDOW:] == ends[: len(ends) - WINDOW]
    return window_hashes(tokens)[clean]


def first_ends(path: Path, dtype: np.dtype, start: int, targets: np.ndarray) -> np.ndarray:
    """For each of the sorted, distinct `targets`, where its first occurrence in the token file `path`
    from token `start` on ends (relative to `start`), or -1 if it does not occur.

    Reads CHUNK windows at a time with plain reads (no mapping), so no page of the file stays resident.
    """
    dtype = np.dtype(dtype)
    stop = Path(path).stat().st_size // dtype.itemsize
    ends = np.full(len(targets), -1, dtype=np.int64)
    for first in range(start, stop - WINDOW + 1, CHUNK):
        count = min(CHUNK, stop - WINDOW + 1 - first) + WINDOW - 1
        hashes = window_hashes(np.fromfile(path, dtype=dtype, count=count, offset=first * dtype.itemsize))
        slot = np.minimum(np.searchsorted(targets, hashes), len(targets) - 1)
        position = np.flatnonzero(targets[slot] == hashes)
        hit, at = np.unique(slot[position], return_index=True)
        new = ends[hit] < 0
        ends[hit[new]] = first - start + position[at[new]] + WINDOW
        if (ends >= 0).all():
            break
    return ends


def measure(path: Path, dtype: np.dtype, validation_tokens: int, train_start: int, eod: int) -> tuple[int, np.ndarray]:
    """(validation windows, sorted end offsets of the first training occurrence of each found window) of the
    token file `path`, whose validation split is its first `validation_tokens` and whose training region
    starts at `train_start`."""
    windows = validation_windows(np.fromfile(path, dtype=dtype, count=validation_tokens), eod)
    targets, which = np.unique(windows, return_inverse=True)
    ends = first_ends(path, dtype, train_start, targets)[which] if len(targets) else np.zeros(0, dtype=np.int64)
    return len(windows), np.sort(ends[ends >= 0])


def share(ends: np.ndarray, windows: int, budget: int) -> float:
    """The share of validation windows found within the first `budget` training tokens."""
    return float(np.searchsorted(ends, budget, side="right")) / windows if windows else 0.0


def summary(ends: np.ndarray, windows: int, train_tokens: int) -> dict:
    """The manifest's record: windows, found overall, and the share at every power of two of tokens up to the region."""
    ladder = [2**k for k in range(10, max(10, int(train_tokens).bit_length()))]
    return {
        "window_tokens": WINDOW,
        "windows": windows,
        "found": int(len(ends)),
        "overall": share(ends, windows, train_tokens),
        "within": {str(budget): share(ends, windows, budget) for budget in ladder},
    }


def shares_at(artifact: Path, budgets: Iterable[int]) -> dict[int, float]:
    """The exact contamination of a tokenize artifact's validation split at each budget; {} for an
    artifact made before it was measured."""
    path = Path(artifact) / FILE
    if not path.is_file():
        return {}
    windows = json.loads((Path(artifact) / "manifest.json").read_text())["contamination"]["windows"]
    ends = np.load(path)
    return {int(budget): share(ends, windows, int(budget)) for budget in budgets}
