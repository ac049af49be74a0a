import numpy as np
import pytest

from conftest import TRUE_LAW, synthetic_runs
from scaling.bootstrap import bootstrap, parameter_intervals, resample_weights
from scaling.diagnostics import describe_fit, extrapolation_check
from scaling.errors import InputError
from scaling.fit import FitSpec, fit, halving_schedule, law_to_theta
from scaling.lawfile import fit_law_document, law_document
from scaling.laws import BaseLaw, preset
from scaling.objective import ALPHA, R_STARS, THETA_NAMES, FitData, objective
from scaling.optimize import batched_lbfgs
from scaling.runs import RunTable

C4_BASE = preset("c4").base
PUBLISHED_OBJECTIVE = 0.015825935258016132  # the Huber objective at R_D* = 15.387756, R_N* = 5.309743


@pytest.mark.parametrize("repetition", [True, False])
def test_analytic_gradient_matches_finite_differences(c4_runs, repetition):
    data = FitData.from_table(c4_runs)
    rng = np.random.default_rng(0)
    theta = law_to_theta(preset("c4")) + rng.normal(0.0, 0.05, size=(4, len(THETA_NAMES)))
    theta[:, R_STARS] = np.abs(theta[:, R_STARS]) + 0.5
    theta[0, ALPHA] = 0.6  # a start where many runs carry excess parameters
    weights = rng.integers(0, 3, size=(4, len(c4_runs))).astype(float)
    _, grad = objective(theta, data, weights, repetition=repetition)
    numeric = np.zeros_like(grad)
    for j in range(7):
        step = np.zeros(7)
        step[j] = 1e-6
        up = objective(theta + step, data, weights, repetition=repetition, with_grad=False)
        down = objective(theta - step, data, weights, repetition=repetition, with_grad=False)
        numeric[:, j] = (up - down) / 2e-6
    # finite differences straddle Huber kinks for a residual or two: 1e-4 rather than 1e-6 agreement
    np.testing.assert_allclose(grad, numeric, rtol=1e-4, atol=1e-9)


def test_objective_at_published_parameters(c4_runs):
    f = objective(law_to_theta(preset("c4"))[None, :], FitData.from_table(c4_runs), with_grad=False)
    assert f[0] == pytest.approx(PUBLISHED_OBJECTIVE, rel=1e-12)


def test_batched_lbfgs_solves_bounded_rosenbrocks():
    def rosenbrock(x, rows):
        a, b = x[:, 0], x[:, 1]
        f = (1 - a) ** 2 + 100 * (b - a * a) ** 2
        return f, np.stack([-2 * (1 - a) - 400 * a * (b - a * a), 200 * (b - a * a)], axis=1)

    starts = np.random.default_rng(0).uniform(-2, 2, size=(500, 2))
    free = batched_lbfgs(rosenbrock, starts, np.array([-5.0, -5.0]), np.array([5.0, 5.0]), max_iter=500)
    assert free.converged.all() and free.f.max() < 1e-12
    boxed = batched_lbfgs(rosenbrock, starts, np.array([-5.0, -5.0]), np.array([0.5, 5.0]), max_iter=500)
    np.testing.assert_allclose(boxed.x, np.tile([0.5, 0.25], (500, 1)), atol=1e-6)
    halved = batched_lbfgs(rosenbrock, starts, np.array([-5.0, -5.0]), np.array([5.0, 5.0]), halving={3: 20})
    assert (~halved.retired).sum() == 20 and halved.iterations[halved.retired].max() == 3


def test_halving_schedule():
    assert halving_schedule(4096) == {4: 1024, 12: 256, 28: 64, 60: 16}
    assert halving_schedule(10) == {}


def test_repetition_fit_reproduces_published_c4_law(c4_runs):
    result = fit(c4_runs, FitSpec(method="repetition", base=C4_BASE))
    assert result.law.rd_star == pytest.approx(15.39, abs=0.3)
    assert result.law.rn_star == pytest.approx(5.31, abs=0.2)
    assert result.objective <= PUBLISHED_OBJECTIVE
    assert result.fixed == ("E", "A", "B", "alpha", "beta") and result.at_bounds == ()
    assert result.starts == 256
    assert (result.law.E, result.law.alpha) == (C4_BASE.E, C4_BASE.alpha)


