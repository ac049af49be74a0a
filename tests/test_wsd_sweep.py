"""`dcsl sweep` with `schedule: wsd`, in real processes with real Ray: one trunk per model, U and seed,
a branch per run; a failed branch leaves its siblings alone, a rerun runs only it, and a changed
cooldown shape reruns the branches and not the trunk (`--explain` says so)."""

import csv
import json
import subprocess
from pathlib import Path

import pyarrow.parquet as pq

import sweeps
from stages.metrics import curve_steps
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
        assert (store / "train" / f"{name}-{record['run_hash']}" / "run.json").is_file()
        assert record["tokens"] == steps * 1024 and record["flops"] == 6 * record["params_non_embedding"] * steps * 1024

    # the same command again: only the failed branch runs; the trunk and the finished branches are not touched
    attempts = _attempts(store)
    second = sweeps.run(config, environment=sweeps.env(ray_tmp))
    assert second.returncode == 0, second.stderr[-3000:]
    after = _attempts(store)
    changed = sorted(key for key in after if after[key] != attempts.get(key))
    assert [key.rsplit("-", 1)[0] for key in changed if not key.startswith(("fit/", "report/"))] == [f"train/{BRANCHES[1]}"], changed
    assert _records(store)[BRANCHES[1]]["trunk"] == f"trunk/{trunk_dir.name}"

    # the loss curves, exported: each run's logged train losses and its validations, the last one its result
    exported = subprocess.run([DCSL, "runs", str(store), "--curves", str(tmp_path / "curves.csv")], capture_output=True, text=True,
                              env=sweeps.env())  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    curves = list(csv.DictReader((tmp_path / "curves.csv").open()))
    for name, record in _records(store).items():
        run_dir = store / "train" / f"{name}-{record['run_hash']}"
        rows = [row for row in curves if row["run"] == name]
        logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        validated = [json.loads(line) for line in (run_dir / "val_curve.jsonl").read_text().splitlines()]
        assert [(int(r["step"]), float(r["train_loss"])) for r in rows if r["train_loss"]] == [(m["step"], m["loss"]) for m in logged]
        assert [(int(r["step"]), float(r["val_loss"])) for r in rows if r["val_loss"]] == [
            *((p["step"], p["val_loss"]) for p in validated), (record["steps"], record["val_loss"])]
        assert [p["step"] for p in validated] == curve_steps(record["steps"], 3)  # the default curve_evals
    assert exported.stdout == f"wrote {len(curves)} curve points of 3 runs to {tmp_path / 'curves.csv'}\n"
    as_parquet = subprocess.run([DCSL, "runs", str(store), "--curves", str(tmp_path / "curves.parquet")], env=sweeps.env())
    assert as_parquet.returncode == 0
    table = pq.read_table(tmp_path / "curves.parquet").to_pylist()
    assert [(r["run"], r["step"], r["val_loss"]) for r in table] == [
        (r["run"], int(r["step"]), float(r["val_loss"]) if r["val_loss"] else None) for r in curves]
    refused = subprocess.run([DCSL, "runs", str(store), "--curves", str(tmp_path / "curves.txt")], capture_output=True, text=True,
                             env=sweeps.env())  # fmt: skip
    assert (refused.returncode, refused.stderr) == (2, f"error: --curves: {str(tmp_path / 'curves.txt')!r} must end in .csv or .parquet\n")

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
