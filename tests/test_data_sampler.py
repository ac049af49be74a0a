"""The sampler over a synthetic region whose token at position i is i, so every token says where it came from."""

import numpy as np
import pytest

from scaling.errors import InputError
from stages.sampler import SequenceSampler

U, T, B = 1001, 10, 7  # 100 sequences per epoch


def _sampler(total_tokens: int = 2_550, seed: int = 5) -> SequenceSampler:
    return SequenceSampler(np.arange(U, dtype=np.uint32), seq_len=T, batch_size=B, total_tokens=total_tokens, seed=seed)


def test_exactly_d_tokens_with_a_partial_final_epoch():
    sampler = _sampler()  # 255 sequences: 2.55 epochs, 37 steps, the last holding 3 sequences
    batches = list(sampler.batches())
    assert len(batches) == len(sampler) == 37
    assert sum(b.tokens[:, 1:].size for b in batches) == 2_550
    assert batches[-1].tokens.shape == (3, T + 1)
    assert sampler.epochs == pytest.approx(2.55) and sampler.tokens_per_epoch == 1000


def test_sequences_are_next_token_windows_of_the_region():
    for batch in _sampler().batches():
        starts = batch.tokens[:, 0]
        assert np.all(starts % T == 0)
        assert np.array_equal(batch.tokens, starts[:, None] + np.arange(T + 1))


def test_each_epoch_is_a_fresh_permutation_covering_the_region():
    sampler = _sampler()
    starts = np.concatenate([b.tokens[:, 0] for b in sampler.batches()]) // T
    epochs = [starts[:100], starts[100:200], starts[200:]]
    for full in epochs[:2]:
        assert np.array_equal(np.sort(full), np.arange(100))
    assert not np.array_equal(epochs[0], epochs[1])
    assert len(set(epochs[2].tolist())) == 55  # the partial epoch repeats nothing
    covered = np.unique(np.concatenate([b.tokens.ravel() for b in sampler.batches()][:15]))
    assert np.array_equal(covered, np.arange(U))  # the first epoch (steps 0-14) sees every token of the region


def test_epoch_of_every_step():
    sampler = _sampler()
    for batch in sampler.batches():
        assert batch.epoch == sampler.epoch_of(batch.step) == batch.step * B // 100
    assert [sampler.epoch_of(s) for s in (0, 14, 15, 28, 29, 36)] == [0, 0, 1, 1, 2, 2]


def test_resuming_at_step_k_equals_the_uninterrupted_stream():
    full = list(_sampler().batches())
    for k in (0, 1, 14, 15, 29, 36, 37):
        resumed = list(_sampler().batches(start_step=k))
        assert len(resumed) == len(full) - k
        for a, b in zip(resumed, full[k:]):
            assert a.step == b.step and a.epoch == b.epoch and np.array_equal(a.tokens, b.tokens)


def test_same_seed_same_stream_other_seed_other_stream():
    first, again, other = (np.stack([b.tokens for b in _sampler(seed=s).batches()][:-1]) for s in (5, 5, 6))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_bad_shapes_are_clear_errors():
    region = np.arange(U, dtype=np.uint32)
    with pytest.raises(InputError, match="seq_len: 1001 is not shorter than the 1001 unique tokens"):
        SequenceSampler(region, seq_len=1001, batch_size=1, total_tokens=1001, seed=0)
    with pytest.raises(InputError, match="total_tokens: 25 must be a positive multiple of seq_len 10"):
        SequenceSampler(region, seq_len=10, batch_size=1, total_tokens=25, seed=0)
    with pytest.raises(InputError, match="start_step: 38 is outside 0..37"):
        next(_sampler().batches(start_step=38))
