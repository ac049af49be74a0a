"""The suggest kind: one round of an active study, the fit of the runs so far -> the runs to train next (`stages.suggest`).

Its node needs the fit and uses the runs it was fitted to; its step is keyed by the fit's step and
the round's settings (target, budget, run count, the candidate runs), so a resumed study finds the
round's choice in the store and trains the same runs. A finished step yields its record
(`suggestion.json`): the chosen runs by name, with their gains and the intervals before and after.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.graph import Outcome
from pipeline.kinds.fit import records_of
from pipeline.store import Step
from stages.artifacts import atomic_directory
from stages.suggest import SUGGESTION, Candidate, suggest_round


@dataclass(frozen=True)
class SuggestSpec:
    """One round: its step name, number, target (C, U), FLOPs budget, most runs, and the runs it may choose."""

    name: str
    round: int
    flops: float
    unique_tokens: float
    budget: float
    count: int
    candidates: tuple[Candidate, ...]


@dataclass(frozen=True)
class SuggestKind:
    """Choose a round's runs from the fit (the node's one `needs`) of the runs it uses."""

    stage: str = "suggest"
    counted: bool = False

    def key(self, spec: SuggestSpec, inputs: Sequence[Outcome]) -> Step | None:
        """The round over its fit; None when the fit has no step."""
        fit = inputs[0]
        if fit.step is None:
            return None
        config = {"target": [spec.flops, spec.unique_tokens], "budget": spec.budget, "count": spec.count,
                  "candidates": [[c.name, c.flops] for c in spec.candidates]}  # fmt: skip
        return Step("suggest", spec.name, config, [fit.step])

    def resources(self, spec: SuggestSpec) -> dict[str, float]:
        """One CPU."""
        return {"num_cpus": 1}

    def run(self, spec: SuggestSpec, step: Step, out_dir: Path, inputs: Sequence[Outcome]) -> None:
        """Score the candidates against the fit's bootstrap draws and write the round's `suggestion.json`."""
        fit, runs = inputs[0], inputs[1:]
        with atomic_directory(out_dir) as folder:
            suggest_round(Path(fit.value), records_of(runs), list(spec.candidates), (spec.flops, spec.unique_tokens),
                          spec.budget, spec.count, spec.round, folder)  # fmt: skip

    def result(self, spec: SuggestSpec, out_dir: Path) -> dict:
        """The round's record: `runs` lists the chosen runs by `name`."""
        return json.loads((out_dir / SUGGESTION).read_text())
