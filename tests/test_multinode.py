"""A run across the nodes of a real multi-node Ray cluster on one machine (`ray.cluster_utils.Cluster`: a
head and a second node, one CPU each): `dcsl sweep --address` trains a CPU run of 2 ranks over 2 nodes
through the sweep's train kind and Ray Train, each rank on its own node, to the one-process run's loss.

A CPU run spans nodes like a GPU run (`resources: {cpus: 1, nodes: 2}`, `train.processes: 2`): the
same path, Ray Train's `TorchTrainer` over gloo instead of NCCL, so it is tested here without GPUs."""

import json
import shutil

import pytest

import sweeps
from sweeps import SWEEP


@pytest.fixture
def two_nodes(ray_tmp):
    """A head and a second node, one CPU each, their sessions (and address file) under `ray_tmp`."""
    from ray.cluster_utils import Cluster

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_TMPDIR", str(ray_tmp))  # not the machine's /tmp/ray: another `ray.init()` must not join us
        patch.setenv("RAY_AUTH_MODE", "disabled")
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"head": 1}})
        try:
            cluster.add_node(num_cpus=1, resources={"second": 1})
            cluster.wait_for_nodes()
            yield cluster
        finally:
            cluster.shutdown()


def test_a_two_rank_cpu_run_spans_two_nodes_and_matches_one_process(finished, tmp_path, ray_tmp, two_nodes):
    store = tmp_path / "store"
    shutil.copytree(finished / "tokenize", store / "tokenize", symlinks=True)
    spread = {**SWEEP, "models": SWEEP["models"][:1], "grid": [{"unique_tokens": "20K", "epochs": 1}],
              "train": {**SWEEP["train"], "processes": 2}, "resources": {"cpus": 1, "nodes": 2}}  # fmt: skip
    result = sweeps.run(sweeps.write(tmp_path, store, spread), "--address", two_nodes.address, environment=sweeps.env(ray_tmp))
    assert "1 of 1 runs succeeded" in result.stdout, result.stderr[-3000:]  # (one run is too few to fit a law)
    (run_dir,) = (store / "train").glob("s-U20K-e1-s0-*/")
    ranks = [json.loads(path.read_text()) for path in sorted((run_dir / "ray_train").glob("rank-*.json"))]
    assert [rank["rank"] for rank in ranks] == [0, 1]
    nodes = {node.node_id for node in two_nodes.list_all_nodes()}
    assert len(nodes) == 2 and {rank["node_id"] for rank in ranks} == nodes  # one rank on each node
    record = json.loads((run_dir / "run.json").read_text())
    reference = sweeps.records(finished)[run_dir.name]  # the same run (the same hash), trained by one process
    assert record["world_size"] == 2 and record["val_loss"] == pytest.approx(reference["val_loss"], rel=1e-4)
