"""The evaluate stage: mean next-token loss on the sweep's fixed validation tokens.

The validation tokens are cut into `(len - 1) // T` windows of T + 1 tokens (consecutive windows
share one token), the same cut for every run of a sweep; the loss is the mean over every target
token of every window. With several ranks each scores a strided share of the windows and the sums
are added, so the number does not depend on the world size beyond float rounding.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from stages.distributed import Ranks, all_sum
from stages.model import token_losses


def validation_windows(tokens: np.ndarray, seq_len: int) -> np.ndarray:
    """Start offsets of the (len - 1) // T non-overlapping windows of the validation tokens."""
    count = (len(tokens) - 1) // seq_len
    if count < 1:
        raise ValueError(f"eval_tokens: {len(tokens)} validation tokens hold no window of seq_len + 1 = {seq_len + 1}")
    return np.arange(count, dtype=np.int64) * seq_len


@torch.no_grad()
def validation_loss(
    model: torch.nn.Module,
    tokens: np.ndarray,
    seq_len: int,
    batch_size: int,
    ranks: Ranks,
    autocast: contextlib.AbstractContextManager | None = None,
) -> tuple[float, int]:
    """(mean loss per target token, number of target tokens) of `model` on the validation tokens."""
    starts = validation_windows(tokens, seq_len)[ranks.rank :: ranks.world]
    offsets = np.arange(seq_len + 1)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for first in range(0, len(starts), batch_size):
        windows = np.asarray(tokens[starts[first : first + batch_size, None] + offsets], dtype=np.int64)
        batch = torch.from_numpy(windows).to(ranks.device, non_blocking=True)
        with autocast or contextlib.nullcontext():
            logits = model(batch[:, :-1])
        losses = token_losses(logits, batch[:, 1:])
        total += float(losses.double().sum())
        count += losses.numel()
    model.train(was_training)
    total, count = all_sum([total, count], ranks.device)
    return total / count, int(count)
