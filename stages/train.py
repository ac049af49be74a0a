"""The train stage: one run of a scaling-law study, N parameters trained on D tokens repeated over U.

`train_loop` is what every rank runs: from a plain process, from `torchrun -m stages.train RUN_DIR
DATA_DIR`, or from Ray Train's `TorchTrainer` (the process group is then already there). It
resumes from the run directory's latest checkpoint, trains to exactly D tokens, evaluates the final
weights on the fixed validation split, and rank 0 writes the run record `run.json`. A run whose
loss turns NaN or infinite stops at once and writes `failed.json` (step and reason) instead.

Run directory, `<store>/train/<name>-<hash>/` (the hash covers the run's numbers-relevant config
and the tokenize artifact's hash):
  run_config.json   the resolved config       metrics.jsonl   one line per logged step
  checkpoints/      the latest checkpoints    val_curve.jsonl validation losses during the run
  wandb/            the W&B mirror            run.json        the run record (success only)
  SUCCESS           written last, by the launcher             failed.json     step and reason of a divergence
  trunk.json, branch.json   a WSD trunk's stops, a branch's trunk (`stages.lineage`)

A WSD trunk is such a run that also keeps a checkpoint at each stop; a branch starts from one of
its trunk's checkpoints (as if resumed there: the same batches, rates and optimiser state as a run
from scratch would have), with its log starting as its trunk's, and records its trunk.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from scaling.atomic import write_text_atomic
from stages import checkpoint, distributed, host_memory
from stages.artifacts import step_hash
from stages.data import TokenData
from stages.engines import make_engine, precision_of
from stages.evaluate import validation_loss
from stages.lineage import read_lineage
from stages.metrics import VAL_CURVE, MetricsLog, WandbMirror, copy_prefix, curve_steps, peak_flops
from stages.model import Transformer, token_losses
from stages.record import RECORD, RunRecord, ShapeRecord
from stages.run_config import RunConfig
from stages.sampler import SequenceSampler

RUN_CONFIG = "run_config.json"
FAILED = "failed.json"
ABORT_AFTER_RUN = "DCSL_ABORT_AFTER_RUN"
"""Test hook: `DCSL_ABORT_AFTER_RUN=R` makes rank R of `main` abort (SIGABRT) after its run finished, as a crash at exit would."""

Progress = Callable[[dict, int], None]
"""progress(metric record, total steps), called on rank 0 after each logged step."""


class RunDiverged(RuntimeError):
    """The training loss became NaN or infinite; the run is recorded as failed, never as a result."""

    def __init__(self, step: int, reason: str):
        super().__init__(f"run diverged at step {step}: {reason}")
        self.step = step
        self.reason = reason


def run_digest(config: RunConfig, data_hash: str) -> str:
    """The hash of what fixes a run's numbers: its config (operational fields left out) and its data's hash."""
    return step_hash({"format": 1, "run": config.hashed(), "data": data_hash})


def run_hash(config: RunConfig, data: TokenData) -> str:
    """`run_digest` of a run on a tokenize artifact."""
    return run_digest(config, data.manifest["hash"])


def write_run_config(config: RunConfig, run_dir: Path) -> None:
    """Save the resolved config where the ranks read it (`RUN_CONFIG` in the run directory)."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    write_text_atomic(Path(run_dir) / RUN_CONFIG, config.model_dump_json(indent=2) + "\n")


def read_run_config(run_dir: Path) -> RunConfig:
    """The config a run directory was started with."""
    return RunConfig.model_validate_json((Path(run_dir) / RUN_CONFIG).read_text())


def _autocast(config: RunConfig, device: torch.device) -> contextlib.AbstractContextManager:
    if precision_of(config, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _prepare_cpu(device: torch.device) -> None:
    """On CPU: keep freed memory for the next step (`host_memory`), and share the cores among this
    machine's ranks unless the user chose a thread count."""
    if device.type != "cpu":
        return
    host_memory.keep_freed_memory()
    if "OMP_NUM_THREADS" not in os.environ:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))


def train_loop(config: RunConfig, data_path: Path, run_dir: Path, progress: Progress | None = None) -> RunRecord | None:
    """Train and evaluate one run on this rank (resuming from its latest checkpoint); rank 0 returns the record."""
    owns_group = not dist.is_initialized()
    ranks = distributed.start(config.device, config.backend)
    try:
        with contextlib.ExitStack() as teardown:  # the engine closes here, before the group goes
            record = _train(config, TokenData(data_path), Path(run_dir), ranks, progress, teardown)
    except BaseException:
        if owns_group:
            distributed.stop(wait=False)  # a failed rank does not wait: the others may never come
        raise
    if owns_group:
        distributed.stop()
    return record


