"""The search state machine against a brute-force reference, plus its invariants."""
import math

import numpy as np
import pytest

from clustering.build import build_forest
from orchestrator.errors import LabelpropError
from orchestrator.search import (TREE_STRATEGIES, NodeState, Search, SearchParams, decide)
from orchestrator.simulate import run_tree_search


def small_data(seed=0, n=120, classes=2):
    rng = np.random.default_rng(seed)
    modes = rng.integers(0, 8, n)
    mq = rng.random(8)
    feats = (rng.normal(size=(8, 5))[modes] * 3 + rng.normal(size=(n, 5))).astype(np.float32)
    ious = np.clip(rng.normal(0.45 + 0.5 * mq[modes], 0.1), 0, 1)
    scores = np.clip(0.8 * ious + 0.15 + rng.normal(0, 0.08, n), 0, 1)
    cls = rng.integers(0, classes, n)
    return build_forest(feats, scores, cls), scores, ious


class Truthful:
    def __init__(self, ious, kiou=0.75):
        self.ious = ious
        self.kiou = kiou

    def answer(self, masks):
        return (self.ious[masks] >= self.kiou).astype(np.int8)


# ----------------------------------------------------------------------------- reference
def reference(forest, params, ious):
    """Algorithm 1 written the obvious way: a candidate list sorted every iteration,
    answers kept in a dict, samples drawn as the spec says. Returns (decisions, questions)."""
    f, p = forest, params
    S = lambda j: float(f.scores[f.masks(j)].mean())  # noqa: E731
    answers: dict[int, int] = {}
    cands = []  # (node, seq)
    seq = 0
    for r in f.roots.tolist():
        seq += 1
        cands.append((r, seq))
    decisions, questions = [], 0

    def children(j):
        a, b = int(f.left[j]), int(f.right[j])
        if a < 0:
            return []
        if p.strategy == "dfs" and np.random.default_rng((p.seed, j, 1 << 20)).random() < 0.5:
            a, b = b, a
        if p.strategy == "dfs-heuristic" and S(a) > S(b):
            a, b = b, a
        return [a, b]

    while cands:
        if p.strategy == "heuristic":
            cands.sort(key=lambda c: (-S(c[0]), c[1]))
            node, _ = cands.pop(0)
        elif p.strategy == "bfs":
            cands.sort(key=lambda c: c[1])
            node, _ = cands.pop(0)
        else:
            cands.sort(key=lambda c: -c[1])
            node, _ = cands.pop(0)
        s = S(node)
        if s <= p.kpr:
            decisions.append((node, NodeState.AUTO_REJECTED))
            continue
        if s <= p.kpa:
            decisions.append((node, NodeState.AUTO_SPLIT))
            for c in children(node):
                seq += 1
                cands.append((c, seq))
            continue
        masks = f.masks(node)
        T = min(p.ns, len(masks))
        have = [m for m in masks.tolist() if m in answers]
        if len(have) < T:
            start = int(f.start[node])
            free = np.array([start + i for i, m in enumerate(masks.tolist()) if m not in answers])
            rng = np.random.default_rng((p.seed, node, 0))
            pos = np.sort(rng.choice(free, size=T - len(have), replace=False))
            for m in f.order[pos].tolist():
                answers[m] = int(ious[m] >= p.kiou)
                questions += 1
            have = [m for m in masks.tolist() if m in answers]
        q = sum(answers[m] for m in have) / len(have)
        st = NodeState.ACCEPTED if q >= p.ka else NodeState.REJECTED if q <= 1 - p.ka else NodeState.SPLIT
        decisions.append((node, st))
        if st == NodeState.SPLIT:
            for c in children(node):
                seq += 1
                cands.append((c, seq))
    return decisions, questions


