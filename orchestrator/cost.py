"""Money for simulations: the cost of a campaign in dollars, from the fee rules in cents.

The fee rules themselves live in one place, :mod:`orchestrator.crowd.ledger` (integer
cents, rounded per assignment as the platform charges); these helpers only convert.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from orchestrator.crowd.ledger import MTURK_FEES, cents, usd

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
    questions), one assignment per HIT, and a reward of $0.15 per HIT (about $0.0036 a
    question with the fee, close to the paper's $980 for 245,177 questions).
    """

    reward_usd: float = 0.15
    questions_per_hit: int = 50
    gold_per_hit: int = 5
    assignments_per_hit: int = 1
    masters: bool = False

    def hits(self, questions: int) -> int:
        return math.ceil(questions / self.questions_per_hit) if questions > 0 else 0

    def cost(self, questions: int) -> float:
        """Dollars for ``questions`` verification questions packed into HITs."""
        per = MTURK_FEES.assignment_cost_cents(cents(self.reward_usd), self.assignments_per_hit, self.masters)
        return usd(self.hits(questions) * self.assignments_per_hit * per)
