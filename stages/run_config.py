"""The configuration of one training run (one point of a scaling-law study), checked before any work.

A run trains a model on exactly `tokens` (D) tokens drawn, in repeated seeded epochs, from the
first `unique_tokens` (U) tokens of a tokenize artifact's training region; then it is evaluated on
the artifact's fixed validation split. Sizes accept `25M`, `1.5B`, `1e9`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from scaling.errors import InputError
from stages.fields import Count, StoreName
from stages.shapes import ModelConfig
from stages.schedule import COOLDOWN_SHAPES, Schedule, WsdSchedule, cooldown_start_step

# Fields that change how a run is carried out, not what it computes: kept out of the run's hash.
OPERATIONAL_FIELDS = {"processes", "micro_batch_size", "checkpoint_every", "keep_checkpoints", "log_every", "eval_batch_size", "wandb",
                      "curve_evals"}
WSD_FIELDS = ("schedule", "warmup_tokens", "cooldown", "cooldown_shape")
"""Optimizer fields of the WSD schedule: left out of a cosine run's hash, so cosine hashes stay as they were."""
COOLDOWN_FIELDS = ("cooldown", "cooldown_shape", "final_lr_ratio")
"""Optimizer fields that shape only a WSD run's cooldown: a trunk's hash leaves them out."""


class OptimizerConfig(BaseModel):
    """AdamW with linear warmup, then cosine decay or warmup-stable-decay to `final_lr_ratio` of the peak at D
    (`stages.schedule`)."""

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(1e-3, gt=0, le=1, description="peak learning rate")
    schedule: Literal["cosine", "wsd"] = Field(
        "cosine", description="cosine: warmup then cosine decay over D; wsd: warmup, constant rate, cooldown over the run's end "
        "(runs differing only in D share a trunk, Hägele et al. 2024)"
    )
    warmup: float = Field(0.05, ge=0, lt=1, description="cosine: fraction of the run's D tokens spent warming up")
    warmup_tokens: Count | None = Field(
        None, description="wsd (required): tokens of linear warmup, the same for every D so that runs of different D share it"
    )
    cooldown: float = Field(
        0.2, ge=0, lt=1, description="wsd: fraction of the run's steps spent cooling down at its end; 0.2 with 1-sqrt matches cosine "
        "(Hägele et al. 2024, 'Scaling Laws and Compute-Optimal Training Beyond Fixed Training Durations')"
    )
    cooldown_shape: Literal[COOLDOWN_SHAPES] = Field(
        "1-sqrt", description="wsd: how the rate falls over the cooldown, p from 0 to 1: linear 1-p, 1-sqrt 1-sqrt(p), cosine (1+cos(pi p))/2"
    )
    final_lr_ratio: float = Field(0.1, ge=0, le=1, description="the rate at D as a fraction of the peak")
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0)
    grad_clip: float = Field(1.0, ge=0, description="max global gradient norm; 0 turns clipping off")


