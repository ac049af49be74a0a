"""The scaling laws as small objects with vectorised `predict(N, D, U)`.

Base law (Hoffmann et al. 2022):       L(N, D) = E + A / N^alpha + B / D^beta

Data-constrained law (Muennighoff et al. 2023) replaces N and D by their effective values:

    U_D = min(U, D)                    unique tokens seen
    R_D = D / U_D - 1                  repetitions beyond the first epoch
    D'  = U_D + U_D * R_D* * (1 - exp(-R_D / R_D*))
    U_N = min(N, N_opt(U_D))           N_opt(U) = G * (G * U)^(beta / alpha),
                                       G = (alpha * A / (beta * B))^(1 / (alpha + beta))
    R_N = N / U_N - 1                  "excess" parameters beyond what U_D can feed
    N'  = U_N + U_N * R_N* * (1 - exp(-R_N / R_N*))

With R_D* = R_N* = inf a repeated token is worth a fresh one and the base law is recovered.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import ClassVar

import numpy as np

from scaling.errors import InputError

BASE_PARAM_NAMES = ("E", "A", "B", "alpha", "beta")
PARAM_NAMES = (*BASE_PARAM_NAMES, "rd_star", "rn_star")


def optimality_ratio(A, B, alpha, beta):
    """G = (alpha A / (beta B))^(1/(alpha+beta)): N_opt = G (C/6)^(beta/(alpha+beta)) for the base law."""
    return (alpha * A / (beta * B)) ** (1.0 / (alpha + beta))


def optimal_params_for_data(U, A, B, alpha, beta):
    """N_opt(U): the base law's compute-optimal model size for U tokens seen once."""
    G = optimality_ratio(A, B, alpha, beta)
    return G * (G * U) ** (beta / alpha)


def saturate(R, r_star):
    """R* (1 - exp(-R / R*)): the worth of R repetitions in fresh units; R itself when R* is infinite."""
    with np.errstate(invalid="ignore"):
        return np.where(np.isinf(r_star), R, r_star * -np.expm1(-R / r_star))


def effective_data(D, U, rd_star):
    """D': the fresh-token equivalent of D tokens drawn from U unique ones."""
    unique_seen = np.minimum(U, D)
    return unique_seen * (1.0 + saturate(D / unique_seen - 1.0, rd_star))


def effective_params(N, D, U, A, B, alpha, beta, rn_star):
    """N': the useful-parameter equivalent of N parameters when only min(U, D) unique tokens feed them."""
    usable = np.minimum(N, optimal_params_for_data(np.minimum(U, D), A, B, alpha, beta))
    return usable * (1.0 + saturate(N / usable - 1.0, rn_star))


def predict_loss(N, D, U, E, A, B, alpha, beta, rd_star, rn_star):
    """The data-constrained law, broadcasting over every argument (parameters may be arrays too)."""
    N, D, U = (np.asarray(v, dtype=float) for v in (N, D, U))
    n_eff = effective_params(N, D, U, A, B, alpha, beta, rn_star)
    d_eff = effective_data(D, U, rd_star)
    return E + A / n_eff**alpha + B / d_eff**beta


@dataclass(frozen=True)
class BaseLaw:
    """L(N, D) = E + A / N^alpha + B / D^beta; repetition-blind (U is ignored)."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    name: ClassVar[str] = "base"

    def predict(self, N, D, U=None) -> np.ndarray:
        """Predicted loss for N parameters trained on D tokens (U is accepted and ignored)."""
        N, D = np.asarray(N, dtype=float), np.asarray(D, dtype=float)
        return self.E + self.A / N**self.alpha + self.B / D**self.beta

    def compute_optimal(self, flops):
        """(N_opt, D_opt) minimising the law at compute C = 6 N D, in closed form."""
        flops = np.asarray(flops, dtype=float)
        G = optimality_ratio(self.A, self.B, self.alpha, self.beta)
        n_opt = G * (flops / 6.0) ** (self.beta / (self.alpha + self.beta))
        return n_opt, flops / (6.0 * n_opt)

    def params(self) -> dict[str, float]:
        """All parameters by name (linear space)."""
        return asdict(self)

    def full_params(self) -> dict[str, float]:
        """Parameters of the data-constrained family: the base law is its R_D* = R_N* = inf limit."""
        return {**self.params(), "rd_star": math.inf, "rn_star": math.inf}

    @property
    def base(self) -> "BaseLaw":
        """The base law itself."""
        return self


@dataclass(frozen=True)
class DataConstrainedLaw:
    """The base law with repeated tokens and excess parameters decaying in value (module docstring)."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    rd_star: float
    rn_star: float

    name: ClassVar[str] = "data-constrained"

    def predict(self, N, D, U=None) -> np.ndarray:
        """Predicted loss for N parameters trained on D tokens drawn from U unique ones (U=None: U = D)."""
        return predict_loss(N, D, D if U is None else U, **self.params())

    def params(self) -> dict[str, float]:
        """All parameters by name (linear space)."""
        return asdict(self)

    full_params = params

    @property
    def base(self) -> BaseLaw:
        """The underlying base law (E, A, B, alpha, beta)."""
        return BaseLaw(*(getattr(self, name) for name in BASE_PARAM_NAMES))


Law = BaseLaw | DataConstrainedLaw
# The laws over several data pools (`scaling.pool_laws`): same registry of names, their own classes.
POOL_LAW_NAMES = ("multi-pool", "qqt")
LAW_NAMES = (DataConstrainedLaw.name, BaseLaw.name, *POOL_LAW_NAMES)


def unknown_law(kind) -> InputError:
    """The error for a law name that is not in the registry."""
    return InputError("law", f"{kind!r} is not a law; choose one of {', '.join(LAW_NAMES)}")

_C4 = dict(E=math.exp(0.6254804), A=math.exp(6.255414), B=math.exp(7.3049974), alpha=0.3526596, beta=0.3526596)
PRESETS: dict[str, Law] = {
    # Hoffmann et al. 2022, approach 3: the base law, repetition-blind
    "chinchilla": BaseLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28),
    # Muennighoff et al. 2023: the data-constrained law fitted on 182 C4 runs
    "c4": DataConstrainedLaw(**_C4, rd_star=15.387756, rn_star=5.309743),
}


def preset(name: str) -> Law:
    """A named preset law; InputError listing the names otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise InputError("preset", f"{name!r} is not a preset; choose one of {', '.join(PRESETS)}") from None


def param_names(kind: str) -> tuple[str, ...]:
    """The parameter names of a law of `kind`: five for the base law, seven for the data-constrained law."""
    return BASE_PARAM_NAMES if kind == BaseLaw.name else PARAM_NAMES


def law_from_params(kind: str, params: dict[str, float]) -> Law:
    """Build a law of `kind` ('base' or 'data-constrained') from a parameter mapping."""
    cls = {BaseLaw.name: BaseLaw, DataConstrainedLaw.name: DataConstrainedLaw}.get(kind)
    if cls is None:
        raise unknown_law(kind)
    return cls(**{name: float(params[name]) for name in param_names(kind)})
