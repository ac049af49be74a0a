"""The learning-rate schedule of one run, set by its token total D (never a truncated longer run).

Let t be the tokens seen once a step's update is applied; the last step of a run uses the rate at
t = D. Two schedules (`optimizer.schedule`):

* cosine (`Schedule`): the rate rises linearly from 0 to the peak over the first `warmup` tokens,
  then follows a half cosine down to `final_ratio * peak`, which it reaches exactly at t = D.
* wsd, warmup-stable-decay (`WsdSchedule`): a linear warmup over a fixed number of tokens (the same
  for every D), the peak rate held constant, then a cooldown over the run's last steps down to
  `final_ratio * peak` at t = D. The cooldown's shape is `linear` (1 - p), `1-sqrt` (1 - sqrt(p))
  or `cosine` ((1 + cos(pi p)) / 2), p running from 0 at its start to 1 at D. Hägele et al. 2024
  ("Scaling Laws and Compute-Optimal Training Beyond Fixed Training Durations") find that a 1-sqrt
  cooldown over the last 20% of the run matches a cosine schedule's final loss. Until its cooldown
  starts, a WSD run's rate does not depend on D: runs of different D share that stretch (a trunk).
"""

from __future__ import annotations

import math
from typing import NamedTuple

COOLDOWN_SHAPES = ("linear", "1-sqrt", "cosine")


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


class WsdSchedule(NamedTuple):
    """Linear warmup over `warmup_tokens`, the peak until `cooldown_start` tokens, then a cooldown of
    `shape` down to `final_ratio` of the peak at `total_tokens`."""

    peak: float
    warmup_tokens: int
    total_tokens: int
    cooldown_start: int
    final_ratio: float = 0.0
    shape: str = "1-sqrt"

    def lr(self, tokens: int) -> float:
        """The learning rate of the step after which `tokens` tokens have been seen (0 < tokens <= D)."""
        if tokens < self.warmup_tokens:
            return self.peak * tokens / self.warmup_tokens
        if tokens <= self.cooldown_start:
            return self.peak
        progress = min(1.0, (tokens - self.cooldown_start) / (self.total_tokens - self.cooldown_start))
        return self.peak * (self.final_ratio + (1.0 - self.final_ratio) * cooldown_factor(self.shape, progress))


def cooldown_factor(shape: str, progress: float) -> float:
    """The share of the peak left above the floor at `progress` (0..1) through a cooldown of `shape`."""
    if shape == "linear":
        return 1.0 - progress
    if shape == "1-sqrt":
        return 1.0 - math.sqrt(progress)
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"cooldown shape {shape!r} is not one of {', '.join(COOLDOWN_SHAPES)}")


def cooldown_start_step(steps: int, cooldown: float) -> int:
    """The step a WSD run of `steps` steps starts its cooldown at: its last round(cooldown * steps) steps cool down."""
    return steps - int(round(cooldown * steps))
