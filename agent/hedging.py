"""How many hedged requests a site may send: a budget that grows with the requests it serves.

A hedge (`agent.dispatch.Dispatcher._hedged`) is extra work for a peer. When a whole site is
slow, every request would hedge and the peers would see twice the load just as they take the
site's spill. So hedges are paid from a budget in the manner of Finagle's retry budget (also
Envoy's `retry_budget`): every request served deposits `ratio` of a token (up to `burst`
tokens), and a hedge withdraws a whole one; with none left the request just waits for its local
instance. Over any long stretch at most `ratio` of the requests are hedged, and a quiet site
still has `burst` hedges in hand for its first slow calls.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class HedgeBudget:
    """Tokens for hedges: `deposit()` per request, `withdraw()` per hedge (False: none left)."""

    ratio: float = 0.1
    """Hedges allowed per request served, over the long run."""
    burst: float = 10.0
    """Most tokens the budget holds (also what it starts with)."""
    tokens: float = -1.0
    refused: int = 0
    """Hedges not sent for want of a token."""

    def __post_init__(self) -> None:
        if not 0 < self.ratio <= 1 or self.burst < 1:
            raise ValueError("ratio must be in (0, 1] and burst at least 1")
        if self.tokens < 0:
            self.tokens = self.burst

    def deposit(self) -> None:
        self.tokens = min(self.burst, self.tokens + self.ratio)

    def withdraw(self) -> bool:
        if self.tokens >= 1 - 1e-9:  # ten deposits of 0.1 add up to 0.999...
            self.tokens = max(0.0, self.tokens - 1)
            return True
        self.refused += 1
        return False

    def refund(self) -> None:
        """Give back a token withdrawn for a hedge that found nowhere to go."""
        self.tokens = min(self.burst, self.tokens + 1)
