"""The size ladder (`models: {ladder: ...}`): shapes and learning rates from target sizes, the same runs as
hand-written models, `dcsl plan`'s table, bad ladders; and the corpus's `piece_characters`."""

import copy
import json
import math
import os
import tempfile

os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="dcsl-hf-"))  # before `datasets` is imported
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import yaml  # noqa: E402

import pipeline.cli.plan_commands  # noqa: E402,F401  (registers the command)
from pipeline.cli import main  # noqa: E402
from pipeline.config import SweepConfig  # noqa: E402
from pipeline.expand import expand  # noqa: E402
from stages.corpus import CorpusConfig, load_corpus, pieces, read_texts  # noqa: E402
from stages.ladder import Ladder  # noqa: E402
from stages.shapes import ModelShape  # noqa: E402
from stages.tokenize import TokenizeConfig, tokenize, tokenize_key  # noqa: E402

LADDER = {"sizes": "12K..200K", "count": 5, "head_dim": 16, "lr": {"peak": 8e-3, "at": "12K"}}
SWEEP = {
    "name": "t",
    "data": {"name": "tiny", "corpus": {"source": "stdlib", "max_documents": 12}, "tokenizer": {"vocab_size": 512}},
    "models": {"ladder": LADDER},
    "grid": {"unique_tokens": ["4K"], "epochs": [1, 4]},
    "train": {"seq_len": 32, "batch_tokens": 512, "optimizer": {"lr": 0.004, "warmup": 0.1}},
    "wandb": {"mode": "disabled"},
}


def test_ladder_shapes_and_learning_rates():
    rungs = Ladder.model_validate(LADDER).rungs(vocab_size=512, seq_len=32)
    # targets 12K x 2.02^i (log-spaced to 200K); widths multiples of 16, heads of dimension 16, aspect 32..128
    assert [r.target for r in rungs] == [12000, 24246, 48990, 98985, 200000]
    assert [(r.name, r.layers, r.width, r.heads, r.params) for r in rungs] == [
        ("n12.4K", 1, 32, 2, 12384), ("n27.8K", 1, 48, 3, 27792), ("n49.3K", 1, 64, 4, 49344),
        ("n98.6K", 2, 64, 4, 98624), ("n197K", 1, 128, 8, 196992),
    ]  # fmt: skip
    assert [r.lr for r in rungs] == [0.00792, 0.00605, 0.00499, 0.00396, 0.00315]
    for rung in rungs:  # lr = 8e-3 (N / 12K)^(-1/3), to 3 significant digits
        assert rung.lr == pytest.approx(8e-3 * (rung.params / 12000) ** (-1 / 3), rel=5e-3)
        assert rung.params == ModelShape(rung.layers, rung.width, rung.heads, 512, 32).params.non_embedding


def test_ladder_of_total_parameters_is_nearest_among_legal_shapes():
    ladder = Ladder.model_validate({"sizes": ["300K", "1M", "10M"], "params": "total", "lr": {"peak": 1e-3, "at": "1M", "exponent": -0.5}})
    rungs = ladder.rungs(vocab_size=8192, seq_len=32)
    widths = list(range(32, 256, 32)) + list(range(256, 4097, 64))
    legal = [(layers, width) for layers in range(1, 129) for width in widths if 32 <= width / layers <= 128]
    for rung in rungs:
        total = ModelShape(rung.layers, rung.width, rung.heads, 8192, 32).params.total
        assert rung.params == total
        best = min(legal, key=lambda s: (abs(math.log(ModelShape(*s, 1, 8192, 32).params.total / rung.target)), abs(math.log(s[1] / s[0] / 64))))
        assert (rung.layers, rung.width) == best
    assert [(r.name, r.layers, r.width, r.params) for r in rungs] == [("n275K", 1, 32, 274_528), ("n1.01M", 2, 96, 1_008_096),
                                                                      ("n10M", 6, 320, 9_998_400)]
    assert rungs[1].lr == pytest.approx(1e-3 * (rungs[1].params / 1e6) ** -0.5, rel=5e-3)


