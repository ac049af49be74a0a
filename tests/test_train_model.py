"""The model's exact sizes and FLOPs, the size table, the learning-rate schedule and RunConfig's checks.

Every parameter count here is written out by hand, matrix by matrix, and compared with both the
formula (`ModelShape.params`) and the real `Transformer`'s parameters; the FLOPs formula is
compared with torch's own FLOP counter on a real forward and backward pass.
"""

import math

import pytest
import torch
from pydantic import ValidationError
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from pipeline.config_files import validation_error
from stages.model import Transformer
from stages.run_config import RunConfig
from stages.schedule import Schedule
from stages.shapes import ModelConfig, ModelShape, shape_for_params


def _hand(layers, width, vocab, seq_len, mlp_ratio, learned, tied):
    """(total, non-embedding, embedding) from the list of every tensor of the model, written out."""
    block = (
        width * 3 * width  # qkv
        + width * width  # attention output
        + width * mlp_ratio * width  # MLP up
        + mlp_ratio * width * width  # MLP down
        + width  # norm1 scale
        + width  # norm2 scale
    )
    non_embedding = layers * block + width  # + final norm scale
    embedding = vocab * width + (seq_len * width if learned else 0) + (0 if tied else width * vocab)
    return non_embedding + embedding, non_embedding, embedding


# (shape, the hand count of (total, non-embedding, embedding) with every number spelled out)
SHAPES = [
    # layers=2, width=64, heads=2, V=512, T=64, MLP 4x. Per block: qkv 64*192=12288, out 64*64=4096,
    # up 64*256=16384, down 256*64=16384, norms 64+64 -> 49280; non-embedding 2*49280 + 64 = 98624.
    (ModelShape(2, 64, 2, 512, 64, 4, "rotary", True), (98624 + 32768, 98624, 512 * 64)),
    (ModelShape(2, 64, 2, 512, 64, 4, "rotary", False), (98624 + 65536, 98624, 2 * 512 * 64)),
    (ModelShape(2, 64, 2, 512, 64, 4, "learned", True), (98624 + 36864, 98624, 512 * 64 + 64 * 64)),
    (ModelShape(2, 64, 2, 512, 64, 4, "learned", False), (98624 + 69632, 98624, 2 * 512 * 64 + 64 * 64)),
    # layers=3, width=96, heads=3, V=300, T=128, MLP 2x, learned, untied. Per block: qkv 96*288=27648,
    # out 9216, up 96*192=18432, down 18432, norms 192 -> 73920; non-embedding 3*73920 + 96 = 221856;
    # embedding 300*96 (tokens) + 128*96 (positions) + 96*300 (output) = 28800 + 12288 + 28800 = 69888.
    (ModelShape(3, 96, 3, 300, 128, 2, "learned", False), (291744, 221856, 69888)),
    # layers=1, width=72, heads=8 (odd head dimension 9: allowed with learned positions), V=257, T=16.
    # Block: qkv 72*216=15552, out 5184, up 72*288=20736, down 20736, norms 144 -> 62352; +72 = 62424;
    # embedding 257*72 + 16*72 = 18504 + 1152 = 19656.
    (ModelShape(1, 72, 8, 257, 16, 4, "learned", True), (82080, 62424, 19656)),
]
IDS = ["2x64-rotary-tied", "2x64-rotary-untied", "2x64-learned-tied", "2x64-learned-untied", "3x96-mlp2-learned-untied", "1x72-odd-head"]


def _module_counts(model: Transformer) -> tuple[int, int, int]:
    """(total, non-embedding, embedding) of the real module; a tied output layer counted once."""
    named = dict(model.named_parameters())  # named_parameters() yields a shared tensor once
    every = list(model.named_parameters(remove_duplicate=False))
    unique = {id(p): p for _, p in every}
    assert len(named) == len(unique)
    total = sum(p.numel() for p in unique.values())
    embedding_ids = {id(model.embed.weight), id(model.head.weight)}
    if model.positions is not None:
        embedding_ids.add(id(model.positions.weight))
    embedding = sum(p.numel() for p in unique.values() if id(p) in embedding_ids)
    return total, total - embedding, embedding


