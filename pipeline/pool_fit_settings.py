"""The fit settings of a multi-pool sweep: a pool law (`multi-pool`, the default, or `qqt`), its base law
fixed (a preset: the `repetition` method) or fitted with it (`fitted`: the `joint` method)."""

from __future__ import annotations

from typing import Any

from scaling.errors import InputError
from scaling.laws import BaseLaw
from scaling.pool_fit import PoolFitSpec
from scaling.pool_laws import POOL_LAWS

DEFAULT_POOL_LAW = "multi-pool"
ONE_POOL_ONLY = ("method", "fix", "bounds", "tie_exponents")
"""Fit settings of the one-pool laws that a pool-law fit does not take."""


def pool_fit_spec(settings: Any, base: BaseLaw | None) -> PoolFitSpec:
    """The `PoolFitSpec` of fit settings that name a pool law; InputError for a one-pool-only setting."""
    for field in ONE_POOL_ONLY:
        if field in settings.model_fields_set:
            raise InputError(field, f"is not taken by the pool law {settings.law!r}; leave it out")
    return PoolFitSpec(settings.law, base)


def check_pool_law(settings: Any, pooled: bool) -> None:
    """InputError when the law does not fit the sweep's data: a one-pool law named for pools, or a pool law for one corpus."""
    if pooled and "law" in settings.model_fields_set and settings.law not in POOL_LAWS:
        raise InputError("fit.law", f"{settings.law!r} fits one corpus; a multi-pool sweep is fitted with {' or '.join(POOL_LAWS)}")
    if not pooled and settings.law in POOL_LAWS:
        raise InputError("fit.law", f"{settings.law!r} is a law of several pools; it needs data.pools")


def fit_settings_for(settings: Any, pooled: bool) -> Any:
    """The settings a sweep's fit uses: `multi-pool` for a multi-pool sweep that names no law, else as given."""
    if not pooled or "law" in settings.model_fields_set:
        return settings
    return type(settings).model_validate({**settings.model_dump(exclude_unset=True), "law": DEFAULT_POOL_LAW})
