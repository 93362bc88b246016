"""Per-class complete-linkage clustering of mask features (+ mask score) into a Forest.

The paper clusters, per class, the "mask attention" feature concatenated with the
mask score s using agglomerative complete linkage (Sec. 4.2, Fig. 6a).  Features are
standardised per dimension within the class and scaled so that all feature
dimensions together have unit variance; the standardised score is appended with
weight ``score_weight`` (1.0 would weigh the score as much as all feature dimensions
together; the default :data:`DEFAULT_SCORE_WEIGHT` is 0.25).

A class of at most ``exact_limit`` masks gets exact complete linkage
(:mod:`clustering.linkage`: one condensed matrix of ``8 n(n-1)/2`` bytes, clustered in
place).  A larger class is clustered in two levels (:mod:`clustering.twolevel`): parts of at
most ``part_size`` masks with exact trees inside, cut into atoms, complete linkage over the
atoms, stitched
into one valid linkage matrix.

Features are read in blocks of rows (they may be an ``np.memmap``); the steps below are
the units of work that :func:`build_forest` runs in order and that
``orchestrator.campaign.clusterrun`` runs in parallel processes or on Ray: same functions, same
results.
"""
from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from clustering.linkage import exact_linkage
from clustering.tree import Forest
from clustering.twolevel import (DEFAULT_ATOM_SIZE, DEFAULT_PART_SIZE, DEFAULT_REPS, assemble,
                                 part_trees, partition, two_level_linkage)

__all__ = ["ClusterParams", "EmbedStats", "DEFAULT_SCORE_WEIGHT", "DEFAULT_EXACT_LIMIT",
           "class_stats", "embed_rows", "embed", "class_linkage", "class_members",
           "exact_class", "parts_job", "part_chunks", "cluster_classes", "build_forest",
           "forest_from_linkages"]


# Weight of the standardised mask score next to the features (whose dimensions together
# have unit variance).  0.25 was chosen on synthetic data (bench/ and the README): larger
# weights split trees mainly by score, which makes the score-ordered search dive into
# small high-score clusters.
DEFAULT_SCORE_WEIGHT = 0.25
#: Exact limit of the library functions; ``labelprop cluster`` derives its own from the
#: machine's memory (:func:`clustering.memory.default_exact_limit`).
DEFAULT_EXACT_LIMIT = 40_000

_ROWS = 65_536          # rows per block when reading features


@dataclass(frozen=True)
class ClusterParams:
    # ``help`` metadata: read by the command-line options and campaign.toml (orchestrator.search.params)
    score_weight: float = field(default=DEFAULT_SCORE_WEIGHT, metadata={
        "help": "Weight of the mask score next to the features in the clustering."})
    exact_limit: int = field(default=DEFAULT_EXACT_LIMIT, metadata={
        "help": "Largest class clustered exactly (memory ~ 8n^2/2 bytes); larger ones in two levels."})
    seed: int = 0
    part_size: int = DEFAULT_PART_SIZE
    n_reps: int = DEFAULT_REPS
    atom_size: int = DEFAULT_ATOM_SIZE

    def __post_init__(self) -> None:
        if self.score_weight < 0:
            raise ValueError(f"score_weight must be >= 0, got {self.score_weight}")
        if self.exact_limit < 2:
            raise ValueError(f"exact_limit must be at least 2, got {self.exact_limit}")
        if self.part_size < 2:
            raise ValueError(f"part_size must be at least 2, got {self.part_size}")
        if self.n_reps < 1:
            raise ValueError(f"n_reps must be at least 1, got {self.n_reps}")
        if self.atom_size < 1:
            raise ValueError(f"atom_size must be at least 1, got {self.atom_size}")


# ------------------------------------------------------------------------------ embedding
@dataclass(frozen=True)
class EmbedStats:
    """Per-class standardisation: feature means and standard deviations, score mean and sd."""

    mean: np.ndarray
    sd: np.ndarray
    score_mean: float
    score_sd: float


def class_stats(features: np.ndarray, scores: np.ndarray, idx: np.ndarray) -> EmbedStats:
    """Means and standard deviations over the rows ``idx`` (two passes over blocks of rows)."""
    idx = np.asarray(idx, dtype=np.int64)
    n = idx.shape[0]
    d = int(features.shape[1])
    tot = np.zeros(d)
    for i in range(0, n, _ROWS):
        tot += np.asarray(features[idx[i:i + _ROWS]], dtype=np.float64).sum(axis=0)
    mean = tot / max(n, 1)
    ss = np.zeros(d)
    for i in range(0, n, _ROWS):
        f = np.asarray(features[idx[i:i + _ROWS]], dtype=np.float64) - mean
        ss += np.einsum("ij,ij->j", f, f)
    sd = np.sqrt(ss / max(n, 1))
    sd[sd == 0] = 1.0
    s = np.asarray(scores, dtype=np.float64)[idx]
    smean = float(s.mean()) if n else 0.0
    ssd = (float(s.std()) if n else 0.0) or 1.0
    return EmbedStats(mean=mean, sd=sd, score_mean=smean, score_sd=ssd)


