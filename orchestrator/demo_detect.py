"""The detection stage of `labelprop demo --detect`: images -> masks -> campaign, on CPU.

It drives the detection commands as a user would, in a subprocess (`labelprop shapes`,
`train`, `detect`): the orchestrator never imports the detection package.  The detected
masks get their true IoU from the generated ground truth (so simulated annotators can
answer), then go through ingest, cluster and a simulated search.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from orchestrator.errors import LabelpropError

__all__ = ["run_detection_stage"]


def _labelprop(*args, say) -> str:
    cmd = [sys.executable, "-m", "orchestrator.cli", *map(str, args)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise LabelpropError(f"demo --detect: `labelprop {' '.join(map(str, args[:1]))}` failed: {last}")
    return r.stdout


def run_detection_stage(out: Path, *, train_images: int = 120, pool_images: int = 40,
                        iters: int = 100, threads: int = 2, error_rate: float = 0.02,
                        say=lambda m: None) -> dict:
    from orchestrator.cli_campaign import cluster_campaign, init_campaign
    from orchestrator.cli_run import run_simulated
    from orchestrator.ingest import read_predictions, write_predictions
    from orchestrator.store import open_store
    from orchestrator.triplets import match_ious

    t0 = time.perf_counter()
    d = out / "detect"
    d.mkdir(parents=True, exist_ok=True)
    say(f"detection stage in {d}: synthetic images ({train_images} to train on, {pool_images} "
        f"unlabeled), PointRend R50-FPN + mask-IoU head, {iters} iterations on CPU")
    _labelprop("shapes", d / "train", "--images", train_images, "--seed", 11, say=say)
    _labelprop("shapes", d / "pool", "--images", pool_images, "--seed", 12, say=say)
    t_train = time.perf_counter()
    _labelprop("train", d / "train/instances.json", "--out", d / "model", "--preset", "small",
               "--iters", iters, "--batch", 2, "--threads", threads, "--quiet", say=say)
    t_train = time.perf_counter() - t_train
    say("detecting masks on the unlabeled images")
    _labelprop("detect", d / "pool/instances.json", "--weights", d / "model", "--out", d / "dets",
               "--min-score", "0.05", "--min-area", "100", "--threads", threads, "--quiet", say=say)
    results = json.loads((d / "dets/results.json").read_text())
    if not results:
        raise LabelpropError("demo --detect: the model detected nothing; try more iterations")
    gt = json.loads((d / "pool/instances.json").read_text())
    ious = match_ious(gt, results)
    for r, q in zip(results, ious):
        r["iou"] = float(q)           # ground truth, for the simulated annotators
    (d / "dets/results_with_iou.json").write_text(json.dumps(results))
    camp = d / "campaign"
    init_campaign(camp, name="demo-detect")
    write_predictions(open_store(camp), camp, read_predictions(
        d / "dets/results_with_iou.json", d / "dets/features.npy", d / "dets/images.json",
        d / "pool/images"))
    cluster_campaign(camp)
    say("searching the trees with simulated annotators")
    res = run_simulated(camp, error_rate=error_rate, progress=False)
    return {"train_images": train_images, "pool_images": pool_images, "iters": iters,
            "train_seconds": t_train, "detections": len(results),
            "mean_true_iou": float(ious.mean()), "good_fraction": float((ious >= 0.75).mean()),
            "gt_objects": len(gt["annotations"]), "campaign": str(camp), **{
                k: res[k] for k in ("accepted_masks", "questions", "mean_iou_accepted",
                                    "precision_accepted")},
            "seconds": time.perf_counter() - t0}
