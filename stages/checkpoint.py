"""Checkpoints of a training run: written atomically, checked on restart, the previous one kept.

`<run>/checkpoints/step-00000040/` holds the backend's model and optimiser state, every rank's RNG
states and `state.json` (the step, everything else the loop needs to go on, and the size and
SHA-256 of every other file of the checkpoint). It is built as `.tmp-step-00000040` by all ranks;
rank 0 writes `state.json` last and renames the folder into place once all have written, so a
restart only ever sees whole checkpoints. At least the newest two are kept: a restart resumes from
the newest one whose files all match `state.json`, falls back to the one before when the newest is
damaged (a file missing, truncated or changed), and starts over when none is whole; each skipped
checkpoint is named in a warning (`resume_point`). The sampler needs nothing beyond the step: any
step's batch is computed from the seed alone.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from scaling.atomic import write_text_atomic
from stages.artifacts import fingerprints, mismatch
from stages.distributed import Ranks, barrier

FOLDER = "checkpoints"
STATE = "state.json"
KEPT_AT_LEAST = 2  # the newest and the one before it: a fallback when the newest is damaged


class ResumePoint(NamedTuple):
    """Where a run resumes: the newest whole checkpoint (None: from the start) and the damaged ones skipped."""

    folder: Path | None
    skipped: list[str]


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint after `step`: `step-00000040`."""
    return f"step-{step:08d}"


def checkpoints(run_dir: Path) -> list[Path]:
    """The finished checkpoints of a run, oldest first."""
    folder = Path(run_dir) / FOLDER
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.startswith("step-") and (p / STATE).is_file())


def resume_point(run_dir: Path) -> ResumePoint:
    """The newest checkpoint whose files all match its `state.json`, and why each newer one was skipped."""
    skipped = []
    for folder in reversed(checkpoints(run_dir)):
        problem = damage(folder)
        if problem is None:
            return ResumePoint(folder, skipped)
        skipped.append(f"checkpoint {folder.name} is damaged ({problem}); skipped")
    return ResumePoint(None, skipped)


def latest(run_dir: Path) -> Path | None:
    """The checkpoint a restart resumes from (see `resume_point`), or None."""
    return resume_point(run_dir).folder


def damage(folder: Path) -> str | None:
    """What is wrong with a checkpoint (unreadable state, a file missing or not as recorded), or None when whole."""
    try:
        recorded = json.loads((folder / STATE).read_text()).get("files", {})  # none recorded: written before checks
    except (OSError, ValueError, AttributeError) as err:
        return f"{STATE} unreadable: {type(err).__name__}"
    return mismatch(folder, recorded)


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


def save(run_dir: Path, step: int, state: dict, engine, ranks: Ranks, keep: int, pinned: frozenset[int] = frozenset()) -> Path:
    """Write the checkpoint after `step` (all ranks call this) and keep the newest `keep` (at least two) and those
    of the `pinned` steps (a trunk's branch points)."""
    folder = Path(run_dir) / FOLDER
    final, work = folder / checkpoint_name(step), folder / f".tmp-{checkpoint_name(step)}"
    if ranks.is_main:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
    barrier()
    engine.save(work, ranks)
    torch.save(_rng_state(), work / f"rng-{ranks.rank}.pt")
    barrier()
    if ranks.is_main:
        files = fingerprints(work, leave_out=STATE, whole_limit=None)  # every file hashed whole, whatever its size
        record = {**state, "step": step, "world": ranks.world, "files": files}
        write_text_atomic(work / STATE, json.dumps(record, indent=2) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        work.rename(final)
        for old in checkpoints(run_dir)[: -max(keep, KEPT_AT_LEAST)]:
            if old.name not in {checkpoint_name(kept) for kept in pinned}:
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
