"""The sweep as a Ray task graph: tokenize once, train + evaluate every run, fit, report.

Every step runs inside `Store.run`, so it happens at most once across every `dcsl sweep` process
sharing the store: a finished step (its `SUCCESS`) is skipped, a step held by a live lease is
waited for, a stale lease is taken over and training resumes from the run's latest checkpoint.

Graph: `tokenize` -> (ObjectRef) -> one `train` task per run (evaluation runs inside it, on the
final weights still in memory) -> `fit` over the runs that succeeded -> `report`. A run with one
rank is a plain task asking for the run's CPUs and GPUs; a run with several ranks (GPUs, nodes or
processes > 1) is trained by Ray Train's `TorchTrainer`, one worker per rank, from a task that
holds no resources itself. Ray retries a task whose worker or node died (`RETRIES` times); an
exception inside a run is recorded as FAILED and the sweep goes on.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import ray

from pipeline.cluster import check_fits_cluster, node_capacities
from pipeline.config import RunSpec, SweepConfig, expand
from pipeline.store import State, Step, Store
from scaling.errors import InputError
from stages.artifacts import atomic_directory, config_hash
from stages.data import TokenData
from stages.fit import RUNS, fit_runs
from stages.launch import finish, prepare, read_record, train
from stages.report import write_report
from stages.tokenize import TokenizeConfig, tokenize, tokenize_key
from stages.train import run_digest, train_loop

RETRIES = 2
INJECT_ENV = "DCSL_INJECT_FAILURE"  # comma-separated run names that raise instead of training (tests, drills)

Progress = Callable[[dict], None]
"""progress(counts): counts has done, failed, running, pending, total and eta_seconds (or None); the first
report, once every check has passed, is {"status": "tokenizing"}."""


@dataclass
class SweepSteps:
    """The steps of a sweep, with the hashes that name their directories in the store."""

    tokenize: Step
    runs: dict[str, tuple[RunSpec, Step]]
    data_hash: str


@dataclass
class SweepOutcome:
    """What a sweep produced: run states, the records of the runs that succeeded, the failures, the law."""

    states: dict[str, State]
    records: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    law_path: Path | None = None
    report_path: Path | None = None
    fit_state: State | None = None


def tokenize_step(data: TokenizeConfig) -> tuple[Step, str]:
    """The tokenize step of a sweep and the hash of its artifact."""
    digest = config_hash(tokenize_key(data))
    return Step("tokenize", data.name, data.model_dump(mode="json", exclude={"num_proc"}), digest=digest), digest


def train_step(spec: RunSpec, data_step: Step, data_hash: str) -> Step:
    """The train step of one run (its directory is the run directory `stages.launch` uses)."""
    return Step("train", spec.name, spec.config.hashed(), [data_step], digest=run_digest(spec.config, data_hash))


def sweep_steps(sweep: SweepConfig, corpus_train_tokens: int | None = None, skip_invalid: bool = False,
                skipped: list[str] | None = None) -> SweepSteps:
    """Expand the sweep into its steps (no work done)."""
    data_step, data_hash = tokenize_step(sweep.data)
    specs = expand(sweep, corpus_train_tokens, skip_invalid=skip_invalid, skipped=skipped)
    runs = {spec.name: (spec, train_step(spec, data_step, data_hash)) for spec in specs}
    return SweepSteps(data_step, runs, data_hash)


def fit_step(sweep: SweepConfig, run_steps: list[Step]) -> Step:
    """The fit over the runs that succeeded (its inputs), named after the sweep."""
    return Step("fit", sweep.name, sweep.fit.model_dump(mode="json"), sorted(run_steps, key=lambda s: s.id))


def report_step(sweep: SweepConfig, fit: Step) -> Step:
    """The report of a fit."""
    return Step("report", sweep.name, {"format": 2}, [fit])


# --- tasks (each runs its stage under the store's lease) -------------------------------------------


@ray.remote(max_retries=RETRIES)
def _tokenize_task(root: str, step: Step, data: TokenizeConfig) -> tuple[State, str]:
    store = Store(root)
    state = store.run(step, lambda: tokenize(data, Path(root)))
    return state, str(store.step_dir(step))


@ray.remote(max_retries=RETRIES)
def _train_task(root: str, step: Step, spec: RunSpec, data: tuple[State, str], data_step: Step, inject: bool) -> dict:
    store = Store(root)
    data_state, data_path = data
    if data_state is not State.DONE:
        store.mark_dep_failed(step, data_step, f"tokenize is {data_state.value}")
        return {"name": spec.name, "state": State.DEP_FAILED}

    def work() -> None:
        if inject:
            raise RuntimeError(f"injected failure ({INJECT_ENV})")
        if spec.world_size > 1:
            _train_with_ray_train(spec, Path(data_path), Path(root))
        else:
            train(spec.config, Path(data_path), Path(root))

    state = store.run(step, work)
    record = read_record(store.step_dir(step)) if state is State.DONE else None
    return {"name": spec.name, "state": state, "record": record}


def _train_with_ray_train(spec: RunSpec, data_path: Path, root: Path) -> None:
    """Train a multi-rank run with Ray Train's TorchTrainer: one worker per rank, the same loop."""
    from ray.train import RunConfig as TrainRunConfig
    from ray.train import ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    run_dir = prepare(spec.config, data_path, root, world=spec.world_size)
    resources = spec.resources
    use_gpu = resources.gpus > 0
    per_worker = {"CPU": max(1, resources.cpus // max(1, spec.world_size // resources.nodes))}
    if use_gpu:
        per_worker["GPU"] = 1
    config, data, directory = spec.config, str(data_path), str(run_dir)

    def loop_per_worker() -> None:
        train_loop(config, Path(data), Path(directory))

    trainer = TorchTrainer(
        loop_per_worker,
        scaling_config=ScalingConfig(num_workers=spec.world_size, use_gpu=use_gpu, resources_per_worker=per_worker),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=TrainRunConfig(name=f"{spec.name}-ray-train", storage_path=str(run_dir / "ray_train")),
    )
    trainer.fit()
    finish(run_dir)


@ray.remote(max_retries=RETRIES)
def step_task(root: str, step: Step, work: Callable[[], object]) -> State:
    """Run `work` as `step` under the store's lease (skipped when done); its state afterwards."""
    return Store(root).run(step, work)


def _fit_work(store: Store, step: Step, sweep: SweepConfig, records: list[dict]) -> Callable[[], None]:
    def work() -> None:
        with atomic_directory(store.step_dir(step)) as folder:
            fit_runs(records, sweep.fit.spec(), folder, params_kind=sweep.fit.params,
                     resamples=sweep.fit.bootstrap, seed=sweep.fit.seed)

    return work


def _report_work(store: Store, step: Step, law_path: Path, records: list[dict], failed: list[dict]) -> Callable[[], None]:
    def work() -> None:
        with atomic_directory(store.step_dir(step)) as folder:
            for name in (law_path.name, RUNS):  # the report folder stands alone: the law and its run table
                shutil.copyfile(law_path.parent / name, folder / name)
            write_report(folder / law_path.name, records, failed, folder)

    return work


# --- the driver ---------------------------------------------------------------------------------


def start_ray(address: str | None, wait_nodes: int = 0, timeout: float = 300.0) -> bool:
    """Join the cluster at `address`, or start a local one sized to this machine; True if started here.

    With `wait_nodes`, first wait (up to `timeout` seconds) for the head to listen and for that many
    nodes to join: a job script starts the head and the workers just before the driver.
    """
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    handler = signal.getsignal(signal.SIGTERM)
    deadline = time.monotonic() + timeout  # one budget for the head to listen and the nodes to join
    if address is None:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    else:
        if wait_nodes:
            _wait_for_port(address, deadline)
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    if callable(handler):  # ray.init puts its own SIGTERM handler (log, then abort) over the caller's: restore it
        signal.signal(signal.SIGTERM, handler)
    while sum(node["Alive"] for node in ray.nodes()) < wait_nodes:
        if time.monotonic() > deadline:
            alive = sum(node["Alive"] for node in ray.nodes())
            ray.shutdown()
            raise InputError(f"--wait-nodes: {wait_nodes} nodes did not join {address} within {timeout:.0f} s; {alive} did")
        time.sleep(1.0)
    return True


def _wait_for_port(address: str, deadline: float) -> None:
    """Wait until something listens at HOST:PORT (connecting to a head that is not up yet hangs for minutes)."""
    host, _, port = address.rpartition(":")
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=1.0).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise InputError(f"--address: nothing listens at {address}; is the Ray head up?") from None
            time.sleep(0.5)


def _options(spec: RunSpec) -> dict:
    if spec.world_size > 1:
        return {"num_cpus": 0}  # TorchTrainer reserves its workers' resources
    return {"num_cpus": spec.resources.cpus, "num_gpus": spec.resources.gpus}


def run_sweep(sweep: SweepConfig, *, address: str | None = None, progress: Progress | None = None,
              skip_invalid: bool = False, wait_nodes: int = 0) -> SweepOutcome:
    """Run (or resume) the whole sweep and return its outcome; Ctrl-C cancels the running tasks cleanly."""
    root = str(Path(sweep.store).resolve())
    planned = expand(sweep, skip_invalid=skip_invalid)  # every check that needs no corpus, before any work
    started_here = start_ray(address, wait_nodes)
    pending: list = []
    try:
        check_fits_cluster(planned, node_capacities(ray.nodes()), sweep.resources_field)
        if progress:
            progress({"status": "tokenizing"})
        store = Store(root)
        data_step, _ = tokenize_step(sweep.data)
        if store.is_done(data_step):  # finished steps are read from the store, not sent to Ray
            data_ref = ray.put((State.DONE, str(store.step_dir(data_step))))
        else:
            cpus = min(sweep.data.num_proc, os.cpu_count() or 1)
            data_ref = _tokenize_task.options(num_cpus=cpus).remote(root, data_step, sweep.data)
        pending = [data_ref]
        data_state, data_path = ray.get(data_ref)
        corpus_tokens = TokenData(Path(data_path)).train_tokens if data_state is State.DONE else None
        steps = sweep_steps(sweep, corpus_tokens, skip_invalid=skip_invalid)
        inject = set(filter(None, os.environ.get(INJECT_ENV, "").split(",")))
        outcome = SweepOutcome(states={})
        refs = {}
        for spec, step in steps.runs.values():
            if store.is_done(step):
                outcome.states[spec.name] = State.DONE
                outcome.records.append(read_record(store.step_dir(step)))
            else:
                options = _options(spec)
                refs[_train_task.options(**options).remote(root, step, spec, data_ref, data_step, spec.name in inject)] = spec.name
        pending = list(refs)
        _collect(refs, pending, outcome, progress, lambda names: sum(store.state(steps.runs[n][1]) is State.RUNNING for n in names))
        outcome.failed = [
            {"name": name, "state": state.value, "reason": _reason(store, steps.runs[name][1])}
            for name, state in sorted(outcome.states.items()) if state is not State.DONE
        ]  # fmt: skip
        if not outcome.records:
            return outcome
        outcome.records.sort(key=lambda record: record["name"])
        fit = fit_step(sweep, [steps.runs[r["name"]][1] for r in outcome.records])
        report = report_step(sweep, fit)
        outcome.fit_state = _run_step(store, fit, _fit_work(store, fit, sweep, outcome.records))
        if outcome.fit_state is State.DONE:
            outcome.law_path = store.step_dir(fit) / "law.json"
            if _run_step(store, report, _report_work(store, report, outcome.law_path, outcome.records, outcome.failed)) is State.DONE:
                outcome.report_path = store.step_dir(report) / "report.md"
        return outcome
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref)
        raise
    finally:
        if started_here:
            ray.shutdown()


