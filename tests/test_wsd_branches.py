"""WSD trunks and branches on CPU: a branch started from its trunk's checkpoint is the independent run of its D.

One CPU thread (as tests/test_train_run.py), so a run and its branch do the same float operations
in the same order; the branch must match the independent run to 1e-6 in validation loss, step by
step in training loss, and in its loss curve.
"""

import json
import os
import shutil
import tempfile

os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="dcsl-hf-"))
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import stages.train  # noqa: E402
from stages.artifacts import SUCCESS  # noqa: E402
from stages.checkpoint import checkpoints  # noqa: E402
from stages.data import TokenData  # noqa: E402
from stages.launch import train  # noqa: E402
from stages.lineage import write_branch, write_trunk  # noqa: E402
from stages.metrics import VAL_CURVE, curve_steps, read_metrics  # noqa: E402
from stages.record import RECORD, read_record  # noqa: E402
from stages.run_config import RunConfig  # noqa: E402
from stages.tokenize import TokenizeConfig, tokenize  # noqa: E402

DATA = {
    "corpus": {"source": "stdlib", "max_documents": 40},
    "tokenizer": {"vocab_size": 320, "training_characters": "100K"},
    "validation_tokens": "4K",
    "seed": 1,
}
# 1 x 32 model, batches of 8 sequences of 32 tokens; D = 20 or 40 steps over U = 6K (about 0.9 and 1.7 epochs).
RUN = {
    "model": {"layers": 1, "width": 32, "heads": 1},
    "seq_len": 32,
    "unique_tokens": "6K",
    "batch_tokens": 256,
    "optimizer": {"lr": 1e-2, "schedule": "wsd", "warmup_tokens": 1024, "cooldown": 0.2, "cooldown_shape": "1-sqrt"},
    "device": "cpu",
    "eval_tokens": 2048,
    "curve_evals": 3,
    "wandb": {"mode": "disabled"},
}
STEPS = (20, 40)


pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> TokenData:
    """The corpus, tokenized into a fresh store: the `store` of this module's runs."""
    return TokenData(tokenize(TokenizeConfig.model_validate(DATA), tmp_path_factory.mktemp("store")))


@pytest.fixture(scope="module")
def store(data) -> Path:
    return data.path.parents[1]


def _config(steps: int, name: str, **changes) -> RunConfig:
    return RunConfig.model_validate({**RUN, "name": name, "tokens": steps * 256, **changes})


@pytest.fixture(scope="module")
def trunk(data, store) -> Path:
    """The shared trunk: constant rate to step 32 (the 40-step run's cooldown start), a checkpoint kept at 16 and 32."""
    configs = [_config(steps, f"branch{steps}") for steps in STEPS]
    stops = [config.cooldown_start_step for config in configs]
    assert stops == [16, 32]
    evals = sorted({s for config in configs for s in curve_steps(config.steps, 3) if s <= config.cooldown_start_step})
    run_dir = store / "trunk" / "trunk-0"
    run_dir.mkdir(parents=True)
    write_trunk(run_dir, stops, evals)
    return train(_trunk_config(), data.path, store, run_dir=run_dir)


def _trunk_config() -> RunConfig:
    return _config(32, "trunk", optimizer={**RUN["optimizer"], "cooldown": 0.0}, keep_checkpoints=1, checkpoint_every=5)


@pytest.mark.parametrize("steps", STEPS)
def test_a_branch_equals_the_independent_wsd_run_of_its_d(data, store, trunk, steps):
    independent = train(_config(steps, f"independent{steps}"), data.path, store)
    branch_config = _config(steps, f"independent{steps}")  # the same config: only its start differs
    run_dir = store / "train" / f"branch-{steps}"
    run_dir.mkdir(parents=True)
    write_branch(run_dir, "trunk/trunk-0", trunk, branch_config.cooldown_start_step, f"{steps:016x}")
    branch = train(branch_config, data.path, store, run_dir=run_dir)

    record, reference = read_record(branch), read_record(independent)
    assert abs(record.val_loss - reference.val_loss) < 1e-6
    assert record.trunk == "trunk/trunk-0" and reference.trunk is None and record.run_hash == f"{steps:016x}"
    # the record is an independent run's: its whole D, steps and FLOPs, no resume
    assert (record.tokens, record.steps, record.flops, record.resumed_at) == (reference.tokens, steps, reference.flops, [])
    # its training curve: the trunk's up to the cooldown start, then its own, step for step the independent run's
    losses = np.array([m["loss"] for m in read_metrics(branch)])
    assert [m["step"] for m in read_metrics(branch)] == list(range(1, steps + 1))
    assert np.abs(losses - np.array([m["loss"] for m in read_metrics(independent)])).max() < 1e-6
    assert [m["lr"] for m in read_metrics(branch)] == [m["lr"] for m in read_metrics(independent)]
    # and its validation curve
    curve, expected = read_metrics(branch, VAL_CURVE), read_metrics(independent, VAL_CURVE)
    assert [point["step"] for point in curve] == [point["step"] for point in expected] == curve_steps(steps, 3)
    assert np.abs(np.array([p["val_loss"] for p in curve]) - np.array([p["val_loss"] for p in expected])).max() < 1e-6


