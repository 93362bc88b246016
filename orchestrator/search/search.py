"""Algorithm 1 of the paper as a pure state machine over a :class:`~clustering.tree.Forest`.

The search never waits for people.  It is driven from outside:

* :meth:`Search.next_questions` pops nodes from one priority queue spanning every
  class's tree, applies the early rules (``S <= K_pr``: auto-reject, ``S <= K_pa``:
  auto-split) and returns the masks to ask about (:class:`Ask`), sampled uniformly
  among the node's masks that have no answer yet and no question outstanding;
* :meth:`Search.record` takes answers, in any order and in any batch size;
  every node whose outcome can no longer change is decided at once
  (accept and propagate yes, reject, or split into the two children);
* :meth:`Search.release` returns outstanding questions unanswered (an expired HIT,
  answers discarded by quality control); their nodes ask again.

Answers are never asked twice: when a node is split, the answers already collected
for masks inside each child count for that child, and only the shortfall up to
``N_s`` is sampled.  With ``chunk = K`` (sequential sampling) a node has at most K
questions outstanding, and asking stops as soon as the decision at ``N_s`` answers
is determined whatever the remaining answers are.

Every sampling round of node ``j`` draws from ``numpy.random.default_rng((seed, j,
round))``, so a search restored from its saved state asks exactly what an
uninterrupted one would have asked.

Strategies only change the queue's order (:data:`ORDERS`, one class per strategy):

* ``heuristic``: highest cluster score S first (the paper's choice);
* ``bfs``: first in, first out;
* ``dfs``: last in, first out, children in random order;
* ``dfs-heuristic``: last in, first out, the child with the higher S first;
* ``value`` (the default): most expected accepted masks per question first (beyond the
  paper, see :class:`ValueOrder`); ``value-simple`` is the same without the look-ahead.
  Every tree strategy ends with the same decisions; ``value`` gets there with the most
  masks per question on the way (``bench/value_order.py``).

Two rules beyond the paper's text are named choices (:class:`SearchParams`):

* ``leaf_rule``: a single-mask leaf with ``K_pr < S <= K_pa`` is dropped (``"drop"``, the
  paper's rule read literally: it is split, and a leaf has no children) or asked like any
  other node (``"ask"``, what the authors' code does);
* ``acceptance``: ``"fixed"`` is the paper's rule (accept at Q >= K_a over N_s answers);
  ``"size-aware"`` also requires a sequential likelihood-ratio test whose error budget
  shrinks with the node's size (:func:`judge`), so that one lucky sample cannot label tens
  of thousands of masks.
"""
from __future__ import annotations

import bisect
import math
from array import array
from collections import deque
from dataclasses import dataclass, field
from enum import IntEnum
from heapq import heapify, heappop, heappush, heappushpop
from typing import Callable, NamedTuple

import numpy as np

from clustering.tree import Forest
from orchestrator.search import paper
from orchestrator.search.calibration import AcceptanceCurve
from orchestrator.errors import LabelpropError
from orchestrator.search.params import at_least, non_negative, one_of, param, positive, unit_interval, validate

__all__ = ["NodeState", "SearchParams", "Ask", "Decision", "Search", "decide", "judge",
           "ORDERS", "TREE_STRATEGIES", "BASELINES", "STRATEGIES", "LEAF_RULES", "ACCEPTANCE_RULES",
           "ValueOrder"]


class NodeState(IntEnum):
    UNSEEN = 0
    QUEUED = 1
    ASKING = 2
    ACCEPTED = 3
    REJECTED = 4
    SPLIT = 5
    AUTO_REJECTED = 6
    AUTO_SPLIT = 7


FINAL = (NodeState.ACCEPTED, NodeState.REJECTED, NodeState.SPLIT,
         NodeState.AUTO_REJECTED, NodeState.AUTO_SPLIT)
# plain ints for the hot loops (IntEnum attribute access is slow)
_UNSEEN, _QUEUED, _ASKING = 0, 1, 2
_ACCEPTED, _REJECTED, _SPLIT, _AUTO_REJECTED, _AUTO_SPLIT = 3, 4, 5, 6, 7
_ENUM = tuple(NodeState)
_ANSWERED = frozenset((NodeState.ACCEPTED, NodeState.REJECTED, NodeState.SPLIT))
_tuple_new = tuple.__new__

LEAF_RULES = ("drop", "ask")
ACCEPTANCE_RULES = ("fixed", "size-aware")


def _tree_strategies() -> tuple[str, ...]:
    return TREE_STRATEGIES


def _kpr_below_kpa(p):
    if p.kpr > p.kpa:
        return "kpr", f"({p.kpr}) must not exceed {{kpa}} ({p.kpa})"


def _bad_margin_below_ka(p):
    if not (0.0 < p.bad_margin < p.ka) or not math.isfinite(p.bad_margin):
        return "bad_margin", f"must be in (0, {{ka}}), got {p.bad_margin!r}"


def _size_aware_needs_ka_below_1(p):
    if p.acceptance == "size-aware" and p.ka >= 1.0:
        return "acceptance", "size-aware needs {ka} < 1"


