"""An active study's settings and what they allow: `dcsl sweep|plan CONFIG --rounds R --round-budget B --target-flops C`.

After the sweep's grid, R rounds each fit the runs so far and train the runs `scaling.suggest`
chooses (at most `round_runs`, within B FLOPs, 6ND with N non-embedding as `dcsl plan` counts them)
to shrink the spread of the answer at the target (C FLOPs, U unique tokens). The candidates are
ordinary runs of the sweep: each of its models x unique budgets (a ladder 2x apart from the grid's
smallest U up to U) x whole epochs 1..E, with the sweep's first seed, named and hashed as grid
runs are; those the study has already are not offered again. A model in `models:` that no grid
block trains is a candidate of the rounds only (a larger size the rounds may reach for).

Everything here is checked before any work: the flags go together, the fit keeps bootstrap draws,
and a round's budget affords the cheapest candidate. A target U above the corpus's training
tokens is refused once the corpus is known (the rounds would have to train at U).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import GridBlock, SweepConfig

from pipeline.expand import RunSpec, expand
from scaling.errors import InputError
from scaling.suggest import MIN_DRAWS, unique_ladder
from scaling.units import format_quantity

ROUND_RUNS = 8
MAX_EPOCHS = 16


@dataclass(frozen=True)
class ActiveStudy:
    """R rounds of at most `round_runs` runs within `round_budget` FLOPs each, for the answer at (C, U)."""

    rounds: int
    round_budget: float
    target_flops: float
    target_unique_tokens: float | None  # None: the corpus's training tokens
    round_runs: int = ROUND_RUNS
    max_epochs: int = MAX_EPOCHS

    def flags(self) -> list[str]:
        """The `dcsl sweep` flags that ask for this study (a job script passes them on)."""
        flags = ["--rounds", str(self.rounds), "--round-budget", f"{self.round_budget:.17g}",
                 "--target-flops", f"{self.target_flops:.17g}"]  # fmt: skip
        if self.target_unique_tokens is not None:
            flags += ["--target-unique-tokens", f"{self.target_unique_tokens:.17g}"]
        return [*flags, "--round-runs", str(self.round_runs), "--max-epochs", str(self.max_epochs)]


def active_study(rounds: int | None, round_budget: float | None, target_flops: float | None,
                 target_unique_tokens: float | None, round_runs: int = ROUND_RUNS,
                 max_epochs: int = MAX_EPOCHS) -> ActiveStudy | None:  # fmt: skip
    """The study the flags ask for (None without --rounds); InputError naming the flag when they don't fit together."""
    if rounds is None:
        for flag, value in (("--round-budget", round_budget), ("--target-flops", target_flops),
                            ("--target-unique-tokens", target_unique_tokens)):  # fmt: skip
            if value is not None:
                raise InputError(flag, "is a setting of an active study; give --rounds R too")
        return None
    if rounds < 1:
        raise InputError("--rounds", f"{rounds} must be at least 1")
    for flag, value in (("--round-budget", round_budget), ("--target-flops", target_flops)):
        if value is None:
            raise InputError(flag, f"missing; --rounds {rounds} needs --round-budget B and --target-flops C")
    if round_runs < 1:
        raise InputError("--round-runs", f"{round_runs} must be at least 1")
    if max_epochs < 1:
        raise InputError("--max-epochs", f"{max_epochs} must be at least 1")
    return ActiveStudy(rounds, round_budget, target_flops, target_unique_tokens, round_runs, max_epochs)


def check_study(sweep: SweepConfig, study: ActiveStudy, corpus_train_tokens: int | None) -> list[RunSpec]:
    """Every check of the study that the corpus allows now; the rounds' candidate runs (for `corpus_train_tokens`)."""
    if sweep.data.pools:
        raise InputError("--rounds", "an active study runs on one corpus; a multi-pool sweep (data.pools) has none yet")
    if sweep.fit.bootstrap < MIN_DRAWS:
        raise InputError("fit.bootstrap", f"{sweep.fit.bootstrap} resamples; an active study (--rounds) needs at least "
                                          f"{MIN_DRAWS}, the draws whose spread the rounds shrink")  # fmt: skip
    unique = target_unique_tokens(study, corpus_train_tokens)
    candidates = round_candidates(sweep, study, corpus_train_tokens, unique)
    grid = {run.name for run in expand(sweep, corpus_train_tokens, skip_invalid=True)}
    new = [run for run in candidates if run.name not in grid]
    if not new:
        raise InputError("--rounds", "every candidate run is in the grid already; raise --max-epochs or the target U")
    cheapest = min(new, key=lambda run: run.flops)
    if study.round_budget < cheapest.flops:
        raise InputError("--round-budget", f"{study.round_budget:g} FLOPs is below the cheapest candidate run that the "
                                           f"grid does not train ({cheapest.name}: {cheapest.flops:.3g} FLOPs)")  # fmt: skip
    return candidates


def target_unique_tokens(study: ActiveStudy, corpus_train_tokens: int | None) -> float | None:
    """The target U: the flag's, else the corpus's training tokens (None while unknown); InputError above the corpus."""
    if study.target_unique_tokens is None:
        return corpus_train_tokens
    if corpus_train_tokens is not None and study.target_unique_tokens > corpus_train_tokens:
        raise InputError("--target-unique-tokens", f"{study.target_unique_tokens:g} exceeds the corpus's "
                                                   f"{corpus_train_tokens} training tokens; the rounds train runs at up "
                                                   f"to U, so U <= {corpus_train_tokens}")  # fmt: skip
    return study.target_unique_tokens


def round_candidates(sweep: SweepConfig, study: ActiveStudy, corpus_train_tokens: int | None,
                     unique_tokens: float | None) -> list[RunSpec]:  # fmt: skip
    """The runs a round may choose: every model x a U ladder up to `unique_tokens` (the grid's largest U while it
    is unknown) x epochs 1..E, with the sweep's first seed; the impossible ones are left out."""
    budgets = [u for block in sweep.grid for u in block.unique_tokens]
    top = max(budgets) if unique_tokens is None else unique_tokens
    ladder = sorted({int(u) for u in unique_ladder(min(budgets), max(top, min(budgets)))})
    block = GridBlock(unique_tokens=ladder, epochs=list(range(1, study.max_epochs + 1)))
    every = sweep.model_copy(update={"grid": [block], "seeds": sweep.seeds[:1]})
    try:
        return expand(every, corpus_train_tokens, skip_invalid=True)
    except InputError as error:
        raise InputError("--rounds", f"no candidate run is possible ({error.problem})") from None


def checked_plan(sweep: SweepConfig, study: ActiveStudy, corpus_train_tokens: int | None) -> str:
    """Check the study (`check_study`) and say in one line what the rounds will do after the grid."""
    candidates = check_study(sweep, study, corpus_train_tokens)
    unique_tokens = target_unique_tokens(study, corpus_train_tokens)
    target = "the corpus's training tokens" if unique_tokens is None else format_quantity(unique_tokens)
    budgets = sorted({run.unique_tokens for run in candidates})
    return (f"then {study.rounds} round(s) of at most {study.round_runs} runs within {study.round_budget:.3g} FLOPs (6ND) "
            f"each, at most {study.rounds * study.round_budget:.3g} FLOPs more, chosen among {len(candidates)} candidate "
            f"runs (the sweep's models x U {format_quantity(budgets[0])}..{format_quantity(budgets[-1])} x epochs "
            f"1..{study.max_epochs}) to sharpen the answer at C = {study.target_flops:.3g} FLOPs, U = {target}")
