"""A run's data plan over several pools: per pool its unique budget U_i and its tokens D_i.

The run's `tokens` and `unique_tokens` are the sums (D = sum D_i, U = sum U_i); each D_i is a whole
number of sequences (a multiple of seq_len) and may be 0 (the pool is not trained on that run but
is still scored). epochs_i = D_i / U_i. `eval` names the pool whose validation loss is the run's
`val_loss`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from scaling.errors import InputError


class PoolBudget(BaseModel):
    """One pool's share of a run: U_i unique tokens, D_i tokens drawn from them."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., description="the pool's name (`data.pools`)")
    unique_tokens: int = Field(..., ge=1, description="U_i: the first U_i tokens of the pool's training region")
    tokens: int = Field(..., ge=0, description="D_i: tokens drawn from the pool, a multiple of seq_len")

    @property
    def epochs(self) -> float:
        """epochs_i = D_i / U_i."""
        return self.tokens / self.unique_tokens


class PoolPlan(BaseModel):
    """The pools of one run, in the corpus's order, and the pool its val_loss is scored on."""

    model_config = ConfigDict(extra="forbid")

    eval: str = Field(..., description="the pool whose validation loss is the run's val_loss")
    budgets: list[PoolBudget] = Field(..., min_length=1, description="per pool U_i and D_i, in the corpus's order")

    def check(self, tokens: int, unique_tokens: int, seq_len: int) -> None:
        """InputError unless the budgets add up to the run's D and U and each D_i is whole sequences of U_i > seq_len."""
        if sum(budget.tokens for budget in self.budgets) != tokens:
            raise InputError("pools.budgets", f"the pools' tokens add up to {sum(b.tokens for b in self.budgets)}, not the run's {tokens}")
        if sum(budget.unique_tokens for budget in self.budgets) != unique_tokens:
            raise InputError("pools.budgets", f"the pools' unique_tokens add up to {sum(b.unique_tokens for b in self.budgets)}, "
                             f"not the run's {unique_tokens}")  # fmt: skip
        for budget in self.budgets:
            if budget.tokens % seq_len:
                raise InputError(f"pools.{budget.name}.tokens", f"{budget.tokens} is not a multiple of seq_len {seq_len}")
            if budget.tokens and budget.unique_tokens <= seq_len:
                raise InputError(f"pools.{budget.name}.unique_tokens", f"{budget.unique_tokens} is not longer than seq_len {seq_len}")
        names = [budget.name for budget in self.budgets]
        if len(set(names)) != len(names) or self.eval not in names:
            raise InputError("pools", f"pools {names} must be distinct and hold the eval pool {self.eval!r}")