@dataclass(frozen=True)
class SearchParams:
    """Search parameters; the thresholds are the paper's (Sec. 5.2) with K_pr = 0.

    The default order ``value``, ``leaf_rule``, ``acceptance`` (with ``risk_masks``,
    ``bad_margin``, ``max_answers``) and ``curve`` (P_h / P_l for the ``value`` strategies) go
    beyond the paper; see the module docstring and :func:`judge`.  The paper's search is
    ``strategy="heuristic"`` with the other defaults.

    Every field carries its help text and check (:mod:`orchestrator.search.params`): the
    ``[search]`` section of ``campaign.toml`` and the options of ``labelprop simulate`` are
    built from them, and :func:`orchestrator.search.params.validate` checks them in one place.
    """

    strategy: str = param("value", "heuristic | bfs | dfs | dfs-heuristic | value | value-simple: the "
                          "order in which clusters are asked (value: most expected accepted masks per "
                          "question; heuristic: highest score S first, the paper's).",
                          check=one_of(_tree_strategies))
    ns: int = param(paper.NS, "N_s: masks verified per cluster.", check=at_least(1))
    ka: float = param(paper.KA, "K_a: accept a cluster at Q >= K_a, reject at Q <= 1 - K_a, else split.",
                      check=unit_interval)
    kiou: float = param(paper.KIOU, "K_iou: a mask is correct when its IoU >= K_iou.", check=unit_interval)
    kpa: float = param(paper.KPA, "K_pa: auto-split clusters with score S <= K_pa (no questions).",
                       check=unit_interval)
    kpr: float = param(paper.KPR, "K_pr: auto-reject clusters with score S <= K_pr.", check=unit_interval)
    chunk: int = param(0, "Sequential sampling: ask K at a time, stop once the decision is determined "
                          "(0: ask all N_s at once).", check=non_negative("off"))
    leaf_rule: str = param("drop", "drop: a one-mask leaf with S <= K_pa is dropped (the paper). ask: it is "
                                   "asked (the authors' code).", check=one_of(lambda: LEAF_RULES))
    acceptance: str = param("fixed", "fixed: accept at Q >= K_a over N_s answers (the paper). size-aware: "
                                     "also require a sequential test whose error budget shrinks with the "
                                     "cluster's size (asks more before accepting a large cluster).",
                            check=one_of(lambda: ACCEPTANCE_RULES))
    risk_masks: float = param(100.0, "size-aware: a cluster of n masks whose quality is at most K_a - "
                                     "bad_margin is accepted with probability <= risk_masks / n.",
                              check=positive)
    bad_margin: float = param(0.1, "size-aware: \"wrong\" is Q <= K_a - bad_margin.")
    max_answers: int = param(0, "size-aware: most answers one cluster collects (0: 10 N_s).",
                             check=non_negative("10 N_s"))
    oracle: bool = param(False, "Q is the true cluster quality (paper Sec. 5.1): no questions.",
                         config=False)
    seed: int = param(0, "Seed of the sampling.", config=False)
    quotas: tuple = param((), "((class_id, masks wanted), ...): stop searching a class once met.",
                          check=lambda qs: next((f"of class {c} must be >= 0, got {q}"
                                                 for c, q in qs if int(q) < 0), None),
                          config=False)
    curve: AcceptanceCurve | None = param(None, "value strategies: P_h(S), P_l(S) (None: a ramp from "
                                                "K_pa to 1).", config=False)

    __param_rules__ = (_kpr_below_kpa, _bad_margin_below_ka, _size_aware_needs_ka_below_1)

    def __post_init__(self) -> None:
        validate(SearchParams, self)

    # the size-aware test's constants (see judge)
    @property
    def test_qualities(self) -> tuple[float, float]:
        """(q0, q1): the sequential test weighs "Q = q1" (good) against "Q = q0" (bad)."""
        q0 = self.ka - self.bad_margin
        q1 = self.ka + (1.0 - self.ka) / 3.0
        return q0, q1

    @property
    def answer_cap(self) -> int:
        return self.max_answers if self.max_answers > 0 else 10 * self.ns


def decide(q: float, ka: float) -> NodeState:
    """The propagation rule: accept at Q >= K_a, reject at Q <= 1 - K_a, else split."""
    return NodeState(_decide_code(q, ka))


def _decide_code(q: float, ka: float) -> int:
    if q >= ka - 1e-12:
        return _ACCEPTED
    if q <= 1.0 - ka + 1e-12:
        return _REJECTED
    return _SPLIT


def _rule(p: SearchParams):
    """:func:`judge` as a closure over one search's constants: ``rule(n, a, y, p) -> (code,
    need)`` with code 0 while undecided."""
    ns, ka, chunk = p.ns, p.ka, p.chunk
    size_aware = p.acceptance == "size-aware"
    q0, q1 = p.test_qualities
    l1 = math.log(q1 / q0)                     # log-likelihood ratio of a yes
    l0 = math.log((1.0 - q1) / (1.0 - q0))     # ... and of a no (negative)
    risk = float(p.risk_masks)
    cap = p.answer_cap
    log, ceil = math.log, math.ceil

    def rule(n: int, a: int, y: int, pend: int) -> tuple[int, int]:
        T = ns if ns < n else n
        if a > 0 and (a >= T or (chunk > 0 and _decide_code(y / T, ka) == _decide_code((y + T - a) / T, ka))):
            # without sequential sampling a node waits for all N_s answers; with it, it stops
            # as soon as the decision at N_s answers can no longer change
            c = _decide_code(y / a, ka)
            if c != _ACCEPTED or not size_aware or a >= n or n <= risk:
                return c, 0
            llr = y * l1 + (a - y) * l0
            bound = log(n / risk)
            if llr >= bound - 1e-9:
                return _ACCEPTED, 0
            if a >= cap:
                return _SPLIT, 0
            # the fewest yes answers that could still reach the bound, counting those out
            k = ceil((bound - llr) / l1 - 1e-9)
            need = min(k, n - a, cap - a, ns) - pend
            if chunk > 0:
                need = min(need, chunk - pend)
            return 0, (need if need > 0 else 0)
        need = T - a - pend
        if chunk > 0:
            need = min(need, chunk - pend)
        return 0, need

    return rule


def judge(n: int, a: int, y: int, p: int, params: SearchParams) -> tuple[NodeState | None, int]:
    """The decision rule for a node of ``n`` masks with ``a`` answers (``y`` yes) and ``p``
    questions outstanding inside it.

    Returns ``(state, 0)`` when the node is decided (ACCEPTED, REJECTED or SPLIT), else
    ``(None, need)``: the questions it should post now (0: wait for those outstanding).

    *Fixed* (the paper): with ``T = min(N_s, n)`` answers, Q = y / a decides (accept at
    Q >= K_a, reject at Q <= 1 - K_a, else split); all answers inside the node count, so
    ``a`` may exceed T.  With ``chunk = K`` at most K are outstanding at once and the node
    is decided as soon as the decision at T answers can no longer change.

    *Size-aware*: a node the fixed rule would accept, with more than ``risk_masks`` masks
    and not every mask answered, is accepted only when the log-likelihood ratio of
    "Q = q1" against "Q = q0" (``params.test_qualities``: q0 = K_a - bad_margin, q1 between
    K_a and 1), ``llr = y log(q1/q0) + (a - y) log((1-q1)/(1-q0))``, reaches
    ``log(n / risk_masks)``.  By Ville's inequality the likelihood ratio of a node whose true
    quality is at most q0 ever reaches ``n / risk_masks`` with probability at most
    ``risk_masks / n``, however long the node is asked and whatever stops it: the expected
    number of masks labelled yes by a wrong accept is at most ``risk_masks`` per node, for
    nodes of any size.  Until then the node asks the fewest questions that could reach the
    bound (at most N_s, or ``chunk``, outstanding at once); if Q dips below K_a it is
    rejected or split as usual, and at ``max_answers`` answers (default 10 N_s) it is split.
    """
    code, need = _rule(params)(int(n), int(a), int(y), int(p))
    return (NodeState(code) if code else None), need


class Ask(NamedTuple):
    """Questions to post: masks of ``node`` sampled in sampling round ``round``."""

    node: int
    masks: np.ndarray
    round: int


class Decision(NamedTuple):
    node: int
    state: NodeState
    q: float            # estimated quality (nan for auto decisions)
    n_answered: int


