"""What a campaign is expected to ask and cost, before anything is posted.

The search is run to its end in memory, from the campaign's current state (its trees, the
answers it already has, the questions it is waiting on), with simulated answers drawn from
the masks' own scores: a mask with score s = class confidence x predicted IoU is answered
"yes" with probability s -- or, once the campaign has answers, with the share of "yes" among
the answered masks of similar score (:func:`calibrated_p_yes`).  A few draws (``runs``) give
a mean and a range.  Draws are independent per mask, so with poorly calibrated scores the
estimate errs high (clusters look less pure than they are): it is a budget's upper side.
On the bundled demo data (20,000 masks) it predicts 4,285 questions for the 3,990 an
error-free crowd asks (+7%).  The questions
then become HITs (``questions_per_hit`` real questions plus ``gold_per_hit`` gold ones,
``assignments_per_hit`` times), dollars (the platform's fee rules, in cents) and hours of
work (the campaign's own median seconds per question once it has answers; else the
paper's 1.5 s).  Nothing is written.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Estimate", "estimate_search", "estimate_campaign", "calibrated_p_yes", "work_text"]

PAPER_SECONDS_PER_QUESTION = 1.5


def work_text(hours: float) -> str:
    """Hours of work for people: '1.6 h', '12 min', '40 s'."""
    hours = max(0.0, float(hours or 0.0))
    if hours >= 1:
        return f"{hours:.1f} h"
    if hours * 60 >= 1:
        return f"{hours * 60:.0f} min"
    return f"{hours * 3600:.0f} s"


@dataclass(frozen=True)
class Estimate:
    questions: int                 # mean over the draws (still to ask)
    questions_low: int
    questions_high: int
    accepted_masks: int            # mean, at the end
    hits: int
    assignments: int
    cost_cents: int
    hours: float
    seconds_per_question: float
    runs: int
    already_asked: int

    def as_dict(self) -> dict:
        return {"questions": self.questions, "questions_range": [self.questions_low, self.questions_high],
                "accepted_masks": self.accepted_masks, "hits": self.hits, "assignments": self.assignments,
                "cost_usd": round(self.cost_cents / 100, 2), "hours": round(self.hours, 2),
                "seconds_per_question": self.seconds_per_question, "runs": self.runs,
                "already_asked": self.already_asked}


def estimate_search(make_search, p_yes: np.ndarray, *, runs: int = 3, seed: int = 0) -> list[tuple[int, int]]:
    """(questions still asked, masks accepted) of ``runs`` simulated finishes of a search.

    ``make_search()`` returns a fresh search in the campaign's state; answers are yes with
    probability ``p_yes[mask]`` (one draw per run, fixed per mask)."""
    out = []
    for r in range(runs):
        search = make_search()
        start = int(search.questions_asked)
        rng = np.random.default_rng([abs(int(seed)), 7331, r])
        answers = (rng.random(p_yes.shape[0]) < p_yes).astype(np.int8)
        pend = np.flatnonzero(search.pending)
        if pend.shape[0]:
            search.record(pend, answers[pend])
        while True:
            asks = search.next_questions(target=100_000)
            if not asks:
                break
            for a in asks:
                search.record(a.masks, answers[a.masks])
        out.append((int(search.questions_asked) - start, int(search.accepted_mask().sum())))
    return out


def calibrated_p_yes(scores: np.ndarray, answered: np.ndarray, labels: np.ndarray, *, bins: int = 10,
                     min_answers: int = 5) -> np.ndarray:
    """P(yes) per mask: the share of "yes" among answered masks in the same score decile (smoothed
    towards the bin's mean score), where a decile has at least ``min_answers`` answers; else the score."""
    p = np.clip(np.nan_to_num(np.asarray(scores, np.float64), nan=0.0), 0.0, 1.0)
    answered = np.asarray(answered, np.int64)
    if answered.shape[0] < min_answers:
        return p
    edges = np.unique(np.quantile(p, np.linspace(0, 1, bins + 1)))
    if edges.shape[0] < 2:
        return p
    which = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, edges.shape[0] - 2)
    out = p.copy()
    for b in range(edges.shape[0] - 1):
        sel = answered[which[answered] == b]
        if sel.shape[0] < min_answers:
            continue
        yes = float(np.asarray(labels, np.float64)[np.isin(answered, sel)].sum())
        prior = float(p[which == b].mean())
        out[which == b] = (yes + 2 * prior) / (sel.shape[0] + 2)
    return out


def estimate_campaign(cs, *, fees, runs: int = 3, seconds_per_question: float | None = None) -> Estimate:
    """The estimate for the campaign of :class:`~orchestrator.campaign.campaign.CampaignSearch` ``cs``."""
    from sqlalchemy import select

    from orchestrator.crowd.ledger import cents
    from orchestrator.search.search import Search
    from orchestrator.campaign.store import Mask, read_session

    n = cs.forest.n_masks
    p = np.zeros(n)
    with read_session(cs.engine) as s:
        for i, sc in s.execute(select(Mask.id, Mask.score)).all():
            if i < n:
                p[i] = sc
    am = np.flatnonzero(cs.search.answer >= 0)
    p = calibrated_p_yes(p, am, cs.search.answer[am])
    already = int(cs.search.questions_asked)

    def fresh() -> Search:
        cs.reload()
        return cs.search

    draws = estimate_search(fresh, p, runs=runs, seed=cs.params.seed)
    cs.reload()
    qs = [q for q, _ in draws]
    q_mean = int(round(float(np.mean(qs)))) if qs else 0
    cc = cs.cfg.crowd
    hits = math.ceil(q_mean / cc.questions_per_hit) if q_mean else 0
    assignments = hits * cc.assignments_per_hit
    per = fees.assignment_cost_cents(cents(cc.reward_usd), cc.assignments_per_hit, cc.masters)
    spq = seconds_per_question or PAPER_SECONDS_PER_QUESTION
    answered = (q_mean + hits * cc.gold_per_hit) * cc.assignments_per_hit
    return Estimate(questions=q_mean, questions_low=min(qs) if qs else 0, questions_high=max(qs) if qs else 0,
                    accepted_masks=int(round(float(np.mean([a for _, a in draws])))) if draws else 0,
                    hits=hits, assignments=assignments, cost_cents=assignments * per,
                    hours=answered * spq / 3600, seconds_per_question=round(spq, 3), runs=runs,
                    already_asked=already)
