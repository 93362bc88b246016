"""How close two trees over the same points are: cophenetic correlations and flat-cut ARIs.

The cophenetic distance of two leaves is the height of their lowest common ancestor.  All
``n(n-1)/2`` of them are never stored: leaves in dendrogram order have, between
neighbours ``m`` and ``m + 1``, the height ``g[m]`` of the node that separates them, and the
cophenetic distance of the leaves at positions ``a < b`` is ``max(g[a:b])`` (a range maximum,
answered in O(1) from a sparse table).  Correlations are accumulated over blocks of rows,
so memory stays O(n log n + block) while time is O(n^2).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from clustering.linkage import BLOCK_BYTES

__all__ = ["CopheneticIndex", "pair_correlations", "ari_at_cuts"]


class CopheneticIndex:
    """Cophenetic distances of one tree (linkage matrix over n leaves) on demand."""

    def __init__(self, Z: np.ndarray):
        from clustering.tree import Forest

        Z = np.asarray(Z, dtype=np.float64)
        n = Z.shape[0] + 1
        self.n = n
        f = Forest.from_linkage(Z, np.zeros(n))
        self.pos = np.empty(n, dtype=np.int64)
        self.pos[f.order] = np.arange(n, dtype=np.int64)
        w = max(n - 1, 1)
        gaps = np.zeros(w, dtype=np.float64)
        if n > 1:
            internal = np.arange(n, 2 * n - 1)
            boundary = f.start[internal] + f.sizes[f.left[internal]] - 1
            gaps[boundary] = f.height[internal]
        levels = [gaps]
        span = 1
        while 2 * span <= w:
            prev = levels[-1]
            nxt = np.zeros(w)
            nxt[:w - span] = np.maximum(prev[:w - span], prev[span:])
            levels.append(nxt)
            span *= 2
        self.width = w
        self.table = np.concatenate(levels)            # level k starts at k * w
        self.log2 = np.zeros(w + 1, dtype=np.int64)   # floor(log2(L)) for L = 1..w
        if w > 1:
            self.log2[2:] = np.floor(np.log2(np.arange(2, w + 1))).astype(np.int64)

    def between(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Cophenetic distances of leaf pairs ``(i[k], j[k])`` (i != j)."""
        a = self.pos[i]
        b = self.pos[j]
        lo = np.minimum(a, b)
        hi = np.maximum(a, b)
        k = self.log2[hi - lo]
        base = k * self.width
        return np.maximum(self.table[base + lo], self.table[base + hi - (1 << k)])


def _pairs(n: int, max_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Every pair i < j when there are at most ``max_pairs``, else that many random pairs."""
    if n * (n - 1) // 2 <= max_pairs:
        return np.triu_indices(n, 1)
    rng = np.random.default_rng([seed, n])
    i = rng.integers(n, size=max_pairs)
    j = rng.integers(n - 1, size=max_pairs)
    j += j >= i
    return i, j


def pair_correlations(x: np.ndarray | None, linkages: Sequence[np.ndarray],
                      max_pairs: int = 2_000_000, seed: int = 0) -> np.ndarray:
    """Pearson correlations between the cophenetic distances of each tree and, when ``x`` is
    given, the Euclidean distances between the rows of ``x`` (last row/column), over every
    pair of leaves, or over ``max_pairs`` uniformly random pairs when there are more (the
    standard error of a correlation is then below 0.001).  Returns a ``(k, k)`` matrix.
    """
    idx = [CopheneticIndex(z) for z in linkages]
    n = idx[0].n
    i, j = _pairs(n, max_pairs, seed)
    k = len(idx) + (x is not None)
    v = np.empty((k, i.shape[0]), dtype=np.float64)
    for t, c in enumerate(idx):
        v[t] = c.between(i, j)
    if x is not None:
        x = np.asarray(x, dtype=np.float64)
        step = max(1, BLOCK_BYTES // (8 * x.shape[1]))
        for s in range(0, i.shape[0], step):
            diff = x[i[s:s + step]] - x[j[s:s + step]]
            v[-1, s:s + step] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return np.corrcoef(v)


def ari_at_cuts(a: np.ndarray, b: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    """Adjusted Rand index between the flat clusterings of two trees cut into k clusters
    (``fcluster(..., criterion="maxclust")``), for every k in ``ks`` below the leaf count."""
    from scipy.cluster.hierarchy import fcluster
    from sklearn.metrics import adjusted_rand_score

    n = np.asarray(a).shape[0] + 1
    out = {}
    for k in ks:
        if 2 <= k < n:
            out[int(k)] = float(adjusted_rand_score(fcluster(a, k, "maxclust"),
                                                    fcluster(b, k, "maxclust")))
    return out
