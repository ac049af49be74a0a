"""GPU benchmarks of the train stage: MFU of a GPT-2-small-sized model, and DeepSpeed ZeRO-2 against plain torch.

1. MFU: a 124M-parameter GPT (12 layers, width 768, 12 heads, vocabulary 50304, seq_len 1024,
   rotary positions, tied output layer) trained by the stage (`stages.launch.train`: sampler,
   engine, schedule, metric lines, checkpoint, validation) with bf16 autocast and
   `compile: true`, for several micro-batch sizes (no gradient accumulation). MFU = tokens/s x
   the full FLOPs per token (`ModelShape.flops_per_token.full`: 6N + output layer + attention)
   / the device's dense bf16 peak (`stages.metrics.peak_flops`: 989.4e12 for an H100 SXM).
   Tokens/s is the median over the metric windows (`log_every` steps each) after the first two,
   which hold the compilation. An uncompiled run is printed for reference.
2. DeepSpeed: the same model, seed and data, 60 steps with 2 micro-batches of accumulation,
   backend deepspeed (ZeRO stage 2, one rank) against backend torch (both uncompiled; the
   config forbids compile with deepspeed). The torch run is repeated once: its own run-to-run
   difference (bf16 kernels with atomics are not bitwise deterministic) is the noise floor.

The data is synthetic so that nothing needs downloading or a tokenizer: an order-1 Markov chain
over the vocabulary (each token has 4 successors, token frequencies Zipf-like), written as a
tokenize artifact (tokens.bin + manifest.json + SUCCESS) that `stages.data.TokenData` reads; the
loss falls from ln(50304) = 10.8 towards ln(4), so the loss curves have a shape to compare.

Every run is a child process (`--child`), so compilation caches, process groups and GPU memory
do not carry from one run to the next.

Usage: python bench/bench_train_gpu.py [--only mfu|deepspeed] [--micro 16,32] [--steps 150]
       python bench/bench_train_gpu.py --smoke    # CPU, tiny shape: checks the code paths, not speed
On the device machine (no network) pydantic and deepspeed travel as wheels; see BENCHMARKS.md.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from stages.artifacts import mark_success  # noqa: E402

VOCAB = 50304
SEQ_LEN = 1024
SMOKE = {"vocab": 4096, "seq_len": 64, "model": {"layers": 2, "width": 64, "heads": 2}}  # --smoke: CPU, tiny
MODEL = {"layers": 12, "width": 768, "heads": 12}
MFU_TARGET = 0.45
DS_TARGET = 1e-2  # max relative difference of any step's loss, DeepSpeed against torch
UNIQUE = 4_000_000
VALIDATION = 200_000


def make_artifact(folder: Path, vocab: int, tokens: int, validation: int, seed: int = 0) -> Path:
    """A tokenize artifact of synthetic tokens: an order-1 Markov chain with 4 successors per token."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, vocab + 1) ** 1.1  # Zipf-like token frequencies
    successors = rng.choice(vocab, size=(vocab, 4), p=weights / weights.sum())
    choices = rng.integers(0, 4, tokens)
    chain = np.empty(tokens, dtype=np.uint16 if vocab <= 1 << 16 else np.uint32)
    token = 0
    table = successors.tolist()
    for index, choice in enumerate(choices.tolist()):
        token = table[token][choice]
        chain[index] = token
    folder.mkdir(parents=True, exist_ok=True)
    chain.tofile(folder / "tokens.bin")
    manifest = {
        "name": "markov",
        "hash": f"markov-{vocab}-{tokens}-{seed}",
        "format": 1,
        "tokenizer": {"trained": False, "vocab_size": vocab, "eod_token": None, "eod_id": vocab - 1},
        "dtype": chain.dtype.name,
        "documents": 1,
        "tokens": tokens,
        "validation": {"start": 0, "tokens": validation, "documents": 0},
        "train": {"start": validation, "tokens": tokens - validation, "documents": 1},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    mark_success(folder)
    return folder


def run_config(name: str, steps: int, micro: int, accumulation: int, *, compile: bool, backend: str, log_every: int,
               smoke: bool) -> dict:  # fmt: skip
    """A RunConfig (as a dict) for `steps` optimiser steps of micro * accumulation sequences."""
    seq_len = SMOKE["seq_len"] if smoke else SEQ_LEN
    batch_tokens = micro * accumulation * seq_len
    return {
        "name": name,
        "model": SMOKE["model"] if smoke else MODEL,
        "seq_len": seq_len,
        "tokens": steps * batch_tokens,
        "unique_tokens": min(UNIQUE, steps * batch_tokens) if not smoke else 100_000,
        "batch_tokens": batch_tokens,
        "micro_batch_size": micro,
        "optimizer": {"lr": 1e-3, "warmup": 0.1, "final_lr_ratio": 0.1, "weight_decay": 0.1, "grad_clip": 1.0},
        "backend": backend,
        "zero_stage": 2,
        "precision": "fp32" if smoke else "bf16",
        "device": "cpu" if smoke else "cuda",
        "compile": compile,
        "seed": 0,
        "log_every": log_every,
        "eval_tokens": 8 * seq_len + 1,
        "wandb": {"mode": "disabled"},
    }


def child(config_json: str, data: str, store: str) -> None:
    """One run, in its own process: the stage end to end; prints the run directory and peak GPU memory."""
    import torch

    from stages.launch import train
    from stages.run_config import RunConfig

    config = RunConfig.model_validate_json(config_json)
    run_dir = train(config, Path(data), Path(store))
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    print(json.dumps({"run_dir": str(run_dir), "peak_gib": peak}))


def launch(config: dict, data: Path, store: Path) -> tuple[dict, list[dict], float, float]:
    """Run one config in a child process: (run record, metric records, peak GPU GiB, wall seconds)."""
    from stages.metrics import read_metrics

    started = time.perf_counter()
    result = subprocess.run([sys.executable, __file__, "--child", json.dumps(config), str(data), str(store)],
                            capture_output=True, text=True)  # fmt: skip
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-4000:] + result.stderr[-8000:])
        raise SystemExit(f"run {config['name']} failed with exit code {result.returncode}")
    line = json.loads(result.stdout.strip().splitlines()[-1])
    run_dir = Path(line["run_dir"])
    return json.loads((run_dir / "run.json").read_text()), read_metrics(run_dir), line["peak_gib"], seconds


