"""Before any work: runs whose resources the Ray cluster lacks; `dcsl fit --wandb` reading a W&B project."""

import csv
import json
import os
import tempfile
from types import SimpleNamespace

os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="dcsl-hf-"))

import pytest  # noqa: E402

from pipeline.cli import main  # noqa: E402
from pipeline.cluster import check_fits_cluster, node_capacities  # noqa: E402
from pipeline.config import SweepConfig  # noqa: E402
from pipeline.expand import expand  # noqa: E402
from pipeline.wandb_runs import read_wandb_runs  # noqa: E402
from scaling.errors import InputError  # noqa: E402

from test_sweep_config import sweep_dict  # noqa: E402

LAPTOP = [{"Alive": True, "Resources": {"CPU": 2.0, "memory": 1e10}}]
GPU_NODES = [{"Alive": True, "Resources": {"CPU": 32.0, "GPU": 8.0}} for _ in range(3)] + [
    {"Alive": False, "Resources": {"CPU": 32.0, "GPU": 8.0}}
]


def _check(nodes, **changes):
    sweep = SweepConfig.model_validate(sweep_dict(**changes))
    check_fits_cluster(expand(sweep), node_capacities(nodes), sweep.resources_field)


def test_capacities_count_alive_nodes_only():
    assert node_capacities(LAPTOP) == [{"CPU": 2.0, "GPU": 0.0}]
    assert node_capacities(GPU_NODES) == [{"CPU": 32.0, "GPU": 8.0}] * 3


@pytest.mark.parametrize("nodes, changes, message", [
    (LAPTOP, {"resources": {"cpus": 4}}, "resources.cpus: 4 asked for by run s-U4K-e1-s0, but the Ray cluster lacks it: "
     "its largest node has 2 CPUs"),
    (LAPTOP, {"models.1.resources": {"gpus": 1}}, "models.1.resources.gpus: 1 asked for by run m-U4K-e1-s0, but the Ray "
     "cluster lacks it: its largest node has 0 GPUs"),
    (GPU_NODES, {"resources": {"gpus": 8, "nodes": 4}, "train.batch_tokens": 3072}, "resources.nodes: 4 asked for by run s-U4K-e1-s0, but the Ray cluster "
     "lacks it: only 3 of its 3 nodes have 1 CPUs and 8 GPUs"),
])  # fmt: skip
def test_runs_the_cluster_cannot_hold_are_named(nodes, changes, message):
    with pytest.raises(InputError) as err:
        _check(nodes, **changes)
    assert str(err.value) == message


def test_runs_that_fit_pass():
    _check(LAPTOP, resources={"cpus": 2})
    _check(GPU_NODES, **{"resources": {"gpus": 8, "nodes": 3, "cpus": 32}, "train.batch_tokens": 3072})


# ---- W&B ----------------------------------------------------------------------------------------


class FakeApi:
    """The slice of `wandb.Api` the reader uses: `runs(path, filters=...)`, with runs as W&B returns them."""

    def __init__(self, runs):
        self._runs, self.calls = runs, []

    def runs(self, path, filters=None):
        self.calls.append((path, filters))
        return list(self._runs)


def _run(name, state="finished", summary=None, config=None):
    return SimpleNamespace(name=name, state=state, summary=summary or {}, config=config or {})


RUNS = [
    _run("a", summary={"val_loss": 4.0, "tokens": 1e9}, config={"params_non_embedding": 1e7, "unique_tokens": 1e8}),
    _run("b", summary={"val_loss": 3.5, "tokens": 2e9}, config={"params_non_embedding": 2e7, "unique_tokens": 1e8}),
    _run("crashed", state="crashed", summary={"val_loss": float("nan")}),
]


def test_wandb_runs_become_a_run_table_with_defaults_and_filters():
    api = FakeApi(RUNS)
    table = read_wandb_runs("me/proj", {"config.backend": "torch"}, api=api)
    assert api.calls == [("me/proj", {"config.backend": "torch"})]
    assert list(table.params) == [1e7, 2e7] and list(table.tokens) == [1e9, 2e9]
    assert list(table.unique_tokens) == [1e8, 1e8] and list(table.loss) == [4.0, 3.5]


def test_wandb_keys_reach_into_nested_config():
    runs = [_run(n, summary={"eval/loss": loss}, config={"model": {"n": n_}, "data": {"d": 1e9, "u": 5e8}})
            for n, loss, n_ in (("x", 3.0, 1e6), ("y", 2.5, 4e6))]  # fmt: skip
    keys = {"params": "model.n", "tokens": "data.d", "unique_tokens": "data.u", "loss": "eval/loss"}
    table = read_wandb_runs("me/proj", keys=keys, api=FakeApi(runs))
    assert list(table.params) == [1e6, 4e6] and list(table.loss) == [3.0, 2.5]


@pytest.mark.parametrize("project, runs, message", [
    ("proj", RUNS, "--wandb: 'proj' must look like ENTITY/PROJECT"),
    ("me/proj", RUNS[2:], "--wandb: 'me/proj' has no finished runs"),
    ("me/proj", [_run("c", summary={"val_loss": 1.0})], "--wandb: run 'c' has no numeric 'params_non_embedding' in its summary "
     "or config (for params); name the key with --wandb-key params=KEY"),
])  # fmt: skip
def test_wandb_problems_are_one_line(project, runs, message):
    with pytest.raises(InputError) as err:
        read_wandb_runs(project, api=FakeApi(runs))
    assert str(err.value) == message


def test_dcsl_fit_reads_a_wandb_project(monkeypatch, tmp_path, capsys):
    import wandb

    from conftest import REPO

    csv_file = REPO / "examples" / "datablations_c4.csv"
    runs = [_run(row["run"], summary={"val_loss": float(row["val_loss"])},
                 config={"params_non_embedding": float(row["params"]), "tokens": float(row["tokens"]),
                         "unique_tokens": float(row["unique_tokens"])})
            for row in csv.DictReader(csv_file.open())]  # fmt: skip
    monkeypatch.setattr(wandb, "Api", lambda: FakeApi(runs))
    out = tmp_path / "law.json"
    code = main(["fit", "--wandb", "me/proj", "--filters", '{"state": "finished"}', "--base-preset", "c4", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    law = json.loads(out.read_text())
    assert law["n_runs"] == len(runs)
    assert main(["fit", str(csv_file), "--base-preset", "c4", "--out", str(tmp_path / "csv_law.json")]) == 0
    assert law["params"] == json.loads((tmp_path / "csv_law.json").read_text())["params"]  # the same table, the same law
    assert main(["fit", "--wandb", "me/proj", "--filters", "[1]"]) == 2
    assert "--filters: '[1]' must be a JSON object" in capsys.readouterr().err
