"""The report's repetition section: R epochs of U/R against one epoch of U at equal N and D, and the 1% line."""

import pytest

from scaling.laws import BaseLaw, DataConstrainedLaw, preset
from stages.record import RunRecord
from stages.repetition import epochs_within, penalty, repetition_markdown, repetition_rows

LAW = DataConstrainedLaw(E=2.0, A=50.0, B=40.0, alpha=0.4, beta=0.3, rd_star=5.0, rn_star=5.0)


def _run(params: int, unique: int, epochs: int, loss: float) -> RunRecord:
    tokens = unique * epochs
    return RunRecord(name=f"n{params}-U{unique}-e{epochs}", params=params + 16384, params_non_embedding=params, tokens=tokens,
                     unique_tokens=unique, epochs=float(epochs), val_loss=loss, flops=6 * params * tokens)


RUNS = [_run(12384, 100_000, 1, 4.80), _run(12384, 400_000, 1, 3.90), _run(12384, 100_000, 4, 3.95),
        _run(12384, 100_000, 16, 3.80), _run(49344, 200_000, 1, 4.00), _run(49344, 100_000, 2, 4.02)]


def test_rows_pair_repeated_runs_with_single_epoch_runs_of_equal_n_and_d():
    rows = repetition_rows(LAW, RUNS, "non_embedding")
    # 100K x 16 (D = 1.6M) has no single-epoch partner: left out
    assert [(r["params"], r["tokens"], r["epochs"], r["repeated_loss"], r["unique_loss"]) for r in rows] == [
        (12384, 400_000, 4.0, 3.95, 3.90), (49344, 200_000, 2.0, 4.02, 4.00)]
    assert rows[0]["repeated_law"] == pytest.approx(float(LAW.predict(12384, 400_000, 100_000)))
    assert rows[0]["unique_law"] == pytest.approx(float(LAW.predict(12384, 400_000, 400_000)))
    assert rows[0]["repeated_law"] > rows[0]["unique_law"]


def test_epochs_within_one_percent_is_where_the_penalty_reaches_it():
    reach = epochs_within(LAW, 12384, 100_000)
    assert penalty(LAW, 12384, reach, 100_000) == pytest.approx(0.01, abs=1e-5)
    assert penalty(LAW, 12384, 1.0, 100_000) == 0.0 and reach == pytest.approx(3.2995, abs=1e-3)
    # by hand: 4 epochs of 100K: D' = 100K (1 + 5 (1 - e^-0.6)) = 325.6K; L = 2 + 50 / 12384^0.4 + 40 / D'^0.3
    assert penalty(LAW, 12384, 4.0, 100_000) == pytest.approx(4.0407 / 3.9875 - 1, abs=2e-5)
    assert epochs_within(LAW, 49344, 100_000) == pytest.approx(2.1383, abs=1e-3)  # a larger model: sooner
    assert epochs_within(preset("chinchilla"), 1e9, 1e9) == 1024.0  # a law blind to repetition never reaches 1%


def test_section_has_the_table_and_one_line():
    text = repetition_markdown(LAW, RUNS, "non_embedding")
    reach = [epochs_within(LAW, 12384, 100_000), epochs_within(LAW, 49344, 100_000)]
    assert f"Up to {min(reach):.3g} epochs repetition costs less than 1% loss here, by the fitted law" in text
    assert "Up to 2.14 epochs" in text and "(the least over the 2 repeated (N, U) pairs of the study; up to 3.3 for the most)" in text
    # 4 epochs measured +1.28% (3.95 / 3.90), 2 epochs +0.50%: within 1% up to 2 epochs
    assert "measured, every pair below within 1% up to 2 epochs." in text
    assert "| 12.4K | 400K | 4 | 100K | 3.9500 (4.0407) | 3.9000 (3.9875) | +1.28% | +1.33% |" in text
    assert repetition_markdown(BaseLaw(2.0, 50.0, 40.0, 0.4, 0.3), RUNS, "non_embedding") == ""
    assert repetition_markdown(LAW, [r for r in RUNS if r.epochs == 1], "non_embedding") == ""
