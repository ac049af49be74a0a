"""WSD trunks and branches: the compute a sweep saves, and a branch's loss against a cosine run's.

(a) Compute per fitted point: for each sweep below, the FLOPs (6ND, N non-embedding) of its points
    trained as WSD trunks with cooldown branches (`pipeline.trunks`) against the same points trained
    as independent runs; the ratio is independent / shared. The built-in study `configs/tiny.yaml`
    (WSD) and its cosine twin `configs/tiny_cosine.yaml` (no trunks: 1.00x) are read as written.
    Nothing is trained for (a).
(b) Loss: on CPU (one thread, 2 x 64 model, seq_len 64, 16 sequences a step, U = 100K stdlib
    tokens), a cosine run of D tokens against the WSD branch of D (its trunk shared with the other
    D), with the 1-sqrt and the linear cooldown over the last 20%, for D = 200 and 400 steps. The
    branches run through the real step kinds (`TrunkKind`, `BranchKind`), in this process (no Ray).
    Also the training wall time of the cosine runs against the trunk and its branches.

Usage: python bench/bench_wsd.py [--skip-training]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="dcsl-bench-hf-"))
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["OMP_NUM_THREADS"] = "1"
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from pipeline.config import SweepConfig  # noqa: E402

from pipeline.expand import expand  # noqa: E402
from pipeline.graph import Outcome  # noqa: E402
from pipeline.kinds.branch import BranchKind  # noqa: E402
from pipeline.kinds.trunk import TrunkKind  # noqa: E402
from pipeline.store import State, Step  # noqa: E402
from pipeline.trunks import plan_trunks, sharing  # noqa: E402
from stages.launch import train  # noqa: E402
from stages.record import read_record  # noqa: E402
from stages.tokenize import tokenize  # noqa: E402

WSD = {"schedule": "wsd", "warmup_tokens": 20_000, "cooldown": 0.2, "cooldown_shape": "1-sqrt"}  # tiny.yaml's WSD line
LADDER = {
    "name": "epochs-ladder",
    "data": {"name": "stdlib-512", "corpus": {"source": "stdlib", "max_documents": 500},
             "tokenizer": {"vocab_size": 512, "training_characters": "2M"}, "validation_tokens": "50K"},
    "models": [{"name": "xs", "layers": 1, "width": 32, "heads": 1}, {"name": "m", "layers": 2, "width": 64, "heads": 2}],
    "grid": [{"unique_tokens": ["100K", "200K", "400K"], "epochs": [1, 2, 4, 8, 16]}],
    "train": {"seq_len": 100, "batch_tokens": 1000, "optimizer": {"lr": 4e-3, **WSD}},
}  # fmt: skip
STUDY = {
    "name": "bench-wsd",
    "data": {"name": "bench-wsd", "corpus": {"source": "stdlib", "max_documents": 200},
             "tokenizer": {"vocab_size": 512, "training_characters": "300K"}, "validation_tokens": "20K"},
    "models": [{"name": "m", "layers": 2, "width": 64, "heads": 2}],
    "train": {"seq_len": 64, "batch_tokens": 1024, "device": "cpu", "eval_tokens": "20K", "curve_evals": 0, "log_every": 50,
              "optimizer": {"lr": 4e-3, "warmup": 0.05, "final_lr_ratio": 0.1}},
    "wandb": {"mode": "disabled"},
}  # fmt: skip
UNIQUE, STEPS = 100_000, (200, 400)


def compute_rows() -> list[tuple[str, int, int, float, float]]:
    """(sweep, points, trunks, shared FLOPs, independent FLOPs) for each sweep of (a)."""
    sweeps = [(f"configs/{name}", yaml.safe_load((REPO / "configs" / name).read_text())) for name in ("tiny.yaml", "tiny_cosine.yaml")]
    sweeps.append(("U 100K/200K/400K x epochs 1..16, 2 models", LADDER))
    rows = []
    for label, document in sweeps:
        runs = expand(SweepConfig.model_validate(document), vocab_size=document["data"]["tokenizer"]["vocab_size"])
        trunks, branches = plan_trunks(runs)
        shared, independent = sharing(trunks, branches)
        rows.append((label, len(runs), len(trunks), shared or sum(run.flops for run in runs), independent or sum(run.flops for run in runs)))
    return rows


def loss_rows(store: Path) -> tuple[list[tuple[int, float, dict[str, float]]], dict[str, float]]:
    """Per D: (steps, cosine val loss, {cooldown shape: branch val loss}); and the wall seconds of the cosine runs, of
    the WSD trunk and of the 1-sqrt branches (the linear branches reuse the same trunk)."""
    data_path = tokenize(SweepConfig.model_validate({**STUDY, "grid": {"unique_tokens": UNIQUE, "epochs": 1}}).data, store)
    grid = [{"unique_tokens": UNIQUE, "epochs": [steps * 1024 / UNIQUE for steps in STEPS]}]
    corpus = Outcome("bench-wsd", "tokenize", State.DONE, Step("tokenize", "bench-wsd", {}, [], digest="0" * 16), str(data_path))
    cosine_runs = expand(SweepConfig.model_validate({**STUDY, "grid": grid}))
    seconds = {"cosine": time.perf_counter()}
    cosine = {run.config.steps: read_record(train(run.config, data_path, store)).val_loss for run in cosine_runs}
    seconds["cosine"] = time.perf_counter() - seconds["cosine"]
    branches: dict[int, dict[str, float]] = {steps: {} for steps in STEPS}
    for shape in ("1-sqrt", "linear"):
        optimizer = {**STUDY["train"]["optimizer"], **WSD, "warmup_tokens": 10 * 1024, "cooldown_shape": shape}
        trunks, specs = plan_trunks(expand(SweepConfig.model_validate({**STUDY, "grid": grid, "train": {**STUDY["train"], "optimizer": optimizer}})))
        started = time.perf_counter()
        trunk_outcome = _run(TrunkKind(), trunks[0], store, [corpus])  # trained once: the second shape finds it finished
        seconds.setdefault("trunk", time.perf_counter() - started)
        started = time.perf_counter()
        for spec in specs:
            branches[spec.run.config.steps][shape] = _run(BranchKind(), spec, store, [trunk_outcome, corpus]).value.val_loss
        seconds.setdefault("branches", time.perf_counter() - started)
    return [(steps, cosine[steps], branches[steps]) for steps in STEPS], seconds


def _run(kind, spec, store: Path, inputs: list[Outcome]) -> Outcome:
    """Run one node of a kind in this process (the runner's work without Ray and the store's lease) and give its outcome."""
    step = kind.key(spec, inputs)
    out_dir = store / step.stage / f"{step.name}-{step.hash}"
    kind.run(spec, step, out_dir, inputs)
    return Outcome(step.name, step.stage, State.DONE, step, kind.result(spec, out_dir))


def main() -> None:
    print("(a) compute of a sweep's points: WSD trunks + cooldown branches vs independent runs (6ND, N non-embedding)")
    print(f"{'sweep':<44} {'points':>6} {'trunks':>6} {'shared FLOPs':>13} {'independent':>13} {'ratio':>6}")
    for label, points, trunks, shared, independent in compute_rows():
        print(f"{label:<44} {points:>6} {trunks:>6} {shared:>13.4e} {independent:>13.4e} {independent / shared:>6.3f}")
    if "--skip-training" in sys.argv:
        return
    print("\n(b) val loss on CPU, one thread: cosine run vs WSD branch at the same D (20% cooldown, final rate 0.1 x peak)")
    with tempfile.TemporaryDirectory(prefix="bench-wsd-") as folder:
        rows, seconds = loss_rows(Path(folder))
    print(f"{'steps':>5} {'D':>8} {'epochs':>6} {'cosine':>8} {'wsd 1-sqrt':>10} {'diff':>8} {'rel':>7} {'wsd linear':>10} {'diff':>8}")
    for steps, cosine, branch in rows:
        root, linear = branch["1-sqrt"], branch["linear"]
        print(f"{steps:>5} {steps * 1024:>8} {steps * 1024 / UNIQUE:>6.2f} {cosine:>8.4f} {root:>10.4f} {root - cosine:>+8.4f} "
              f"{(root - cosine) / cosine:>+7.2%} {linear:>10.4f} {linear - cosine:>+8.4f}")
    wsd = seconds["trunk"] + seconds["branches"]
    print(f"wall time: {len(STEPS)} cosine runs {seconds['cosine']:.1f} s; WSD trunk {seconds['trunk']:.1f} s + {len(STEPS)} branches "
          f"{seconds['branches']:.1f} s = {wsd:.1f} s; ratio {seconds['cosine'] / wsd:.2f}")


if __name__ == "__main__":
    main()
