"""``labelprop cluster --check``: how faithful the two-level tree is to the exact one.

On a class (or a random sample of it) small enough for exact complete linkage, three trees
are built over the same embedded masks: the exact tree, the two-level tree (with the
campaign's part size and representatives, even though the sample would fit exactly), and,
as a yardstick, the exact tree of the same masks after a 1% jitter of every coordinate
(1% of that coordinate's standard deviation).  Complete linkage is unstable where clusters
overlap: the jittered exact tree shows how far the exact tree itself moves under a
perturbation far below any feature's noise, so the two-level figures read against it.

Reported: cophenetic correlation with the exact tree (over all pairs, or two million random
pairs), correlation of each tree's cophenetic distances with the feature distances,
adjusted Rand index of flat cuts into k clusters, and, when the masks have ground-truth
IoUs, the campaign's search simulated on each tree (oracle and sampled answers).
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np

__all__ = ["fidelity_report", "class_atoms", "CUTS", "JITTER"]

#: Flat cuts (number of clusters) at which the ARI is reported.
CUTS = (2, 8, 32, 128, 512, 2048)
#: Jitter of the yardstick tree, as a fraction of each coordinate's standard deviation.
JITTER = 0.01


def class_atoms(n: int, params) -> tuple[int, int]:
    """``(atom size, representatives per atom)`` of the two-level tree of a class of ``n``
    masks: about ``n / atoms_target(n)`` masks per atom, and the cap :func:`rep_cap` gives
    atoms of that (equal) size."""
    from clustering.twolevel import atoms_target, rep_cap

    a = atoms_target(n, params.atom_size)
    size = -(-n // a)
    return max(params.atom_size, size), rep_cap(np.full(a, size), params.n_reps)


def _search(Z: np.ndarray, scores: np.ndarray, ious: np.ndarray, search, seeds: Sequence[int]) -> dict:
    from dataclasses import replace

    from clustering.tree import Forest
    from orchestrator.crowd.annotators import SimulatedAnnotators
    from orchestrator.search.simulate import run_tree_search

    f = Forest.from_linkage(Z, scores)
    ok = ious >= search.kiou

    def one(params, seed) -> dict:
        r = run_tree_search(f, params, SimulatedAnnotators(ious, search.kiou, seed=seed), ious)
        acc = np.asarray(r.accepted, bool)
        n = int(acc.sum())
        return {"accepted_masks": n, "questions": int(r.questions),
                "clusters_annotated": int(r.clusters_annotated),
                "precision": float(ok[acc].mean()) if n else None,
                "mean_iou": float(ious[acc].mean()) if n else None}

    oracle = one(replace(search, oracle=True), 0)
    runs = [one(replace(search, oracle=False, seed=int(s)), int(s)) for s in seeds]
    mean = {k: float(np.mean([r[k] for r in runs if r[k] is not None])) if any(r[k] is not None for r in runs)
            else None for k in runs[0]}
    mean["seeds"] = len(runs)
    return {"oracle": oracle, "sampled": mean}


def _ratios(t: dict, e: dict, cost: str) -> dict:
    """A tree's search figures against the exact tree's: accepted masks and ``cost`` as ratios,
    precision as a difference."""
    return {"accepted_masks_ratio": t["accepted_masks"] / e["accepted_masks"] if e["accepted_masks"] else None,
            f"{cost}_ratio": t[cost] / e[cost] if e[cost] else None,
            "precision_difference": (t["precision"] - e["precision"])
            if t["precision"] is not None and e["precision"] is not None else None}


def fidelity_report(x: np.ndarray, scores: np.ndarray, ious: np.ndarray | None, params,
                    search=None, seeds: Sequence[int] = (0, 1, 2, 3, 4), cuts: Sequence[int] = CUTS,
                    jitter: float = JITTER, say: Callable[[str], None] | None = None,
                    atom_size: int | None = None, class_masks: int | None = None) -> dict:
    """Exact, two-level and jittered-exact trees of the rows of ``x`` compared (see module).

    ``atom_size`` (default ``params.atom_size``): masks per atom of the tree over atoms; a
    sample of a larger class should use the class's own (coarser) atoms.  ``class_masks``:
    the size of the class the rows were sampled from; the two-level tree then gets the atoms
    and the representatives per atom that class gets (:func:`class_atoms`), so the figures
    describe the class's tree rather than the sample's own (finer) one.
    """
    from clustering.fidelity import ari_at_cuts, pair_correlations
    from clustering.linkage import exact_linkage
    from clustering.twolevel import assemble, part_trees, partition

    say = say or (lambda m: None)
    n = int(x.shape[0])
    secs = {}
    say(f"exact complete linkage of {n:,} masks")
    t = time.perf_counter()
    exact = exact_linkage(x)
    secs["exact"] = round(time.perf_counter() - t, 2)
    say(f"two-level linkage (parts of at most {params.part_size:,}, {params.n_reps} representatives)")
    t = time.perf_counter()
    parts = partition(x, params.part_size, params.seed)
    atom_size = params.atom_size if atom_size is None else atom_size
    cap = None
    if class_masks is not None:
        atom_size, cap = class_atoms(class_masks, params)
    two = exact if len(parts) == 1 else assemble(x, parts, part_trees(x, parts), params.n_reps,
                                                 atom_size, cap=cap)
    secs["two_level"] = round(time.perf_counter() - t, 2)
    say("exact linkage of the jittered masks (the yardstick)")
    rng = np.random.default_rng([params.seed, 7919])
    jit = exact_linkage(x + rng.normal(size=x.shape) * (x.std(axis=0) * jitter))
    say("cophenetic correlations and flat cuts")
    r = pair_correlations(x, [exact, two, jit], seed=params.seed)
    out = {
        "masks": n, "parts": len(parts), "part_size": params.part_size, "reps": params.n_reps,
        "atom_size": atom_size, "as_class_masks": class_masks, "reps_per_atom": cap,
        "jitter": jitter, "seconds": secs,
        "cophenetic_correlation": {"two_level_vs_exact": float(r[0, 1]),
                                   "jittered_exact_vs_exact": float(r[0, 2])},
        "distance_correlation": {"exact": float(r[0, 3]), "two_level": float(r[1, 3]),
                                 "jittered_exact": float(r[2, 3])},
        "ari": {"two_level_vs_exact": ari_at_cuts(exact, two, cuts),
                "jittered_exact_vs_exact": ari_at_cuts(exact, jit, cuts)},
    }
    if ious is not None and search is not None:
        say(f"simulated search on each tree (oracle + {len(seeds)} sampled runs)")
        s = np.asarray(scores, np.float64)
        io = np.asarray(ious, np.float64)
        res = {name: _search(z, s, io, search, seeds) for name, z in
               (("exact", exact), ("two_level", two), ("jittered_exact", jit))}
        for name in ("two_level", "jittered_exact"):
            # sampled answers (questions asked), and the oracle (the tree's own figures, no
            # sampling noise: clusters annotated stand for questions)
            res[f"{name}_vs_exact"] = {**_ratios(res[name]["sampled"], res["exact"]["sampled"], "questions"),
                                       "oracle": _ratios(res[name]["oracle"], res["exact"]["oracle"],
                                                         "clusters_annotated")}
        out["search"] = res
    else:
        out["search"] = None
    return out
