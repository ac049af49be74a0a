"""Which runs to train next: the batch that most shrinks the uncertainty of the answer at (C, U).

The answer. For compute C and U unique tokens the law's answer is the optimal allocation: log N*
(log D* = log(C/6) - log N*, so it has the same spread; epochs* = D*/U too) and the predicted
loss L*. Its uncertainty is the spread of log N* and log L* over the bootstrap fits.

The model of what a run teaches. Treat the K bootstrap fits theta_1..theta_K as draws of the law.
Every quantity z(theta) -- log N*, log L*, the log-loss a candidate run would reach -- has a
value per draw, and any two have a covariance over the draws. Training a run x and observing its
log-loss y_x = yhat_x(theta) + eps, eps ~ N(0, s^2), updates all covariances linearly (linear
Bayes, the Kalman update):

    cov'(a, b) = cov(a, b) - cov(a, y_x) cov(y_x, b) / (var(y_x) + s^2)

Linearised about the fit (y = J theta, parameter covariance Sigma) this is the familiar
Sigma' = Sigma - Sigma j j^T Sigma / (j^T Sigma j + s^2) with var(q) = g^T Sigma g for a target of
gradient g. Here J and g are not derivatives at the fit but the draws themselves (statistical
linearisation, as an ensemble Kalman filter does): the same when the law is linear in theta over
the draws' spread, and free of derivatives through the allocation's kinks and of any choice of
which parameters are free (fixed ones do not vary across draws).

Square-root form. The centred draws of every quantity, divided by sqrt(K - 1), are the columns of
W (K x quantities), so cov = W^T W. Observing x with v = W[:, x] multiplies W on the left by
(I - a v v^T), a = 1 / (d + sqrt(s^2 d)), d = |v|^2 + s^2 (Potter's square-root update): O(K x
quantities) per run, exact for any number of runs.

The noise s^2 is the fit's residual variance in log-loss, sum r^2 / (n - p), p the directions in
which the draws vary (the free parameters), floored at NOISE_FLOOR. Runs already present count:
they are in every draw, so a candidate near them has a var(y_x) already small next to s^2 and earns
little; so does a second run near one already chosen, whose information the update has taken.

The choice. The uncertainty is u = sum_q var_q / var_q(now) over q in (log N*, log L*), 1 each
today. A run's gain is the fraction of today's uncertainty it removes at its turn (gains add up).
Taking the most gain within B FLOPs and K runs is a budgeted covering problem with two budgets.
The batch is built greedily three ways, each adding the affordable candidate of the best gain per
cost, and the one that removes the most is kept: cost = FLOPs (C = 6ND) / B, the cost-effective
greedy; cost = FLOPs / B + 1 / K, a run's share of both budgets; cost = 1, gain alone (Leskovec et
al. 2007, "Cost-effective outbreak detection", keep the better of per-cost and plain greedy). Per
FLOP alone fills the K slots with crumbs when runs rather than FLOPs run out; gain alone spends the
budget on few large runs. A candidate is taken at most once; greedy stops when no affordable
candidate gains anything.

Candidates: model sizes (default a ladder sqrt(2) apart from the smallest N of the runs to
SIZE_REACH times the largest), unique budgets (a ladder 2x apart from the smallest U of the runs
up to the target U) and epochs 1..E; sizes and budgets are rounded to 3 significant digits.

Expected intervals: today's percentile intervals shrunk towards the point estimate by the ratio of
standard deviations after and before (in log space for N, D, epochs and the loss).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from scaling.allocate import allocation_records, optimal_allocation, samples_arrays
from scaling.errors import InputError
from scaling.laws import Law, predict_loss
from scaling.runs import RunTable

SIZE_STEP = math.sqrt(2.0)  # default size ladder: two sizes per doubling
SIZE_REACH = 4.0  # the ladder reaches this many times the largest N of the runs
BUDGET_STEP = 2.0  # default unique-budget ladder: a factor of 2 apart
NOISE_FLOOR = 1e-8  # s^2 at least (1e-4 in log-loss): no evaluation is more exact than that
MIN_DRAWS = 10
ANSWER = ("params", "tokens", "epochs", "loss")  # the quantities of the answer at the target, as records show them


class Candidates(NamedTuple):
    """Candidate runs: N, D and U arrays of one length."""

    params: np.ndarray
    tokens: np.ndarray
    unique_tokens: np.ndarray

    @property
    def flops(self) -> np.ndarray:
        """Training compute 6 N D of each candidate."""
        return 6.0 * self.params * self.tokens


class Suggestion(NamedTuple):
    """The chosen candidates (indices, in order of choice), each one's gain, and the target variances."""

    chosen: np.ndarray
    gains: np.ndarray  # fraction of today's uncertainty each run removes at its turn
    variance_now: np.ndarray  # var log N*, var log L* over the draws
    variance_after: np.ndarray  # the same, expected once the chosen runs are observed


