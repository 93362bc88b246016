"""Exact complete linkage with one condensed distance matrix and nothing else of size n^2.

``fastcluster.linkage`` on an ``(n, d)`` array runs ``pdist`` and then copies the condensed
matrix before clustering (peak: twice ``8 * n(n-1)/2`` bytes), and ``pdist`` is slow at a
few hundred dimensions.  Here the condensed matrix is filled once, block of rows by block of
rows, from matrix products (``|a|^2 + |b|^2 - 2 a.b`` on centred data, clamped at 0), and
handed to fastcluster's C entry point, which clusters it in place.  Peak memory is the
condensed matrix plus one block of ``block_bytes`` and O(n) bookkeeping, so about 70,000
masks fit in 24 GiB.

The distances differ from ``pdist``'s by rounding only (relative error about 1e-15 of the
squared norms); the tree is fastcluster's own complete linkage of that matrix.
"""
from __future__ import annotations

import numpy as np

__all__ = ["condensed_size", "condensed_distances", "linkage_from_condensed", "exact_linkage",
           "BLOCK_BYTES"]

#: Working memory of one block of distance rows (the only buffer besides the matrix).
BLOCK_BYTES = 32 << 20

_COMPLETE = 1       # fastcluster's method code for complete linkage (fastcluster.mthidx)


def condensed_size(n: int) -> int:
    """Entries of the condensed distance matrix of ``n`` observations."""
    return n * (n - 1) // 2


def condensed_distances(x: np.ndarray, out: np.ndarray | None = None,
                        block_bytes: int = BLOCK_BYTES) -> np.ndarray:
    """Euclidean distances between the rows of ``x`` in scipy's condensed order (float64).

    Computed in blocks of rows with one matrix product each; ``out`` (length n(n-1)/2) is
    filled in place when given.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D, got shape {x.shape}")
    n = x.shape[0]
    size = condensed_size(n)
    if out is None:
        out = np.empty(size, dtype=np.float64)
    elif out.shape != (size,) or out.dtype != np.float64:
        raise ValueError(f"out must be float64 of length {size}")
    if n < 2:
        return out
    xc = x - x.mean(axis=0)             # centring keeps |a|^2 + |b|^2 - 2ab well conditioned
    sq = np.einsum("ij,ij->i", xc, xc)
    rows = max(1, int(block_bytes // (8 * n)))
    pos = 0
    for i0 in range(0, n - 1, rows):
        i1 = min(i0 + rows, n - 1)
        g = xc[i0:i1] @ xc[i0:].T               # (i1 - i0, n - i0)
        g *= -2.0
        g += sq[i0:i1, None]
        g += sq[None, i0:]
        np.maximum(g, 0.0, out=g)
        np.sqrt(g, out=g)
        for r in range(i1 - i0):               # row i0 + r: columns i0 + r + 1 .. n - 1
            k = n - (i0 + r) - 1
            out[pos:pos + k] = g[r, r + 1:]
            pos += k
    return out


def linkage_from_condensed(dist: np.ndarray, n: int) -> np.ndarray:
    """Complete linkage of a condensed matrix by fastcluster's C routine, *in place*.

    ``dist`` is overwritten (fastcluster uses it as working memory) and must be a
    C-contiguous float64 array of length n(n-1)/2.  Returns the ``(n-1, 4)`` linkage matrix.
    """
    from _fastcluster import linkage_wrap   # the extension behind fastcluster.linkage

    if dist.dtype != np.float64 or not dist.flags.c_contiguous or not dist.flags.writeable:
        raise ValueError("dist must be a writable, C-contiguous float64 array")
    if dist.shape != (condensed_size(n),):
        raise ValueError(f"dist has {dist.shape[0]} entries, expected {condensed_size(n)} for n={n}")
    z = np.empty((max(n - 1, 0), 4), dtype=np.float64)
    if n > 1:
        linkage_wrap(n, dist, z, _COMPLETE)
    return z


def exact_linkage(x: np.ndarray, block_bytes: int = BLOCK_BYTES) -> np.ndarray:
    """Exact complete linkage over the rows of ``x``: one condensed matrix, clustered in place."""
    n = int(np.shape(x)[0])
    if n < 2:
        return np.zeros((0, 4), dtype=np.float64)
    return linkage_from_condensed(condensed_distances(x, block_bytes=block_bytes), n)
