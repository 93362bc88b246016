"""Quality control of a crowd campaign: gold scoring, approve/reject, soft blocks, aggregation.

The policy (``[crowd.qualification]`` keys in brackets), applied to each submitted
assignment when its HIT is processed:

* **Gold**: every HIT hides ``gold_per_hit`` questions with known answers (half known
  "yes", half known "no"), indistinguishable from real ones.  A gold question left
  unanswered or answered "unsure" counts as wrong.
* **Approve or reject** (per assignment, on its own gold): reject with feedback when
  its gold accuracy is below [reject_below] (default 0.5: worse than a coin), or when it
  is implausibly fast (seconds per question below [min_seconds_per_question]) *and*
  [reject_fast] is set; otherwise approve.  Fast assignments are always flagged.  An
  assignment whose Answer XML cannot be read is approved (a worker cannot produce it
  through the form: it is our page's or the platform's fault) and its questions re-asked.
  An assignment already approved by MTurk's auto-approval counts as approved.
* **Probation and soft block**: a worker's answers are *held* (stored, not given to
  the search) until the worker has answered [min_gold_answers] gold questions in total
  (a worker who can no longer reach the threshold by then is blocked at once).
  Then, if the cumulative gold accuracy is at least [gold_min_accuracy], the worker is
  trusted and the held answers are recorded; if it is below, the worker is soft-blocked:
  ``AssociateQualificationWithWorker`` on the campaign's "blocked" qualification, which
  the HIT type requires ``DoesNotExist`` (so the worker can no longer discover, preview or
  accept its HITs), and every answer of theirs is discarded: held answers are dropped
  and their questions re-asked; already recorded answers (a trusted worker who later
  falls below the threshold) are discarded for masks whose node is still open, which
  re-asks them (nodes already decided stay decided).  A spammer is thus caught by gold
  before any of their answers reaches the search.  Held answers older than
  [hold_seconds] (a worker who left during probation) are dropped and re-asked.  With
  ``gold_per_hit = 0`` there is no gold and no probation.
* **Answers of rejected assignments** are never used; "unsure" answers are re-asked.
* **Replication** (``assignments_per_hit > 1``): answers of non-blocked workers from
  approved assignments are pooled per question and aggregated when the HIT is
  processed, by majority vote or by Dawid-Skene (crowd-kit's ``MajorityVote`` /
  ``DawidSkene``; Dawid-Skene is fitted on every pooled and gold answer of the campaign,
  so worker confusion matrices use all their history).  Probation does not apply: the
  aggregate is the protection.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

__all__ = ["AssignmentVerdict", "judge_assignment", "score_gold", "aggregate", "parse_answers",
           "gold_for_hit", "worker_state"]


def parse_answers(answer_xml: str) -> dict[str, str]:
    """``{identifier: yes|no|unsure}`` (xmltodict, via the HIT template's parser); ValueError
    when the XML or its values are malformed."""
    from hit_templates.render import parse_verification_answer

    return parse_verification_answer(answer_xml)


def score_gold(answers: dict[str, str], gold_items: dict[str, int]) -> tuple[int, int]:
    """(correct, total) over the HIT's gold items ``{identifier: true label}``."""
    correct = 0
    for ident, label in gold_items.items():
        a = answers.get(ident)
        if a in ("yes", "no") and (a == "yes") == bool(label):
            correct += 1
    return correct, len(gold_items)


@dataclass(frozen=True)
class AssignmentVerdict:
    decision: str            # approve | reject
    feedback: str | None
    flagged_fast: bool
    seconds_per_question: float | None


def judge_assignment(q, *, gold_correct: int, gold_total: int, seconds: float | None,
                     n_items: int, remote_status: str, readable: bool) -> AssignmentVerdict:
    """Approve or reject one assignment (``q``: the QualificationSection)."""
    spq = (seconds / n_items) if (seconds is not None and n_items) else None
    fast = spq is not None and spq < q.min_seconds_per_question
    if remote_status == "Approved":
        return AssignmentVerdict("approve", None, fast, spq)
    if remote_status == "Rejected":
        return AssignmentVerdict("reject", None, fast, spq)
    if readable and gold_total and gold_correct / gold_total < q.reject_below:
        return AssignmentVerdict(
            "reject", f"Rejected: {gold_correct} of {gold_total} check questions with known answers "
                      f"were answered correctly (at least {math.ceil(q.reject_below * gold_total)} needed). "
                      f"Please look at each outline carefully.", fast, spq)
    if readable and fast and q.reject_fast:
        return AssignmentVerdict(
            "reject", f"Rejected: answered in {spq:.2f} s per question, faster than the "
                      f"{q.min_seconds_per_question:.2f} s needed to look at each picture.", fast, spq)
    return AssignmentVerdict("approve", None, fast, spq)


def worker_state(q, gold_correct: int, gold_total: int, has_gold: bool) -> str:
    """probation | trusted | block for a worker's cumulative gold record."""
    if not has_gold:
        return "trusted"
    need = max(1, q.min_gold_answers)
    if gold_total < need:
        # blocked early once even a perfect rest of probation could not reach the threshold
        best = (gold_correct + need - gold_total) / need
        return "block" if best < q.gold_min_accuracy - 1e-12 else "probation"
    return "trusted" if gold_correct / gold_total >= q.gold_min_accuracy - 1e-12 else "block"


def gold_for_hit(yes_ids: list[int], no_ids: list[int], g: int, rng) -> list[int]:
    """``g`` gold ids for one HIT: half known-yes, half known-no (the odd one drawn at random),
    sampled without replacement where the pool allows."""
    if g <= 0 or not (yes_ids or no_ids):
        return []
    n_yes = g // 2 + (int(rng.integers(2)) if g % 2 else 0)
    if not no_ids:
        n_yes = g
    if not yes_ids:
        n_yes = 0
    out = []
    for pool, k in ((yes_ids, n_yes), (no_ids, g - n_yes)):
        if k <= 0:
            continue
        pool = list(pool)
        if k <= len(pool):
            out += [pool[i] for i in rng.choice(len(pool), size=k, replace=False).tolist()]
        else:
            out += [pool[i] for i in rng.integers(len(pool), size=k).tolist()]
    return out


def aggregate(rows: list[tuple[str, str, int]], method: str = "majority") -> dict[str, int]:
    """Aggregate ``(task, worker, label)`` answers with crowd-kit: ``{task: label}``.

    ``majority``: :class:`crowdkit.aggregation.MajorityVote`; ``dawid-skene``:
    :class:`crowdkit.aggregation.DawidSkene` (EM over worker confusion matrices).
    """
    if not rows:
        return {}
    import pandas as pd
    from crowdkit.aggregation import DawidSkene, MajorityVote

    df = pd.DataFrame(rows, columns=["task", "worker", "label"])
    if method not in ("dawid-skene", "majority"):
        raise ValueError(f"unknown aggregation {method!r}")
    with warnings.catch_warnings():
        # crowd-kit still uses pandas' inplace=/copy= keywords, deprecated in pandas 3: not ours to fix
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"crowdkit\.")
        model = DawidSkene(n_iter=100) if method == "dawid-skene" else MajorityVote()
        res = model.fit_predict(df)
    return {str(k): int(v) for k, v in res.items()}
