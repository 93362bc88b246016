#!/usr/bin/env python3
"""Wall time and peak memory of `simulate`, and of the search alone on a 1M-leaf tree.

Each case runs in its own Python process so its peak RSS (ru_maxrss) is its own.
Prints one JSON object. Exact complete linkage is quadratic in memory (the 40k-mask
single class needs ~12 GiB), so run the simulate cases on a machine with at least 16 GiB
free; ``--search-only`` runs just the search on random trees (about 1 GiB).

The search-only case builds a random binary tree over n leaves (two random clusters merged
n - 1 times, a latent quality drifting down the tree) and runs the whole search with
simulated annotators, one node at a time as in Algorithm 1, for each ``--strategies`` entry
(``heuristic``, the paper's, is the issue-8 figure: 16.5 to 20.8 s for 1M leaves before the
search was reworked).  ``search_s`` includes building the search's structures.

    .venv/bin/python bench/simulate_scale.py                    # all cases
    .venv/bin/python bench/simulate_scale.py --quick            # 10k only, and a 200k-leaf tree
    .venv/bin/python bench/simulate_scale.py --search-only --strategies heuristic value
    # before/after: the same search-only case with another checkout's code (e.g. `git archive`)
    .venv/bin/python bench/simulate_scale.py --search-only --compare /tmp/before --strategies heuristic value

``search_cpu_s`` (CPU seconds of the process) is the figure to compare on a shared machine:
wall time there also measures the other work.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SIMULATE_CASE = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
from orchestrator.search.synth import make_triplets
from orchestrator.search.triplets import save_triplets
from orchestrator.actions.simulate import run_simulation
from pathlib import Path
t = make_triplets({n}, classes={classes}, seed=1)
save_triplets({path!r}, t)
t0 = time.perf_counter()
out = run_simulation(Path({path!r}), ["heuristic"], plots=False)
wall = time.perf_counter() - t0
print(json.dumps({{"wall_s": round(wall, 2), "clustering_s": out["clustering_seconds"],
    "search_s": round(wall - out["clustering_seconds"], 2),
    "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    "accepted_masks": out["accepted_masks"], "questions": out["questions"],
    "mean_iou_accepted": out["mean_iou_accepted"]}}))
"""

TREE_CASE = r"""
import json, resource, sys, time
import numpy as np
sys.path.insert(0, {root!r})
from clustering.tree import Forest
try:
    from orchestrator.crowd.annotators import SimulatedAnnotators
    from orchestrator.search.search import SearchParams
    from orchestrator.search.simulate import run_tree_search
    import orchestrator.search.search as search_module
except ModuleNotFoundError:     # a checkout from before the package layout of issue 13 (--compare)
    from orchestrator.annotators import SimulatedAnnotators
    from orchestrator.search import SearchParams
    from orchestrator.simulate import run_tree_search
    import orchestrator.search as search_module
n = {n}
rng = np.random.default_rng(0)
# a random binary tree over n leaves: merge two random active clusters, n - 1 times,
# with a latent quality that drifts down the tree so that clusters differ in purity
t0 = time.perf_counter()
active = list(range(n)); Z = np.empty((n - 1, 4)); size = np.ones(2 * n - 1)
picks = rng.random((n - 1, 2))
for i in range(n - 1):
    k = len(active)
    a = int(picks[i, 0] * k); ia = active[a]; active[a] = active[-1]; active.pop(); k -= 1
    b = int(picks[i, 1] * k); ib = active[b]; active[b] = active[-1]; active.pop()
    size[n + i] = size[ia] + size[ib]
    Z[i] = (ia, ib, i, size[n + i])
    active.append(n + i)
f0 = Forest.from_linkage(Z, np.zeros(n))
quality = np.zeros(2 * n - 1)
for node in range(2 * n - 2, n - 1, -1):  # parents before children
    for c in (f0.left[node], f0.right[node]):
        quality[c] = np.clip(quality[node] + rng.normal(0, 0.35), -3, 3)
q = 1 / (1 + np.exp(-quality[:n] * 2))
ious = np.clip(rng.normal(0.45 + 0.5 * q, 0.08), 0, 1)
scores = np.clip(0.8 * ious + 0.12 + rng.normal(0, 0.08, n), 0, 1)
build_s = time.perf_counter() - t0
t0 = time.perf_counter()
forest = Forest.from_linkage(Z, scores)
tree_s = time.perf_counter() - t0
out = {{"leaves": n, "tree_from_linkage_s": round(tree_s, 2), "search_py": search_module.__file__}}
for strategy in {strategies!r}:
    t0 = time.perf_counter()
    c0 = time.process_time()
    try:
        params = SearchParams(strategy=strategy)
    except Exception as exc:          # a strategy this checkout does not have (--compare)
        out[strategy] = {{"error": str(exc)}}
        continue
    r = run_tree_search(forest, params, SimulatedAnnotators(ious, 0.75), ious)
    out[strategy] = {{"search_s": round(time.perf_counter() - t0, 2),
                     "search_cpu_s": round(time.process_time() - c0, 2),
                     "nodes_visited": int(r.clusters_annotated), "questions": int(r.questions),
                     "accepted_masks": int(r.accepted.sum())}}
out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
print(json.dumps(out))
"""


def run_case(code: str) -> dict:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if p.returncode != 0:
        return {"error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}",
                "process_wall_s": round(time.perf_counter() - t0, 2)}
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small cases only (CI-sized)")
    ap.add_argument("--search-only", action="store_true", help="only the search on a random tree")
    ap.add_argument("--leaves", type=int, default=None, help="leaves of the random tree (default 1M; 200k with --quick)")
    ap.add_argument("--strategies", nargs="*", default=["heuristic"],
                    help="tree strategies to time on the random tree (default: heuristic)")
    ap.add_argument("--compare", default=None, metavar="DIR",
                    help="also run the search-only case with the code of another checkout at DIR "
                         "(its orchestrator/ and clustering/), reported under \"before\"")
    args = ap.parse_args()
    cases = [(10_000, 1)] if args.quick else [(10_000, 1), (40_000, 1), (100_000, 10)]
    out: dict = {"machine": {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)},
                 "simulate": {}, "search_only": {}}
    if not args.search_only:
        with tempfile.TemporaryDirectory() as tmp:
            for n, c in cases:
                path = os.path.join(tmp, f"t{n}_{c}.npz")
                out["simulate"][f"{n}_masks_{c}_classes"] = run_case(
                    SIMULATE_CASE.format(root=ROOT, n=n, classes=c, path=path))
    leaves = args.leaves or (200_000 if args.quick else 1_000_000)
    out["search_only"][f"{leaves}_leaf_tree"] = run_case(
        TREE_CASE.format(root=ROOT, n=leaves, strategies=list(args.strategies)))
    if args.compare:
        other = os.path.abspath(args.compare)
        out["search_only"][f"{leaves}_leaf_tree_before"] = dict(
            run_case(TREE_CASE.format(root=other, n=leaves, strategies=list(args.strategies))), code=other)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
