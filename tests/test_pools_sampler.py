"""The multi-pool sampler over synthetic regions whose tokens say where they came from: pool p's region
holds the numbers p * OFFSET + position, so every row of a batch names its pool and its sequence."""

import numpy as np
import pytest

from scaling.errors import InputError
from stages.pool_sampler import PoolSampler

T, B, OFFSET = 10, 7, 1_000_000
SIZES = (201, 1001, 5001)  # 20, 100 and 500 sequences per epoch


def _sampler(pool_tokens=(3_200, 1_500, 700), seed: int = 3, sizes=SIZES) -> PoolSampler:
    regions = [np.arange(size, dtype=np.int64) + index * OFFSET for index, size in enumerate(sizes)]
    return PoolSampler(regions, list(pool_tokens), T, B, seed)


def _rows(sampler: PoolSampler, start: int = 0) -> np.ndarray:
    return np.concatenate([batch.tokens for batch in sampler.batches(start)])


def test_each_pool_gives_exactly_its_tokens():
    sampler = _sampler()
    rows = _rows(sampler)
    pools = rows[:, 0] // OFFSET
    assert [int(np.sum(pools == p)) * T for p in range(3)] == [3_200, 1_500, 700]
    assert rows[:, 1:].size == sampler.total_tokens == 5_400 and len(sampler) == -(-540 // B)
    assert np.array_equal(rows, rows[:, :1] + np.arange(T + 1))  # next-token windows inside one pool's region
    for step in range(len(sampler)):  # pools_of names the pool of each row
        assert np.array_equal(sampler.pools_of(step)[0], sampler.batch(step).tokens[:, 0] // OFFSET)


def test_each_pool_repeats_its_own_region_in_its_own_epochs():
    sampler = _sampler(pool_tokens=(16 * 20 * T, 3 * 100 * T, 250 * T))  # 16 epochs, 3 epochs, half an epoch
    rows = _rows(sampler)
    for pool, epochs in ((0, 16), (1, 3)):
        starts = rows[rows[:, 0] // OFFSET == pool, 0] % OFFSET
        assert np.array_equal(np.bincount(starts // T), np.full(SIZES[pool] // T, epochs))
        order = starts // T  # every epoch visits every sequence once, in its own order
        epochs_seen = order.reshape(epochs, -1)
        assert all(np.array_equal(np.sort(e), np.arange(SIZES[pool] // T)) for e in epochs_seen)
        assert not np.array_equal(epochs_seen[0], epochs_seen[1])
    half = rows[rows[:, 0] // OFFSET == 2, 0] % OFFSET
    assert len(np.unique(half)) == len(half) == 250  # less than one epoch: no sequence repeats


def test_pools_are_interleaved_in_proportion_through_the_run():
    sampler = _sampler()
    pools = _rows(sampler)[:, 0] // OFFSET
    shares = np.array([320, 150, 70]) / 540
    for position in range(1, len(pools) + 1):
        counts = np.bincount(pools[:position], minlength=3)
        assert np.all(np.abs(counts - shares * position) <= 2), position


def test_resuming_at_any_step_gives_the_uninterrupted_stream():
    full = list(_sampler().batches())
    for start in (0, 1, 17, len(full) - 1, len(full)):
        resumed = list(_sampler().batches(start))  # a fresh sampler, as after a restart
        assert len(resumed) == len(full) - start
        assert all(np.array_equal(a.tokens, b.tokens) and a.step == b.step and a.epoch == b.epoch
                   for a, b in zip(resumed, full[start:]))


def test_the_stream_is_fixed_by_the_seed():
    assert np.array_equal(_rows(_sampler(seed=3)), _rows(_sampler(seed=3)))
    assert not np.array_equal(_rows(_sampler(seed=3)), _rows(_sampler(seed=4)))


def test_a_batchs_epoch_is_the_reference_pools():
    sampler = _sampler(pool_tokens=(16 * 20 * T, 3 * 100 * T, 250 * T))
    firsts = [sampler.pools_of(step) for step in range(len(sampler))]
    drawn = 0
    for step, (pools, positions) in enumerate(firsts):
        assert sampler.batch(step).epoch == drawn // 20
        drawn += int(np.sum(pools == 0))
    assert drawn == 320


def test_a_pool_with_no_tokens_is_never_drawn():
    rows = _rows(_sampler(pool_tokens=(0, 1_500, 700)))
    assert set(np.unique(rows[:, 0] // OFFSET)) == {1, 2}


@pytest.mark.parametrize("tokens", [(3_205, 1_500, 700), (0, 0, 0), (-10, 1_500, 700)])
def test_token_counts_that_are_not_whole_sequences_are_refused(tokens):
    with pytest.raises(InputError):
        _sampler(pool_tokens=tokens)

