"""The run record: what one finished training run measured, as a typed, frozen object.

Rank 0 of a run writes it to `run.json` in the run directory; the fit, the report, `dcsl runs`,
`dcsl plan`'s time estimates and the sweep's outcome read it back through `read_record`. The JSON
on disk is the model's plain dump, key for key what earlier versions wrote, so old stores load.
Unknown keys (written by a newer dcsl) are kept, not refused.

Room to grow: a run over several data pools will add per-pool token counts beside the totals
(`tokens`, `unique_tokens`, `epochs` stay the sums a one-pool law reads).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from scaling.errors import InputError
from stages.artifacts import SUCCESS, damage

RECORD = "run.json"


class ShapeRecord(BaseModel):
    """The model's shape as trained (the fields of `stages.shapes.ModelShape`)."""

    model_config = ConfigDict(frozen=True, extra="allow")

    layers: int
    width: int
    heads: int
    vocab_size: int
    seq_len: int
    mlp_ratio: int | float
    positions: str
    tie_embeddings: bool


class RunRecord(BaseModel):
    """One finished run: identity, size, data budget, losses, cost and where it ran."""

    model_config = ConfigDict(frozen=True, extra="allow")

    name: str = Field(description="the run's name, unique in its sweep")
    status: str = Field("succeeded", description="always 'succeeded': a failed run writes failed.json instead")
    run_hash: str | None = Field(None, description="the hash naming the run directory")
    config_hash: str | None = Field(None, description="hash of the numbers-relevant config alone")
    data_hash: str | None = Field(None, description="hash of the tokenize artifact the run read")
    seed: int = Field(0, description="seed of the initialisation and the epoch order")
    params: int = Field(description="N, all parameters")
    params_non_embedding: int = Field(description="N without the vocabulary- and position-sized matrices")
    params_embedding: int | None = Field(None, description="the embedding share of `params`")
    shape: ShapeRecord | None = Field(None, description="layers, width, heads, ...")
    tokens: int = Field(description="D, tokens trained on")
    unique_tokens: int = Field(description="U, the unique-token budget D repeats over")
    epochs: float = Field(description="D / U")
    steps: int | None = Field(None, description="optimiser steps")
    val_loss: float = Field(description="loss on the fixed validation split (the fit's target)")
    val_tokens: int | None = Field(None, description="validation tokens scored")
    train_loss: float | None = Field(None, description="training loss at the last logged step")
    flops: int | float = Field(description="6 N D with N non-embedding")
    flops_full: int | float | None = Field(None, description="attention and output layer included")
    train_seconds: float | None = Field(None, description="time in training steps (all attempts)")
    wall_seconds: float | None = Field(None, description="time of the last attempt, evaluation included")
    tokens_per_s: float | None = Field(None, description="training throughput")
    mfu: float | None = Field(None, description="model FLOPs utilisation, where the device's peak is known")
    peak_flops: float | None = Field(None, description="the device's peak FLOP/s used for MFU")
    backend: str | None = Field(None, description="torch or deepspeed")
    world_size: int = Field(1, description="ranks that trained the run")
    device: str | None = Field(None, description="cpu or the GPU's name")
    host: str | None = Field(None, description="the machine of rank 0")
    resumed_at: list[int] = Field(default_factory=list, description="steps the run resumed from checkpoints at")
    wandb_dir: str | None = Field(None, description="the W&B mirror's run folder, if mirrored")
    notes: list[str] = Field(default_factory=list, description="what went wrong on the way and was recovered from (damaged checkpoints skipped)")
    trunk: str | None = Field(None, description="a WSD branch's trunk (`trunk/<name>-<hash>`), whose checkpoint it started its cooldown from")

    def params_for(self, kind: str) -> int:
        """N as a fit counts it: `non_embedding` (default) or `total`."""
        return self.params if kind == "total" else self.params_non_embedding

    def to_json(self) -> str:
        """The record as written to `run.json`."""
        return json.dumps(self.model_dump(mode="json"), indent=2) + "\n"


def read_record(run_dir: Path) -> RunRecord:
    """The record of the finished run in `run_dir`; InputError naming the file when it is unreadable."""
    path = Path(run_dir) / RECORD
    try:
        return RunRecord.model_validate_json(path.read_bytes())
    except OSError as err:
        raise InputError("run record", f"{str(path)!r} cannot be read: {err.strerror or err}") from None
    except ValidationError as err:
        problem = err.errors()[0]
        where = ".".join(str(part) for part in problem["loc"]) or "(file)"
        raise InputError("run record", f"{str(path)!r} is damaged or not a run record ({where}: {problem['msg']})") from None


class RunFailure(NamedTuple):
    """A run of a study that did not finish: its name, its state (failed, dep_failed...) and why."""

    name: str
    state: str
    reason: str


class StoreRuns(NamedTuple):
    """A store's finished runs: the records of the whole ones, and the damaged ones left out."""

    records: list[RunRecord]
    """By name."""
    damaged: list[tuple[str, str]]
    """`(train/<name>-<hash>, what is wrong)` per run left out: files not as `SUCCESS` records them, an unreadable record."""


def finished_records(store: Path) -> StoreRuns:
    """The records of every finished, whole run in the store (`train/*/` with a `SUCCESS`), and the damaged ones."""
    records, damaged = [], []
    for success in sorted(Path(store).glob(f"train/*/{SUCCESS}")):
        found = _whole_record(success.parent)
        if isinstance(found, RunRecord):
            records.append(found)
        else:
            damaged.append((f"train/{success.parent.name}", found))
    return StoreRuns(sorted(records, key=lambda record: record.name), damaged)


def _whole_record(run_dir: Path) -> RunRecord | str:
    """The record of a finished run, or what is wrong with it."""
    problem = damage(run_dir)
    if problem is not None:
        return problem
    try:
        return read_record(run_dir)
    except InputError as error:
        return error.problem
