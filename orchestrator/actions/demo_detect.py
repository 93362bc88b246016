"""The detection stage of `labelprop demo --detect`: images -> masks -> campaign, on CPU.

It drives the detection commands as a user would, in a subprocess (`labelprop shapes`,
`train`, `detect`): the orchestrator never imports the detection package.  The model is
the ``tiny`` preset (PointRend Mask R-CNN with the mask-IoU head on a ResNet-18 FPN),
trained from random weights on generated images.  The detected masks are scored against
the generated ground truth (mask AP, Pearson r of predicted vs true IoU), get their true
IoU (so simulated annotators can answer), then go through ingest, cluster and a simulated
search.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from orchestrator.actions.simulate import DEMO_ERROR_RATE
from orchestrator.errors import LabelpropError
from orchestrator.search.search import SearchParams as _SP

__all__ = ["run_detection_stage", "DEMO_DETECT_ITERS"]

DEMO_DETECT_ITERS = 300        # training iterations of the demo's model (batch 4)


def _labelprop(*args, show_progress: bool = False) -> str:
    """Run a labelprop command; with ``show_progress`` its progress bar (stderr) shows."""
    cmd = [sys.executable, "-m", "orchestrator.cli", *map(str, args)]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True,
                       stderr=None if show_progress else subprocess.PIPE)
    if r.returncode != 0:
        if show_progress:
            raise LabelpropError(f"demo --detect: `labelprop {args[0]}` failed (its error is above)")
        last = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise LabelpropError(f"demo --detect: `labelprop {args[0]}` failed: {last}")
    return r.stdout


def run_detection_stage(out: Path, *, train_images: int = 200, pool_images: int = 60,
                        heldout_images: int = 40, iters: int = DEMO_DETECT_ITERS, threads: int = 2,
                        error_rate: float = DEMO_ERROR_RATE, say=lambda m: None) -> dict:
    from orchestrator.actions.campaign import cluster_campaign, init_campaign
    from orchestrator.actions.run import run_simulated
    from orchestrator.search.evaluate import evaluate_detections
    from orchestrator.campaign.ingest import read_predictions, write_predictions
    from orchestrator.campaign.store import open_store
    from orchestrator.search.triplets import match_ious

    t0 = time.perf_counter()
    d = out / "detect"
    d.mkdir(parents=True, exist_ok=True)
    say(f"detection stage in {d}: synthetic images, {train_images} to train on, {heldout_images} "
        f"held out to calibrate K_pr/K_pa, {pool_images} unlabeled ones to annotate")
    _labelprop("shapes", d / "train", "--images", train_images, "--seed", 11)
    _labelprop("shapes", d / "pool", "--images", pool_images, "--seed", 12)
    _labelprop("shapes", d / "heldout", "--images", heldout_images, "--seed", 13)
    say(f"training PointRend + mask-IoU head (tiny preset: ResNet-18 FPN) from random weights, "
        f"{iters} iterations on CPU (losses: {d / 'model/metrics.json'})")
    t_train = time.perf_counter()
    _labelprop("train", d / "train/instances.json", "--out", d / "model", "--preset", "tiny",
               "--iters", iters, "--threads", threads, show_progress=True)
    t_train = time.perf_counter() - t_train
    say("detecting masks on the unlabeled images")
    t_det = time.perf_counter()
    _labelprop("detect", d / "pool/instances.json", "--weights", d / "model", "--out", d / "dets",
               "--threads", threads, show_progress=True)   # the paper's filters: s >= 0.2, NMS
    t_det = time.perf_counter() - t_det
    _labelprop("detect", d / "heldout/instances.json", "--weights", d / "model", "--out",
               d / "heldout_dets", "--threads", threads, "--quiet")
    results = json.loads((d / "dets/results.json").read_text())
    if not results:
        raise LabelpropError("demo --detect: the model detected nothing; train longer "
                             "(--detect-iters)")
    ev = evaluate_detections(d / "pool/instances.json", d / "dets/results.json")
    gt = json.loads((d / "pool/instances.json").read_text())
    ious = match_ious(gt, results)
    for r, q in zip(results, ious):
        r["iou"] = float(q)           # ground truth, for the simulated annotators
    (d / "dets/results_with_iou.json").write_text(json.dumps(results))
    camp = d / "campaign"
    say(f"campaign in {camp}: init, ingest the detections, cluster, search with simulated "
        f"annotators")
    init_campaign(camp, name="demo-detect")
    # the paper's Sec. 4.3: K_pr and K_pa learned for this detector on held-out ground truth
    _labelprop("calibrate", "--heldout", d / "heldout/instances.json", "--results",
               d / "heldout_dets/results.json", "--features", d / "heldout_dets/features.npy",
               "--write", camp)
    kpr, kpa = _thresholds(camp)
    write_predictions(open_store(camp), camp, read_predictions(
        d / "dets/results_with_iou.json", d / "dets/features.npy", d / "dets/images.json",
        d / "pool/images"))
    cluster_campaign(camp)
    res = run_simulated(camp, error_rate=error_rate)
    return {"train_images": train_images, "pool_images": pool_images, "iters": iters,
            "train_seconds": t_train, "detect_seconds": t_det, "detections": len(results),
            "gt_objects": ev["gt_objects"], "mask_ap": ev["mask"]["AP"],
            "mask_ap50": ev["mask"]["AP50"], "pearson_r": ev.get("pearson_r_pred_iou"),
            "mean_true_iou": float(ious.mean()), "good_fraction": float((ious >= _SP.kiou).mean()),
            "kpr": kpr, "kpa": kpa, "kiou": _SP.kiou, "heldout_images": heldout_images,
            "campaign": str(camp), **{k: res[k] for k in ("accepted_masks", "questions",
                                                          "mean_iou_accepted",
                                                          "precision_accepted")},
            "seconds": time.perf_counter() - t0}


def _thresholds(camp: Path) -> tuple[float, float]:
    import tomllib

    search = tomllib.loads((camp / "campaign.toml").read_text()).get("search", {})
    return float(search.get("kpr", 0.0)), float(search.get("kpa", 0.0))
