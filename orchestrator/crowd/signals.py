"""Answer-quality signals and the worker ranking built from them (pure: no I/O).

Large yes/no campaigns judge answers by more than gold (``papers/000``, quality
estimation): how long a worker looked at each picture, how often their known-answer
questions were right, and how often their answers agree with the other answers about
the same cluster.  Every crowd answer stores the three:

* ``seconds``: the time the worker's page measured on that question (or the
  assignment's time divided by its questions);
* ``worker_accuracy``: the worker's cumulative gold accuracy when the answer was reviewed;
* ``agreement``: the share of the other answers in the same cluster (tree node) that
  carry the same label -- a cluster is sampled because its masks are alike, so an answer
  that disagrees with the rest of its sample is either a wrong answer or a wrong mask.

:func:`worker_scores` ranks workers by a score in [0, 1]: the mean of their smoothed gold
accuracy (``(correct + 1) / (total + 2)``) and their mean agreement, scaled down by the
share of their assignments flagged as implausibly fast.  :func:`doubtful_masks` names the
accepted masks that deserve a second look: the crowd's own answer about the mask was
"no" (the cluster was accepted anyway), or the "yes" came from a worker with a low score,
or it was given faster than a person can look at a picture.  A score is *low* when it is
below ``low_score`` and well below the best worker's (``RELATIVE_LOW`` of it): agreement
with a cluster also measures how pure the clusters are, which is the same for every
worker, so a campaign answered by one careful worker does not flag all of its masks.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

__all__ = ["agreement_with_cluster", "worker_scores", "WorkerScore", "doubtful_masks", "Doubt", "RELATIVE_LOW"]

RELATIVE_LOW = 0.75      # a worker scoring under this share of the best worker's score is low


def agreement_with_cluster(counts: tuple[int, int], own_recorded: int, label: int) -> float | None:
    """Agreement of one answer (``label`` 0/1) with its cluster.  ``counts``: (no, yes) recorded
    answers of the cluster's questions, including the one recorded for this answer's own question
    (``own_recorded``: its label, which is this answer, or the aggregate of several).  Returns the
    share of the *other* questions' answers that carry ``label`` (None: the cluster has no other)."""
    others = [int(counts[0]), int(counts[1])]
    others[int(own_recorded)] -= 1
    n = others[0] + others[1]
    return None if n <= 0 else others[int(label)] / n


@dataclass(frozen=True)
class WorkerScore:
    worker_id: str
    score: float
    gold_accuracy: float | None
    mean_agreement: float | None
    median_seconds: float | None
    fast_share: float
    answers: int


def worker_scores(workers: list[dict], agreements: dict[str, list[float]],
                  seconds: dict[str, list[float]]) -> list[WorkerScore]:
    """Rank workers, best first.  ``workers``: dicts with ``worker_id``, ``gold_correct``,
    ``gold_total``, ``assignments``, ``flagged``; ``agreements`` / ``seconds``: per worker, the
    agreement and seconds of each answer."""
    out = []
    for w in workers:
        wid = w["worker_id"]
        gc, gt = int(w.get("gold_correct", 0)), int(w.get("gold_total", 0))
        smoothed = (gc + 1) / (gt + 2)
        ag = [a for a in agreements.get(wid, []) if a is not None]
        mean_ag = sum(ag) / len(ag) if ag else None
        secs = [x for x in seconds.get(wid, []) if x is not None]
        fast = int(w.get("flagged", 0)) / max(1, int(w.get("assignments", 0)))
        base = smoothed if mean_ag is None else (smoothed + mean_ag) / 2
        out.append(WorkerScore(wid, round(base * (1 - 0.5 * min(1.0, fast)), 4), gc / gt if gt else None,
                               round(mean_ag, 4) if mean_ag is not None else None,
                               round(statistics.median(secs), 3) if secs else None, round(fast, 4), len(ag)))
    out.sort(key=lambda r: (-r.score, r.worker_id))
    return out


@dataclass(frozen=True)
class Doubt:
    mask_id: int
    reason: str
    weight: float            # larger: more doubtful


def doubtful_masks(answers: list[tuple[int, int, str | None, float | None]], accepted: set[int],
                   scores: dict[str, float], *, min_seconds: float, low_score: float) -> list[Doubt]:
    """Accepted masks that look doubtful, most doubtful first.  ``answers``: (mask id, label 0/1,
    worker id, seconds) of the recorded answers; ``scores``: worker id -> ranking score (a score is
    low below ``low_score`` and below :data:`RELATIVE_LOW` of the best score)."""
    out: dict[int, Doubt] = {}
    best = max(scores.values(), default=0.0)
    low = min(float(low_score), RELATIVE_LOW * best)

    def add(m: int, reason: str, weight: float) -> None:
        if m not in out or out[m].weight < weight:
            out[m] = Doubt(m, reason, weight)

    for m, label, wid, secs in answers:
        if m not in accepted:
            continue
        if label == 0:
            add(m, "answered no, accepted with its cluster", 3.0)
            continue
        sc = scores.get(wid or "")
        if sc is not None and sc < low:
            add(m, f"yes from a worker scoring {sc:.2f} (best {best:.2f})", 2.0 + (low - sc))
        if secs is not None and secs < min_seconds:
            add(m, f"yes after {secs:.2f} s", 1.0 + (min_seconds - secs))
    return sorted(out.values(), key=lambda d: (-d.weight, d.mask_id))