def embed_rows(features: np.ndarray, scores: np.ndarray, idx: np.ndarray, stats: EmbedStats,
               score_weight: float = DEFAULT_SCORE_WEIGHT) -> np.ndarray:
    """Standardised features (total variance 1) of rows ``idx`` with the weighted standardised
    score appended (float64); element-wise given ``stats``, so any subset of rows embeds
    to the same values as in the whole."""
    idx = np.asarray(idx, dtype=np.int64)
    d = int(features.shape[1])
    cols = d + (1 if score_weight > 0 else 0)
    out = np.empty((idx.shape[0], cols), dtype=np.float64)
    scale = stats.sd * np.sqrt(max(d, 1))
    for i in range(0, idx.shape[0], _ROWS):
        j = idx[i:i + _ROWS]
        blk = out[i:i + j.shape[0], :d]
        blk[...] = features[j]
        blk -= stats.mean
        blk /= scale
    if score_weight > 0:
        s = np.asarray(scores, dtype=np.float64)[idx]
        out[:, d] = (s - stats.score_mean) / stats.score_sd * score_weight
    return out


def embed(features: np.ndarray, scores: np.ndarray, score_weight: float = DEFAULT_SCORE_WEIGHT) -> np.ndarray:
    """Standardised features (total variance 1) with the standardised score appended."""
    if np.ndim(features) != 2:
        raise ValueError(f"features must be 2-D, got shape {np.shape(features)}")
    idx = np.arange(np.shape(features)[0], dtype=np.int64)
    return embed_rows(features, scores, idx, class_stats(features, scores, idx), score_weight)


# ------------------------------------------------------------------------------ one class
def class_linkage(x: np.ndarray, exact_limit: int = DEFAULT_EXACT_LIMIT, seed: int = 0,
                  part_size: int = DEFAULT_PART_SIZE, n_reps: int = DEFAULT_REPS,
                  atom_size: int = DEFAULT_ATOM_SIZE) -> np.ndarray:
    """Complete-linkage matrix over the rows of ``x``: exact up to ``exact_limit`` rows,
    two-level above."""
    if x.shape[0] <= exact_limit:
        return exact_linkage(x)
    return two_level_linkage(x, part_size, seed, n_reps, atom_size)


def exact_class(features: np.ndarray, scores: np.ndarray, idx: np.ndarray, stats: EmbedStats,
                score_weight: float) -> np.ndarray:
    """Unit of work: the exact tree of one class (rows ``idx``)."""
    return exact_linkage(embed_rows(features, scores, idx, stats, score_weight))


def part_chunks(parts: Sequence[np.ndarray], part_size: int) -> list[list[int]]:
    """Group consecutive parts into chunks of about 16 parts' worth of masks (units of work)."""
    out, cur, tot = [], [], 0
    for i, a in enumerate(parts):
        cur.append(i)
        tot += int(a.shape[0])
        if tot >= 16 * part_size:
            out.append(cur)
            cur, tot = [], 0
    if cur:
        out.append(cur)
    return out


def parts_job(features: np.ndarray, scores: np.ndarray, rows: Sequence[np.ndarray],
              stats: EmbedStats, score_weight: float) -> list[np.ndarray]:
    """Unit of work: exact trees of some parts, each given by its rows of ``features``."""
    return [exact_linkage(embed_rows(features, scores, r, stats, score_weight)) for r in rows]


def class_members(classes: np.ndarray, exclude: np.ndarray | None = None) -> dict[int, np.ndarray]:
    """``{class id: mask ids}`` in class order, without the masks in ``exclude`` (ids); classes
    left empty are dropped."""
    classes = np.asarray(classes, dtype=np.int64)
    keep = np.ones(classes.shape[0], bool)
    if exclude is not None and len(exclude):
        keep[np.asarray(exclude, np.int64)] = False
    order = np.argsort(classes, kind="stable")
    cs = classes[order]
    bounds = np.flatnonzero(np.diff(cs)) + 1
    out = {}
    for grp in np.split(order, bounds):
        if grp.shape[0] == 0:
            continue
        idx = grp[keep[grp]]
        if idx.shape[0]:
            out[int(classes[grp[0]])] = idx
    return out


def _inline(fn, *args, memory: int = 0) -> Future:
    """Run ``fn(*args)`` now; its result (or exception) in a finished Future."""
    fut: Future = Future()
    try:
        fut.set_result(fn(*args))
    except BaseException as exc:          # noqa: BLE001 - handed to the caller via the Future
        fut.set_exception(exc)
    return fut


