"""Per-step metrics of a run: a JSONL file that is the record, MFU against the device's peak, a W&B mirror.

`metrics.jsonl` has one line per logged step (loss, lr, tokens seen, epoch, tokens/s, MFU when the
peak is known); `val_curve.jsonl` one line per validation during the run (`curve_evals` of them,
at `curve_steps`: step, tokens, val_loss). Together they are the run's loss curve. A resumed run first cuts the file back to its checkpoint's step, so the file of a
run that was interrupted equals that of one that was not (timings aside).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from scaling.atomic import write_text_atomic

from stages.run_config import WandbConfig

METRICS = "metrics.jsonl"
VAL_CURVE = "val_curve.jsonl"

# Dense bf16 tensor-core peaks, FLOP/s, from the vendors' data sheets (no sparsity).
BF16_PEAK_FLOPS = {
    "H200": 989.4e12,
    "H100 PCIe": 756.0e12,
    "H100": 989.4e12,
    "A100": 312.0e12,
    "L40S": 362.05e12,
    "A10G": 70.0e12,
    "RTX 4090": 165.2e12,
}


def peak_flops(device: torch.device, precision: str) -> float | None:
    """The device's peak FLOP/s for this precision: DCSL_PEAK_FLOPS if set, else the bf16 table for GPUs."""
    override = os.environ.get("DCSL_PEAK_FLOPS")
    if override:
        return float(override)
    if device.type != "cuda" or precision != "bf16":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK_FLOPS.items() if key in name), None)


class MetricsLog:
    """Appends metric records to `<run>/metrics.jsonl` (or another of its step logs), cut back to `resume_step` first."""

    def __init__(self, run_dir: Path, resume_step: int | None, name: str = METRICS):
        self.path = Path(run_dir) / name
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines(keepends=True) if _step(line) <= (resume_step or 0)]
            write_text_atomic(self.path, "".join(kept) if resume_step is not None else "")
        self.handle = open(self.path, "a")

    def write(self, record: dict) -> None:
        """Append one record and flush it to the file."""
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()

    def close(self) -> None:
        """Close the file."""
        self.handle.close()


def curve_steps(steps: int, evals: int) -> list[int]:
    """The steps of a `steps`-step run after which it is validated for its loss curve: `evals` evenly spaced ones
    before its last step (whose validation is the run's result)."""
    return sorted({round(steps * k / (evals + 1)) for k in range(1, evals + 1)} - {0, steps})


def copy_prefix(source_dir: Path, run_dir: Path, step: int, curve_at: set[int]) -> None:
    """Start `run_dir`'s step logs with `source_dir`'s lines up to `step`, its validations only at `curve_at` (a
    branch's curve begins as its trunk's)."""
    for name, wanted in ((METRICS, lambda at: at <= step), (VAL_CURVE, lambda at: at <= step and at in curve_at)):
        source = Path(source_dir) / name
        lines = source.read_text().splitlines(keepends=True) if source.exists() else []
        write_text_atomic(Path(run_dir) / name, "".join(line for line in lines if wanted(_step(line))))


def _step(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError):
        return 1 << 62  # a torn last line from a kill: dropped


def read_metrics(run_dir: Path, name: str = METRICS) -> list[dict]:
    """The metric records of a run (or the records of another of its step logs)."""
    path = Path(run_dir) / name
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


class WandbMirror:
    """One W&B run per training run (offline unless the config or WANDB_MODE says otherwise)."""

    def __init__(self, settings: WandbConfig, run_dir: Path, name: str, run_id: str, config: dict):
        import wandb

        mode = settings.mode or os.environ.get("WANDB_MODE") or "offline"
        self.run = wandb.init(
            project=settings.project,
            entity=settings.entity,
            name=name,
            id=run_id,
            dir=str(run_dir),
            mode=mode,
            config=config,
            resume="allow",
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True, disable_git=True, save_code=False),
        )

    @property
    def directory(self) -> str | None:
        """The W&B run's own folder (`.../wandb/offline-run-...`), None when disabled."""
        return None if self.run.disabled else str(Path(self.run.dir).parent)

    def log(self, record: dict) -> None:
        """Mirror one metric record at its step."""
        self.run.log({k: v for k, v in record.items() if k != "step" and v is not None}, step=record["step"])

    def finish(self, summary: dict) -> None:
        """Fill the summary and close the run."""
        self.run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
        self.run.finish()
