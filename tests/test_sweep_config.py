"""Sweep configs: expansion into run specs, the isoFLOP form, overrides, `dcsl plan`, and bad configs."""

import copy
import json
import os
import tempfile

os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="dcsl-hf-"))  # before `datasets` is imported
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import yaml  # noqa: E402

import pipeline.cli.plan_commands  # noqa: E402,F401  (registers the command)
from pipeline.cli import main  # noqa: E402
from pipeline.config import SweepConfig, load_sweep  # noqa: E402
from pipeline.expand import expand  # noqa: E402
from pipeline.trunks import plan_trunks  # noqa: E402
from scaling.errors import InputError  # noqa: E402
from stages.artifacts import mark_success  # noqa: E402
from stages.record import RunRecord  # noqa: E402
from stages.tokenize import tokenize  # noqa: E402

from conftest import REPO  # noqa: E402

BASE = {
    "name": "t",
    "data": {
        "name": "tiny",
        "corpus": {"source": "stdlib", "max_documents": 12},
        "tokenizer": {"vocab_size": 400, "training_characters": "50K"},
        "validation_tokens": "2K",
    },
    "models": [
        {"name": "s", "layers": 1, "width": 32, "heads": 1},
        {"name": "m", "params": "50K", "train": {"optimizer": {"lr": 0.002}}},
    ],
    "grid": {"unique_tokens": ["4K", "8K"], "epochs": [1, 2, 4]},
    "seeds": 2,
    "train": {"seq_len": 32, "batch_tokens": 512, "optimizer": {"lr": 0.004, "warmup": 0.1}},
    "wandb": {"mode": "disabled"},
}


def sweep_dict(**changes) -> dict:
    """BASE with dotted-path changes: {"train.backend": "tpu", "models.0.heads": 3}; None deletes."""
    document = copy.deepcopy(BASE)
    for path, value in changes.items():
        *parents, last = [int(part) if part.isdigit() else part for part in path.split(".")]
        node = document
        for part in parents:
            node = node[part]
        if value is None:
            del node[last]
        else:
            node[last] = value
    return document


def write_sweep(tmp_path, document: dict, store=None) -> str:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**document, "store": str(store or tmp_path / "store")}))
    return str(path)


