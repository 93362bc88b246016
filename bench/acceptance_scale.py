#!/usr/bin/env python3
"""Issue 8 item 5: the paper's fixed N_s against size-aware acceptance, on the same trees.

For each pool size (one class of synthetic triplets, ``make_triplets(n, classes=1, seed=1)``,
clustered with ``labelprop``'s default clustering: exact complete linkage up to 40,000 masks,
the faithful two-level tree of :mod:`clustering.twolevel` above), runs the search to the
end with the oracle (Q is the true cluster quality: the best any sampling rule can do on
this tree), with the paper's fixed rule, and with size-aware acceptance (one or more
``--risk-masks``), for the ``heuristic`` and ``value`` orders.  Prints one JSON object:
precision and mean IoU of the accepted masks, accepted masks, questions, masks per
question, the largest accepted cluster, and wall time per run.

Forests can be cached with ``--cache DIR`` (clustering 1M masks takes minutes); the file
name carries the clustering parameters.

    .venv/bin/python bench/acceptance_scale.py --sizes 20000 200000       # ~5 min, < 3 GiB
    .venv/bin/python bench/acceptance_scale.py --sizes 1000000 --cache /tmp/forests
    .venv/bin/python bench/acceptance_scale.py --risk-masks 50 100 200 --orders heuristic value
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from dataclasses import replace

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from clustering.build import DEFAULT_EXACT_LIMIT, ClusterParams, build_forest  # noqa: E402
from clustering.tree import Forest  # noqa: E402
from orchestrator.crowd.annotators import SimulatedAnnotators  # noqa: E402
from orchestrator.search.search import SearchParams  # noqa: E402
from orchestrator.search.simulate import run_tree_search  # noqa: E402
from orchestrator.search.synth import make_triplets  # noqa: E402

def forest_for(n: int, cp: ClusterParams, cache: str | None):
    name = f"forest_{n}_exact{cp.exact_limit}_part{cp.part_size}_atom{cp.atom_size}_reps{cp.n_reps}.npz"
    path = os.path.join(cache, name) if cache else None
    if path and os.path.exists(path):
        d = np.load(path)
        return Forest.from_npz_dict(d), d["ious"], 0.0
    t0 = time.perf_counter()
    t = make_triplets(n, classes=1, dim=16, seed=1)
    f = build_forest(t.features, t.scores, t.classes, cp)
    secs = time.perf_counter() - t0
    if path:
        os.makedirs(cache, exist_ok=True)
        np.savez(path, ious=t.ious, **f.to_npz_dict())
    return f, t.ious, secs


def summary(r, ious, wall) -> dict:
    acc = r.accepted
    n_acc = int(acc.sum())
    return {"accepted_masks": n_acc, "questions": int(r.questions),
            "precision": float((ious[acc] >= 0.75).mean()) if n_acc else None,
            "mean_iou": float(ious[acc].mean()) if n_acc else None,
            "masks_per_question": n_acc / r.questions if r.questions else None,
            "clusters_annotated": int(r.clusters_annotated),
            "largest_accepted_cluster": r.extra["largest_accepted_cluster"], "search_s": round(wall, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[20_000, 200_000, 1_000_000])
    ap.add_argument("--risk-masks", type=float, nargs="*", default=[SearchParams.risk_masks])
    ap.add_argument("--bad-margins", type=float, nargs="*", default=[SearchParams.bad_margin],
                    help="size-aware: q0 = K_a - bad margin (every risk x margin pair is run)")
    ap.add_argument("--max-answers", type=int, nargs="*", default=[SearchParams.max_answers],
                    help="size-aware: most answers one node collects (0: 10 N_s)")
    ap.add_argument("--orders", nargs="*", default=["heuristic", "value"])
    ap.add_argument("--error-rate", type=float, default=0.0)
    ap.add_argument("--exact-limit", type=int, default=DEFAULT_EXACT_LIMIT,
                    help="largest class clustered exactly (above: two levels)")
    ap.add_argument("--cache", default=None, help="directory to keep the clustered forests in")
    args = ap.parse_args()
    out: dict = {"error_rate": args.error_rate, "sizes": {}}
    for n in args.sizes:
        cp = ClusterParams(exact_limit=args.exact_limit, seed=0)
        forest, ious, cluster_s = forest_for(n, cp, args.cache)
        row: dict = {"tree": "exact" if n <= cp.exact_limit else
                     f"two-level (parts of <= {cp.part_size}, atoms of ~{cp.atom_size}, {cp.n_reps} reps)",
                     "clustering_s": round(cluster_s, 1), "runs": {}}
        for order in args.orders:
            variants = [("oracle", SearchParams(strategy=order, oracle=True)),
                        ("fixed", SearchParams(strategy=order))]
            variants += [(f"size-aware risk {rm:g}" + (f" margin {bm:g}" if len(args.bad_margins) > 1 else "")
                          + (f" cap {mx}" if len(args.max_answers) > 1 else ""),
                          SearchParams(strategy=order, acceptance="size-aware", risk_masks=rm,
                                       bad_margin=bm, max_answers=mx))
                         for rm in args.risk_masks for bm in args.bad_margins for mx in args.max_answers]
            for name, p in variants:
                ann = SimulatedAnnotators(ious, 0.75, error_rate=args.error_rate, seed=0)
                t0 = time.perf_counter()
                r = run_tree_search(forest, replace(p, seed=0), ann, ious)
                s = summary(r, ious, time.perf_counter() - t0)
                row["runs"][f"{order} {name}"] = s
                print(f"{n} {order} {name}: {json.dumps(s)}", file=sys.stderr)
        fixed_q = {o: row["runs"][f"{o} fixed"]["questions"] for o in args.orders}
        for key, s in row["runs"].items():
            o = key.split()[0]
            s["questions_vs_fixed"] = s["questions"] / fixed_q[o] if fixed_q[o] else None
            s["precision_minus_oracle"] = (s["precision"] - row["runs"][f"{o} oracle"]["precision"]
                                           if s["precision"] is not None else None)
        out["sizes"][str(n)] = row
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
