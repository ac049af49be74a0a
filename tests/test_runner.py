"""The generic runner walks any declared graph: a toy step kind, defined here, runs through it with
leases, Ray retries, FAILED / DEP_FAILED and `explain`, without any change to the runner."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from ray import cloudpickle  # noqa: E402

from pipeline.graph import Node, Outcome  # noqa: E402
from pipeline.ray_session import ray_session  # noqa: E402
from pipeline.runner import RETRIES, Runner, explain  # noqa: E402
from pipeline.store import INTERRUPTED, State, Step, Store  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers get the toy kind by value


@dataclass(frozen=True)
class Add:
    """A node's spec: add `value` to the sum of its finished inputs; `crash`es its worker, `raise`s or blocks on demand."""

    name: str
    value: int
    crash: str = ""  # "" | "once" (the first attempt kills its worker) | "always"
    error: bool = False
    interrupted: str = ""  # "" | "slow" (blocks until Ctrl-C, then cleans up for a while) | "exit" (blocks, then its process ends)


@dataclass(frozen=True)
class AddKind:
    """The toy kind: each step writes the sum of its value and its finished inputs' values to `sum.json`."""

    stage: str = "add"
    counted: bool = True

    def key(self, spec: Add, inputs: Sequence[Outcome]) -> Step:
        return Step(self.stage, spec.name, {"value": spec.value}, [o.step for o in inputs if o.step is not None])

    def resources(self, spec: Add) -> dict[str, float]:
        return {"num_cpus": 1}

    def run(self, spec: Add, step: Step, out_dir: Path, inputs: Sequence[Outcome]) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / "attempts.log", "a") as log:
            log.write(f"{os.getpid()}\n")
        attempts = len((out_dir / "attempts.log").read_text().splitlines())
        if spec.crash == "always" or (spec.crash == "once" and attempts == 1):
            os._exit(1)  # what the OOM killer does to a worker: no exception, no cleanup
        if spec.error:
            raise ValueError(f"step {step.name} refuses")
        if spec.interrupted:
            _block_until_interrupted(out_dir, spec.interrupted)
        total = spec.value + sum(o.value for o in inputs if o.done)
        (out_dir / "sum.json").write_text(json.dumps(total))

    def result(self, spec: Add, out_dir: Path) -> int:
        return json.loads((out_dir / "sum.json").read_text())


def _block_until_interrupted(out_dir: Path, then: str) -> None:
    """Say `started` and wait for Ctrl-C (the sweep asks its steps to stop); then clean up slowly and stop, or end at once."""
    (out_dir / "started").write_text("")
    try:
        while True:
            time.sleep(0.05)
    except KeyboardInterrupt:
        if then == "exit":
            os._exit(1)  # gone without a word: its lease is left held
        time.sleep(2.0)  # a slow clean-up that the runner must wait for
        raise


def _interrupt_when(ready: Callable[[], bool]) -> None:
    """Send this process SIGINT (Ctrl-C) once `ready()`."""
    while not ready():
        time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture(scope="module")
def cluster():
    with ray_session():
        yield


def _graph(b: Add = Add("b", 2), c: Add = Add("c", 3)) -> tuple[list[Node], dict[str, Node]]:
    kind = AddKind()
    a = Node(kind, "a", Add("a", 1))
    nb = Node(kind, "b", b, needs=(a,))
    nc = Node(kind, "c", c, needs=(a,))
    d = Node(kind, "d", Add("d", 10), uses=(nb, nc))
    return [d], {"a": a, "b": nb, "c": nc, "d": d}


def _attempts(store: Store, outcome: Outcome) -> int:
    return store.record(outcome.step)["attempt"]


