"""The learning-rate schedule of one run, set by its token total D (never a truncated longer run).

Let t be the tokens seen once a step's update is applied. The rate rises linearly from 0 to the
peak over the first `warmup` tokens, then follows a half cosine down to `final_ratio * peak`,
which it reaches exactly when t = D: the last step of the run uses the final rate.
"""

from __future__ import annotations

import math
from typing import NamedTuple


class Schedule(NamedTuple):
    """Linear warmup then cosine decay to `final_ratio` of the peak, over exactly `total_tokens`."""

    peak: float
    warmup_tokens: int
    total_tokens: int
    final_ratio: float = 0.1

    def lr(self, tokens: int) -> float:
        """The learning rate of the step after which `tokens` tokens have been seen (0 < tokens <= D)."""
        if tokens < self.warmup_tokens:
            return self.peak * tokens / self.warmup_tokens
        span = self.total_tokens - self.warmup_tokens
        progress = min(1.0, (tokens - self.warmup_tokens) / span) if span > 0 else 1.0
        return self.peak * (self.final_ratio + (1.0 - self.final_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))
