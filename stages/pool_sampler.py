"""The sampler of a run over several pools: pools interleaved in proportion, each repeating its own U_i.

Pool i contributes n_i = D_i / T sequences in all, drawn as a one-pool run draws them
(`stages.sampler.SequenceSampler` over its U_i-token region, its own seeded epoch orders): its
epochs_i = D_i / U_i. The pools are interleaved through the run in proportion: pool i's k-th
sequence sits at time (k + u_i) / n_i, with a phase u_i in [0, 1) drawn from the seed, and the
run takes the sequences of every pool in time order (ties: the earlier pool first). So every
stretch of the run holds each pool's share up to one sequence per pool, the totals are exact,
and any step can be computed on its own: resuming at step k gives the uninterrupted stream from k.
A batch's `epoch` is the reference (first) pool's epoch at the step's first sequence (0 when the
run draws nothing from it).
"""

from __future__ import annotations

import numpy as np

from scaling.errors import InputError
from stages.sampler import Batch, BatchStream, SequenceSampler

PHASE_STREAM = 0x706F6F6C  # the seed sequence of the pools' phases: [seed, PHASE_STREAM]


class PoolSampler(BatchStream):
    """Seeded, resumable batches over several pools' regions, for exact per-pool token totals."""

    def __init__(self, regions: list[np.ndarray], pool_tokens: list[int], seq_len: int, batch_size: int, seed: int):
        if len(regions) != len(pool_tokens) or not regions:
            raise InputError("pools", f"{len(regions)} regions for {len(pool_tokens)} token counts")
        if any(tokens % seq_len or tokens < 0 for tokens in pool_tokens) or not sum(pool_tokens):
            raise InputError("pools.tokens", f"{pool_tokens} must be multiples of seq_len {seq_len}, not all 0")
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.pool_tokens = [int(tokens) for tokens in pool_tokens]
        self.streams = [SequenceSampler(region, seq_len, 1, tokens, seed, stream=index) if tokens else None
                        for index, (region, tokens) in enumerate(zip(regions, pool_tokens))]  # fmt: skip
        counts = np.array([tokens // seq_len for tokens in pool_tokens], dtype=np.int64)
        self.pool_sequences = counts
        self.total_tokens = int(sum(pool_tokens))
        self.total_sequences = int(counts.sum())
        self.num_steps = -(-self.total_sequences // batch_size)
        self._starts = np.concatenate([[0], np.cumsum(counts)])
        phases = np.random.default_rng([seed, PHASE_STREAM]).random(len(counts))
        times = np.concatenate([(np.arange(n) + phase) / n for n, phase in zip(counts, phases) if n])
        self._order = np.argsort(times, kind="stable")  # position -> index into the pools' concatenated sequences
        self._offsets = np.arange(seq_len + 1)
        drawn = np.concatenate([[0], np.cumsum(self._order < self._starts[1])])  # reference sequences before each position
        self._reference_drawn = drawn[np.arange(self.num_steps) * batch_size]

    @property
    def tokens_per_epoch(self) -> int:
        """Target tokens in one epoch of every pool drawn from."""
        return sum(stream.tokens_per_epoch for stream in self.streams if stream)

    def pools_of(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(pool index, the sequence's position in that pool's stream) of each sequence of `step`'s batch."""
        if not 0 <= step < self.num_steps:
            raise IndexError(f"step {step} is outside 0..{self.num_steps - 1}")
        flat = self._order[step * self.batch_size : (step + 1) * self.batch_size]
        pools = np.searchsorted(self._starts, flat, side="right") - 1
        return pools, flat - self._starts[pools]

    def epoch_of(self, step: int) -> int:
        """The reference pool's (0-based) epoch at the first sequence of `step`."""
        reference = self.streams[0]
        return int(self._reference_drawn[step] // reference.sequences_per_epoch) if reference else 0

    def batch(self, step: int) -> Batch:
        """The batch of `step`, the same whether or not earlier steps were drawn."""
        pools, positions = self.pools_of(step)
        tokens = np.empty((len(pools), self.seq_len + 1), dtype=np.int64)
        for pool in np.unique(pools):
            stream = self.streams[pool]
            rows = pools == pool
            starts = stream.ids_at(positions[rows]) * self.seq_len
            tokens[rows] = stream.region[starts[:, None] + self._offsets]
        return Batch(step, self.epoch_of(step), tokens)