@pytest.mark.parametrize(("shape", "hand"), SHAPES, ids=IDS)
def test_parameter_counts_match_the_hand_count_and_the_real_module(shape, hand):
    total, non_embedding, embedding = hand
    assert total == non_embedding + embedding
    assert _hand(shape.layers, shape.width, shape.vocab_size, shape.seq_len, shape.mlp_ratio,
                 shape.positions == "learned", shape.tie_embeddings) == hand  # fmt: skip
    assert tuple(shape.params) == hand
    assert (shape.params.total, shape.params.non_embedding, shape.params.embedding) == hand
    model = Transformer(shape)
    assert _module_counts(model) == hand
    assert sum(p.numel() for p in model.parameters()) == total
    assert (model.head.weight is model.embed.weight) == shape.tie_embeddings
    assert (model.positions is not None) == (shape.positions == "learned")


def test_tied_weights_are_one_tensor_counted_once():
    shape = ModelShape(2, 64, 2, 512, 64)
    model = Transformer(shape)
    with_duplicates = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    assert with_duplicates - sum(p.numel() for p in model.parameters()) == 512 * 64
    assert model.head.weight.data_ptr() == model.embed.weight.data_ptr()


@pytest.mark.parametrize(("shape", "hand"), SHAPES, ids=IDS)
def test_flops_per_token_formula(shape, hand):
    _, n, _ = hand
    flops = shape.flops_per_token
    assert flops.six_n == 6 * n
    attention = 12 * shape.layers * shape.seq_len * shape.width  # QK^T and AV, 2 T w each, x3 fwd+bwd
    output_layer = 6 * shape.width * shape.vocab_size
    assert flops.full == 6 * n + output_layer + attention


def test_flops_per_token_by_hand_for_the_small_shape():
    shape = ModelShape(2, 64, 2, 512, 64)
    # 6 * 98624 = 591744; output layer 6 * 64 * 512 = 196608; attention 12 * 2 * 64 * 64 = 98304
    assert shape.flops_per_token == (591744, 591744 + 196608 + 98304)
    assert shape.flops_per_token.full == 886656


@pytest.mark.parametrize(("shape", "hand"), [SHAPES[0], SHAPES[4]], ids=[IDS[0], IDS[4]])
def test_full_flops_equal_torch_flop_counter_on_a_training_step(shape, hand):
    """torch counts matmul FLOPs of forward + backward; the formula adds 6 FLOPs per norm scale on top."""
    torch.manual_seed(0)
    model = Transformer(shape)
    batch = 2
    tokens = torch.randint(0, shape.vocab_size, (batch, shape.seq_len))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(tokens).float().sum().backward()
    norm_scales = shape.layers * 2 * shape.width + shape.width
    per_token = counter.get_total_flops() / (batch * shape.seq_len)
    assert per_token == shape.flops_per_token.full - 6 * norm_scales
    counts = {str(op): value for op, value in counter.get_flop_counts()["Global"].items()}
    # the attention matmuls (bmm in the math kernel) are exactly the 12 L T w term
    assert counts["aten.bmm"] / (batch * shape.seq_len) == 12 * shape.layers * shape.seq_len * shape.width


def test_model_is_causal():
    shape = ModelShape(2, 64, 2, 512, 16)
    torch.manual_seed(0)
    model = Transformer(shape).eval()
    tokens = torch.randint(0, 512, (1, 16))
    changed = tokens.clone()
    changed[0, 9:] = (changed[0, 9:] + 1) % 512
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    assert a.shape == (1, 16, 512)
    assert torch.equal(a[0, :9], b[0, :9])
    assert (a[0, 9:] - b[0, 9:]).abs().max() > 1e-3


# --- the size table ------------------------------------------------------------------------------

FACTOR = 1.2  # the picked shape's non-embedding count is within this factor of the target
TARGETS = [100_000, 500_000, 1_000_000, 3_000_000, 10_000_000, 25_000_000, 85_000_000, 124_000_000, 350_000_000, 1_000_000_000]