class _Counts:
    """Answered, yes and pending masks over any range of leaf positions.

    Each position's state is one byte (0 free, 1 answered no, 2 answered yes, 3 pending).
    Above it sit levels of block totals, 64 entries of one level per entry of the next, each
    packed into one int (``answered + yes << W + pending << 2W``).  A range count reads at
    most 2 x 63 entries per level through C-level slices (``bytearray.count``, ``sum`` of a
    list slice), O(log_64 n) Python steps; an update touches one entry per level.
    """

    __slots__ = ("state", "levels", "W", "M", "code")

    def __init__(self, state: bytearray) -> None:
        self.state = state
        n = len(state)
        W = max(n, 1).bit_length() + 1
        self.W, self.M = W, (1 << W) - 1
        self.code = (0, 1, 1 + (1 << W), 1 << (2 * W))
        st = np.frombuffer(state, dtype=np.uint8)
        cur = [((st == 1) | (st == 2)).astype(np.int64), (st == 2).astype(np.int64),
               (st == 3).astype(np.int64)]
        self.levels: list[list[int]] = []
        size = n
        while size > 64:
            nb = (size + 63) >> 6
            cur = [np.pad(c, (0, nb * 64 - size)).reshape(nb, 64).sum(axis=1) for c in cur]
            self.levels.append([a + (y << W) + (p << (2 * W))
                                for a, y, p in zip(*(c.tolist() for c in cur))])
            size = nb

    def set(self, p: int, new: int) -> None:
        st = self.state
        d = self.code[new] - self.code[st[p]]
        st[p] = new
        for lv in self.levels:
            p >>= 6
            lv[p] += d

    def count(self, s: int, e: int) -> tuple[int, int, int]:
        """(answered, yes, pending) among positions ``[s, e)``."""
        st, W = self.state, self.W
        if e - s <= 128:
            n2 = st.count(2, s, e)
            return st.count(1, s, e) + n2, n2, st.count(3, s, e)
        s1, e1 = (s + 63) >> 6, e >> 6
        lo, hi = s1 << 6, e1 << 6
        n2 = st.count(2, s, lo) + st.count(2, hi, e)
        tot = (st.count(1, s, lo) + st.count(1, hi, e) + n2 + (n2 << W)
               + ((st.count(3, s, lo) + st.count(3, hi, e)) << (2 * W)))
        for lv in self.levels:
            s, e = s1, e1
            if e - s <= 128:
                tot += sum(lv[s:e])
                break
            s1, e1 = (s + 63) >> 6, e >> 6
            tot += sum(lv[s:s1 << 6]) + sum(lv[e1 << 6:e])
        M = self.M
        return tot & M, (tot >> W) & M, tot >> (2 * W)


def _bump_sorted(levels: list, pos: list, d: int) -> None:
    """Add ``d`` to the block totals above each of the sorted leaf positions ``pos`` (the
    level updates of :meth:`_Counts.set` for many positions at once: one addition per level
    where they all share a block, which is the rule for the masks of one node)."""
    lo, hi, k = pos[0], pos[-1], len(pos)
    sh = 0
    for lv in levels:
        sh += 6
        a = lo >> sh
        if a == hi >> sh:
            lv[a] += d * k
        else:
            for ps in pos:
                lv[ps >> sh] += d


def _bump_many(levels: list, pos: list, ds: list) -> None:
    """Add ``ds[i]`` to the block totals above leaf position ``pos[i]``, for every i (in any
    order; one addition per level where they all share a block)."""
    lo, hi = min(pos), max(pos)
    sh = 0
    for lv in levels:
        sh += 6
        a = lo >> sh
        if a == hi >> sh:
            lv[a] += sum(ds)
        else:
            for ps, d in zip(pos, ds):
                lv[ps >> sh] += d


# ------------------------------------------------------------------------ strategies
class _Order:
    """How a tree strategy orders the queue.

    ``key(node, seq)`` is the heap entry of ``node`` pushed with sequence number ``seq``
    (smallest pops first); ``expand(node, seq)`` returns a split node's two children in the
    order they are pushed and their entries, with sequence numbers ``seq + 1`` and
    ``seq + 2``.

    Static orders (a waiting node's key never changes) use plain ints, so the heap compares
    ints: from the high bits down, ``base[node]`` (or ``top - seq`` with ``lifo``), ``seq``,
    and the node id in the low ``nbits`` (first in, first out among equal bases);
    ``swap(node)`` says whether the right child is pushed first.
    :meth:`Search.next_questions` inlines this.  Other orders use tuples ending with the
    node id and are re-keyed when popped.
    """

    name = ""
    compare_rank: int | None = None   # place in `labelprop demo`'s comparison (None: not compared)
    static = True
    base: array | None = None       # per-node high bits of the key (None: all zero)
    lifo = False
    swap: Callable[[int], bool] | None = None

    def __init__(self, search: "Search") -> None:
        self.search = search
        sb = search._sbits
        nb = search._nbits
        self.top = (1 << sb) - 1
        self.sbits = sb + nb          # base or top - seq | seq | node
        self.nbits = nb

    def key(self, node: int, seq: int):
        if self.lifo:
            return ((self.top - seq) << self.sbits) | (seq << self.nbits) | node
        return (seq << self.nbits) | node if self.base is None else (self.base[node] << self.sbits) | (seq << self.nbits) | node

    def expand(self, node: int, seq: int) -> tuple:
        s = self.search
        a, b = s._left[node], s._right[node]
        if self.swap is not None and self.swap(node):
            a, b = b, a
        return a, b, self.key(a, seq + 1), self.key(b, seq + 2)


class HeuristicOrder(_Order):
    """Highest cluster score S first, ties first in first out (the paper's choice)."""

    name = "heuristic"
    compare_rank = 0

    def __init__(self, search: "Search") -> None:
        super().__init__(search)
        # dense rank of -S: equal scores share a rank, so ties fall to seq exactly as (-S, seq)
        negS = -search._S
        o = np.argsort(negS)                   # any order of equal scores gives the same ranks
        ranked = negS[o]
        rank = np.empty(o.shape[0], dtype=np.int64)
        rank[o] = np.cumsum(np.r_[False, ranked[1:] != ranked[:-1]])
        self.base = base = _ints(rank)
        left, right, sb, nb = search._left, search._right, self.sbits, self.nbits

        def expand(node: int, seq: int) -> tuple:
            a, b = left[node], right[node]
            return a, b, (base[a] << sb) | ((seq + 1) << nb) | a, (base[b] << sb) | ((seq + 2) << nb) | b

        self.expand = expand


class BfsOrder(_Order):
    """First in, first out: breadth-first."""

    name = "bfs"
    compare_rank = 2


class DfsOrder(_Order):
    """Last in, first out; a split node's children in a seeded random order."""

    name = "dfs"
    compare_rank = 3
    lifo = True

    def __init__(self, search: "Search") -> None:
        super().__init__(search)
        seed = search.params.seed
        # == numpy.random.default_rng((seed, node, 1 << 20)).random() < 0.5, built faster
        self.swap = lambda node: _rng((seed, node, 1 << 20)).random() < 0.5


class DfsHeuristicOrder(_Order):
    """Last in, first out; the child with the higher S is popped first."""

    name = "dfs-heuristic"
    lifo = True

    def __init__(self, search: "Search") -> None:
        super().__init__(search)
        left, right, S = search._left, search._right, search._Sl
        # pushed last = popped first: push the lower-S child first
        self.swap = lambda node: S[left[node]] > S[right[node]]


