import math

import numpy as np
import pytest

from pool_runs import BASE, MULTI_POOL_TRUTH, QQT_TRUTH, pool_runs
from scaling.allocate import allocate
from scaling.errors import InputError
from scaling.laws import POOL_LAW_NAMES, BaseLaw, preset
from scaling.pool_allocate import PAYS_SHARE, allocate_pools, pays_from, stick_shares
from scaling.pool_fit import PoolFitSpec, bootstrap_pools, fit_pools, pool_extrapolation_check, pool_predictions
from scaling.pool_laws import POOL_LAWS, pool_law_from_params
from scaling.runs import read_csv_runs

C4 = preset("c4")
C4_PARAMS = C4.params()


def random_points(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    params = np.exp(rng.uniform(np.log(1e6), np.log(1e12), n))
    unique = np.exp(rng.uniform(np.log(1e7), np.log(1e12), n))
    tokens = unique * np.exp(rng.uniform(np.log(0.05), np.log(500.0), n))
    return params, tokens, unique


def test_registry_names_match_the_pool_law_classes():
    assert tuple(POOL_LAWS) == POOL_LAW_NAMES == ("multi-pool", "qqt")


def test_one_pool_multi_pool_law_is_the_data_constrained_law_to_1e12():
    own = {k: C4_PARAMS[k] for k in ("E", "A", "B", "alpha", "beta", "rn_star")}
    law = pool_law_from_params("multi-pool", ["c4"], {**own, "rd_star.c4": C4_PARAMS["rd_star"]})
    params, tokens, unique = random_points()
    expected = C4.predict(params, tokens, unique)
    np.testing.assert_allclose(law.predict(params, tokens[:, None], unique[:, None]), expected, rtol=1e-12, atol=0)


def test_multi_pool_quality_weights_scale_the_effective_data():
    # two identical pools with q = 1 drawn half each are one pool of twice the size
    law = pool_law_from_params("multi-pool", ["a", "b"], {**{k: C4_PARAMS[k] for k in ("E", "A", "B", "alpha", "beta",
                               "rn_star")}, "q.b": 1.0, "rd_star.a": C4_PARAMS["rd_star"], "rd_star.b": C4_PARAMS["rd_star"]})
    params, tokens, unique = random_points(200)
    halves = np.column_stack([tokens / 2, tokens / 2])
    np.testing.assert_allclose(law.predict(params, halves, np.column_stack([unique / 2, unique / 2])),
                               C4.predict(params, tokens, unique), rtol=1e-12)
    worse = pool_law_from_params("multi-pool", ["a", "b"], {**law.params(), "q.b": 0.5})
    assert (worse.predict(params, halves, halves) > law.predict(params, halves, halves)).all()


def test_qqt_with_fresh_pools_is_the_base_law_and_utility_halves_every_tau_repetitions():
    law = QQT_TRUTH
    params, tokens, _ = random_points(200)
    fresh = tokens[:, None] * np.array([0.2, 0.3, 0.5])
    one_utility = pool_law_from_params("qqt", law.pools, {**law.params(), "u.code": 1.0, "u.books": 1.0})
    np.testing.assert_allclose(one_utility.predict(params, fresh, fresh), BaseLaw(**BASE).predict(params, tokens),
                               rtol=1e-12)
    # one pool repeated: in repetition k (epoch k + 1) the data term falls with exponent beta 2^(-k / tau)
    single = pool_law_from_params("qqt", ["web"], {**BASE, "tau.web": 8.0})
    unique = 1e9
    for k in (0, 1, 5, 20):
        d = unique * np.array([k + 0.2, k + 0.8]) if k == 0 else unique * np.array([k + 1.2, k + 1.8]) - unique
        data_term = single.predict(1e30, d[:, None], np.full((2, 1), unique)) - BASE["E"] - BASE["A"] / 1e30 ** 0.34
        slope = -np.diff(np.log(data_term))[0] / np.diff(np.log(d))[0]
        assert slope == pytest.approx(BASE["beta"] * 2.0 ** (-k / 8.0), rel=1e-9)


def test_multi_pool_synthetic_recovery_with_the_base_fixed():
    table = pool_runs(MULTI_POOL_TRUTH)
    result = fit_pools(table, PoolFitSpec("multi-pool", BaseLaw(**BASE)))
    got, truth = result.law.params(), MULTI_POOL_TRUTH.params()
    for name in ("q.code", "q.books"):
        assert got[name] == pytest.approx(truth[name], rel=0.03), name
    for name in ("rn_star", "rd_star.web", "rd_star.code", "rd_star.books"):
        assert got[name] == pytest.approx(truth[name], rel=0.15), name
    assert got["q.web"] == 1.0 and got["E"] == BASE["E"] and result.at_bounds == ()


def test_multi_pool_noiseless_joint_fit_recovers_every_parameter():
    truth_law = pool_law_from_params("multi-pool", ["web", "code"], {
        **BASE, "rn_star": 4.0, "q.code": 0.6, "rd_star.web": 15.0, "rd_star.code": 6.0})
    table = pool_runs(truth_law, n=60, noise=0.0, seed=4)  # two pools keep the central differences cheap
    result = fit_pools(table, PoolFitSpec("multi-pool"))
    assert result.objective < 1e-10 and result.problem.free[:5] == ("E", "A", "B", "alpha", "beta")
    got, truth = result.law.params(), truth_law.params()
    for name, value in truth.items():
        assert got[name] == pytest.approx(value, rel=1e-3), name


def test_pool_leave_out_check_fits_below_the_threshold_and_scores_the_rest():
    table = pool_runs(MULTI_POOL_TRUTH, noise=0.0)  # runs of the true law: the law fitted below extrapolates exactly
    spec = PoolFitSpec("multi-pool", BaseLaw(**BASE))
    check = pool_extrapolation_check(table, spec)
    threshold = float(np.quantile(table.flops, 0.75))
    below = table.flops <= threshold
    assert check["threshold_flops"] == threshold and (check["n_fit"], check["n_held_out"]) == (below.sum(), (~below).sum())
    assert check["mean_abs_relative_error"] < 1e-6 and check["params"]["q.code"] == pytest.approx(0.6, rel=1e-4)
    noisy = pool_runs(MULTI_POOL_TRUTH)  # 1% noise: the held-out runs' error is the fit's own, computed here again
    check = pool_extrapolation_check(noisy, spec, threshold=threshold)
    held_out = noisy.subset(noisy.flops > threshold)
    law = fit_pools(noisy.subset(noisy.flops <= threshold), spec).law
    error = np.abs(held_out.loss - pool_predictions(law, held_out)) / held_out.loss
    assert check["mean_abs_relative_error"] == pytest.approx(error.mean(), rel=1e-9) and 0 < error.mean() < 0.03
    with pytest.raises(InputError, match="leaves no runs on one side"):
        pool_extrapolation_check(noisy, spec, threshold=float(noisy.flops.max()))


def test_qqt_synthetic_recovery_with_the_base_fixed():
    table = pool_runs(QQT_TRUTH, n=300, seed=3, max_epochs=30.0)
    result = fit_pools(table, PoolFitSpec("qqt", BaseLaw(**BASE)))
    got, truth = result.law.params(), QQT_TRUTH.params()
    for name in ("u.code", "u.books"):
        assert got[name] == pytest.approx(truth[name], rel=0.03), name
    for name in ("tau.web", "tau.code", "tau.books"):
        assert got[name] == pytest.approx(truth[name], rel=0.15), name


def test_bootstrap_of_a_pool_fit_is_seeded_and_brackets_the_estimate():
    table = pool_runs(MULTI_POOL_TRUTH, n=150, seed=2)
    result = fit_pools(table, PoolFitSpec("multi-pool", BaseLaw(**BASE)))
    first = bootstrap_pools(table, result, 20, seed=7)
    np.testing.assert_array_equal(first, bootstrap_pools(table, result, 20, seed=7))
    lo, hi = np.percentile(first, [2.5, 97.5], axis=0)
    assert ((lo <= result.z + 1e-9) & (result.z - 1e-9 <= hi)).all() and (hi > lo).all()


TWO_POOLS = pool_law_from_params("multi-pool", ["hq", "web"], {
    **{k: C4_PARAMS[k] for k in ("E", "A", "B", "alpha", "beta", "rn_star")}, "q.web": 0.5,
    "rd_star.hq": C4_PARAMS["rd_star"], "rd_star.web": C4_PARAMS["rd_star"]})
TWO_UNIQUE = np.array([1e9, 1e11])


def test_allocation_is_never_worse_than_a_dense_brute_force_search():
    flops = np.array([1e18, 1e20, 1e22])
    best = allocate_pools(TWO_POOLS, flops, TWO_UNIQUE)
    np.testing.assert_allclose(best.tokens * best.params * 6.0, flops, rtol=1e-12)
    np.testing.assert_allclose(best.pool_tokens.sum(axis=1), best.tokens, rtol=1e-12)
    x, s = np.meshgrid(np.linspace(-8.0, 8.0, 801), np.linspace(0.0, 1.0, 801), indexing="ij")
    for i, c in enumerate(flops):
        n = np.exp(0.5 * np.log(c / 6.0) + x)
        drawn = (c / 6.0 / n)[..., None] * stick_shares(s[..., None])
        loss = TWO_POOLS.predict(n, drawn, TWO_UNIQUE)
        k = np.unravel_index(loss.argmin(), loss.shape)
        assert best.loss[i] <= loss[k] + 1e-12
        assert best.params[i] == pytest.approx(n[k], rel=0.03)
        assert best.pool_tokens[i, 1] / best.tokens[i] == pytest.approx(s[k], abs=0.005)
        assert best.loss[i] == pytest.approx(TWO_POOLS.predict(best.params[i], best.pool_tokens[i], TWO_UNIQUE), rel=1e-14)


def test_one_pool_allocation_is_the_one_pool_allocate():
    law = pool_law_from_params("multi-pool", ["c4"], {**{k: C4_PARAMS[k] for k in ("E", "A", "B", "alpha", "beta",
                               "rn_star")}, "rd_star.c4": C4_PARAMS["rd_star"]})
    flops = np.array([1e19, 1e21, 1e23])
    ours = allocate_pools(law, flops, [25e9])
    reference = allocate(C4, flops, 25e9)
    np.testing.assert_allclose(ours.loss, reference.loss, rtol=1e-10)
    np.testing.assert_allclose(ours.params, reference.params, rtol=1e-3)
    assert pays_from(law, [25e9]) == {}


def test_allocation_over_parameter_samples_in_one_call():
    flops = [1e19, 1e21]
    q_web = np.array([0.5, 0.5, 0.3])
    spread = allocate_pools(TWO_POOLS, flops, TWO_UNIQUE, {"q.web": q_web})
    assert spread.params.shape == (3, 2) and spread.pool_tokens.shape == (3, 2, 2)
    alone = allocate_pools(TWO_POOLS, flops, TWO_UNIQUE)
    np.testing.assert_allclose(spread.loss[0], alone.loss, rtol=1e-12)
    worse = pool_law_from_params("multi-pool", TWO_POOLS.pools, {**TWO_POOLS.params(), "q.web": 0.3})
    np.testing.assert_allclose(spread.loss[2], allocate_pools(worse, flops, TWO_UNIQUE).loss, rtol=1e-9)


def test_the_lower_quality_pool_pays_from_a_compute_threshold():
    threshold = pays_from(TWO_POOLS, TWO_UNIQUE)["web"]
    assert 1e17 < threshold < 1e20
    below, above = allocate_pools(TWO_POOLS, [threshold * 0.9, threshold * 1.1], TWO_UNIQUE).pool_tokens
    assert below[1] < PAYS_SHARE * below.sum() and above[1] >= PAYS_SHARE * above.sum()
    # the high-quality pool is repeated before the other is touched: several epochs at the threshold
    at = allocate_pools(TWO_POOLS, [threshold], TWO_UNIQUE)
    assert at.epochs[0, 0] > 1.5


def test_multi_pool_table_reads_pools_in_column_order(tmp_path):
    path = tmp_path / "runs.csv"
    path.write_text("params,tokens.code,unique_tokens.code,tokens.web,loss\n1e8,2e9,1e9,3e9,3.1\n2e8,0,1e9,4e9,3.0\n")
    table = read_csv_runs(path)
    assert table.pools == ("code", "web")
    np.testing.assert_array_equal(table.tokens, [5e9, 4e9])
    np.testing.assert_array_equal(table.pool_unique[:, 1], table.pool_tokens[:, 1])  # U = D when not given
    np.testing.assert_array_equal(table.unique_tokens, [4e9, 4e9])  # sum of min(U_i, D_i)
    assert table.subset(np.array([False, True])).pool_tokens.tolist() == [[0.0, 4e9]]
    assert table.sha256() == table.subset(np.array([True, True])).sha256()


@pytest.mark.parametrize("text, message", [
    ("params,tokens.web,unique_tokens.wiki,loss\n1,2,1,3\n", "column 'unique_tokens.wiki': pool 'wiki' has no tokens.wiki column"),
    ("params,tokens.web,tokens.web,loss\n1,2,2,3\n", "column 'tokens.web' appears more than once"),
    ("params,tokens.web,unique_tokens.web,loss\n1,2,1,3\n1,2,-1,3\n", "line 3: unique_tokens.web = '-1' must be > 0"),
    ("params,tokens.web,loss\n1,-2,3\n", "line 2: tokens.web = '-2' must be >= 0"),
    ("params,tokens.a,tokens.b,loss\n1,0,0,3\n", "line 2: tokens.a ... tokens.b are all 0"),
    ("params,tokens.w b,loss\n1,2,3\n", "pool name 'w b' is not allowed"),
    ("params,tokens,tokens.a,tokens.b,loss\n1,5,2,2,3\n", "line 2: tokens = 5 is not the sum of the pools' tokens (4)"),
])
def test_bad_pool_tables_are_one_line_naming_row_column_and_value(tmp_path, text, message):
    path = tmp_path / "runs.csv"
    path.write_text(text)
    with pytest.raises(InputError) as info:
        read_csv_runs(path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_pool_law_specs_are_checked():
    with pytest.raises(InputError, match="'cubic' is not a law; choose one of data-constrained, base, multi-pool, qqt"):
        PoolFitSpec("cubic")
    with pytest.raises(InputError, match="pool 'a' is given twice"):
        pool_law_from_params("multi-pool", ["a", "a"], {})
    with pytest.raises(InputError, match="rd_star.b = None must be a positive number"):
        pool_law_from_params("multi-pool", ["a", "b"], {**BASE, "rn_star": 1.0, "q.b": 1.0, "rd_star.a": 1.0})
    with pytest.raises(InputError, match="has no per-pool columns"):
        fit_pools(read_one_pool_table(), PoolFitSpec("multi-pool", BaseLaw(**BASE)))
    assert math.isfinite(TWO_POOLS.predict(1e9, [1e10, 0.0], TWO_UNIQUE))  # an unused pool is fine


def read_one_pool_table():
    from conftest import synthetic_runs, TRUE_LAW
    return synthetic_runs(TRUE_LAW, 0.0)
