"""The one way the scaling benchmarks time a call: best of REPEATS after WARMUP untimed calls."""

from __future__ import annotations

import math
import time

WARMUP = 1
REPEATS = 3


def timed(func):
    """Best wall time of REPEATS calls after WARMUP untimed ones, and the last result."""
    for _ in range(WARMUP):
        func()
    best, result = math.inf, None
    for _ in range(REPEATS):
        start = time.perf_counter()
        result = func()
        best = min(best, time.perf_counter() - start)
    return best, result