def _non_embedding(layers, width, mlp_ratio=4):
    return _hand(layers, width, 1, 1, mlp_ratio, False, True)[1]


def _legal_shapes():
    """Every (layers, width) the module docstring's rules allow."""
    widths = list(range(32, 256, 32)) + list(range(256, 16384 + 1, 64))
    return [(layers, width) for layers in range(1, 129) for width in widths if 32 <= width / layers <= 128]


LEGAL = _legal_shapes()


@pytest.mark.parametrize("target", TARGETS)
def test_size_table_obeys_the_rules_and_is_nearest(target):
    layers, width, heads = shape_for_params(target)
    count = _non_embedding(layers, width)
    assert 1 / FACTOR <= count / target <= FACTOR, (layers, width, count)
    # width a multiple of 64 (of 32 below 256); head dimension 64 (32 below 256)
    if width >= 256:
        assert width % 64 == 0 and width // heads == 64 and width % heads == 0
    else:
        assert width % 32 == 0 and width // heads == 32 and width % heads == 0
    assert 32 <= width / layers <= 128 and 1 <= layers <= 128
    # nearest in log space over every legal shape, ties to the aspect ratio nearest 64
    best = min(LEGAL, key=lambda s: (abs(math.log(_non_embedding(*s) / target)), abs(math.log(s[1] / s[0] / 64))))
    assert abs(math.log(count / target)) == pytest.approx(abs(math.log(_non_embedding(*best) / target)), abs=1e-12)
    assert (layers, width) == best
    # the config route resolves to the same shape, and the model it builds has that many parameters
    shape = ModelConfig(params=target).shape(vocab_size=1000, seq_len=64)
    assert (shape.layers, shape.width, shape.heads) == (layers, width, heads)
    assert shape.params.non_embedding == count


@pytest.mark.parametrize(("target", "expected"), [(1_000_000, (3, 160, 5)), (10_000_000, (8, 320, 5)), (124_000_000, (15, 832, 13))])
def test_size_table_known_picks(target, expected):
    assert shape_for_params(target) == expected


def test_size_table_model_builds_with_its_count():
    shape = ModelConfig(params="1M").shape(vocab_size=512, seq_len=32)
    model = Transformer(shape)
    assert _module_counts(model) == tuple(shape.params)
    assert shape.params.non_embedding == 3 * (160 * 480 + 160 * 160 + 160 * 640 + 640 * 160 + 320) + 160 == 922720


# --- the schedule --------------------------------------------------------------------------------


@pytest.mark.parametrize("peak", [1e-3, 3e-4, 6e-4, 2e-3, 0.1])
def test_schedule_ends_at_exactly_a_tenth_of_the_peak(peak):
    schedule = Schedule(peak, 1000, 20_000)
    assert schedule.final_ratio == 0.1
    assert schedule.lr(20_000) == 0.1 * peak


def test_schedule_warmup_is_linear_and_reaches_the_peak():
    schedule = Schedule(2e-3, 1000, 20_000, 0.1)
    for tokens in (1, 10, 250, 500, 999):
        assert schedule.lr(tokens) == pytest.approx(2e-3 * tokens / 1000, rel=1e-15)
    assert schedule.lr(500) == 1e-3
    assert schedule.lr(1000) == 2e-3
    values = [schedule.lr(t) for t in range(1, 20_001)]
    assert max(values) == 2e-3 and values.index(max(values)) == 999  # only at tokens = 1000


def test_schedule_decays_monotonically_after_warmup():
    schedule = Schedule(1e-3, 1000, 20_000, 0.1)
    values = [schedule.lr(t) for t in range(1000, 20_001, 50)]
    assert all(a > b for a, b in zip(values, values[1:]))
    # half-way through the decay: the mid point of peak and final rate
    assert schedule.lr(10_500) == pytest.approx(0.55e-3, rel=1e-12)


def test_run_config_schedule_covers_exactly_d():
    config = RunConfig.model_validate({**GOOD, "optimizer": {"lr": 4e-3, "warmup": 0.25, "final_lr_ratio": 0.1}})
    schedule = config.schedule()
    assert (schedule.peak, schedule.warmup_tokens, schedule.total_tokens) == (4e-3, 2048, 8192)
    assert schedule.lr(8192) == 0.1 * 4e-3
    assert schedule.lr(2048) == 4e-3
    assert schedule.lr(1024) == 2e-3


