"""The trunk kind: a WSD trunk, trained at constant rate, keeping a checkpoint at each branch's cooldown start.

Its step (`trunk/<name>-<hash>`) is keyed by what its runs share (not D, not their cooldown
settings) and its stops, so a change of cooldown shape or final rate reruns the branches only; a
change of the cooldown fraction moves the stops and so reruns the trunk too. It is trained like a
run (`pipeline.kinds.train.launch`: resumed from its latest checkpoint after a kill) and yields its
run directory, whose checkpoints its branches start from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.graph import Outcome
from pipeline.kinds.train import launch, run_resources
from pipeline.store import Step
from pipeline.trunks import TrunkSpec
from stages.artifacts import step_hash
from stages.lineage import write_trunk


@dataclass(frozen=True)
class TrunkKind:
    """Train one trunk; the spec is its `TrunkSpec`, the one input the tokenize outcome."""

    stage: str = "trunk"
    counted: bool = False

    def key(self, spec: TrunkSpec, inputs: Sequence[Outcome]) -> Step:
        """The trunk's step on its corpus."""
        data = inputs[0].step
        return Step(self.stage, spec.name, spec.hashed(), [data], digest=step_hash({"format": 1, "trunk": spec.hashed(), "data": data.hash}))

    def resources(self, spec: TrunkSpec) -> dict[str, float]:
        """What one of its runs asks for."""
        return run_resources(spec)

    def run(self, spec: TrunkSpec, step: Step, out_dir: Path, inputs: Sequence[Outcome]) -> None:
        """Train to the last stop at constant rate, keeping the stops' checkpoints (resuming after a kill)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        write_trunk(out_dir, spec.stops, spec.evals)
        launch(spec, Path(inputs[0].value), out_dir.parents[1], run_dir=out_dir)

    def result(self, spec: TrunkSpec, out_dir: Path) -> Path:
        """The trunk's run directory."""
        return out_dir
