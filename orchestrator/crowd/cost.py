"""Money for simulations: the cost of a campaign in dollars, from the fee rules in cents.

The fee rules themselves live in one place, :mod:`orchestrator.crowd.ledger` (integer
cents, rounded per assignment as the platform charges); these helpers only convert.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from orchestrator.crowd.ledger import MTURK_FEES, cents, usd
from orchestrator.search.params import at_least, non_negative, param

__all__ = ["assignment_fee", "assignment_cost", "CostModel"]


def assignment_fee(reward: float, max_assignments: int = 1, masters: bool = False) -> float:
    """MTurk's fee (dollars) for one approved assignment paying ``reward`` dollars."""
    return usd(MTURK_FEES.fee_cents(cents(reward), max_assignments, masters))


def assignment_cost(reward: float, max_assignments: int = 1, masters: bool = False) -> float:
    """Reward plus fee (dollars) for one approved assignment."""
    return usd(MTURK_FEES.assignment_cost_cents(cents(reward), max_assignments, masters))


@dataclass(frozen=True)
class CostModel:
    """How questions become HITs and dollars.

    Defaults follow the authors' live campaign: 50 questions per HIT (plus gold
    questions), one assignment per HIT, and the reward below per HIT (about $0.0036 a
    question with the fee, close to the paper's $980 for 245,177 questions).  The
    ``[crowd]`` section of ``campaign.toml`` takes its defaults and help from these fields.
    """

    reward_usd: float = param(0.15, "Reward per HIT (assignment) in USD; the platform's fees are added.",
                              check=non_negative())
    questions_per_hit: int = param(50, "Questions packed into one HIT.", check=at_least(1))
    gold_per_hit: int = param(5, "Hidden known-answer (gold) questions per HIT.", check=non_negative())
    assignments_per_hit: int = param(1, "Workers per HIT (> 1: replication).", check=at_least(1))
    masters: bool = param(False, "Require the Masters qualification (+5% fee).")

    def hits(self, questions: int) -> int:
        return math.ceil(questions / self.questions_per_hit) if questions > 0 else 0

    def cost(self, questions: int) -> float:
        """Dollars for ``questions`` verification questions packed into HITs."""
        per = MTURK_FEES.assignment_cost_cents(cents(self.reward_usd), self.assignments_per_hit, self.masters)
        return usd(self.hits(questions) * self.assignments_per_hit * per)
