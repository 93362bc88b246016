"""Benchmark one `labelprop poll` pass with 5,000 HITs in flight and 1,000 new assignments,
against the bundled crowd server on loopback.  Prints JSON.

    python bench/poll.py                      # 5000 HITs, 1000 assignments
    python bench/poll.py --hits 500 --assignments 100 --classes 100     # a quick run

Setup (not timed as the pass): a synthetic COCO campaign with many small classes (so
that thousands of clusters are asked at once: one tree per class), 2 questions + 1 gold
per HIT, ``max_hits_in_flight = --hits``; a first pass posts the HITs; simulated workers
(real HTTP, the crowd server's worker endpoints) submit ``--assignments`` of them,
answering from ground truth.  Then one pass is timed: ListReviewableHITs (paginated),
ListAssignmentsForHIT for each reviewable HIT, gold scoring and answer recording in
batched transactions, approvals, deletion of finished HITs, and posting of the HITs that
refill the freed slots (overlays rendered, CreateHITWithHITType).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hits", type=int, default=5000)
    ap.add_argument("--assignments", type=int, default=1000)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=10)
    ap.add_argument("--keep", type=Path, default=None, help="work directory to keep (default: a temp dir)")
    ap.add_argument("--profile", type=Path, default=None, help="write cProfile stats of the measured pass here")
    args = ap.parse_args()

    from tests.crowd_campaign_helpers import TruthPolicy

    from orchestrator.crowd_server.testing import start_server
    from orchestrator.crowd.poll import poll_once

    base = args.keep or Path(tempfile.mkdtemp(prefix="lp-bench-poll-"))
    base.mkdir(parents=True, exist_ok=True)
    assets = base / "assets"
    assets.mkdir(exist_ok=True)
    srv = start_server(base / "crowd", assets_dir=assets, extra_args=("--quiet", "--sync", "normal"))
    try:
        t = time.perf_counter()
        import crowd_campaign_helpers as h

        n_images = max(50, int(args.hits * 2 / (2.5 * 3) * 1.1) + 50)
        camp = _campaign(h, base, srv, assets, args, n_images)
        setup_s = time.perf_counter() - t
        for k, v in srv.env().items():
            os.environ[k] = v
        t = time.perf_counter()
        first = poll_once(camp)
        post_s = time.perf_counter() - t
        in_flight = first["hits_in_flight"]
        per_worker = -(-args.assignments // args.workers)
        spec = ";".join(f"b{i}:accuracy=1,max_hits={per_worker},seed={i}" for i in range(args.workers))
        t = time.perf_counter()
        pool = srv.simulate(spec, TruthPolicy(camp), poll_interval=0.02)
        while sum(v["submitted"] for v in pool.stats().values()) < args.assignments:
            time.sleep(0.2)
            if time.perf_counter() - t > 1800:
                raise SystemExit("workers too slow")
        pool.stop()
        work_s = time.perf_counter() - t
        submitted = sum(v["submitted"] for v in pool.stats().values())
        prof = None
        if args.profile:
            import cProfile
            prof = cProfile.Profile()
            prof.enable()
        t = time.perf_counter()
        out = poll_once(camp)
        pass_s = time.perf_counter() - t
        if prof is not None:
            prof.disable()
            prof.dump_stats(str(args.profile))
        print(json.dumps({
            "hits_in_flight_before": in_flight, "assignments_submitted": submitted,
            "poll_pass_seconds": round(pass_s, 2), "pass_timings": out["timings"],
            "hits_processed": out["pass"].get("hits_processed", 0),
            "assignments_settled": out["pass"].get("assignments_settled", 0),
            "hits_created": out["pass"].get("hits_created", 0), "hits_disposed": out["pass"].get("hits_disposed", 0),
            "hits_in_flight_after": out["hits_in_flight"],
            "first_pass_post_seconds": round(post_s, 2), "setup_seconds": round(setup_s, 2),
            "workers_seconds": round(work_s, 2), "masks": out["masks"], "server": "crowd-server on loopback",
            "cpus": os.cpu_count()}, indent=2))
    finally:
        srv.stop()


def _campaign(h, base, srv, assets, args, n_images):
    from orchestrator.campaign.config import load_config, save_config

    camp = base / "camp"
    if (camp / "campaign.toml").exists():
        return camp
    data = base / "data"
    ds = h.coco_with_iou(data / "preds", n_images=n_images, n_categories=args.classes, objects_per_image=(2, 3),
                         preds_per_object=3, seed=1)
    h.lp("init", camp, "--seed", 1, "--backend", "server")
    cfg = load_config(camp)
    cfg.crowd.endpoint_url = srv.endpoint_url
    cfg.crowd.assets.local_dir = str(assets)
    cfg.crowd.assets.overlay_size = 64
    cfg.crowd.questions_per_hit, cfg.crowd.gold_per_hit = 2, 1
    cfg.crowd.max_hits_in_flight = args.hits
    cfg.crowd.concurrency = 8
    cfg.crowd.qualification.enabled = False
    cfg.crowd.qualification.min_gold_answers = 1
    cfg.crowd.qualification.min_percent_approved = 0
    cfg.crowd.qualification.min_hits_approved = 0
    cfg.search.kpa = 0.0
    save_config(camp, cfg)
    h.lp("ingest", camp, "--results", ds.results_json, "--features", ds.features_npy, "--images", ds.images_json,
         "--image-root", ds.image_root)
    h.lp("cluster", camp, "--jobs", "2")
    g = h.coco_with_iou(data / "gold", n_images=20, n_categories=3, seed=2)
    h.lp("gold", camp, "--results", g.results_json, "--images", g.images_json, "--image-root", g.image_root)
    return camp


if __name__ == "__main__":
    main()
