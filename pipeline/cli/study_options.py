"""The flags of an active study, shared by `dcsl sweep` and `dcsl plan` (see `pipeline.study`)."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional

import typer

from scaling.units import parse_quantity

Rounds = Annotated[Optional[int], typer.Option("--rounds", help="After the grid, this many rounds of fit -> suggest -> train (an active study).")]
RoundBudget = Annotated[Optional[str], typer.Option("--round-budget", help="FLOPs (6ND, N non-embedding) each round may spend (1e15).")]
TargetFlops = Annotated[Optional[str], typer.Option("--target-flops", help="The compute C whose answer the rounds sharpen (1e22).")]
TargetUnique = Annotated[Optional[str], typer.Option("--target-unique-tokens", help="The unique tokens U of the answer (default: the corpus's training tokens).")]
RoundRuns = Annotated[int, typer.Option("--round-runs", help="At most this many runs per round.")]
MaxEpochs = Annotated[int, typer.Option("--max-epochs", help="Candidate runs have 1..E epochs.")]
FLAGS = {"rounds": (Rounds, None), "round_budget": (RoundBudget, None), "target_flops": (TargetFlops, None),
         "target_unique": (TargetUnique, None), "round_runs": (RoundRuns, 8), "max_epochs": (MaxEpochs, 16)}  # fmt: skip


def with_study_flags(command: Callable) -> Callable:
    """Give a command the active study's flags; it receives them as one keyword argument, `study` (an
    `ActiveStudy`, or None without --rounds), checked: flags that don't fit together are an InputError."""
    hints = typing.get_type_hints(command, include_extras=True)
    own = [parameter.replace(annotation=hints.get(name, parameter.annotation))
           for name, parameter in inspect.signature(command).parameters.items() if name != "study"]  # fmt: skip
    flags = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
             for name, (annotation, default) in FLAGS.items()]  # fmt: skip

    @functools.wraps(command)
    def with_flags(*args, **kwargs):
        values = {name: kwargs.pop(name) for name in FLAGS}
        return command(*args, study=study_from_flags(**values), **kwargs)

    with_flags.__signature__ = inspect.Signature(own + flags)
    with_flags.__annotations__ = {parameter.name: parameter.annotation for parameter in own + flags}
    return with_flags


def study_from_flags(rounds: int | None, round_budget: str | None, target_flops: str | None, target_unique: str | None,
                     round_runs: int, max_epochs: int):  # fmt: skip
    """The active study the flags ask for, or None without --rounds; InputError naming the flag otherwise."""
    from pipeline.study import active_study

    def quantity(value: str | None, flag: str) -> float | None:
        return None if value is None else parse_quantity(value, flag)

    return active_study(rounds, quantity(round_budget, "--round-budget"), quantity(target_flops, "--target-flops"),
                        quantity(target_unique, "--target-unique-tokens"), round_runs, max_epochs)  # fmt: skip


def checked_study_line(sweep, study, store_root: Path) -> str:
    """Check the active study against the sweep (and its corpus, if tokenized in `store_root`) before any work;
    what its rounds will do, in one line."""
    from pipeline.cli.plan_commands import tokenized_corpus
    from pipeline.study import checked_plan

    corpus = tokenized_corpus(sweep, store_root)
    return checked_plan(sweep, study, corpus["train"]["tokens"] if corpus else None)
