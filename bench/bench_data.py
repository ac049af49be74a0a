"""Benchmarks of the data stage; every ratio is against a baseline measured in the same run.

1. Throughput: the tokenize stage end to end (reading the corpus through `datasets`, tokenizing,
   writing the memmap, index and manifest) against `Tokenizer.encode_batch` on the same texts
   already in memory, one process each (TOKENIZERS_PARALLELISM=false); then 1 vs 2 processes.
2. Clean split: the dedup stage (MinHash signatures, exact and near-duplicate removal), the split's
   near-duplicate clusters and the contamination measure, against tokenizing the same corpus with
   the same (given) tokenizer, one process: the stage's own phase timings, one run.
3. Memory: peak resident memory of tokenizing the default corpus and a corpus 10x larger (the split's
   clusters and the contamination measure included, as by default), then the same with dedup.
4. Sampler: batches per second of the sampler against batches per second a minimal GPT
   (MODEL_SHAPE below, forward + backward + AdamW on CPU) consumes.

Usage: python bench/bench_data.py [--skip-memory | --memory-only | --clean-only]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="dcsl-bench-hf-"))
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.corpus import stdlib_files  # noqa: E402
from stages.data import TokenData  # noqa: E402
from stages.sampler import SequenceSampler  # noqa: E402
from stages.tokenize import TokenizeConfig, tokenize  # noqa: E402

DEFAULT = {"corpus": {"source": "stdlib"}, "tokenizer": {"vocab_size": 8192}, "validation_tokens": "200K"}
MODEL_SHAPE = {"layers": 2, "width": 64, "heads": 4, "seq_len": 128, "batch": 8}  # re-point to the tiny study's smallest model


def _stdlib_texts() -> list[str]:
    return [p.read_bytes().decode("utf-8", errors="replace") for p in stdlib_files()]


def bench_throughput(work: Path) -> Path:
    """Stage tokens/s against encode_batch tokens/s; 1 vs 2 processes. Returns the artifact."""
    from tokenizers import Tokenizer

    artifact = tokenize(TokenizeConfig.model_validate(DEFAULT), work / "trained")
    tokenizer_json = str(artifact / "tokenizer.json")
    tokenizer = Tokenizer.from_file(tokenizer_json)
    texts = _stdlib_texts()
    baselines = {}
    for method in ("encode_batch", "encode_batch_fast"):
        started = time.perf_counter()
        count = sum(len(e.ids) + 1 for e in getattr(tokenizer, method)(texts))  # +1: the end-of-document token
        baselines[method] = count / (time.perf_counter() - started)
    stage, cpu = {}, {}
    for processes in (1, 2):
        config = TokenizeConfig.model_validate({**DEFAULT, "tokenizer": {"path": tokenizer_json}, "num_proc": processes})
        started, cpu_before = time.perf_counter(), _cpu_seconds()
        out = tokenize(config, work / f"given-{processes}")
        seconds, cpu[processes] = time.perf_counter() - started, _cpu_seconds() - cpu_before
        tokens = TokenData(out).manifest["tokens"]
        assert tokens == count, (tokens, count)
        stage[processes] = tokens / seconds
    print(f"corpus: Python {sys.version.split()[0]} stdlib, {len(texts)} documents, {count:,} tokens (vocab 8192)")
    for method, rate in baselines.items():
        print(f"  baseline {method:<18} 1 process  {rate:>12,.0f} tokens/s")
    for processes, rate in stage.items():
        print(f"  stage end to end   num_proc={processes}       {rate:>12,.0f} tokens/s")
    print(f"RATIO stage(1 proc) / encode_batch      = {stage[1] / baselines['encode_batch']:.2f}  (target >= 0.8)")
    print(f"RATIO stage(1 proc) / encode_batch_fast = {stage[1] / baselines['encode_batch_fast']:.2f}  (for reference)")
    print(f"RATIO speed-up 2 processes / 1 process  = {stage[2] / stage[1]:.2f}  (ideal 2.0; {os.cpu_count()} cores, wall clock)")
    print(f"  CPU seconds: {cpu[1]:.1f} with 1 process, {cpu[2]:.1f} with 2 (all processes); work added by splitting "
          f"{cpu[2] / cpu[1] - 1:+.0%}, so speed-up on 2 idle cores <= {2 * cpu[1] / cpu[2]:.2f}")
    return artifact


def bench_clean_split(work: Path, tokenizer_json: str) -> None:
    """Seconds of the clean pass against tokenizing, with the split's clusters alone (the default) and with dedup:
    the dedup stage, the clusters (signatures computed, or reused from dedup) and the contamination measure."""
    for label, extra in (("split (default)", {}), ("split + dedup", {"dedup": {}})):
        config = TokenizeConfig.model_validate({**DEFAULT, "tokenizer": {"path": tokenizer_json}, **extra})
        store = work / f"clean-{len(extra)}"
        data = TokenData(tokenize(config, store))
        phases = data.manifest["phase_seconds"]
        deduplicated = [json.loads((path / "manifest.json").read_text()) for path in (store / "dedup").glob("*")]
        dedup_seconds = deduplicated[0]["seconds"] if deduplicated else 0.0
        clean = dedup_seconds + phases["near_duplicates"] + phases["contamination"]
        print(f"{label}: {data.manifest['split']['clusters']:,} clusters, largest {data.manifest['split']['largest_cluster']}; "
              f"contamination overall {data.manifest['contamination']['overall']:.4%}")
        if deduplicated:
            removed = data.manifest["dedup"]
            print(f"  dedup stage (read corpus, signatures, exact + near): {dedup_seconds:6.2f} s; removed {removed['documents']} "
                  f"documents ({removed['exact']} exact, {removed['near']} near), {removed['tokens']:,} tokens")
        print(f"  split clusters ({'signatures reused' if deduplicated else 'signatures computed'}): {phases['near_duplicates']:6.2f} s")
        print(f"  contamination ({data.manifest['contamination']['windows']:,} windows, {data.train_tokens:,} training tokens): "
              f"{phases['contamination']:6.2f} s")
        print(f"  tokenizing (given tokenizer, 1 process, write): {phases['tokenizing']:6.2f} s")
        print(f"RATIO clean pass / tokenizing, {label:<15} = {clean / phases['tokenizing']:.2f}  (target <= 0.5)")


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def _write_copies(path: Path, copies: int) -> None:
    texts = _stdlib_texts()
    with open(path, "w") as out:
        for copy in range(copies):
            for text in texts:
                out.write(json.dumps({"text": f"# copy {copy}\n{text}"}) + "\n")


def _peak_rss_child(settings: dict, store: str) -> None:
    """Run in a fresh process: tokenize, sampling the RSS of this process plus its children."""
    peak = [0, 0]
    done = threading.Event()

    def tree_rss() -> tuple[int, int]:
        """(VmRSS, RssAnon) in KiB summed over this process and its descendants."""
        total = anonymous = 0
        pids = [os.getpid()]
        while pids:
            pid = pids.pop()
            try:
                with open(f"/proc/{pid}/status") as status:
                    fields = dict(line.split(":", 1) for line in status if line.startswith(("VmRSS:", "RssAnon:")))
                total += int(fields["VmRSS"].split()[0])
                anonymous += int(fields["RssAnon"].split()[0])
                for task in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{task}/children") as children:
                        pids.extend(int(c) for c in children.read().split())
            except (FileNotFoundError, ProcessLookupError, KeyError):
                continue
        return total, anonymous

    def sample() -> None:
        while not done.is_set():
            total, anonymous = tree_rss()
            peak[0], peak[1] = max(peak[0], total), max(peak[1], anonymous)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    artifact = tokenize(TokenizeConfig.model_validate(settings), Path(store))
    done.set()
    sampler.join()
    result = {
        "seconds": time.perf_counter() - started,
        "tokens": TokenData(artifact).manifest["tokens"],
        "rss_peak_mib": peak[0] / 1024,
        "anonymous_peak_mib": peak[1] / 1024,
    }
    print(json.dumps(result))


def bench_memory(work: Path) -> None:
    """Peak RSS of the default corpus against a 10x corpus (a JSONL file of 10 copies); then both with dedup."""
    big = work / "stdlib_x10.jsonl"
    _write_copies(big, 10)
    runs = {}
    variants = ((2, "split"), (1, "split"), (1, "split + dedup"))
    for processes, steps in variants:
        for label, corpus in (("default (stdlib)", {"source": "stdlib"}), ("10x (JSONL)", {"source": "local", "path": str(big)})):
            settings = {**DEFAULT, "corpus": corpus, "num_proc": processes, **({"dedup": {}} if "dedup" in steps else {})}
            store = str(work / f"mem-{processes}-{len(runs)}")
            command = [sys.executable, __file__, "--rss-child", json.dumps(settings), store]
            runs[(processes, steps, label)] = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    for (processes, steps, label), r in runs.items():
        print(
            f"  num_proc={processes} {steps:<13} {label:<17} {r['tokens']:>12,} tokens {r['seconds']:7.1f} s  peak MiB over "
            f"all processes: RSS {r['rss_peak_mib']:.0f}, of which anonymous {r['anonymous_peak_mib']:.0f}"
        )
    for processes, steps in variants:
        small, large = runs[(processes, steps, "default (stdlib)")], runs[(processes, steps, "10x (JSONL)")]
        for key in ("rss_peak_mib", "anonymous_peak_mib"):
            label = {"rss_peak_mib": "RSS", "anonymous_peak_mib": "anonymous RSS"}[key]
            print(f"RATIO peak {label:<13} 10x / default, num_proc={processes}, {steps:<13} = {large[key] / small[key]:.2f}  "
                  f"(target <= 1.5)")


def bench_sampler(artifact: Path) -> None:
    """Sampler batches/s against the batches/s of forward+backward+AdamW of a minimal GPT on CPU."""
    import torch
    from torch import nn

    shape = MODEL_SHAPE
    data = TokenData(artifact)
    vocab = data.tokenizer.get_vocab_size()

    class TinyGPT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab, shape["width"])
            self.position = nn.Embedding(shape["seq_len"], shape["width"])
            layer = nn.TransformerEncoderLayer(
                shape["width"], shape["heads"], 4 * shape["width"], dropout=0.0, batch_first=True, norm_first=True
            )
            self.blocks = nn.TransformerEncoder(layer, shape["layers"], enable_nested_tensor=False)
            self.norm = nn.LayerNorm(shape["width"])
            self.mask = nn.Transformer.generate_square_subsequent_mask(shape["seq_len"])

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            x = self.embed(tokens) + self.position.weight[: tokens.shape[1]]
            x = self.blocks(x, mask=self.mask, is_causal=True)
            return self.norm(x) @ self.embed.weight.T

    torch.manual_seed(0)
    model = TinyGPT()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    steps = 300
    sampler = SequenceSampler(
        data.budget(1_000_000), shape["seq_len"], shape["batch"], shape["seq_len"] * shape["batch"] * steps, seed=0
    )

    def train_step(batch) -> None:
        tokens = torch.from_numpy(batch.tokens)
        logits = model(tokens[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, vocab), tokens[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for batch in sampler.batches(start_step=steps - 10):  # warm-up
        train_step(batch)
    started = time.perf_counter()
    for batch in sampler.batches(start_step=steps - 100):
        train_step(batch)
    model_rate = 100 / (time.perf_counter() - started)

    started = time.perf_counter()
    for batch in sampler.batches():
        torch.from_numpy(batch.tokens)
    sampler_rate = steps / (time.perf_counter() - started)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: GPT {shape}, vocab {vocab}, {params:,} parameters, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"  model consumes {model_rate:,.1f} batches/s; sampler produces {sampler_rate:,.0f} batches/s (U = 1M tokens)")
    print(f"RATIO sampler / model batches per second = {sampler_rate / model_rate:.0f}  (target >= 50)")


def main() -> None:
    if sys.argv[1:2] == ["--rss-child"]:
        _peak_rss_child(json.loads(sys.argv[2]), sys.argv[3])
        return
    with tempfile.TemporaryDirectory(prefix="dcsl-bench-data-") as folder:
        work = Path(folder)
        if "--memory-only" in sys.argv:
            bench_memory(work)
            return
        print("== tokenize throughput ==")
        artifact = bench_throughput(work)
        print("== clean split: dedup, clusters and contamination against tokenizing ==")
        bench_clean_split(work, str(artifact / "tokenizer.json"))
        if "--clean-only" in sys.argv:
            return
        print("== sampler against a minimal GPT ==")
        bench_sampler(artifact)
        if "--skip-memory" not in sys.argv:
            print("== peak memory, default corpus against 10x ==")
            bench_memory(work)


if __name__ == "__main__":
    main()
