"""The grid of a multi-pool sweep: each pool's unique budgets x mixes x total tokens (or compute budgets).

A pool block reads

    grid:
      - models: [s]                            # default: every model
        tokens: [400K]                         # D, the run's total tokens (or flops: C, D = C / 6N)
        pools: {hq: [25K, 50K], web: 1M}       # U_i of every pool of data.pools
        mix: [{hq: 1}, {hq: 0.5, web: 0.5}]    # each pool's share of D; a pool left out gets 0

and makes one run per model x combination of the pools' budgets x mix x D, in that order. D is
the whole number of steps nearest the target. D is cut into whole sequences, and each pool gets
the share of them its weight asks for, rounded by largest remainder (ties to the earlier pool) so
the shares add up to D exactly: D_i = n_i * seq_len. Runs are named
`<model>-D<D>-<pool>.U<U_i>.w<weight>-...-s<seed>` (`-C<flops>-` for compute budgets).
Everything here is checked before any work: a pool that is not in data.pools, a mix whose weights
do not add up to 1, a block that leaves a pool without budgets, a pool block in a one-corpus sweep.
Budgets larger than a pool's training region are found once the corpus is tokenized
(`pipeline.expand.expand`), before any training.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from scaling.errors import InputError
from scaling.units import format_quantity

WEIGHT_TOLERANCE = 1e-6


def check_pool_block(block: Any) -> None:
    """InputError unless a pool block has pools, mix and one of tokens or flops (and nothing of the one-corpus form)."""
    for field in ("unique_tokens", "epochs"):
        if getattr(block, field) is not None:
            raise InputError(field, "is for one corpus; a pool block gives pools (U_i per pool), mix and tokens or flops")
    for field in ("pools", "mix"):
        if getattr(block, field) is None:
            raise InputError(field, "is required in a pool block (with pools, mix and tokens or flops)")
    if (block.tokens is None) == (block.flops is None):
        raise InputError("tokens", "give tokens (total D per run) or flops (compute budgets): exactly one of them")
    for index, weights in enumerate(block.mix):
        total = sum(weights.values())
        if abs(total - 1) > WEIGHT_TOLERANCE:
            raise InputError("mix", f"entry {index}, {weights}, adds up to {total:g}; the weights must add up to 1")


def check_pool_grid(grid: list, pools: list | None) -> None:
    """InputError unless every block has the sweep's form and names exactly the pools of data.pools."""
    names = [pool.name for pool in pools or []]
    for index, block in enumerate(grid):
        if block.pools is None:
            if pools:
                raise InputError(f"grid.{index}.pools", "is required: data.pools makes a multi-pool sweep, whose blocks give "
                                 "pools (U_i per pool), mix and tokens or flops")  # fmt: skip
            continue
        if not pools:
            raise InputError(f"grid.{index}.pools", "needs data.pools (a multi-pool corpus); one corpus gives unique_tokens")
        for where, named in [("pools", block.pools), *((f"mix.{j}", weights) for j, weights in enumerate(block.mix))]:
            for name in named:
                if name not in names:
                    raise InputError(f"grid.{index}.{where}", f"{name!r} is not a pool; pools: {', '.join(names)}")
        missing = [name for name in names if name not in block.pools]
        if missing:
            raise InputError(f"grid.{index}.pools", f"gives no unique_tokens for pool {missing[0]!r}; give every pool its budgets")


def pool_targets(block: Any, names: list[str]) -> list[tuple[dict[str, int], dict[str, float], dict]]:
    """(U_i by pool, weight by pool, target) of every point of a pool block, in grid order; pools in the
    corpus's order `names` (the first is the reference), whatever the block's order."""
    targets = [{"tokens": d} for d in block.tokens or []] + [{"flops": c} for c in block.flops or []]
    return [(dict(zip(names, budgets)), {name: float(mix.get(name, 0.0)) for name in names}, target)
            for budgets in itertools.product(*(block.pools[name] for name in names)) for mix in block.mix for target in targets]  # fmt: skip


def pool_point_name(model: str, unique: dict[str, int], mix: dict[str, float], target: dict) -> str:
    """`<model>-D<D>-<pool>.U<U_i>.w<weight>-...` (`-C<flops>-` for a compute budget)."""
    if "tokens" in target:
        size = f"D{format_quantity(target['tokens'])}"
    else:
        mantissa, _, exponent = f"{target['flops']:.3g}".partition("e")
        size = f"C{mantissa}e{int(exponent)}" if exponent else f"C{mantissa}"
    return "-".join([model, size, *(f"{pool}.U{format_quantity(unique[pool])}.w{mix[pool]:g}" for pool in unique)])


def pool_budgets(tokens: int, seq_len: int, unique: dict[str, int], mix: dict[str, float]) -> list[dict]:
    """Each pool's U_i and D_i: D's sequences shared out by weight, largest remainder first, adding up to D exactly."""
    sequences = tokens // seq_len
    weights = np.array([mix[pool] for pool in unique])
    wanted = weights / weights.sum() * sequences
    counts = np.floor(wanted).astype(np.int64)
    left = sequences - int(counts.sum())
    order = [index for index in np.argsort(-(wanted - counts), kind="stable") if weights[index] > 0]  # a pool of weight 0 gets none
    counts[order[:left]] += 1
    return [{"name": pool, "unique_tokens": budget, "tokens": int(count) * seq_len}
            for (pool, budget), count in zip(unique.items(), counts)]  # fmt: skip
