"""The report kind: a fitted law and the runs -> allocation table, plots and `report.md` (`stages.report`).

It needs the fit and the corpus (whose validation contamination it shows at the runs' budgets) and
uses every run node, finished or not, so the report names the runs that failed and says it is
partial. The runs left out are part of its key: the same fit reported for a study whose every run
finished is another report.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.graph import Outcome
from pipeline.kinds.fit import records_of
from pipeline.store import Step
from stages.artifacts import atomic_directory
from stages.contamination import shares_at
from stages.fit import RUNS
from stages.record import RunFailure
from stages.report import REPORT, write_report

REPORT_FORMAT = 3  # in the step's config: a new layout of the report re-runs it (3: validation contamination)


@dataclass(frozen=True)
class ReportKind:
    """Report on a fit; the inputs are the fit, the corpus, the rounds of an active study (if any), then the runs."""

    stage: str = "report"
    counted: bool = False
    rounds: int = 0
    """The suggest rounds among the inputs; with any, the report shows the answer at their target per round."""

    def key(self, spec: str, inputs: Sequence[Outcome]) -> Step | None:
        """The report of the fit (and rounds) and of the runs left out (it names them); None when the fit has no step."""
        fit, corpus, rounds, runs = self._split(inputs)
        if fit.step is None:
            return None
        left_out = sorted(run.name for run in runs if not run.done)
        config = {"format": REPORT_FORMAT, **({"left_out": left_out} if left_out else {})}
        return Step("report", spec, config, [fit.step, corpus.step, *(r.step for r in rounds)])

    def _split(self, inputs: Sequence[Outcome]) -> tuple[Outcome, Outcome, Sequence[Outcome], Sequence[Outcome]]:
        """The fit, the corpus, the rounds and the runs."""
        return inputs[0], inputs[1], inputs[2 : 2 + self.rounds], inputs[2 + self.rounds :]

    def resources(self, spec: str) -> dict[str, float]:
        """One CPU."""
        return {"num_cpus": 1}

    def run(self, spec: str, step: Step, out_dir: Path, inputs: Sequence[Outcome]) -> None:
        """Copy the law and its run table beside the report, so the folder stands alone, and write it."""
        fit, corpus_outcome, rounds, runs = self._split(inputs)
        law_path, corpus = Path(fit.value), Path(corpus_outcome.value)
        failed = [RunFailure(o.name, o.state.value, o.reason) for o in sorted(runs, key=lambda o: o.name) if not o.done]
        records = records_of(runs)
        shares = shares_at(corpus, sorted({record.unique_tokens for record in records}))
        with atomic_directory(out_dir) as folder:
            for name in (law_path.name, RUNS):
                shutil.copyfile(law_path.parent / name, folder / name)
            write_report(folder / law_path.name, records, failed, folder, contamination=shares,
                         rounds=[outcome.value for outcome in rounds] or None)

    def result(self, spec: str, out_dir: Path) -> str:
        """The path of `report.md`."""
        return str(out_dir / REPORT)
