"""Benchmarks of the orchestration; every number beside its baseline from the same run.

1. Overhead per step: a graph of 200 no-work steps through the pipeline's runner (a Ray task per
   step, each run under the store's lease with its step.json, markers and SUCCESS) against the same
   200 no-work functions called in a plain loop. Target: <= 50 ms per step.
2. Re-running a finished 200-run sweep: `run_sweep` on a store where every step is done, timed
   beyond Ray's start-up (measured in the same run). Target: <= 5 s.
3. The sweep's local Ray cluster, started, given one task and stopped (`ray_session()`: a watchdog
   process, `ray start --head` in its own session, `ray.init(address=...)`) against `ray.init()`
   starting the same local cluster in the driver, alternated for a few rounds; medians.
   Target: <= 1.25x.

Usage: python bench/bench_pipeline.py
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="dcsl-bench-hf-"))
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray  # noqa: E402

from pipeline.config import SweepConfig  # noqa: E402
from pipeline.graph import Node  # noqa: E402
from pipeline.kinds.tokenize import tokenize_step  # noqa: E402
from pipeline.kinds.train import train_step  # noqa: E402
from pipeline.ray_session import ray_session  # noqa: E402
from pipeline.runner import Runner  # noqa: E402
from pipeline.store import State, Step, Store  # noqa: E402
from pipeline.sweep import run_sweep  # noqa: E402
from pipeline.expand import expand  # noqa: E402
from scaling.laws import preset  # noqa: E402
from stages.artifacts import mark_success  # noqa: E402
from stages.record import RunRecord  # noqa: E402
from stages.tokenize import tokenize  # noqa: E402

STEPS = 200


def _no_work() -> None:
    """A step that does nothing: what is left is the orchestration."""


class NoWork:
    """A step kind whose steps do nothing."""

    stage, counted = "noop", True

    def key(self, spec, inputs):
        return Step("noop", f"step-{spec:03d}", {"i": spec})

    def resources(self, spec):
        return {"num_cpus": 1}

    def run(self, spec, step, out_dir, inputs):
        _no_work()

    def result(self, spec, out_dir):
        return None


def bench_overhead(root: Path) -> None:
    nodes = [Node(NoWork(), f"step-{i:03d}", i) for i in range(STEPS)]
    started = time.perf_counter()
    for _ in nodes:
        _no_work()
    plain = time.perf_counter() - started
    started = time.perf_counter()
    outcomes = Runner(root).run(nodes)
    pipeline = time.perf_counter() - started
    assert all(outcome.state is State.DONE for outcome in outcomes.values())
    overhead = (pipeline - plain) / STEPS
    print(f"  {STEPS} no-work steps: plain loop {plain * 1e3:.3f} ms, through Ray tasks + store {pipeline:.2f} s "
          f"({os.cpu_count()} CPUs, tasks in parallel)")
    print(f"RATIO overhead per step = {overhead * 1e3:.1f} ms  (target <= 50 ms)")


def _sweep(root: Path) -> SweepConfig:
    """A 200-run sweep (5 sizes x 8 unique budgets x 5 epochs) on a small built-in corpus."""
    return SweepConfig.model_validate({
        "name": "bench", "store": str(root),
        "data": {"name": "bench", "corpus": {"source": "stdlib", "max_documents": 200},
                 "tokenizer": {"vocab_size": 512, "training_characters": "200K"}, "validation_tokens": "20K"},
        "models": [{"name": f"m{w}", "layers": 1, "width": w, "heads": 1} for w in (32, 64, 96, 128, 160)],
        "grid": [{"unique_tokens": [f"{k}K" for k in (10, 20, 30, 40, 50, 60, 70, 80)], "epochs": [1, 2, 4, 8, 16]}],
        "train": {"seq_len": 64, "batch_tokens": 1024},
        "fit": {"base": "c4"}, "wandb": {"mode": "disabled"},
    })  # fmt: skip


def _fake_finished_runs(sweep: SweepConfig, root: Path) -> int:
    """Mark every train step of the sweep done, with a record whose loss comes from the C4 law."""
    data = tokenize(sweep.data, root)
    specs = expand(sweep, json.loads((data / "manifest.json").read_text())["train"]["tokens"])
    store, law, data_step = Store(root), preset("c4"), tokenize_step(sweep.data)
    for spec in specs:
        folder = store.step_dir(train_step(spec, data_step))
        loss = float(law.predict(spec.params_non_embedding * 1e4, spec.tokens * 1e4, spec.unique_tokens * 1e4))
        record = RunRecord(name=spec.name, params=spec.params, params_non_embedding=spec.params_non_embedding,
                           tokens=spec.tokens, unique_tokens=spec.unique_tokens, epochs=spec.epochs, val_loss=loss,
                           flops=spec.flops)  # fmt: skip
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "run.json").write_text(record.to_json())
        mark_success(folder)
    return len(specs)


def bench_rerun(root: Path) -> None:
    sweep = _sweep(root)
    runs = _fake_finished_runs(sweep, root)
    run_sweep(sweep)  # the first pass fits and reports; every later pass finds all done
    started = time.perf_counter()
    with ray_session():  # run_sweep starts and stops its local Ray too: both are Ray's fixed cost
        pass
    ray_cost = time.perf_counter() - started
    started = time.perf_counter()
    outcome = run_sweep(sweep)
    total = time.perf_counter() - started
    assert len(outcome.records) == runs and outcome.report_path is not None
    print(f"  re-run of a finished {runs}-run sweep: {total:.2f} s in all, Ray start-up and shut-down alone {ray_cost:.2f} s")
    print(f"RATIO re-run beyond Ray start-up = {total - ray_cost:.2f} s  (target <= 5 s)")


@ray.remote
def _one() -> int:
    return 1


def _started_and_stopped(ours: bool) -> float:
    """Seconds to start a local cluster, run one task on it and stop it: ours, or `ray.init`'s own."""
    started = time.perf_counter()
    if ours:
        with ray_session():
            ray.get(_one.remote())
    else:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
        ray.get(_one.remote())
        ray.shutdown()
    return time.perf_counter() - started


def bench_startup(rounds: int = 5) -> None:
    times = {False: [], True: []}
    for _ in range(rounds):
        for ours in (False, True):
            times[ours].append(_started_and_stopped(ours))
    baseline, ours = statistics.median(times[False]), statistics.median(times[True])
    print(f"  {rounds} rounds, medians: ray.init's own local cluster {baseline:.2f} s, ours (watchdog + ray start) {ours:.2f} s")
    print(f"RATIO local cluster start + one task + stop, ours / ray.init = {ours / baseline:.2f}  (target <= 1.25)")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="dcsl-bench-pipeline-") as folder:
        print("== orchestration overhead ==")
        with ray_session():
            bench_overhead(Path(folder) / "overhead")
        print("== re-running a finished sweep ==")
        bench_rerun(Path(folder) / "rerun")
    print("== the local cluster's start-up ==")
    bench_startup()


if __name__ == "__main__":
    main()
