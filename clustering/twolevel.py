"""Two-level complete linkage for classes too large for one distance matrix.

1. **Parts.** The class is cut into parts of at most ``part_size`` masks by recursive
   k-means (k-means++ seeding and Lloyd iterations on a sample, every mask assigned to its
   nearest centre; a part still too large is cut again).  Deterministic for a seed: every
   random draw comes from ``default_rng([seed, depth, *path])`` where ``path`` names the part.
2. **Exact trees inside.** Each part gets exact complete linkage
   (:func:`clustering.linkage.exact_linkage`).
3. **Atoms.** The part trees are cut at one height tau into their maximal subtrees of
   height <= tau, tau chosen so that there are about one atom per ``atom_size`` masks (at
   most :data:`MAX_ATOMS`).  Atoms are small complete-linkage clusters; the parts only
   bound the cost of finding them, so a part is *not* forced to be one subtree of the
   result (a k-means boundary cuts through clusters, and forcing parts to be subtrees
   distorted the tree above them: measured).
4. **Complete linkage over the atoms.** The distance between atoms A and B is
   ``max(diam A, diam B, D(A, B))`` where ``D`` is the largest distance between a
   representative of A and one of B.  Each atom gets up to R representatives: the first R
   points of a farthest-first traversal from the point farthest from the atom's mean
   (extreme points first, so ``D`` falls short of the true maximum by at most the two
   covering radii), or all its masks when it has at most R.  R is ``REP_POINTS // atoms``,
   at least ``n_reps`` (:func:`rep_cap`): a class of at most :data:`REP_POINTS` masks gets
   *exact* distances between atoms (every mask represents itself), a class of 200k masks
   (1,563 atoms) 20 representatives per atom and one of 1M (4,096 atoms) 8, for the same
   cost of the tree over atoms.  ``max(diam A, diam B, D)`` is the diameter of A u B when ``D``
   is exact, and complete linkage over it is fastcluster's on the ``A x A`` matrix.  A
   centroid distance is never used: it merges atoms whose union is far wider than either,
   and the diameter is what complete linkage bounds.  Measured against the exact tree
   (``bench/cluster_scale.py --case fidelity``): exact distances between atoms of about 128
   masks give cophenetic correlation 1.000 on a hierarchical Gaussian mixture at 20k
   (8 representatives: 0.983); the issue's prototype (no atoms, 16-64 representatives
   per part of about 1,000) 0.93-0.99.
5. **Stitching** into one linkage matrix: the atoms' merges (part-tree rows at or below
   tau) under the tree over atoms.  Heights are monotone: a merge of the tree over atoms
   joins clusters X and Y at the maximum over atom pairs (a in X, b in Y) of the atom
   distance, which is at least ``diam a`` for every atom a in X u Y, i.e. at least the
   height of every atom merge below it; complete linkage over any dissimilarity is itself
   monotone, and part trees are exact.  The rows are then sorted by height (stably, so a
   child precedes a parent of equal height) and renumbered the scipy way, so the result
   passes ``scipy.cluster.hierarchy.is_valid_linkage`` and ``is_monotonic`` and nothing
   downstream can tell it from an exact tree.

When the class fits in one part the result *is* the exact tree; with one mask per atom
(``atom_size=1`` on a small class) the tree over atoms is exact complete linkage too.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from clustering.linkage import exact_linkage, linkage_from_condensed

__all__ = ["DEFAULT_PART_SIZE", "DEFAULT_REPS", "DEFAULT_ATOM_SIZE", "MAX_ATOMS", "REP_POINTS", "rep_cap", "partition",
           "farthest_first", "part_trees", "atom_threshold", "cut_atoms", "part_distances",
           "top_linkage", "stitch", "atoms_target", "assemble", "two_level_linkage"]

#: Largest part (masks) clustered exactly inside the two-level path.
DEFAULT_PART_SIZE = 2000
#: Fewest representatives per atom for the distance between atoms ...
DEFAULT_REPS = 8
#: ... and, above that floor, as many as fit in this many representatives in all (the tree
#: over atoms then costs one float32 product of ``REP_POINTS^2 (d + 2)``: what 4,096 atoms of
#: 8 representatives cost at 1M masks).  A class of at most this many masks gets exact
#: distances between atoms (every mask represents itself).
REP_POINTS = 32_768
#: About one atom per this many masks ...
DEFAULT_ATOM_SIZE = 128
#: ... and at most this many atoms (the tree over atoms needs 8 A(A-1)/2 bytes).
MAX_ATOMS = 4096

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
def farthest_first(x: np.ndarray, r: int) -> np.ndarray:
    """Indices of ``r`` farthest-first representatives of the rows of ``x``.

    Starts at the row farthest from the mean (an extreme point), then repeatedly adds the
    row farthest from all chosen ones; ties go to the lower index.
    """
    m = x.shape[0]
    r = min(r, m)
    xc = x - x.mean(axis=0)
    reps = [int(np.argmax(np.einsum("ij,ij->i", xc, xc)))]
    diff = x - x[reps[0]]
    d2 = np.einsum("ij,ij->i", diff, diff)
    for _ in range(1, r):
        nxt = int(np.argmax(d2))
        if d2[nxt] <= 0:
            break
        reps.append(nxt)
        diff = x - x[nxt]
        np.minimum(d2, np.einsum("ij,ij->i", diff, diff), out=d2)
    return np.asarray(reps, dtype=np.int64)


def part_trees(x: np.ndarray, parts: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Exact complete-linkage matrix of each part (``parts`` index rows of ``x``)."""
    return [exact_linkage(np.ascontiguousarray(x[idx], dtype=np.float64)) for idx in parts]