def test_wider_r_star_box_finds_the_lower_basin(c4_runs):
    narrow = fit(c4_runs, FitSpec(method="repetition", base=C4_BASE))
    wide = fit(c4_runs, FitSpec(method="repetition", base=C4_BASE,
                                bounds={"rd_star": (1e-3, 1000.0), "rn_star": (1e-3, 1000.0)}))
    assert wide.objective < narrow.objective - 1e-5
    assert 80 < wide.law.rd_star < 110 and 1.5 < wide.law.rn_star < 2.0


@pytest.mark.parametrize("spec", [FitSpec(method="repetition", base=TRUE_LAW.base), FitSpec(method="joint"), FitSpec()],
                         ids=["repetition", "joint", "two-stage"])
def test_synthetic_recovery_data_constrained(spec):
    result = fit(synthetic_runs(TRUE_LAW, noise=0.002), spec)
    got, want = result.law.params(), TRUE_LAW.params()
    for name in ("E", "alpha", "beta"):
        assert got[name] == pytest.approx(want[name], rel=0.01), name
    for name in ("A", "B", "rd_star", "rn_star"):
        assert got[name] == pytest.approx(want[name], rel=0.05), name


def test_synthetic_recovery_base_law_untied_and_tied():
    truth = BaseLaw(E=1.7, A=400.0, B=1100.0, alpha=0.33, beta=0.29)
    runs = synthetic_runs(truth, noise=0.002, repeat=False)
    result = fit(runs, FitSpec(law="base", method="base"))
    for name, value in truth.params().items():
        assert result.law.params()[name] == pytest.approx(value, rel=0.05), name
    tied = fit(synthetic_runs(BaseLaw(1.7, 400.0, 1100.0, 0.31, 0.31), 0.002, repeat=False),
               FitSpec(law="base", method="base", tie_exponents=True))
    assert tied.law.alpha == tied.law.beta == pytest.approx(0.31, rel=0.01)


def test_fixed_parameters_stay_fixed():
    runs = synthetic_runs(TRUE_LAW, noise=0.002)
    result = fit(runs, FitSpec(method="joint", fixed={"E": 1.8, "alpha": 0.34, "rn_star": 4.0}))
    assert (result.law.E, result.law.alpha, result.law.rn_star) == (pytest.approx(1.8, rel=1e-15), 0.34, 4.0)
    assert set(result.fixed) == {"E", "alpha", "rn_star"}
    assert result.law.rd_star == pytest.approx(12.0, rel=0.05)


def test_parameter_on_its_bound_is_flagged(c4_runs):
    result = fit(c4_runs, FitSpec(method="repetition", base=C4_BASE, bounds={"rd_star": (1.0, 10.0)}))
    assert result.law.rd_star == pytest.approx(10.0) and result.at_bounds == ("rd_star",)


@pytest.mark.parametrize("spec_args, message", [
    (dict(method="joint", fixed={"gamma": 1.0}), "'gamma' is not a law parameter"),
    (dict(method="joint", fixed={"alpha": 5.0}), "fix: alpha = 5 is outside its bounds [0.01, 3]"),
    (dict(method="joint", fixed={"E": -1.0}), "fix: E = -1 must be > 0"),
    (dict(method="joint", bounds={"rd_star": (5.0, 1.0)}), "bound: rd_star = 5:1 is not allowed"),
    (dict(method="joint", bounds={"alpha": (0.0, 1.0)}), "bound: alpha = 0:1 is not allowed"),
    (dict(method="repetition"), "the repetition-only fit needs a fixed base law"),
    (dict(method="magic"), "'magic' is not a fit method"),
    (dict(law="base", method="joint"), "method: 'joint' does not fit the base law"),
])
def test_bad_specs(c4_runs, spec_args, message):
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        fit(c4_runs, FitSpec(**spec_args))


def test_fewer_runs_than_free_parameters(c4_runs):
    few = c4_runs.subset(np.arange(len(c4_runs)) < 7)
    with pytest.raises(InputError, match="runs: 7 runs for 7 free parameters; need at least 8"):
        fit(few, FitSpec(method="joint"))
    fit(few, FitSpec(method="repetition", base=C4_BASE))  # two free parameters: fine
    single_epoch_few = c4_runs.subset(c4_runs.epochs > 1)
    with pytest.raises(InputError, match=r"0 runs that saw their data once \(D <= U\) for 6 free parameters.*--joint"):
        fit(single_epoch_few, FitSpec())


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    runs = synthetic_runs(TRUE_LAW, noise=0.01)
    result = fit(runs, FitSpec(method="repetition", base=TRUE_LAW.base))
    first = bootstrap(runs, result, resamples=200, seed=7)
    np.testing.assert_array_equal(first, bootstrap(runs, result, resamples=200, seed=7))
    assert not np.array_equal(first, bootstrap(runs, result, resamples=200, seed=8))
    intervals = parameter_intervals(first, "data-constrained")
    for name in ("rd_star", "rn_star"):
        lo, hi = intervals[name]
        assert lo < result.law.params()[name] < hi and hi - lo > 0.01
    assert intervals["E"] == [TRUE_LAW.E, TRUE_LAW.E]  # fixed parameters do not vary


