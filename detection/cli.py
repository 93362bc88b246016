"""`labelprop train`, `labelprop detect` and `labelprop shapes`: parse, call, print.

torch and detectron2 are imported inside the commands, so ``labelprop --help`` stays
instant and a machine without the ``detect`` extra runs every other command; a detection
command there says in one line how to install it.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from detection.errors import DetectionError

INSTALL_HINT = ("this command needs torch and detectron2: pip install 'labelprop[detect]' "
                "-c scripts/constraints-detect.txt && python scripts/install_detectron2.py "
                "(from a labelprop checkout; `make test` does both)")


def _fail(msg: str) -> None:
    typer.secho(f"labelprop: error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _say(msg: str) -> None:
    typer.secho(f"labelprop: {msg}", err=True, fg=typer.colors.BRIGHT_BLACK)


def _need_torch(threads: Optional[int]) -> None:
    """Import torch + detectron2 quietly (one thread policy for shared CPUs) or exit."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        import torch
        import detectron2  # noqa: F401
        from detectron2.projects import point_rend  # noqa: F401
    except ImportError as exc:
        _fail(f"{INSTALL_HINT} [{exc}]")
    import logging

    logging.getLogger("torch").setLevel(logging.ERROR)
    if threads:
        torch.set_num_threads(int(threads))


def _progress(what: str, unit: str):
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    prog = Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    console=Console(stderr=True), transient=False)
    return prog


def _default_root(data: Path) -> Path:
    sub = data.parent / "images"
    return sub if sub.is_dir() else data.parent


TRAIN_HELP = """Train PointRend Mask R-CNN (R50-FPN; R18 with --preset tiny) with the mask-IoU head on COCO instances.

Writes OUT/config.yaml, checkpoints, model_final.pth, metrics.json (every loss, one JSON line per logged iteration) and log.txt. Run the same command again after an interruption (even a kill) and it resumes from the last checkpoint; once finished it does nothing. Several DATA files (same categories) are trained on together, e.g. the initial set plus masks accepted in a campaign (`labelprop export --coco`). Any detectron2 config key can be set with --set KEY=VALUE.

From random weights the model uses GroupNorm (--norm GN) with no frozen stages; to fine-tune detectron2's own PointRend weights use --norm FrozenBN --init-weights PATH_OR_URL.

Examples:

  labelprop shapes data/train --images 200

  labelprop train data/train/instances.json --out m --preset tiny --iters 300

  labelprop train init.json accepted.json --image-root images/ \\
      --image-root pool/ --out model2 --set SOLVER.BASE_LR=0.005

  labelprop train coco.json --out m --norm FrozenBN \\
      --init-weights https://.../model_final.pkl --device cuda
"""


