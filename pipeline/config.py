"""The sweep config: one YAML file describes a study (`pipeline.expand` turns it into runs).

Sections of a sweep file (all checked before any work starts; unknown keys are refused):

  name, store   the sweep's name and the store root
  data          the corpus and tokenizer: `stages.tokenize.TokenizeConfig`, as `dcsl tokenize` reads it;
                `data.pools` for several named pools (`stages.pool_config`)
  models        named models: an explicit shape (layers, width, heads, ...) or `params: 1M` (the size
                table of `stages.shapes`); each may override `train:` and `resources:` settings.
                Or a size ladder, `{ladder: {sizes: 12K..200K, count: 5, lr: {...}}}` (`stages.ladder`):
                its sizes become models named `n<N>`, each with its shape and learning rate, exactly
                as if written by hand (same step hashes); `ladder()` gives them
  grid          one block or a list of blocks; a block is either
                  models x unique_tokens x epochs   a full grid: D = epochs * U
                  models x unique_tokens x flops    isoFLOP: D = C / (6 N), N non-embedding
                  models x pools x mix x tokens|flops   several data pools (`data.pools`): U_i per pool,
                                                    each pool's share of D (`pipeline.pool_grid`)
                (`models` lists model names; default: every model)
  seeds         replicates: a count n (seeds 0..n-1) or a list of seeds; innermost in the run order
  train         the `RunConfig` fields every run shares (seq_len, batch_tokens, optimizer, backend, ...)
  resources     per run: cpus and gpus (per node), nodes
  fit           the law, the base law (`fitted`, or a preset whose base is held fixed), bootstrap, seed
  wandb         the W&B mirror of every run

Counts accept `25M`, `1.5B`, `1e9` wherever they appear.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError, ValidationInfo, ValidatorFunctionWrapHandler,
    create_model, field_validator, model_validator,
)  # fmt: skip

from pipeline.config_files import read_yaml, validation_error
from pipeline.pool_fit_settings import check_pool_law, fit_settings_for, pool_fit_spec
from pipeline.pool_grid import check_pool_block, check_pool_grid
from scaling.errors import InputError
from scaling.fit import METHODS, FitSpec, fixed_to_theta
from scaling.laws import PRESETS, preset
from scaling.pool_fit import PoolFitSpec
from scaling.pool_laws import POOL_LAWS
from scaling.units import parse_quantity
from stages.fields import Count, StoreName
from stages.ladder import Ladder, Rung
from stages.shapes import ModelConfig
from stages.run_config import RunConfig, WandbConfig
from stages.tokenize import TokenizeConfig
from stages.tokenizer import load_tokenizer

MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.]*$"  # no '-': it separates the parts of a run name
MODEL_NAME_LENGTH = 64  # with the grid point and seed, a run name stays within `stages.fields.NAME_LENGTH`
PER_RUN_FIELDS = {"name", "model", "tokens", "unique_tokens", "seed", "wandb", "pools"}  # set by the grid, the seeds, `wandb`


def _quantity(value: Any, info: ValidationInfo) -> float:
    return parse_quantity(value, info.field_name or "value")


def _as_list(value: Any) -> Any:
    """A scalar where a list is expected means a list of one."""
    return value if isinstance(value, list) or value is None else [value]


def _seed_list(value: Any) -> Any:
    """`seeds: n` means seeds 0..n-1."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise InputError("seeds", f"{value} must be a count of at least 1 or a list of seeds")
        return list(range(value))
    return value


Quantity = Annotated[float, BeforeValidator(_quantity)]
"""A positive quantity written as `1e15`, `2.5e18` or `3P`."""

TrainConfig = create_model(
    "TrainConfig",
    __config__=ConfigDict(extra="forbid"),
    __doc__="The RunConfig fields shared by every run of a sweep (all but " + ", ".join(sorted(PER_RUN_FIELDS)) + ").",
    **{name: (field.annotation, field) for name, field in RunConfig.model_fields.items() if name not in PER_RUN_FIELDS},
)


