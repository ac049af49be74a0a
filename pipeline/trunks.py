"""WSD trunks: a sweep's runs that differ only in D, grouped to share one constant-rate trunk.

Under `optimizer.schedule: wsd` a run's rate does not depend on its D until its cooldown starts
(`stages.schedule`), and its batches do not depend on D at all (`stages.sampler`). So the runs of a
sweep with the same model, U, seed and hyperparameters (everything but D and their cooldown
settings) share one *trunk*: a run at constant rate to the last of their cooldown starts, which
keeps a checkpoint at each of them. Each run becomes a *branch*: its own step, started from its
trunk's checkpoint at its cooldown start, running only its cooldown. A run's FLOPs and record stay
an independent run's (its D in full); the sweep's compute counts the shared stretch once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pipeline.config import Resources

from pipeline.expand import RunSpec
from scaling.units import format_quantity
from stages.metrics import curve_steps
from stages.run_config import COOLDOWN_FIELDS, RunConfig


@dataclass(frozen=True)
class TrunkSpec:
    """A trunk: its name, its config as a run (constant rate to its last stop) and the runs that branch off it."""

    name: str
    config: RunConfig
    branches: tuple[RunSpec, ...]
    resources: Resources
    world_size: int

    @property
    def stops(self) -> list[int]:
        """The steps where its branches' cooldowns start: it keeps a checkpoint at each, and ends at the last."""
        return sorted({run.config.cooldown_start_step for run in self.branches})

    @property
    def evals(self) -> list[int]:
        """The steps it is validated after: each branch's loss-curve points before that branch's cooldown."""
        points = set()
        for run in self.branches:
            start = run.config.cooldown_start_step
            points.update(step for step in curve_steps(run.config.steps, run.config.curve_evals) if step <= start)
        return sorted(points)

    @property
    def flops(self) -> float:
        """6 N D of the trunk's tokens, N non-embedding."""
        return 6.0 * self.branches[0].params_non_embedding * self.config.tokens

    def hashed(self) -> dict:
        """What fixes the trunk's numbers: its runs' shared config (no D, no cooldown settings) and its stops."""
        return {"run": shared_config(self.config), "stops": self.stops}


@dataclass(frozen=True)
class BranchSpec:
    """One run of a WSD sweep as a branch: the run, its trunk's name and the step it starts after."""

    run: RunSpec
    trunk: str
    start: int

    @property
    def flops_own(self) -> float:
        """6 N D of the tokens the branch trains itself (its cooldown)."""
        return 6.0 * self.run.params_non_embedding * (self.run.tokens - self.start * self.run.config.batch_tokens)


def shared_config(config: RunConfig) -> dict:
    """A run's hashed config without what its trunk's other runs may differ in: name, D and the cooldown settings."""
    hashed = config.hashed()
    shared = {key: value for key, value in hashed.items() if key not in ("name", "tokens")}
    shared["optimizer"] = {key: value for key, value in hashed["optimizer"].items() if key not in COOLDOWN_FIELDS}
    return shared


def plan_trunks(runs: list[RunSpec]) -> tuple[list[TrunkSpec], list[BranchSpec]]:
    """The trunks of a sweep's WSD runs, in run order, and every WSD run as a branch of one (cosine runs left out)."""
    groups: dict[str, list[RunSpec]] = {}
    for run in runs:
        if run.config.optimizer.schedule == "wsd":
            groups.setdefault(json.dumps(shared_config(run.config), sort_keys=True), []).append(run)
    trunks, branches, names = [], [], set()
    for members in groups.values():
        first = members[0]
        name = f"{first.model}-U{format_quantity(first.unique_tokens)}-s{first.seed}-trunk"
        name = name if name not in names else f"{name}{len(names)}"  # the same model, U and seed with other settings
        names.add(name)
        last_stop = max(run.config.cooldown_start_step for run in members)
        optimizer = first.config.optimizer.model_copy(update={"cooldown": 0.0})
        config = first.config.model_copy(update={"name": name, "tokens": last_stop * first.config.batch_tokens, "optimizer": optimizer})
        trunks.append(TrunkSpec(name, config, tuple(members), first.resources, first.world_size))
        branches.extend(BranchSpec(run, name, run.config.cooldown_start_step) for run in members)
    return trunks, branches


def sharing(trunks: list[TrunkSpec], branches: list[BranchSpec]) -> tuple[float, float]:
    """(FLOPs with trunks shared, FLOPs of the same runs trained independently), 6ND with N non-embedding."""
    shared = sum(trunk.flops for trunk in trunks) + sum(branch.flops_own for branch in branches)
    return shared, sum(branch.run.flops for branch in branches)
