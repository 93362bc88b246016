"""Two-level complete linkage for classes too large for one distance matrix.

1. **Parts.** The class is cut into parts of at most ``part_size`` masks by recursive
   k-means (k-means++ seeding and Lloyd iterations on a sample, every mask assigned to its
   nearest centre; a part still too large is cut again).  Deterministic for a seed: every
   random draw comes from ``default_rng([seed, *path])`` where ``path`` names the part.
2. **Exact trees inside.** Each part gets exact complete linkage
   (:func:`clustering.linkage.exact_linkage`); its root height is its diameter.
3. **Complete linkage over the parts.** The distance between parts A and B is
   ``max(diam A, diam B, D(A, B))`` where ``D(A, B)`` is the largest distance between a
   representative of A and one of B.  The representatives are the first ``n_reps`` points
   of a farthest-first traversal that starts at the point farthest from the part's mean:
   extreme points first, so ``D`` is the exact maximum whenever both farthest points are
   representatives and otherwise short of it by at most the two covering radii.  A
   centroid distance is never used: it merges parts whose union is far wider than either
   (the diameter is what complete linkage bounds).  ``max(diam A, diam B, D)`` is the
   diameter of A u B when ``D`` is exact, and complete linkage over it is fastcluster's on
   the ``p x p`` matrix.
4. **Stitching** into one linkage matrix over the class: part trees at the bottom, the tree
   over parts on top.  Heights are monotone: the top-level merge of clusters X and Y is at
   ``max`` over part pairs (A in X, B in Y) of the part distance, which is at least
   ``diam A`` for every part A in X u Y, i.e. at least the root height of every part tree
   below it; complete linkage over any dissimilarity is itself monotone.  The rows are then
   sorted by height (stably, so a child precedes a parent of equal height) and renumbered
   the scipy way, so the result passes ``scipy.cluster.hierarchy.is_valid_linkage`` and
   ``is_monotonic`` and nothing downstream can tell it from an exact tree.

When the class fits in one part the result *is* the exact tree.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from clustering.linkage import exact_linkage, linkage_from_condensed

__all__ = ["DEFAULT_PART_SIZE", "DEFAULT_REPS", "PartTree", "partition", "farthest_first",
           "part_trees", "part_distances", "top_linkage", "stitch", "assemble",
           "two_level_linkage"]

#: Largest part (masks) clustered exactly inside the two-level path.
DEFAULT_PART_SIZE = 2000
#: Representatives per part for the distance between parts.
DEFAULT_REPS = 32

_BRANCH = 64            # at most this many k-means clusters per split
_FILL = 0.5             # aim k-means parts at this fraction of part_size
_SAMPLE_PER_CENTRE = 100
_MIN_SAMPLE = 4096
_ITERS = 15
_ASSIGN_BYTES = 32 << 20


# ------------------------------------------------------------------------------ partition
def _nearest(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest centre of every row (blocked; ties to the lower index)."""
    csq = np.einsum("ij,ij->i", centres, centres)
    out = np.empty(x.shape[0], dtype=np.int64)
    rows = max(1, int(_ASSIGN_BYTES // (8 * max(centres.shape[0], 1))))
    for i in range(0, x.shape[0], rows):
        g = x[i:i + rows] @ centres.T
        g *= -2.0
        g += csq
        out[i:i + rows] = np.argmin(g, axis=1)
    return out


def _kmeans(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Labels of ``k``-means (k-means++ seeding, Lloyd on a sample, all rows assigned)."""
    m = x.shape[0]
    ns = min(m, max(_MIN_SAMPLE, _SAMPLE_PER_CENTRE * k))
    s = x if ns == m else x[np.sort(rng.choice(m, ns, replace=False))]
    # k-means++ seeding
    centres = np.empty((k, x.shape[1]), dtype=np.float64)
    centres[0] = s[rng.integers(ns)]
    d2 = np.einsum("ij,ij->i", s - centres[0], s - centres[0])
    for j in range(1, k):
        tot = d2.sum()
        if tot <= 0:                    # fewer distinct points than centres
            centres = centres[:j]
            break
        c = int(np.searchsorted(np.cumsum(d2), rng.random() * tot, side="right"))
        centres[j] = s[min(c, ns - 1)]
        diff = s - centres[j]
        np.minimum(d2, np.einsum("ij,ij->i", diff, diff), out=d2)
    k = centres.shape[0]
    labels = _nearest(s, centres)
    for _ in range(_ITERS):
        onehot = (labels[None, :] == np.arange(k)[:, None]).astype(np.float64)
        counts = onehot.sum(axis=1)
        sums = onehot @ s
        keep = counts > 0
        centres[keep] = sums[keep] / counts[keep, None]
        new = _nearest(s, centres)
        if np.array_equal(new, labels):
            break
        labels = new
    return _nearest(x, centres) if ns < m else labels


def _halve(x: np.ndarray) -> np.ndarray:
    """Labels 0/1 splitting rows at the median of the widest coordinate (k-means fallback)."""
    col = int(np.argmax(x.max(axis=0) - x.min(axis=0)))
    order = np.argsort(x[:, col], kind="stable")
    lab = np.zeros(x.shape[0], dtype=np.int64)
    lab[order[x.shape[0] // 2:]] = 1
    return lab


def partition(x: np.ndarray, part_size: int, seed: int = 0) -> list[np.ndarray]:
    """Row indices of parts of at most ``part_size`` rows covering ``x`` (recursive k-means).

    Parts are sorted index arrays, in a deterministic order; the same ``(x, part_size, seed)``
    always gives the same parts.
    """
    if part_size < 2:
        raise ValueError(f"part_size must be at least 2, got {part_size}")
    n = x.shape[0]
    out: list[np.ndarray] = []
    stack: list[tuple[np.ndarray, tuple[int, ...]]] = [(np.arange(n, dtype=np.int64), ())]
    while stack:
        idx, path = stack.pop()
        m = idx.shape[0]
        if m <= part_size:
            out.append(idx)
            continue
        k = int(min(_BRANCH, max(2, np.ceil(m / (part_size * _FILL)))))
        sub = x if m == n else x[idx]         # the root needs no copy
        labels = _kmeans(sub, k, np.random.default_rng([seed, len(path), *path]))
        if np.bincount(labels).max() == m:          # k-means could not split (duplicates)
            labels = _halve(sub)
        del sub
        groups = [idx[labels == j] for j in range(int(labels.max()) + 1)]
        groups = [g for g in groups if g.shape[0]]
        for j in range(len(groups) - 1, -1, -1):      # depth first, in label order
            stack.append((groups[j], path + (j,)))
    return out


# ------------------------------------------------------------------------------ part trees
def farthest_first(x: np.ndarray, r: int) -> tuple[np.ndarray, float]:
    """Indices of ``r`` farthest-first representatives of the rows of ``x``, and the covering
    radius (largest distance from a row to its nearest representative).

    Starts at the row farthest from the mean (an extreme point), then repeatedly adds the
    row farthest from all chosen ones; ties go to the lower index.
    """
    m = x.shape[0]
    r = min(r, m)
    xc = x - x.mean(axis=0)
    first = int(np.argmax(np.einsum("ij,ij->i", xc, xc)))
    reps = [first]
    diff = x - x[first]
    d2 = np.einsum("ij,ij->i", diff, diff)
    for _ in range(1, r):
        nxt = int(np.argmax(d2))
        if d2[nxt] <= 0:
            break
        reps.append(nxt)
        diff = x - x[nxt]
        np.minimum(d2, np.einsum("ij,ij->i", diff, diff), out=d2)
    return np.asarray(reps, dtype=np.int64), float(np.sqrt(max(d2.max(), 0.0)))


@dataclass(frozen=True)
class PartTree:
    """One part's exact tree (local indices), its diameter and its representatives."""

    linkage: np.ndarray      # (k-1, 4) over the part's rows in the order given
    diameter: float          # root height (0 for one mask)
    reps: np.ndarray         # local indices of the representatives
    rep_x: np.ndarray        # their vectors, (len(reps), d)
    radius: float            # covering radius of the representatives


def part_trees(x: np.ndarray, parts: Sequence[np.ndarray], n_reps: int = DEFAULT_REPS) -> list[PartTree]:
    """Exact tree, diameter and representatives of each part (``parts`` index rows of ``x``)."""
    out = []
    for idx in parts:
        xp = np.ascontiguousarray(x[idx], dtype=np.float64)
        reps, radius = farthest_first(xp, n_reps)
        rep_x = xp[reps]
        z = exact_linkage(xp)
        out.append(PartTree(z, float(z[-1, 2]) if z.shape[0] else 0.0, reps, rep_x, radius))
    return out


# ------------------------------------------------------------------------------ top level
def part_distances(reps: Sequence[np.ndarray], diameters: np.ndarray,
                   block_bytes: int = 64 << 20) -> np.ndarray:
    """Condensed ``p x p`` matrix of ``max(diam A, diam B, max over representative pairs)``.

    ``reps[i]`` holds the representative vectors of part i (``(r_i, d)``, r_i >= 1).
    """
    p = len(reps)
    r = max(int(a.shape[0]) for a in reps)
    d = int(reps[0].shape[1])
    # pad every part to r representatives by repeating its first (the max is unchanged)
    y = np.empty((p, r, d), dtype=np.float64)
    for i, a in enumerate(reps):
        y[i, :a.shape[0]] = a
        y[i, a.shape[0]:] = a[0]
    y -= y.reshape(-1, d).mean(axis=0)
    sq = np.einsum("ijk,ijk->ij", y, y)
    # |a - b|^2 = [a, |a|^2, 1] . [-2b, 1, |b|^2]: one product per block, then a max
    left = np.concatenate([y, sq[..., None], np.ones((p, r, 1))], axis=2).astype(np.float32)
    right = np.concatenate([-2.0 * y, np.ones((p, r, 1)), sq[..., None]], axis=2).astype(np.float32)
    left = left.reshape(p * r, d + 2)
    right = right.reshape(p * r, d + 2)
    diam = np.asarray(diameters, dtype=np.float64)
    out = np.empty(p * (p - 1) // 2, dtype=np.float64)
    pos = 0
    rows = max(1, int(block_bytes // (4 * r * r * p)))
    for a0 in range(0, p - 1, rows):
        a1 = min(a0 + rows, p - 1)
        g = left[a0 * r:a1 * r] @ right[a0 * r:].T                 # ((a1-a0) r, (p-a0) r)
        m = g.reshape((a1 - a0) * r, p - a0, r).max(axis=2)
        m = m.reshape(a1 - a0, r, p - a0).max(axis=1)               # (a1-a0, p-a0)
        dist = np.sqrt(np.maximum(m.astype(np.float64), 0.0))
        for i in range(a1 - a0):
            a = a0 + i
            row = dist[i, i + 1:]
            np.maximum(row, diam[a], out=row)
            np.maximum(row, diam[a + 1:], out=row)
            out[pos:pos + row.shape[0]] = row
            pos += row.shape[0]
    return out


def top_linkage(reps: Sequence[np.ndarray], diameters: np.ndarray) -> np.ndarray:
    """Complete linkage over parts (see :func:`part_distances`)."""
    p = len(reps)
    if p < 2:
        return np.zeros((0, 4), dtype=np.float64)
    return linkage_from_condensed(part_distances(reps, diameters), p)


# ------------------------------------------------------------------------------ stitching
def stitch(n: int, parts: Sequence[np.ndarray], trees: Sequence[np.ndarray],
           top: np.ndarray) -> np.ndarray:
    """One ``(n-1, 4)`` linkage matrix from part trees (local indices) and the tree over parts.

    Rows are sorted by height (stable) and numbered as scipy does (merge i creates node
    n + i, the smaller child first); sizes are recomputed.
    """
    p = len(parts)
    if sum(int(a.shape[0]) for a in parts) != n:
        raise ValueError("parts do not cover the observations")
    if top.shape[0] != p - 1:
        raise ValueError(f"the tree over parts has {top.shape[0]} merges for {p} parts")
    a_col = np.empty(n - 1, dtype=np.int64)
    b_col = np.empty(n - 1, dtype=np.int64)
    h = np.empty(n - 1, dtype=np.float64)
    # temporary numbering: internal node t (creation order) is n + t
    root = np.empty(p, dtype=np.int64)
    t = 0
    for i, (idx, z) in enumerate(zip(parts, trees)):
        k = idx.shape[0]
        if k == 1:
            root[i] = idx[0]
            continue
        za = z[:, 0].astype(np.int64)
        zb = z[:, 1].astype(np.int64)
        a_col[t:t + k - 1] = np.where(za < k, idx[np.minimum(za, k - 1)], n + t + za - k)
        b_col[t:t + k - 1] = np.where(zb < k, idx[np.minimum(zb, k - 1)], n + t + zb - k)
        h[t:t + k - 1] = z[:, 2]
        t += k - 1
        root[i] = n + t - 1
    if p > 1:
        ta = top[:, 0].astype(np.int64)
        tb = top[:, 1].astype(np.int64)
        a_col[t:] = np.where(ta < p, root[np.minimum(ta, p - 1)], n + t + ta - p)
        b_col[t:] = np.where(tb < p, root[np.minimum(tb, p - 1)], n + t + tb - p)
        h[t:] = top[:, 2]
    order = np.argsort(h, kind="stable")
    rank = np.empty(n - 1, dtype=np.int64)
    rank[order] = np.arange(n - 1, dtype=np.int64)
    a_new = np.where(a_col >= n, n + rank[np.maximum(a_col - n, 0)], a_col)[order]
    b_new = np.where(b_col >= n, n + rank[np.maximum(b_col - n, 0)], b_col)[order]
    lo = np.minimum(a_new, b_new)
    hi = np.maximum(a_new, b_new)
    size = np.ones(2 * n - 1, dtype=np.int64)
    for i in range(n - 1):              # children precede parents: one pass
        size[n + i] = size[lo[i]] + size[hi[i]]
    return np.column_stack([lo.astype(np.float64), hi.astype(np.float64), h[order],
                            size[n:].astype(np.float64)])


# ------------------------------------------------------------------------------ all of it
def assemble(n: int, parts: Sequence[np.ndarray], trees: Sequence[PartTree]) -> np.ndarray:
    """The tree over the parts stitched with the part trees: one linkage over ``n`` rows."""
    top = top_linkage([t.rep_x for t in trees], np.array([t.diameter for t in trees]))
    return stitch(n, parts, [t.linkage for t in trees], top)


def two_level_linkage(x: np.ndarray, part_size: int = DEFAULT_PART_SIZE, seed: int = 0,
                      n_reps: int = DEFAULT_REPS) -> np.ndarray:
    """Two-level complete linkage over the rows of ``x`` (see the module docstring); the exact
    tree when ``x`` fits in one part."""
    if x.shape[0] < 2:
        return np.zeros((0, 4), dtype=np.float64)
    parts = partition(x, part_size, seed)
    if len(parts) == 1:
        return exact_linkage(x)
    return assemble(x.shape[0], parts, part_trees(x, parts, n_reps))
