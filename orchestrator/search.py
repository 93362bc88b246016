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
uninterrupted one would have asked.  Strategies only change the queue's order:

* ``heuristic``: highest cluster score S first (the paper's choice);
* ``bfs``: first in, first out;
* ``dfs``: last in, first out, children in random order;
* ``dfs-heuristic``: last in, first out, the child with the higher S first.
"""
from __future__ import annotations

import bisect
import heapq
import math
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

from clustering.tree import Forest
from orchestrator.errors import LabelpropError, check_unit_interval

__all__ = ["NodeState", "SearchParams", "Ask", "Decision", "Search", "decide",
           "TREE_STRATEGIES", "STRATEGIES"]

TREE_STRATEGIES = ("heuristic", "bfs", "dfs", "dfs-heuristic")
STRATEGIES = TREE_STRATEGIES + ("universal-threshold", "naive", "lsun")


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


@dataclass(frozen=True)
class SearchParams:
    """Search parameters; defaults are the paper's (Sec. 5.2) with K_pr = 0."""

    ns: int = 15
    ka: float = 0.85
    kiou: float = 0.75
    kpa: float = 0.7
    kpr: float = 0.0
    chunk: int = 0          # 0: ask all N_s at once; K > 0: sequential, K at a time
    strategy: str = "heuristic"
    oracle: bool = False    # Q is the true cluster quality (paper Sec. 5.1), no questions
    seed: int = 0
    quotas: tuple = ()      # ((class_id, masks wanted), ...): stop searching a class once met

    def __post_init__(self) -> None:
        for name in ("ka", "kiou", "kpa", "kpr"):
            check_unit_interval(f"--{name}", getattr(self, name))
        if self.ns < 1:
            raise LabelpropError(f"--ns must be at least 1, got {self.ns}")
        if self.chunk < 0:
            raise LabelpropError(f"--chunk must be 0 (off) or positive, got {self.chunk}")
        if self.kpr > self.kpa:
            raise LabelpropError(f"--kpr ({self.kpr}) must not exceed --kpa ({self.kpa})")
        for c, q in self.quotas:
            if int(q) < 0:
                raise LabelpropError(f"quota for class {c} must be >= 0, got {q}")
        if self.strategy not in TREE_STRATEGIES:
            raise LabelpropError(
                f"unknown tree-search strategy {self.strategy!r}; choose one of {', '.join(TREE_STRATEGIES)}")


def decide(q: float, ka: float) -> NodeState:
    """The propagation rule: accept at Q >= K_a, reject at Q <= 1 - K_a, else split."""
    return NodeState(_decide_code(q, ka))


def _decide_code(q: float, ka: float) -> int:
    if q >= ka - 1e-12:
        return _ACCEPTED
    if q <= 1.0 - ka + 1e-12:
        return _REJECTED
    return _SPLIT


@dataclass(frozen=True)
class Ask:
    """Questions to post: masks of ``node`` sampled in sampling round ``round``."""

    node: int
    masks: np.ndarray
    round: int


@dataclass(frozen=True)
class Decision:
    node: int
    state: NodeState
    q: float            # estimated quality (nan for auto decisions)
    n_answered: int


class _Fenwick:
    """Counts over leaf positions with O(log n) update and prefix query."""

    __slots__ = ("n", "t")

    def __init__(self, n: int) -> None:
        self.n = n
        self.t = [0] * (n + 1)

    def add(self, i: int, v: int) -> None:
        t, n = self.t, self.n
        i += 1
        while i <= n:
            t[i] += v
            i += i & -i

    def prefix(self, i: int) -> int:  # sum over positions [0, i)
        t, s = self.t, 0
        while i > 0:
            s += t[i]
            i -= i & -i
        return s

    def range(self, a: int, b: int) -> int:
        return self.prefix(b) - self.prefix(a)

    @classmethod
    def from_bool(cls, flags: np.ndarray) -> "_Fenwick":
        f = cls(int(flags.shape[0]))
        t = np.zeros(f.n + 1, dtype=np.int64)
        t[1:] = flags.astype(np.int64)
        # O(n) build: push each node's sum to its parent once.
        idx = np.arange(1, f.n + 1)
        parent = idx + (idx & -idx)
        tl = t.tolist()
        for i, p in zip(idx.tolist(), parent.tolist()):
            if p <= f.n:
                tl[p] += tl[i]
        f.t = tl
        return f


@dataclass
class Search:
    """The label-propagation search over ``forest``; see the module docstring."""

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

    def __post_init__(self) -> None:
        f = self.forest
        m, n = f.n_nodes, f.n_masks
        self.node_state = np.zeros(m, dtype=np.int8)
        self.node_seq = np.zeros(m, dtype=np.int64)
        self.node_q = np.full(m, np.nan)
        self.node_rounds = np.zeros(m, dtype=np.int32)
        self.answer = np.full(n, -1, dtype=np.int8)
        self.pending = np.zeros(n, dtype=np.bool_)
        self._pos = np.empty(n, dtype=np.int64)          # leaf position of each mask
        self._pos.fill(-1)
        self._pos[f.order] = np.arange(f.order.shape[0])
        npos = f.order.shape[0]
        self._answered = _Fenwick(npos)
        self._yes = _Fenwick(npos)
        self._pend = _Fenwick(npos)
        self._taken = np.zeros(npos, dtype=np.bool_)      # answered or pending, by position
        self._S = f.mean_scores
        self._Sl = self._S.tolist()
        self._start = f.start.tolist()
        self._end = f.end.tolist()
        self._left = f.left.tolist()
        self._right = f.right.tolist()
        self._heap: list[tuple] = []
        self._n_queued = 0
        self._seq = 0
        self._asking: set[int] = set()
        # Nodes being asked never nest (children are queued only once their parent is
        # decided), so their leaf ranges are disjoint: a sorted list of their starts finds
        # the node an answered mask belongs to by bisection.
        self._ask_starts: list[int] = []
        self._ask_at: dict[int, int] = {}
        self._hungry: set[int] = set()   # asking nodes that may need more questions now
        self._quota = {int(c): int(q) for c, q in self.params.quotas}
        self._class_accepted: dict[int, int] = {}
        self._node_class = f.node_class.tolist()
        self.dirty: set[int] = set()                      # nodes changed since last drain
        self.decisions: list[Decision] = []               # decisions since last drain
        if self.params.oracle:
            if self.truth is None:
                raise LabelpropError("oracle mode needs ground-truth IoUs")
            self._Q = f.node_means(np.asarray(self.truth, dtype=np.float64))
        for r in f.roots.tolist():
            self._push(int(r))

    # ------------------------------------------------------------------ queue
    def _key(self, node: int, seq: int) -> tuple:
        st = self.params.strategy
        if st == "heuristic":
            return (-self._Sl[node], seq)
        if st == "bfs":
            return (seq,)
        return (-seq,)  # dfs, dfs-heuristic: last in, first out

    def _push(self, node: int, seq: int | None = None) -> None:
        if seq is None:
            self._seq += 1
            seq = self._seq
        if self.node_state[node] != _QUEUED:
            self._n_queued += 1
        self.node_state[node] = _QUEUED
        self.node_seq[node] = seq
        self.dirty.add(node)
        heapq.heappush(self._heap, (*self._key(node, seq), node))

    def _push_children(self, node: int) -> None:
        a, b = self._left[node], self._right[node]
        if a < 0:
            return
        st = self.params.strategy
        if st == "dfs":
            rng = np.random.default_rng((self.params.seed, node, 1 << 20))
            if rng.random() < 0.5:
                a, b = b, a
        elif st == "dfs-heuristic":
            # pushed last = popped first: push the lower-S child first
            if self._Sl[a] > self._Sl[b]:
                a, b = b, a
        self._push(a)
        self._push(b)

    # ------------------------------------------------------------- counting
    def counts(self, node: int) -> tuple[int, int, int]:
        """(answered, yes, pending) among the masks of ``node``."""
        s, e = self._start[node], self._end[node]
        return self._answered.range(s, e), self._yes.range(s, e), self._pend.range(s, e)

    def target(self, node: int) -> int:
        return min(self.params.ns, self._end[node] - self._start[node])

    # ------------------------------------------------------------- decisions
    def _decide(self, node: int, state: int, q: float, n_answered: int) -> None:
        self.node_state[node] = state
        self.node_q[node] = q
        self.dirty.add(node)
        self._stop_asking(node)
        self.decisions.append(Decision(node, NodeState(state), q, n_answered))
        if state == _ACCEPTED and self._quota:
            c = self._node_class[node]
            self._class_accepted[c] = self._class_accepted.get(c, 0) + self._end[node] - self._start[node]
        if state == _SPLIT or state == _AUTO_SPLIT:
            self._push_children(node)

    def _visit(self, node: int) -> None:
        """A node popped from the queue: early rules, oracle, or start asking."""
        p = self.params
        self._n_queued -= 1
        S = self._Sl[node]
        if S <= p.kpr:
            self._decide(node, _AUTO_REJECTED, math.nan, 0)
            return
        if S <= p.kpa:
            self._decide(node, _AUTO_SPLIT, math.nan, 0)
            return
        if p.oracle:
            q = float(self._Q[node])
            self.clusters_annotated += 1
            self._decide(node, _decide_code(q, p.ka), q, self._end[node] - self._start[node])
            return
        self.node_state[node] = _ASKING
        self.dirty.add(node)
        self._start_asking(node)

    def _start_asking(self, node: int) -> None:
        self._asking.add(node)
        self._hungry.add(node)
        s = self._start[node]
        bisect.insort(self._ask_starts, s)
        self._ask_at[s] = node

    def _stop_asking(self, node: int) -> None:
        if node not in self._asking:
            return
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

    def _try_decide(self, node: int) -> bool:
        """Decide ``node`` if its outcome is determined by the answers it has."""
        p = self.params
        T = self.target(node)
        a, y, _ = self.counts(node)
        if a == 0:
            return False
        if a < T and not (p.chunk > 0 and _decide_code(y / T, p.ka) == _decide_code((y + T - a) / T, p.ka)):
            # without sequential sampling a node waits for all N_s answers; with it, it stops
            # as soon as the decision at N_s answers can no longer change
            return False
        q = y / a
        self.clusters_annotated += 1
        self._decide(node, _decide_code(q, p.ka), q, a)
        return True

    def _advance(self, node: int, cap: float = math.inf) -> Ask | None:
        """Decide ``node`` if its outcome is determined, else sample what it still needs
        (at most ``cap`` questions)."""
        if self._try_decide(node):
            return None
        want = int(min(self._need(node), cap))
        return self._sample(node, want) if want > 0 else None

    def _sample(self, node: int, k: int) -> Ask:
        f = self.forest
        s, e = int(f.start[node]), int(f.end[node])
        rnd = int(self.node_rounds[node])
        rng = np.random.default_rng((self.params.seed, node, rnd))
        self.node_rounds[node] = rnd + 1
        size = e - s
        if size <= 64 * k:
            free = np.flatnonzero(~self._taken[s:e]) + s
            pos = rng.choice(free, size=min(k, free.shape[0]), replace=False)
        else:  # huge node, few answers: rejection sampling, O(k)
            chosen: list[int] = []
            seen: set[int] = set()
            while len(chosen) < k:
                for c in rng.integers(s, e, size=2 * k).tolist():
                    if c not in seen and not self._taken[c]:
                        seen.add(c)
                        chosen.append(c)
                        if len(chosen) == k:
                            break
            pos = np.asarray(chosen, dtype=np.int64)
        pos = np.sort(pos)
        for ps in pos.tolist():
            self._pend.add(ps, 1)
        self._taken[pos] = True
        masks = f.order[pos]
        self.pending[masks] = True
        self.questions_asked += int(masks.shape[0])
        self.dirty.add(node)
        return Ask(node, masks, rnd)

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
        for node in sorted(self._hungry, key=lambda j: int(self.node_seq[j])):
            if budget <= 0 or got >= soft:
                return asks
            ask = self._advance(node, budget)
            if node in self._asking and self._need(node) <= 0:
                self._hungry.discard(node)   # waits for answers (record/release wake it up)
            if ask is not None:
                asks.append(ask)
                budget -= ask.masks.shape[0]
                got += ask.masks.shape[0]
        while self._heap and budget > 0 and got < soft and (max_nodes is None or len(self._asking) < max_nodes):
            node = heapq.heappop(self._heap)[-1]
            if self.node_state[node] != _QUEUED:
                continue
            if self._quota_met(node):
                # the class has what it needs: leave the node queued (a larger quota resumes it)
                self._n_queued -= 1
                continue
            self._visit(node)
            if node in self._asking:
                ask = self._advance(node, budget)
                if node in self._asking and self._need(node) <= 0:
                    self._hungry.discard(node)
                if ask is not None:
                    asks.append(ask)
                    budget -= ask.masks.shape[0]
                    got += ask.masks.shape[0]
        return asks

    def _quota_met(self, node: int) -> bool:
        c = self._node_class[node]
        return c in self._quota and self._class_accepted.get(c, 0) >= self._quota[c]

    def _need(self, node: int) -> int:
        """Questions ``node`` should have posted now: the shortfall to N_s, at most ``chunk``
        outstanding at once in sequential mode."""
        a, _, pend = self.counts(node)
        need = self.target(node) - a - pend
        return min(need, self.params.chunk - pend) if self.params.chunk > 0 else need

    def record(self, masks, labels) -> int:
        """Store answers (1 yes, 0 no) for outstanding questions; decide what is determined.

        Answers for masks without an outstanding question are ignored; returns how many
        answers were taken.
        """
        masks = np.asarray(masks, dtype=np.int64).ravel()
        labels = np.asarray(labels).ravel()
        if masks.shape != labels.shape:
            raise ValueError("masks and labels differ in length")
        taken = 0
        touched: set[int] = set()
        for mk, lb in zip(masks.tolist(), labels.tolist()):
            if not self.pending[mk]:
                continue
            ps = int(self._pos[mk])
            j = self._asking_node_at(ps)
            if j >= 0:
                touched.add(j)
            self.pending[mk] = False
            self._pend.add(ps, -1)
            self.answer[mk] = 1 if lb else 0
            self._answered.add(ps, 1)
            if lb:
                self._yes.add(ps, 1)
            taken += 1
        if touched:
            self._settle(touched)
        return taken

    def release(self, masks) -> int:
        """Return outstanding questions unanswered (expired HIT, discarded answers)."""
        freed = 0
        for mk in np.asarray(masks, dtype=np.int64).ravel().tolist():
            if not self.pending[mk]:
                continue
            ps = int(self._pos[mk])
            self.pending[mk] = False
            self._pend.add(ps, -1)
            self._taken[ps] = False
            j = self._asking_node_at(ps)
            if j >= 0:
                self._hungry.add(j)   # its node asks again
            freed += 1
        return freed

    def _settle(self, nodes: set[int]) -> None:
        """Decide the given asking nodes where their outcome is now determined; the others
        may need more questions (sequential sampling) and are woken up for the next ask."""
        for node in sorted(nodes, key=lambda j: int(self.node_seq[j])):
            if node in self._asking and not self._try_decide(node):
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
    def drain(self) -> tuple[list[int], list[Decision]]:
        """Nodes changed and decisions made since the last drain (for persistence)."""
        dirty, dec = sorted(self.dirty), self.decisions
        self.dirty, self.decisions = set(), []
        return dirty, dec

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
        s._n_queued = int(np.count_nonzero(s.node_state == NodeState.QUEUED))
        if s._quota:
            acc = np.flatnonzero(s.node_state == NodeState.ACCEPTED)
            for j in acc.tolist():
                c = s._node_class[j]
                s._class_accepted[c] = s._class_accepted.get(c, 0) + s._end[j] - s._start[j]
        for j in node_ids.tolist():
            if s.node_state[j] == NodeState.QUEUED:
                heapq.heappush(s._heap, (*s._key(j, int(s.node_seq[j])), j))
            elif s.node_state[j] == NodeState.ASKING:
                s._start_asking(j)
        am = np.asarray(answered_masks, dtype=np.int64)
        al = np.asarray(answered_labels, dtype=np.int8)
        pm = np.asarray(pending_masks, dtype=np.int64)
        s.answer[am] = al
        s.pending[pm] = True
        npos = forest.order.shape[0]
        ans_pos = np.zeros(npos, dtype=bool)
        yes_pos = np.zeros(npos, dtype=bool)
        pend_pos = np.zeros(npos, dtype=bool)
        ans_pos[s._pos[am]] = True
        yes_pos[s._pos[am[al == 1]]] = True
        pend_pos[s._pos[pm]] = True
        s._answered = _Fenwick.from_bool(ans_pos)
        s._yes = _Fenwick.from_bool(yes_pos)
        s._pend = _Fenwick.from_bool(pend_pos)
        s._taken = ans_pos | pend_pos
        s.questions_asked = int(questions_asked)
        s.clusters_annotated = int(clusters_annotated)
        s.dirty.clear()
        s.decisions.clear()
        return s
