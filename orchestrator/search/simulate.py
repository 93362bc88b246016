"""Simulated campaigns: run a strategy against simulated annotators and record its curve.

The tree searches drive :class:`~orchestrator.search.search.Search` exactly as the crowd loop
does (ask, answer, record), one node at a time as in Algorithm 1; the baselines
(``naive``, ``universal-threshold``, ``lsun``) live in :mod:`orchestrator.search.baselines`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from clustering.tree import Forest
from orchestrator.errors import LabelpropError
from orchestrator.search.results import RunResult, TraceRecorder
from orchestrator.search.search import ORDERS, STRATEGIES, NodeState, Search, SearchParams

__all__ = ["run_tree_search", "run_strategy", "point", "final", "Strategy", "REGISTRY", "BASELINE_RUNNERS",
           "DEMO_STRATEGIES"]


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
@dataclass(frozen=True)
class Strategy:
    """One named strategy of ``labelprop simulate``: ``run(triplets, forest, params, annotators,
    budget_questions, sweep_points)`` returns a :class:`RunResult` (a tree search) or a list of
    them (a sweep: ``universal-threshold``, one run per number of flat clusters k).
    ``compare_rank``: its place in the demo's comparison (None: not compared there)."""

    name: str
    run: Callable
    tree: bool = False
    sweep: bool = False
    compare_rank: int | None = None


def _tree(name: str):
    def run(triplets, forest, params, annotators, budget_questions, sweep_points):
        return run_tree_search(forest, replace(params, strategy=name), annotators, triplets.ious,
                               budget_questions, annotators.seconds_per_question)
    return run


def _naive(triplets, forest, params, annotators, budget_questions, sweep_points):
    from orchestrator.search import baselines
    return baselines.run_naive(triplets.scores, triplets.ious, triplets.classes, annotators,
                               params.kiou, budget_questions)


def _universal(triplets, forest, params, annotators, budget_questions, sweep_points):
    from orchestrator.search import baselines
    return baselines.universal_sweep(forest, triplets.ious, annotators, points=sweep_points,
                                     ns=params.ns, ka=params.ka, kiou=params.kiou,
                                     budget_questions=budget_questions, seed=params.seed)


def _lsun(triplets, forest, params, annotators, budget_questions, sweep_points):
    from orchestrator.search import baselines
    return baselines.run_lsun(triplets.features, triplets.scores, triplets.ious, triplets.classes,
                              annotators, kiou=params.kiou, budget_questions=budget_questions,
                              seed=params.seed)


#: every strategy by name: the tree searches (one per :data:`orchestrator.search.search.ORDERS` entry,
#: ranked by the order's ``compare_rank``) and the simulation baselines
#: (:mod:`orchestrator.search.baselines`)
REGISTRY: dict[str, Strategy] = {
    **{name: Strategy(name, _tree(name), tree=True, compare_rank=order.compare_rank)
       for name, order in ORDERS.items()},
    "universal-threshold": Strategy("universal-threshold", _universal, sweep=True, compare_rank=5),
    "naive": Strategy("naive", _naive, compare_rank=4),
    "lsun": Strategy("lsun", _lsun, compare_rank=6),
}
assert tuple(REGISTRY) == STRATEGIES
BASELINE_RUNNERS = {name: s.run for name, s in REGISTRY.items() if not s.tree}
#: compared by `labelprop demo`, in this order; the first sets the budget (a quarter of its questions)
DEMO_STRATEGIES = tuple(sorted((s.name for s in REGISTRY.values() if s.compare_rank is not None),
                               key=lambda n: REGISTRY[n].compare_rank))


def run_strategy(name: str, triplets, forest: Forest, params: SearchParams, annotators,
                 budget_questions: int | None = None, sweep_points: int = 12):
    """Run one named strategy (see :data:`REGISTRY`).

    Tree searches return a :class:`RunResult`; ``universal-threshold`` returns the list of
    its sweep runs (one per number of flat clusters k).
    """
    strategy = REGISTRY.get(name)
    if strategy is None:
        raise LabelpropError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    return strategy.run(triplets, forest, params, annotators, budget_questions, sweep_points)


def point(result, budget: int | None) -> dict:
    """A strategy's state at ``budget`` questions (None: at the end)."""
    from orchestrator.search import baselines

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
    from orchestrator.search import baselines

    return baselines.best_universal(result) if isinstance(result, list) else result