def test_resample_weights_are_counts():
    weights = resample_weights(50, 30, seed=0)
    assert weights.shape == (30, 50) and (weights.sum(axis=1) == 50).all()
    assert weights.dtype == float and (weights == np.round(weights)).all()


def test_diagnostics_on_noiseless_runs_are_perfect():
    runs = synthetic_runs(TRUE_LAW, noise=0.0)
    spec = FitSpec(method="repetition", base=TRUE_LAW.base)
    result = fit(runs, spec)
    report = describe_fit(result.law, runs, spec)
    assert report["r2_loss"] > 1 - 1e-9 and report["rmse_log_loss"] < 1e-6
    assert len(report["residuals"]) == len(runs)
    ex = report["extrapolation"]
    assert ex["n_fit"] + ex["n_held_out"] == len(runs) and ex["n_held_out"] > 0
    assert ex["max_abs_error"] < 1e-4


def test_extrapolation_check_holds_out_the_largest_compute_when_it_reaches_the_75th_percentile():
    # three sizes at one D, each with 1, 2 and 4 epochs: the 75th percentile of C is the largest C itself
    n, d = np.repeat([1e8, 4e8, 1.6e9], 3), np.full(9, 2e9)
    u = d / np.tile([1.0, 2.0, 4.0], 3)
    table = RunTable.from_columns({"params": n, "tokens": d, "unique_tokens": u, "loss": preset("c4").predict(n, d, u)})
    ex = extrapolation_check(table, FitSpec(method="repetition", base=C4_BASE))
    assert (ex["threshold_flops"], ex["n_fit"], ex["n_held_out"]) == (6 * 4e8 * 2e9, 6, 3)  # the 1.6e9 runs held out
    assert ex["max_abs_error"] < 1e-6


def test_extrapolation_check_with_threshold(c4_runs):
    spec = FitSpec(method="repetition", base=C4_BASE)
    ex = extrapolation_check(c4_runs, spec, threshold=1e20)
    assert ex["n_fit"] == int((c4_runs.flops <= 1e20).sum()) and ex["rmse_loss"] > 0
    with pytest.raises(InputError, match="leaves no runs on one side"):
        extrapolation_check(c4_runs, spec, threshold=1e40)


@pytest.mark.parametrize("request_args, method", [
    (dict(), "two-stage"),
    (dict(base=C4_BASE), "repetition"),
    (dict(law="base"), "base"),
    (dict(method="joint"), "joint"),
])
def test_resolve_picks_the_default_method(request_args, method):
    assert FitSpec.resolve(**request_args).method == method


@pytest.mark.parametrize("spec_args, field", [
    (dict(method="joint", fixed={"gamma": 1.0}), "parameter"),
    (dict(method="joint", fixed={"alpha": 5.0}), "fix"),
    (dict(method="joint", bounds={"rd_star": (5.0, 1.0)}), "bound"),
    (dict(method="repetition"), "base"),
])
def test_bad_specs_name_their_field(c4_runs, spec_args, field):
    with pytest.raises(InputError) as info:
        fit(c4_runs, FitSpec(**spec_args))
    assert info.value.field == field and str(info.value) == f"{field}: {info.value.problem}"


def test_fit_law_document_reports_each_step_and_matches_its_parts(c4_runs):
    spec = FitSpec(method="repetition", base=C4_BASE)
    steps = []
    result, document = fit_law_document(c4_runs, spec, resamples=20, seed=4, on_stage=steps.append)
    assert steps == ["fitting", "bootstrap: 20 resamples", "diagnostics: extrapolation check"]
    samples = bootstrap(c4_runs, result, 20, 4)
    assert document == law_document(result, c4_runs, samples=samples, seed=4,
                                    diagnostics=describe_fit(result.law, c4_runs, spec))
    assert document["intervals"]["confidence"] == 0.95 and document["bootstrap"]["seed"] == 4