class ValueOrder(_Order):
    """Most expected accepted masks per question first (issue 9, beyond the paper).

    A node costs nothing to handle when the early rules decide it (S <= K_pa, or S <= K_pr)
    or when the answers already inside it are enough (``c = T - a - p <= 0``: T = min(N_s,
    n) answers needed, a answered and p outstanding inside it): such nodes come first, in
    the order they were queued, since handling them only opens more choices.  Every other
    node ``j`` of ``n_j`` masks is ranked by the expected number of masks its next ask
    accepts per question, ``v_j = P(accept) n_j / c_j``.

    ``P(accept)`` starts from ``P_h(S_j)`` (:class:`~orchestrator.search.calibration.AcceptanceCurve`:
    the calibration of Sec. 4.3, or a ramp from K_pa to 1 without one) and is updated with
    the answers already inside the node (inherited from its ancestors' samples): the node
    is taken to be good (Q = (1 + K_a)/2), bad (Q = (1 - K_a)/2) or mixed (Q = 1/2) with
    prior probabilities P_h, P_l and 1 - P_h - P_l, and ``P(accept)`` is the posterior of
    "good" after ``y`` yes among ``a`` answers.

    The look-ahead version (``value``) also counts what a split yields: with probability
    ``P_s`` (the posterior of "mixed") the node splits and its children become askable, each
    worth ``r_k = P(accept_k) n_k`` and costing ``c_k = T_k - (answers expected inside it
    after the parent's ask)``; the node's index is the better of the two stopping points,
    ``max(r_j / c_j, (r_j + P_s sum_k r_k) / (c_j + P_s sum_k c_k))`` (a one-step
    Gittins-style index for a branching bandit).  ``value-simple`` uses ``v_j`` alone.

    Keys are computed when a node is pushed.  While it waits, a released question inside it
    only raises its cost (its key gets worse: it is re-keyed when popped and pushed back if
    its key changed), and an answer landing inside it (a question its parent left
    outstanding) pushes it again with its new key.  So the heap always holds, for every
    queued node, an entry at least as good as its current key, and the pops are exactly the
    argmax of the current keys.  Entries carry the search's epoch (bumped by such releases
    and answers) so that a node popped with no such event since its push is not re-keyed.
    Entries are ``(0, seq, epoch, node)`` for free nodes, ``(1, -v, seq, epoch, node)``
    otherwise.
    """

    name = "value"
    compare_rank = 1
    static = False
    lookahead = True

    def __init__(self, search: "Search") -> None:
        super().__init__(search)
        p = search.params
        f = search.forest
        curve = p.curve if p.curve is not None else AcceptanceCurve.fallback(p.kpa)
        S = f.mean_scores
        n = f.sizes
        ph, pl = curve.lookup(S)
        pl = np.minimum(pl, 1.0 - ph)
        free = S <= p.kpa
        if p.leaf_rule == "ask":
            free &= (f.left >= 0) | (S <= p.kpr)
        self.free = bytes(free.astype(np.uint8))
        with np.errstate(divide="ignore"):
            LH, LL, LM = (_floats(np.log(ph)), _floats(np.log(pl)),
                          _floats(np.log(np.clip(1.0 - ph - pl, 0.0, 1.0))))
        N = _ints(n)
        FREE = self.free
        ns = p.ns
        qg, qb, qm = (1.0 + p.ka) / 2.0, (1.0 - p.ka) / 2.0, 0.5
        gy, gn = math.log(qg / qm), math.log((1.0 - qg) / (1.0 - qm))    # log-likelihood ratios
        by, bn = math.log(qb / qm), math.log((1.0 - qb) / (1.0 - qm))    # against "mixed"
        exp, inf = math.exp, -math.inf
        count, start, end = search._pc.count, search._start, search._end
        left, right = search._left, search._right
        look = self.lookahead

        PH, PM = _floats(ph), _floats(np.clip(1.0 - ph - pl, 0.0, 1.0))

        def posterior(node: int, a: int, y: int) -> tuple[float, float]:
            """(P(good), P(mixed)) of ``node`` after y yes of a answers inside it."""
            if not a:
                return PH[node], PM[node]
            g, b, m = LH[node], LL[node], LM[node]
            g += y * gy + (a - y) * gn
            b += y * by + (a - y) * bn
            top = max(g, b, m)
            if top == inf:
                return 0.0, 1.0
            wg, wb, wm = exp(g - top), exp(b - top), exp(m - top)
            t = wg + wb + wm
            return wg / t, wm / t

        def key(node: int, seq: int) -> tuple:
            if FREE[node]:
                return (0, seq, 0, node)
            nj = N[node]
            a, y, pend = count(start[node], end[node])
            taken = a + pend
            c = (ns if ns < nj else nj) - taken
            if c <= 0:
                return (0, seq, search._epoch, node)
            good, mixed = posterior(node, a, y)
            rj = good * nj
            v = rj / c
            kl = left[node]
            if look and kl >= 0 and mixed > 0.0:
                room = nj - taken          # free masks; the ask lands c of them, uniformly
                gain, cost = 0.0, 0.0
                for k in (kl, right[node]):
                    nk = N[k]
                    ak, yk, pk = count(start[k], end[k])
                    gain += posterior(k, ak, yk)[0] * nk
                    if not FREE[k]:
                        tk = ak + pk
                        ck = (ns if ns < nk else nk) - tk - c * (nk - tk) / room
                        if ck > 0.0:
                            cost += ck
                v2 = (rj + mixed * gain) / (c + mixed * cost)
                if v2 > v:
                    v = v2
            return (1, -v, seq, search._epoch, node)

        self.key = key
        self.posterior = posterior

        def expand(node: int, seq: int) -> tuple:
            a, b = left[node], right[node]
            s1, s2 = seq + 1, seq + 2
            return (a, b, (0, s1, 0, a) if FREE[a] else key(a, s1),
                    (0, s2, 0, b) if FREE[b] else key(b, s2))

        self.expand = expand


class ValueSimpleOrder(ValueOrder):
    """:class:`ValueOrder` without the look-ahead: ``P_h(S) n / c`` alone."""

    name = "value-simple"
    compare_rank = None
    lookahead = False


ORDERS: dict[str, type[_Order]] = {o.name: o for o in (
    HeuristicOrder, BfsOrder, DfsOrder, DfsHeuristicOrder, ValueOrder, ValueSimpleOrder)}
TREE_STRATEGIES = tuple(ORDERS)
#: simulation baselines (:mod:`orchestrator.search.baselines`); run by :func:`orchestrator.search.simulate.run_strategy`
BASELINES = ("universal-threshold", "naive", "lsun")
STRATEGIES = TREE_STRATEGIES + BASELINES


def _ints(a: np.ndarray) -> array:
    out = array("q")
    out.frombytes(np.ascontiguousarray(a, dtype=np.int64).tobytes())
    return out


