"""Binary cluster trees as flat arrays, built from linkage matrices in O(n).

A :class:`Forest` holds one binary tree per class in a single set of arrays, so
that one priority queue can span every class.  Node ``j``'s masks are the
contiguous slice ``order[start[j]:end[j]]``: leaves are reordered (left subtree
before right subtree, as in ``scipy.cluster.hierarchy.leaves_list``) so that
size, mean score and "answered masks inside a node" never need recursion.

Numbering inside one tree follows scipy: with ``n`` leaves, node ``k < n`` is
the leaf of local mask ``k`` and node ``n + i`` is the cluster formed by merge
``i`` of the linkage matrix.  In a forest each tree's nodes are offset by the
number of nodes of the trees before it.  No Python recursion anywhere: trees
can be a million levels deep.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Forest"]


@dataclass(frozen=True, eq=False)
class Forest:
    """One or more binary trees over masks ``0..n_masks-1``, as flat arrays.

    Attributes (``m`` nodes, ``n`` masks; all int64 unless noted):
        left, right: children of each node, ``-1`` for leaves.
        parent: parent of each node, ``-1`` for roots.
        start, end: the node's masks are ``order[start:end]``.
        height: linkage distance of the merge (float64, 0 for leaves).
        depth: distance from the root (int32).
        node_class: class id of each node.
        order: mask ids in leaf order.
        leaf_of_mask: node id of the leaf holding each mask (``-1`` if the mask is in no tree).
        roots: root node of each tree; ``root_class`` its class id.
        scores: per-mask score ``s`` (float64, indexed by mask id).
        cumscore: prefix sums of ``scores[order]`` (length ``len(order) + 1``).
    """

    left: np.ndarray
    right: np.ndarray
    parent: np.ndarray
    start: np.ndarray
    end: np.ndarray
    height: np.ndarray
    depth: np.ndarray
    node_class: np.ndarray
    order: np.ndarray
    leaf_of_mask: np.ndarray
    roots: np.ndarray
    root_class: np.ndarray
    scores: np.ndarray
    cumscore: np.ndarray

    # ------------------------------------------------------------------ queries
    @property
    def n_nodes(self) -> int:
        return int(self.left.shape[0])

    @property
    def n_masks(self) -> int:
        return int(self.scores.shape[0])

    @property
    def sizes(self) -> np.ndarray:
        """Number of masks under every node."""
        return self.end - self.start

    @property
    def mean_scores(self) -> np.ndarray:
        """Cluster score S (mean mask score) of every node."""
        return (self.cumscore[self.end] - self.cumscore[self.start]) / self.sizes

    def size(self, node: int) -> int:
        return int(self.end[node] - self.start[node])

    def mean_score(self, node: int) -> float:
        s, e = int(self.start[node]), int(self.end[node])
        return float((self.cumscore[e] - self.cumscore[s]) / (e - s))

    def masks(self, node: int) -> np.ndarray:
        """Mask ids under ``node`` (a view into ``order``)."""
        return self.order[self.start[node] : self.end[node]]

    def is_leaf(self, node: int) -> bool:
        return bool(self.left[node] < 0)

    def node_means(self, values: np.ndarray) -> np.ndarray:
        """Mean of a per-mask array over every node, in O(n + m)."""
        cum = np.concatenate([[0.0], np.cumsum(np.asarray(values, dtype=np.float64)[self.order])])
        return (cum[self.end] - cum[self.start]) / self.sizes

    # ------------------------------------------------------------- construction
    @classmethod
    def from_linkage(cls, Z: np.ndarray, scores: np.ndarray, mask_ids: np.ndarray | None = None,
                     class_id: int = 0, n_masks: int | None = None) -> "Forest":
        """Build a one-tree forest from a scipy/fastcluster linkage matrix.

        Args:
            Z: ``(k-1, 4)`` linkage matrix over ``k`` observations (``k == 1`` allowed with an
               empty ``Z``).
            scores: per-mask scores indexed by *global* mask id (length ``n_masks``), or by local
               observation when ``mask_ids`` is None.
            mask_ids: global mask id of each local observation (default ``arange(k)``).
            class_id: class of this tree.
            n_masks: total number of masks of the forest (default ``len(scores)``).
        """
        Z = np.asarray(Z, dtype=np.float64).reshape(-1, 4)
        k = Z.shape[0] + 1
        ids = np.arange(k, dtype=np.int64) if mask_ids is None else np.asarray(mask_ids, dtype=np.int64)
        if ids.shape[0] != k:
            raise ValueError(f"linkage has {k} observations but {ids.shape[0]} mask ids were given")
        m = 2 * k - 1
        left = np.full(m, -1, dtype=np.int64)
        right = np.full(m, -1, dtype=np.int64)
        if k > 1:
            left[k:] = Z[:, 0].astype(np.int64)
            right[k:] = Z[:, 1].astype(np.int64)
        parent = np.full(m, -1, dtype=np.int64)
        internal = np.arange(k, m, dtype=np.int64)
        parent[left[k:]] = internal
        parent[right[k:]] = internal
        size = np.ones(m, dtype=np.int64)
        if k > 1:
            size[k:] = Z[:, 3].astype(np.int64)
        height = np.zeros(m, dtype=np.float64)
        if k > 1:
            height[k:] = Z[:, 2]
        # Top-down pass in reverse merge order: a parent is always merged after its children,
        # so walking merges from last to first visits every parent before its children.
        start = np.zeros(m, dtype=np.int64)
        depth = np.zeros(m, dtype=np.int32)
        st, dp = start.tolist(), depth.tolist()
        lf, rt, sz = left.tolist(), right.tolist(), size.tolist()
        for node in range(m - 1, k - 1, -1):
            a, b, s0, d1 = lf[node], rt[node], st[node], dp[node] + 1
            st[a] = s0
            st[b] = s0 + sz[a]
            dp[a] = d1
            dp[b] = d1
        start = np.asarray(st, dtype=np.int64)
        depth = np.asarray(dp, dtype=np.int32)
        end = start + size
        if not np.all(size[k:] == size[left[k:]] + size[right[k:]]):
            raise ValueError("linkage matrix is inconsistent: cluster sizes do not add up")
        order_local = np.empty(k, dtype=np.int64)
        order_local[start[:k]] = np.arange(k)
        order = ids[order_local]
        all_scores = np.asarray(scores, dtype=np.float64)
        total = int(n_masks if n_masks is not None else all_scores.shape[0])
        leaf_of_mask = np.full(total, -1, dtype=np.int64)
        leaf_of_mask[ids] = np.arange(k, dtype=np.int64)
        cumscore = np.concatenate([[0.0], np.cumsum(all_scores[order])])
        return cls(left=left, right=right, parent=parent, start=start, end=end, height=height,
                   depth=depth, node_class=np.full(m, class_id, dtype=np.int64), order=order,
                   leaf_of_mask=leaf_of_mask, roots=np.array([m - 1], dtype=np.int64),
                   root_class=np.array([class_id], dtype=np.int64), scores=all_scores,
                   cumscore=cumscore)

    @classmethod
    def concat(cls, trees: list["Forest"]) -> "Forest":
        """Join forests over disjoint masks of the same mask universe into one forest."""
        if not trees:
            raise ValueError("no trees to join")
        n_masks = trees[0].n_masks
        node_off, pos_off = 0, 0
        parts: dict[str, list[np.ndarray]] = {k: [] for k in (
            "left", "right", "parent", "start", "end", "height", "depth", "node_class", "order",
            "roots", "root_class")}
        leaf_of_mask = np.full(n_masks, -1, dtype=np.int64)
        for t in trees:
            if t.n_masks != n_masks:
                raise ValueError("trees index different mask universes")
            shift = lambda a: np.where(a >= 0, a + node_off, -1)  # noqa: E731
            parts["left"].append(shift(t.left))
            parts["right"].append(shift(t.right))
            parts["parent"].append(shift(t.parent))
            parts["start"].append(t.start + pos_off)
            parts["end"].append(t.end + pos_off)
            parts["height"].append(t.height)
            parts["depth"].append(t.depth)
            parts["node_class"].append(t.node_class)
            parts["order"].append(t.order)
            parts["roots"].append(t.roots + node_off)
            parts["root_class"].append(t.root_class)
            has = t.leaf_of_mask >= 0
            if np.any(leaf_of_mask[has] >= 0):
                raise ValueError("a mask appears in two trees")
            leaf_of_mask[has] = t.leaf_of_mask[has] + node_off
            node_off += t.n_nodes
            pos_off += t.order.shape[0]
        joined = {k: np.concatenate(v) for k, v in parts.items()}
        scores = trees[0].scores
        cumscore = np.concatenate([[0.0], np.cumsum(scores[joined["order"]])])
        return cls(leaf_of_mask=leaf_of_mask, scores=scores, cumscore=cumscore, **joined)

    # ---------------------------------------------------------------- persistence
    _ARRAYS = ("left", "right", "parent", "start", "end", "height", "depth", "node_class", "order",
               "leaf_of_mask", "roots", "root_class", "scores")

    def to_npz_dict(self) -> dict[str, np.ndarray]:
        """Arrays to save with ``np.savez`` (``cumscore`` is derived on load)."""
        return {k: getattr(self, k) for k in self._ARRAYS}

    @classmethod
    def from_npz_dict(cls, d) -> "Forest":
        missing = [k for k in cls._ARRAYS if k not in d]
        if missing:
            raise ValueError(f"forest file lacks arrays: {', '.join(missing)}")
        arrays = {k: np.asarray(d[k]) for k in cls._ARRAYS}
        cumscore = np.concatenate([[0.0], np.cumsum(arrays["scores"][arrays["order"]])])
        return cls(cumscore=cumscore, **arrays)
