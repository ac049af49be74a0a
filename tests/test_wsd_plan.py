"""WSD trunks in a sweep's plan: which runs share a trunk, where each branch starts, and the compute saved."""

import copy

import pytest
import yaml

import pipeline.cli.plan_commands  # noqa: F401  (registers the command)
from pipeline.cli import main
from pipeline.config import SweepConfig
from pipeline.expand import expand
from pipeline.trunks import plan_trunks, sharing

WSD = {
    "name": "w",
    "data": {"name": "tiny", "corpus": {"source": "stdlib", "max_documents": 12},
             "tokenizer": {"vocab_size": 400, "training_characters": "50K"}, "validation_tokens": "2K"},
    "models": [{"name": "s", "layers": 1, "width": 32, "heads": 1}, {"name": "m", "params": "50K", "train": {"optimizer": {"lr": 0.002}}}],
    "grid": {"unique_tokens": ["4K", "8K"], "epochs": [1, 2, 4]},
    "seeds": 2,
    "train": {"seq_len": 32, "batch_tokens": 512, "optimizer": {"schedule": "wsd", "warmup_tokens": 1024}},
    "wandb": {"mode": "disabled"},
}  # fmt: skip


def _runs(document: dict = WSD):
    return expand(SweepConfig.model_validate(document), vocab_size=400)


def test_runs_differing_only_in_d_share_a_trunk_that_ends_at_the_last_cooldown_start():
    runs = _runs()
    trunks, branches = plan_trunks(runs)
    assert len(trunks) == 8 and len(branches) == 24  # models x U x seeds; every run a branch
    trunk = trunks[0]
    assert trunk.name == "s-U4K-s0-trunk" and [run.name for run in trunk.branches] == ["s-U4K-e1-s0", "s-U4K-e2-s0", "s-U4K-e4-s0"]
    # 7, 16 and 31 steps of 512 tokens; the last 20% (1, 3, 6 steps) cool down
    assert [run.config.steps for run in trunk.branches] == [7, 16, 31]
    assert trunk.stops == [6, 13, 25] and trunk.config.tokens == 25 * 512
    assert trunk.config.schedule().lr(25 * 512) == trunk.config.optimizer.lr  # constant to its end
    assert [branch.start for branch in branches[:3]] == [6, 13, 25]
    n = trunk.branches[0].params_non_embedding
    shared, independent = sharing(trunks[:1], branches[:3])
    assert shared == 6.0 * n * (25 * 512 + (1 + 3 + 6) * 512)
    assert independent == 6.0 * n * (7 + 16 + 31) * 512 == sum(run.flops for run in trunk.branches)
    assert independent / shared == pytest.approx(54 / 35)
    # the cooldown settings do not split a trunk; another lr does
    assert {json_key for json_key in trunk.hashed()["run"]["optimizer"]} >= {"lr", "schedule", "warmup_tokens"}
    assert not {"cooldown", "cooldown_shape", "final_lr_ratio"} & set(trunk.hashed()["run"]["optimizer"])


def test_a_cosine_sweep_has_no_trunks():
    document = copy.deepcopy(WSD)
    document["train"]["optimizer"] = {"lr": 0.004}
    assert plan_trunks(_runs(document)) == ([], [])


def test_dcsl_plan_shows_the_trunks_and_the_compute_with_and_without_sharing(tmp_path, capsys):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**WSD, "store": str(tmp_path / "store")}))
    assert main(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    trunks, branches = plan_trunks(_runs())
    shared, independent = sharing(trunks, branches)
    assert "8 WSD trunks, 24 branches" in out
    assert "s-U4K-e4-s0 12.8K->15.87K" in out
    assert f"compute with trunks {shared:.4e} FLOPs (6ND)" in out
    assert f"as independent runs {independent:.4e} ({independent / shared:.2f}x)" in out
