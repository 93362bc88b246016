"""Money: MTurk's fee rules and the cost of a campaign, as pure functions.

Fee rules (mturk-api.md): 20% of reward and bonus, another 20% for HITs with 10 or more
assignments, at least $0.01 per assignment; Masters adds 5%.  Amounts are rounded to
the cent per assignment, as MTurk charges.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["assignment_fee", "assignment_cost", "CostModel"]


def assignment_fee(reward: float, max_assignments: int = 1, masters: bool = False) -> float:
    """Platform fee for one approved assignment paying ``reward`` dollars."""
    rate = 0.20 + (0.20 if max_assignments >= 10 else 0.0) + (0.05 if masters else 0.0)
    return max(0.01, round(reward * rate + 1e-9, 2))


def assignment_cost(reward: float, max_assignments: int = 1, masters: bool = False) -> float:
    """Reward plus fee for one approved assignment."""
    return round(reward + assignment_fee(reward, max_assignments, masters), 2)


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
        per = assignment_cost(self.reward_usd, self.assignments_per_hit, self.masters)
        return round(self.hits(questions) * self.assignments_per_hit * per, 2)
