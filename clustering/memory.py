"""Peak memory of clustering, predicted from the class sizes, the feature dimension and the
parameters, so that ``labelprop cluster`` can refuse up front instead of dying half-way.

The model counts the arrays the code allocates (bytes, float64 unless noted):

* exact class of n masks: the condensed matrix ``8 n(n-1)/2`` (clustered in place), the
  embedded rows twice (``x`` and its centred copy), one block of distance rows, and
  fastcluster's O(n) bookkeeping;
* two-level class, in the process that partitions it: the embedded rows (kept until the
  class is stitched), the k-means labels and index arrays, the tree over A atoms
  (``8 A(A-1)/2`` plus blocks of representative products), and the stitching arrays;
* a unit of part trees (in a worker): one part's condensed matrix ``8 P(P-1)/2``, about
  sixteen parts' rows, their trees;
* at the end, the forest: every class's linkage matrix and :class:`~clustering.tree.Forest`
  built from it (its arrays and the Python lists of its top-down pass).

Each term was checked against ``ru_maxrss`` (``bench/cluster_scale.py`` prints both).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from clustering.linkage import BLOCK_BYTES, condensed_size

__all__ = ["BASE_BYTES", "exact_bytes", "two_level_bytes", "parts_job_bytes", "forest_bytes",
           "MemoryPlan", "plan_memory", "max_exact_n", "default_exact_limit", "fmt_bytes",
           "EXACT_FRACTION"]

GiB = 1 << 30
MiB = 1 << 20
#: The Python process with numpy, scipy, fastcluster and the store loaded.
BASE_BYTES = 350 * MiB
#: Share of the machine's memory that the default exact limit lets one exact class use.
EXACT_FRACTION = 0.8
_FILL = 0.5             # k-means parts average about half the part size (twolevel._FILL)


def fmt_bytes(b: float) -> str:
    return f"{b / GiB:.1f} GiB" if b >= GiB else f"{b / MiB:.0f} MiB"


def exact_bytes(n: int, d: int) -> int:
    """Exact complete linkage of n masks with d feature dimensions (+ the score column);
    the class's rows of a memory-mapped float32 feature file count too (their pages are
    resident while they are read)."""
    return int(8 * condensed_size(n) + 2 * 8 * n * (d + 1) + 4 * n * d + BLOCK_BYTES + 200 * n)


def n_parts(n: int, part_size: int) -> int:
    """About how many parts the two-level path cuts n masks into (at most twice this)."""
    return max(1, math.ceil(n / (_FILL * part_size)))


def two_level_bytes(n: int, d: int, part_size: int, n_reps: int) -> int:
    """The process that partitions a two-level class, builds the tree over its atoms and
    stitches (the part trees themselves are :func:`parts_job_bytes`)."""
    from clustering.twolevel import REP_POINTS, atoms_target

    a = atoms_target(n)
    reps = max(a * n_reps, min(n, REP_POINTS))             # representatives in all
    embed = 8 * n * (d + 1) + 4 * n * d                  # held until stitched; + mapped rows
    partition = 8 * n * 4 + embed // 16                  # labels, index arrays, one k-means copy
    top = (8 * condensed_size(a) + (64 * MiB) * 2 + 2 * 4 * reps * (d + 2)
           + 16 * reps * (d + 1))
    trees = 40 * n                                       # part linkage matrices + index arrays
    stitch = 450 * n                                     # its int arrays and size lists
    # + half the embedding again: at 256-d the measured peak (1M masks: 4.87 GiB) exceeded
    # the sum of the terms above by that much (working copies not yet accounted for one by one)
    return int(embed + embed // 2 + trees + max(partition, top, stitch))


def parts_job_bytes(part_size: int, d: int, n_reps: int = 0) -> int:
    """One unit of part trees (about 16 parts' worth of masks, one part at a time)."""
    return int(8 * condensed_size(part_size) + 3 * 8 * part_size * (d + 1)
               + 16 * part_size * 40 + BLOCK_BYTES)


def forest_bytes(n_masks: int, n_clustered: int) -> int:
    """The finished forest: linkage matrices, Forest arrays and from_linkage's lists."""
    return int(32 * n_clustered + 2 * 13 * 8 * 2 * n_clustered + 300 * n_clustered + 24 * n_masks)


@dataclass(frozen=True)
class MemoryPlan:
    """Predicted peak of a clustering run and what dominates it."""

    peak: int
    worst_class: int | None       # class id of the largest single-class term
    worst_bytes: int
    worst_exact: bool
    detail: str


def plan_memory(sizes: dict[int, int], d: int, exact_limit: int, part_size: int, n_reps: int,
                jobs: int = 1, n_masks: int | None = None,
                n_clustered: int | None = None) -> MemoryPlan:
    """Predicted peak resident memory of clustering classes of ``sizes`` masks.

    With ``jobs`` worker processes the parent partitions one two-level class at a time while
    up to ``jobs`` units (exact classes or part-tree units) run at once; in-process
    (``jobs == 1``) the largest of the two counts once; ``jobs == 0``: the units run
    elsewhere (Ray), only the parent counts.  The forest at the end holds ``n_clustered``
    masks (default: all of ``sizes``) out of ``n_masks``.
    """
    if not sizes:
        total = n_clustered or 0
        return MemoryPlan(BASE_BYTES + forest_bytes(n_masks or total, total), None, 0, False,
                          "nothing left to cluster")
    units: list[tuple[int, int, bool]] = []        # (bytes, class, exact) of worker units
    parent = 0
    next_embed = 0          # with workers, the next class is embedded while one finishes
    worst = (0, None, False)
    for c, n in sizes.items():
        if n <= exact_limit:
            b = exact_bytes(n, d)
            units.append((b, c, True))
            if b > worst[0]:
                worst = (b, c, True)
        else:
            b = two_level_bytes(n, d, part_size, n_reps)
            parent = max(parent, b)
            next_embed = max(next_embed, 8 * n * (d + 1))
            units.append((parts_job_bytes(part_size, d, n_reps), c, False))
            if b > worst[0]:
                worst = (b, c, False)
    units.sort(reverse=True)
    total = sum(sizes.values()) if n_clustered is None else n_clustered
    forest = forest_bytes(n_masks if n_masks is not None else total, total)
    if jobs == 0:
        detail = f"partitioning {fmt_bytes(parent)} here, units on Ray"
        peak = BASE_BYTES + max(parent, forest)
    elif jobs == 1:
        work = max(parent, units[0][0])
        detail = f"largest unit {fmt_bytes(work)} in-process"
        peak = BASE_BYTES + max(work, forest)
    else:
        concurrent = sum(b for b, _, _ in units[:jobs])
        if parent:
            parent += next_embed
        work = parent + concurrent + BASE_BYTES * min(jobs, len(units))
        detail = (f"{min(jobs, len(units))} workers at once ({fmt_bytes(concurrent)}) "
                  f"+ partitioning {fmt_bytes(parent)}")
        peak = BASE_BYTES + max(work, forest)
    return MemoryPlan(int(peak), worst[1], int(worst[0]), bool(worst[2]), detail)


def max_exact_n(budget: int, d: int) -> int:
    """Largest class that exact linkage clusters within ``budget`` bytes (base included)."""
    lo, hi = 2, 2
    while BASE_BYTES + exact_bytes(hi, d) <= budget:
        lo, hi = hi, hi * 2
    if BASE_BYTES + exact_bytes(lo, d) > budget:
        return 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if BASE_BYTES + exact_bytes(mid, d) <= budget:
            lo = mid
        else:
            hi = mid
    return lo


def default_exact_limit(total_memory: int, d: int) -> int:
    """The exact limit for a machine with ``total_memory`` bytes: the largest class whose
    exact linkage uses at most :data:`EXACT_FRACTION` of it, rounded down to 1,000 masks
    (at least 2,000).  About 70,000 masks on 24 GiB."""
    n = max_exact_n(int(EXACT_FRACTION * total_memory), d)
    return max(2000, n // 1000 * 1000)
