#!/usr/bin/env python3
"""Wall time and peak memory of clustering at scale, and the two-level tree's fidelity.

Each case runs in its own Python process; its peak memory is the largest resident set of
that process and its workers together (sampled every 0.2 s from /proc), next to the
process's own ru_maxrss and the peak the memory model predicted; CPU seconds (user + system,
workers included) are printed next to wall time because on a shared machine wall time
mostly measures the other work.  Features are written to
an ``.npy`` file first and read through ``np.memmap``, as ``labelprop cluster`` reads a
campaign's.  Prints one JSON object.

    .venv/bin/python bench/cluster_scale.py                 # everything but the exact 70k case
    .venv/bin/python bench/cluster_scale.py --case exact    # exact linkage of 70,000 masks (~19 GiB)
    .venv/bin/python bench/cluster_scale.py --case one --n 1000000 --dim 64
    .venv/bin/python bench/cluster_scale.py --quick         # small sizes (CI-sized)
    .venv/bin/python bench/cluster_scale.py --case fidelity --data both --as-class 0 1000000

Cases: ``one`` (one class, two-level: 50k, 200k, 1M, 5M at 64-d; 50k, 200k, 1M at 256-d),
``classes`` (10 classes of 100k, --jobs 2), ``exact`` (one class of 70k, exact),
``fidelity`` (two-level against exact at 20k and 40k, on synthetic triplets and on a
hierarchical Gaussian mixture, each next to the noise floor: the exact tree of the same
masks after a 1% jitter; ``--as-class 1000000`` also builds the two-level tree with the
atoms and representatives a class of 1M masks gets).
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

CASE = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
import numpy as np
from clustering.build import ClusterParams, class_members, forest_from_linkages
from clustering.memory import plan_memory
from orchestrator.campaign.clusterrun import run_classes
feats = np.load({feats!r}, mmap_mode="r")
scores = np.load({scores!r})
classes = np.load({classes!r})
params = ClusterParams(exact_limit={exact_limit}, seed=0)
members = class_members(classes)
sizes = {{c: int(i.shape[0]) for c, i in members.items()}}
plan = plan_memory(sizes, feats.shape[1], params.exact_limit, params.part_size, params.n_reps, {jobs})
links = {{}}
t0 = time.perf_counter()
run_classes(feats, scores, members, params, lambda c, z: links.__setitem__(c, z), jobs={jobs})
t1 = time.perf_counter()
forest = forest_from_linkages(links, members, scores)
t2 = time.perf_counter()
print(json.dumps({{"masks": int(scores.shape[0]), "classes": len(members), "dim": int(feats.shape[1]),
    "jobs": {jobs}, "exact_limit": params.exact_limit, "part_size": params.part_size,
    "reps": params.n_reps, "atom_size": params.atom_size,
    "cluster_s": round(t1 - t0, 1), "forest_s": round(t2 - t1, 1), "wall_s": round(t2 - t0, 1),
    "nodes": forest.n_nodes, "predicted_peak_gib": round(plan.peak / 2**30, 2),
    "cpu_s": round(sum(resource.getrusage(w).ru_utime + resource.getrusage(w).ru_stime
                       for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)), 1),
    "ru_maxrss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}}))
"""

FIDELITY = r"""
import json, sys, time
sys.path.insert(0, {root!r})
import numpy as np
from clustering.build import ClusterParams, embed
from orchestrator.campaign.cluster_check import fidelity_report
from orchestrator.search.search import SearchParams
sys.path.insert(0, {bench!r})
from cluster_scale import hier_gmm
if {data!r} == "hier":
    feats, scores, ious = hier_gmm({n}, dim={dim}, seed=1)
else:
    from orchestrator.search.synth import make_triplets
    t = make_triplets({n}, classes=1, dim={dim}, seed=1)
    feats, scores, ious = t.features, t.scores, t.ious
x = embed(feats, scores)
# the exact and jittered-exact trees are the same for every variant: computed once
import hashlib, clustering.linkage as L
_exact, _memo = L.exact_linkage, {{}}
def _memo_exact(a, *args, **kw):
    key = hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()
    if key not in _memo:
        _memo[key] = _exact(a, *args, **kw)
    return _memo[key].copy()
L.exact_linkage = _memo_exact
out = {{}}
for cm in {class_masks!r}:
    t0 = time.perf_counter()
    rep = fidelity_report(x, scores, ious, ClusterParams(seed=0), SearchParams(), seeds=range({seeds}),
                          class_masks=cm or None)
    rep["wall_s"] = round(time.perf_counter() - t0, 1)
    rep["dim"] = {dim}
    rep["data"] = {data!r}
    out["own" if not cm else f"as_class_{{cm}}"] = rep
print(json.dumps(out))
"""


