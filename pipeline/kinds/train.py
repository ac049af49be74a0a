"""The train kind: one run of a study, trained and evaluated (`stages.launch`); yields its run record.

A run with one rank trains in the task itself, asking for the run's CPUs and GPUs. A run with
several ranks (GPUs, nodes or processes > 1) is trained by Ray Train's `TorchTrainer`, one worker
per rank, from a task that holds no resources itself; each worker records where it ran (rank, Ray
node id, host, pid) in the run's `ray_train/rank-<rank>.json`.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.expand import RunSpec
from pipeline.graph import Outcome
from pipeline.store import Step
from scaling.atomic import write_text_atomic
from stages.launch import finish, prepare, train
from stages.record import RunRecord, read_record
from stages.train import run_digest, train_loop


def train_step(spec: RunSpec, data_step: Step) -> Step:
    """The step of a run; its hash names the run directory `stages.launch` uses."""
    return Step("train", spec.name, spec.config.hashed(), [data_step], digest=run_digest(spec.config, data_step.hash))


@dataclass(frozen=True)
class TrainKind:
    """Train and evaluate one run; the spec is its `RunSpec`, the one input the tokenize outcome."""

    stage: str = "train"
    counted: bool = True

    def key(self, spec: RunSpec, inputs: Sequence[Outcome]) -> Step:
        """The run's step on its corpus."""
        return train_step(spec, inputs[0].step)

    def resources(self, spec: RunSpec) -> dict[str, float]:
        """The run's CPUs and GPUs; none for a multi-rank run (its Ray Train workers reserve them)."""
        return run_resources(spec)

    def run(self, spec: RunSpec, step: Step, out_dir: Path, inputs: Sequence[Outcome]) -> None:
        """Train (resuming from the run's latest checkpoint) and evaluate."""
        launch(spec, Path(inputs[0].value), out_dir.parents[1])

    def result(self, spec: RunSpec, out_dir: Path) -> RunRecord:
        """The run record."""
        return read_record(out_dir)


def run_resources(spec: RunSpec) -> dict[str, float]:
    """Ray task options of a run (or of anything trained like one: name, config, resources, world_size)."""
    if spec.world_size > 1:
        return {"num_cpus": 0}
    return {"num_cpus": spec.resources.cpus, "num_gpus": spec.resources.gpus}


def launch(spec: RunSpec, data_path: Path, root: Path, run_dir: Path | None = None) -> None:
    """Train a run (or anything trained like one) in the store at `root`: in this task, or with Ray Train for several
    ranks; in `stages.launch.run_path`'s directory unless `run_dir` is given (a WSD trunk or branch step)."""
    if spec.world_size > 1:
        _train_with_ray_train(spec, data_path, root, run_dir)
    else:
        train(spec.config, data_path, root, run_dir=run_dir)


def _train_with_ray_train(spec: RunSpec, data_path: Path, root: Path, run_dir: Path | None) -> None:
    """Train a multi-rank run with Ray Train's TorchTrainer: one worker per rank, the same loop."""
    from ray.train import RunConfig as TrainRunConfig
    from ray.train import ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    run_dir = prepare(spec.config, data_path, root, world=spec.world_size, run_dir=run_dir)
    resources = spec.resources
    use_gpu = resources.gpus > 0
    per_worker = {"CPU": max(1, resources.cpus // max(1, spec.world_size // resources.nodes))}
    if use_gpu:
        per_worker["GPU"] = 1
    config, data, directory = spec.config, str(data_path), str(run_dir)

    def loop_per_worker() -> None:
        _record_placement(Path(directory))
        train_loop(config, Path(data), Path(directory))

    trainer = TorchTrainer(
        loop_per_worker,
        scaling_config=ScalingConfig(num_workers=spec.world_size, use_gpu=use_gpu, resources_per_worker=per_worker),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=TrainRunConfig(name=f"{spec.name}-ray-train", storage_path=str(run_dir / "ray_train")),
    )
    trainer.fit()
    finish(run_dir)


def _record_placement(run_dir: Path) -> None:
    """Write where this Ray Train worker runs to `ray_train/rank-<rank>.json`: its rank, node id, host and pid."""
    import ray
    from ray import train as ray_train

    rank = ray_train.get_context().get_world_rank()
    placement = {"rank": rank, "node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(), "pid": os.getpid()}
    write_text_atomic(run_dir / "ray_train" / f"rank-{rank}.json", json.dumps(placement) + "\n")