def test_a_toy_kind_runs_through_the_runner_and_a_rerun_runs_nothing(cluster, tmp_path):
    roots, nodes = _graph()
    seen: list[dict] = []
    outcomes = Runner(tmp_path, progress=seen.append).run(roots)
    values = {name: outcomes[id(node)].value for name, node in nodes.items()}
    assert values == {"a": 1, "b": 3, "c": 4, "d": 17}
    store = Store(tmp_path)
    assert all(store.state(outcomes[id(n)].step) is State.DONE for n in nodes.values())
    assert all(_attempts(store, outcomes[id(n)]) == 1 for n in nodes.values())
    leases = store.records_dir(outcomes[id(nodes["d"])].step) / "leases"
    assert sorted(os.listdir(leases)) == ["lease.0", "released.0"]  # claimed under a lease, released
    last = seen[-1]
    assert (last["done"], last["failed"], last["running"], last["pending"], last["total"]) == (4, 0, 0, 0, 4)
    again = Runner(tmp_path).run(_graph()[0])  # a new graph object of the same steps: all read from the store
    assert sorted(o.value for o in again.values()) == [1, 3, 4, 17]
    assert all(_attempts(store, o) == 1 for o in again.values())


def test_explain_names_the_changed_field_of_a_toy_step(cluster, tmp_path):
    Runner(tmp_path).run(_graph()[0])
    roots, nodes = _graph(b=Add("b", 5))
    decisions = {node.name: decision for node, decision in explain(roots, Store(tmp_path))}
    assert decisions["a"].run is False and decisions["c"].run is False
    assert decisions["b"].run is True and decisions["b"].changed == {"value": (2, 5)}
    assert "config changed: value 2 -> 5" in decisions["b"].reason
    assert decisions["d"].run is True and "input changed: add/b-" in decisions["d"].reason


def test_a_worker_that_dies_once_is_retried_and_one_that_keeps_dying_is_failed(cluster, tmp_path):
    roots, nodes = _graph(b=Add("b", 2, crash="once"), c=Add("c", 3, crash="always"))
    outcomes = Runner(tmp_path).run(roots)
    b, c, d = (outcomes[id(nodes[name])] for name in "bcd")
    assert b.state is State.DONE and b.value == 3
    assert len((Store(tmp_path).step_dir(b.step) / "attempts.log").read_text().splitlines()) == 2
    assert c.state is State.FAILED and f"worker died {RETRIES + 1} times" in c.reason
    assert len((Store(tmp_path).step_dir(c.step) / "attempts.log").read_text().splitlines()) == RETRIES + 1
    assert Store(tmp_path).state(c.step) is State.FAILED
    assert "out of memory?" in Store(tmp_path).failure(c.step)["message"]
    assert d.state is State.DONE and d.value == 10 + 3  # `uses`: runs over the inputs that finished


def test_an_error_fails_its_step_and_dependants_are_dep_failed_naming_it(cluster, tmp_path):
    kind = AddKind()
    a = Node(kind, "a", Add("a", 1, error=True))
    b = Node(kind, "b", Add("b", 2), needs=(a,))
    outcomes = Runner(tmp_path).run([b])
    store = Store(tmp_path)
    assert outcomes[id(a)].state is State.FAILED and outcomes[id(a)].reason == "ValueError: step a refuses"
    assert "Traceback" in store.failure(outcomes[id(a)].step)["traceback"]
    assert outcomes[id(b)].state is State.DEP_FAILED and store.state(outcomes[id(b)].step) is State.DEP_FAILED
    assert store.explain(outcomes[id(b)].step).reason == f"input failed before: {outcomes[id(a)].step.id}"


def test_ctrl_c_waits_for_the_stopped_steps_and_marks_those_whose_process_is_gone(cluster, tmp_path):
    kind, store = AddKind(), Store(tmp_path)
    nodes = [Node(kind, then, Add(then, 1, interrupted=then)) for then in ("slow", "exit")]
    steps = [kind.key(node.spec, []) for node in nodes]
    started = lambda: all((store.step_dir(step) / "started").exists() for step in steps)  # noqa: E731
    threading.Thread(target=_interrupt_when, args=(started,), daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        Runner(tmp_path).run(nodes)
    for step in steps:  # "slow" marked itself once its clean-up ended, "exit" was marked by the runner
        assert (store.records_dir(step) / INTERRUPTED).exists(), step.name
        assert store.state(step) is State.INTERRUPTED and store.holder(step) is None
