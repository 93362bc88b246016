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
* **Qualification test as gold** ([test_counts_as_gold]): the test is made of gold
  questions, so a worker's test score starts their gold record once (score x questions
  correct out of questions).  A new worker who passed the test is trusted from the first
  HIT instead of having that HIT's answers held.
* **Pictures that did not load**: the HIT page refuses a yes/no for a question whose image
  failed and sends it as ``broken``; such a question is asked again, and a broken gold
  question does not count against the worker.
* **Replication** (``assignments_per_hit > 1``): answers of non-blocked workers from
  approved assignments are pooled per question and aggregated by majority vote or by
  Dawid-Skene (crowd-kit's ``MajorityVote`` / ``DawidSkene``).  The aggregator is fitted
  once per batch of HITs a pass processes; Dawid-Skene is fitted on every pooled and
  gold answer of the campaign, with the gold answers given as crowd-kit's
  ``true_labels``, so worker confusion matrices use all their history and the known
  answers.  Probation does not apply: the aggregate is the protection.

The rules above are one pure function, :func:`review_hit`: the assignments of one HIT,
its items (gold labels included), the workers' records and their held answers, and the
policy go in; verdicts, the disposition of every answer (gold / held / recorded / pooled
/ discarded, old held answers included), the answers to record and the workers'
transitions (trusted, blocked) come out.  The poll pass only applies the result.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

__all__ = ["AssignmentVerdict", "judge_assignment", "score_gold", "aggregate", "parse_answers",
           "gold_for_hit", "worker_state", "review_hit", "ReviewItem", "ReviewAssignment", "WorkerRecord",
           "HeldAnswer", "AnswerOut", "Verdict", "Transition", "Review", "LABELS", "BROKEN"]

LABELS = {"yes": 1, "no": 0, "unsure": -1, "broken": -2}
BROKEN = -2          # the picture did not load on the worker's page


def parse_answers(answer_xml: str) -> dict[str, str]:
    """``{identifier: yes|no|unsure}`` (xmltodict, via the HIT template's parser); ValueError
    when the XML or its values are malformed."""
    from hit_templates.render import parse_verification_answer

    return parse_verification_answer(answer_xml)


def score_gold(answers: dict[str, str], gold_items: dict[str, int]) -> tuple[int, int]:
    """(correct, total) over the HIT's gold items ``{identifier: true label}``; a gold question
    whose picture did not load (``broken``) is not counted."""
    correct = total = 0
    for ident, label in gold_items.items():
        a = answers.get(ident)
        if a == "broken":
            continue
        total += 1
        if a in ("yes", "no") and (a == "yes") == bool(label):
            correct += 1
    return correct, total


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


def aggregate(rows: list[tuple[str, str, int]], method: str = "majority",
              true_labels: dict[str, int] | None = None) -> dict[str, int]:
    """Aggregate ``(task, worker, label)`` answers with crowd-kit: ``{task: label}``.

    ``majority``: :class:`crowdkit.aggregation.MajorityVote`; ``dawid-skene``:
    :class:`crowdkit.aggregation.DawidSkene` (EM over worker confusion matrices), fitted with
    ``true_labels`` (``{task: known label}``, the gold questions) as crowd-kit's ``true_labels``.
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
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"crowdkit\.")
        if method == "dawid-skene":
            tasks = set(df["task"])
            gold = {t: int(v) for t, v in (true_labels or {}).items() if t in tasks}
            model = DawidSkene(n_iter=100)
            model.fit(df, true_labels=pd.Series(gold, dtype="int64") if gold else None)
            res = model.labels_
        else:
            res = MajorityVote().fit_predict(df)
    return {str(k): int(v) for k, v in res.items()}


# ------------------------------------------------------------------------------- the review
@dataclass(frozen=True)
class ReviewItem:
    """One position of a HIT: a real question (``question_id``) or a gold one (``gold_label``)."""
    identifier: str
    question_id: int | None = None
    gold_id: int | None = None
    gold_label: int | None = None


@dataclass(frozen=True)
class ReviewAssignment:
    """One submitted assignment as fetched.  ``answers`` None: the answer could not be read."""
    assignment_id: str
    worker_id: str
    remote_status: str
    seconds: float | None
    answers: dict | None
    item_seconds: dict = field(default_factory=dict)
    error: str = ""


@dataclass
class WorkerRecord:
    worker_id: str
    gold_correct: int = 0
    gold_total: int = 0
    assignments: int = 0
    approved: int = 0
    rejected: int = 0
    flagged: int = 0
    trusted: bool = False
    blocked: bool = False
    blocked_reason: str | None = None

    @property
    def gold_accuracy(self) -> float | None:
        return self.gold_correct / self.gold_total if self.gold_total else None


@dataclass(frozen=True)
class HeldAnswer:
    """An answer of an earlier HIT waiting on its worker's probation (status held) or pooled."""
    answer_id: int
    worker_id: str
    question_id: int | None
    label: int
    seconds: float | None
    status: str                    # held | pooled
    question_pending: bool = True


@dataclass(frozen=True)
class AnswerOut:
    assignment_id: str
    worker_id: str
    identifier: str
    question_id: int | None
    gold_id: int | None
    label: int
    correct: bool | None
    status: str                    # gold | held | recorded | pooled | discarded
    seconds: float | None
    worker_accuracy: float | None


@dataclass(frozen=True)
class Verdict:
    assignment_id: str
    worker_id: str
    decision: str                  # approve | reject
    feedback: str | None
    flagged_fast: bool
    seconds_per_question: float | None
    gold_correct: int
    gold_total: int
    n_answers: int
    readable: bool
    remote_status: str
    unknown: tuple = ()
    missing: tuple = ()
    broken: tuple = ()
    error: str = ""


@dataclass(frozen=True)
class Transition:
    worker_id: str
    to: str                        # trusted | blocked
    reason: str = ""
    gold_correct: int = 0
    gold_total: int = 0


@dataclass
class Review:
    verdicts: list[Verdict] = field(default_factory=list)
    answers: list[AnswerOut] = field(default_factory=list)
    to_record: list[tuple] = field(default_factory=list)       # (question_id, label, worker_id, seconds)
    pooled: list[tuple] = field(default_factory=list)          # (question_id, worker_id, label)
    earlier: dict = field(default_factory=dict)                # answer id -> new status (held / pooled answers)
    transitions: list[Transition] = field(default_factory=list)
    workers: dict = field(default_factory=dict)                # worker id -> updated WorkerRecord


def review_hit(items: list[ReviewItem], assignments: list[ReviewAssignment], workers: dict[str, WorkerRecord],
               earlier: dict[str, list[HeldAnswer]], policy, *, has_gold: bool, replicate: bool) -> Review:
    """Quality control of one HIT's assignments, in the order given (see the module docstring).

    ``workers``: the records of the workers involved (missing ones start empty); ``earlier``: each
    worker's held and pooled answers from earlier HITs; ``policy``: the QualificationSection.
    Nothing is changed in place: the result holds the new records and every disposition.
    """
    import copy

    out = Review()
    recs = {k: copy.copy(v) for k, v in workers.items()}
    by_ident = {i.identifier: i for i in items}
    gold_items = {i.identifier: int(i.gold_label) for i in items if i.gold_id is not None}
    recorded_q: set[int] = set()
    n_items = len(items)
    for a in assignments:
        w = recs.get(a.worker_id) or WorkerRecord(a.worker_id)
        recs[a.worker_id] = w
        readable = a.answers is not None
        ans = a.answers or {}
        unknown = tuple(sorted(set(ans) - set(by_ident)))
        missing = tuple(k for k in by_ident if k not in ans) if readable else ()
        broken = tuple(k for k, v in ans.items() if v == "broken" and k in by_ident)
        gc, gt = score_gold(ans, gold_items) if readable else (0, 0)
        v = judge_assignment(policy, gold_correct=gc, gold_total=gt, seconds=a.seconds, n_items=n_items,
                             remote_status=a.remote_status, readable=readable)
        w.assignments += 1
        w.approved += v.decision == "approve"
        w.rejected += v.decision == "reject"
        w.flagged += bool(v.flagged_fast)
        w.gold_correct += gc
        w.gold_total += gt
        out.verdicts.append(Verdict(a.assignment_id, a.worker_id, v.decision, v.feedback, v.flagged_fast,
                                    v.seconds_per_question, gc, gt, len(ans), readable, a.remote_status,
                                    unknown, missing, broken, a.error))
        state = worker_state(policy, w.gold_correct, w.gold_total, has_gold)
        mine = earlier.get(w.worker_id, [])
        if state == "block" and not w.blocked:
            w.blocked, w.trusted = True, False
            w.blocked_reason = (f"gold accuracy {w.gold_correct}/{w.gold_total} below "
                                f"{policy.gold_min_accuracy:.2f}")
            for h in mine:
                if out.earlier.get(h.answer_id, h.status) in ("held", "pooled"):
                    out.earlier[h.answer_id] = "discarded"
            out.transitions.append(Transition(w.worker_id, "blocked", w.blocked_reason, w.gold_correct, w.gold_total))
        elif state == "trusted" and not w.trusted and not w.blocked and not replicate:
            w.trusted = True
            for h in mine:
                if h.status != "held" or out.earlier.get(h.answer_id, "held") != "held":
                    continue
                if not h.question_pending or h.question_id in recorded_q:
                    out.earlier[h.answer_id] = "discarded"      # answered meanwhile, or re-asked
                    continue
                out.earlier[h.answer_id] = "recorded"
                recorded_q.add(h.question_id)
                out.to_record.append((h.question_id, h.label, w.worker_id, h.seconds))
            out.transitions.append(Transition(w.worker_id, "trusted", "", w.gold_correct, w.gold_total))
        spq = v.seconds_per_question
        acc = w.gold_accuracy
        for ident, val in ans.items():
            item = by_ident.get(ident)
            if item is None:
                continue
            label = LABELS.get(val, -1)
            secs = a.item_seconds.get(ident, spq) if a.item_seconds else spq
            if item.gold_id is not None:
                st, correct = "gold", (None if label == BROKEN else label == gold_items[ident])
            else:
                correct = None
                if w.blocked or v.decision == "reject" or label < 0:
                    st = "discarded"
                elif replicate:
                    st = "pooled"
                    out.pooled.append((item.question_id, w.worker_id, label))
                elif w.trusted:
                    st = "recorded"
                    recorded_q.add(item.question_id)
                    out.to_record.append((item.question_id, label, w.worker_id, secs))
                else:
                    st = "held"
            out.answers.append(AnswerOut(a.assignment_id, w.worker_id, ident, item.question_id, item.gold_id,
                                         label, correct, st, secs, acc))
    out.workers = recs
    return out