# --- RunConfig: bad values name their field ------------------------------------------------------

GOOD = {"model": {"layers": 2, "width": 64, "heads": 2}, "seq_len": 32, "tokens": 8192, "unique_tokens": "20K", "batch_tokens": 512}

BAD = [
    ({"model": {"layers": 2, "width": 64, "heads": 3}}, "model.heads: 3 does not divide width 64"),
    ({"model": {"layers": 2, "width": 66, "heads": 2}}, "model.heads: 2 gives an odd head dimension 33"),
    ({"seq_len": 32, "unique_tokens": 32}, "seq_len: 32 is not shorter than unique_tokens 32"),
    ({"seq_len": 64, "unique_tokens": 40, "tokens": 640, "batch_tokens": 64}, "seq_len: 64 is not shorter than unique_tokens 40"),
    ({"tokens": 0}, "tokens: 0 must be a positive finite number"),
    ({"tokens": 512 * 3 + 32}, "tokens: 1568 is not a whole number of steps of batch_tokens 512"),
    ({"tokens": 8200}, "tokens: 8200 is not a multiple of seq_len 32"),
    ({"backend": "jax"}, "backend: 'jax' is not allowed"),
    ({"epochs": 3}, "epochs: unknown setting"),
    ({"optimizer": {"momentum": 0.9}}, "optimizer.momentum: unknown setting"),
    ({"batch_tokens": 32 * 15, "tokens": 32 * 15 * 4, "processes": 2},
     "batch_tokens: 15 sequences per step do not split evenly over 2 ranks"),
    ({"processes": 2, "micro_batch_size": 3}, "micro_batch_size: 3 does not divide the 8 sequences each of 2 ranks"),
    ({"optimizer": {"lr": -1e-3}}, "optimizer.lr: -0.001 is not allowed"),
    ({"processes": 0}, "processes: 0 is not allowed"),
    ({"eval_tokens": 32}, "eval_tokens: 32 must exceed seq_len 32"),
    ({"model": {"params": "1M", "layers": 2}}, "model.params: give either params"),
]


@pytest.mark.parametrize(("change", "message"), BAD, ids=[m.split(":")[0] + f"#{i}" for i, (_, m) in enumerate(BAD)])
def test_bad_run_config_names_the_field(change, message):
    with pytest.raises(ValidationError) as caught:
        RunConfig.model_validate({**GOOD, **change})
    field = message.split(":")[0]
    assert field.split(".")[-1] in str(caught.value)
    line = str(validation_error(caught.value, RunConfig))
    assert line.startswith(message), line
    assert "\n" not in line


def test_good_config_and_its_micro_batching():
    config = RunConfig.model_validate({**GOOD, "micro_batch_size": 2, "processes": 2})
    assert config.batch_size == 16
    assert config.micro_batching(2) == (2, 4)
    assert config.micro_batching(1) == (2, 8)
    assert RunConfig.model_validate(GOOD).micro_batching(4) == (4, 1)
    with pytest.raises(ValueError, match="batch_tokens: 16 sequences per step do not split evenly over 3 ranks"):
        config.check_world(3)
    # odd head dimensions are fine with learned positions
    learned = RunConfig.model_validate({**GOOD, "model": {"layers": 1, "width": 72, "heads": 8, "positions": "learned"}})
    assert learned.model.shape(512, 32).params.non_embedding == 62424


def test_operational_fields_stay_out_of_the_hash():
    base = RunConfig.model_validate(GOOD)
    operational = RunConfig.model_validate({**GOOD, "processes": 2, "micro_batch_size": 4, "checkpoint_every": 5, "log_every": 2,
                                            "keep_checkpoints": 3, "eval_batch_size": 4, "wandb": {"mode": "disabled"}})  # fmt: skip
    assert operational.hashed() == base.hashed()
    assert RunConfig.model_validate({**GOOD, "seed": 1}).hashed() != base.hashed()