class Resources(BaseModel):
    """What one run asks of the cluster: CPUs and GPUs on each of `nodes` machines.

    A GPU run has one rank per GPU; a CPU run has `train.processes` ranks, an equal share on each node.
    """

    model_config = ConfigDict(extra="forbid")

    cpus: int = Field(1, ge=1, description="CPUs per node")
    gpus: int = Field(0, ge=0, le=64, description="GPUs per node; one rank per GPU")
    nodes: int = Field(1, ge=1, description="machines the run's ranks are spread over")


class ModelEntry(ModelConfig):
    """A named model of the sweep: a `ModelConfig`, its name, and its own train and resources settings."""

    name: str = Field(..., pattern=MODEL_NAME, max_length=MODEL_NAME_LENGTH, description="the model's name in run names")
    train: dict[str, Any] = Field(default_factory=dict, description="settings of `train:` this model changes")
    resources: dict[str, Any] = Field(default_factory=dict, description="settings of `resources:` this model changes")

    def model(self) -> ModelConfig:
        """The plain model config (what goes into each run's config and hash)."""
        return ModelConfig.model_validate(self.model_dump(exclude={"name", "train", "resources"}))


class LadderModels(BaseModel):
    """`models:` written as a size ladder."""

    model_config = ConfigDict(extra="forbid")

    ladder: Ladder = Field(..., description="target sizes, shape and learning-rate rules (see stages.ladder)")


class GridBlock(BaseModel):
    """One block of the grid: models x unique budgets x epochs, or x compute budgets (isoFLOP); with several
    data pools, models x each pool's unique budgets x mixes x total tokens (or compute budgets)."""

    model_config = ConfigDict(extra="forbid")

    models: Annotated[list[str], BeforeValidator(_as_list)] | None = Field(None, description="model names; default: all")
    unique_tokens: Annotated[list[Count], BeforeValidator(_as_list), Field(min_length=1)] | None = Field(
        None, description="U, the unique-token budgets (one corpus)")
    epochs: Annotated[list[Annotated[float, Field(ge=1, allow_inf_nan=False)]], BeforeValidator(_as_list), Field(min_length=1)] | None = None
    flops: Annotated[list[Quantity], BeforeValidator(_as_list), Field(min_length=1)] | None = None
    tokens: Annotated[list[Count], BeforeValidator(_as_list), Field(min_length=1)] | None = Field(
        None, description="several pools: D, the runs' total tokens")
    pools: dict[str, Annotated[list[Count], BeforeValidator(_as_list), Field(min_length=1)]] | None = Field(
        None, description="several pools: each pool's unique budgets U_i, every pool of data.pools named")
    mix: Annotated[list[dict[str, Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]]], BeforeValidator(_as_list),
                   Field(min_length=1)] | None = Field(None, description="several pools: the share of D each pool gets, adding up "
                                                       "to 1 (a pool left out gets 0)")  # fmt: skip

    @model_validator(mode="after")
    def _one_form(self) -> GridBlock:
        if self.pools is not None or self.mix is not None:
            check_pool_block(self)
            return self
        if self.tokens is not None:
            raise InputError("tokens", "is for several pools (with pools: and mix:); one corpus gives unique_tokens and epochs or flops")
        if self.unique_tokens is None:
            raise InputError("unique_tokens", "is required")
        if (self.epochs is None) == (self.flops is None):
            raise InputError("epochs", "give epochs (a full grid) or flops (isoFLOP compute budgets): exactly one of them")
        return self