def test_the_trunk_keeps_its_stops_checkpoints_at_constant_rate(trunk):
    # keep_checkpoints 1 with a checkpoint every 5 steps: only the newest two and the stops survive
    assert [p.name for p in checkpoints(trunk)] == ["step-00000016", "step-00000030", "step-00000032"]
    rates = {m["lr"] for m in read_metrics(trunk) if m["tokens"] >= 1024}
    assert rates == {1e-2}
    plan = json.loads((trunk / "trunk.json").read_text())
    assert plan == {"stops": [16, 32], "evals": [5, 10, 15, 20, 30]}
    assert [point["step"] for point in read_metrics(trunk, VAL_CURVE)] == [5, 10, 15, 20, 30]


def test_a_branch_whose_starting_checkpoint_is_gone_fails_naming_it(data, store, trunk, tmp_path):
    run_dir = tmp_path / "train" / "orphan"
    run_dir.mkdir(parents=True)
    write_branch(run_dir, "trunk/gone-0", tmp_path / "gone", 16, "0" * 16)
    with pytest.raises(RuntimeError, match=r"starting checkpoint .*gone/checkpoints/step-00000016 is not whole \(missing\)"):
        train(_config(20, "orphan"), data.path, tmp_path, run_dir=run_dir)


def test_a_killed_trunk_resumes_to_the_same_trunk(data, store, trunk, tmp_path):
    """The trunk as a kill after step 30 leaves it (no final checkpoint, record or SUCCESS) resumes to the same numbers."""
    run_dir = tmp_path / "trunk" / "trunk-0"
    shutil.copytree(trunk, run_dir)
    for finished in (SUCCESS, RECORD):
        (run_dir / finished).unlink()
    shutil.rmtree(run_dir / "checkpoints" / "step-00000032")
    train(_trunk_config(), data.path, tmp_path, run_dir=run_dir)
    record, reference = read_record(run_dir), read_record(trunk)
    assert record.resumed_at == [30] and abs(record.val_loss - reference.val_loss) < 1e-6
    assert [p.name for p in checkpoints(run_dir)] == ["step-00000016", "step-00000030", "step-00000032"]
    resumed, original = (torch.load(p / "checkpoints" / "step-00000032" / "engine.pt")["model"] for p in (run_dir, trunk))
    assert all(torch.allclose(resumed[key], original[key], atol=1e-6) for key in original)


def test_a_branch_of_a_two_rank_trunk_equals_the_two_rank_independent_run(data, tmp_path):
    """DDP on two CPU ranks (gloo): the trunk keeps every rank's state at its stop, and the branch goes on from it."""
    two = {"processes": 2}
    trunk_dir = tmp_path / "trunk" / "trunk-2"
    trunk_dir.mkdir(parents=True)
    write_trunk(trunk_dir, [16], [5, 10, 15])
    trunk_config = _config(16, "trunk2", optimizer={**RUN["optimizer"], "cooldown": 0.0}, **two)
    trunk = train(trunk_config, data.path, tmp_path, run_dir=trunk_dir)
    assert read_record(trunk).world_size == 2 and [p.name for p in checkpoints(trunk)] == ["step-00000016"]
    run_dir = tmp_path / "train" / "branch-2"
    run_dir.mkdir(parents=True)
    write_branch(run_dir, "trunk/trunk-2", trunk, 16, "2" * 16)
    branch = train(_config(20, "two-ranks", **two), data.path, tmp_path, run_dir=run_dir)
    independent = train(_config(20, "two-ranks", **two), data.path, tmp_path)
    record, reference = read_record(branch), read_record(independent)
    assert record.world_size == reference.world_size == 2 and record.trunk == "trunk/trunk-2"
    assert abs(record.val_loss - reference.val_loss) < 1e-6
    losses = [np.array([m["loss"] for m in read_metrics(run)]) for run in (branch, independent)]
    assert len(losses[0]) == 20 and np.abs(losses[0] - losses[1]).max() < 1e-6


class _RecordingMirror:
    """Stands in for `stages.metrics.WandbMirror`: keeps what the run logs."""

    logged: list[dict] = []

    def __init__(self, *args):
        self.directory = None

    def log(self, record: dict) -> None:
        self.logged.append(record)

    def finish(self, summary: dict) -> None:
        self.logged.append({"summary": summary})


def test_the_loss_curve_is_mirrored_to_wandb(data, tmp_path, monkeypatch):
    monkeypatch.setattr(stages.train, "WandbMirror", _RecordingMirror)
    run_dir = train(_config(20, "mirrored", wandb={"mode": "offline"}, log_every=5), data.path, tmp_path)
    points = [record for record in _RecordingMirror.logged if "val_loss" in record]
    assert points == read_metrics(run_dir, VAL_CURVE) and [p["step"] for p in points] == [5, 10, 15]
    losses = [(record["step"], record["loss"]) for record in _RecordingMirror.logged if "loss" in record]
    assert losses == [(m["step"], m["loss"]) for m in read_metrics(run_dir)] and [s for s, _ in losses] == [5, 10, 15, 20]
    assert _RecordingMirror.logged[-1]["summary"]["val_loss"] == read_record(run_dir).val_loss
