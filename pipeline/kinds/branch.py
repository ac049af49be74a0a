"""The branch kind: one run of a WSD sweep, started from its trunk's checkpoint at its cooldown start.

A branch is a run step (`train/<name>-<hash>`, found by `dcsl runs`, the fit and the report like
any run) whose hash covers the run's own config, its data and its start step, not its trunk's
hash: a finished branch stays finished when its trunk is rerun for another branch's sake. It runs
its cooldown to its D on the batches an independent run would see there, is evaluated, and yields
a normal run record (D in full) naming its trunk. It needs its trunk: a failed trunk leaves its
branches DEP_FAILED, and a failed branch leaves its siblings alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.graph import Outcome
from pipeline.kinds.train import launch, run_resources
from pipeline.store import Step
from pipeline.trunks import BranchSpec
from stages.artifacts import step_hash
from stages.lineage import write_branch
from stages.record import RunRecord, read_record


@dataclass(frozen=True)
class BranchKind:
    """Run one branch; the spec is its `BranchSpec`, the inputs its trunk's outcome and the tokenize outcome."""

    stage: str = "train"
    counted: bool = True

    def key(self, spec: BranchSpec, inputs: Sequence[Outcome]) -> Step:
        """The run's step: its config, data and start step (its trunk an input, not in the hash)."""
        trunk, data = inputs[0].step, inputs[1].step
        hashed = spec.run.config.hashed()
        digest = step_hash({"format": 1, "run": hashed, "data": data.hash, "branch_at": spec.start})
        return Step(self.stage, spec.run.name, hashed, [trunk, data], digest=digest)

    def resources(self, spec: BranchSpec) -> dict[str, float]:
        """The run's CPUs and GPUs."""
        return run_resources(spec.run)

    def run(self, spec: BranchSpec, step: Step, out_dir: Path, inputs: Sequence[Outcome]) -> None:
        """Start from the trunk's checkpoint (or resume from the branch's own), cool down to D and evaluate."""
        trunk_dir = Path(inputs[0].value)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_branch(out_dir, f"{inputs[0].stage}/{trunk_dir.name}", trunk_dir, spec.start, step.hash)
        launch(spec.run, Path(inputs[1].value), out_dir.parents[1], run_dir=out_dir)

    def result(self, spec: BranchSpec, out_dir: Path) -> RunRecord:
        """The run record."""
        return read_record(out_dir)