def test_ladder_runs_equal_hand_written_models():
    ladder_runs = expand(SweepConfig.model_validate(SWEEP))
    rungs = SweepConfig.model_validate(SWEEP).ladder()[1]
    hand = copy.deepcopy(SWEEP)
    hand["models"] = [{"name": r.name, "layers": r.layers, "width": r.width, "heads": r.heads, "train": {"optimizer": {"lr": r.lr}}}
                      for r in rungs]
    hand_runs = expand(SweepConfig.model_validate(hand))
    assert [run.name for run in ladder_runs] == [run.name for run in hand_runs] and len(ladder_runs) == 10
    assert [run.config for run in ladder_runs] == [run.config for run in hand_runs]  # so the same step hashes
    assert ladder_runs[-1].config.optimizer.lr == 0.00315 and ladder_runs[-1].params_non_embedding == 196992
    assert SweepConfig.model_validate(hand).ladder() is None


def test_a_batch_rule_gives_each_size_its_batch_in_whole_sequences(tmp_path, capsys):
    sweep = copy.deepcopy(SWEEP)
    sweep["models"]["ladder"]["batch"] = {"tokens": 256, "at": "12K"}  # 8 sequences of 32 at 12K, x (N / 12K)^(2/3)
    config = SweepConfig.model_validate(sweep)
    rungs = config.ladder()[1]
    assert [r.batch_tokens for r in rungs] == [256, 448, 672, 1056, 1664]
    for rung in rungs:
        assert rung.batch_tokens == 32 * round(8 * (rung.params / 12000) ** (2 / 3))
        assert config.train_for(rung.name).batch_tokens == rung.batch_tokens
    runs = expand(config)  # 4 epochs of 4K: the whole number of each size's own steps nearest 16,000 tokens
    assert {run.model: run.tokens for run in runs if run.epochs > 2} == {
        "n12.4K": 62 * 256, "n27.8K": 36 * 448, "n49.3K": 24 * 672, "n98.6K": 15 * 1056, "n197K": 10 * 1664}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**sweep, "store": str(tmp_path / "store")}))
    assert main(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    assert "batch = 256 x (N / 12K) ^ 0.6667 tokens" in " ".join(out.split())  # the title may wrap
    row = next(line for line in out.splitlines() if line.startswith("│ n197K") and "200K" in line)
    assert [cell.strip() for cell in row.strip("│ ").split("│")][-2:] == ["0.00315", "1,664"]


def test_plan_shows_the_ladder(tmp_path, capsys):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**SWEEP, "store": str(tmp_path / "store")}))
    assert main(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    assert "size ladder: 5 sizes, N non-emb, lr = 0.008 x (N / 12K) ^ -0.3333" in out
    row = next(line for line in out.splitlines() if "n98.6K" in line and "24.25K" not in line and "98.98K" in line)
    assert [cell.strip() for cell in row.strip("│ ").split("│")] == ["n98.6K", "98.98K", "2", "64", "4", "98,624", "0.00396"]


BAD = [
    ({"count": None}, "models.ladder.count: is required with a LOW..HIGH range of sizes (how many sizes, 2 to 32)"),
    ({"sizes": "200K..12K"}, "models.ladder.sizes: 200K..12K is not allowed; LOW must be below HIGH"),
    ({"sizes": "12K..13K", "count": 3}, "models.ladder.sizes: 12K and 12.49K both give 1 layer(s) of width 32; widen the range or lower count"),
    ({"sizes": "big"}, "models.ladder.sizes: 'big' is not allowed; give a range LOW..HIGH (e.g. 12K..200K) or a list of sizes"),
    ({"sizes": "12K..2x"}, "models.ladder.sizes: '2x' is not a quantity; use a number like 1e22, 25e9, 25B or 1.5T (suffixes K, M, B, T, P)"),
    ({"sizes": ["12K", "12K"], "count": None}, "models.ladder.sizes: [12000.0, 12000.0] is not allowed; give distinct positive sizes"),
    ({"sizes": ["12K", "50K"]}, "models.ladder.count: 5 is only used with a LOW..HIGH range; a list of sizes gives its own count"),
    ({"count": 1}, "models.ladder.count: 1 is not allowed: Input should be greater than or equal to 2"),
    ({"head_dim": 3}, "models.ladder.head_dim: 3 is not allowed: Input should be a multiple of 2"),
    ({"params": "all"}, "models.ladder.params: 'all' is not allowed: Input should be 'non_embedding' or 'total'"),
    ({"lr": {"peak": 2, "at": "12K"}}, "models.ladder.lr.peak: 2 is not allowed: Input should be less than or equal to 1"),
    ({"lr": {"peak": 8e-3}}, "models.ladder.lr.at: is required"),
    ({"sizes": "25K..1M", "head_dim": None, "count": 2}, "models.ladder.sizes: 25K has no shape within 1.5x; the nearest, 1 layer(s) "
     "of width 64, has 49,344 non_embedding parameters; head_dim gives finer steps"),
    ({"sizes": "3K..60K"}, "models.ladder.sizes: 3,000 is below the smallest shape the size table allows (12,384 "
     "non-embedding parameters: one layer, width / layers >= 32)"),
    ({"batch": {"tokens": "2K"}}, "models.ladder.batch.at: is required"),
    ({"batch": {"tokens": "2K", "at": "12K", "exponent": -1}}, "models.ladder.batch.exponent: -1 is not allowed: Input should be greater than or equal to 0"),
    ({"widths": 3}, "models.ladder.widths: unknown setting; allowed: sizes, count, params, lr, batch, mlp_ratio, head_dim"),
]


@pytest.mark.parametrize("changes, message", BAD, ids=[f"{i:02d}-{next(iter(c))}" for i, (c, _) in enumerate(BAD)])
def test_bad_ladders(tmp_path, capsys, changes, message):
    ladder = {key: value for key, value in {**LADDER, **changes}.items() if value is not None}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**SWEEP, "models": {"ladder": ladder}, "store": str(tmp_path / "store")}))
    assert main(["plan", str(path)]) == 2
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", f"error: {message}\n")


