"""Laws over several data pools: `multi-pool` (the data-constrained law per pool) and `qqt` (Goyal et al.).

A run draws D_i tokens from pool i, which holds U_i unique tokens; the first pool is the reference.

``multi-pool`` (DESIGN.md, "Multi-pool law"):

    U_Di = min(U_i, D_i),  R_i = D_i / U_Di - 1,  D'_i = U_Di (1 + R*_i (1 - exp(-R_i / R*_i)))
    D' = sum_i q_i D'_i,   U' = sum_i q_i U_Di,   q_1 = 1
    U_N = min(N, N_opt(U')),  N' = U_N (1 + R_N* (1 - exp(-R_N / R_N*))),  R_N = N / U_N - 1
    L = E + A / N'^alpha + B / D'^beta

With one pool it is the data-constrained law of `scaling.laws` exactly.

``qqt``: Goyal et al. 2024, "Scaling Laws for Data Filtering: Data Curation cannot be Compute
Agnostic" (arXiv 2404.07177), section 3; the exact form checked against the authors' public code
(locuslab/scaling_laws_data_filtering, `objective.py`: `func_effective_utility` and
`func_effective_utility_aggregation`). A pool's error falls as a power law in the samples seen,
y = a n^b (b < 0, the pool's *utility*); in epoch e = 0, 1, 2, ... the utility is b 0.5^(e / tau) (it
halves every tau repetitions, tau the pool's half-life) and the curve continues from where the
previous epoch left it, y_e = y_(e-1) (n / n_(e-1))^(b_e); a mixture's utility is the mean of its
pools' current utilities. Here the decay acts on the data term of L = E + A / N^alpha + B / D_q^beta
(the authors' code also scales their floor d), pool i's utility is -beta u_i (u_1 = 1), and a mixture
weights its pools by w_i = D_i / D, their share of the draws (the paper mixes equal shares), so that
integrating d log y = b_eff(n) d log n over the run gives

    log D_q = sum_i w_i u_i (l_i - log w_i)
    l_i = log U_Di + sum_{k>=1} 2^(-k / tau_i) log(clip(D_i / U_Di, k, k + 1) / k)

With every pool fresh (D_i <= U_i) and u_i = 1 it is the base law with D_q = D. N is not
discounted (Goyal et al. fit a fixed architecture).

Parameters are held by name, linear: the five base ones, then the law's own (`rn_star`, `q.<pool>`,
`rd_star.<pool>` or `u.<pool>`, `tau.<pool>`). `theta` is the same in log space for the names in
`logged`. Everything is vectorised over runs and over parameter rows.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from scaling.errors import InputError
from scaling.laws import BASE_PARAM_NAMES, BaseLaw, optimal_params_for_data, saturate, unknown_law

POOL_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
MAX_REPETITION_TERMS = 4096  # qqt counts repetitions up to this many epochs (a cap on the work per evaluation)


def check_pool_names(pools, field: str = "pools") -> tuple[str, ...]:
    """The pool names as a tuple; InputError when one is empty, malformed or repeated."""
    pools = tuple(pools)
    if not pools:
        raise InputError(field, "no pools given")
    seen = set()
    for name in pools:
        if not POOL_NAME.match(name):
            raise InputError(field, f"pool name {name!r} is not allowed; use letters, digits, '_' and '-'")
        if name in seen:
            raise InputError(field, f"pool {name!r} is given twice")
        seen.add(name)
    return pools


def split_pools(tokens, unique):
    """U_D = min(U, D), and R = D / U_D - 1 (0 where the pool is unused), for arrays (..., P)."""
    tokens, unique = np.asarray(tokens, dtype=float), np.asarray(unique, dtype=float)
    seen = np.minimum(unique, tokens)
    with np.errstate(invalid="ignore", divide="ignore"):
        repeats = np.where(seen > 0, tokens / np.where(seen > 0, seen, 1.0) - 1.0, 0.0)
    return seen, repeats


def _qqt_log_data(tokens, seen, repeats, u, tau):
    """log D_q of the qqt law (module docstring) for arrays (..., P) of one row of parameters or broadcast rows."""
    total = tokens.sum(axis=-1, keepdims=True)
    share = tokens / total
    epochs = repeats + 1.0
    with np.errstate(divide="ignore"):
        log_seen = np.log(seen)
    longest = int(min(max(math.ceil(float(np.max(epochs))) - 1, 1), MAX_REPETITION_TERMS))
    k = np.arange(1.0, longest + 1.0)
    gained = np.log(np.clip(epochs[..., None], k, k + 1.0) / k)  # log of epoch k+1's share of the run, (..., P, k)
    weight = 2.0 ** (-k / np.asarray(tau)[..., None])  # utility left in repetition k, (..., P, k)
    extra = np.einsum("...k,...k->...", gained, weight)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_pool = np.where(share > 0, share * u * (log_seen + extra - np.log(share)), 0.0)
    return per_pool.sum(axis=-1)


def _per_pool(p: dict, prefix: str, pools) -> np.ndarray:
    """The per-pool parameter `prefix` as an array (..., P), its pools' values broadcast to one shape."""
    return np.stack(np.broadcast_arrays(*(np.asarray(p[f"{prefix}.{pool}"], dtype=float) for pool in pools)), axis=-1)