def recursive_accepted(forest, params, truth):
    """Final accepted set by plain recursion, oracle Q (order-free)."""
    f, p = forest, params
    out = set()

    def visit(j):
        s = float(f.scores[f.masks(j)].mean())
        if s <= p.kpr:
            return
        if s <= p.kpa:
            if f.left[j] >= 0:
                visit(int(f.left[j]))
                visit(int(f.right[j]))
            return
        q = float(truth[f.masks(j)].mean())
        if q >= p.ka:
            out.update(f.masks(j).tolist())
        elif q > 1 - p.ka and f.left[j] >= 0:
            visit(int(f.left[j]))
            visit(int(f.right[j]))

    for r in f.roots.tolist():
        visit(r)
    return out


def run_sequential(forest, params, ious):
    s = Search(forest, params)
    order = []
    while True:
        asks = s.next_questions(max_nodes=1)
        order += [(d.node, d.state) for d in s.drain()[1]]
        if not asks:
            break
        for a in asks:
            s.record(a.masks, (ious[a.masks] >= params.kiou).astype(np.int8))
        order += [(d.node, d.state) for d in s.drain()[1]]
    return s, order


@pytest.mark.parametrize("strategy", TREE_STRATEGIES)
@pytest.mark.parametrize("seed,ns,kpa,kpr", [(0, 4, 0.0, 0.0), (1, 6, 0.55, 0.3), (2, 15, 0.7, 0.0)])
def test_search_matches_bruteforce_reference(strategy, seed, ns, kpa, kpr):
    forest, scores, ious = small_data(seed)
    params = SearchParams(ns=ns, kpa=kpa, kpr=kpr, strategy=strategy, seed=seed)
    ref_decisions, ref_questions = reference(forest, params, ious)
    s, order = run_sequential(forest, params, ious)
    assert order == ref_decisions
    assert s.questions_asked == ref_questions
    assert s.done


@pytest.mark.parametrize("seed", [0, 3])
def test_oracle_strategies_accept_the_same_masks(seed):
    forest, scores, ious = small_data(seed, n=300, classes=3)
    truth = ious >= 0.75
    sets = {}
    for st in TREE_STRATEGIES:
        p = SearchParams(strategy=st, oracle=True, kpa=0.5)
        r = run_tree_search(forest, p, Truthful(ious), ious)
        assert r.questions == 0 and r.clusters_annotated > 0
        sets[st] = set(np.flatnonzero(r.accepted).tolist())
    ref = recursive_accepted(forest, SearchParams(oracle=True, kpa=0.5), truth)
    assert ref, "the test data must have accepted clusters"
    for st, acc in sets.items():
        assert acc == ref, st


class Noisy:
    def __init__(self, ious, err, seed):
        self.truth = (ious >= 0.75)
        self.flip = np.random.default_rng(seed).random(ious.shape[0]) < err

    def answer(self, masks):
        return (self.truth[masks] ^ self.flip[masks]).astype(np.int8)