def test_bad_models_mapping(tmp_path, capsys):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**SWEEP, "models": {"ladders": LADDER}, "store": str(tmp_path / "store")}))
    assert main(["plan", str(path)]) == 2
    assert capsys.readouterr().err == "error: models.ladder: is required\n"


# ---- pieces ---------------------------------------------------------------------------------------


def test_pieces_cut_at_line_ends():
    text = "".join(f"line {i:03d}\n" for i in range(100))  # 100 lines of 9 characters
    cut = pieces(text, 100)
    assert "".join(cut) == text
    assert [len(piece) for piece in cut] == [108] * 8 + [36]  # 12 lines reach 100 characters; 4 lines left
    assert pieces("no newline at the end", 5) == ["no newline at the end"] and pieces("", 5) == []


def test_piece_characters_keeps_hashes_when_unset_and_cuts_the_corpus(tmp_path):
    assert "piece_characters" not in CorpusConfig().model_dump(mode="json")  # old configs keep their hashes
    whole = TokenizeConfig.model_validate({"corpus": {"max_documents": 12}, "tokenizer": {"vocab_size": 300, "training_characters": "50K"},
                                       "validation_tokens": "2K"})
    cut = whole.model_copy(update={"corpus": whole.corpus.model_copy(update={"piece_characters": 1000})})
    assert tokenize_key(cut)["config"]["corpus"]["piece_characters"] == 1000 and tokenize_key(whole) != tokenize_key(cut)
    texts = list(read_texts(load_corpus(whole.corpus, tmp_path / "cache")))
    expected = sum(len(pieces(text, 1000)) for text in texts)
    assert list(read_texts(load_corpus(cut.corpus, tmp_path / "cache2"))) == [p for text in texts for p in pieces(text, 1000)]
    manifest = json.loads((tokenize(cut, tmp_path / "store") / "manifest.json").read_text())
    assert manifest["documents"] == expected > 3 * len(texts)
