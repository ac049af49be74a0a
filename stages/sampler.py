"""The training sampler: batches of length-T sequences drawn from a U-token region for exactly D tokens.

The region is cut into `(U - 1) // T` sequences; sequence s is `region[s*T : s*T + T + 1]`, so
its T inputs are followed by their T next-token targets (consecutive sequences share one token).
Every epoch visits every sequence once, in a fresh permutation seeded by `(seed, epoch)`. The run
trains on D / T sequences in all (D a multiple of T), so the last epoch may be partial; the last
batch holds the remainder when D / T is not a multiple of the batch size. Any step can be computed
on its own, which makes resuming at step k give exactly the uninterrupted stream from k.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from scaling.errors import InputError


class Batch(NamedTuple):
    """One training step: `tokens[:, :-1]` are the inputs and `tokens[:, 1:]` the targets."""

    step: int
    epoch: int
    tokens: np.ndarray  # (batch, T + 1) int64


class BatchStream(ABC):
    """A run's batches by step, each computable on its own: `batch(step)` for steps 0..num_steps-1."""

    num_steps: int

    @abstractmethod
    def batch(self, step: int) -> Batch:
        """The batch of `step`."""

    def __len__(self) -> int:
        return self.num_steps

    def batches(self, start_step: int = 0) -> Iterator[Batch]:
        """Every batch from `start_step` (to resume a run) to the end."""
        if not 0 <= start_step <= self.num_steps:
            raise InputError("start_step", f"{start_step} is outside 0..{self.num_steps}")
        for step in range(start_step, self.num_steps):
            yield self.batch(step)


class SequenceSampler(BatchStream):
    """Seeded, resumable batches over a unique-token region, for an exact token total."""

    def __init__(self, region: np.ndarray, seq_len: int, batch_size: int, total_tokens: int, seed: int, stream: int | None = None):
        if seq_len < 1 or batch_size < 1:
            raise InputError("seq_len, batch_size", f"{seq_len}, {batch_size} must both be at least 1")
        if seq_len >= len(region):
            raise InputError("seq_len", f"{seq_len} is not shorter than the {len(region)} unique tokens; a sequence needs seq_len + 1 tokens"
            )
        if total_tokens < seq_len or total_tokens % seq_len:
            raise InputError("total_tokens", f"{total_tokens} must be a positive multiple of seq_len {seq_len}")
        self.region = region
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.total_tokens = int(total_tokens)
        self.seed = seed
        self.stream = stream  # one of several pools' streams: its own epoch orders (`stages.pool_sampler`)
        self.sequences_per_epoch = (len(region) - 1) // seq_len
        self.total_sequences = self.total_tokens // seq_len
        self.num_steps = -(-self.total_sequences // batch_size)
        self._offsets = np.arange(seq_len + 1)
        self._permutations: dict[int, np.ndarray] = {}

    @property
    def tokens_per_epoch(self) -> int:
        """Target tokens in one full epoch (the region's last `(U - 1) % T` tokens are never targets)."""
        return self.sequences_per_epoch * self.seq_len

    @property
    def epochs(self) -> float:
        """Epochs the whole run makes over the region: D / tokens_per_epoch."""
        return self.total_sequences / self.sequences_per_epoch

    def epoch_of(self, step: int) -> int:
        """The (0-based) epoch of the first sequence of `step`."""
        self._check_step(step)
        return step * self.batch_size // self.sequences_per_epoch

    def permutation(self, epoch: int) -> np.ndarray:
        """The order in which `epoch` visits the sequences."""
        if epoch not in self._permutations:
            if len(self._permutations) >= 2:  # a batch spans at most two epochs
                self._permutations.pop(min(self._permutations))
            rng = np.random.default_rng([self.seed, epoch] if self.stream is None else [self.seed, epoch, self.stream])
            self._permutations[epoch] = rng.permutation(self.sequences_per_epoch)
        return self._permutations[epoch]

    def sequence_ids(self, step: int) -> np.ndarray:
        """The sequence indices of `step`'s batch."""
        self._check_step(step)
        first = step * self.batch_size
        return self.ids_at(np.arange(first, min(first + self.batch_size, self.total_sequences)))

    def ids_at(self, positions: np.ndarray) -> np.ndarray:
        """The sequence indices at these positions of the run's sequence stream (epoch after epoch)."""
        epochs, within = np.divmod(positions, self.sequences_per_epoch)
        ids = np.empty(len(positions), dtype=np.int64)
        for epoch in np.unique(epochs):
            mask = epochs == epoch
            ids[mask] = self.permutation(int(epoch))[within[mask]]
        return ids

    def batch(self, step: int) -> Batch:
        """The batch of `step`, the same whether or not earlier steps were drawn."""
        starts = self.sequence_ids(step) * self.seq_len
        tokens = np.asarray(self.region[starts[:, None] + self._offsets], dtype=np.int64)
        return Batch(step, self.epoch_of(step), tokens)

    def _check_step(self, step: int) -> None:
        if not 0 <= step < self.num_steps:
            raise IndexError(f"step {step} is outside 0..{self.num_steps - 1}")
