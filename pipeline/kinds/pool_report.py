"""The report kind of a multi-pool study: its finished runs (and the fitted pool law, when the fit finished)
-> per-pool table, plots, the allocation across pools and `report.md` (`stages.pool_report`). It uses the
fit and every run, so it is written even when the fit is not (too few runs for the law, say), and names
the runs that did not finish."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.graph import Outcome
from pipeline.kinds.fit import records_of
from pipeline.store import Step
from stages.artifacts import atomic_directory
from stages.pool_report import REPORT, write_pool_report
from stages.record import RunFailure

REPORT_FORMAT = 1


@dataclass(frozen=True)
class PoolReportKind:
    """Report on a multi-pool study's runs; the inputs are the fit, then the runs."""

    stage: str = "report"
    counted: bool = False

    def key(self, spec: str, inputs: Sequence[Outcome]) -> Step | None:
        """The report of the finished runs (and of the fit, once it finished); None when no run finished."""
        fit, runs = inputs[0], inputs[1:]
        steps = sorted((run.step for run in runs if run.done), key=lambda step: step.id)
        if not steps:
            return None
        left_out = sorted(run.name for run in runs if not run.done)
        config = {"format": REPORT_FORMAT, "pools": True, **({"left_out": left_out} if left_out else {})}
        return Step("report", spec, config, [*steps, *([fit.step] if fit.done else [])])

    def resources(self, spec: str) -> dict[str, float]:
        """One CPU."""
        return {"num_cpus": 1}

    def run(self, spec: str, step: Step, out_dir: Path, inputs: Sequence[Outcome]) -> None:
        """Write the report of the runs that finished, naming the others."""
        fit, runs = inputs[0], inputs[1:]
        failed = [RunFailure(o.name, o.state.value, o.reason) for o in sorted(runs, key=lambda o: o.name) if not o.done]
        with atomic_directory(out_dir) as folder:
            law = None
            if fit.done:  # the law beside the report, so the folder stands alone
                law = folder / Path(fit.value).name
                shutil.copyfile(fit.value, law)
            write_pool_report(records_of(runs), failed, folder, law)

    def result(self, spec: str, out_dir: Path) -> str:
        """The path of `report.md`."""
        return str(out_dir / REPORT)