def train_cmd(
    data: List[Path] = typer.Argument(..., help="COCO instances JSON file(s) (RLE or polygons).",
                                      show_default=False),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (weights, config, logs)."),
    image_root: Optional[List[Path]] = typer.Option(None, "--image-root", help="Image directory "
                                                    "of each DATA file (one for all, or one per "
                                                    "file; default: DATA's images/ folder)."),
    preset: str = typer.Option("default", "--preset", help="default (R50-FPN, COCO-sized images), "
                               "small (R50-FPN, about 128 px images, light RPN/RoI settings) or "
                               "tiny (R18 with a narrow FPN and heads, 128 px, AdamW: minutes "
                               "on a CPU)."),
    norm: str = typer.Option("GN", "--norm", help="GN, BN, SyncBN or FrozenBN (pretrained only)."),
    iters: Optional[int] = typer.Option(None, "--iters", help="SOLVER.MAX_ITER (LR drops at 2/3 "
                                        "and 8/9; tiny: cosine decay to it)."),
    batch: Optional[int] = typer.Option(None, "--batch", help="SOLVER.IMS_PER_BATCH."),
    lr: Optional[float] = typer.Option(None, "--lr", help="SOLVER.BASE_LR."),
    checkpoint_period: Optional[int] = typer.Option(None, "--checkpoint-period",
                                                    help="Iterations between checkpoints."),
    init_weights: Optional[str] = typer.Option(None, "--init-weights", help="Pretrained weights "
                                               "(path or URL; .pth or detectron2 .pkl) to start from."),
    maskiou_loss: Optional[str] = typer.Option(None, "--maskiou-loss", help="l2 (Mask Scoring "
                                               "R-CNN, default) or relaxed (relaxed IoU loss)."),
    sets: Optional[List[str]] = typer.Option(None, "--set", help="Any detectron2 config KEY=VALUE."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads (default: torch's)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    _need_torch(threads)
    from detection.data import check_coco
    from detection.train import TrainOptions, read_metrics, train

    roots = list(image_root or [])
    if roots and len(roots) not in (1, len(data)):
        _fail(f"--image-root: give one, or one per DATA file ({len(data)})")
    try:
        sources = []
        for i, d in enumerate(data):
            root = roots[0] if len(roots) == 1 else (roots[i] if roots else _default_root(d))
            sources.append(check_coco(d, root))
        opts = TrainOptions(preset=preset, norm=norm, device=device, iters=iters, batch=batch,
                            lr=lr, checkpoint_period=checkpoint_period, init_weights=init_weights,
                            sets=sets, maskiou_loss=maskiou_loss)
        prog = None if quiet else _progress("training", "it")
        task = None

        def progress(i, n, losses):
            nonlocal task
            if prog is None:
                return
            if task is None:
                prog.start()
                task = prog.add_task("train", total=n, info="")
            info = f"loss {losses.get('total_loss', float('nan')):.3f}"
            prog.update(task, completed=min(i, n), total=n, info=info)

        try:
            res = train(sources, out, opts, progress=progress, say=_say)
        finally:
            if prog is not None and task is not None:
                prog.stop()
    except DetectionError as exc:
        _fail(str(exc))
    if res.get("already_done"):
        typer.echo(f"{out}: already trained to iteration {res['iterations']}; nothing to do "
                   f"(weights: {res['weights']})")
        return
    m = read_metrics(out)
    first, last = (m[0], m[-1]) if m else ({}, {})
    typer.echo(f"trained {out} to iteration {res['iterations']}"
               + (f" (resumed from {res['resumed_from']})" if res["resumed_from"] else "")
               + (f": total_loss {first.get('total_loss', float('nan')):.3f} -> "
                  f"{last.get('total_loss', float('nan')):.3f}" if m else ""))
    typer.echo(f"weights: {res['weights']}   losses: {out / 'metrics.json'}")


DETECT_HELP = """Detect instance masks with a trained model: COCO results (RLE), scores s and mask-attention features.

IMAGES is a directory (every image below it) or a COCO JSON (its images; --image-root defaults to the JSON's folder, or its images/ subfolder). Writes OUT/results.json (score = class confidence x predicted IoU, plus class_score and pred_iou), OUT/features.npy (row i for result i), OUT/images.json and OUT/projection.npy: exactly what `labelprop ingest` takes. Keeps, as the paper, detections after NMS with score >= 0.2 and box area >= 1000 px (--min-score, --min-area, --nms, --max-per-image; defaults from the model's config). Resumable: rerun the same command after an interruption. --shard i/n (0-based) processes the i-th of n contiguous blocks of the id-sorted images, for separate machines; --ray ADDRESS runs the same inference as a Ray Data batch job (local: a Ray instance on this machine; auto or host:port: an existing cluster), one model replica per --workers.

Examples:

  labelprop detect data/pool/instances.json --weights model --out dets

  labelprop detect photos/ --weights model/model_final.pth --out dets \\
      --batch-size 4 --device cuda

  labelprop detect pool.json --weights model --out dets-0 --shard 0/4

  labelprop detect pool.json --weights model --out dets --ray auto \\
      --workers 8 --device cuda
"""


def detect_cmd(
    images: Path = typer.Argument(..., help="Image directory or COCO JSON.", show_default=False),
    weights: str = typer.Option(..., "--weights", "-w", help="`labelprop train` output directory, "
                                "a .pth in it, or a URL (with --config)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory."),
    image_root: Optional[Path] = typer.Option(None, "--image-root", help="Image root of a COCO JSON input."),
    config: Optional[str] = typer.Option(None, "--config", help="The model's config.yaml (default: beside the weights)."),
    min_score: Optional[float] = typer.Option(None, "--min-score", help="Keep s >= this (paper: 0.2)."),
    min_area: Optional[float] = typer.Option(None, "--min-area", help="Keep box area >= this many pixels (paper: 1000)."),
    nms: Optional[float] = typer.Option(None, "--nms", help="NMS IoU threshold (default 0.5)."),
    max_per_image: Optional[int] = typer.Option(None, "--max-per-image", help="At most this many detections per image."),
    batch_size: int = typer.Option(1, "--batch-size", "-b", help="Images per forward pass."),
    chunk_size: int = typer.Option(64, "--chunk-size", help="Images per resumable output chunk."),
    shard: Optional[str] = typer.Option(None, "--shard", help="i/n: only the i-th (0-based) of n blocks of images."),
    ray: Optional[str] = typer.Option(None, "--ray", help="Run as a Ray Data job: local, auto, or a cluster address."),
    workers: int = typer.Option(1, "--workers", help="Model replicas with --ray (one per GPU or CPU worker)."),
    amp: bool = typer.Option(False, "--amp", help="bfloat16 autocast (CPU or GPU)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads per process."),
    sets: Optional[List[str]] = typer.Option(None, "--set", help="Config KEY=VALUE for inference."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    try:
        from detection.infer import parse_shard
        shard_t = parse_shard(shard)          # bad --shard fails before torch is imported
    except DetectionError as exc:
        _fail(str(exc))
    _need_torch(threads)
    from detection.data import list_images
    from detection.infer import DetectOptions, detect

    prog = None if quiet else _progress("detecting", "img")
    task = None
    t0 = time.perf_counter()
    dets = 0

    def progress(done, total, n):
        nonlocal task, dets
        dets += n
        if prog is None:
            return
        if task is None:
            prog.start()
            task = prog.add_task("detect", total=total, info="", completed=done)
            return
        rate = done / max(time.perf_counter() - t0, 1e-9)
        prog.update(task, completed=done, info=f"{rate:.1f} img/s, {dets} masks")

    try:
        entries, root = list_images(images, image_root)
        opts = DetectOptions(weights=weights, config=config, device=device, min_score=min_score,
                             min_area=min_area, nms=nms, max_per_image=max_per_image,
                             batch_size=batch_size, amp=amp, threads=threads, sets=list(sets or []))
        try:
            res = detect(entries, root, out, opts, shard=shard_t, chunk_size=chunk_size,
                         ray_address=ray, ray_workers=workers, progress=progress, say=_say)
        finally:
            if prog is not None and task is not None:
                prog.stop()
    except DetectionError as exc:
        _fail(str(exc))
    wall = time.perf_counter() - t0
    if not res.get("already_done"):
        typer.echo(f"{res['detections']} masks on {res['images']} images in {wall:.1f} s "
                   f"({res['images'] / max(wall, 1e-9):.2f} images/s); features: "
                   f"{res['feature_dim']}-d")
    typer.echo(f"wrote {out}/results.json, features.npy, images.json, projection.npy")
    typer.echo(f"next: labelprop ingest CAMPAIGN --results {out}/results.json --features "
               f"{out}/features.npy --images {out}/images.json --image-root {root}")


SHAPES_HELP = """Write a synthetic instance-segmentation dataset as COCO (offline, no torch).

Shapes of several classes (disc, box, bar, ring, diamond, triangle), each with its own texture family, on textured backgrounds, with occlusion, scale changes (5x), rotation, pixel noise and blur. Writes OUT/images/*.png and OUT/instances.json (RLE masks of the visible parts). Same seed, same files.

Examples:

  labelprop shapes data/train --images 200

  labelprop shapes data/pool --images 500 --seed 2 --size 128 --classes 4
"""


def shapes_cmd(
    out: Path = typer.Argument(..., help="Output directory.", show_default=False),
    images: int = typer.Option(100, "--images", "-n", help="Number of images."),
    size: int = typer.Option(128, "--size", help="Longer image side in pixels."),
    classes: int = typer.Option(4, "--classes", help="Number of shape classes (1-6)."),
    max_objects: int = typer.Option(4, "--max-objects", help="Objects per image: 1 to this."),
    noise: float = typer.Option(8.0, "--noise", help="Pixel noise standard deviation."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    first_id: int = typer.Option(1, "--first-id", help="Id of the first image."),
) -> None:
    from detection.shapes import make_shapes_dataset

    if (out / "instances.json").exists():
        _fail(f"{out}: already holds a dataset (instances.json); choose another directory")
    try:
        info = make_shapes_dataset(out, images, size=size, n_classes=classes,
                                   objects=(1, max(1, max_objects)), noise=noise, seed=seed,
                                   first_image_id=first_id)
    except ValueError as exc:
        _fail(str(exc))
    sys.stdout.write(json.dumps(info, indent=2) + "\n")


def register(app: typer.Typer) -> None:
    app.command("shapes", help=SHAPES_HELP)(shapes_cmd)
    app.command("train", help=TRAIN_HELP)(train_cmd)
    app.command("detect", help=DETECT_HELP)(detect_cmd)