def _train(
    config: RunConfig, data: TokenData, run_dir: Path, ranks: distributed.Ranks, progress: Progress | None, teardown: contextlib.ExitStack
) -> RunRecord | None:
    started = time.perf_counter()
    _prepare_cpu(ranks.device)
    micro_batch, micro_steps = config.micro_batching(ranks.world)
    per_rank = micro_batch * micro_steps
    sampler = SequenceSampler(data.budget(config.unique_tokens), config.seq_len, config.batch_size, config.tokens, config.seed)
    shape = config.model.shape(data.manifest["tokenizer"]["vocab_size"], config.seq_len)
    schedule = config.schedule()
    autocast = _autocast(config, ranks.device)

    torch.manual_seed(config.seed)
    model = Transformer(shape).to(ranks.device)
    engine = teardown.enter_context(contextlib.closing(make_engine(model, config, ranks, micro_steps, micro_batch, token_losses)))

    lineage = read_lineage(run_dir)
    resume, skipped = checkpoint.resume_point(run_dir)
    for note in skipped:
        warnings.warn(f"{run_dir.name}: {note}", stacklevel=1)
    if resume:
        state = checkpoint.load(resume, engine, ranks)
    elif lineage.trunk:  # a branch: from its trunk's checkpoint at its cooldown start
        state = checkpoint.load(lineage.origin(), engine, ranks)
    else:
        state = {"step": 0, "train_seconds": 0.0, "resumed_at": []}
    notes = [*state.get("notes", []), *skipped]
    start_step = state["step"]
    resumed_at = [*state["resumed_at"], start_step] if resume else []
    curve_at = set(curve_steps(sampler.num_steps, config.curve_evals) if lineage.evals is None else lineage.evals)
    validation = data.validation()[: config.eval_tokens]

    peak = peak_flops(ranks.device, precision_of(config, ranks.device))
    flops_per_token = shape.flops_per_token
    identity = lineage.run_hash or run_hash(config, data)
    if ranks.is_main and lineage.trunk and not resume:
        copy_prefix(lineage.trunk_dir, run_dir, start_step, curve_at)
    logged_to = start_step if resume or lineage.trunk else None
    log = MetricsLog(run_dir, logged_to) if ranks.is_main else None
    val_log = MetricsLog(run_dir, logged_to, VAL_CURVE) if ranks.is_main else None
    mirror = None
    if ranks.is_main and config.wandb.mode != "disabled":
        mirror = WandbMirror(config.wandb, run_dir, config.name, identity, {**config.hashed(), "params": shape.params.total})

    train_seconds = state["train_seconds"]
    last_loss = state.get("train_loss", math.nan)
    window_start, window_tokens = time.perf_counter(), 0
    for batch in sampler.batches(start_step):
        step_tokens = len(batch.tokens) * config.seq_len
        engine.set_lr(schedule.lr((batch.step + 1) * config.batch_tokens))
        local = torch.from_numpy(batch.tokens[ranks.rank * per_rank : (ranks.rank + 1) * per_rank])
        if ranks.device.type == "cuda":  # from pinned memory, so the copy does not wait for the GPU
            local = local.pin_memory().to(ranks.device, non_blocking=True)
        loss_sum = torch.zeros((), dtype=torch.float64, device=ranks.device)
        for index in range(micro_steps):
            micro = local[index * micro_batch : (index + 1) * micro_batch]
            with engine.micro_context(last=index == micro_steps - 1):
                with autocast:
                    loss = engine.loss(micro[:, :-1], micro[:, 1:])
                engine.backward(loss)
            loss_sum += loss.detach().double()
        grad_norm = engine.finish_step()
        window_tokens += step_tokens
        done = batch.step + 1
        if done in curve_at:  # a point of the loss curve; its time is left out of the training time
            paused = time.perf_counter()
            val_point = {"step": done, "tokens": done * config.batch_tokens,
                         "val_loss": validation_loss(model, validation, config.seq_len, config.eval_batch_size, ranks, autocast)[0]}  # fmt: skip
            if ranks.is_main:
                val_log.write(val_point)
                if mirror:
                    mirror.log(val_point)
            window_start += time.perf_counter() - paused
        periodic = bool(config.checkpoint_every) and done % config.checkpoint_every == 0
        checkpoint_now = (periodic or done in lineage.stops) and done < sampler.num_steps
        if done % config.log_every and done != sampler.num_steps and not checkpoint_now:
            continue  # checkpoint steps are logged too: the checkpoint keeps the loss of its step
        grad_norm = float(grad_norm)  # on a GPU, this and the loss below are the loop's only waits for the device
        (loss_total,) = distributed.all_sum([float(loss_sum) / micro_steps], ranks.device)
        last_loss = loss_total / ranks.world
        now = time.perf_counter()
        train_seconds += now - window_start
        rate = window_tokens / (now - window_start)
        window_start, window_tokens = now, 0
        record = {
            "step": done,
            "loss": last_loss,
            "lr": schedule.lr(done * config.batch_tokens),
            "tokens": done * config.batch_tokens,
            "epoch": batch.epoch,
            "epochs": done * config.batch_tokens / sampler.tokens_per_epoch,
            "grad_norm": grad_norm,
            "tokens_per_s": rate,
            "mfu": rate * flops_per_token.full / (peak * ranks.world) if peak else None,
        }
        if not math.isfinite(last_loss):
            _fail(run_dir, ranks, done, f"training loss is {last_loss} (lr {record['lr']:.3g}, grad norm {grad_norm:.3g})", mirror, log)
        if ranks.is_main:
            log.write(record)
            if mirror:
                mirror.log(record)
            if progress:
                progress(record, sampler.num_steps)
        if checkpoint_now:
            extra = {"train_seconds": train_seconds, "resumed_at": resumed_at, "train_loss": last_loss, "notes": notes}
            checkpoint.save(run_dir, done, extra, engine, ranks, config.keep_checkpoints, lineage.stops)
            window_start = time.perf_counter()

    if start_step < sampler.num_steps or resume is None:
        extra = {"train_seconds": train_seconds, "resumed_at": resumed_at, "train_loss": last_loss, "notes": notes}
        checkpoint.save(run_dir, sampler.num_steps, extra, engine, ranks, config.keep_checkpoints, lineage.stops)

    val_loss, val_tokens = validation_loss(model, validation, config.seq_len, config.eval_batch_size, ranks, autocast)
    if not math.isfinite(val_loss):
        _fail(run_dir, ranks, sampler.num_steps, f"validation loss is {val_loss}", mirror, log)
    distributed.barrier()  # every rank finished: so a run.json means the whole run did (`stages.launch`)
    if not ranks.is_main:
        return None
    params = shape.params
    record = RunRecord(
        name=config.name,
        run_hash=identity,
        config_hash=step_hash(config.hashed()),
        data_hash=data.manifest["hash"],
        seed=config.seed,
        params=params.total,
        params_non_embedding=params.non_embedding,
        params_embedding=params.embedding,
        shape=ShapeRecord(layers=shape.layers, width=shape.width, heads=shape.heads, vocab_size=shape.vocab_size,
                          seq_len=shape.seq_len, mlp_ratio=shape.mlp_ratio, positions=shape.positions,
                          tie_embeddings=shape.tie_embeddings),
        tokens=config.tokens,
        unique_tokens=config.unique_tokens,
        epochs=config.tokens / config.unique_tokens,
        steps=sampler.num_steps,
        val_loss=val_loss,
        val_tokens=val_tokens,
        train_loss=last_loss,
        flops=6 * params.non_embedding * config.tokens,
        flops_full=flops_per_token.full * config.tokens,
        train_seconds=train_seconds,
        wall_seconds=time.perf_counter() - started,
        tokens_per_s=config.tokens / train_seconds if train_seconds > 0 else None,
        mfu=config.tokens / train_seconds * flops_per_token.full / (peak * ranks.world) if peak and train_seconds > 0 else None,
        peak_flops=peak,
        backend=config.backend,
        world_size=ranks.world,
        device=torch.cuda.get_device_name(ranks.device) if ranks.device.type == "cuda" else "cpu",
        host=socket.gethostname(),
        resumed_at=resumed_at,
        wandb_dir=mirror.directory if mirror else None,
        notes=notes,
        trunk=lineage.trunk,
    )
    if mirror:
        mirror.finish(record.model_dump(mode="json"))
    log.close()
    val_log.close()
    write_text_atomic(run_dir / RECORD, record.to_json())
    return record


def _fail(run_dir: Path, ranks: distributed.Ranks, step: int, reason: str, mirror, log) -> None:
    """Record a divergence (rank 0) and stop every rank with RunDiverged."""
    if ranks.is_main:
        write_text_atomic(run_dir / FAILED, json.dumps({"status": "failed", "step": step, "reason": reason}, indent=2) + "\n")
        if mirror:
            mirror.finish({"status": "failed", "failed_step": step})
        log.close()
    raise RunDiverged(step, reason)


def main(argv: list[str]) -> int:
    """`torchrun ... -m stages.train RUN_DIR DATA_DIR`: run this rank of the run set up in RUN_DIR."""
    run_dir, data_path = Path(argv[0]), Path(argv[1])
    try:
        train_loop(read_run_config(run_dir), data_path, run_dir)
    except RunDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    if os.environ.get(ABORT_AFTER_RUN) == str(distributed.env_ranks()[0]):
        os.abort()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
