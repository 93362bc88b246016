"""Detection throughput: images/s at batch 1 and at the best batch, with and without
mixed precision (bf16 autocast), on this machine's device; and the Ray Data path with 1
and 2 workers.  Trains a tiny model on synthetic shapes first (or uses --weights).
Prints JSON.

    .venv/bin/python bench/detect.py                    # CPU, small preset (R50-FPN), 128 px images
    .venv/bin/python bench/detect.py --weights model    # a `labelprop train` output, e.g. the tiny preset
    .venv/bin/python bench/detect.py --device cuda --images 200 --batches 1,4,8,16
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
    ap.add_argument("--weights", help="a `labelprop train` output (default: train a tiny one)")
    ap.add_argument("--images", type=int, default=24, help="images per measurement")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batches", default="1,2,4,8")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train-iters", type=int, default=20)
    ap.add_argument("--preset", default="small", choices=["tiny", "small", "default"],
                    help="preset of the model trained when no --weights is given")
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--work", default=None, help="working directory (default: a temp dir)")
    args = ap.parse_args()
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(args.threads)
    from detection.data import check_coco, list_images
    from detection.infer import DetectOptions, Predictor, detect
    from detection.shapes import make_shapes_dataset
    from detection.train import TrainOptions, train

    work = Path(args.work or tempfile.mkdtemp(prefix="labelprop-bench-detect-"))
    data = work / "images"
    if not (data / "instances.json").is_file():
        make_shapes_dataset(data, args.images, size=args.size, seed=5)
    weights = args.weights
    t_train = None
    if weights is None:
        weights = str(work / "model")
        if not (work / "model/model_final.pth").is_file():
            src = check_coco(data / "instances.json", data / "images")
            t0 = time.perf_counter()
            train([src], weights, TrainOptions(preset=args.preset, iters=args.train_iters, batch=2,
                                               device=args.device, checkpoint_period=10 ** 6))
            t_train = (time.perf_counter() - t0) / args.train_iters
    entries, root = list_images(data / "instances.json")
    from detectron2.data.detection_utils import read_image

    imgs = [read_image(e.path, format="BGR") for e in entries]
    out = {"device": args.device, "torch": torch.__version__, "threads": args.threads,
           "images": len(imgs), "image_size": args.size, "weights": weights,
           "train_seconds_per_iter_batch2": t_train, "model": {}}
    for amp in (False, True):
        p = Predictor(DetectOptions(weights=weights, device=args.device, min_score=0.0,
                                    min_area=0.0, max_per_image=20, amp=amp))
        p.predict(imgs[:2], 2)                       # warm-up
        rates = {}
        for b in [int(x) for x in args.batches.split(",")]:
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            p.predict(imgs, b)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            rates[b] = len(imgs) / (time.perf_counter() - t0)
        best = max(rates, key=rates.get)
        out["model"]["bf16" if amp else "fp32"] = {
            "images_per_s_batch1": round(rates.get(1, float("nan")), 3),
            "best_batch": best, "images_per_s_best": round(rates[best], 3),
            "by_batch": {str(k): round(v, 3) for k, v in rates.items()}}
    if not args.no_ray:
        out["ray"] = {}
        for workers in (1, 2):
            d = work / f"ray{workers}"
            t0 = time.perf_counter()
            detect(entries, root, d, DetectOptions(weights=weights, device=args.device,
                                                   min_score=0.0, min_area=0.0, max_per_image=20,
                                                   threads=args.threads),
                   chunk_size=max(1, len(entries) // 8), ray_address="local", ray_workers=workers)
            wall = time.perf_counter() - t0
            out["ray"][f"workers_{workers}"] = {"wall_s_incl_startup": round(wall, 2),
                                                "images_per_s": round(len(entries) / wall, 3)}
            for f in d.iterdir():
                f.unlink()
            d.rmdir()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
