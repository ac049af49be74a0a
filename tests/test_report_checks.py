"""The law's own checks in report.md (`stages.report.fit_checks`), from a law.json document."""

from stages.report import fit_checks

BOX = {"E": [2.061e-09, 4.85e8], "alpha": [0.01, 3.0], "beta": [0.01, 3.0], "rn_star": [0.001, 100.0]}
CHECK = {"n_fit": 35, "n_held_out": 12, "threshold_flops": 5.32e11, "mean_abs_relative_error": 0.0372, "max_abs_error": 0.195}


def _document(intervals: dict | None, at_bounds=()) -> dict:
    document = {"bounds": BOX, "at_bounds": list(at_bounds), "diagnostics": {"extrapolation": CHECK}}
    if intervals is not None:
        document["intervals"] = {"confidence": 0.95, "params": intervals}
    return document


def test_intervals_reaching_the_box_are_named_with_their_side():
    intervals = {"E": [2.061e-09, 1.74], "alpha": [0.150, 0.274], "beta": [0.150, 0.274], "rn_star": [23.0, 100.0]}
    lines = fit_checks(_document(intervals, at_bounds=("rn_star", "rn_star")))
    assert lines == [
        "Parameters on a bound of the fit's search box: rn_star.",
        "Bootstrap intervals that reach a bound of the search box: E (lower), rn_star (upper); the runs do not pin these.",
        "Leave-out check: fitted on the 35 runs with 6ND <= 5.32e+11 FLOPs, the 12 others predicted with mean absolute "
        "relative error 3.72% (largest absolute error 0.195).",
    ]


def test_intervals_inside_the_box_and_a_law_without_bootstrap():
    inside = {"E": [0.1, 1.7], "alpha": [0.15, 0.27], "beta": [0.15, 0.27], "rn_star": [23.0, 99.9]}
    assert fit_checks(_document(inside))[1] == "Bootstrap intervals that reach a bound of the search box: none."
    assert [line.split(":")[0] for line in fit_checks(_document(None))] == [
        "Parameters on a bound of the fit's search box", "Leave-out check"]
