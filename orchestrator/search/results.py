"""What a (simulated) annotation run produced: final labels plus the curve over time.

Every strategy (tree searches, ``naive``, ``universal-threshold``, ``lsun``) returns a
:class:`RunResult`, so summaries, tables and the paper's Fig. 6 / Fig. 8 curves are
computed one way for all of them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["TraceRecorder", "RunResult", "summarize"]


class TraceRecorder:
    """Appends one point per decision: cumulative questions, annotated clusters and what is
    accepted so far (count, summed IoU, count with IoU >= K_iou, accepted clusters)."""

    COLUMNS = ("questions", "clusters_annotated", "accepted_masks", "accepted_iou_sum",
               "accepted_correct", "hq_clusters")

    def __init__(self) -> None:
        self._rows: list[tuple] = [(0, 0, 0, 0.0, 0, 0)]

    def add(self, questions: int, clusters_annotated: int, accepted_masks: int,
            accepted_iou_sum: float, accepted_correct: int, hq_clusters: int) -> None:
        self._rows.append((questions, clusters_annotated, accepted_masks, accepted_iou_sum,
                           accepted_correct, hq_clusters))

    def arrays(self) -> dict[str, np.ndarray]:
        a = np.asarray(self._rows, dtype=np.float64)
        return {c: a[:, i] for i, c in enumerate(self.COLUMNS)}


@dataclass
class RunResult:
    """Outcome of one run. ``accepted``/``rejected`` are boolean per mask (propagated labels)."""

    strategy: str
    accepted: np.ndarray
    rejected: np.ndarray
    questions: int
    clusters_annotated: int
    trace: dict[str, np.ndarray]
    seconds_per_question: float = 1.5
    extra: dict = field(default_factory=dict)

    def at_budget(self, questions: int) -> dict[str, float]:
        """State of the run when it had asked at most ``questions`` questions (from the trace)."""
        q = self.trace["questions"]
        i = int(np.searchsorted(q, questions, side="right") - 1)
        i = max(i, 0)
        am = self.trace["accepted_masks"][i]
        return {
            "questions": float(q[i]),
            "clusters_annotated": float(self.trace["clusters_annotated"][i]),
            "accepted_masks": float(am),
            "mean_iou_accepted": float(self.trace["accepted_iou_sum"][i] / am) if am else float("nan"),
            "precision_accepted": float(self.trace["accepted_correct"][i] / am) if am else float("nan"),
            "hq_clusters": float(self.trace["hq_clusters"][i]),
        }


def summarize(result: RunResult, ious: np.ndarray, kiou: float, cost_usd: float) -> dict:
    """The JSON summary printed by ``labelprop simulate`` for one run."""
    acc = np.asarray(result.accepted, dtype=bool)
    n_acc = int(acc.sum())
    iou_acc = np.asarray(ious, dtype=np.float64)[acc]
    return {
        "strategy": result.strategy,
        "masks": int(acc.shape[0]),
        "accepted_masks": n_acc,
        "rejected_masks": int(np.asarray(result.rejected, dtype=bool).sum()),
        "questions": int(result.questions),
        "clusters_annotated": int(result.clusters_annotated),
        "mean_iou_accepted": float(iou_acc.mean()) if n_acc else None,
        "precision_accepted": float((iou_acc >= kiou).mean()) if n_acc else None,
        "masks_per_question": float(n_acc / result.questions) if result.questions else None,
        "hours": float(result.questions * result.seconds_per_question / 3600.0),
        "cost_usd": float(round(cost_usd, 2)),
        **result.extra,
    }
