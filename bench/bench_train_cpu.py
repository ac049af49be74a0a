"""Benchmark of the train stage on CPU: our training path against a minimal single-file GPT.

Ours is the real stage, `stages.launch.train` (one process, backend torch, fp32, W&B off): the
sampler over a tokenize artifact, the model of `stages.model`, the torch engine (AdamW, gradient
clipping), the schedule, a metric line per step, and at the end the checkpoint and validation.
The baseline is written here as a nanoGPT-like single file of the same shape and batch (layers,
width, heads, vocabulary, seq_len, sequences per step, tied output layer, no biases, AdamW with
decay on matrices only, clipping at 1.0, fp32), fed random windows of the same token file.

Every run is a fresh process, as a user would start either one (`dcsl train`, `python
minimal_gpt.py`), so a process-wide setting one side makes does not reach the other: the stage
keeps freed memory in the process for re-use on CPU (`stages.host_memory`), the baseline runs with
the C library's defaults. Both are timed per step over the same steps after the same warm-up
(ours through the stage's progress callback, which fires after each step's metric line is
written, so the sampler, the schedule and the metric line are inside every step's time). Rounds
alternate ours and the baseline so slower stretches hit both alike. On a shared machine other jobs
stall single steps and sometimes whole runs, so the RATIO uses the 20th percentile of all
measured step times of all rounds: a cost paid on every step is in every step time and so in the
percentile, while stalls from other jobs are not. The median over rounds of each run's median
step time, and of each run's mean, are printed too. Positions are compared both ways, learned
(nanoGPT's) and rotary (the stage's default), each against a baseline with the same kind.

Both sides run with the same number of torch threads, 1 by default (OMP_NUM_THREADS, which the
stage respects): two OpenMP threads on two cores that other jobs also use wait on each other
and a step can take 20x its time, where one thread just runs slower in proportion.

Usage: python bench/bench_train_cpu.py [--rounds N] [--threads N]
(`--worker ...` is how the benchmark starts each run's process.)
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="dcsl-bench-hf-"))
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
THREADS = int(sys.argv[sys.argv.index("--threads") + 1]) if "--threads" in sys.argv else 1
os.environ["OMP_NUM_THREADS"] = str(THREADS)  # before torch is imported; the stage keeps a set OMP_NUM_THREADS
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from stages.data import TokenData  # noqa: E402
from stages.launch import train  # noqa: E402
from stages.record import read_record  # noqa: E402
from stages.run_config import RunConfig  # noqa: E402
from stages.tokenize import TokenizeConfig, tokenize  # noqa: E402

DATA = {"corpus": {"source": "stdlib"}, "tokenizer": {"vocab_size": 4096, "training_characters": "5M"}, "validation_tokens": "200K"}
# The tiny study's smallest sizes: (layers, width, heads, sequences per step), seq_len 128.
SHAPES = [(2, 64, 2, 8), (4, 128, 4, 16)]
SEQ_LEN = 128
WARMUP_STEPS = 10
MEASURED_STEPS = {(2, 64, 2, 8): 60, (4, 128, 4, 16): 25}
OPTIMIZER = {"lr": 1e-3, "warmup": 0.05, "final_lr_ratio": 0.1, "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "grad_clip": 1.0}


# ---------------------------------------------------------------- the baseline: a minimal GPT
class _Attention(nn.Module):
    def __init__(self, width: int, heads: int, rotary: tuple[torch.Tensor, torch.Tensor] | None):
        super().__init__()
        self.heads = heads
        self.c_attn = nn.Linear(width, 3 * width, bias=False)
        self.c_proj = nn.Linear(width, width, bias=False)
        self.rotary = rotary

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        k = k.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        v = v.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        if self.rotary is not None:
            cos, sin = self.rotary
            q, k = _rotate(q, cos[:T], sin[:T]), _rotate(k, cos[:T], sin[:T])
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


class _Block(nn.Module):
    def __init__(self, width: int, heads: int, rotary):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, bias=False)
        self.attn = _Attention(width, heads, rotary)
        self.ln_2 = nn.LayerNorm(width, bias=False)
        self.c_fc = nn.Linear(width, 4 * width, bias=False)
        self.c_proj = nn.Linear(4 * width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.c_proj(F.gelu(self.c_fc(self.ln_2(x))))


class MinimalGPT(nn.Module):
    def __init__(self, layers: int, width: int, heads: int, vocab: int, seq_len: int, positions: str):
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.wpe = nn.Embedding(seq_len, width) if positions == "learned" else None
        rotary = None
        if positions == "rotary":
            head = width // heads
            angles = torch.outer(torch.arange(seq_len).float(), 1.0 / 10000.0 ** (torch.arange(0, head, 2).float() / head))
            rotary = (torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1))
        self.h = nn.ModuleList(_Block(width, heads, rotary) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width, bias=False)
        self.lm_head = nn.Linear(width, vocab, bias=False)
        self.lm_head.weight = self.wte.weight
        for name, p in self.named_parameters():
            if p.dim() == 1:
                continue
            std = 0.02 / math.sqrt(2 * layers) if name.endswith("c_proj.weight") else 0.02
            nn.init.normal_(p, std=std)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx)
        if self.wpe is not None:
            x = x + self.wpe.weight[: idx.shape[1]]
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def run_baseline(tokens: np.ndarray, vocab: int, shape: tuple, steps: int, positions: str) -> list[float]:
    """Train the minimal GPT for `steps` steps; return the time after each step."""
    layers, width, heads, batch = shape
    torch.manual_seed(0)
    model = MinimalGPT(layers, width, heads, vocab, SEQ_LEN, positions)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = OPTIMIZER
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": opt["weight_decay"]}, {"params": other, "weight_decay": 0.0}],
        lr=opt["lr"], betas=(opt["beta1"], opt["beta2"]), eps=opt["eps"],
    )  # fmt: skip
    warmup = max(1, int(opt["warmup"] * steps))
    rng = np.random.default_rng(0)
    stamps = []
    for step in range(steps):
        lr = opt["lr"] * min(1.0, (step + 1) / warmup)  # nanoGPT-style warmup (+ cosine, not needed for speed)
        for group in optimizer.param_groups:
            group["lr"] = lr
        starts = rng.integers(0, len(tokens) - SEQ_LEN - 1, batch)
        x = torch.from_numpy(np.stack([tokens[s : s + SEQ_LEN].astype(np.int64) for s in starts]))
        y = torch.from_numpy(np.stack([tokens[s + 1 : s + 1 + SEQ_LEN].astype(np.int64) for s in starts]))
        loss = model(x, y)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), opt["grad_clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # nanoGPT logs every step (log_interval = 1)
        stamps.append(time.perf_counter())
    return stamps


# ---------------------------------------------------------------- ours: the train stage
def run_ours(artifact: Path, store: Path, shape: tuple, steps: int, positions: str, name: str) -> tuple[list[float], dict]:
    """The train stage end to end for `steps` steps; return the time after each step and the run record."""
    layers, width, heads, batch = shape
    config = RunConfig.model_validate({
        "name": name,
        "model": {"layers": layers, "width": width, "heads": heads, "positions": positions},
        "seq_len": SEQ_LEN,
        "tokens": steps * batch * SEQ_LEN,
        "unique_tokens": 1_000_000,
        "batch_tokens": batch * SEQ_LEN,
        "optimizer": OPTIMIZER,
        "backend": "torch",
        "device": "cpu",
        "precision": "fp32",
        "eval_tokens": 16 * SEQ_LEN + 1,
        "wandb": {"mode": "disabled"},
    })  # fmt: skip
    stamps: list[float] = []
    started = time.perf_counter()
    run_dir = train(config, artifact, store, progress=lambda record, total: stamps.append(time.perf_counter()))
    record = read_record(run_dir).model_dump()
    record["stage_wall_seconds"] = time.perf_counter() - started
    assert len(stamps) == steps, (len(stamps), steps)
    return stamps, record


def _step_times(stamps: list[float]) -> np.ndarray:
    """Seconds of each step after the warm-up."""
    return np.diff(stamps[WARMUP_STEPS - 1 :])


def _summary(runs: list[np.ndarray], tokens_per_step: int) -> dict:
    """Tokens/s: pooled 20th-percentile step, median of run medians, median of run means; per-round medians."""
    return {
        "p20": tokens_per_step / float(np.percentile(np.concatenate(runs), 20)),
        "median": tokens_per_step / statistics.median(float(np.median(r)) for r in runs),
        "mean": tokens_per_step / statistics.median(float(np.mean(r)) for r in runs),
        "rounds": [tokens_per_step / float(np.median(r)) for r in runs],
    }


def _worker(argv: list[str]) -> None:
    """One run in this process: `--worker ours|base ARTIFACT LAYERS,WIDTH,HEADS,BATCH STEPS POSITIONS`; prints JSON."""
    who, artifact, shape_text, steps_text, positions = argv
    shape, steps = tuple(int(part) for part in shape_text.split(",")), int(steps_text)
    if who == "ours":
        with tempfile.TemporaryDirectory(prefix="dcsl-bench-run-") as store:
            stamps, record = run_ours(Path(artifact), Path(store), shape, steps, positions, "bench")
    else:
        data = TokenData(Path(artifact))
        tokens = np.asarray(data.budget(1_000_000))
        stamps, record = run_baseline(tokens, data.manifest["tokenizer"]["vocab_size"], shape, steps, positions), {}
    print(json.dumps({"stamps": stamps, "record": record}))


def _run_in_process(who: str, artifact: Path, shape: tuple, steps: int, positions: str) -> tuple[np.ndarray, dict]:
    """Step times after the warm-up, and the run record (ours), of one run in a fresh process."""
    command = [sys.executable, __file__, "--threads", str(THREADS), "--worker", who, str(artifact), ",".join(map(str, shape)), str(steps), positions]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"{who} run failed:\n{result.stderr[-3000:]}")
    answer = json.loads(result.stdout.splitlines()[-1])
    assert len(answer["stamps"]) == steps, (len(answer["stamps"]), steps)
    return _step_times(answer["stamps"]), answer["record"]


def main() -> None:
    if "--worker" in sys.argv:
        return _worker(sys.argv[sys.argv.index("--worker") + 1 :])
    rounds = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 8
    with tempfile.TemporaryDirectory(prefix="dcsl-bench-train-") as folder:
        work = Path(folder)
        started = time.perf_counter()
        artifact = tokenize(TokenizeConfig.model_validate(DATA), work / "store")
        vocab = TokenData(artifact).manifest["tokenizer"]["vocab_size"]
        print(f"data: Python stdlib corpus, vocab {vocab}, U = 1M tokens (tokenized in {time.perf_counter() - started:.0f} s)")
        print(f"torch {torch.__version__}, {THREADS} threads per run, {os.cpu_count()} CPUs; fp32; {rounds} rounds alternating "
              f"ours and baseline, each run its own process; tokens/s over the steps after {WARMUP_STEPS} warm-up steps")
        for shape in SHAPES:
            layers, width, heads, batch = shape
            steps = WARMUP_STEPS + MEASURED_STEPS[shape]
            tokens_per_step = batch * SEQ_LEN
            for positions in ("learned", "rotary"):
                times: dict[str, list[np.ndarray]] = {"ours": [], "base": []}
                for index in range(rounds):
                    for who in ("ours", "base") if index % 2 == 0 else ("base", "ours"):
                        step_times, answer = _run_in_process(who, artifact, shape, steps, positions)
                        times[who].append(step_times)
                        if who == "ours":
                            record = answer
                label = f"L{layers} w{width} h{heads} batch {batch}x{SEQ_LEN} {positions}"
                print(f"shape {label}: {record['params']:,} parameters, {steps} steps per run")
                summaries = {}
                for who, name in (("base", "baseline minimal GPT"), ("ours", "ours (train stage)  ")):
                    summary = summaries[who] = _summary(times[who], tokens_per_step)
                    print(f"  {name} tokens/s: {summary['p20']:>7,.0f} (20th-percentile step); median of runs {summary['median']:,.0f}, "
                          f"of run means {summary['mean']:,.0f}; per round {', '.join(f'{r:,.0f}' for r in summary['rounds'])}")
                print(f"  ours end to end: {record['stage_wall_seconds']:.1f} s wall for {steps} steps (model set-up, "
                      f"final checkpoint and validation included)")
                ours_s, base_s = summaries["ours"], summaries["base"]
                print(f"RATIO ours / minimal GPT tokens/s, {label} = {ours_s['p20'] / base_s['p20']:.2f}  (target >= 1.0; "
                      f"median of runs {ours_s['median'] / base_s['median']:.2f}, of run means {ours_s['mean'] / base_s['mean']:.2f})", flush=True)


if __name__ == "__main__":
    main()