def _floats(a: np.ndarray) -> array:
    out = array("d")
    out.frombytes(np.ascontiguousarray(a, dtype=np.float64).tobytes())
    return out


def _rng(key: tuple) -> np.random.Generator:
    """``numpy.random.default_rng(key)``, the same stream, built without its argument checks."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(key)))


# --------------------------------------------------------------------------- the search
@dataclass
class Search:
    """The label-propagation search over ``forest``; see the module docstring.

    ``node_state``, ``node_seq`` (numpy views of the search's own buffers), ``node_q``,
    ``node_rounds``, ``answer`` and ``pending`` are read by the store and the tests; only
    the search writes them.  ``on_visit(node)``, if set, is called each time a node leaves
    the queue (before its rules are applied).
    """

    forest: Forest
    params: SearchParams
    truth: np.ndarray | None = None   # per-mask bool (IoU >= K_iou); required in oracle mode

    node_state: np.ndarray = field(init=False)
    node_seq: np.ndarray = field(init=False)
    node_q: np.ndarray = field(init=False)
    node_rounds: np.ndarray = field(init=False)
    answer: np.ndarray = field(init=False)
    pending: np.ndarray = field(init=False)
    questions_asked: int = field(init=False, default=0)
    clusters_annotated: int = field(init=False, default=0)
    on_visit: Callable[[int], None] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        f = self.forest
        m, n = f.n_nodes, f.n_masks
        self._st = bytearray(m)
        self.node_state = np.frombuffer(self._st, dtype=np.int8)
        self._seqa = memoryview(bytearray(8 * m)).cast("q")   # seq of each node (0: never queued)
        self.node_seq = np.frombuffer(self._seqa, dtype=np.int64)
        self._q = memoryview(bytearray(8 * m)).cast("d")        # estimated quality of decided nodes
        self.node_q = np.frombuffer(self._q, dtype=np.float64)
        self.node_q.fill(np.nan)
        self._rounds = memoryview(bytearray(4 * m)).cast("i")   # sampling rounds drawn per node
        self.node_rounds = np.frombuffer(self._rounds, dtype=np.int32)
        self._ans = bytearray(b"\xff") * n             # answer per mask: 0xff (-1) none, 0 no, 1 yes
        self.answer = np.frombuffer(self._ans, dtype=np.int8)
        self._pend = bytearray(n)                        # 1: a question about the mask is out
        self.pending = np.frombuffer(self._pend, dtype=np.bool_)
        self._pos = np.empty(n, dtype=np.int64)          # leaf position of each mask
        self._pos.fill(-1)
        self._pos[f.order] = np.arange(f.order.shape[0])
        # hot per-mask / per-node data as array.array: built by a copy (not millions of int
        # objects), compact, invisible to the cyclic garbage collector, indexed from Python
        self._posl = _ints(self._pos)
        self._orderl = _ints(f.order)
        npos = f.order.shape[0]
        self._pc = _Counts(bytearray(npos))
        self._pview = np.frombuffer(self._pc.state, dtype=np.uint8)
        self._S = f.mean_scores
        self._Sl = _floats(self._S)
        self._start = _ints(f.start)
        self._end = _ints(f.end)
        self._left = _ints(f.left)
        self._right = _ints(f.right)
        self._heap: list = []
        self._free: deque[int] = deque()   # re-keying orders: free nodes, (seq << nbits) | node
        self._rules: bytes | None = None
        self._epoch = 0        # bumped when a question inside a queued node is released or answered
        self._n_queued = 0
        self._seq = 0
        self._sbits = (m + 2).bit_length()   # every node is pushed at most once: seq <= m
        self._nbits = max(m, 1).bit_length()
        self._asking: set[int] = set()
        # Nodes being asked never nest (children are queued only once their parent is
        # decided), so their leaf ranges are disjoint: a sorted list of their starts finds
        # the node an answered mask belongs to by bisection.
        self._ask_starts: list[int] = []
        self._ask_at: dict[int, int] = {}
        self._hungry: set[int] = set()   # asking nodes that may need more questions now
        self._quota = {int(c): int(q) for c, q in self.params.quotas}
        self._class_accepted: dict[int, int] = {}
        self._rule = _rule(self.params)
        self._order = ORDERS[self.params.strategy](self)
        self.dirty: set[int] = set()        # nodes changed since last drain (see drain)
        self._dec: list = []                # decisions since last drain; an int: auto-split node
        if self.params.oracle:
            if self.truth is None:
                raise LabelpropError("oracle mode needs ground-truth IoUs")
            self._Q = f.node_means(np.asarray(self.truth, dtype=np.float64))
        for r in f.roots.tolist():
            self._push(int(r))

    # ------------------------------------------------------------------ queue
    def _push(self, node: int) -> None:
        self._seq += 1
        seq = self._seq
        if self._st[node] != _QUEUED:
            self._n_queued += 1
        self._st[node] = _QUEUED
        self._seqa[node] = seq
        self.dirty.add(node)
        self._enqueue(node, seq)

    def _push_children(self, node: int) -> None:
        """Queue a split node's two children (== ``_push`` of each, in the order's order)."""
        if self._left[node] < 0:
            return
        seq = self._seq
        self._seq = seq + 2
        order = self._order
        if order.static:
            a, b, ea, eb = order.expand(node, seq)
        else:
            a, b = self._left[node], self._right[node]
        st, seqa = self._st, self._seqa
        st[a] = st[b] = _QUEUED
        seqa[a] = seq + 1
        seqa[b] = seq + 2
        self._n_queued += 2
        self.dirty.add(a)
        self.dirty.add(b)
        if order.static:
            heappush(self._heap, ea)
            heappush(self._heap, eb)
        else:
            self._enqueue(a, seq + 1)
            self._enqueue(b, seq + 2)

    # ------------------------------------------------------------- counting
    def counts(self, node: int) -> tuple[int, int, int]:
        """(answered, yes, pending) among the masks of ``node``."""
        return self._pc.count(self._start[node], self._end[node])

    def target(self, node: int) -> int:
        return min(self.params.ns, self._end[node] - self._start[node])

    # ------------------------------------------------------------- decisions
    def _decide(self, node: int, state: int, q: float, n_answered: int) -> None:
        self._st[node] = state
        self._q[node] = q
        self.dirty.add(node)
        if node in self._asking:
            self._stop_asking(node)
        self._dec.append(_tuple_new(Decision, (node, _ENUM[state], q, n_answered)))
        if state == _ACCEPTED and self._quota:
            c = int(self.forest.node_class[node])
            self._class_accepted[c] = self._class_accepted.get(c, 0) + self._end[node] - self._start[node]
        if state == _SPLIT or state == _AUTO_SPLIT:
            self._push_children(node)

    def _visit(self, node: int) -> int:
        """A node popped from the queue: early rules, oracle, the answers already inside it,
        or start asking.  Returns how many questions it should post now (-1: decided)."""
        p = self.params
        self._n_queued -= 1
        if self.on_visit is not None:
            self.on_visit(node)
        S = self._Sl[node]
        if S <= p.kpr:
            self._decide(node, _AUTO_REJECTED, math.nan, 0)
            return -1
        if S <= p.kpa and not (p.leaf_rule == "ask" and self._left[node] < 0):
            self._decide(node, _AUTO_SPLIT, math.nan, 0)
            return -1
        if p.oracle:
            q = float(self._Q[node])
            self.clusters_annotated += 1
            self._decide(node, _decide_code(q, p.ka), q, self._end[node] - self._start[node])
            return -1
        self._st[node] = _ASKING
        self.dirty.add(node)
        need = self._judge(node)      # answers inherited from its ancestors may decide it at once
        if need >= 0:
            self._start_asking(node)
        return need

    def _start_asking(self, node: int) -> None:
        self._asking.add(node)
        self._hungry.add(node)
        s = self._start[node]
        bisect.insort(self._ask_starts, s)
        self._ask_at[s] = node

    def _stop_asking(self, node: int) -> None:
        self._asking.discard(node)
        self._hungry.discard(node)
        s = self._start[node]
        i = bisect.bisect_left(self._ask_starts, s)
        del self._ask_starts[i]
        del self._ask_at[s]

    def _asking_node_at(self, pos: int) -> int:
        """The node being asked whose leaf range holds position ``pos``, or -1."""
        i = bisect.bisect_right(self._ask_starts, pos) - 1
        if i < 0:
            return -1
        node = self._ask_at[self._ask_starts[i]]
        return node if pos < self._end[node] else -1

    def _judge(self, node: int) -> int:
        """Decide ``node`` if its answers determine it; else return how many questions it
        should post now (-1: decided)."""
        s, e = self._start[node], self._end[node]
        a, y, pend = self._pc.count(s, e)
        code, need = self._rule(e - s, a, y, pend)
        if code:
            self.clusters_annotated += 1
            self._decide(node, code, y / a, a)
            return -1
        return need

    def _try_decide(self, node: int) -> bool:
        """Decide ``node`` if its outcome is determined by the answers it has."""
        return self._judge(node) < 0

    def _need(self, node: int) -> int:
        """Questions ``node`` should have posted now (see :func:`judge`)."""
        s, e = self._start[node], self._end[node]
        a, y, pend = self._pc.count(s, e)
        code, need = self._rule(e - s, a, y, pend)
        return 0 if code else need

    def _advance(self, node: int, cap: float) -> Ask | None:
        """Decide ``node`` if its outcome is determined, else sample what it still needs
        (at most ``cap`` questions)."""
        need = self._judge(node)
        return None if need < 0 else self._ask_now(node, need, cap)

    def _ask_now(self, node: int, need: int, cap: float) -> Ask | None:
        """Sample ``need`` questions of an asking node, at most ``cap``; a node that needs
        nothing more now stops being hungry."""
        want = need if need <= cap else int(cap)
        if want >= need:
            self._hungry.discard(node)   # waits for answers (record/release wake it up)
        return self._sample(node, want) if want > 0 else None

    def _sample(self, node: int, k: int) -> Ask:
        s, e = self._start[node], self._end[node]
        rnd = self._rounds[node]
        self._rounds[node] = rnd + 1
        size = e - s
        st = self._pc.state
        if size <= 64 * k:
            if size <= 64:
                free = [i for i in range(s, e) if not st[i]]
                nfree = len(free)
            else:
                free = np.flatnonzero(self._pview[s:e] == 0) + s
                nfree = free.shape[0]
            if k >= nfree:
                # every free mask: what any draw of all of them gives once sorted
                pos = free if isinstance(free, list) else free.tolist()
            else:
                pick = _rng((self.params.seed, node, rnd)).choice(np.asarray(free, dtype=np.int64),
                                                                  size=k, replace=False)
                pos = np.sort(pick).tolist()
        else:  # huge node, few answers: rejection sampling, O(k)
            rng = _rng((self.params.seed, node, rnd))
            chosen: list[int] = []
            seen: set[int] = set()
            while len(chosen) < k:
                for c in rng.integers(s, e, size=2 * k).tolist():
                    if c not in seen and not st[c]:
                        seen.add(c)
                        chosen.append(c)
                        if len(chosen) == k:
                            break
            pos = sorted(chosen)
        for ps in pos:              # == pc.set(ps, 3) for each: every sampled position was free
            st[ps] = 3
        if pos:
            _bump_sorted(self._pc.levels, pos, self._pc.code[3])
        orderl, pend = self._orderl, self._pend
        ml = [orderl[ps] for ps in pos]
        for mk in ml:
            pend[mk] = 1
        masks = np.array(ml, dtype=np.int64)
        self.questions_asked += len(pos)
        self.dirty.add(node)
        return _tuple_new(Ask, (node, masks, rnd))

    # -------------------------------------------------------------- driving
    def next_questions(self, max_questions: int | None = None, max_nodes: int | None = None,
                       target: int | None = None) -> list[Ask]:
        """Questions to post now.

        First tops up nodes already being asked (in the order they were opened), then pops
        new nodes in priority order.  Stops opening nodes once ``target`` questions are
        gathered (a soft size for packing HITs: a node's sample is never split for it, so
        the outcome does not depend on how questions are batched) or ``max_nodes`` nodes
        are being asked at once.  ``max_questions`` is a hard cap (a question budget): the
        last sample is cut to fit it.  Nodes decided without new questions (early rules,
        oracle, enough answers already) are decided on the way.
        """
        asks: list[Ask] = []
        budget = math.inf if max_questions is None else max_questions
        soft = math.inf if target is None else target
        got = 0
        if self._hungry:
            for node in sorted(self._hungry, key=self._seqa.__getitem__):
                if budget <= 0 or got >= soft:
                    return asks
                ask = self._advance(node, budget)
                if ask is not None:
                    asks.append(ask)
                    budget -= ask.masks.shape[0]
                    got += ask.masks.shape[0]
        # the queue, with the auto-split rule inlined: most pops at scale are auto-splits
        heap, free, st, seqa = self._heap, self._free, self._st, self._seqa
        left, right = self._left, self._right
        order = self._order
        key, static = order.key, order.static
        base, lifo, swap = order.base, order.lifo, order.swap
        sb, top, nb = order.sbits, order.top, order.nbits
        nmask = (1 << nb) - 1
        rule = self._rule_table()
        inline = self.on_visit is None
        quota = bool(self._quota)
        asking = self._asking
        dec_append = self._dec.append
        enqueue = self._enqueue
        free_static = order.free if not static else None
        max_open = math.inf if max_nodes is None else max_nodes
        entry = None          # the next heap entry, when an auto-split already took it off the heap
        while (entry is not None or heap or free) and budget > 0 and got < soft and len(asking) < max_open:
            if inline and not quota:
                # runs of auto-splits: nothing the outer loop tests can change during a run,
                # so it stays here until a node needs more than the early rules
                seq, nq = self._seq, self._n_queued
                if static:
                    if entry is None:
                        entry = heappop(heap)
                    while True:
                        node = entry & nmask
                        r = rule[node]           # 0: visit it, 1: auto-split, 2: drop (a leaf)
                        if st[node] != _QUEUED:
                            entry = heappop(heap) if heap else None
                            if entry is None:
                                break
                            continue
                        if not r:
                            break
                        st[node] = _AUTO_SPLIT
                        dec_append(node)
                        if r == 2:               # a one-mask leaf: dropped
                            nq -= 1
                            entry = heappop(heap) if heap else None
                            if entry is None:
                                break
                            continue
                        # auto-split (== _visit + _decide + _push_children); drain() marks the
                        # node and its children changed
                        a, b = left[node], right[node]
                        if swap is not None and swap(node):
                            a, b = b, a
                        s1 = seq + 1
                        seq = s2 = seq + 2
                        if lifo:
                            ea, eb = ((top - s1) << sb) | (s1 << nb) | a, ((top - s2) << sb) | (s2 << nb) | b
                        elif base is None:
                            ea, eb = (s1 << nb) | a, (s2 << nb) | b
                        else:
                            ea, eb = (base[a] << sb) | (s1 << nb) | a, (base[b] << sb) | (s2 << nb) | b
                        nq += 1
                        st[a] = st[b] = _QUEUED
                        seqa[a] = s1
                        seqa[b] = s2
                        heappush(heap, ea)
                        entry = heappushpop(heap, eb)   # push and pop in one step
                else:
                    # a re-keying order: auto-split nodes are free, first in first out, in the
                    # free queue; their keys never change
                    while free:
                        x = free[0]
                        node = x & nmask
                        if st[node] != _QUEUED:
                            free.popleft()
                            continue
                        r = rule[node]
                        if not r:
                            break
                        free.popleft()
                        st[node] = _AUTO_SPLIT
                        dec_append(node)
                        if r == 2:
                            nq -= 1
                            continue
                        a, b = left[node], right[node]
                        s1 = seq + 1
                        seq = s2 = seq + 2
                        nq += 1
                        st[a] = st[b] = _QUEUED
                        seqa[a] = s1
                        seqa[b] = s2
                        self._seq = seq
                        if free_static[a]:
                            free.append((s1 << nb) | a)
                        else:
                            enqueue(a, s1)
                        if free_static[b]:
                            free.append((s2 << nb) | b)
                        else:
                            enqueue(b, s2)
                self._seq, self._n_queued = seq, nq
                if static and entry is None:
                    break
            if static:
                if entry is None:
                    entry = heappop(heap)
                node = entry & nmask
                entry = None
                if st[node] != _QUEUED:
                    continue
            elif free:
                node = free.popleft() & nmask
                if st[node] != _QUEUED:
                    continue
                if not free_static[node]:
                    # free because the answers inside it sufficed; a question inside it that
                    # came back may have made it paid: back in line if so
                    k = key(node, seqa[node])
                    if k[0]:
                        heappush(heap, k)
                        continue
            else:
                if not heap:
                    break
                e = heappop(heap)
                node = e[-1]
                if st[node] != _QUEUED:
                    continue
                if e[-2] != self._epoch:
                    # a question inside it came back or got answered while it waited: its
                    # key may be worse now (never better: those pushed it again)
                    k = key(node, seqa[node])
                    if k[:-2] != e[:-2]:
                        heappush(heap, k)
                        continue
            if quota and self._quota_met(node):
                # the class has what it needs: leave the node queued (a larger quota resumes it)
                self._n_queued -= 1
                continue
            need = self._visit(node)
            if need >= 0:
                ask = self._ask_now(node, need, budget)
                if ask is not None:
                    asks.append(ask)
                    budget -= ask.masks.shape[0]
                    got += ask.masks.shape[0]
        if entry is not None:
            heappush(heap, entry)
        return asks

    def _enqueue(self, node: int, seq: int) -> None:
        """Queue ``node`` pushed with ``seq`` under its order's key: the heap, or for a
        re-keying order's free nodes the free queue (first in, first out: seqs only grow)."""
        k = self._order.key(node, seq)
        if self._order.static or k[0]:
            heappush(self._heap, k)
        else:
            self._free.append((seq << self._order.nbits) | node)

    def _rule_table(self) -> bytes:
        """What the early rules do with each node: 0 visit it, 1 auto-split, 2 drop a
        one-mask leaf (for this search's K_pr, K_pa and leaf rule)."""
        if self._rules is None:
            p, f = self.params, self.forest
            S = self._S
            leaf = f.left < 0
            auto = (S > p.kpr) & (S <= p.kpa)
            if p.leaf_rule == "ask":
                auto &= ~leaf
            self._rules = np.where(auto, np.where(leaf, 2, 1), 0).astype(np.uint8).tobytes()
        return self._rules

    def _quota_met(self, node: int) -> bool:
        c = int(self.forest.node_class[node])
        return c in self._quota and self._class_accepted.get(c, 0) >= self._quota[c]

    def record(self, masks, labels) -> int:
        """Store answers (1 yes, 0 no) for outstanding questions; decide what is determined.

        Answers for masks without an outstanding question are ignored; returns how many
        answers were taken.
        """
        masks = np.asarray(masks, dtype=np.int64).ravel()
        labels = np.asarray(labels).ravel()
        if masks.shape != labels.shape:
            raise ValueError("masks and labels differ in length")
        posl, pc, at = self._posl, self._pc, self._asking_node_at
        st, code, levels = pc.state, pc.code, pc.levels
        start, end = self._start, self._end
        rekey = not self._order.static
        took_m: list[int] = []
        took_l: list[int] = []
        took_p: list[int] = []
        took_d: list[int] = []
        dyes, dno = code[2] - code[3], code[1] - code[3]
        touched: set[int] = set()
        stray: list[int] = []
        js, je, jn = 0, 0, -1       # the asking node found last (answers come in runs per node)
        for mk, lb in zip(masks.tolist(), labels.tolist()):
            ps = posl[mk]
            if ps < 0 or st[ps] != 3:
                continue
            if not js <= ps < je:
                jn = at(ps)
                if jn >= 0:
                    js, je = start[jn], end[jn]
                    touched.add(jn)
                else:
                    js = je = 0
                    if rekey:
                        stray.append(mk)
            if lb:                  # == pc.set(ps, 2 or 1); the block totals below, at once
                st[ps] = 2
                took_d.append(dyes)
                took_l.append(1)
            else:
                st[ps] = 1
                took_d.append(dno)
                took_l.append(0)
            took_p.append(ps)
            took_m.append(mk)
        if took_p:
            _bump_many(levels, took_p, took_d)
        pend, ans = self._pend, self._ans
        for mk, lab in zip(took_m, took_l):
            pend[mk] = 0
            ans[mk] = lab
        if stray:
            self._epoch += 1
        for mk in stray:
            self._rekey_around(mk)
        if touched:
            self._settle(touched)
        return len(took_m)

    def _rekey_around(self, mask: int) -> None:
        """An answer landed outside every asking node: if a queued node holds ``mask``, push it
        again with its new key (its old entry goes stale).  The queued node is the first
        ancestor of the mask's leaf that the search has touched."""
        parent, st = self.forest.parent, self._st
        j = int(self.forest.leaf_of_mask[mask])
        while j >= 0 and st[j] == _UNSEEN:
            j = int(parent[j])
        if j >= 0 and st[j] == _QUEUED:
            k = self._order.key(j, self._seqa[j])
            if k[0]:                 # a free node's key does not depend on its answers
                heappush(self._heap, k)

    def release(self, masks) -> int:
        """Return outstanding questions unanswered (expired HIT, discarded answers)."""
        posl, st, pset = self._posl, self._pc.state, self._pc.set
        freed: list[int] = []
        for mk in np.asarray(masks, dtype=np.int64).ravel().tolist():
            ps = posl[mk]
            if ps < 0 or st[ps] != 3:
                continue
            pset(ps, 0)
            j = self._asking_node_at(ps)
            if j >= 0:
                self._hungry.add(j)   # its node asks again
            else:
                self._epoch += 1      # it may be inside a queued node: that key got worse
            freed.append(mk)
        pend = self._pend
        for mk in freed:
            pend[mk] = 0
        return len(freed)

    def _settle(self, nodes: set[int]) -> None:
        """Decide the given asking nodes where their outcome is now determined; the others
        may need more questions (sequential sampling) and are woken up for the next ask."""
        for node in (nodes if len(nodes) == 1 else sorted(nodes, key=self._seqa.__getitem__)):
            if node in self._asking and self._judge(node) >= 0:
                self._hungry.add(node)

    @property
    def done(self) -> bool:
        """Nothing queued, nothing being asked."""
        return not self._asking and self._n_queued == 0

    @property
    def outstanding(self) -> int:
        return int(self.pending.sum())

    # -------------------------------------------------------------- results
    def accepted_mask(self) -> np.ndarray:
        """Boolean per mask: under an accepted node (label yes propagated)."""
        return self._under(NodeState.ACCEPTED)

    def rejected_mask(self) -> np.ndarray:
        return self._under(NodeState.REJECTED) | self._under(NodeState.AUTO_REJECTED)

    def _under(self, state: NodeState) -> np.ndarray:
        f = self.forest
        flag = np.zeros(f.order.shape[0] + 1, dtype=np.int64)
        nodes = np.flatnonzero(self.node_state == state)
        np.add.at(flag, f.start[nodes], 1)
        np.add.at(flag, f.end[nodes], -1)
        covered = np.cumsum(flag[:-1]) > 0
        out = np.zeros(f.n_masks, dtype=bool)
        out[f.order[covered]] = True
        return out

    # ------------------------------------------------------------ snapshots
    @property
    def decisions(self) -> list[Decision]:
        """Decisions made since the last :meth:`drain`, in order."""
        return [d if d.__class__ is Decision else _tuple_new(Decision, (d, _ENUM[_AUTO_SPLIT], math.nan, 0))
                for d in self._dec]

    def take_decisions(self) -> list[Decision]:
        """The accept, reject and split decisions (by answers or the oracle) made since the
        last call, for callers that keep no store (simulation): the early rules' decisions
        and the changed nodes are forgotten, not collected as :meth:`drain` does."""
        keep = _ANSWERED
        dec = [d for d in self._dec if d.__class__ is Decision and d[1] in keep]
        self._dec = []
        self.dirty.clear()
        return dec

    def drain(self) -> tuple[list[int], list[Decision]]:
        """Nodes changed and decisions made since the last drain (for persistence)."""
        dirty, left, right = self.dirty, self._left, self._right
        for d in self._dec:
            if d.__class__ is not Decision:      # an inlined auto-split: it and its children changed
                dirty.add(d)
                if left[d] >= 0:
                    dirty.add(left[d])
                    dirty.add(right[d])
        dec = self.decisions
        out = sorted(dirty)
        self.dirty, self._dec = set(), []
        return out, dec

    @classmethod
    def restore(cls, forest: Forest, params: SearchParams, *, node_ids, states, seqs, qs, rounds,
                answered_masks, answered_labels, pending_masks, questions_asked: int,
                clusters_annotated: int, truth: np.ndarray | None = None) -> "Search":
        """Rebuild a search from saved rows (touched nodes, answers, outstanding questions)."""
        s = cls(forest, params, truth=truth)
        s._heap.clear()
        s.node_state[:] = NodeState.UNSEEN
        node_ids = np.asarray(node_ids, dtype=np.int64)
        s.node_state[node_ids] = np.asarray(states, dtype=np.int8)
        s.node_seq[node_ids] = np.asarray(seqs, dtype=np.int64)
        s.node_q[node_ids] = np.asarray(qs, dtype=np.float64)
        s.node_rounds[node_ids] = np.asarray(rounds, dtype=np.int32)
        s._seq = int(s.node_seq.max()) if s.node_seq.shape[0] else 0
        if s._seq > forest.n_nodes:     # one seq per push, each node pushed at most once
            raise LabelpropError(f"saved search state is inconsistent: sequence number {s._seq} "
                                 f"exceeds the forest's {forest.n_nodes} nodes")
        s._n_queued = int(np.count_nonzero(s.node_state == NodeState.QUEUED))
        if s._quota:
            acc = np.flatnonzero(s.node_state == NodeState.ACCEPTED)
            for j in acc.tolist():
                c = int(forest.node_class[j])
                s._class_accepted[c] = s._class_accepted.get(c, 0) + s._end[j] - s._start[j]
        am = np.asarray(answered_masks, dtype=np.int64)
        al = np.asarray(answered_labels, dtype=np.int8)
        pm = np.asarray(pending_masks, dtype=np.int64)
        s.answer[am] = al
        s.pending[pm] = True
        state = np.zeros(forest.order.shape[0], dtype=np.uint8)
        state[s._pos[am]] = np.where(al == 1, 2, 1)
        state[s._pos[pm]] = 3
        s._pc = _Counts(bytearray(state.tobytes()))
        s._pview = np.frombuffer(s._pc.state, dtype=np.uint8)
        s._order = ORDERS[params.strategy](s)    # orders read the counts: rebuild on the new ones
        s._free.clear()
        for j in sorted(node_ids.tolist(), key=s._seqa.__getitem__):
            if s._st[j] == NodeState.QUEUED:
                s._enqueue(j, s._seqa[j])       # free nodes join the free queue in seq order
            elif s._st[j] == NodeState.ASKING:
                s._start_asking(j)
        heapify(s._heap)
        s.questions_asked = int(questions_asked)
        s.clusters_annotated = int(clusters_annotated)
        s.dirty.clear()
        s._dec = []
        return s
