"""The runner's progress on a resumed graph, and a graph whose store can't take a step's records: the toy
kind of `tests/test_runner.py` runs through the real runner on real Ray workers."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from test_runner import Add, AddKind, cluster  # noqa: F401 (`cluster`: the module's Ray, a fixture)

from pipeline.cli.sweep_commands import progress_text
from pipeline.graph import Node, Outcome
from pipeline.lease import acquire
from pipeline.runner import Runner
from pipeline.store import LEASES, State, Step, Store

pytestmark = pytest.mark.usefixtures("cluster")
KIND = AddKind()


def _graph() -> dict[str, Node]:
    """a -> b, a -> c, d uses b and c; e needs b."""
    a = Node(KIND, "a", Add("a", 1))
    b, c = Node(KIND, "b", Add("b", 2), needs=(a,)), Node(KIND, "c", Add("c", 3), needs=(a,))
    d, e = Node(KIND, "d", Add("d", 10), uses=(b, c)), Node(KIND, "e", Add("e", 5), needs=(b,))
    return {"a": a, "b": b, "c": c, "d": d, "e": e}


def _steps(nodes: dict[str, Node]) -> dict[str, Step]:
    """Every node's step, keyed as if its inputs all finished (what the runner keys them as when they do)."""
    steps: dict[str, Step] = {}
    for name, node in nodes.items():
        inputs = [Outcome(source.name, KIND.stage, State.DONE, steps[source.name]) for source in node.inputs]
        steps[name] = KIND.key(node.spec, inputs)
    return steps


def test_progress_of_a_resumed_graph_counts_what_was_done_and_never_goes_negative(tmp_path):
    Runner(tmp_path).run([_graph()["b"]])  # a and b finish; then the sweep is "killed" and resumed
    nodes, store = _graph(), Store(tmp_path)
    other = acquire(store.records_dir(_steps(nodes)["c"]) / LEASES, "add/c", socket.gethostname(), 60.0)  # c runs elsewhere
    seen: list[dict] = []
    held: list[dict] = []

    def progress(counts: dict) -> None:
        seen.append(counts)
        if counts.get("running") == 1 and not held:
            held.append(counts)
            other.release()  # the other process lets go: this runner takes c over and finishes the graph

    outcomes = Runner(tmp_path, progress=progress).run([nodes["d"]])
    assert outcomes[id(nodes["d"])].value == 17
    assert [store.record(outcomes[id(nodes[name])].step)["attempt"] for name in "abcd"] == [1, 1, 1, 1]  # a, b not rerun
    # while c was held elsewhere: a and b found done (they say nothing about the pace: no ETA), d waiting
    assert held == [{"done": 2, "failed": 0, "running": 1, "pending": 1, "total": 4, "eta_seconds": None}]
    counts = [report for report in seen if "total" in report]
    for report in counts:
        assert min(report["done"], report["failed"], report["running"], report["pending"]) >= 0, report
        assert report["done"] + report["failed"] + report["running"] + report["pending"] == report["total"] == 4
        assert report["eta_seconds"] is None or report["eta_seconds"] > 0, report
        assert "-" not in "".join(progress_text(report)), report  # `dcsl sweep` shows no "-1 pending", no "ETA -0.0"
    assert (counts[-1]["done"], counts[-1]["pending"], counts[-1]["eta_seconds"]) == (4, 0, None)


def _block(path: Path) -> None:
    """Put a regular file where a directory goes: creating anything under it fails (ENOTDIR), and so does mkdir."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not a directory\n")


@pytest.mark.timeout(300)  # before: the blocked step's task waited forever for a claim nobody held
def test_a_step_whose_records_cannot_be_written_fails_with_the_os_error_and_the_graph_ends(tmp_path):
    nodes = _graph()
    nodes["f"] = Node(KIND, "f", Add("f", 7), needs=(nodes["a"],))
    steps, store = _steps(nodes), Store(tmp_path)
    for name in ("b", "e"):  # neither the task nor the driver can write their records
        _block(store.records_dir(steps[name]))
    _block(store.records_dir(steps["f"]) / LEASES)  # f's records can be written, but not its leases
    ran = Runner(tmp_path).run([nodes["d"], nodes["e"], nodes["f"]])
    outcomes = {name: ran[id(node)] for name, node in nodes.items()}
    b, e, f = outcomes["b"], outcomes["e"], outcomes["f"]
    assert b.state is State.FAILED and b.reason.startswith("NotADirectoryError: [Errno 20] Not a directory: ")
    assert b.reason.endswith(")") and " (not recorded in the store: [Errno 17] File exists: " in b.reason
    assert e.state is State.DEP_FAILED and e.reason.startswith("input add/b: add is failed (not recorded in the store: ")
    assert f.state is State.FAILED and f.reason.startswith("FileExistsError: [Errno 17] File exists: ")
    assert "not recorded" not in f.reason and store.failure(steps["f"])["message"] == f.reason  # the driver recorded it
    assert store.state(steps["f"]) is State.FAILED
    assert (outcomes["c"].value, outcomes["d"].value) == (4, 10 + 4)  # the rest finished: d over the inputs that did
