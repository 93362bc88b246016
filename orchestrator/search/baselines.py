"""The paper's baselines, run against simulated annotators: naive, universal threshold, LSUN.

Each returns a :class:`~orchestrator.search.results.RunResult` whose trace has one point per
decision (naive: per question; universal threshold: per verified flat cluster; LSUN: per
batch of human labels and per automatic-labelling step), with cumulative values, so
curves and "at budget" comparisons against the tree search are computed one way.  The
trace column ``hq_clusters`` counts accepted clusters, as for the tree search; for
``naive`` and ``lsun`` every accepted mask is its own cluster.

Every baseline takes an optional ``budget_questions`` and never asks more questions than
that.  Everything random derives from ``seed``, so runs are reproducible; the answers
themselves come from the annotators (fixed per mask id).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from clustering.tree import Forest
from orchestrator.search import paper
from orchestrator.errors import LabelpropError, check_unit_interval
from orchestrator.search.results import RunResult, TraceRecorder

__all__ = ["run_naive", "flat_clusters", "run_universal_threshold", "universal_sweep",
           "sweep_ks", "best_universal", "LsunParams", "run_lsun"]


def _check_budget(budget_questions) -> int | None:
    if budget_questions is None:
        return None
    b = int(budget_questions)
    if b < 0:
        raise LabelpropError(f"budget_questions must be >= 0, got {budget_questions!r}")
    return b


def _seconds(annotators) -> float:
    return float(getattr(annotators, "seconds_per_question", 1.5))


# --------------------------------------------------------------------------- naive
def run_naive(scores: np.ndarray, ious: np.ndarray, classes: np.ndarray | None, annotators,
              kiou: float, budget_questions: int | None = None) -> RunResult:
    """Verify every mask one by one (the brute-force binary verification of [39]).

    Order: highest score first, ties broken by mask id (a stable sort of ``-scores``), so
    that under a budget the naive baseline spends it on the most promising masks.
    ``classes`` does not change the order (all classes share one queue, like the tree
    search's heap).  A mask is accepted iff its answer is yes, rejected iff no; masks not
    asked (budget) are neither.  ``clusters_annotated == questions``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    ious = np.asarray(ious, dtype=np.float64)
    kiou = check_unit_interval("kiou", kiou)
    budget = _check_budget(budget_questions)
    n = scores.shape[0]
    order = np.argsort(-scores, kind="stable")
    k = n if budget is None else min(n, budget)
    asked = order[:k]
    answers = annotators.answer(asked).astype(bool) if k else np.zeros(0, dtype=bool)
    yes_ids = asked[answers]
    accepted = np.zeros(n, dtype=bool)
    rejected = np.zeros(n, dtype=bool)
    accepted[yes_ids] = True
    rejected[asked[~answers]] = True
    # cumulative trace, one point per question
    c_acc = np.cumsum(answers)
    c_iou = np.cumsum(np.where(answers, ious[asked], 0.0))
    c_ok = np.cumsum(answers & (ious[asked] >= kiou))
    rec = TraceRecorder()
    for i in range(k):
        a = int(c_acc[i])
        rec.add(i + 1, i + 1, a, float(c_iou[i]), int(c_ok[i]), a)
    return RunResult(strategy="naive", accepted=accepted, rejected=rejected, questions=k,
                     clusters_annotated=k, trace=rec.arrays(),
                     seconds_per_question=_seconds(annotators),
                     extra={"order": "score-descending"})


# ------------------------------------------------------------- universal threshold
def flat_clusters(forest: Forest, k: int) -> np.ndarray:
    """Cut every tree of ``forest`` into ``min(k, size)`` flat clusters; return their nodes.

    The cut removes each tree's ``k - 1`` highest merges, i.e. cuts the dendrogram at one
    height, which is what ``scipy.cluster.hierarchy.fcluster(Z, k, criterion='maxclust')``
    does on the same linkage matrix.  The two agree exactly when merge heights are
    distinct; with tied heights fcluster may return fewer clusters, we still return
    exactly ``k`` (ties broken by merge order).  Working on the Forest rather than
    re-running the linkage means the baseline cuts the very tree the search explores.

    Returns the node ids of the flat clusters (every mask of a tree is in exactly one).
    """
    k = int(k)
    if k < 1:
        raise LabelpropError(f"k must be >= 1, got {k}")
    m = forest.n_nodes
    # tree id of every node: roots are the last node of each tree's contiguous block
    roots = np.asarray(forest.roots, dtype=np.int64)
    tree_of = np.searchsorted(roots, np.arange(m), side="left")
    internal = forest.left >= 0
    # rank internal nodes within their tree by (height desc, node id desc); a parent has
    # height >= its children and a larger id, so every parent ranks before its children
    idx = np.flatnonzero(internal)
    o = np.lexsort((-idx, -forest.height[idx], tree_of[idx]))
    idx = idx[o]
    t_sorted = tree_of[idx]
    first = np.searchsorted(t_sorted, t_sorted, side="left")
    rank = np.arange(idx.shape[0]) - first          # 0 = highest merge of its tree
    cut = np.zeros(m, dtype=bool)                   # merges removed by the cut
    cut[idx[rank < k - 1]] = True
    par = forest.parent
    is_root = par < 0
    keep = np.where(is_root, ~cut, cut[np.maximum(par, 0)] & ~cut)
    return np.flatnonzero(keep)


def run_universal_threshold(forest: Forest, ious: np.ndarray, annotators, k: int, *,
                            ns: int = paper.NS, ka: float = paper.KA, kiou: float = paper.KIOU,
                            kpa: float | None = None, budget_questions: int | None = None,
                            seed: int = 0) -> RunResult:
    """Universal-threshold baseline (paper Fig. 6b) for one ``k``.

    Every class's tree is cut into ``k`` flat clusters (:func:`flat_clusters`).  The flat
    clusters are verified in order of decreasing mean score S (ties by node id), each with
    ``ns`` masks sampled uniformly without replacement (clusters with at most ``ns`` masks
    ask every mask).  A cluster with estimated quality Q >= ``ka`` is accepted and its
    label propagated to all its masks; every other verified cluster is rejected (a flat
    cut has no children to split into).  With ``kpa`` set, clusters with S <= kpa are
    rejected without questions (active selection, off by default as in Fig. 6b).  Stops
    before a cluster whose questions would exceed ``budget_questions``.
    """
    ka = check_unit_interval("ka", ka)
    kiou = check_unit_interval("kiou", kiou)
    if int(ns) < 1:
        raise LabelpropError(f"ns must be >= 1, got {ns}")
    ns = int(ns)
    budget = _check_budget(budget_questions)
    ious = np.asarray(ious, dtype=np.float64)
    n = forest.n_masks
    nodes = flat_clusters(forest, k)
    S = forest.mean_scores[nodes]
    nodes = nodes[np.lexsort((nodes, -S))]
    S = forest.mean_scores[nodes]
    sizes = forest.sizes[nodes]
    # Sample without replacement: one uniform key per mask; a cluster asks its ns masks
    # with the smallest keys (in the forest's leaf order each cluster is a contiguous slice).
    rng = np.random.default_rng([int(seed), int(k)])
    key = rng.random(n)
    cum_iou = np.concatenate([[0.0], np.cumsum(ious[forest.order])])
    cum_ok = np.concatenate([[0], np.cumsum(ious[forest.order] >= kiou)])
    accepted = np.zeros(n, dtype=bool)
    rejected = np.zeros(n, dtype=bool)
    rec = TraceRecorder()
    questions = clusters = n_acc = n_ok = n_hq = 0
    iou_sum = 0.0
    for j, node, s in zip(range(nodes.shape[0]), nodes.tolist(), S.tolist()):
        st, en = int(forest.start[node]), int(forest.end[node])
        masks = forest.order[st:en]
        if kpa is not None and s <= kpa:
            rejected[masks] = True
            continue
        want = min(ns, int(sizes[j]))
        if budget is not None and questions + want > budget:
            break
        if want < masks.shape[0]:
            pick = masks[np.argpartition(key[masks], want - 1)[:want]]
        else:
            pick = masks
        q = float(np.mean(annotators.answer(pick)))
        questions += want
        clusters += 1
        if q >= ka:
            accepted[masks] = True
            n_acc += en - st
            iou_sum += float(cum_iou[en] - cum_iou[st])
            n_ok += int(cum_ok[en] - cum_ok[st])
            n_hq += 1
        else:
            rejected[masks] = True
        rec.add(questions, clusters, n_acc, iou_sum, n_ok, n_hq)
    return RunResult(strategy="universal-threshold", accepted=accepted, rejected=rejected,
                     questions=questions, clusters_annotated=clusters, trace=rec.arrays(),
                     seconds_per_question=_seconds(annotators),
                     extra={"k": int(k), "flat_clusters": int(nodes.shape[0])})


def sweep_ks(forest: Forest, points: int = 16) -> np.ndarray:
    """Log-spaced ``k`` values from 1 to the largest tree's size (distinct integers)."""
    largest = int(forest.sizes[forest.roots].max())
    return np.unique(np.round(np.geomspace(1, max(largest, 1), max(int(points), 1))).astype(np.int64))


def universal_sweep(forest: Forest, ious: np.ndarray, annotators, ks=None, points: int = 16,
                    **kwargs) -> list[RunResult]:
    """One :func:`run_universal_threshold` run per ``k`` (default :func:`sweep_ks`).

    Each run is an independent campaign (its own questions); together their end points
    form the universal threshold's cost/quantity curve.  ``kwargs`` go to every run.
    """
    ks = sweep_ks(forest, points) if ks is None else np.asarray(ks, dtype=np.int64)
    return [run_universal_threshold(forest, ious, annotators, int(k), **kwargs) for k in ks]


def best_universal(results: list[RunResult], budget_questions: int | None = None) -> RunResult | None:
    """The sweep point to report: with no budget ("end") the run with the most accepted
    masks; with a budget, the run with the most accepted masks among those whose total
    questions fit in it (None if no run fits).  Ties: fewer questions, then smaller k."""
    pool = [r for r in results
            if budget_questions is None or r.questions <= int(budget_questions)]
    if not pool:
        return None
    return max(pool, key=lambda r: (int(np.sum(r.accepted)), -r.questions, -r.extra.get("k", 0)))


# --------------------------------------------------------------------------- LSUN
@dataclass(frozen=True)
class LsunParams:
    """Knobs of the modified LSUN baseline (paper Sec. 5.2, DESIGN.md section 3)."""

    batch: int = 100            # human labels per class per round
    low_recall_loss: float = 0.01   # at most this fraction of labelled positives below t_low
    high_precision: float = 0.95    # labelled masks above t_high are >= this fraction positive
    min_above: int = 10         # t_high must have at least this many labelled masks above
    min_per_class: int = 5      # train only once each label has this many examples
    cv: int = 3                 # folds for calibration and out-of-fold threshold choice
    patience: int = 2           # rounds without automatic labels before the class stalls
    on_stall: str = "verify"    # "verify": ask the rest one by one; "stop": leave unknown
    C: float = 1.0              # LinearSVC regularisation


def _lsun_thresholds(p: np.ndarray, y: np.ndarray, lp: LsunParams) -> tuple[float, float]:
    """(t_low, t_high) from out-of-fold probabilities ``p`` of labelled masks ``y``."""
    pos = np.sort(p[y])
    # t_low: the largest value with at most low_recall_loss of labelled positives below it
    k = int(np.floor(lp.low_recall_loss * pos.shape[0]))
    t_low = float(pos[k]) if pos.shape[0] else 0.0
    # t_high: the smallest cut whose labelled masks at or above it are >= high_precision
    # positive (precision of every larger cut too, so a noisy dip does not open the gate)
    o = np.argsort(-p, kind="stable")
    ps, ys = p[o], y[o]
    prec = np.cumsum(ys) / np.arange(1, ps.shape[0] + 1)
    ok = prec >= lp.high_precision
    bad = np.flatnonzero(~ok)
    last = bad[0] if bad.shape[0] else ps.shape[0]   # prefix [0, last) all satisfy it
    if last < lp.min_above:
        return t_low, np.inf
    # do not split masks with equal probability across the cut
    t_high = float(ps[last - 1])
    return t_low, t_high


def run_lsun(features: np.ndarray, scores: np.ndarray, ious: np.ndarray, classes: np.ndarray,
             annotators, kiou: float = paper.KIOU, budget_questions: int | None = None,
             seed: int = 0, params: LsunParams = LsunParams()) -> RunResult:
    """Modified LSUN baseline [61] (paper Sec. 5.2), per class, in rounds.

    Each round, for every class that still has unknown masks (classes in id order): ask
    humans about ``batch`` masks sampled uniformly among the unknown ones (one question
    each; yes is accepted, no rejected); train a linear SVM on ``[standardised features,
    score]`` of all human-labelled masks of the class, calibrated to probabilities with
    ``CalibratedClassifierCV`` (sigmoid, ``cv`` folds); from out-of-fold probabilities of
    the labelled masks choose ``t_low`` (only ``low_recall_loss`` of labelled positives fall
    below) and ``t_high`` (labelled masks above are >= ``high_precision`` positive); unknown
    masks with p >= t_high are accepted, p < t_low rejected, the rest stay unknown.
    One model per class, as LSUN trains one per category: features of different classes
    are not comparable.  A class whose labels are still one-sided (fewer than
    ``min_per_class`` of each) only gets human labels that round.

    A class *stalls* after ``patience`` consecutive rounds without automatic labels; then
    ``on_stall="verify"`` asks its remaining unknown masks one by one (highest score first)
    and ``"stop"`` leaves them unknown.  The run ends when nothing is unknown or the budget
    is spent; after the last human batch that fits the budget one more (free) automatic
    labelling step runs.
    """
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.svm import LinearSVC

    lp = params
    if lp.on_stall not in ("verify", "stop"):
        raise LabelpropError(f"on_stall must be 'verify' or 'stop', got {lp.on_stall!r}")
    kiou = check_unit_interval("kiou", kiou)
    budget = _check_budget(budget_questions)
    features = np.asarray(features, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    ious = np.asarray(ious, dtype=np.float64)
    classes = np.asarray(classes, dtype=np.int64)
    n = scores.shape[0]
    rng = np.random.default_rng(seed)

    accepted = np.zeros(n, dtype=bool)
    rejected = np.zeros(n, dtype=bool)
    human = np.zeros(n, dtype=bool)
    label = np.zeros(n, dtype=bool)       # human answer, where human
    rec = TraceRecorder()
    st = {"q": 0, "acc": 0, "iou": 0.0, "ok": 0, "auto_acc": 0, "auto_rej": 0, "rounds": 0}

    def left() -> int | None:
        return None if budget is None else budget - st["q"]

    def note_accept(ids: np.ndarray) -> None:
        accepted[ids] = True
        st["acc"] += int(ids.shape[0])
        st["iou"] += float(ious[ids].sum())
        st["ok"] += int((ious[ids] >= kiou).sum())

    def ask(ids: np.ndarray) -> None:
        if ids.shape[0] == 0:
            return
        a = annotators.answer(ids).astype(bool)
        st["q"] += int(ids.shape[0])
        human[ids] = True
        label[ids] = a
        note_accept(ids[a])
        rejected[ids[~a]] = True
        rec.add(st["q"], st["q"], st["acc"], st["iou"], st["ok"], st["acc"])

    cls_ids = np.unique(classes)
    members = {int(c): np.flatnonzero(classes == c) for c in cls_ids}
    xs = {}
    for c, idx in members.items():
        x = np.column_stack([features[idx], scores[idx]])
        mu, sd = x.mean(axis=0), x.std(axis=0)
        sd[sd == 0] = 1.0
        xs[c] = (x - mu) / sd
    unknown = {c: np.ones(idx.shape[0], dtype=bool) for c, idx in members.items()}
    idle = {c: 0 for c in members}
    active = [c for c in members]

    def auto_label(c: int) -> int:
        idx, x, unk = members[c], xs[c], unknown[c]
        lab = human[idx]
        y = label[idx][lab]
        if unk.sum() == 0 or y.sum() < lp.min_per_class or (~y).sum() < lp.min_per_class:
            return 0
        folds = min(lp.cv, int(y.sum()), int((~y).sum()))
        svc = LinearSVC(C=lp.C, dual=False, max_iter=5000)
        clf = CalibratedClassifierCV(svc, method="sigmoid", cv=folds)
        xl = x[lab]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            cvs = StratifiedKFold(folds, shuffle=True, random_state=int(rng.integers(2**31)))
            p_oof = cross_val_predict(clf, xl, y, cv=cvs, method="predict_proba")[:, 1]
            clf.fit(xl, y)
            t_low, t_high = _lsun_thresholds(p_oof, y, lp)
            u = np.flatnonzero(unk)
            pu = clf.predict_proba(x[u])[:, 1]
        acc_l = u[pu >= t_high]
        rej_l = u[(pu < t_low) & (pu < t_high)]
        note_accept(idx[acc_l])
        rejected[idx[rej_l]] = True
        unk[acc_l] = False
        unk[rej_l] = False
        st["auto_acc"] += int(acc_l.shape[0])
        st["auto_rej"] += int(rej_l.shape[0])
        if acc_l.shape[0] or rej_l.shape[0]:
            rec.add(st["q"], st["q"], st["acc"], st["iou"], st["ok"], st["acc"])
        return int(acc_l.shape[0] + rej_l.shape[0])

    stalled: list[int] = []
    out_of_budget = False
    while active and not out_of_budget:
        st["rounds"] += 1
        still = []
        for c in active:
            idx, unk = members[c], unknown[c]
            u = np.flatnonzero(unk)
            if u.shape[0] == 0:
                continue
            want = min(lp.batch, u.shape[0])
            lft = left()
            if lft is not None and want > lft:
                want = lft
                out_of_budget = True
            if want > 0:
                pick = rng.choice(u, want, replace=False)
                unk[pick] = False
                ask(idx[pick])
            got = auto_label(c)
            idle[c] = 0 if got else idle[c] + 1
            if out_of_budget:
                break
            if not unk.any():
                continue
            if idle[c] >= lp.patience:
                stalled.append(c)
            else:
                still.append(c)
        active = still
    if lp.on_stall == "verify" and not out_of_budget:
        rest = np.concatenate([members[c][unknown[c]] for c in stalled]) if stalled else np.zeros(0, np.int64)
        rest = rest[np.argsort(-scores[rest], kind="stable")]
        lft = left()
        if lft is not None:
            rest = rest[:lft]
        for i in range(rest.shape[0]):
            ask(rest[i:i + 1])
        for c in stalled:
            unknown[c][np.isin(members[c], rest)] = False
    rec.add(st["q"], st["q"], st["acc"], st["iou"], st["ok"], st["acc"])
    n_unknown = int(sum(int(u.sum()) for u in unknown.values()))
    return RunResult(strategy="lsun", accepted=accepted, rejected=rejected, questions=st["q"],
                     clusters_annotated=st["q"], trace=rec.arrays(),
                     seconds_per_question=_seconds(annotators),
                     extra={"rounds": st["rounds"], "human_yes": int((human & label).sum()),
                            "auto_accepted": st["auto_acc"],
                            "auto_rejected": st["auto_rej"], "unknown_masks": n_unknown,
                            "stalled_classes": len(stalled)})