class FitSettings(BaseModel):
    """How the sweep's runs are fitted (see `scaling.fit`)."""

    model_config = ConfigDict(extra="forbid")

    law: Literal["data-constrained", "base", "multi-pool", "qqt"] = Field(
        "data-constrained", description="the law to fit; a multi-pool sweep: multi-pool (its default) or qqt")
    base: str = Field("fitted", description="'fitted', or a preset whose base law is held fixed")
    method: Literal[METHODS] | None = Field(None, description="default: base, repetition (preset base) or two-stage")
    params: Literal["non_embedding", "total"] = Field("non_embedding", description="which parameter count is N")
    bootstrap: int = Field(0, ge=0, description="bootstrap resamples for intervals")
    seed: int = Field(0, description="seed of the bootstrap")
    tie_exponents: bool = False
    fix: dict[str, float] = Field(default_factory=dict, description="parameters held at a value, e.g. {alpha: 0.34}")
    bounds: dict[str, tuple[float, float]] = Field(default_factory=dict, description="search boxes, e.g. {rd_star: [0.1, 100]}")

    @model_validator(mode="after")
    def _consistent(self) -> FitSettings:
        if self.base != "fitted" and self.base not in PRESETS:
            raise InputError("base", f"{self.base!r} is not allowed; use fitted or a preset: {', '.join(PRESETS)}")
        spec = self.spec()
        if isinstance(spec, PoolFitSpec):
            return self
        for setting, check in (("bounds", spec.box), ("fix", lambda: fixed_to_theta(spec.fixed, *spec.box()))):
            try:
                check()
            except InputError as err:  # named after this setting, whatever scaling calls the parameter
                raise InputError(setting, err.problem) from None
        return self

    def spec(self) -> FitSpec | PoolFitSpec:
        """The `scaling.fit.FitSpec` these settings describe (a `scaling.pool_fit.PoolFitSpec` for a pool law)."""
        base = None if self.base == "fitted" else preset(self.base).base
        if self.law in POOL_LAWS:
            return pool_fit_spec(self, base)
        return FitSpec.resolve(law=self.law, base=base, method=self.method, fixed=self.fix, bounds=self.bounds,
                               tie_exponents=self.tie_exponents)


