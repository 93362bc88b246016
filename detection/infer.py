"""Detection: images in; COCO results with RLE, scores and mask-attention features out.

``detect()`` runs a trained model over a list of images in fixed chunks of images.  Each
finished chunk is written atomically to ``OUT/.parts/`` (so a killed run resumes from
the next chunk); at the end the chunks are concatenated, in image order, into

* ``results.json``: COCO results (``image_id``, ``category_id``, ``segmentation`` as
  compressed RLE, ``bbox``, ``score`` = class confidence x predicted IoU, plus
  ``class_score`` and ``pred_iou``);
* ``features.npy``: float32 (n, d), row i for result i (the mask-attention feature);
* ``images.json``: the COCO images and categories (``labelprop ingest --images``);
* ``projection.npy``: the fixed random projection used for the features;
* ``detect.json``: what was run (weights, filters, shard, counts), written last.

The same chunk function runs locally or as a Ray Data batch job (``ray_address``), so
both write identical files.  Images are batched only with images of the same padded size,
so a detection never depends on which other images share its batch.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detection.data import ImageEntry
from detection.errors import DetectionError

__all__ = ["DetectOptions", "Predictor", "parse_shard", "shard_entries", "detect",
           "resolve_weights"]

PARTS = ".parts"


@dataclass
class DetectOptions:
    weights: str
    config: str | None = None
    device: str = "cpu"
    min_score: float | None = None      # None: the model config's LABELPROP.MIN_SCORE
    min_area: float | None = None       # None: LABELPROP.MIN_BOX_AREA
    nms: float | None = None            # None: MODEL.ROI_HEADS.NMS_THRESH_TEST
    max_per_image: int | None = None    # None: TEST.DETECTIONS_PER_IMAGE
    batch_size: int = 1
    amp: bool = False                   # bf16 autocast
    threads: int | None = None
    sets: list[str] = field(default_factory=list)


def resolve_weights(weights: str, config: str | None) -> tuple[str, str, Path | None]:
    """(weights file or URL, config.yaml, directory with labelprop_model.json or None)."""
    if "://" in weights:
        if config is None:
            raise DetectionError(f"--weights {weights}: a URL needs --config CONFIG.yaml "
                                 f"(the config.yaml that `labelprop train` wrote)")
        return weights, config, Path(config).parent
    p = Path(weights)
    if p.is_dir():
        final = p / "model_final.pth"
        if final.is_file():
            w = final
        elif (p / "last_checkpoint").is_file():
            w = p / (p / "last_checkpoint").read_text().strip()
        else:
            raise DetectionError(f"{p}: no model_final.pth or last_checkpoint (not a "
                                 f"`labelprop train` output directory)")
        d = p
    elif p.is_file():
        w, d = p, p.parent
    else:
        raise DetectionError(f"{p}: no such weights file or directory")
    cfg = Path(config) if config is not None else d / "config.yaml"
    if not cfg.is_file():
        raise DetectionError(f"{cfg}: no such file (the model's config.yaml; pass --config)")
    return str(w), str(cfg), (d if (d / "labelprop_model.json").is_file() else None)


class Predictor:
    """A trained labelprop model ready for inference on BGR images."""

    def __init__(self, opts: DetectOptions):
        import torch
        from detectron2.data import transforms as T
        from detectron2.modeling import build_model

        import detection.modeling  # noqa: F401  (registers the heads)
        from detection.checkpoint import load_model_weights
        from detection.config import apply_overrides, load_cfg

        if opts.threads:
            torch.set_num_threads(int(opts.threads))
        if opts.device.startswith("cuda") and not torch.cuda.is_available():
            raise DetectionError("--device cuda: no CUDA device is available here")
        weights, cfg_path, info_dir = resolve_weights(opts.weights, opts.config)
        try:
            cfg = load_cfg(cfg_path)
        except Exception as exc:
            raise DetectionError(f"{cfg_path}: not a labelprop model config "
                                 f"({str(exc).splitlines()[0][:200]})") from None
        try:
            apply_overrides(cfg, opts.sets)
        except ValueError as exc:
            raise DetectionError(str(exc)) from None
        cfg.MODEL.DEVICE = opts.device
        cfg.MODEL.WEIGHTS = ""
        self.min_score = cfg.LABELPROP.MIN_SCORE if opts.min_score is None else opts.min_score
        self.min_area = cfg.LABELPROP.MIN_BOX_AREA if opts.min_area is None else opts.min_area
        if not 0.0 <= self.min_score <= 1.0:
            raise DetectionError(f"--min-score must be in [0, 1], got {self.min_score}")
        if opts.nms is not None:
            if not 0.0 < opts.nms <= 1.0:
                raise DetectionError(f"--nms must be in (0, 1], got {opts.nms}")
            cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST = float(opts.nms)
        if opts.max_per_image is not None:
            if opts.max_per_image < 1:
                raise DetectionError(f"--max-per-image must be >= 1, got {opts.max_per_image}")
            cfg.TEST.DETECTIONS_PER_IMAGE = int(opts.max_per_image)
        # s = confidence x IoU <= confidence: boxes below min_score can never pass
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = float(self.min_score)
        cfg.freeze()
        self.cfg = cfg
        self.weights = weights
        self.amp = bool(opts.amp)
        self.device = opts.device
        self.model = build_model(cfg)
        self.model.eval()
        load_model_weights(self.model, weights)
        self.projection = (self.model.roi_heads.feature_projection.detach().cpu().numpy()
                           .astype(np.float32))
        n = cfg.MODEL.ROI_HEADS.NUM_CLASSES
        cats = None
        if info_dir is not None:
            cats = json.loads((info_dir / "labelprop_model.json").read_text()).get("categories")
        if not cats or len(cats) != n:
            cats = [{"id": k + 1, "name": f"class {k + 1}"} for k in range(n)]
        self.categories = [{"id": int(c["id"]), "name": str(c["name"])} for c in cats]
        self.aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST],
                                        cfg.INPUT.MAX_SIZE_TEST)
        self.divisibility = self.model.backbone.size_divisibility or 1

    @property
    def feature_dim(self) -> int:
        return int(self.projection.shape[1])

    def settings(self) -> dict:
        """What determines the output (for resumption checks and detect.json)."""
        st = os.stat(self.weights) if os.path.isfile(self.weights) else None
        return {"weights": str(Path(self.weights).resolve()) if st else self.weights,
                "weights_size": st.st_size if st else None,
                "weights_mtime_ns": st.st_mtime_ns if st else None,
                "min_score": float(self.min_score), "min_area": float(self.min_area),
                "nms": float(self.cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST),
                "max_per_image": int(self.cfg.TEST.DETECTIONS_PER_IMAGE),
                "amp": self.amp, "feature_dim": self.feature_dim}

    def _prepare(self, bgr: np.ndarray):
        import torch

        h, w = bgr.shape[:2]
        img = self.aug.get_transform(bgr).apply_image(bgr)
        t = torch.as_tensor(np.ascontiguousarray(img.transpose(2, 0, 1)).astype("float32"))
        return {"image": t, "height": h, "width": w}

    def _pad_key(self, inp) -> tuple[int, int]:
        d = self.divisibility
        h, w = inp["image"].shape[-2:]
        return (-(-h // d) * d, -(-w // d) * d)

    def predict(self, images: list[np.ndarray], batch_size: int = 1) -> list:
        """Instances (on CPU) per BGR image; batches hold images of one padded size only."""
        import contextlib

        import torch

        inputs = [self._prepare(im) for im in images]
        groups: dict[tuple, list[int]] = {}
        for i, inp in enumerate(inputs):
            groups.setdefault(self._pad_key(inp), []).append(i)
        out: list = [None] * len(inputs)
        dev = "cuda" if self.device.startswith("cuda") else "cpu"
        amp = (torch.autocast(dev, dtype=torch.bfloat16) if self.amp
               else contextlib.nullcontext())
        with torch.inference_mode(), amp:
            for idx in groups.values():
                for s in range(0, len(idx), max(1, batch_size)):
                    part = idx[s:s + max(1, batch_size)]
                    res = self.model([inputs[i] for i in part])
                    for i, r in zip(part, res):
                        out[i] = r["instances"].to("cpu")
        return out

    def detect_entries(self, entries: list[ImageEntry], batch_size: int = 1
                       ) -> tuple[list[dict], np.ndarray]:
        """COCO results and feature rows for these images, in image order."""
        from detectron2.data.detection_utils import read_image
        from pycocotools import mask as mask_utils

        images = []
        for e in entries:
            try:
                images.append(read_image(e.path, format="BGR"))
            except Exception as exc:
                raise DetectionError(f"{e.path}: corrupt or unreadable image (image id {e.id}: "
                                     f"{str(exc).splitlines()[0][:120]})") from None
            if images[-1].shape[:2] != (e.height, e.width):
                raise DetectionError(f"{e.path}: image is {images[-1].shape[1]}x"
                                     f"{images[-1].shape[0]} but its entry says {e.width}x"
                                     f"{e.height} (width x height)")
        results: list[dict] = []
        feats: list[np.ndarray] = []
        for e, inst in zip(entries, self.predict(images, batch_size)):
            if len(inst) == 0:
                continue
            boxes = inst.pred_boxes.tensor.numpy().astype(np.float64)
            area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            masks = inst.pred_masks.numpy().astype(np.uint8)
            scores = inst.scores.float().numpy()
            keep = (scores >= self.min_score) & (area >= self.min_area) & \
                   (masks.reshape(len(masks), -1).any(axis=1))
            classes = inst.pred_classes.numpy()
            cls_scores = inst.class_scores.float().numpy()
            ious = inst.pred_maskiou.float().numpy()
            f = inst.pred_features.float().numpy()
            for k in np.flatnonzero(keep):
                rle = mask_utils.encode(np.asfortranarray(masks[k]))
                x0, y0, x1, y1 = boxes[k].tolist()
                results.append({
                    "image_id": int(e.id),
                    "category_id": int(self.categories[int(classes[k])]["id"]),
                    "segmentation": {"size": [int(e.height), int(e.width)],
                                     "counts": rle["counts"].decode("ascii")},
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": float(np.clip(scores[k], 0.0, 1.0)),
                    "class_score": float(cls_scores[k]),
                    "pred_iou": float(ious[k]),
                })
                feats.append(f[k])
        dim = self.feature_dim
        arr = np.asarray(feats, dtype=np.float32).reshape(len(feats), dim)
        return results, arr


# ------------------------------------------------------------------------------ sharding
def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/n"`` (0-based: 0 <= i < n) -> (i, n); None -> None."""
    if text is None:
        return None
    try:
        a, b = text.split("/")
        i, n = int(a), int(b)
    except ValueError:
        raise DetectionError(f"--shard {text}: expected i/n, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise DetectionError(f"--shard {text}: need 0 <= i < n (shards are numbered from 0)")
    return i, n


def shard_entries(entries: list, shard: tuple[int, int] | None) -> list:
    """A contiguous block of the id-sorted images, so shard outputs concatenate in order."""
    if shard is None:
        return entries
    i, n = shard
    N = len(entries)
    return entries[i * N // n:(i + 1) * N // n]


# ------------------------------------------------------------------------------ files
def _atomic_write(path: Path, write, binary: bool = True) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "wb" if binary else "w") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_json(path: Path, obj) -> None:
    _atomic_write(path, lambda fh: fh.write(json.dumps(obj)), binary=False)


def _write_npy(path: Path, arr: np.ndarray) -> None:
    _atomic_write(path, lambda fh: np.save(fh, arr))


def _fingerprint(entries: list[ImageEntry], settings: dict, shard, chunk_size: int) -> dict:
    h = hashlib.sha256()
    for e in entries:
        h.update(f"{e.id}\t{e.path}\t{e.width}\t{e.height}\n".encode())
    return {"images": len(entries), "images_sha256": h.hexdigest(), "shard": list(shard) if shard else None,
            "chunk_size": chunk_size, **settings}


def _chunks(entries: list, size: int) -> list[list]:
    return [entries[i:i + size] for i in range(0, len(entries), size)]


def _part(parts: Path, k: int) -> tuple[Path, Path]:
    return parts / f"{k:06d}.json", parts / f"{k:06d}.npy"


def _save_part(parts: Path, k: int, results: list[dict], feats: np.ndarray) -> None:
    pj, pn = _part(parts, k)
    _write_npy(pn, feats)
    _write_json(pj, results)          # written last: the chunk's commit marker


def _load_part(parts: Path, k: int, dim: int) -> tuple[list[dict], np.ndarray]:
    pj, pn = _part(parts, k)
    res = json.loads(pj.read_text())
    arr = np.load(pn)
    if arr.shape != (len(res), dim):
        raise DetectionError(f"{pn}: damaged partial output (shape {arr.shape}, expected "
                             f"({len(res)}, {dim})); delete {parts} and rerun")
    return res, arr


# ------------------------------------------------------------------------------ the run
def detect(entries: list[ImageEntry], image_root: Path, out_dir: str | os.PathLike,
           opts: DetectOptions, *, shard: tuple[int, int] | None = None,
           chunk_size: int = 64, ray_address: str | None = None, ray_workers: int = 1,
           progress=None, say=None) -> dict:
    """Run detection (resumable) and write the output files; returns the summary."""
    say = say or (lambda m: None)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DetectionError(f"{out}: exists and is not a directory")
    if chunk_size < 1:
        raise DetectionError(f"--chunk-size must be >= 1, got {chunk_size}")
    mine = shard_entries(entries, shard)
    if not mine:
        raise DetectionError(f"--shard {shard[0]}/{shard[1]}: no images in this shard "
                             f"({len(entries)} images in all)")
    predictor = Predictor(opts)
    fp = _fingerprint(mine, predictor.settings(), shard, chunk_size)
    done_file = out / "detect.json"
    if done_file.is_file():
        prev = json.loads(done_file.read_text())
        if prev.get("fingerprint") == fp:
            say(f"{out}: already done ({prev['detections']} detections); nothing to do")
            return {**prev, "already_done": True}
        raise DetectionError(f"{out}: holds a finished detection run with other images or "
                             f"settings; use a new --out")
    out.mkdir(parents=True, exist_ok=True)
    parts = out / PARTS
    parts.mkdir(exist_ok=True)
    run_file = parts / "run.json"
    if run_file.is_file():
        if json.loads(run_file.read_text()) != fp:
            raise DetectionError(f"{parts}: partial output of a run with other images or "
                                 f"settings; use a new --out (or delete {parts})")
    else:
        _write_json(run_file, fp)
    chunks = _chunks(mine, chunk_size)
    todo = [k for k in range(len(chunks)) if not _part(parts, k)[0].is_file()]
    if len(todo) < len(chunks):
        say(f"resuming: {len(chunks) - len(todo)} of {len(chunks)} chunks already done")
    done_images = sum(len(chunks[k]) for k in range(len(chunks)) if k not in set(todo))
    if progress is not None:
        progress(done_images, len(mine), 0)
    if ray_address is None:
        for k in todo:
            res, feats = predictor.detect_entries(chunks[k], opts.batch_size)
            _save_part(parts, k, res, feats)
            done_images += len(chunks[k])
            if progress is not None:
                progress(done_images, len(mine), len(res))
    else:
        del predictor.model          # the Ray workers hold the replicas
        _run_ray(chunks, todo, parts, opts, ray_address, ray_workers, progress, done_images,
                 len(mine))
    # merge, in image order
    results: list[dict] = []
    feats: list[np.ndarray] = []
    for k in range(len(chunks)):
        r, f = _load_part(parts, k, predictor.feature_dim)
        results += r
        feats.append(f)
    features = np.concatenate(feats, axis=0) if feats else np.zeros((0, predictor.feature_dim),
                                                                   np.float32)
    _write_npy(out / "features.npy", features.astype(np.float32))
    _write_npy(out / "projection.npy", predictor.projection)
    _write_json(out / "images.json", {"images": [e.coco() for e in mine],
                                      "categories": predictor.categories})
    _write_json(out / "results.json", results)
    summary = {"images": len(mine), "detections": len(results),
               "feature_dim": predictor.feature_dim, "image_root": str(image_root),
               "shard": list(shard) if shard else None, "ray": ray_address,
               "files": {k: str(out / f"{k}.{ext}") for k, ext in
                         (("results", "json"), ("features", "npy"), ("images", "json"),
                          ("projection", "npy"))},
               "fingerprint": fp}
    _write_json(done_file, summary)
    for p in sorted(parts.iterdir()):
        p.unlink()
    parts.rmdir()
    return {**summary, "already_done": False}


# ------------------------------------------------------------------------------ Ray
class RayChunkWorker:
    """One model replica of the Ray Data batch job: a chunk of images -> its outputs."""

    def __init__(self, opts: dict):
        import torch

        torch.set_num_threads(int(opts.get("threads") or 1))
        self.predictor = Predictor(DetectOptions(**opts))
        self.batch_size = int(opts.get("batch_size") or 1)

    def __call__(self, batch: dict) -> dict:
        ks, res, feats = [], [], []
        for k, text in zip(batch["chunk"], batch["entries"]):
            entries = [ImageEntry(**d) for d in json.loads(str(text))]
            r, f = self.predictor.detect_entries(entries, self.batch_size)
            ks.append(int(k))
            res.append(json.dumps(r))
            buf = __import__("io").BytesIO()
            np.save(buf, f)
            feats.append(buf.getvalue())
        return {"chunk": np.asarray(ks, np.int64), "results": np.asarray(res, dtype=object),
                "features": np.asarray(feats, dtype=object)}


def _run_ray(chunks, todo, parts: Path, opts: DetectOptions, address: str, workers: int,
             progress, done_images: int, total: int) -> None:
    import dataclasses
    import io

    try:
        import ray
    except ImportError:
        raise DetectionError("--ray needs Ray: pip install 'labelprop[ray]'") from None
    if workers < 1:
        raise DetectionError(f"--workers must be >= 1, got {workers}")
    if not todo:
        return
    started = False
    if not ray.is_initialized():
        if address == "local":
            ray.init(address="local", num_cpus=workers * max(1, int(opts.threads or 1)),
                     include_dashboard=False,
                     log_to_driver=False, configure_logging=False,
                     object_store_memory=256 * 1024 * 1024)
        else:
            try:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
            except Exception as exc:
                raise DetectionError(f"--ray {address}: cannot connect to the Ray cluster "
                                     f"({str(exc).splitlines()[0][:200]})") from None
        started = True
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        items = [{"chunk": k, "entries": json.dumps([dataclasses.asdict(e) for e in chunks[k]])}
                 for k in todo]
        opt = dataclasses.asdict(opts)
        gpu = opts.device.startswith("cuda")
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map_batches(RayChunkWorker, fn_constructor_kwargs={"opts": opt}, batch_size=1,
                            concurrency=workers, num_gpus=1 if gpu else 0,
                            num_cpus=0 if gpu else max(1, int(opts.threads or 1)))
        for b in ds.iter_batches(batch_size=1, batch_format="numpy"):
            for k, r, f in zip(b["chunk"], b["results"], b["features"]):
                res = json.loads(str(r))
                feats = np.load(io.BytesIO(bytes(f)))
                _save_part(parts, int(k), res, feats)
                done_images += len(chunks[int(k)])
                if progress is not None:
                    progress(done_images, total, len(res))
    except DetectionError:
        raise
    except Exception as exc:
        msg = str(exc)
        for line in msg.splitlines():       # surface a worker's DetectionError as one line
            if "DetectionError:" in line:
                raise DetectionError(line.split("DetectionError:", 1)[1].strip()) from None
        raise
    finally:
        if started:
            ray.shutdown()