class WandbConfig(BaseModel):
    """The Weights & Biases mirror: one W&B run per training run."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["offline", "online", "disabled"] | None = Field(
        None, description="default: the WANDB_MODE environment variable, else offline"
    )
    project: str = "dcsl"
    entity: str | None = None


class RunConfig(BaseModel):
    """One training run: model, data budget (D tokens from U unique), batch, optimiser, backend."""

    model_config = ConfigDict(extra="forbid")

    name: StoreName = Field("run", description="the run's name in the store")
    model: ModelConfig
    seq_len: int = Field(..., ge=2, description="tokens per training sequence (T)")
    tokens: Count = Field(..., description="D: training tokens, a multiple of seq_len")
    unique_tokens: Count = Field(..., description="U: the unique-token budget the D tokens repeat over")
    batch_tokens: Count = Field(..., description="tokens per optimiser step (global, all ranks), a multiple of seq_len")
    micro_batch_size: int | None = Field(
        None, ge=1, description="sequences per rank per forward pass; default: no gradient accumulation"
    )
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    backend: Literal["torch", "deepspeed"] = "torch"
    zero_stage: Literal[1, 2] = Field(2, description="DeepSpeed ZeRO stage (backend deepspeed only)")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 autocast on GPU, fp32 on CPU")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: bool = Field(False, description="torch.compile the model")
    seed: int = Field(0, description="seed of the initialisation and of the epoch permutations")
    processes: int = Field(1, ge=1, le=1024, description="ranks `train` launches on this machine (torchrun, Ray set their own)")
    checkpoint_every: int = Field(0, ge=0, description="steps between checkpoints; 0: only at the end")
    keep_checkpoints: int = Field(
        1, ge=1, description="how many of the latest checkpoints to keep; at least 2 are (a damaged newest one falls back to the one before)"
    )
    log_every: int = Field(1, ge=1, description="steps between metric lines (and divergence checks)")
    eval_tokens: Count | None = Field(None, description="use the first eval_tokens validation tokens; default: all")
    eval_batch_size: int = Field(16, ge=1, description="sequences per rank per evaluation forward pass")
    curve_evals: int = Field(
        3, ge=0, le=100, description="validation losses during the run (its loss curve), at evenly spaced steps; 0: only the final one"
    )
    wandb: WandbConfig = Field(default_factory=WandbConfig)

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        if self.seq_len >= self.unique_tokens:
            raise InputError("seq_len", f"{self.seq_len} is not shorter than unique_tokens {self.unique_tokens}; a sequence needs seq_len + 1 unique tokens"
            )
        if self.tokens % self.seq_len:
            raise InputError("tokens", f"{self.tokens} is not a multiple of seq_len {self.seq_len}")
        if self.batch_tokens % self.seq_len:
            raise InputError("batch_tokens", f"{self.batch_tokens} is not a multiple of seq_len {self.seq_len}")
        if self.tokens % self.batch_tokens:
            steps = self.tokens // self.batch_tokens
            nearest = sorted({max(1, steps), steps + 1})
            raise InputError("tokens", f"{self.tokens} is not a whole number of steps of batch_tokens {self.batch_tokens}; "
                f"use e.g. {' or '.join(str(n * self.batch_tokens) for n in nearest)}"
            )
        self.check_world(self.processes)
        if self.eval_tokens is not None and self.eval_tokens <= self.seq_len:
            raise InputError("eval_tokens", f"{self.eval_tokens} must exceed seq_len {self.seq_len}")
        if self.backend == "deepspeed" and self.compile:
            raise InputError("compile", "true is only supported with backend torch")
        if self.optimizer.schedule == "wsd":
            self._check_wsd()
        return self

    def _check_wsd(self) -> None:
        warmup = self.optimizer.warmup_tokens
        if warmup is None:
            raise InputError("optimizer.warmup_tokens", "is required with schedule wsd: the warmup in tokens, the same for every D")
        if warmup > self.cooldown_start_step * self.batch_tokens:
            raise InputError("optimizer.warmup_tokens", f"{warmup} runs past the cooldown start of a {self.tokens}-token run "
                             f"(token {self.cooldown_start_step * self.batch_tokens}); lower it or lower optimizer.cooldown")

    def check_world(self, world: int) -> None:
        """ValueError unless a step's sequences split evenly into `world` ranks of whole micro-batches."""
        if self.batch_size % world:
            raise InputError("batch_tokens", f"{self.batch_size} sequences per step do not split evenly over {world} ranks")
        if self.micro_batch_size is not None and (self.batch_size // world) % self.micro_batch_size:
            raise InputError("micro_batch_size", f"{self.micro_batch_size} does not divide the {self.batch_size // world} sequences "
                f"each of {world} ranks gets per step"
            )

    def micro_batching(self, world: int) -> tuple[int, int]:
        """(sequences per micro-batch, micro-batches per step) on each of `world` ranks."""
        self.check_world(world)
        per_rank = self.batch_size // world
        micro = self.micro_batch_size or per_rank
        return micro, per_rank // micro

    @property
    def batch_size(self) -> int:
        """Sequences per optimiser step, all ranks together."""
        return self.batch_tokens // self.seq_len

    @property
    def steps(self) -> int:
        """Optimiser steps of the run: D / batch_tokens."""
        return self.tokens // self.batch_tokens

    @property
    def cooldown_start_step(self) -> int:
        """The step a WSD run's cooldown starts after (its trunk's branch point); the last step for cosine."""
        if self.optimizer.schedule != "wsd":
            return self.steps
        return cooldown_start_step(self.steps, self.optimizer.cooldown)

    def schedule(self) -> Schedule | WsdSchedule:
        """The learning-rate schedule over exactly this run's D tokens."""
        opt = self.optimizer
        if opt.schedule == "wsd":
            start = self.cooldown_start_step * self.batch_tokens
            return WsdSchedule(opt.lr, opt.warmup_tokens, self.tokens, start, opt.final_lr_ratio, opt.cooldown_shape)
        return Schedule(opt.lr, int(round(opt.warmup * self.tokens)), self.tokens, opt.final_lr_ratio)

    def hashed(self) -> dict:
        """The part of the config that determines the run's numbers (operational fields left out; a cosine
        run's hash leaves out the WSD fields, so it is what it was before WSD existed)."""
        hashed = self.model_dump(mode="json", exclude=OPERATIONAL_FIELDS)
        if self.optimizer.schedule == "cosine":
            hashed["optimizer"] = {key: value for key, value in hashed["optimizer"].items() if key not in WSD_FIELDS}
        return hashed
