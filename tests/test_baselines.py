"""Simulated annotators and the baselines: naive, universal threshold, LSUN."""
from __future__ import annotations

import fastcluster
import numpy as np
import pytest
from scipy.cluster.hierarchy import fcluster

from clustering.build import build_forest
from clustering.tree import Forest
from orchestrator.crowd.annotators import SimulatedAnnotators
from orchestrator.search.baselines import (LsunParams, best_universal, flat_clusters, run_lsun,
                                    run_naive, run_universal_threshold, sweep_ks,
                                    universal_sweep)
from orchestrator.errors import LabelpropError
from orchestrator.search.synth import make_triplets


@pytest.fixture(scope="module")
def data():
    t = make_triplets(4000, classes=3, seed=3)
    return t, build_forest(t.features, t.scores, t.classes)


# ------------------------------------------------------------------------ annotators
def test_annotators_truth_and_order_independence():
    ious = np.random.default_rng(0).random(5000)
    a = SimulatedAnnotators(ious, 0.75, error_rate=0.2, seed=9)
    ids = np.arange(5000)
    forward = a.answer(ids)
    assert forward.dtype == np.int8
    b = SimulatedAnnotators(ious, 0.75, error_rate=0.2, seed=9)   # a "restarted" crowd
    perm = np.random.default_rng(1).permutation(5000)
    shuffled = np.empty(5000, dtype=np.int8)
    for chunk in np.array_split(perm, 37):
        shuffled[chunk] = b.answer(chunk)
    assert np.array_equal(forward, shuffled)
    assert np.array_equal(a.answer([7, 7, 7]), np.repeat(forward[7], 3))
    assert a.questions == 5003 and b.questions == 5000
    exact = SimulatedAnnotators(ious, 0.75)
    assert np.array_equal(exact.answer(ids), (ious >= 0.75).astype(np.int8))


def test_annotators_error_rate_and_seed():
    ious = np.random.default_rng(0).random(40_000)
    truth = (ious >= 0.5).astype(np.int8)
    a = SimulatedAnnotators(ious, 0.5, error_rate=0.1, seed=1)
    c = SimulatedAnnotators(ious, 0.5, error_rate=0.1, seed=2)
    err_a = (a.answer(np.arange(40_000)) != truth).mean()
    assert abs(err_a - 0.1) < 0.01
    assert not np.array_equal(a.answers, c.answers)
    with pytest.raises(LabelpropError, match="out of range"):
        a.answer([40_000])
    with pytest.raises(LabelpropError, match="error_rate"):
        SimulatedAnnotators(ious, 0.5, error_rate=1.5)


# ----------------------------------------------------------------------------- naive
def test_naive_accepts_exactly_the_yes_answers(data):
    t, _ = data
    ann = SimulatedAnnotators(t.ious, 0.75, error_rate=0.1, seed=4)
    r = run_naive(t.scores, t.ious, t.classes, ann, 0.75)
    assert r.questions == r.clusters_annotated == t.n
    assert np.array_equal(r.accepted, ann.answers.astype(bool))
    assert np.array_equal(r.rejected, ~ann.answers.astype(bool))
    tr = r.trace
    assert tr["questions"][-1] == t.n and np.all(np.diff(tr["questions"]) == 1)
    assert tr["accepted_masks"][-1] == r.accepted.sum()
    assert tr["accepted_correct"][-1] == (r.accepted & (t.ious >= 0.75)).sum()
    assert tr["accepted_iou_sum"][-1] == pytest.approx(t.ious[r.accepted].sum(), rel=1e-6)
    # errors let wrong masks in: precision reflects the error rate
    assert 0.8 < r.at_budget(t.n)["precision_accepted"] < 0.95


def test_naive_budget_highest_score_first(data):
    t, _ = data
    ann = SimulatedAnnotators(t.ious, 0.75)
    r = run_naive(t.scores, t.ious, t.classes, ann, 0.75, budget_questions=300)
    assert r.questions == 300 and ann.questions == 300
    asked = r.accepted | r.rejected
    assert asked.sum() == 300
    assert t.scores[asked].min() >= t.scores[~asked].max()
    assert np.array_equal(r.accepted[asked], t.ious[asked] >= 0.75)
    assert r.trace["questions"].max() <= 300
    r0 = run_naive(t.scores, t.ious, t.classes, SimulatedAnnotators(t.ious, 0.75), 0.75,
                   budget_questions=0)
    assert r0.questions == 0 and not r0.accepted.any()


# ------------------------------------------------------------------ universal threshold
def _partition_equal(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_flat_clusters_match_scipy_fcluster():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 5))
    Z = fastcluster.linkage(x, method="complete")
    assert np.unique(Z[:, 2]).shape[0] == Z.shape[0]        # distinct heights
    f = Forest.from_linkage(Z, rng.random(300))
    for k in (1, 2, 3, 7, 40, 299, 300, 500):
        nodes = flat_clusters(f, k)
        assert nodes.shape[0] == min(k, 300)
        lab = np.empty(300, dtype=np.int64)
        for i, nd in enumerate(nodes):
            lab[f.masks(nd)] = i
        assert np.bincount(lab).sum() == 300 and f.sizes[nodes].sum() == 300
        ref = fcluster(Z, k, criterion="maxclust")
        assert _partition_equal(lab, ref), k