def run_plan(capsys, *args):
    code = main(["plan", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def tokenized_store(tmp_path_factory):
    """A store holding BASE's corpus, tokenized (12 small documents)."""
    store = tmp_path_factory.mktemp("tokenized") / "store"
    artifact = tokenize(SweepConfig.model_validate(BASE).data, store)
    return store, json.loads((artifact / "manifest.json").read_text())["train"]["tokens"]


# ---- expansion ------------------------------------------------------------------------------------


def test_full_grid_expansion():
    sweep = SweepConfig.model_validate(BASE)
    runs = expand(sweep)
    assert len(runs) == 2 * 2 * 3 * 2
    assert len({run.name for run in runs}) == len(runs)
    assert runs[0].name == "s-U4K-e1-s0" and runs[1].name == "s-U4K-e1-s1"
    for run in runs:
        assert run.config.name == run.name
        assert run.tokens % 512 == 0 and run.config.tokens == run.tokens
        assert run.epochs == run.tokens / run.unique_tokens
        assert run.flops == 6 * run.params_non_embedding * run.tokens
        assert run.flops_full > run.flops and run.params > run.params_non_embedding
        assert run.shape.vocab_size == 400 and run.shape.seq_len == 32
        assert run.world_size == 1 and run.resources.cpus == 1
    # one epoch never repeats a token: floor(4000 / 512) = 7 steps; more epochs: the nearest step
    by_name = {run.name: run for run in runs}
    assert by_name["s-U4K-e1-s0"].tokens == 7 * 512 and by_name["s-U8K-e1-s0"].tokens == 15 * 512
    assert by_name["s-U4K-e2-s0"].tokens == 16 * 512 and by_name["s-U4K-e4-s0"].tokens == 31 * 512


def test_seeds_are_nested_inside_each_grid_point():
    runs = expand(SweepConfig.model_validate(sweep_dict(seeds=[3, 7])))
    assert [run.seed for run in runs] == [3, 7] * 12
    for first, second in zip(runs[::2], runs[1::2]):
        assert first.point == second.point and first.name == f"{first.point}-s3"
        assert first.config.model_copy(update={"name": "x", "seed": 0}) == second.config.model_copy(update={"name": "x", "seed": 0})


def test_per_model_overrides_merge_into_the_shared_settings():
    document = sweep_dict(**{"models.0.resources": {"cpus": 2}})
    runs = {run.model: run for run in expand(SweepConfig.model_validate(document))}
    assert runs["m"].config.optimizer.lr == 0.002 and runs["m"].config.optimizer.warmup == 0.1
    assert runs["s"].config.optimizer.lr == 0.004 and runs["s"].config.optimizer.warmup == 0.1
    assert runs["s"].resources.cpus == 2 and runs["m"].resources.cpus == 1
    assert runs["m"].config.model.params == 50_000 and runs["m"].shape.width == 64  # the size table


def test_units_everywhere():
    document = sweep_dict(**{
        "grid": {"unique_tokens": ["1.5M", 2e6, "4e5"], "epochs": 1}, "train.batch_tokens": "2K", "train.seq_len": 40,
        "data.validation_tokens": "1e3", "train.eval_tokens": "0.5K",
    })  # fmt: skip
    sweep = SweepConfig.model_validate(document)
    assert sweep.data.validation_tokens == 1000 and sweep.train.batch_tokens == 2000
    runs = expand(sweep)
    assert [run.unique_tokens for run in runs[::2]] == [1_500_000, 2_000_000, 400_000] * 2
    assert runs[0].config.eval_tokens == 500 and runs[0].tokens == 750 * 2000


def test_isoflop_form_matches_compute_within_one_step():
    document = sweep_dict(grid=[{"unique_tokens": "4K", "flops": ["1e11", "3e11"]}], seeds=1)
    runs = expand(SweepConfig.model_validate(document))
    assert [run.name for run in runs] == ["s-C1e11-U4K-s0", "s-C3e11-U4K-s0", "m-C1e11-U4K-s0", "m-C3e11-U4K-s0"]
    for run in runs:
        budget = run.target["flops"]
        assert abs(budget - 6 * run.params_non_embedding * run.tokens) <= 6 * run.params_non_embedding * 512 / 2
        assert run.epochs == run.tokens / 4000 and run.epochs > 1


def test_blocks_share_runs_and_pick_models():
    document = sweep_dict(grid=[
        {"unique_tokens": ["4K", "8K"], "epochs": 1},
        {"models": "s", "unique_tokens": "4K", "epochs": [1, 8]},
    ], seeds=1)  # fmt: skip
    names = [run.name for run in expand(SweepConfig.model_validate(document))]
    assert names == ["s-U4K-e1-s0", "s-U8K-e1-s0", "m-U4K-e1-s0", "m-U8K-e1-s0", "s-U4K-e8-s0"]


def test_impossible_points_are_errors_or_skipped_with_a_warning():
    document = sweep_dict(grid={"unique_tokens": "4K", "flops": ["2e8", "1e11"]}, seeds=1)
    sweep = SweepConfig.model_validate(document)
    with pytest.raises(InputError, match="^grid point s-C2e8-U4K: flops: 2e8 gives D = "):
        expand(sweep)
    skipped = []
    runs = expand(sweep, skip_invalid=True, skipped=skipped)
    assert [run.name for run in runs] == ["s-C1e11-U4K-s0", "m-C1e11-U4K-s0"]
    assert len(skipped) == 2 and skipped[1].startswith("grid point m-C2e8-U4K: flops: 2e8 gives D = ")
    with pytest.raises(InputError, match="^grid: no grid point is possible; the first: grid point s-C2e8-U4K"):
        expand(SweepConfig.model_validate(sweep_dict(grid={"unique_tokens": "4K", "flops": "2e8"})), skip_invalid=True)


def test_vocabulary_from_a_given_tokenizer(tmp_path, tokenized_store):
    store, _ = tokenized_store
    (tokenizer,) = store.glob("tokenize/*/tokenizer.json")
    document = sweep_dict(**{"data.tokenizer": {"path": str(tokenizer)}, "seeds": 1})
    run = expand(load_sweep(write_sweep(tmp_path, document)))[0]
    assert run.shape.vocab_size == json.loads(tokenizer.read_text())["model"]["vocab"].__len__() == 400


# ---- dcsl plan ------------------------------------------------------------------------------------


def test_plan_prints_the_runs_and_totals(tmp_path, capsys):
    code, out, err = run_plan(capsys, write_sweep(tmp_path, BASE))
    assert code == 0
    assert "s-U4K-e1-s0" in out and "m-U8K-e4-s1" in out
    assert "runs 24 (12 grid points x 2 seed(s))" in out and "total compute " in out and "total tokens " in out
    assert "estimated time: unknown" in out
    assert "the corpus is not tokenized yet" in err
    assert not (tmp_path / "store").exists()


def test_plan_csv(tmp_path, capsys):
    code, out, _ = run_plan(capsys, write_sweep(tmp_path, BASE), "--csv")
    lines = out.strip().splitlines()
    assert code == 0 and lines[0].startswith("name,model,seed,params,params_non_embedding,tokens,unique_tokens,epochs,flops")
    assert len(lines) == 25 and lines[1].startswith("s-U4K-e1-s0,s,0,")


def test_plan_estimates_time_from_runs_in_the_store(tmp_path, capsys):
    run = expand(SweepConfig.model_validate(BASE))[0]
    record = RunRecord(name="old", params=run.params, params_non_embedding=run.params_non_embedding, tokens=10_000,
                       unique_tokens=10_000, epochs=1.0, val_loss=5.0, flops=run.flops, shape=run.shape._asdict(),
                       tokens_per_s=1000.0, train_seconds=10.0, wall_seconds=12.5, world_size=1, device="cpu")  # fmt: skip
    folder = tmp_path / "store" / "train" / "old-0123456789abcdef"
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(record.to_json())
    mark_success(folder)  # only finished, whole runs give estimates
    path = write_sweep(tmp_path, BASE)
    code, out, _ = run_plan(capsys, path, "--csv")
    rows = [line.split(",") for line in out.strip().splitlines()[1:]]
    assert code == 0
    for row in rows:
        expected = f"{int(row[5]) / 1000 + 2.5:.1f}" if row[1] == "s" else ""
        assert row[-1] == expected
    code, out, _ = run_plan(capsys, path)
    assert "s-U4K-e1-s0" in out and "6s" in out  # 3,584 tokens at 1,000 tokens/s + 2.5 s
    assert "one run after another for the 12 of 24 runs whose shape the store has seen" in out


def test_plan_checks_unique_tokens_against_a_tokenized_corpus(tmp_path, capsys, tokenized_store):
    store, train_tokens = tokenized_store
    path = write_sweep(tmp_path, sweep_dict(grid={"unique_tokens": ["4K", "10M"], "epochs": 1}), store=store)
    code, _, err = run_plan(capsys, path)
    assert code == 2
    assert err == f"error: grid point s-U10M-e1: unique_tokens: 10000000 exceeds the corpus's {train_tokens} training tokens\n"
    code, out, err = run_plan(capsys, path, "--skip-invalid")
    assert code == 0 and "runs 4 (2 grid points x 2 seed(s)), 2 points skipped" in out
    assert err.count("warning: skipped grid point") == 2 and "not tokenized" not in err


@pytest.mark.parametrize("name", ["tiny.yaml", "tiny_cosine.yaml", "tiny_ci.yaml", "c4_paper.yaml"])
def test_plan_on_the_built_in_configs(tmp_path, capsys, name):
    code, out, err = run_plan(capsys, REPO / "configs" / name, "--store", tmp_path / "store")
    assert code == 0, err
    assert "total compute" in out and "grid points" in out
    sweep = load_sweep(REPO / "configs" / name)
    runs = expand(sweep)
    assert len(runs) == len({run.name for run in runs})
    if name.startswith("tiny.") or name == "tiny_cosine.yaml":
        # issue 15's design: >= 5 sizes over >= 16x, >= 4 budgets, >= 16 epochs on >= 2 budgets; WSD trunks in tiny.yaml
        sizes = {run.params_non_embedding for run in runs}
        assert len(sizes) >= 5 and max(sizes) / min(sizes) >= 16 and len({run.unique_tokens for run in runs}) >= 4
        assert min(run.epochs for run in runs) == 1 and len({run.unique_tokens for run in runs if run.epochs >= 16}) >= 2
        assert all(run.resources.cpus == 1 and run.resources.gpus == 0 for run in runs)
        assert [rung.name for rung in sweep.ladder()[1]] == ["n12.4K", "n27.8K", "n49.3K", "n111K", "n222K"]
        trunks, branches = plan_trunks(runs)
        schedule = "wsd" if name == "tiny.yaml" else "cosine"
        assert {run.config.optimizer.schedule for run in runs} == {schedule}
        assert (len(trunks), len(branches)) == ((25, 47) if schedule == "wsd" else (0, 0)), (len(trunks), len(branches))
        assert "compute with trunks 1.6073e+13 FLOPs" in out if schedule == "wsd" else "trunks" not in out
    if name == "c4_paper.yaml":
        assert max(run.params for run in runs) > 5e9 and min(run.params for run in runs) < 2e7
        assert sweep.train.backend == "deepspeed" and all(run.resources.gpus >= 1 for run in runs)


# ---- bad configs: one line, status 2, nothing run -------------------------------------------------

BAD = [
    # unknown keys, at several levels
    ({"sede": 1}, "sede: unknown setting; allowed: name, store, data, models, grid, seeds, train, resources, fit, wandb"),
    ({"train.lr": 0.1}, "train.lr: unknown setting; allowed: seq_len, batch_tokens, micro_batch_size, optimizer, backend, "
     "zero_stage, precision, device, compile, processes, checkpoint_every, keep_checkpoints, log_every, eval_tokens, eval_batch_size, curve_evals"),
    ({"grid.epoch": [1]}, "grid.epoch: unknown setting; allowed: models, unique_tokens, epochs, flops, tokens, pools, mix"),
    ({"models.0.depth": 2}, "models.0.depth: unknown setting; allowed: params, layers, width, heads, mlp_ratio, positions, "
     "tie_embeddings, name, train, resources"),
    ({"fit": {"bootstraps": 10}}, "fit.bootstraps: unknown setting; allowed: law, base, method, params, bootstrap, seed, "
     "tie_exponents, fix, bounds"),
    ({"models.1.train": {"optimizer": {"lrr": 0.1}}}, "models.1.train.optimizer.lrr: unknown setting; allowed: lr, schedule, warmup, warmup_tokens, cooldown, cooldown_shape, "
     "final_lr_ratio, weight_decay, beta1, beta2, eps, grad_clip"),
    ({"wandb": {"projekt": "x"}}, "wandb.projekt: unknown setting; allowed: mode, project, entity"),
    # wrong types, missing sections
    ({"train.seq_len": "long"}, "train.seq_len: 'long' is not allowed: Input should be a valid integer, unable to parse string as an integer"),
    ({"models": "s"}, "models: 's' is not allowed: Input should be a valid list"),
    ({"train": None}, "train: is required"),
    # sizes, units, counts
    ({"models.1.params": "-50K"}, "models.1.params: '-50K' must be a positive finite number"),
    ({"grid.unique_tokens": [-4000]}, "grid.unique_tokens.0: -4000 must be a positive finite number"),
    ({"grid.unique_tokens": ["12x"]}, "grid.unique_tokens.0: '12x' is not a quantity; use a number like 1e22, 25e9, 25B or 1.5T "
     "(suffixes K, M, B, T, P)"),
    ({"grid.epochs": [0, 2]}, "grid.epochs.0: 0 is not allowed: Input should be greater than or equal to 1"),
    ({"seeds": 0}, "seeds: 0 must be a count of at least 1 or a list of seeds"),
    ({"seeds": [1, 1]}, "seeds: [1, 1] repeats a seed"),
    # the grid
    ({"grid": []}, "grid: [] is not allowed: Value should have at least 1 item after validation, not 0"),
    ({"grid.unique_tokens": []}, "grid.unique_tokens: [] is not allowed: Value should have at least 1 item after validation, not 0"),
    ({"grid.flops": ["1e12"]}, "grid.epochs: give epochs (a full grid) or flops (isoFLOP compute budgets): exactly one of them"),
    ({"grid.models": ["s", "xl"]}, "grid.models: 'xl' is not a model; models: s, m"),
    ({"models.1.name": "s"}, "models.1.name: 's' is used by models.0 too; names must be unique"),
    ({"models.0.name": "big-model"}, "models.0.name: 'big-model' is not allowed: String should match pattern '^[A-Za-z0-9][A-Za-z0-9_.]*$'"),
    # impossible grid points
    ({"grid": {"unique_tokens": "8K", "flops": "1e9"}}, "grid point m-C1e9-U8K: flops: 1e9 gives D = 3,378 tokens for N = 49,344 "
     "non-embedding parameters, less than U = 8,000 (epochs 0.422 < 1); lower unique_tokens or raise flops"),
    ({"grid": {"unique_tokens": ["4K", "1B"], "epochs": 1}}, "grid point s-U1B-e1: unique_tokens: 1000000000 exceeds the corpus's "
     "{train_tokens} training tokens"),
    ({"grid": {"unique_tokens": 32, "epochs": 1}}, "grid point s-U32-e1: unique_tokens: 32 is not longer than seq_len 32; "
     "a sequence needs seq_len + 1 unique tokens"),
    ({"data.validation_tokens": 20}, "grid point s-U4K-e1: seq_len: 32 is not shorter than the 20 validation tokens; "
     "raise data.validation_tokens"),
    # models and training settings
    ({"models.0.heads": 3}, "models.0.heads: 3 does not divide width 32"),
    ({"models.1": {"name": "m", "params": "50K", "layers": 2}}, "models.1.params: give either params (a target size) or layers, "
     "width and heads, not both"),
    ({"train.backend": "tpu"}, "train.backend: 'tpu' is not allowed: Input should be 'torch' or 'deepspeed'"),
    ({"train.batch_tokens": 500}, "train.batch_tokens: 500 is not a multiple of seq_len 32"),
    ({"models.1.train": {"optimizer": {"lr": 5}}}, "models.1.train.optimizer.lr: 5 is not allowed: Input should be less than or equal to 1"),
    ({"data.tokenizer.vocab_size": 100}, "data.tokenizer.vocab_size: 100 is too small; a byte-level BPE needs at least 257 "
     "(256 bytes and the end-of-document token)"),
    # resources
    ({"train.device": "cpu", "resources": {"gpus": 2}}, "resources.gpus: 2 GPUs asked for, but train.device is 'cpu'; "
     "use gpus: 0 or device auto/cuda"),
    ({"models.1.resources": {"gpus": 1}, "train.device": "cpu"}, "models.1.resources.gpus: 1 GPUs asked for, but train.device is "
     "'cpu'; use gpus: 0 or device auto/cuda"),
    ({"train.device": "cuda"}, "resources.gpus: 0, but train.device is 'cuda'; a CUDA run needs gpus >= 1"),
    ({"resources": {"nodes": 0}}, "resources.nodes: 0 is not allowed: Input should be greater than or equal to 1"),
    ({"resources": {"nodes": 2}}, "resources.nodes: 2 nodes can't share the 1 train.processes of a CPU run evenly"),
    ({"train.processes": 2}, "resources.cpus: 1 is fewer than the 2 train.processes of a CPU run"),
    ({"train.processes": 4, "resources": {"nodes": 2}}, "resources.cpus: 1 is fewer than the 4 train.processes of a CPU run "
     "over 2 nodes (2 per node)"),
    ({"resources": {"gpus": 3}}, "grid point s-U4K-e1: batch_tokens: 16 sequences per step do not split evenly over 3 ranks "
     "(resources: 1 node(s) x 3 GPU(s))"),
    # the fit
    ({"fit": {"bootstrap": -1}}, "fit.bootstrap: -1 is not allowed: Input should be greater than or equal to 0"),
    ({"fit": {"base": "gpt3"}}, "fit.base: 'gpt3' is not allowed; use fitted or a preset: chinchilla, c4"),
    ({"fit": {"base": "c4", "method": "joint"}}, "fit.base: the repetition-only fit needs a fixed base law (a preset or a "
     "law.json), and only it takes one"),
    ({"fit": {"fix": {"gamma": 1.0}}}, "fit.fix: 'gamma' is not a law parameter; choose one of E, A, B, alpha, beta, rd_star, "
     "rn_star (or e, a, b for log E, log A, log B)"),
]


@pytest.mark.parametrize("changes, message", BAD, ids=[f"{i:02d}-{next(iter(c))}" for i, (c, _) in enumerate(BAD)])
def test_bad_sweep_configs(tmp_path, capsys, tokenized_store, changes, message):
    store, train_tokens = tokenized_store
    code, out, err = run_plan(capsys, write_sweep(tmp_path, sweep_dict(**changes), store=store))
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert err == f"error: {message.format(train_tokens=train_tokens)}\n"
