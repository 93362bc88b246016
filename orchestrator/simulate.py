"""Simulated campaigns: run a strategy against simulated annotators and record its curve.

The tree searches drive :class:`~orchestrator.search.Search` exactly as the crowd loop
does (ask, answer, record), one node at a time as in Algorithm 1; the baselines
(``naive``, ``universal-threshold``, ``lsun``) live in :mod:`orchestrator.baselines`.
"""
from __future__ import annotations

import numpy as np

from clustering.tree import Forest
from orchestrator.errors import LabelpropError
from orchestrator.results import RunResult, TraceRecorder
from orchestrator.search import BASELINES, STRATEGIES, TREE_STRATEGIES, NodeState, Search, SearchParams

__all__ = ["run_tree_search", "run_strategy", "point", "final", "BASELINE_RUNNERS"]


def run_tree_search(forest: Forest, params: SearchParams, annotators, ious: np.ndarray,
                    budget_questions: int | None = None, seconds_per_question: float = 1.5) -> RunResult:
    """Run Algorithm 1 to the end (or until ``budget_questions``) with simulated answers.

    ``annotators.answer(mask_ids) -> labels``; ``ious`` are only used for the trace (and for
    the oracle, where Q is the true fraction of masks with IoU >= K_iou).
    """
    ious = np.asarray(ious, dtype=np.float64)
    truth = ious >= params.kiou
    search = Search(forest, params, truth=truth if params.oracle else None)
    cum_iou = np.concatenate([[0.0], np.cumsum(ious[forest.order])]).tolist()
    cum_ok = np.concatenate([[0], np.cumsum(truth[forest.order])]).tolist()
    rec = TraceRecorder()
    acc = [0, 0.0, 0, 0, 0]  # masks, iou sum, correct, clusters, largest accepted cluster

    ACC = NodeState.ACCEPTED
    start, end = search._start, search._end

    def flush() -> None:
        decisions = search.take_decisions()      # accept, reject and split only
        if not decisions:
            return
        for d in decisions:
            if d[1] is ACC:
                s, e = start[d[0]], end[d[0]]
                acc[0] += e - s
                acc[1] += cum_iou[e] - cum_iou[s]
                acc[2] += cum_ok[e] - cum_ok[s]
                acc[3] += 1
                acc[4] = max(acc[4], e - s)
        rec.add(search.questions_asked, search.clusters_annotated, acc[0], acc[1], acc[2], acc[3])

    while True:
        left = None if budget_questions is None else budget_questions - search.questions_asked
        asks = search.next_questions(max_questions=left, max_nodes=1)
        flush()
        if not asks:
            break
        for ask in asks:
            search.record(ask.masks, annotators.answer(ask.masks))
        flush()
    rec.add(search.questions_asked, search.clusters_annotated, acc[0], acc[1], acc[2], acc[3])
    return RunResult(
        strategy=params.strategy + ("+oracle" if params.oracle else ""),
        accepted=search.accepted_mask(), rejected=search.rejected_mask(),
        questions=search.questions_asked, clusters_annotated=search.clusters_annotated,
        trace=rec.arrays(), seconds_per_question=seconds_per_question,
        extra={"largest_accepted_cluster": acc[4]})


# ------------------------------------------------------------------ all strategies
def _naive(triplets, forest, params, annotators, budget_questions, sweep_points):
    from orchestrator import baselines
    return baselines.run_naive(triplets.scores, triplets.ious, triplets.classes, annotators,
                               params.kiou, budget_questions)


def _universal(triplets, forest, params, annotators, budget_questions, sweep_points):
    from orchestrator import baselines
    return baselines.universal_sweep(forest, triplets.ious, annotators, points=sweep_points,
                                     ns=params.ns, ka=params.ka, kiou=params.kiou,
                                     budget_questions=budget_questions, seed=params.seed)


def _lsun(triplets, forest, params, annotators, budget_questions, sweep_points):
    from orchestrator import baselines
    return baselines.run_lsun(triplets.features, triplets.scores, triplets.ious, triplets.classes,
                              annotators, kiou=params.kiou, budget_questions=budget_questions,
                              seed=params.seed)


#: the simulation baselines by name (the tree searches are :data:`orchestrator.search.ORDERS`)
BASELINE_RUNNERS = {"universal-threshold": _universal, "naive": _naive, "lsun": _lsun}
assert tuple(BASELINE_RUNNERS) == BASELINES


def run_strategy(name: str, triplets, forest: Forest, params: SearchParams, annotators,
                 budget_questions: int | None = None, sweep_points: int = 12):
    """Run one named strategy (see :data:`orchestrator.search.STRATEGIES`).

    Tree searches return a :class:`RunResult`; ``universal-threshold`` returns the list of
    its sweep runs (one per number of flat clusters k).
    """
    from dataclasses import replace

    if name in TREE_STRATEGIES:
        return run_tree_search(forest, replace(params, strategy=name), annotators, triplets.ious,
                               budget_questions, annotators.seconds_per_question)
    runner = BASELINE_RUNNERS.get(name)
    if runner is None:
        raise LabelpropError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    return runner(triplets, forest, params, annotators, budget_questions, sweep_points)


def point(result, budget: int | None) -> dict:
    """A strategy's state at ``budget`` questions (None: at the end)."""
    from orchestrator import baselines

    if isinstance(result, list):  # universal threshold: best sweep point within the budget
        best = baselines.best_universal(result, budget)
        if best is None:
            return {"questions": 0.0, "accepted_masks": 0.0, "mean_iou_accepted": float("nan"),
                    "precision_accepted": float("nan"), "clusters_annotated": 0.0, "hq_clusters": 0.0}
        out = best.at_budget(best.questions)
        out["k"] = best.extra.get("k")
        return out
    return result.at_budget(result.questions if budget is None else budget)


def final(result) -> RunResult:
    """The run to summarise: a sweep's best end point, else the run itself."""
    from orchestrator import baselines

    return baselines.best_universal(result) if isinstance(result, list) else result