def test_flat_clusters_per_tree(data):
    t, f = data
    nodes = flat_clusters(f, 5)
    assert nodes.shape[0] == 15                                # 5 per class
    assert np.array_equal(np.sort(np.concatenate([f.masks(n) for n in nodes])), np.arange(t.n))
    assert np.all(np.bincount(f.node_class[nodes]) == 5)


def test_universal_sweep_monotone_and_decisions(data):
    t, f = data
    ann = SimulatedAnnotators(t.ious, 0.75)
    ks = sweep_ks(f, 10)
    assert ks[0] == 1 and ks[-1] == f.sizes[f.roots].max()
    runs = universal_sweep(f, t.ious, ann, ks=ks, ns=15, ka=0.85, kiou=0.75, seed=0)
    qs = [r.questions for r in runs]
    assert qs == sorted(qs) and qs[-1] == t.n                 # finest cut asks every mask
    assert np.array_equal(runs[-1].accepted, t.ious >= 0.75)  # ... and accepts the good ones
    for r in runs:
        assert not (r.accepted & r.rejected).any()
        assert r.trace["questions"][-1] == r.questions
        assert np.all(np.diff(r.trace["questions"]) > 0)
        # every accepted flat cluster had sampled quality >= K_a
        for nd in flat_clusters(f, r.extra["k"]):
            m = f.masks(nd)
            if r.accepted[m[0]]:
                assert r.accepted[m].all()
                if m.shape[0] <= 15:
                    assert (t.ious[m] >= 0.75).mean() >= 0.85
    # coarse cuts propagate to masks never asked: precision < 1 but well above base rate
    mid = runs[len(runs) // 2]
    prec = (t.ious[mid.accepted] >= 0.75).mean()
    assert (t.ious >= 0.75).mean() + 0.2 < prec < 1.0
    assert any(r.accepted.sum() > 2 * r.questions for r in runs)   # propagation pays off somewhere
    # same seed, same run
    again = run_universal_threshold(f, t.ious, SimulatedAnnotators(t.ious, 0.75), int(mid.extra["k"]))
    assert np.array_equal(again.accepted, mid.accepted) and again.questions == mid.questions


def test_universal_budget_and_best_point(data):
    t, f = data
    ann = SimulatedAnnotators(t.ious, 0.75)
    r = run_universal_threshold(f, t.ious, ann, 200, budget_questions=500)
    assert r.questions <= 500 and r.trace["questions"].max() <= 500
    assert ann.questions == r.questions
    runs = universal_sweep(f, t.ious, ann, points=8)
    end = best_universal(runs)
    assert end.accepted.sum() == max(x.accepted.sum() for x in runs)
    b = best_universal(runs, 1000)
    fit = [x for x in runs if x.questions <= 1000]
    assert b.questions <= 1000 and b.accepted.sum() == max(x.accepted.sum() for x in fit)
    assert best_universal(runs, 0) is None
    r_kpa = run_universal_threshold(f, t.ious, ann, 50, kpa=0.99)
    assert r_kpa.questions == 0 and r_kpa.rejected.all()


# ------------------------------------------------------------------------------- LSUN
def test_lsun_budget_and_precision(data):
    t, _ = data
    base = (t.ious >= 0.75).mean()
    ann = SimulatedAnnotators(t.ious, 0.75)
    r = run_lsun(t.features, t.scores, t.ious, t.classes, ann, 0.75, budget_questions=950)
    assert r.questions == 950 and ann.questions == r.questions     # 9 full rounds + 50
    assert r.trace["questions"].max() <= 950
    human = r.accepted | r.rejected
    assert r.extra["auto_accepted"] > 0
    assert r.accepted.sum() == r.extra["auto_accepted"] + r.extra["human_yes"]
    assert 0.3 * r.questions < r.extra["human_yes"] < 0.7 * r.questions
    assert human.sum() > r.questions                               # auto-rejections too
    assert not (r.accepted & r.rejected).any()
    prec = (t.ious[r.accepted] >= 0.75).mean()
    assert base + 0.25 < prec
    # determinism
    r2 = run_lsun(t.features, t.scores, t.ious, t.classes, SimulatedAnnotators(t.ious, 0.75),
                  0.75, budget_questions=950)
    assert np.array_equal(r.accepted, r2.accepted)


def test_lsun_to_the_end(data):
    t, _ = data
    ann = SimulatedAnnotators(t.ious, 0.75)
    r = run_lsun(t.features, t.scores, t.ious, t.classes, ann, 0.75, seed=1)
    assert (r.accepted | r.rejected).all() and r.extra["unknown_masks"] == 0
    assert r.extra["auto_accepted"] + r.extra["auto_rejected"] > 0
    assert r.questions < t.n
    # every human-labelled yes is accepted; auto labels are not free of errors
    assert r.extra["auto_accepted"] + r.questions >= r.accepted.sum()
    prec = (t.ious[r.accepted] >= 0.75).mean()
    assert 0.85 < prec < 1.0
    stop = run_lsun(t.features, t.scores, t.ious, t.classes, SimulatedAnnotators(t.ious, 0.75),
                    0.75, seed=1, params=LsunParams(on_stall="stop", patience=1))
    assert stop.questions <= r.questions
    assert stop.extra["unknown_masks"] == (~(stop.accepted | stop.rejected)).sum()