def hier_gmm(n: int, dim: int = 64, top: int = 20, sub: int = 10, seed: int = 1,
             top_spread: float = 6.0, sub_spread: float = 2.0):
    """Hierarchical Gaussian mixture: ``top`` clusters, each of ``sub`` sub-clusters, unit
    noise (centres N(0, top_spread^2), sub-centres around them N(0, sub_spread^2) per
    coordinate).  Each sub-cluster is good (IoUs about 0.86) with probability 0.6, else bad
    (about 0.5); a mask's score is its IoU plus noise.  Returns ``(features float32,
    scores, ious)``: data with a real hierarchy, where a tree can be faithful or not."""
    import numpy as np

    rng = np.random.default_rng(seed)
    tc = rng.normal(scale=top_spread, size=(top, dim))
    sc = (tc[:, None, :] + rng.normal(scale=sub_spread, size=(top, sub, dim))).reshape(-1, dim)
    good = rng.random(top * sub) < 0.6
    lab = rng.integers(0, top * sub, n)
    feats = (sc[lab] + rng.normal(size=(n, dim))).astype(np.float32)
    ious = np.clip(np.where(good[lab], 0.86, 0.5) + rng.normal(scale=0.08, size=n), 0.0, 1.0)
    scores = np.clip(ious + rng.normal(scale=0.1, size=n), 0.0, 1.0)
    return feats, scores.astype(np.float32), ious


def _tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
        todo.extend(kids.get(p, []))
    return total


def run_case(code: str) -> dict:
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    peak = 0
    while p.poll() is None:
        peak = max(peak, _tree_rss(p.pid))
        time.sleep(0.2)
    out, err = p.communicate()
    if p.returncode != 0:
        return {"error": (err.strip().splitlines() or [f"exit {p.returncode}"])[-1],
                "process_wall_s": round(time.perf_counter() - t0, 1)}
    res = json.loads(out.strip().splitlines()[-1])
    res["peak_rss_gib"] = round(peak / 2**30, 2)
    return res


def _data(tmp: str, n: int, dim: int, n_classes: int) -> dict:
    """Synthetic triplets (orchestrator.search.synth) of n masks in classes of equal size, on disk."""
    import numpy as np

    sys.path.insert(0, ROOT)
    from orchestrator.search.synth import make_triplets

    per = n // n_classes
    feats = np.lib.format.open_memmap(os.path.join(tmp, "f.npy"), "w+", np.float32, (per * n_classes, dim))
    scores = np.empty(per * n_classes, np.float32)
    for c in range(n_classes):
        t = make_triplets(per, classes=1, dim=dim, seed=100 + c)
        feats[c * per:(c + 1) * per] = t.features
        scores[c * per:(c + 1) * per] = t.scores
        del t
    feats.flush()
    del feats
    np.save(os.path.join(tmp, "s.npy"), scores)
    np.save(os.path.join(tmp, "c.npy"), np.repeat(np.arange(n_classes, dtype=np.int64), per))
    return {"feats": os.path.join(tmp, "f.npy"), "scores": os.path.join(tmp, "s.npy"),
            "classes": os.path.join(tmp, "c.npy")}


def one_case(n: int, dim: int, n_classes: int = 1, jobs: int = 1, exact_limit: int = 40_000) -> dict:
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        files = _data(tmp, n, dim, n_classes)
        res = run_case(CASE.format(root=ROOT, jobs=jobs, exact_limit=exact_limit, **files))
    print(json.dumps(res), file=sys.stderr, flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", choices=["all", "one", "classes", "exact", "fidelity"], default="all")
    ap.add_argument("--n", type=int, help="masks (with --case one)")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--quick", action="store_true", help="small sizes only")
    ap.add_argument("--seeds", type=int, default=5, help="sampled searches per tree (fidelity)")
    ap.add_argument("--data", choices=["triplets", "hier", "both"], default="both",
                    help="fidelity data: synthetic triplets, a hierarchical Gaussian mixture, or both")
    ap.add_argument("--sizes", type=int, nargs="*", help="fidelity sizes (default 20000 40000)")
    ap.add_argument("--as-class", type=int, nargs="*", default=[0],
                    help="fidelity: also build the two-level tree as a class of this many masks "
                         "would get it (its atoms and representatives; 0: the sample's own)")
    a = ap.parse_args()
    out: dict = {"machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg()}}
    if a.case == "one" and a.n:
        out[f"one_class_{a.n}_{a.dim}d"] = one_case(a.n, a.dim)
    elif a.case in ("all", "one"):
        sizes = [(50_000, 64), (200_000, 64)] if a.quick else \
            [(50_000, 64), (200_000, 64), (1_000_000, 64), (5_000_000, 64),
             (50_000, 256), (200_000, 256), (1_000_000, 256)]
        for n, d in sizes:
            out[f"one_class_{n}_{d}d"] = one_case(n, d)
    if a.case in ("all", "classes"):
        n = 200_000 if a.quick else 1_000_000
        out[f"10_classes_{n // 10}_jobs2"] = one_case(n, 64, n_classes=10, jobs=2)
    if a.case == "exact":
        n = 20_000 if a.quick else 70_000
        out[f"exact_{n}_64d"] = one_case(n, 64, exact_limit=n)
    if a.case in ("all", "fidelity"):
        kinds = ["triplets", "hier"] if a.data == "both" else [a.data]
        sizes = a.sizes or ([5_000] if a.quick else [20_000, 40_000])
        for kind in kinds:
            for n in sizes:
                d = 16 if kind == "triplets" else 64
                res = run_case(FIDELITY.format(root=ROOT, bench=os.path.dirname(os.path.abspath(__file__)),
                                               data=kind, n=n, dim=d, seeds=a.seeds,
                                               class_masks=list(a.as_class)))
                print(json.dumps(res)[:600], file=sys.stderr, flush=True)
                out[f"fidelity_{kind}_{n}_{d}d"] = res
    out["machine"]["load_average_end"] = os.getloadavg()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