def round_significant(values, digits: int = 3) -> np.ndarray:
    """Values rounded to `digits` significant digits (positive inputs)."""
    values = np.asarray(values, dtype=float)
    scale = 10.0 ** (np.floor(np.log10(values)) - (digits - 1))
    return np.round(values / scale) * scale


def _ladder(low: float, high: float, step: float) -> np.ndarray:
    count = max(int(math.ceil(math.log(high / low) / math.log(step) - 1e-9)), 0) + 1
    return np.geomspace(low, high, count)


def size_ladder(table: RunTable, step: float = SIZE_STEP, reach: float = SIZE_REACH) -> np.ndarray:
    """Default candidate sizes: `step` apart from the runs' smallest N to `reach` times their largest."""
    return np.unique(round_significant(_ladder(table.params.min(), reach * table.params.max(), step)))


def budget_ladder(table: RunTable, unique_tokens: float, step: float = BUDGET_STEP) -> np.ndarray:
    """Candidate unique budgets: `step` apart from the runs' smallest U up to the target U (kept exact)."""
    return unique_ladder(float(table.unique_tokens.min()), unique_tokens, step)


def unique_ladder(low: float, unique_tokens: float, step: float = BUDGET_STEP) -> np.ndarray:
    """Unique budgets `step` apart from `low` up to `unique_tokens` (kept exact), rounded to 3 significant digits."""
    if unique_tokens < low:
        raise InputError("unique_tokens", f"{unique_tokens:g} is below the smallest candidate budget, the runs' "
                                          f"smallest U = {low:g}; suggestions need U >= {low:g}")
    ladder = round_significant(_ladder(low, unique_tokens, step)[:-1])
    return np.unique(np.append(ladder[ladder < unique_tokens], unique_tokens))


def candidate_runs(sizes, budgets, max_epochs: int) -> Candidates:
    """Every size x unique budget x whole epochs 1..max_epochs."""
    if max_epochs < 1:
        raise InputError("max_epochs", f"{max_epochs} must be at least 1")
    n, u, e = np.meshgrid(np.asarray(sizes, dtype=float), np.asarray(budgets, dtype=float),
                          np.arange(1, max_epochs + 1, dtype=float), indexing="ij")
    return Candidates(n.ravel(), (u * e).ravel(), u.ravel())


def target_draws(samples: np.ndarray, flops: float, unique_tokens: float) -> np.ndarray:
    """(K, 2): log N* and log L* of the optimal allocation at (C, U) under each draw (log-space rows)."""
    best = optimal_allocation(samples_arrays(samples), flops, unique_tokens)
    return np.column_stack([np.log(best.params).ravel(), np.log(best.loss).ravel()])


def candidate_draws(samples: np.ndarray, candidates: Candidates) -> np.ndarray:
    """(K, M): the log-loss each draw predicts for each candidate."""
    loss = predict_loss(candidates.params, candidates.tokens, candidates.unique_tokens, **samples_arrays(samples))
    return np.log(loss)


def noise_variance(law: Law, table: RunTable, samples: np.ndarray) -> float:
    """s^2: the residual variance of log-loss, sum r^2 / (n - p), p the directions the draws vary in."""
    residuals = np.log(table.loss) - np.log(law.predict(table.params, table.tokens, table.unique_tokens))
    finite = samples[:, np.isfinite(samples).all(axis=0)]
    free = np.linalg.matrix_rank(finite - finite.mean(axis=0)) if len(finite) > 1 else 0
    return max(float((residuals**2).sum()) / max(len(table) - free, 1), NOISE_FLOOR)


def check_budget(flops: np.ndarray, budget: float) -> None:
    """InputError unless `budget` affords the cheapest of the candidates' `flops`."""
    if not budget >= np.min(flops):
        raise InputError("budget", f"{budget:g} FLOPs is below the cheapest candidate run ({np.min(flops):.3g} FLOPs)")


def _centred_root(draws: np.ndarray) -> np.ndarray:
    """The square root W of the draws' covariance: centred columns over sqrt(K - 1)."""
    return (draws - draws.mean(axis=0)) / math.sqrt(len(draws) - 1)


def _observe(root: np.ndarray, column: int, noise: float) -> np.ndarray:
    """Potter's square-root update of `root` (K x quantities) on observing quantity `column` with noise."""
    v = root[:, column]
    d = float(v @ v) + noise
    return root - np.outer(v, (v @ root) / (d + math.sqrt(noise * d)))


def _greedy(root: np.ndarray, scale: np.ndarray, flops: np.ndarray, cost: np.ndarray, budget: float,
            count: int, noise: float) -> tuple[list[int], list[float]]:
    """Greedy picks by gain per `cost` within `budget` FLOPs and `count` runs: candidate indices and gains."""
    m = len(scale)
    chosen, gains, spent = [], [], 0.0
    open_ = flops <= budget
    for _ in range(count):
        targets, predictions = root[:, :m], root[:, m:]
        covariance = targets.T @ predictions  # (m, M)
        gain = ((covariance**2) / scale[:, None]).sum(axis=0) / ((predictions**2).sum(axis=0) + noise)
        affordable = open_ & (flops <= budget - spent) & (gain > 1e-12)
        if not affordable.any():
            break
        x = int(np.argmax(np.where(affordable, gain / cost, -np.inf)))
        chosen.append(x)
        gains.append(float(gain[x]))
        spent += flops[x]
        open_[x] = False
        root = _observe(root, m + x, noise)
    return chosen, gains