@dataclass(frozen=True)
class PoolLaw:
    """A law over named pools: `values` holds every parameter by name (linear space); see the module docstring."""

    pools: tuple[str, ...]
    values: dict

    name: ClassVar[str] = ""
    quality: ClassVar[str] = ""  # the per-pool weight (1 for the reference pool)
    decay: ClassVar[str] = ""  # the per-pool repetition constant
    shared: ClassVar[tuple[str, ...]] = ()  # parameters besides the base five, not per pool

    def __post_init__(self):
        check_pool_names(self.pools)
        missing = [n for n in self.param_names() if n not in self.values]
        if missing:
            raise InputError("law", f"{self.name} law lacks parameter {missing[0]!r}")
        for name in self.param_names():
            value = self.values[name]
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise InputError("law", f"{name} = {value!r} must be a positive number")

    @classmethod
    def names_for(cls, pools) -> tuple[str, ...]:
        """All parameter names of this law for `pools`."""
        return (*BASE_PARAM_NAMES, *cls.shared, *(f"{cls.quality}.{p}" for p in pools),
                *(f"{cls.decay}.{p}" for p in pools))

    @classmethod
    def free_names(cls, pools) -> tuple[str, ...]:
        """The names a fit may move: all but the reference pool's quality (fixed at 1)."""
        return tuple(n for n in cls.names_for(pools) if n != f"{cls.quality}.{pools[0]}")

    @classmethod
    def logged(cls, pools) -> tuple[str, ...]:
        """Names held as logs in theta: E, A, B and the qualities."""
        return ("E", "A", "B", *(f"{cls.quality}.{p}" for p in pools))

    def param_names(self) -> tuple[str, ...]:
        """All parameter names, in order."""
        return self.names_for(self.pools)

    def params(self) -> dict[str, float]:
        """All parameters by name (linear space)."""
        return {name: float(self.values[name]) for name in self.param_names()}

    @property
    def base(self) -> BaseLaw:
        """The underlying base law (E, A, B, alpha, beta)."""
        return BaseLaw(*(float(self.values[n]) for n in BASE_PARAM_NAMES))

    def predict(self, N, tokens, unique) -> np.ndarray:
        """Predicted loss for N parameters drawing tokens (..., P) from pools of unique sizes (..., P)."""
        return predict_pools(type(self), {k: np.asarray(v) for k, v in self.params().items()}, self.pools,
                             N, tokens, unique)


class MultiPoolLaw(PoolLaw):
    """The data-constrained law with a quality q_i and a decay constant R*_i per pool."""

    name = "multi-pool"
    quality = "q"
    decay = "rd_star"
    shared = ("rn_star",)

    @staticmethod
    def loss(p, pools, N, tokens, seen, repeats):
        """L for parameter arrays `p` broadcasting against runs; pool arrays (..., P)."""
        q = _per_pool(p, "q", pools)
        rd = _per_pool(p, "rd_star", pools)
        d_eff = (q * seen * (1.0 + saturate(repeats, rd))).sum(axis=-1)
        u_eff = (q * seen).sum(axis=-1)
        usable = np.minimum(N, optimal_params_for_data(u_eff, p["A"], p["B"], p["alpha"], p["beta"]))
        n_eff = usable * (1.0 + saturate(N / usable - 1.0, p["rn_star"]))
        return p["E"] + p["A"] / n_eff ** p["alpha"] + p["B"] / d_eff ** p["beta"]


class QQTLaw(PoolLaw):
    """Goyal et al.'s quality-quantity law: a utility u_i and a half-life tau_i (in repetitions) per pool."""

    name = "qqt"
    quality = "u"
    decay = "tau"
    shared = ()

    @staticmethod
    def loss(p, pools, N, tokens, seen, repeats):
        """L for parameter arrays `p` broadcasting against runs; pool arrays (..., P)."""
        u = _per_pool(p, "u", pools)
        tau = _per_pool(p, "tau", pools)
        log_d = _qqt_log_data(tokens, seen, repeats, u, tau)
        return p["E"] + p["A"] / N ** p["alpha"] + p["B"] * np.exp(-p["beta"] * log_d)


POOL_LAWS: dict[str, type[PoolLaw]] = {cls.name: cls for cls in (MultiPoolLaw, QQTLaw)}


def pool_law_class(kind: str) -> type[PoolLaw]:
    """The class of the pool law named `kind`; InputError listing the names otherwise."""
    try:
        return POOL_LAWS[kind]
    except KeyError:
        raise unknown_law(kind) from None


def predict_pools(cls: type[PoolLaw], p: dict, pools, N, tokens, unique) -> np.ndarray:
    """Loss of law class `cls` with parameter arrays `p` (broadcasting) at N (...,) and pool arrays (..., P)."""
    N = np.asarray(N, dtype=float)
    tokens, unique = np.asarray(tokens, dtype=float), np.asarray(unique, dtype=float)
    if tokens.shape[-1] != len(pools) or unique.shape[-1] != len(pools):
        raise InputError("pools", f"expected {len(pools)} pools ({', '.join(pools)}), got arrays of "
                                  f"{tokens.shape[-1]} and {unique.shape[-1]}")
    seen, repeats = split_pools(tokens, unique)
    return cls.loss(p, pools, N, tokens, seen, repeats)


def pool_law_from_params(kind: str, pools, params: dict) -> PoolLaw:
    """A pool law of `kind` over `pools`; the reference pool's quality defaults to 1."""
    cls = pool_law_class(kind)
    pools = check_pool_names(pools)
    values = {f"{cls.quality}.{pools[0]}": 1.0, **params}
    return cls(pools, {name: values.get(name) for name in cls.names_for(pools)})

