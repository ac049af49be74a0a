"""The fit kind: the runs of a study that finished -> `law.json` and `runs.csv` (`stages.fit`).

Its step is keyed by the runs that finished (its inputs), so it is known only once they have: a
sweep whose runs all end gets one fit over all of them; one with failures, a fit over the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import FitSettings
from pipeline.graph import Outcome
from pipeline.store import Step
from stages.artifacts import atomic_directory
from stages.fit import LAW, fit_runs


@dataclass(frozen=True)
class FitSpec:
    """What a study's fit needs: the study's name (the step's) and its fit settings."""

    name: str
    settings: FitSettings


def records_of(inputs: Sequence[Outcome]) -> list:
    """The run records of the inputs that finished, by name."""
    return sorted((outcome.value for outcome in inputs if outcome.done), key=lambda record: record.name)


@dataclass(frozen=True)
class FitKind:
    """Fit the law to the runs that finished (the node's `uses`)."""

    stage: str = "fit"
    counted: bool = False

    def key(self, spec: FitSpec, inputs: Sequence[Outcome]) -> Step | None:
        """The fit over the finished runs; None when none finished."""
        steps = sorted((outcome.step for outcome in inputs if outcome.done), key=lambda step: step.id)
        return Step("fit", spec.name, spec.settings.model_dump(mode="json"), steps) if steps else None

    def resources(self, spec: FitSpec) -> dict[str, float]:
        """One CPU."""
        return {"num_cpus": 1}

    def run(self, spec: FitSpec, step: Step, out_dir: Path, inputs: Sequence[Outcome]) -> None:
        """Fit, bootstrap and write the law document and the run table."""
        settings = spec.settings
        with atomic_directory(out_dir) as folder:
            fit_runs(records_of(inputs), settings.spec(), folder, params_kind=settings.params,
                     resamples=settings.bootstrap, seed=settings.seed)  # fmt: skip

    def result(self, spec: FitSpec, out_dir: Path) -> str:
        """The path of `law.json`."""
        return str(out_dir / LAW)
