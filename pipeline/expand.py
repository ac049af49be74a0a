"""Expanding a sweep config into its runs: `expand` gives one `RunSpec` per run, every check that needs no corpus done.

Rounding: D is a whole number of optimizer steps of `batch_tokens`, the nearest one to the target,
except that a target within half a step of U is one epoch, `floor(U / batch_tokens)` steps: a
single-epoch run never repeats a token (D <= U, as the two-stage fit's first stage requires). The
run records the actual D and epochs = D / U. A point whose target D is below U (isoFLOP: epochs
< 1), whose U exceeds the corpus's training tokens or is not longer than seq_len, or whose run
config is invalid, is impossible: `expand` raises an InputError naming it, or leaves it out when
`skip_invalid` is set.

Names: `<model>-U<U>-e<epochs>-s<seed>` (full grid) and `<model>-C<flops>-U<U>-s<seed>` (isoFLOP),
with U and C written compactly (`300K`, `1e15`) and epochs as given. Names are unique within a
sweep; two blocks that produce the same run keep one copy.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from pipeline.config import GridBlock, Resources, SweepConfig, world_size
from pipeline.config_files import validation_error
from pipeline.pool_grid import pool_budgets, pool_point_name, pool_targets
from scaling.errors import InputError
from scaling.units import format_quantity
from stages.run_config import RunConfig
from stages.shapes import ModelShape


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep, fully resolved: its name, its RunConfig, and the numbers a fit needs."""

    name: str  # unique in the sweep, safe as a file name; `config.name` too
    point: str  # the grid point: the name without the seed suffix (replicates share it)
    model: str  # the model entry's name
    seed: int
    config: RunConfig
    shape: ModelShape
    params: int  # N, all parameters
    params_non_embedding: int
    tokens: int  # D, a whole number of steps
    unique_tokens: int  # U
    epochs: float  # D / U, exact
    flops: float  # 6 N D, N non-embedding
    flops_full: float  # attention and output layer included (`ModelShape.flops_per_token.full` * D)
    resources: Resources
    target: dict  # the grid point as written: {"epochs": 4.0} or {"flops": 1e15}

    @property
    def world_size(self) -> int:
        """Ranks the run is trained with: one per GPU, else `config.processes`, spread evenly over its nodes."""
        return world_size(self.resources, self.config.processes)


def expand(
    sweep: SweepConfig,
    corpus_train_tokens: int | dict[str, int] | None = None,
    *,
    vocab_size: int | None = None,
    skip_invalid: bool = False,
    skipped: list[str] | None = None,
) -> list[RunSpec]:
    """Every run of the sweep in grid order (blocks, models, U, epochs or flops, then seeds).

    `corpus_train_tokens` (the tokenized corpus's training tokens, when known; one number per pool for
    several pools) bounds U;
    `vocab_size` defaults to `sweep.vocab_size()`. An impossible grid point raises InputError
    naming it, unless `skip_invalid`: then it is left out and its message appended to `skipped`.
    """
    vocab = vocab_size or sweep.vocab_size()
    runs: dict[str, RunSpec] = {}
    first_error = None
    for block in sweep.grid:
        for model in block.models or [entry.name for entry in sweep.models]:
            for make in _point_makers(sweep, block, model, vocab, corpus_train_tokens):
                try:
                    point = make()
                except InputError as err:
                    if not skip_invalid:
                        raise
                    first_error = first_error or err
                    if skipped is not None:
                        skipped.append(str(err))
                    continue
                for seed in sweep.seeds:
                    spec = _with_seed(point, seed)
                    if spec.name in runs and runs[spec.name].config != spec.config:
                        raise InputError("grid", f"two different runs are both named {spec.name!r}; make their U or epochs differ more")
                    runs.setdefault(spec.name, spec)
    if not runs:
        raise InputError("grid", f"no grid point is possible; the first: {first_error}")
    return list(runs.values())


def _point_makers(sweep: SweepConfig, block: GridBlock, model: str, vocab: int, corpus_train_tokens) -> list:
    """One callable per grid point of the block for this model (in grid order), each building its RunSpec."""
    if block.pools is not None:
        return [lambda u=unique, m=mix, t=target: _pool_point(sweep, model, u, m, t, vocab, corpus_train_tokens)
                for unique, mix, target in pool_targets(block, [pool.name for pool in sweep.data.pools])]  # fmt: skip
    targets = [{"epochs": e} for e in block.epochs or []] + [{"flops": c} for c in block.flops or []]
    return [lambda u=unique, t=target: _point(sweep, model, u, t, vocab, corpus_train_tokens)
            for unique in block.unique_tokens for target in targets]  # fmt: skip


def _impossible(point: str, message: str) -> InputError:
    return InputError(f"grid point {point}", message)