def choose_batch(targets: np.ndarray, predictions: np.ndarray, flops: np.ndarray, budget: float, count: int,
                 noise: float) -> Suggestion:
    """The batch of at most `count` candidates within `budget` FLOPs that most shrinks the targets' spread.

    `targets` (K, m) and `predictions` (K, M) are the draws' values of the target quantities and of
    the candidates' log-losses; `noise` is s^2 of a run's log-loss (see the module docstring).
    """
    flops = np.asarray(flops, dtype=float)
    check_budget(flops, budget)
    if count < 1:
        raise InputError("count", f"{count} must be at least 1")
    if len(targets) < MIN_DRAWS:
        raise InputError("bootstrap", f"{len(targets)} draws of the law are too few; need at least {MIN_DRAWS}")
    root = _centred_root(np.column_stack([targets, predictions]))
    variance_now = (root[:, : targets.shape[1]] ** 2).sum(axis=0)
    scale = np.where(variance_now > 0, variance_now, np.inf) * targets.shape[1]  # u = 1 today
    costs = (flops / budget, flops / budget + 1.0 / count, np.ones_like(flops))  # per FLOP, per share of both, per run
    options = [_greedy(root, scale, flops, cost, budget, count, noise) for cost in costs]
    chosen, gains = max(options, key=lambda option: (sum(option[1]), -flops[option[0]].sum()))
    return Suggestion(np.array(chosen, dtype=int), np.array(gains), variance_now,
                      batch_variance(targets, predictions, chosen, noise))


def batch_variance(targets: np.ndarray, predictions: np.ndarray, batch, noise: float) -> np.ndarray:
    """The targets' variances expected once the candidates `batch` (indices into `predictions`) are observed."""
    root = _centred_root(np.column_stack([targets, predictions[:, list(batch)]]))
    for j in range(len(batch)):
        root = _observe(root, targets.shape[1] + j, noise)
    return (root[:, : targets.shape[1]] ** 2).sum(axis=0)


def suggest(samples: np.ndarray, law: Law, table: RunTable, candidates: Candidates, flops: float,
            unique_tokens: float, budget: float, count: int, costs: np.ndarray | None = None) -> Suggestion:
    """The next runs for the target (C = `flops`, U): draws from `samples` (K, 7), noise from `law` on `table`.

    `costs` are the candidates' FLOPs as the budget counts them; default `candidates.flops` (6 N D).
    """
    return choose_batch(target_draws(samples, flops, unique_tokens), candidate_draws(samples, candidates),
                        candidates.flops if costs is None else costs, budget, count, noise_variance(law, table, samples))


def suggestion_record(samples: np.ndarray, law: Law, table: RunTable, candidates: Candidates, flops: float,
                      unique_tokens: float, budget: float, count: int,
                      costs: np.ndarray | None = None) -> tuple[Suggestion, dict]:
    """The suggestion (as `suggest`) and its record: the target, the answer now with its intervals, the chosen
    runs (params, tokens, unique_tokens, epochs, flops, gain), the expected intervals after them, the FLOPs used."""
    costs = candidates.flops if costs is None else np.asarray(costs, dtype=float)
    choice = suggest(samples, law, table, candidates, flops, unique_tokens, budget, count, costs)
    now = allocation_records(law.full_params(), np.array([flops]), unique_tokens, samples)[0]
    ratio = np.sqrt(choice.variance_after / np.where(choice.variance_now > 0, choice.variance_now, 1.0))
    shrink = {"params": ratio[0], "tokens": ratio[0], "epochs": ratio[0], "loss": ratio[1]}
    chosen = [{"params": float(candidates.params[i]), "tokens": float(candidates.tokens[i]),
               "unique_tokens": float(candidates.unique_tokens[i]),
               "epochs": float(candidates.tokens[i] / candidates.unique_tokens[i]),
               "flops": float(costs[i]), "gain": float(gain)}
              for i, gain in zip(choice.chosen, choice.gains)]
    record = {
        "target": {"flops": flops, "unique_tokens": unique_tokens},
        "now": {**{key: now[key] for key in ANSWER}, "intervals": now["intervals"]},
        "runs": chosen,
        "expected_intervals": {key: expected_interval(now[key], now["intervals"][key], shrink[key]) for key in ANSWER},
        "budget_used": float(sum(run["flops"] for run in chosen)),
    }
    return choice, record


def expected_interval(point: float, interval, ratio: float) -> list[float]:
    """A positive quantity's interval shrunk towards `point` by `ratio` (of standard deviations) in log space."""
    low, high = interval
    return [float(point * (low / point) ** ratio), float(point * (high / point) ** ratio)]
