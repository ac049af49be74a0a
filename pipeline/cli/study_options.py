"""The flags of an active study, shared by `dcsl sweep` and `dcsl plan` (see `pipeline.study`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Optional

import typer

from scaling.units import parse_quantity

if TYPE_CHECKING:  # the sweep schema loads when the command runs
    from pipeline.study import ActiveStudy

Rounds = Annotated[Optional[int], typer.Option("--rounds", help="After the grid, this many rounds of fit -> suggest -> train (an active study).")]
RoundBudget = Annotated[Optional[str], typer.Option("--round-budget", help="FLOPs (6ND, N non-embedding) each round may spend (1e15).")]
TargetFlops = Annotated[Optional[str], typer.Option("--target-flops", help="The compute C whose answer the rounds sharpen (1e22).")]
TargetUnique = Annotated[Optional[str], typer.Option("--target-unique-tokens", help="The unique tokens U of the answer (default: the corpus's training tokens).")]
RoundRuns = Annotated[int, typer.Option("--round-runs", help="At most this many runs per round.")]
MaxEpochs = Annotated[int, typer.Option("--max-epochs", help="Candidate runs have 1..E epochs.")]


def study_from_flags(rounds: int | None, round_budget: str | None, target_flops: str | None, target_unique: str | None,
                     round_runs: int, max_epochs: int) -> ActiveStudy | None:  # fmt: skip
    """The active study the flags ask for, or None without --rounds; InputError naming the flag otherwise."""
    from pipeline.study import active_study

    def quantity(value: str | None, flag: str) -> float | None:
        return None if value is None else parse_quantity(value, flag)

    return active_study(rounds, quantity(round_budget, "--round-budget"), quantity(target_flops, "--target-flops"),
                        quantity(target_unique, "--target-unique-tokens"), round_runs, max_epochs)  # fmt: skip