def _point(sweep: SweepConfig, model: str, unique: int, target: dict, vocab: int, corpus_train_tokens: int | None) -> RunSpec:
    """The run of one grid point with seed 0; InputError naming the point if it is impossible."""
    train = sweep.train_for(model)
    shape = sweep.architecture(model).shape(vocab, train.seq_len)
    counts = shape.params
    batch = train.batch_tokens
    if "epochs" in target:
        point = f"{model}-U{format_quantity(unique)}-e{target['epochs']:g}"
        wanted = target["epochs"] * unique
    else:
        point = f"{model}-C{_compact(target['flops'])}-U{format_quantity(unique)}"
        wanted = target["flops"] / (6 * counts.non_embedding)

    if corpus_train_tokens is not None and unique > corpus_train_tokens:
        raise _impossible(point, f"unique_tokens: {unique} exceeds the corpus's {corpus_train_tokens} training tokens")
    if wanted < unique - batch / 2:
        raise _impossible(point,
            f"flops: {_compact(target['flops'])} gives D = {wanted:,.0f} tokens for N = {counts.non_embedding:,} non-embedding "
            f"parameters, less than U = {unique:,} (epochs {wanted / unique:.3g} < 1); lower unique_tokens or raise flops"
        )
    if unique <= train.seq_len:
        raise _impossible(point, f"unique_tokens: {unique} is not longer than seq_len {train.seq_len}; a sequence needs seq_len + 1 unique tokens")
    steps = unique // batch if abs(wanted - unique) <= batch / 2 else round(wanted / batch)
    return _run_spec(sweep, model, point, shape, _whole_steps(point, steps, wanted, batch), unique, target, None)


def _pool_point(sweep: SweepConfig, model: str, unique: dict[str, int], mix: dict[str, float], target: dict, vocab: int,
                corpus_train_tokens: dict[str, int] | None) -> RunSpec:  # fmt: skip
    """The run of one multi-pool grid point with seed 0: D split over the pools by the mix; InputError naming it if impossible."""
    train = sweep.train_for(model)
    shape = sweep.architecture(model).shape(vocab, train.seq_len)
    point = pool_point_name(model, unique, mix, target)
    wanted = target["tokens"] if "tokens" in target else target["flops"] / (6 * shape.params.non_embedding)
    for pool, budget in unique.items():
        if corpus_train_tokens is not None and budget > corpus_train_tokens[pool]:
            raise _impossible(point, f"pools.{pool}: unique_tokens {budget} exceeds pool {pool}'s {corpus_train_tokens[pool]} training tokens")
    tokens = _whole_steps(point, round(wanted / train.batch_tokens), wanted, train.batch_tokens)
    plan = {"eval": sweep.data.eval_pool, "budgets": pool_budgets(tokens, train.seq_len, unique, mix)}
    return _run_spec(sweep, model, point, shape, tokens, sum(unique.values()), target, plan)


def _whole_steps(point: str, steps: int, wanted: float, batch: int) -> int:
    """The run's D: `steps` whole steps of `batch` tokens; InputError naming the point when that is no step."""
    if steps < 1:
        raise _impossible(point, f"train.batch_tokens: {batch} is more than the {wanted:,.0f} tokens of the run; it needs one whole step")
    return steps * batch


def _run_spec(sweep: SweepConfig, model: str, point: str, shape: ModelShape, tokens: int, unique: int, target: dict,
              pools: dict | None) -> RunSpec:  # fmt: skip
    """The checked RunSpec of a grid point (seed 0) training on `tokens` from `unique` (over `pools`, if given)."""
    train = sweep.train_for(model)
    counts = shape.params
    settings = {**train.model_dump(), "name": f"{point}-s0", "model": sweep.architecture(model).model_dump(), "tokens": tokens,
                "unique_tokens": unique, "seed": 0, "wandb": sweep.wandb.model_dump()}  # fmt: skip
    if pools is not None:
        settings["pools"] = pools
    try:
        config = RunConfig.model_validate(settings)
    except ValidationError as err:
        raise _impossible(point, str(validation_error(err, RunConfig))) from None
    resources = sweep.resources_for(model)
    try:
        config.check_world(world_size(resources, config.processes))
    except ValueError as err:
        raise _impossible(point, f"{err} (resources: {resources.nodes} node(s) x {resources.gpus} GPU(s))") from None
    data = sweep.data
    held = min(pool.validation_tokens for pool in data.pools) if data.pools else data.validation_tokens
    validation = min(held, config.eval_tokens or held)
    if validation <= config.seq_len:
        raise _impossible(point, f"seq_len: {config.seq_len} is not shorter than the {validation} validation tokens; raise data.validation_tokens")
    return RunSpec(
        name=config.name, point=point, model=model, seed=0, config=config, shape=shape, params=counts.total,
        params_non_embedding=counts.non_embedding, tokens=tokens, unique_tokens=unique, epochs=tokens / unique,
        flops=6.0 * counts.non_embedding * tokens, flops_full=float(shape.flops_per_token.full * tokens),
        resources=resources, target=dict(target),
    )  # fmt: skip


def _with_seed(point: RunSpec, seed: int) -> RunSpec:
    name = f"{point.point}-s{seed}"
    config = point.config.model_copy(update={"name": name, "seed": seed})
    return RunSpec(**{**point.__dict__, "name": name, "seed": seed, "config": config})


def _compact(value: float) -> str:
    """A compute budget for a file name: 1e15, 2.5e18, 5e-05 (no '+', no leading zeros in the exponent)."""
    mantissa, _, exponent = f"{value:.3g}".partition("e")
    return f"{mantissa}e{int(exponent)}" if exponent else mantissa
