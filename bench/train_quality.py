"""Detection quality after training on synthetic shapes: mask AP, Pearson r between the
predicted and the true IoU (target >= 0.5), and precision at K_iou of the top masks ranked
by s = confidence x predicted IoU against ranked by confidence alone.  Prints JSON.

    .venv/bin/python bench/train_quality.py --quick                  # end-to-end check, minutes
    nice -n 10 .venv/bin/python bench/train_quality.py --iters 1500 --threads 2   # CPU, longer
    python bench/train_quality.py --device cuda --preset small --iters 3000 --batch 16 --train-images 2000
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a short run that checks the pipeline")
    ap.add_argument("--preset", default="tiny", choices=["tiny", "small", "default"],
                    help="model preset (tiny: ResNet-18 FPN for CPU; small/default: R50-FPN)")
    ap.add_argument("--norm", default=None, help="GN or BN (default: the preset's)")
    ap.add_argument("--iters", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--train-images", type=int, default=400)
    ap.add_argument("--val-images", type=int, default=100)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--maskiou-loss", default="l2", choices=["l2", "relaxed"])
    ap.add_argument("--kiou", type=float, default=0.75)
    ap.add_argument("--work", default=None, help="working directory (kept; resumes training)")
    args = ap.parse_args()
    if args.quick:
        args.iters, args.train_images, args.val_images = 30, 40, 12
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(args.threads)
    from detection.data import check_coco, list_images
    from detection.infer import DetectOptions, detect
    from detection.shapes import make_shapes_dataset
    from detection.train import TrainOptions, read_metrics, train
    from orchestrator.search.evaluate import evaluate_detections

    work = Path(args.work or tempfile.mkdtemp(prefix="labelprop-quality-"))
    tr, va = work / "train", work / "val"
    if not (tr / "instances.json").is_file():
        make_shapes_dataset(tr, args.train_images, size=args.size, n_classes=args.classes, seed=1)
    if not (va / "instances.json").is_file():
        make_shapes_dataset(va, args.val_images, size=args.size, n_classes=args.classes, seed=2,
                            first_image_id=100_000)
    t0 = time.perf_counter()
    train([check_coco(tr / "instances.json", tr / "images")], work / "model",
          TrainOptions(preset=args.preset, **({"norm": args.norm} if args.norm else {}),
                       iters=args.iters, batch=args.batch, lr=args.lr,
                       device=args.device, maskiou_loss=args.maskiou_loss,
                       checkpoint_period=max(50, args.iters // 5)))
    train_s = time.perf_counter() - t0
    entries, root = list_images(va / "instances.json")
    dets = work / f"dets-{args.iters}"
    t1 = time.perf_counter()
    detect(entries, root, dets, DetectOptions(weights=str(work / "model"), device=args.device,
                                              min_score=0.05, min_area=0.0, batch_size=4),
           chunk_size=64)
    detect_s = time.perf_counter() - t1
    ev = evaluate_detections(va / "instances.json", dets / "results.json", kiou=args.kiou)
    m = read_metrics(work / "model")
    out = {"device": args.device, "preset": args.preset, "iters": args.iters, "batch": args.batch,
           "train_images": args.train_images, "val_images": args.val_images,
           "image_size": args.size, "classes": args.classes, "maskiou_loss": args.maskiou_loss,
           "train_seconds": round(train_s, 1), "detect_seconds": round(detect_s, 1),
           "loss_first": m[0].get("total_loss") if m else None,
           "loss_last": m[-1].get("total_loss") if m else None,
           "mask_AP": ev["mask"]["AP"], "mask_AP50": ev["mask"]["AP50"],
           "pearson_r_pred_iou": ev.get("pearson_r_pred_iou"),
           "detections": ev["detections"], "gt_objects": ev["gt_objects"],
           "mean_true_iou": ev["mean_true_iou"],
           "precision_at_kiou": ev["precision_at_kiou"], "work": str(work)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