def bench_mfu(data: Path, work: Path, micros: list[int], steps: int, smoke: bool) -> None:
    from stages.shapes import ModelShape

    shape = (ModelShape(**SMOKE["model"], vocab_size=SMOKE["vocab"], seq_len=SMOKE["seq_len"]) if smoke
             else ModelShape(**MODEL, vocab_size=VOCAB, seq_len=SEQ_LEN))  # fmt: skip
    flops = shape.flops_per_token.full
    print(f"model: {shape.params.total:,} parameters ({shape.params.non_embedding:,} non-embedding), "
          f"{flops / 1e6:,.1f} MFLOP per token (full count: 6N + output layer + attention)")  # fmt: skip
    rows = []
    for micro, compile in [(m, True) for m in micros] + [(micros[0], False)]:
        log_every = max(1, steps // 10)
        name = f"mfu-m{micro}-{'compiled' if compile else 'eager'}"
        config = run_config(name, steps, micro, 1, compile=compile, backend="torch", log_every=log_every, smoke=smoke)
        record, metrics, peak_gib, seconds = launch(config, data, work / name)
        windows = [m for m in metrics if m["step"] % log_every == 0][2:]  # the first two hold the compilation
        rate = statistics.median(m["tokens_per_s"] for m in windows)
        peak = record["peak_flops"]
        mfu = rate * flops / peak if peak else float("nan")
        rows.append((micro, compile, rate, mfu, peak, record, peak_gib, seconds))
        print(f"  micro-batch {micro:>3} x {config['seq_len']} {'compiled' if compile else 'eager   '}: {rate:>12,.0f} tokens/s, "
              f"MFU {mfu:.1%} of {peak / 1e12 if peak else float('nan'):.1f} TFLOP/s; peak GPU memory {peak_gib:.1f} GiB; "
              f"loss {metrics[-1]['loss']:.3f} after {steps} steps; run {seconds:.0f} s wall")  # fmt: skip
    record = rows[-1][5]
    print(f"device: {record['device']}; torch {_torch_version()}; bf16 autocast; {steps} steps per run, log_every {max(1, steps // 10)}")
    best = max((r for r in rows if r[1]), key=lambda r: r[3])
    print(f"RATIO MFU, 124M GPT, our train stage (compile, micro-batch {best[0]}) = {best[3]:.3f}  (target >= {MFU_TARGET})")


def bench_deepspeed(data: Path, work: Path, smoke: bool) -> None:
    steps, micro, accumulation = (60, 8, 2)
    runs = {}
    for label, backend in (("torch", "torch"), ("torch again", "torch"), ("deepspeed ZeRO-2", "deepspeed")):
        config = run_config("ds-" + backend, steps, micro, accumulation, compile=False, backend=backend, log_every=1, smoke=smoke)
        record, metrics, peak_gib, seconds = launch(config, data, work / label.replace(" ", "-"))
        runs[label] = (record, metrics, peak_gib, seconds)
        losses = [m["loss"] for m in metrics]
        print(f"  {label:<17} loss step 1 {losses[0]:.4f}, step {steps // 2} {losses[steps // 2 - 1]:.4f}, step {steps} {losses[-1]:.4f}; "
              f"val {record['val_loss']:.4f}; {record['tokens_per_s']:,.0f} tokens/s; peak GPU memory {peak_gib:.1f} GiB; {seconds:.0f} s")  # fmt: skip

    def max_relative(a: str, b: str) -> float:
        first, second = (np.array([m["loss"] for m in runs[k][1]]) for k in (a, b))
        return float(np.max(np.abs(first - second) / np.abs(first)))

    seq_len = SMOKE["seq_len"] if smoke else SEQ_LEN
    print(f"device: {runs['torch'][0]['device']}; {steps} steps of {micro} x {accumulation} sequences of {seq_len} tokens; "
          f"peak GPU memory is n/a for deepspeed (its rank runs under torchrun)")
    print(f"  max relative loss difference, torch against torch (noise floor): {max_relative('torch', 'torch again'):.2e}")
    print(f"  validation loss: torch {runs['torch'][0]['val_loss']:.5f}, deepspeed {runs['deepspeed ZeRO-2'][0]['val_loss']:.5f}")
    print(f"RATIO max relative loss difference over {steps} steps, deepspeed ZeRO-2 / torch = "
          f"{max_relative('torch', 'deepspeed ZeRO-2'):.2e}  (target <= {DS_TARGET:g})")


def _torch_version() -> str:
    import torch

    return torch.__version__


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child(*sys.argv[2:5])
        return
    smoke = "--smoke" in sys.argv
    only = sys.argv[sys.argv.index("--only") + 1] if "--only" in sys.argv else None
    micros = [int(m) for m in sys.argv[sys.argv.index("--micro") + 1].split(",")] if "--micro" in sys.argv else [16, 32]
    steps = int(sys.argv[sys.argv.index("--steps") + 1]) if "--steps" in sys.argv else (30 if smoke else 150)
    if not smoke:
        import torch

        if not torch.cuda.is_available():
            print("bench_train_gpu: skipped, no CUDA device here (--smoke checks the code paths on CPU)")
            return
    with tempfile.TemporaryDirectory(prefix="dcsl-bench-gpu-") as folder:
        work = Path(folder)
        started = time.perf_counter()
        vocab = SMOKE["vocab"] if smoke else VOCAB
        data = make_artifact(work / "data", vocab, (200_000 if smoke else UNIQUE) + VALIDATION, VALIDATION)
        print(f"data: synthetic Markov tokens, vocab {vocab}, {(work / 'data' / 'tokens.bin').stat().st_size // 2:,} tokens "
              f"({time.perf_counter() - started:.1f} s to make)")  # fmt: skip
        if only in (None, "mfu"):
            print("== MFU of the train stage ==")
            bench_mfu(data, work, [2] if smoke else micros, steps, smoke)
        if only in (None, "deepspeed"):
            print("== DeepSpeed ZeRO-2 against torch, same seed and data ==")
            bench_deepspeed(data, work, smoke)


if __name__ == "__main__":
    main()
