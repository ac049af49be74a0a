"""Checkpoints of a training run: written atomically, found again on restart, old ones pruned.

`<run>/checkpoints/step-00000040/` holds the backend's model and optimiser state, every rank's RNG
states and `state.json` (the step, and everything else the loop needs to go on). It is built as
`.tmp-step-00000040` by all ranks and renamed into place by rank 0 once all have written, so a
restart only ever sees whole checkpoints. The sampler needs nothing beyond the step: any step's
batch is computed from the seed alone.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from stages.distributed import Ranks, barrier

FOLDER = "checkpoints"
STATE = "state.json"


def _name(step: int) -> str:
    return f"step-{step:08d}"


def checkpoints(run_dir: Path) -> list[Path]:
    """The finished checkpoints of a run, oldest first."""
    folder = Path(run_dir) / FOLDER
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.startswith("step-") and (p / STATE).is_file())


def latest(run_dir: Path) -> Path | None:
    """The newest finished checkpoint, or None."""
    found = checkpoints(run_dir)
    return found[-1] if found else None


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(run_dir: Path, step: int, state: dict, engine, ranks: Ranks, keep: int) -> Path:
    """Write the checkpoint after `step` (all ranks call this) and keep only the newest `keep`."""
    folder = Path(run_dir) / FOLDER
    final, work = folder / _name(step), folder / f".tmp-{_name(step)}"
    if ranks.is_main:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
    barrier()
    engine.save(work, ranks)
    torch.save(_rng_state(), work / f"rng-{ranks.rank}.pt")
    barrier()
    if ranks.is_main:
        (work / STATE).write_text(json.dumps({**state, "step": step, "world": ranks.world}, indent=2) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        work.rename(final)
        for old in checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old)
    barrier()
    return final


def load(folder: Path, engine, ranks: Ranks) -> dict:
    """Restore the engine and this rank's RNG states from a checkpoint; return its `state.json`."""
    state = json.loads((folder / STATE).read_text())
    if state["world"] != ranks.world:
        raise RuntimeError(f"checkpoint: {folder} was written by {state['world']} ranks; this run has {ranks.world}")
    engine.load(folder, ranks)
    _set_rng_state(torch.load(folder / f"rng-{ranks.rank}.pt", weights_only=False))
    return state
