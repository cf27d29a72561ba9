from __future__ import annotations

import pytest

from agent.hedging import HedgeBudget


def test_a_budget_starts_with_its_burst_and_refuses_once_spent() -> None:
    budget = HedgeBudget(ratio=0.1, burst=2)
    assert [budget.withdraw() for _ in range(3)] == [True, True, False]
    assert budget.refused == 1


def test_deposits_earn_one_hedge_per_ten_requests_and_never_exceed_the_burst() -> None:
    budget = HedgeBudget(ratio=0.1, burst=2, tokens=0)
    for _ in range(9):
        budget.deposit()
    assert not budget.withdraw()
    budget.deposit()
    assert budget.withdraw()
    for _ in range(1000):
        budget.deposit()
    assert budget.tokens == 2


@pytest.mark.parametrize(("ratio", "burst"), [(0, 10), (1.5, 10), (0.1, 0.5)])
def test_a_budget_that_could_never_or_always_hedge_is_refused(ratio: float, burst: float) -> None:
    with pytest.raises(ValueError, match="ratio must be"):
        HedgeBudget(ratio=ratio, burst=burst)