class SweepConfig(BaseModel):
    """A whole study: corpus, models, grid, seeds, shared training settings, resources, fit, W&B."""

    model_config = ConfigDict(extra="forbid")

    name: StoreName = Field("sweep", description="the study's name: of its fit and report steps")
    store: str = Field("store", description="the store root")
    data: TokenizeConfig
    models: list[ModelEntry] = Field(
        ..., min_length=1,
        description="named models, or {ladder: ...}: sizes from which shapes and learning rates follow (read into this list)",
    )
    grid: Annotated[list[GridBlock], BeforeValidator(_as_list), Field(min_length=1)]
    seeds: Annotated[list[Annotated[int, Field(ge=0)]], BeforeValidator(_seed_list), Field(min_length=1)] = [0]
    train: TrainConfig  # type: ignore[valid-type]
    resources: Resources = Field(default_factory=Resources)
    fit: FitSettings = Field(default_factory=FitSettings)
    wandb: WandbConfig = Field(default_factory=WandbConfig)
    _ladder: tuple[Ladder, list[Rung]] | None = PrivateAttr(None)

    @field_validator("models", mode="wrap")
    @classmethod
    def _list_or_ladder(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """A `{ladder: ...}` mapping is read as `LadderModels` (the list follows in `_consistent`); a list as usual."""
        if not isinstance(value, dict):
            return handler(value)
        try:
            return LadderModels.model_validate(value)
        except ValidationError as err:
            raise validation_error(err, LadderModels) from None

    @model_validator(mode="after")
    def _consistent(self) -> SweepConfig:
        if isinstance(self.models, LadderModels):
            ladder = self.models.ladder
            self._ladder = (ladder, ladder.rungs(self.vocab_size(), self.train.seq_len))
            self.models = [ModelEntry.model_validate(entry) for entry in ladder.entries(self._ladder[1])]
        names = [entry.name for entry in self.models]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise InputError(f"models.{index}.name", f"{name!r} is used by models.{names.index(name)} too; names must be unique")
        for index, block in enumerate(self.grid):
            for name in block.models or []:
                if name not in names:
                    raise InputError(f"grid.{index}.models", f"{name!r} is not a model; models: {', '.join(names)}")
        if len(set(self.seeds)) != len(self.seeds):
            raise InputError("seeds", f"{self.seeds} repeats a seed")
        for index, entry in enumerate(self.models):
            train = self.train_for(entry.name)
            if train.batch_tokens % train.seq_len:
                where = f"models.{index}.train" if entry.train else "train"
                raise InputError(f"{where}.batch_tokens", f"{train.batch_tokens} is not a multiple of seq_len {train.seq_len}")
            self.resources_for(entry.name)
        check_pool_grid(self.grid, self.data.pools)
        check_pool_law(self.fit, self.data.pools is not None)
        if self.data.pools and any(self.train_for(entry.name).optimizer.schedule == "wsd" for entry in self.models):
            raise InputError("train.optimizer.schedule", "wsd shares a trunk between runs that differ only in D, but a multi-pool "
                             "run's batches depend on every pool's D_i; use cosine with data.pools")  # fmt: skip
        return self

    def fit_settings(self) -> FitSettings:
        """The fit's settings: as given, but a multi-pool sweep that names no law is fitted with `multi-pool`."""
        return fit_settings_for(self.fit, self.data.pools is not None)

    def architecture(self, model: str) -> ModelConfig:
        """The model entry's architecture (as `RunConfig.model` takes it)."""
        return self._entry(model)[1].model()

    def _entry(self, model: str) -> tuple[int, ModelEntry]:
        for index, entry in enumerate(self.models):
            if entry.name == model:
                return index, entry
        raise KeyError(model)

    def train_for(self, model: str) -> TrainConfig:  # type: ignore[valid-type]
        """The train settings of one model: the shared ones with the model's `train:` merged in."""
        index, entry = self._entry(model)
        if not entry.train:
            return self.train
        merged = _merge(self.train.model_dump(exclude_unset=True), entry.train)
        return _validated(TrainConfig, merged, f"models.{index}.train")

    def resources_field(self, model: str) -> str:
        """The config field a model's resources come from: `models.<i>.resources` or `resources`."""
        index, entry = self._entry(model)
        return f"models.{index}.resources" if entry.resources else "resources"

    def resources_for(self, model: str) -> Resources:
        """The resources of one model's runs, checked against its device."""
        _, entry = self._entry(model)
        where = self.resources_field(model)
        resources = _validated(Resources, _merge(self.resources.model_dump(exclude_unset=True), entry.resources), where)
        device = self.train_for(model).device
        if resources.gpus and device == "cpu":
            raise InputError(f"{where}.gpus", f"{resources.gpus} GPUs asked for, but train.device is 'cpu'; use gpus: 0 or device auto/cuda")
        if not resources.gpus and device == "cuda":
            raise InputError(f"{where}.gpus", "0, but train.device is 'cuda'; a CUDA run needs gpus >= 1")
        if not resources.gpus:
            _check_cpu_ranks(resources, self.train_for(model).processes, where)
        return resources

    def ladder(self) -> tuple[Ladder, list[Rung]] | None:
        """The `models: {ladder: ...}` as written and the sizes it produced; None for a written list of models."""
        return self._ladder

    def vocab_size(self) -> int:
        """The vocabulary size: the given tokenizer.json's, else the trained tokenizer's `vocab_size`."""
        if self.data.tokenizer.path is not None:
            return load_tokenizer(self.data.tokenizer).get_vocab_size()
        return self.data.tokenizer.vocab_size


def load_sweep(path: Path) -> SweepConfig:
    """Read and check a sweep file; InputError with one line naming the field and the value otherwise."""
    document = read_yaml(Path(path))
    try:
        return SweepConfig.model_validate(document)
    except ValidationError as err:
        error = validation_error(err, SweepConfig)
        if isinstance(document.get("grid"), dict) and error.field.startswith("grid.0"):  # one block, written as a mapping
            error = InputError("grid" + error.field[len("grid.0") :], error.problem)
        raise error from None


def _check_cpu_ranks(resources: Resources, processes: int, where: str) -> None:
    """InputError unless a CPU run's `processes` ranks split evenly over its nodes, with a CPU for each rank."""
    nodes, per_node = resources.nodes, processes // resources.nodes
    if processes % nodes:
        raise InputError(f"{where}.nodes", f"{nodes} nodes can't share the {processes} train.processes of a CPU run evenly")
    if resources.cpus < per_node:
        spread = f" over {nodes} nodes ({per_node} per node)" if nodes > 1 else ""
        raise InputError(f"{where}.cpus", f"{resources.cpus} is fewer than the {processes} train.processes of a CPU run{spread}")


def world_size(resources: Resources, processes: int) -> int:
    """Ranks a run is trained with: one per GPU of its nodes, else its `processes`."""
    return resources.nodes * resources.gpus if resources.gpus else processes


def _merge(base: dict, override: dict) -> dict:
    """`override` merged into `base`, nested mappings merged key by key."""
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def _validated(model: type[BaseModel], settings: dict, where: str):
    try:
        return model.model_validate(settings)
    except ValidationError as err:
        raise validation_error(err, model, prefix=where) from None