@pytest.mark.parametrize("chunk", [0, 1, 4])
@pytest.mark.parametrize("strategy", TREE_STRATEGIES)
def test_invariants_with_answers_in_any_order(chunk, strategy):
    """Many nodes asked at once, answers arriving shuffled in random batches, some released."""
    forest, scores, ious = small_data(5, n=400, classes=3)
    params = SearchParams(ns=7, chunk=chunk, strategy=strategy, kpa=0.4, kpr=0.1, seed=11)
    ann = Noisy(ious, 0.15, 1)
    s = Search(forest, params)
    rng = np.random.default_rng(0)
    asked: list[int] = []
    released: list[int] = []
    outstanding: list[int] = []
    decisions = []
    for _ in range(10_000):
        for a in s.next_questions(max_questions=int(rng.integers(1, 30))):
            assert a.masks.shape[0] <= params.ns
            if chunk:
                assert a.masks.shape[0] <= chunk
            asked += a.masks.tolist()
            outstanding += a.masks.tolist()
        decisions += s.drain()[1]
        if not outstanding:
            if s.done:
                break
            continue
        rng.shuffle(outstanding)
        k = int(rng.integers(1, len(outstanding) + 1))
        batch, outstanding = outstanding[:k], outstanding[k:]
        if rng.random() < 0.1:  # e.g. a HIT expired: questions come back unanswered
            assert s.release(batch) == len(batch)
            released += batch
        else:
            assert s.record(batch, ann.answer(np.array(batch))) == len(batch)
        decisions += s.drain()[1]
    assert s.done and not outstanding
    # a mask is asked again only after its question came back unanswered, never after an answer
    n_asked = np.bincount(asked, minlength=forest.n_masks)
    n_released = np.bincount(released, minlength=forest.n_masks) if released else 0
    assert np.all(n_asked - n_released <= 1)
    answered = s.answer >= 0
    assert np.array_equal(np.flatnonzero(answered), np.unique([m for m in asked if s.answer[m] >= 0]))
    acc, rej = s.accepted_mask(), s.rejected_mask()
    assert not np.any(acc & rej)
    decided_nodes = [d.node for d in decisions]
    assert len(decided_nodes) == len(set(decided_nodes)), "a node was decided twice"
    for d in decisions:
        if d.state == NodeState.ACCEPTED:
            assert d.q >= params.ka
        if d.state == NodeState.REJECTED:
            assert d.q <= 1 - params.ka + 1e-12
        if d.state in (NodeState.ACCEPTED, NodeState.REJECTED, NodeState.SPLIT):
            assert d.n_answered >= 1
            if chunk == 0:
                assert d.n_answered >= min(params.ns, forest.size(d.node))
    # final nodes are never visited below: no decided node has a decided accepted/rejected ancestor
    final = np.isin(s.node_state, [NodeState.ACCEPTED, NodeState.REJECTED, NodeState.AUTO_REJECTED])
    for j in np.flatnonzero(s.node_state != NodeState.UNSEEN):
        p = forest.parent[j]
        while p >= 0:
            assert not final[p], f"node {j} visited under final node {p}"
            p = forest.parent[p]


def test_no_mask_answered_twice_and_answers_are_reused():
    forest, scores, ious = small_data(2, n=500, classes=1)
    params = SearchParams(ns=10, kpa=0.0)
    s = Search(forest, params)
    seen = set()
    reused = 0
    while True:
        asks = s.next_questions(max_nodes=1)
        if not asks:
            break
        for a in asks:
            a_before, _, _ = s.counts(a.node)
            reused += a_before
            assert not seen.intersection(a.masks.tolist())
            seen.update(a.masks.tolist())
            assert a.masks.shape[0] == min(params.ns, forest.size(a.node)) - a_before
            s.record(a.masks, (ious[a.masks] >= 0.75).astype(np.int8))
    assert reused > 0, "children must reuse their parent's answers"


def _one_node_search(n, chunk, ns=15):
    """A two-leaf-deep tree whose root holds n masks: exercise the root's stopping rule."""
    from scipy.cluster.hierarchy import linkage
    from clustering.tree import Forest
    x = np.arange(n, dtype=float)[:, None]
    forest = Forest.from_linkage(linkage(x, "complete"), np.full(n, 0.9))
    return Search(forest, SearchParams(ns=ns, chunk=chunk, kpa=0.0)), int(forest.roots[0])


@pytest.mark.parametrize("answers,chunk,expect_asked,expect", [
    ([1] * 15, 1, 13, NodeState.ACCEPTED),     # 13 yes of 15: accepted whatever comes next
    ([0] * 15, 1, 13, NodeState.REJECTED),     # 13 no: rejected
    ([1, 0] * 8, 1, 6, NodeState.SPLIT),       # 3 yes and 3 no: can be neither
    ([1] * 15, 4, 16 - 1, NodeState.ACCEPTED), # chunks of 4: 4, 8, 12 undetermined, then 3 more
    ([1] * 15, 0, 15, NodeState.ACCEPTED),     # no sequential sampling: all N_s
    ([1, 0] * 8, 0, 15, NodeState.SPLIT),
])
def test_sequential_sampling_stops_when_determined(answers, chunk, expect_asked, expect):
    s, root = _one_node_search(40, chunk)
    asked = 0
    while s.node_state[root] != expect:
        asks = s.next_questions(max_nodes=1)
        assert asks and asks[0].node == root
        for a in asks:
            s.record(a.masks, answers[asked:asked + a.masks.shape[0]])
            asked += a.masks.shape[0]
    assert min(asked, 15) == min(expect_asked, 15)
    assert s.node_state[root] == expect