# ------------------------------------------------------------------------------ atoms
def atom_threshold(linkages: Sequence[np.ndarray], target: int) -> float:
    """Height tau that cuts the part trees into about ``target`` atoms in all.

    Cutting a tree at tau leaves its maximal subtrees of height <= tau; a part tree with m
    merges above tau leaves m + 1 of them.  Returns +inf (every part one atom) when
    ``target`` is at most the number of parts, and -1 (every mask an atom) when it reaches
    the number of masks.
    """
    p = len(linkages)
    heights = np.concatenate([z[:, 2] for z in linkages]) if p else np.zeros(0)
    above = target - p
    if above <= 0:
        return float("inf")
    if above >= heights.shape[0]:
        return -1.0
    return float(np.partition(heights, heights.shape[0] - above - 1)[heights.shape[0] - above - 1])


def cut_atoms(z: np.ndarray, tau: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut one part tree (k leaves) at height ``tau``.

    Returns ``(kept, roots, atom_of_leaf)``: the rows of ``z`` at or below tau (the atoms'
    own merges), each atom's root (local node id, ascending) and each leaf's atom (index
    into ``roots``).
    """
    k = z.shape[0] + 1
    kept = z[:, 2] <= tau
    up = np.arange(2 * k - 1, dtype=np.int64)          # parent if that merge is kept, else self
    if k > 1:
        a = z[:, 0].astype(np.int64)
        b = z[:, 1].astype(np.int64)
        rows = np.flatnonzero(kept)
        up[a[rows]] = k + rows
        up[b[rows]] = k + rows
    while True:                                         # pointer jumping to the atom root
        nxt = up[up]
        if np.array_equal(nxt, up):
            break
        up = nxt
    roots, atom_of_leaf = np.unique(up[:k], return_inverse=True)
    return kept, roots, atom_of_leaf.astype(np.int64)


# ------------------------------------------------------------------------------ top level
def rep_cap(sizes: Sequence[int] | np.ndarray, n_reps: int = DEFAULT_REPS,
            rep_points: int = REP_POINTS) -> int:
    """Representatives per atom: the largest atom (every mask its own representative: exact
    distances) when all masks fit in ``rep_points``, else ``rep_points // atoms`` and at
    least ``n_reps``, so that the atoms padded to the cap never exceed ``rep_points`` (the
    cost of the tree over atoms is bounded by the budget, whatever the atoms' sizes)."""
    m = np.asarray(sizes, dtype=np.int64)
    if m.shape[0] == 0:
        return int(n_reps)
    if int(m.sum()) <= rep_points:
        return int(m.max())
    return int(max(n_reps, rep_points // m.shape[0]))


def _stack(reps: Sequence[np.ndarray], pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Left and right factors of ``|a - b|^2 = [a, |a|^2, 1] . [-2b, 1, |b|^2]`` (float32,
    centred) of all representatives stacked; with ``pad`` > 0 every item is padded to ``pad``
    rows by repeating its first (which leaves every maximum unchanged)."""
    if pad:
        d = int(reps[0].shape[1])
        y = np.empty((len(reps) * pad, d), dtype=np.float64)
        for i, a in enumerate(reps):
            y[i * pad:i * pad + a.shape[0]] = a
            y[i * pad + a.shape[0]:(i + 1) * pad] = a[0]
    else:
        y = np.concatenate([np.asarray(a, dtype=np.float64) for a in reps])
    y -= y.mean(axis=0)
    sq = np.einsum("ij,ij->i", y, y)
    ones = np.ones((y.shape[0], 1))
    left = np.concatenate([y, sq[:, None], ones], axis=1).astype(np.float32)
    right = np.concatenate([-2.0 * y, ones, sq[:, None]], axis=1).astype(np.float32)
    return left, right


def part_distances(reps: Sequence[np.ndarray], diameters: np.ndarray,
                   block_bytes: int = 64 << 20) -> np.ndarray:
    """Condensed matrix of ``max(diam A, diam B, max over representative pairs)``.

    ``reps[i]`` holds the representative vectors of item i (``(r_i, d)``, r_i >= 1; the
    counts may differ).  Each block of items' representatives gets one float32 matrix
    product with every later item's, reduced to a maximum per item pair: by strided maxima
    when every item is padded to the largest count (cheap when the counts are about equal,
    as with a few representatives per atom), else by segmented maxima
    (``np.maximum.reduceat``) over the stacked representatives.
    """
    p = len(reps)
    counts = np.asarray([int(a.shape[0]) for a in reps], dtype=np.int64)
    if np.any(counts < 1):
        raise ValueError("every item needs at least one representative")
    r = int(counts.max())
    padded = p * r <= 2 * int(counts.sum())
    left, right = _stack(reps, r if padded else 0)
    starts = np.arange(p + 1, dtype=np.int64) * r if padded else np.concatenate([[0], np.cumsum(counts)])
    total = int(starts[-1])
    diam = np.asarray(diameters, dtype=np.float64)
    out = np.empty(p * (p - 1) // 2, dtype=np.float64)
    pos = 0
    a0 = 0
    while a0 < p - 1:
        cols = total - int(starts[a0])
        room = max(1, block_bytes // (4 * cols))          # representative rows per block
        a1 = int(np.searchsorted(starts, starts[a0] + room, side="right")) - 1
        a1 = min(max(a1, a0 + 1), p - 1)
        g = left[starts[a0]:starts[a1]] @ right[starts[a0]:].T      # (rows, cols)
        if padded:
            m = g[:, 0::r].copy()                                   # max over B's reps:
            for k in range(1, r):                                   # r strided passes
                np.maximum(m, g[:, k::r], out=m)
            del g
            m = m.reshape(a1 - a0, r, p - a0)
            best = m[:, 0].copy()
            for k in range(1, r):
                np.maximum(best, m[:, k], out=best)                 # (a1 - a0, p - a0)
        else:
            m = np.maximum.reduceat(g, starts[a0:p] - starts[a0], axis=1)  # (rows, p - a0)
            del g
            best = np.maximum.reduceat(m, starts[a0:a1] - starts[a0], axis=0)
        del m
        dist = np.sqrt(np.maximum(best.astype(np.float64), 0.0))
        for i in range(a1 - a0):
            a = a0 + i
            row = dist[i, i + 1:]
            np.maximum(row, diam[a], out=row)
            np.maximum(row, diam[a + 1:], out=row)
            out[pos:pos + row.shape[0]] = row
            pos += row.shape[0]
        a0 = a1
    return out


def top_linkage(reps: Sequence[np.ndarray], diameters: np.ndarray) -> np.ndarray:
    """Complete linkage over items (atoms) given by representatives and diameters."""
    p = len(reps)
    if p < 2:
        return np.zeros((0, 4), dtype=np.float64)
    return linkage_from_condensed(part_distances(reps, diameters), p)


# ------------------------------------------------------------------------------ stitching
def stitch(n: int, parts: Sequence[np.ndarray], trees: Sequence[np.ndarray],
           cuts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], top: np.ndarray) -> np.ndarray:
    """One ``(n-1, 4)`` linkage matrix: the atoms' merges (rows of the part trees kept by
    ``cuts``) under the tree over the atoms (``top``, items in part order, then root order).

    Rows are sorted by height (stable) and numbered as scipy does (merge i creates node
    n + i, the smaller child first); sizes are recomputed.
    """
    if sum(int(a.shape[0]) for a in parts) != n:
        raise ValueError("parts do not cover the observations")
    n_atoms = sum(int(c[1].shape[0]) for c in cuts)
    if top.shape[0] != n_atoms - 1:
        raise ValueError(f"the tree over atoms has {top.shape[0]} merges for {n_atoms} atoms")
    a_col = np.empty(n - 1, dtype=np.int64)
    b_col = np.empty(n - 1, dtype=np.int64)
    h = np.empty(n - 1, dtype=np.float64)
    atom_node = np.empty(n_atoms, dtype=np.int64)     # temporary id of every atom's root
    t = 0                                              # temporary id n + t: row t here
    q = 0
    for idx, z, (kept, roots, _) in zip(parts, trees, cuts):
        k = idx.shape[0]
        rows = np.flatnonzero(kept)
        local = np.full(2 * k - 1, -1, dtype=np.int64)   # local node -> temporary id
        local[:k] = idx
        local[k + rows] = n + t + np.arange(rows.shape[0])
        m = rows.shape[0]
        if m:
            a_col[t:t + m] = local[z[rows, 0].astype(np.int64)]
            b_col[t:t + m] = local[z[rows, 1].astype(np.int64)]
            h[t:t + m] = z[rows, 2]
        t += m
        atom_node[q:q + roots.shape[0]] = local[roots]
        q += roots.shape[0]
    if n_atoms > 1:
        ta = top[:, 0].astype(np.int64)
        tb = top[:, 1].astype(np.int64)
        tid = n + t + np.arange(n_atoms - 1)
        a_col[t:] = np.where(ta < n_atoms, atom_node[np.minimum(ta, n_atoms - 1)], tid[np.maximum(ta - n_atoms, 0)])
        b_col[t:] = np.where(tb < n_atoms, atom_node[np.minimum(tb, n_atoms - 1)], tid[np.maximum(tb - n_atoms, 0)])
        h[t:] = top[:, 2]
    order = np.argsort(h, kind="stable")
    rank = np.empty(n - 1, dtype=np.int64)
    rank[order] = np.arange(n - 1, dtype=np.int64)
    a_new = np.where(a_col >= n, n + rank[np.maximum(a_col - n, 0)], a_col)[order]
    b_new = np.where(b_col >= n, n + rank[np.maximum(b_col - n, 0)], b_col)[order]
    lo = np.minimum(a_new, b_new)
    hi = np.maximum(a_new, b_new)
    size = np.ones(2 * n - 1, dtype=np.int64).tolist()
    lo_l, hi_l = lo.tolist(), hi.tolist()
    for i in range(n - 1):              # children precede parents: one pass
        size[n + i] = size[lo_l[i]] + size[hi_l[i]]
    return np.column_stack([lo.astype(np.float64), hi.astype(np.float64), h[order],
                            np.asarray(size[n:], dtype=np.float64)])


# ------------------------------------------------------------------------------ all of it
def atoms_target(n: int, atom_size: int = DEFAULT_ATOM_SIZE, max_atoms: int = MAX_ATOMS) -> int:
    """How many atoms the tree over atoms is built on: about one per ``atom_size`` masks, at
    most ``max_atoms`` (its distance matrix is ``8 A(A-1)/2`` bytes)."""
    return int(min(max_atoms, max(2, -(-n // atom_size))))


def assemble(x: np.ndarray, parts: Sequence[np.ndarray], trees: Sequence[np.ndarray],
             n_reps: int = DEFAULT_REPS, atom_size: int = DEFAULT_ATOM_SIZE,
             rep_points: int = REP_POINTS, cap: int | None = None) -> np.ndarray:
    """Cut the part trees into atoms, build complete linkage over the atoms (representatives
    read from ``x``: :func:`rep_cap` of them per atom, or ``cap`` when given), stitch: one
    linkage matrix over the rows of ``x``."""
    n = x.shape[0]
    tau = atom_threshold(trees, atoms_target(n, atom_size))
    cuts = [cut_atoms(z, tau) for z in trees]
    members, diam = [], []
    for idx, z, (kept, roots, atom_of_leaf) in zip(parts, trees, cuts):
        k = idx.shape[0]
        order = np.argsort(atom_of_leaf, kind="stable")
        bounds = np.searchsorted(atom_of_leaf[order], np.arange(roots.shape[0] + 1))
        for j, root in enumerate(roots.tolist()):
            members.append(idx[order[bounds[j]:bounds[j + 1]]])
            diam.append(float(z[root - k, 2]) if root >= k else 0.0)
    if cap is None:
        cap = rep_cap([a.shape[0] for a in members], n_reps, rep_points)
    reps = []
    for rows in members:
        xa = x[rows]
        reps.append(xa if rows.shape[0] <= cap else xa[farthest_first(xa, cap)])
    top = top_linkage(reps, np.asarray(diam))
    return stitch(n, parts, trees, cuts, top)


def two_level_linkage(x: np.ndarray, part_size: int = DEFAULT_PART_SIZE, seed: int = 0,
                      n_reps: int = DEFAULT_REPS, atom_size: int = DEFAULT_ATOM_SIZE,
                      rep_points: int = REP_POINTS) -> np.ndarray:
    """Two-level complete linkage over the rows of ``x`` (see the module docstring); the exact
    tree when ``x`` fits in one part."""
    if x.shape[0] < 2:
        return np.zeros((0, 4), dtype=np.float64)
    parts = partition(x, part_size, seed)
    if len(parts) == 1:
        return exact_linkage(x)
    return assemble(x, parts, part_trees(x, parts), n_reps, atom_size, rep_points)
