"""What repeating data costs in a study: R epochs of U/R unique tokens against one epoch of U, at equal N and D.

`repetition_rows` pairs every repeated run (R > 1 epochs of U/R) with the single-epoch run of the
same model and the same D (U = D unique tokens), measured loss beside the law's prediction for both.
`epochs_within` finds, by the law, up to how many epochs repetition costs less than a given share of
loss (1%) for a model size and unique budget: the R at which L(N, R U, U) / L(N, R U, R U) - 1 reaches it.
"""

from __future__ import annotations

from scaling.laws import DataConstrainedLaw
from scaling.units import format_quantity
from stages.record import RunRecord

PENALTY = 0.01  # the report's line: up to how many epochs repetition costs less than 1% loss
MAX_EPOCHS = 1024.0  # the search's upper end


def _loss(law, params: float, tokens: float, unique: float) -> float:
    return float(law.predict(params, tokens, unique))


def repetition_rows(law, records: list[RunRecord], params_kind: str) -> list[dict]:
    """One row per repeated run that has a single-epoch partner of the same N and D, by N, D and epochs."""
    single = {(r.params_for(params_kind), r.tokens): r for r in records if r.tokens <= r.unique_tokens}
    rows = []
    for run in records:
        partner = single.get((run.params_for(params_kind), run.tokens))
        if run.tokens <= run.unique_tokens or partner is None:
            continue
        params = run.params_for(params_kind)
        rows.append({
            "params": params, "tokens": run.tokens, "epochs": run.epochs, "unique_tokens": run.unique_tokens,
            "repeated_loss": run.val_loss, "repeated_law": _loss(law, params, run.tokens, run.unique_tokens),
            "unique_loss": partner.val_loss, "unique_law": _loss(law, params, partner.tokens, partner.unique_tokens),
        })  # fmt: skip
    return sorted(rows, key=lambda row: (row["params"], row["tokens"], row["epochs"]))


def penalty(law, params: float, epochs: float, unique: float) -> float:
    """By the law: the relative loss of `epochs` epochs over `unique` tokens against as many tokens seen once."""
    tokens = epochs * unique
    return _loss(law, params, tokens, unique) / _loss(law, params, tokens, tokens) - 1.0


def epochs_within(law, params: float, unique: float, share: float = PENALTY) -> float:
    """The epochs up to which repeating `unique` tokens costs a model of `params` less than `share` of loss
    by the law (bisection on the penalty, which grows with the epochs); `MAX_EPOCHS` if it never reaches it."""
    if penalty(law, params, MAX_EPOCHS, unique) < share:
        return MAX_EPOCHS
    low, high = 1.0, MAX_EPOCHS
    while high / low > 1.0001:
        middle = (low * high) ** 0.5
        low, high = (middle, high) if penalty(law, params, middle, unique) < share else (low, middle)
    return low


def repetition_markdown(law, records: list[RunRecord], params_kind: str) -> str:
    """The report's section: the paired table and the one line on when repetition costs under 1% ('' without
    repeated runs, or for a repetition-blind base law)."""
    repeated = sorted({(r.params_for(params_kind), r.unique_tokens) for r in records if r.tokens > r.unique_tokens})
    if not repeated or not isinstance(law, DataConstrainedLaw):
        return ""
    rows = repetition_rows(law, records, params_kind)
    reach = [epochs_within(law, params, unique) for params, unique in repeated]
    lowest, highest = min(reach), max(reach)
    within = [row["epochs"] for row in rows if row["repeated_loss"] <= (1 + PENALTY) * row["unique_loss"]]
    beyond = [row["epochs"] for row in rows if row["repeated_loss"] > (1 + PENALTY) * row["unique_loss"]]
    measured = [e for e in within if not any(b <= e for b in beyond)]
    lines = [
        "", "## Repetition: R epochs of U/R vs one epoch of U unique", "",
        f"Up to {lowest:.3g} epochs repetition costs less than {PENALTY:.0%} loss here, by the fitted law (the least over "
        f"the {len(repeated)} repeated (N, U) pairs of the study; up to {highest:.3g} for the most)"
        + (f"; measured, every pair below within {PENALTY:.0%} up to {max(measured):g} epochs." if measured else "."),
        "",
    ]  # fmt: skip
    if rows:
        lines += ["| N | U = D | R | U/R | loss, R epochs of U/R (law) | loss, 1 epoch of U (law) | measured cost | law's cost |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for row in rows:
            lines.append(
                f"| {format_quantity(row['params'], 3)} | {format_quantity(row['tokens'], 3)} | {row['epochs']:.3g} | "
                f"{format_quantity(row['unique_tokens'], 3)} | {row['repeated_loss']:.4f} ({row['repeated_law']:.4f}) | "
                f"{row['unique_loss']:.4f} ({row['unique_law']:.4f}) | {row['repeated_loss'] / row['unique_loss'] - 1:+.2%} | "
                f"{row['repeated_law'] / row['unique_law'] - 1:+.2%} |"
            )
    else:
        lines.append("No repeated run has a single-epoch run of the same N and D to compare with.")
    return "\n".join(lines + [""])
