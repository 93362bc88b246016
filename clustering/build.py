"""Per-class complete-linkage clustering of mask features (+ mask score) into a Forest.

The paper clusters, per class, the "mask attention" feature concatenated with the
mask score s using agglomerative complete linkage (Sec. 4.2, Fig. 6a).  Features are
standardised per dimension within the class and scaled so that all feature
dimensions together have unit variance; the standardised score is appended with
weight ``score_weight`` (1.0 would weigh the score as much as all feature dimensions
together; the default :data:`DEFAULT_SCORE_WEIGHT` is 0.25).

Exact complete linkage needs the condensed distance matrix: 8 * n(n-1)/2 bytes, about
6.4 GB at n = 40,000 (fastcluster keeps a second copy while it works).  A class
larger than ``exact_limit`` is clustered in two levels: k-means parts of at most
``exact_limit`` masks, an exact tree inside each part, an exact complete-linkage tree
over the parts' centroids, stitched into one valid binary tree.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import fastcluster
import numpy as np

from clustering.tree import Forest

__all__ = ["ClusterParams", "embed", "class_linkage", "build_forest"]


# Weight of the standardised mask score next to the features (whose dimensions together
# have unit variance).  0.25 was chosen on synthetic data (bench/ and the README): larger
# weights split trees mainly by score, which makes the score-ordered search dive into
# small high-score clusters.
DEFAULT_SCORE_WEIGHT = 0.25


@dataclass(frozen=True)
class ClusterParams:
    score_weight: float = DEFAULT_SCORE_WEIGHT
    exact_limit: int = 40_000
    seed: int = 0


def embed(features: np.ndarray, scores: np.ndarray, score_weight: float = DEFAULT_SCORE_WEIGHT) -> np.ndarray:
    """Standardised features (total variance 1) with the standardised score appended."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"features must be 2-D, got shape {f.shape}")
    mu = f.mean(axis=0)
    sd = f.std(axis=0)
    sd[sd == 0] = 1.0
    f = (f - mu) / sd / np.sqrt(max(f.shape[1], 1))
    s = np.asarray(scores, dtype=np.float64)
    ssd = s.std() or 1.0
    col = ((s - s.mean()) / ssd * score_weight)[:, None]
    return np.hstack([f, col]) if score_weight > 0 else f


def _exact(x: np.ndarray) -> np.ndarray:
    if x.shape[0] < 2:
        return np.zeros((0, 4))
    return fastcluster.linkage(x, method="complete", metric="euclidean", preserve_input=False)


def class_linkage(x: np.ndarray, exact_limit: int = 40_000, seed: int = 0) -> np.ndarray:
    """Complete-linkage matrix over the rows of ``x`` (exact up to ``exact_limit`` rows)."""
    n = x.shape[0]
    if n <= exact_limit:
        return _exact(np.array(x, dtype=np.float64, copy=True))
    return _two_level(x, exact_limit, seed)


def _two_level(x: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Partition with k-means, exact trees per part, exact tree over parts, stitched."""
    from sklearn.cluster import MiniBatchKMeans

    n = x.shape[0]
    k = int(np.ceil(n / (limit * 0.5)))
    labels = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3,
                             batch_size=4096).fit_predict(x)
    # Split any part still above the limit into chunks (k-means parts can be unbalanced).
    parts: list[np.ndarray] = []
    for lab in range(k):
        idx = np.flatnonzero(labels == lab)
        for i in range(0, idx.shape[0], limit):
            if idx[i:i + limit].shape[0]:
                parts.append(idx[i:i + limit])
    rows: list[np.ndarray] = []
    part_root: list[int] = []   # global node id of each part's root
    next_id = n
    for idx in parts:
        z = _exact(np.array(x[idx], dtype=np.float64))
        kk = idx.shape[0]
        if kk == 1:
            part_root.append(int(idx[0]))
            continue
        a = z[:, 0].astype(np.int64)
        b = z[:, 1].astype(np.int64)
        # local leaf i -> global leaf idx[i]; local internal kk+j -> next_id + j
        ga = np.where(a < kk, idx[np.minimum(a, kk - 1)], next_id + a - kk)
        gb = np.where(b < kk, idx[np.minimum(b, kk - 1)], next_id + b - kk)
        rows.append(np.column_stack([ga, gb, z[:, 2], z[:, 3]]))
        next_id += kk - 1
        part_root.append(next_id - 1)
    cent = np.stack([x[idx].mean(axis=0) for idx in parts])
    sizes = np.array([idx.shape[0] for idx in parts], dtype=np.float64)
    top = _exact(cent)
    p = len(parts)
    ids = list(part_root)
    base_h = max((r[:, 2].max() for r in rows if r.shape[0]), default=0.0)
    cur_size = list(sizes)
    top_rows = []
    for j in range(top.shape[0]):
        a, b = int(top[j, 0]), int(top[j, 1])
        ga, gb = ids[a], ids[b]
        sz = cur_size[a] + cur_size[b]
        # heights above every part's internal height keep the tree monotone
        top_rows.append([ga, gb, base_h + top[j, 2] + 1e-9 * (j + 1), sz])
        ids.append(next_id)
        cur_size.append(sz)
        next_id += 1
    allrows = rows + ([np.asarray(top_rows)] if top_rows else [])
    Z = np.vstack(allrows)
    # Renumber internal nodes so that merge i creates node n + i (scipy's convention);
    # rows are already in creation order (next_id increased monotonically).
    assert Z.shape[0] == n - 1 and p >= 1
    return Z


def class_members(classes: np.ndarray, exclude: np.ndarray | None = None) -> dict[int, np.ndarray]:
    """``{class id: mask ids}`` in class order, without the masks in ``exclude`` (ids); classes
    left empty are dropped."""
    classes = np.asarray(classes, dtype=np.int64)
    keep = np.ones(classes.shape[0], bool)
    if exclude is not None and len(exclude):
        keep[np.asarray(exclude, np.int64)] = False
    out = {}
    for c in np.unique(classes):
        idx = np.flatnonzero((classes == c) & keep)
        if idx.shape[0]:
            out[int(c)] = idx
    return out


def build_forest(features: np.ndarray, scores: np.ndarray, classes: np.ndarray,
                 params: ClusterParams = ClusterParams(),
                 progress: Callable[[int, int], None] | None = None,
                 exclude: np.ndarray | None = None) -> Forest:
    """One complete-linkage tree per class, joined into one Forest over all masks.

    Masks whose ids are in ``exclude`` (e.g. campaign masks used as gold questions) are in no
    tree: their ``leaf_of_mask`` is -1, so the search never asks or accepts them.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n = scores.shape[0]
    trees = []
    members = class_members(classes, exclude)
    for i, (c, idx) in enumerate(members.items()):
        x = embed(features[idx], scores[idx], params.score_weight)
        Z = class_linkage(x, params.exact_limit, params.seed)
        trees.append(Forest.from_linkage(Z, scores, mask_ids=idx, class_id=int(c), n_masks=n))
        del x, Z
        if progress:
            progress(i + 1, len(members))
    return Forest.concat(trees)