def _run_step(store: Store, step: Step, work: Callable[[], object]) -> State:
    """DONE at once for a finished step; else run it as a task and wait for its state."""
    return State.DONE if store.is_done(step) else ray.get(step_task.remote(str(store.root), step, work))


def _collect(refs: dict, pending: list, outcome: SweepOutcome, progress: Progress | None,
             count_running: Callable[[list[str]], int]) -> None:
    """Wait for every train task, keeping `pending` current (for Ctrl-C) and reporting progress."""
    total, started = len(refs), time.perf_counter()
    while pending:
        ready, remaining = ray.wait(pending, num_returns=len(pending), timeout=1.0)
        pending[:] = remaining
        for ref in ready:
            result = ray.get(ref)
            outcome.states[result["name"]] = result["state"]
            if result.get("record"):
                outcome.records.append(result["record"])
        if progress:
            done = sum(state is State.DONE for state in outcome.states.values())
            finished = len(outcome.states)
            rate = finished / (time.perf_counter() - started) if finished else 0.0
            running = count_running([refs[ref] for ref in pending])
            progress({
                "done": done, "failed": finished - done, "running": running, "pending": total - finished - running, "total": total,
                "eta_seconds": (total - finished) / rate if rate else None,
            })  # fmt: skip


def _reason(store: Store, step: Step) -> str:
    failure = store.failure(step)
    if failure:
        return f"{failure.get('error_type', 'error')}: {failure.get('message', '')}".strip()
    return store.state(step).value.lower()
