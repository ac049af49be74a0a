"""`dcsl sweep` with `schedule: wsd`, in real processes with real Ray: one trunk per model, U and seed,
a branch per run; a failed branch leaves its siblings alone, a rerun runs only it, and a changed
cooldown shape reruns the branches and not the trunk (`--explain` says so)."""

import json
import subprocess
from pathlib import Path

import sweeps
from sweeps import DCSL

WSD = {
    **sweeps.SWEEP,
    "models": [{"name": "s", "layers": 1, "width": 32, "heads": 1}],
    "grid": [{"unique_tokens": "20K", "epochs": [1, 2, 4]}],
    "train": {"seq_len": 64, "batch_tokens": 1024,
              "optimizer": {"schedule": "wsd", "warmup_tokens": 2048, "cooldown": 0.2, "cooldown_shape": "1-sqrt"}},
}  # fmt: skip
BRANCHES = ["s-U20K-e1-s0", "s-U20K-e2-s0", "s-U20K-e4-s0"]
TRUNK = "s-U20K-s0-trunk"


def _records(store: Path) -> dict[str, dict]:
    return {record["name"]: record for record in sweeps.records(store).values()}


def _attempts(store: Path) -> dict[str, int]:
    """Attempts of every trunk and train step, by `<stage>/<directory name>`."""
    return {f"{p.parents[2].name}/{p.parent.name}": json.loads(p.read_text())["attempt"] for p in store.glob("*/.steps/*/step.json")}


def _explain(config: Path) -> list[str]:
    result = subprocess.run([DCSL, "sweep", str(config), "--explain"], capture_output=True, text=True, env=sweeps.env())
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_a_wsd_sweep_trains_one_trunk_and_a_branch_per_run(tmp_path, ray_tmp):
    store = tmp_path / "store"
    config = sweeps.write(tmp_path, store, WSD)
    failing = dict(sweeps.env(ray_tmp), DCSL_INJECT_FAILURE=BRANCHES[1])
    first = sweeps.run(config, environment=failing)
    assert first.returncode == 3, first.stderr[-3000:]
    assert "2 of 3 runs succeeded; 1 did not:" in first.stdout and f"{BRANCHES[1]}: failed: RuntimeError: injected" in first.stdout
    records = _records(store)
    assert sorted(records) == [BRANCHES[0], BRANCHES[2]]
    (trunk_dir,) = (store / "trunk").glob(f"{TRUNK}-*")
    # 19, 39 and 78 steps: cooldowns from steps 15, 31 and 62, where the trunk kept its checkpoints and ended
    assert json.loads((trunk_dir / "trunk.json").read_text())["stops"] == [15, 31, 62]
    assert sorted(p.name for p in (trunk_dir / "checkpoints").iterdir()) == ["step-00000015", "step-00000031", "step-00000062"]
    for name, steps in ((BRANCHES[0], 19), (BRANCHES[2], 78)):
        record = records[name]
        assert record["trunk"] == f"trunk/{trunk_dir.name}" and record["steps"] == steps
        assert record["tokens"] == steps * 1024 and record["flops"] == 6 * record["params_non_embedding"] * steps * 1024

    # the same command again: only the failed branch runs; the trunk and the finished branches are not touched
    attempts = _attempts(store)
    second = sweeps.run(config, environment=sweeps.env(ray_tmp))
    assert second.returncode == 0, second.stderr[-3000:]
    after = _attempts(store)
    changed = sorted(key for key in after if after[key] != attempts.get(key))
    assert [key.rsplit("-", 1)[0] for key in changed if not key.startswith(("fit/", "report/"))] == [f"train/{BRANCHES[1]}"], changed
    assert _records(store)[BRANCHES[1]]["trunk"] == f"trunk/{trunk_dir.name}"

    # another cooldown shape: the branches run again, the trunk is done
    reshaped = {**WSD, "train": {**WSD["train"], "optimizer": {**WSD["train"]["optimizer"], "cooldown_shape": "linear"}}}
    lines = _explain(sweeps.write(tmp_path, store, reshaped))
    assert f"skip  trunk/{TRUNK}: done" in lines
    for name in BRANCHES:
        assert f'run   train/{name}: config changed: optimizer.cooldown_shape "1-sqrt" -> "linear"' in lines
    # another cooldown fraction moves the branch points: the trunk runs again, and says where its stops went
    shorter = {**WSD, "train": {**WSD["train"], "optimizer": {**WSD["train"]["optimizer"], "cooldown": 0.1}}}
    lines = _explain(sweeps.write(tmp_path, store, shorter))
    assert f"run   trunk/{TRUNK}: config changed: stops [15, 31, 62] -> [17, 35, 70]" in lines
