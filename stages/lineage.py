"""A WSD run's place in a trunk: the trunk's stops, or the branch's origin (files in the run directory).

Runs that differ only in D share their warmup and constant-rate stretch (`stages.schedule`). A
*trunk* is a run at constant rate that keeps a checkpoint at each stop (each of its branches'
cooldown start; those checkpoints are never pruned) and evaluates at the steps its branches' loss
curves need: `trunk.json` lists both. A *branch* is a run that starts from one of those checkpoints
instead of from scratch and runs its own cooldown to its D: `branch.json` names the trunk and the
checkpoint. The launcher writes the file before the ranks start; the train loop reads it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

from scaling.atomic import write_text_atomic
from stages.checkpoint import FOLDER, checkpoint_name, damage

TRUNK = "trunk.json"
BRANCH = "branch.json"


class Lineage(NamedTuple):
    """What the train loop needs to know of a run's trunk: none for a plain run."""

    stops: frozenset[int] = frozenset()
    """A trunk's steps whose checkpoints are kept for its branches."""
    evals: tuple[int, ...] | None = None
    """A trunk's validation steps (its branches' curve points before their cooldowns); None: the run's own."""
    trunk: str | None = None
    """A branch's trunk, `trunk/<name>-<hash>`."""
    trunk_dir: Path | None = None
    """The trunk's run directory."""
    start: int = 0
    """The step a branch starts after: its cooldown start, a stop of its trunk."""
    run_hash: str | None = None
    """A branch's own hash (its step's, naming its directory), for its record and its W&B run."""

    def origin(self) -> Path:
        """A branch's starting checkpoint; RuntimeError naming it when it is missing or damaged."""
        folder = Path(self.trunk_dir) / FOLDER / checkpoint_name(self.start)
        problem = damage(folder) if folder.is_dir() else "missing"
        if problem is not None:
            raise RuntimeError(f"the branch's starting checkpoint {folder} is not whole ({problem}); delete its trunk "
                               f"{self.trunk_dir} and run the sweep again to train the trunk again")
        return folder


def write_trunk(run_dir: Path, stops: list[int], evals: list[int]) -> None:
    """Make the run in `run_dir` a trunk that keeps checkpoints at `stops` and evaluates at `evals`."""
    write_text_atomic(Path(run_dir) / TRUNK, json.dumps({"stops": sorted(stops), "evals": sorted(evals)}) + "\n")


def write_branch(run_dir: Path, trunk: str, trunk_dir: Path, start: int, run_hash: str) -> None:
    """Make the run in `run_dir` (hash `run_hash`) a branch of `trunk` (`trunk/<name>-<hash>` in `trunk_dir`) from its
    checkpoint at `start`."""
    origin = {"trunk": trunk, "trunk_dir": str(Path(trunk_dir).resolve()), "start": start, "run_hash": run_hash}
    write_text_atomic(Path(run_dir) / BRANCH, json.dumps(origin) + "\n")


def read_lineage(run_dir: Path) -> Lineage:
    """The lineage of the run in `run_dir`: its trunk or branch file, else a plain run's."""
    trunk, branch = Path(run_dir) / TRUNK, Path(run_dir) / BRANCH
    if trunk.is_file():
        plan = json.loads(trunk.read_text())
        return Lineage(stops=frozenset(plan["stops"]), evals=tuple(plan["evals"]))
    if branch.is_file():
        origin = json.loads(branch.read_text())
        return Lineage(trunk=origin["trunk"], trunk_dir=Path(origin["trunk_dir"]), start=origin["start"], run_hash=origin["run_hash"])
    return Lineage()
