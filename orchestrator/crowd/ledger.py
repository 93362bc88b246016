"""Money, in integer cents: fee rules and the campaign ledger (pure: no I/O).

**Fee rules** (:class:`FeeRules`) belong to a platform.  MTurk's (``mturk-api.md``): a
fee of 20% of the reward, another 20% for HITs with 10 or more assignments, 5% more for
Masters, at least $0.01 per assignment; bonuses pay 20% (at least $0.01).  Fees are
computed per assignment in integer cents, rounding half-up as the platform charges.

**The ledger** (:class:`Ledger`) is derived from store rows, never kept as a counter:

* ``reserved``: the worst-case cost of every open HIT (each assignment approved, fees
  included), fixed when the HIT was posted;
* ``owed``: assignments decided "approve" whose approval has not reached the platform
  yet, and bonuses recorded but not paid yet;
* ``spent``: what the platform has charged (approved assignments, paid bonuses).

``committed = reserved + owed + spent`` never exceeds the budget: a HIT is posted only when
its whole reservation fits (:meth:`Ledger.affordable_hits`).  The cost of a HIT is the one
booked when it was posted (its reward and fee then), never recomputed from the current
configuration.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FeeRules", "MTURK_FEES", "NO_FEES", "Ledger", "usd", "cents"]


def cents(usd_amount: float) -> int:
    """Dollars (a config value such as 0.15) to integer cents, rounded half-up."""
    return int(usd_amount * 100 + 0.5 + 1e-9) if usd_amount >= 0 else -cents(-usd_amount)


def usd(cents_amount: int) -> float:
    """Integer cents to dollars (for display and JSON)."""
    return round(cents_amount / 100, 2)


def _pct(amount_cents: int, percent: int) -> int:
    """``percent`` % of ``amount_cents``, rounded half-up to the cent (integer arithmetic)."""
    return (amount_cents * percent * 2 + 100) // 200


@dataclass(frozen=True)
class FeeRules:
    """A platform's commission, per approved assignment (and per bonus)."""

    name: str = "mturk"
    percent: int = 20                  # of reward and bonus
    large_hit_percent: int = 20        # added when a HIT has large_hit_assignments or more
    large_hit_assignments: int = 10
    masters_percent: int = 5           # added when the HIT type requires Masters
    min_fee_cents: int = 1             # per assignment and per bonus

    def fee_cents(self, reward_cents: int, assignments: int = 1, masters: bool = False) -> int:
        """Fee for one approved assignment of a HIT with ``assignments`` assignments."""
        rate = self.percent + (self.large_hit_percent if assignments >= self.large_hit_assignments else 0) \
            + (self.masters_percent if masters else 0)
        return max(self.min_fee_cents, _pct(int(reward_cents), rate))

    def assignment_cost_cents(self, reward_cents: int, assignments: int = 1, masters: bool = False) -> int:
        """Reward plus fee for one approved assignment."""
        return int(reward_cents) + self.fee_cents(reward_cents, assignments, masters)

    def hit_cost_cents(self, reward_cents: int, assignments: int = 1, masters: bool = False) -> int:
        """Worst case for one HIT: every assignment approved."""
        return self.assignment_cost_cents(reward_cents, assignments, masters) * int(assignments)

    def bonus_cost_cents(self, bonus_cents: int) -> int:
        """A bonus plus its fee."""
        return int(bonus_cents) + max(self.min_fee_cents, _pct(int(bonus_cents), self.percent))


MTURK_FEES = FeeRules()
NO_FEES = FeeRules(name="none", percent=0, large_hit_percent=0, masters_percent=0, min_fee_cents=0)


@dataclass(frozen=True)
class Ledger:
    """A campaign's money at one moment (see the module docstring); ``budget_cents`` 0: no budget."""

    budget_cents: int = 0
    reserved_cents: int = 0
    owed_cents: int = 0
    spent_cents: int = 0

    @property
    def committed_cents(self) -> int:
        return self.reserved_cents + self.owed_cents + self.spent_cents

    @property
    def left_cents(self) -> int | None:
        """What the budget can still commit (None: no budget)."""
        return None if not self.budget_cents else self.budget_cents - self.committed_cents

    def affordable_hits(self, hit_cost_cents: int, wanted: int) -> int:
        """How many of ``wanted`` HITs of worst-case cost ``hit_cost_cents`` fit in the budget."""
        left = self.left_cents
        if left is None:
            return max(0, wanted)
        if hit_cost_cents <= 0:
            return max(0, wanted)
        return max(0, min(wanted, left // hit_cost_cents))

    def as_dict(self) -> dict:
        return {"budget_usd": usd(self.budget_cents) if self.budget_cents else None,
                "reserved_usd": usd(self.reserved_cents), "owed_usd": usd(self.owed_cents),
                "spent_usd": usd(self.spent_cents), "committed_usd": usd(self.committed_cents),
                "budget_left_usd": usd(self.left_cents) if self.budget_cents else None}