def test_budget_is_never_exceeded_and_resume_equals_uninterrupted():
    forest, scores, ious = small_data(3, n=600, classes=2)
    params = SearchParams(ns=8, chunk=3, seed=4)
    full = run_tree_search(forest, params, Truthful(ious), ious)
    for budget in (1, 17, full.questions // 3):
        r = run_tree_search(forest, params, Truthful(ious), ious, budget_questions=budget)
        assert r.questions <= budget
    # stop half-way, snapshot, restore, continue: identical outcome
    s = Search(forest, params)
    steps = 0
    while steps < 25:
        asks = s.next_questions(max_nodes=3)
        if not asks:
            break
        for a in asks[:-1]:  # leave the last ask outstanding across the "crash"
            s.record(a.masks, (ious[a.masks] >= 0.75).astype(np.int8))
        steps += 1
    touched = np.flatnonzero(s.node_state != NodeState.UNSEEN)
    am = np.flatnonzero(s.answer >= 0)
    r = Search.restore(forest, params, node_ids=touched, states=s.node_state[touched],
                       seqs=s.node_seq[touched], qs=s.node_q[touched], rounds=s.node_rounds[touched],
                       answered_masks=am, answered_labels=s.answer[am],
                       pending_masks=np.flatnonzero(s.pending), questions_asked=s.questions_asked,
                       clusters_annotated=s.clusters_annotated)
    for srch in (s, r):
        pend = np.flatnonzero(srch.pending)
        srch.record(pend, (ious[pend] >= 0.75).astype(np.int8))
        while True:
            asks = srch.next_questions(max_nodes=3)
            if not asks:
                break
            for a in asks:
                srch.record(a.masks, (ious[a.masks] >= 0.75).astype(np.int8))
    assert np.array_equal(s.accepted_mask(), r.accepted_mask())
    assert np.array_equal(s.node_state, r.node_state)
    assert s.questions_asked == r.questions_asked


def test_decide_rule_and_bad_params():
    assert decide(0.85, 0.85) == NodeState.ACCEPTED
    assert decide(0.15, 0.85) == NodeState.REJECTED
    assert decide(0.5, 0.85) == NodeState.SPLIT
    for bad in (dict(ka=1.5), dict(kiou=-0.1), dict(kpa=float("nan")), dict(ns=0),
                dict(strategy="astar"), dict(kpr=0.8, kpa=0.7), dict(chunk=-1)):
        with pytest.raises(LabelpropError):
            SearchParams(**bad)
    assert math.isclose(SearchParams().ka, 0.85)


def test_class_quotas_stop_a_class_once_met():
    forest, scores, ious = small_data(1, n=900, classes=3)
    free = run_tree_search(forest, SearchParams(kpa=0.0), Truthful(ious), ious)
    cls = forest.node_class[forest.leaf_of_mask]
    per_class = np.bincount(cls[free.accepted], minlength=3)
    c = int(np.argmax(per_class))
    quota = max(1, int(per_class[c]) // 4)
    capped = run_tree_search(forest, SearchParams(kpa=0.0, quotas=((c, quota),)), Truthful(ious), ious)
    got = np.bincount(cls[capped.accepted], minlength=3)
    assert quota <= got[c] < per_class[c]
    others = [k for k in range(3) if k != c]
    assert np.array_equal(got[others], per_class[others])  # other classes unaffected
    assert capped.questions < free.questions
