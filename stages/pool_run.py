"""What the train stage does differently for a run over several pools (`RunConfig.pools`).

One corpus: the sampler over the first U tokens, the one validation split, no per-pool record
fields: exactly what a run did before pools. Several pools: the `PoolSampler` over each pool's
first U_i tokens, every pool's validation split scored (the `eval` pool's loss is `val_loss`), and
the record's per-pool numbers (`stages.record.PoolRecord`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from scaling.errors import InputError
from stages.data import TokenData
from stages.pool_data import pool_data
from stages.pool_sampler import PoolSampler
from stages.record import PoolRecord
from stages.run_config import RunConfig
from stages.sampler import SequenceSampler


class PoolPart(NamedTuple):
    """One pool of a run: its token data and its unique budget U_i."""

    data: TokenData
    budget: int


def pool_parts(config: RunConfig, data: TokenData) -> list[PoolPart]:
    """Each pool of a multi-pool run, in the corpus's order; InputError naming a pool the artifact lacks."""
    pools = pool_data(data)
    for budget in config.pools.budgets:
        if budget.name not in pools:
            raise InputError("pools", f"{budget.name!r} is not a pool of {data.path}; its pools: {', '.join(pools)}")
    return [PoolPart(pools[budget.name], budget.unique_tokens) for budget in config.pools.budgets]


def training_sampler(config: RunConfig, data: TokenData) -> SequenceSampler | PoolSampler:
    """The run's sampler: one region of U tokens, or each pool's U_i tokens for its D_i."""
    if config.pools is None:
        return SequenceSampler(data.budget(config.unique_tokens), config.seq_len, config.batch_size, config.tokens, config.seed)
    regions = [part.data.budget(part.budget) for part in pool_parts(config, data)]
    return PoolSampler(regions, [budget.tokens for budget in config.pools.budgets], config.seq_len, config.batch_size, config.seed)


def validation_sets(config: RunConfig, data: TokenData) -> dict[str | None, np.ndarray]:
    """The validation tokens each score is taken on: {None: the split} for one corpus, else one per pool, by name."""
    if config.pools is None:
        return {None: data.validation()[: config.eval_tokens]}
    return {name: pool.validation()[: config.eval_tokens] for name, pool in pool_data(data).items()}


def eval_key(config: RunConfig) -> str | None:
    """The key of `validation_sets` whose loss is the run's val_loss: None (the one split), or the eval pool's name."""
    return config.pools.eval if config.pools else None


def pool_fields(config: RunConfig, scores: dict[str | None, tuple[float, int]]) -> dict:
    """The record's per-pool fields: none for one corpus; `pools` and `eval_pool` for several."""
    if config.pools is None:
        return {}
    pools = [PoolRecord(name=budget.name, tokens=budget.tokens, unique_tokens=budget.unique_tokens, epochs=budget.epochs,
                        val_loss=scores[budget.name][0], val_tokens=scores[budget.name][1])
             for budget in config.pools.budgets]  # fmt: skip
    return {"pools": pools, "eval_pool": config.pools.eval}
