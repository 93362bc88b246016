"""``labelprop ingest``: bring mask predictions (or simulation triplets) into a campaign.

Two inputs (DESIGN.md section 4):

* COCO predictions: a results JSON (``image_id``, ``category_id``, ``segmentation`` as RLE
  with ``counts`` a str or a list, ``bbox``, ``score``; an optional ``iou`` in [0, 1] is
  kept as ground truth), ``features.npy`` with row i for result i, the COCO images JSON
  (a dataset dict with ``images`` and ``categories``, or a bare list of images) and the
  image root.
* Simulation triplets (``.npz``, :mod:`orchestrator.search.triplets`): masks without RLE.

Everything is validated before anything is written; each problem is one
:class:`LabelpropError` line naming the file and the index of the bad entry.  Then the
arrays (``features.npy``, ``scores.npy``, ``classes.npy``, ``ious.npy`` when known) are
written atomically and registered, and Category / Image / Mask rows are inserted, all
in one transaction.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import delete
from sqlalchemy.engine import Engine

from orchestrator.campaign.arrays import save_array
from orchestrator.errors import LabelpropError
from orchestrator.campaign.store import (Answer, ArrayFile, Category, Image, Mask, Meta, Node, Question,
                                bulk_insert, count_rows, log_event, transaction)

__all__ = ["Predictions", "read_predictions", "read_triplet_predictions", "write_predictions",
           "rle_counts_from_string", "validate_rle", "load_json", "read_images"]


@dataclass(eq=False)
class Predictions:
    """Validated masks ready to be written (``rles``/``bboxes``/``image_ids`` None for
    triplets)."""

    features: np.ndarray            # float32 (n, d)
    scores: np.ndarray              # float32 (n,)
    classes: np.ndarray             # int64 (n,) = category ids
    categories: list[dict]          # {"id", "name"}
    ious: np.ndarray | None = None  # float32 (n,) or None
    images: list[dict] | None = None
    image_ids: np.ndarray | None = None
    bboxes: list[str] | None = None   # JSON text per mask
    rles: list[str] | None = None     # JSON text per mask
    kind: str = "coco"              # "coco" | "triplets"
    sources: dict | None = None

    @property
    def n(self) -> int:
        return int(self.scores.shape[0])


# ----------------------------------------------------------------------------------- RLE
def rle_counts_from_string(s: str) -> np.ndarray | None:
    """Run lengths of a COCO compressed RLE string (pycocotools' ``rleFrString``), or None
    when the string is malformed.  Pure numpy, so a bad string is never handed to C code
    that would write past the mask buffer."""
    try:
        b = np.frombuffer(s.encode("ascii"), np.uint8).astype(np.int64) - 48
    except UnicodeEncodeError:
        return None
    if b.size == 0:
        return np.zeros(0, np.int64)
    if b.min() < 0 or b.max() > 63:
        return None
    more = (b & 0x20) != 0
    if more[-1]:
        return None                      # truncated last value
    ends = np.flatnonzero(~more)
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    if lengths.max() > 12:               # would overflow 64 bits
        return None
    pos = np.arange(b.size) - np.repeat(starts, lengths)
    x = np.add.reduceat((b & 0x1F) << (5 * pos), starts)
    neg = (b[ends] & 0x10) != 0
    x = np.where(neg, x | (np.int64(-1) << (5 * lengths)), x)
    counts = x.copy()
    if counts.size > 2:
        counts[2::2] = np.cumsum(x[2::2])
    if counts.size > 3:
        counts[3::2] = x[1] + np.cumsum(x[3::2])
    return counts


def validate_rle(seg, where: str) -> tuple[dict, tuple[int, int]]:
    """Check one COCO RLE; return it in compressed form (``counts`` str) and its (h, w)."""
    if not isinstance(seg, dict) or "size" not in seg or "counts" not in seg:
        raise LabelpropError(f"{where}: segmentation must be an RLE dict with 'size' and "
                             f"'counts' (polygons are not supported)")
    size = seg["size"]
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        raise LabelpropError(f"{where}: segmentation size must be [height, width] of positive "
                             f"integers, got {size!r}")
    h, w = int(size[0]), int(size[1])
    counts = seg["counts"]
    if isinstance(counts, str):
        runs = rle_counts_from_string(counts)
        if runs is None:
            raise LabelpropError(f"{where}: segmentation counts is not a valid COCO RLE string")
        compressed = {"size": [h, w], "counts": counts}
    elif isinstance(counts, list):
        try:
            runs = np.asarray(counts)
        except (ValueError, OverflowError):
            runs = np.asarray([], dtype=object)
        if runs.ndim != 1 or (runs.size and runs.dtype.kind not in "iu"):
            raise LabelpropError(f"{where}: segmentation counts list must hold integers")
        runs = runs.astype(np.int64)
        compressed = None
    else:
        raise LabelpropError(f"{where}: segmentation counts must be a str or a list of ints, "
                             f"got {type(counts).__name__}")
    if runs.size and (runs.min() < 0 or runs.max() >= 2 ** 32):
        raise LabelpropError(f"{where}: segmentation RLE has a negative or oversized run length")
    total = int(runs.sum())
    if total != h * w:
        raise LabelpropError(f"{where}: segmentation RLE covers {total} pixels but its size "
                             f"{h}x{w} has {h * w}")
    if compressed is None:
        from pycocotools import mask as mask_utils

        r = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
        compressed = {"size": [h, w], "counts": r["counts"].decode("ascii")}
    return compressed, (h, w)


# ------------------------------------------------------------------------------ readers
def load_json(path: Path, what: str):
    if not path.is_file():
        raise LabelpropError(f"{path}: no such file ({what})")
    try:
        with open(path, "rb") as fh:
            return json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LabelpropError(f"{path}: not valid JSON ({str(exc).splitlines()[0]})") from None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_images(path: Path) -> tuple[list[dict], list[dict] | None]:
    data = load_json(path, "COCO images JSON")
    if isinstance(data, dict):
        if "images" not in data:
            raise LabelpropError(f"{path}: a COCO dataset dict needs an 'images' list")
        images, cats = data["images"], data.get("categories")
    elif isinstance(data, list):
        images, cats = data, None
    else:
        raise LabelpropError(f"{path}: expected a COCO dataset dict or a list of images")
    if not isinstance(images, list) or not images:
        raise LabelpropError(f"{path}: 'images' must be a non-empty list")
    out, seen = [], set()
    for i, im in enumerate(images):
        if not isinstance(im, dict):
            raise LabelpropError(f"{path}: image {i} is not an object")
        for k in ("id", "width", "height"):
            if not _is_int(im.get(k)):
                raise LabelpropError(f"{path}: image {i}: '{k}' must be an integer, got "
                                     f"{im.get(k)!r}")
        if im["width"] <= 0 or im["height"] <= 0:
            raise LabelpropError(f"{path}: image {i}: width and height must be positive")
        fn = im.get("file_name")
        if not isinstance(fn, str) or not fn:
            raise LabelpropError(f"{path}: image {i}: 'file_name' must be a non-empty string")
        if im["id"] in seen:
            raise LabelpropError(f"{path}: image {i}: duplicate image id {im['id']}")
        seen.add(im["id"])
        out.append({"id": int(im["id"]), "file_name": fn, "width": int(im["width"]),
                    "height": int(im["height"])})
    if cats is None:
        return out, None
    if not isinstance(cats, list):
        raise LabelpropError(f"{path}: 'categories' must be a list")
    cout, cseen = [], set()
    for i, c in enumerate(cats):
        if not isinstance(c, dict) or not _is_int(c.get("id")) or not isinstance(c.get("name"), str):
            raise LabelpropError(f"{path}: category {i} needs an integer 'id' and a string 'name'")
        if c["id"] in cseen:
            raise LabelpropError(f"{path}: category {i}: duplicate category id {c['id']}")
        cseen.add(c["id"])
        cout.append({"id": int(c["id"]), "name": c["name"]})
    return out, cout


def _load_features(path: Path, n: int, results_path: Path) -> np.ndarray:
    if not path.is_file():
        raise LabelpropError(f"{path}: no such file (features)")
    try:
        f = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        raise LabelpropError(f"{path}: not a readable .npy array ({str(exc).splitlines()[0]})") \
            from None
    if not isinstance(f, np.ndarray) or f.ndim != 2:
        raise LabelpropError(f"{path}: features must be a 2-D array (n, d), got shape "
                             f"{getattr(f, 'shape', None)}")
    if f.dtype.kind not in "fiu":
        raise LabelpropError(f"{path}: features must be numeric, got dtype {f.dtype}")
    if f.shape[0] != n:
        raise LabelpropError(f"{path}: has {f.shape[0]} feature rows but {results_path} has "
                             f"{n} predictions (need one row per prediction)")
    if f.shape[1] == 0:
        raise LabelpropError(f"{path}: features have 0 dimensions")
    out = np.empty(f.shape, np.float32)
    step = max(1, (1 << 24) // max(f.shape[1], 1))
    for i in range(0, n, step):                  # chunked: works on memory-mapped files
        part = np.asarray(f[i:i + step], dtype=np.float32)
        bad = ~np.isfinite(part).all(axis=1)
        if bad.any():
            raise LabelpropError(f"{path}: feature row {i + int(np.flatnonzero(bad)[0])} has "
                                 f"NaN or inf values")
        out[i:i + step] = part
    return out


def read_predictions(results: str | os.PathLike, features: str | os.PathLike,
                     images: str | os.PathLike, image_root: str | os.PathLike) -> Predictions:
    """Read and validate COCO predictions; raise a one-line LabelpropError on any problem."""
    results, features, images, image_root = map(Path, (results, features, images, image_root))
    imgs, cats = read_images(images)
    by_id = {im["id"]: im for im in imgs}
    if not image_root.is_dir():
        raise LabelpropError(f"{image_root}: image root is not a directory")
    for im in imgs:
        if not (image_root / im["file_name"]).is_file():
            raise LabelpropError(f"{image_root / im['file_name']}: image file not found (image id "
                                 f"{im['id']} of {images})")
    res = load_json(results, "COCO results JSON")
    if not isinstance(res, list):
        raise LabelpropError(f"{results}: expected a list of COCO results")
    if not res:
        raise LabelpropError(f"{results}: contains no predictions")
    n = len(res)
    cat_ids = {c["id"] for c in cats} if cats is not None else None
    image_ids = np.empty(n, np.int64)
    classes = np.empty(n, np.int64)
    scores = np.empty(n, np.float32)
    ious = np.full(n, np.nan, np.float32)
    bboxes, rles = [], []
    for i, r in enumerate(res):
        where = f"{results}: result {i}"
        if not isinstance(r, dict):
            raise LabelpropError(f"{where}: not an object")
        iid, cid, sc = r.get("image_id"), r.get("category_id"), r.get("score")
        if not _is_int(iid):
            raise LabelpropError(f"{where}: image_id must be an integer, got {iid!r}")
        if iid not in by_id:
            raise LabelpropError(f"{where}: image_id {iid} is not in {images}")
        if not _is_int(cid):
            raise LabelpropError(f"{where}: category_id must be an integer, got {cid!r}")
        if cat_ids is not None and cid not in cat_ids:
            raise LabelpropError(f"{where}: category_id {cid} is not in {images}")
        if not _is_num(sc) or not 0.0 <= sc <= 1.0:
            raise LabelpropError(f"{where}: score must be a number in [0, 1], got {sc!r}")
        if "iou" in r and r["iou"] is not None:
            if not _is_num(r["iou"]) or not 0.0 <= r["iou"] <= 1.0:
                raise LabelpropError(f"{where}: iou must be a number in [0, 1], got {r['iou']!r}")
            ious[i] = r["iou"]
        rle, (h, w) = validate_rle(r.get("segmentation"), where)
        im = by_id[iid]
        if (h, w) != (im["height"], im["width"]):
            raise LabelpropError(f"{where}: segmentation size {h}x{w} (height x width) differs "
                                 f"from image {iid}'s {im['height']}x{im['width']} in {images}")
        bb = r.get("bbox")
        if bb is None:
            from pycocotools import mask as mask_utils

            bb = mask_utils.toBbox({"size": [h, w], "counts": rle["counts"].encode()}).tolist()
        elif not (isinstance(bb, list) and len(bb) == 4 and all(_is_num(v) for v in bb)):
            raise LabelpropError(f"{where}: bbox must be [x, y, width, height] numbers, got {bb!r}")
        image_ids[i], classes[i], scores[i] = iid, cid, sc
        bboxes.append(json.dumps([float(v) for v in bb]))
        rles.append(json.dumps(rle))
    feats = _load_features(features, n, results)
    if cats is None:
        cats = [{"id": int(c), "name": f"category {int(c)}"} for c in np.unique(classes)]
    have_iou = ~np.isnan(ious)
    if have_iou.any() and not have_iou.all():
        first = int(np.flatnonzero(~have_iou)[0])
        raise LabelpropError(f"{results}: result {first} lacks 'iou' while others have it "
                             f"(give it for every result or for none)")
    return Predictions(features=feats, scores=scores, classes=classes, categories=cats,
                       ious=ious if have_iou.all() else None, images=imgs, image_ids=image_ids,
                       bboxes=bboxes, rles=rles, kind="coco",
                       sources={"results": str(results), "features": str(features),
                                "images": str(images), "image_root": str(image_root)})


def read_triplet_predictions(path: str | os.PathLike) -> Predictions:
    """Read a simulation triplets ``.npz`` (``ious`` optional) as masks without RLE."""
    from orchestrator.search.triplets import load_triplets

    t = load_triplets(path, require_ious=False)
    cats = [{"id": int(c), "name": f"class {int(c)}"} for c in np.unique(t.classes)]
    return Predictions(features=np.asarray(t.features, np.float32),
                       scores=np.asarray(t.scores, np.float32),
                       classes=np.asarray(t.classes, np.int64), categories=cats,
                       ious=None if t.ious is None else np.asarray(t.ious, np.float32),
                       kind="triplets", sources={"triplets": str(path)})


# ------------------------------------------------------------------------------- writer
def _clear_ingested(session) -> None:
    for model in (Answer, Question, Node, Mask, Image, Category):
        session.execute(delete(model))
    session.execute(delete(ArrayFile))
    session.execute(delete(Meta).where(Meta.key.like("search.%")))


def write_predictions(engine: Engine, campaign_dir: str | os.PathLike, p: Predictions,
                      replace: bool = False) -> dict:
    """Write validated predictions into the campaign in one transaction.

    Refuses when the campaign already holds masks, unless ``replace`` (which also drops
    the trees and the search state; refused once answers exist, since they were paid for).
    """
    campaign_dir = Path(campaign_dir)
    with transaction(engine) as s:
        n_old = count_rows(s, Mask)
        if n_old:
            if not replace:
                raise LabelpropError(f"{campaign_dir}: the campaign already holds {n_old} masks; "
                                     f"use --replace to start over, or a new campaign directory")
            n_ans = count_rows(s, Answer)
            if n_ans:
                raise LabelpropError(f"{campaign_dir}: the campaign already has {n_ans} answers; "
                                     f"--replace would throw them away (use a new campaign "
                                     f"directory)")
            _clear_ingested(s)
        bulk_insert(s, Category, [{"id": c["id"], "name": c["name"]} for c in p.categories])
        if p.images:
            bulk_insert(s, Image, p.images)
        n = p.n
        cols = {
            "id": range(n),
            "image_id": p.image_ids.tolist() if p.image_ids is not None else [None] * n,
            "category_id": p.classes.tolist(),
            "score": p.scores.astype(np.float64).tolist(),
            "bbox": p.bboxes if p.bboxes is not None else [None] * n,
            "rle": p.rles if p.rles is not None else [None] * n,
            "iou": p.ious.astype(np.float64).tolist() if p.ious is not None else [None] * n,
        }
        keys = list(cols)
        rows = [dict(zip(keys, vals)) for vals in zip(*cols.values())]
        bulk_insert(s, Mask, rows)
        save_array(s, campaign_dir, "features", p.features)
        save_array(s, campaign_dir, "scores", p.scores)
        save_array(s, campaign_dir, "classes", p.classes)
        if p.ious is not None:
            save_array(s, campaign_dir, "ious", p.ious)
        summary = {"kind": p.kind, "masks": n, "classes": len(p.categories),
                   "images": len(p.images or []), "feature_dim": int(p.features.shape[1]),
                   "has_iou": p.ious is not None, "replaced": bool(n_old)}
        s.merge(Meta(key="campaign.kind", value=p.kind))
        log_event(s, "ingest", **summary, sources=p.sources or {})
    return summary