def cluster_classes(features: np.ndarray, scores: np.ndarray, members: dict[int, np.ndarray],
                    params: ClusterParams, on_done: Callable[[int, np.ndarray], None],
                    submit: Callable[..., Future] | None = None, max_pending: int = 8,
                    progress: Callable[[str, int, int, int], None] | None = None,
                    tick: Callable[[], None] | None = None) -> None:
    """Cluster every class of ``members`` (``{class id: mask ids}``) and hand each finished
    linkage matrix (over the class's masks in the order of its ids) to ``on_done``.

    The units of work are :func:`exact_class` (one per exact class) and :func:`parts_job`
    (part trees of a two-level class); this process embeds and partitions two-level classes
    one at a time, and builds the tree over its atoms once a class's units are back.
    ``submit(fn, *args, memory=bytes)`` runs a unit and returns a ``concurrent.futures.Future``
    (default: at once, in this process); a process pool or Ray plugs in here.  ``features``
    and ``scores`` are not passed to ``submit``: the executor prepends them (workers read
    them from where the executor put them).  Results do not depend on the executor or on the
    order units finish in.  ``progress(event, class_id, done, total)`` reports ``start``,
    ``advance`` and ``done`` per class; ``tick()`` is called about twice a second while
    waiting.
    """
    from clustering.memory import exact_bytes, parts_job_bytes

    if submit is None:
        def submit(fn, *args, memory=0):
            return _inline(fn, features, scores, *args)
    say = progress or (lambda *a: None)
    d = int(features.shape[1])
    pending: dict[Future, tuple[str, int, int]] = {}
    two: dict[int, dict] = {}

    def handle(fut: Future) -> None:
        kind, c, j = pending.pop(fut)
        res = fut.result()
        if kind == "exact":
            say("done", c, 1, 1)
            on_done(c, res)
            return
        st = two[c]
        st["trees"][j] = res
        st["left"] -= 1
        st["done"] += len(res)
        say("advance", c, st["done"], len(st["parts"]))
        if st["left"] == 0:
            del two[c]
            z = assemble(st["x"], st["parts"], [t for r in st["trees"] for t in r],
                         params.n_reps, params.atom_size)
            say("done", c, len(st["parts"]), len(st["parts"]))
            on_done(c, z)

    def drain(until: int) -> None:
        """Handle finished units until at most ``until`` are pending."""
        while len(pending) > until:
            done, _ = wait(list(pending), timeout=0.5, return_when=FIRST_COMPLETED)
            for fut in sorted(done, key=lambda f: pending[f]):
                handle(fut)
            if tick:
                tick()

    for c in sorted(members, key=lambda c: (-members[c].shape[0], c)):   # largest first
        idx = members[c]
        n = int(idx.shape[0])
        stats = class_stats(features, scores, idx)
        if n <= params.exact_limit:
            say("start", c, 0, 1)
            fut = submit(exact_class, idx, stats, params.score_weight, memory=exact_bytes(n, d))
            pending[fut] = ("exact", c, 0)
        else:
            x = embed_rows(features, scores, idx, stats, params.score_weight)
            parts = partition(x, params.part_size, params.seed)
            chunks = part_chunks(parts, params.part_size)
            two[c] = {"x": x, "parts": parts, "trees": [None] * len(chunks), "left": len(chunks),
                      "done": 0}
            del x
            say("start", c, 0, len(parts))
            mem = parts_job_bytes(params.part_size, d, params.n_reps)
            for j, chunk in enumerate(chunks):
                drain(max_pending)
                fut = submit(parts_job, [idx[parts[i]] for i in chunk], stats, params.score_weight,
                             memory=mem)
                pending[fut] = ("parts", c, j)
        drain(max_pending)
    drain(0)


def build_forest(features: np.ndarray, scores: np.ndarray, classes: np.ndarray,
                 params: ClusterParams = ClusterParams(),
                 progress: Callable[[int, int], None] | None = None,
                 exclude: np.ndarray | None = None) -> Forest:
    """One complete-linkage tree per class, joined into one Forest over all masks.

    Masks whose ids are in ``exclude`` (e.g. campaign masks used as gold questions) are in no
    tree: their ``leaf_of_mask`` is -1, so the search never asks or accepts them.
    ``progress(done, total)`` is called as each class finishes.
    """
    scores = np.asarray(scores, dtype=np.float64)
    members = class_members(classes, exclude)
    links: dict[int, np.ndarray] = {}

    def done(c: int, z: np.ndarray) -> None:
        links[c] = z
        if progress:
            progress(len(links), len(members))

    cluster_classes(features, scores, members, params, done)
    return forest_from_linkages(links, members, scores)


def forest_from_linkages(links: dict[int, np.ndarray], members: dict[int, np.ndarray],
                         scores: np.ndarray) -> Forest:
    """The Forest of per-class linkage matrices (in class order)."""
    n = int(np.shape(scores)[0])
    trees = []
    for c, idx in members.items():
        trees.append(Forest.from_linkage(links.pop(c), scores, mask_ids=idx, class_id=int(c), n_masks=n))
    return Forest.concat(trees)
