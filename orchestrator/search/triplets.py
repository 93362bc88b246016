"""Simulation triplets ``{f, s, IoU}`` (paper Sec. 5.2): load, validate, save.

A triplets file is a NumPy ``.npz`` archive with the arrays

- ``features``: float32 ``(n, d)`` -- the mask feature ``f`` used for clustering;
- ``scores``:   float32 ``(n,)``   -- the predicted mask score ``s`` in [0, 1];
- ``ious``:     float32 ``(n,)``   -- the true IoU of each mask in [0, 1]; optional for
  unlabelled data (``require_ious=False``);
- ``classes``:  int64   ``(n,)``   -- the class id of each mask.

Every problem is reported as one :class:`LabelpropError` line naming the file and what
is wrong with it, so the CLI can print it and exit non-zero.  Files are written
atomically (temporary file in the same directory, then ``os.replace``).
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from orchestrator.atomic import atomic_open
from orchestrator.errors import LabelpropError

__all__ = ["Triplets", "validate_triplets", "load_triplets", "save_triplets", "REQUIRED_KEYS",
           "match_ious", "triplets_from_coco"]

REQUIRED_KEYS = ("features", "scores", "classes")
OPTIONAL_KEYS = ("ious",)


@dataclass(frozen=True, eq=False)
class Triplets:
    """Validated triplet arrays (``ious`` is None for unlabelled data)."""

    features: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    ious: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(self.scores.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def subset(self, idx: np.ndarray) -> "Triplets":
        """The triplets at ``idx`` (boolean mask or indices), e.g. a held-out split."""
        return Triplets(features=self.features[idx], scores=self.scores[idx],
                        classes=self.classes[idx],
                        ious=None if self.ious is None else self.ious[idx])


def _real(name: str, key: str, a, dims: int) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != dims:
        want = "(n, d)" if dims == 2 else "(n,)"
        raise LabelpropError(f"{name}: '{key}' must be {dims}-D {want}, got shape {a.shape}")
    if a.dtype.kind not in "fiub":
        raise LabelpropError(f"{name}: '{key}' must be numeric, got dtype {a.dtype}")
    a = a.astype(np.float32, copy=False)
    bad = ~np.isfinite(a)
    if bad.any():
        first = int(np.flatnonzero(bad.reshape(a.shape[0], -1).any(axis=1))[0])
        raise LabelpropError(f"{name}: '{key}' has {int(bad.sum())} NaN/inf value(s) "
                             f"(first in row {first})")
    return a


def _unit(name: str, key: str, a: np.ndarray) -> None:
    out = (a < 0.0) | (a > 1.0)
    if out.any():
        i = int(np.flatnonzero(out)[0])
        raise LabelpropError(f"{name}: '{key}' must be in [0, 1]; {int(out.sum())} value(s) "
                             f"outside (e.g. row {i}: {float(a[i]):g})")


def validate_triplets(arrays, name: str = "<triplets>", require_ious: bool = True) -> Triplets:
    """Check a mapping of arrays against the triplet format; return typed :class:`Triplets`.

    Raises :class:`LabelpropError` naming ``name`` and the first problem found: a missing
    key, wrong number of dimensions, non-numeric or non-integer classes, NaN/inf, scores or
    IoUs outside [0, 1], or arrays of different lengths.
    """
    keys = set(arrays.keys()) if hasattr(arrays, "keys") else set()
    missing = [k for k in REQUIRED_KEYS + (OPTIONAL_KEYS if require_ious else ()) if k not in keys]
    if missing:
        raise LabelpropError(f"{name}: missing key(s) {', '.join(repr(k) for k in missing)} "
                             f"(has: {', '.join(sorted(keys)) or 'nothing'})")
    features = _real(name, "features", arrays["features"], 2)
    scores = _real(name, "scores", arrays["scores"], 1)
    ious = _real(name, "ious", arrays["ious"], 1) if "ious" in keys else None
    classes = np.asarray(arrays["classes"])
    if classes.ndim != 1:
        raise LabelpropError(f"{name}: 'classes' must be 1-D (n,), got shape {classes.shape}")
    if classes.dtype.kind not in "iu":
        integral = (classes.dtype.kind == "f" and bool(np.all(np.isfinite(classes)))
                    and bool(np.all(classes == np.round(classes))))
        if not integral:  # integral floats (e.g. from a CSV round trip) are converted
            raise LabelpropError(f"{name}: 'classes' must be integers, got dtype {classes.dtype}")
    classes = classes.astype(np.int64, copy=False)
    if classes.size and classes.min() < 0:
        raise LabelpropError(f"{name}: 'classes' must be >= 0, found {int(classes.min())}")
    lengths = {"features": features.shape[0], "scores": scores.shape[0],
               "classes": classes.shape[0]}
    if ious is not None:
        lengths["ious"] = ious.shape[0]
    if len(set(lengths.values())) > 1:
        desc = ", ".join(f"{k} {v}" for k, v in lengths.items())
        raise LabelpropError(f"{name}: arrays have mismatched lengths ({desc})")
    if scores.shape[0] == 0:
        raise LabelpropError(f"{name}: contains no triplets (n = 0)")
    if features.shape[1] == 0:
        raise LabelpropError(f"{name}: 'features' has 0 dimensions per row")
    _unit(name, "scores", scores)
    if ious is not None:
        _unit(name, "ious", ious)
    return Triplets(features=np.ascontiguousarray(features), scores=scores, classes=classes,
                    ious=ious)


def load_triplets(path: str | os.PathLike, require_ious: bool = True) -> Triplets:
    """Load and validate a triplets ``.npz``; every problem is a one-line LabelpropError."""
    p = Path(path)
    name = str(p)
    if not p.exists():
        raise LabelpropError(f"{name}: no such file")
    if p.is_dir():
        raise LabelpropError(f"{name}: is a directory, expected a .npz triplets file")
    try:
        z = np.load(p, allow_pickle=False)
        if not hasattr(z, "files"):
            raise LabelpropError(f"{name}: is a single .npy array, expected a .npz archive "
                                 f"with keys features, scores, ious, classes")
        with z:
            arrays = {k: z[k] for k in z.files}
    except LabelpropError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LabelpropError(f"{name}: not a readable .npz archive ({msg})") from None
    return validate_triplets(arrays, name=name, require_ious=require_ious)


def save_triplets(path: str | os.PathLike, triplets: Triplets | None = None, *,
                  features=None, scores=None, ious=None, classes=None,
                  compressed: bool = True) -> Path:
    """Validate and write triplets atomically (temporary file + ``os.replace``).

    Pass either a :class:`Triplets` or the four arrays as keywords.  The written dtypes are
    the format's: float32 features/scores/ious, int64 classes.
    """
    p = Path(path)
    if triplets is None:
        arrays = {"features": features, "scores": scores, "classes": classes}
        if ious is not None:
            arrays["ious"] = ious
        triplets = validate_triplets(arrays, name=str(p), require_ious=ious is not None)
    out = {"features": np.asarray(triplets.features, dtype=np.float32),
           "scores": np.asarray(triplets.scores, dtype=np.float32),
           "classes": np.asarray(triplets.classes, dtype=np.int64)}
    if triplets.ious is not None:
        out["ious"] = np.asarray(triplets.ious, dtype=np.float32)
    with atomic_open(p, "wb") as fh:
        (np.savez_compressed if compressed else np.savez)(fh, **out)
    return p


# ------------------------------------------------------------- held-out detector output
def _gt_rles(gt: dict, name: str) -> tuple[dict, dict]:
    """Ground truth of a COCO dataset dict: {(image_id, category_id): [RLE, ...]} (crowd
    regions excluded) and {image_id: (height, width)}."""
    from pycocotools import mask as mask_utils

    if not isinstance(gt, dict) or not isinstance(gt.get("images"), list) \
            or not isinstance(gt.get("annotations"), list):
        raise LabelpropError(f"{name}: expected a COCO dataset with 'images' and 'annotations'")
    sizes = {}
    for i, im in enumerate(gt["images"]):
        try:
            sizes[int(im["id"])] = (int(im["height"]), int(im["width"]))
        except (KeyError, TypeError, ValueError):
            raise LabelpropError(f"{name}: image {i} needs integer 'id', 'height' and "
                                 f"'width'") from None
    groups: dict = {}
    for i, a in enumerate(gt["annotations"]):
        if not isinstance(a, dict) or a.get("iscrowd", 0):
            continue
        iid = a.get("image_id")
        if iid not in sizes:
            raise LabelpropError(f"{name}: annotation {i}: image_id {iid!r} is not in 'images'")
        h, w = sizes[iid]
        seg = a.get("segmentation")
        try:
            if isinstance(seg, list):                       # polygons
                rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
            elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):
                rle = mask_utils.frPyObjects(seg, h, w)
            elif isinstance(seg, dict) and isinstance(seg.get("counts"), str):
                rle = {"size": seg["size"], "counts": seg["counts"].encode("ascii")}
            else:
                raise ValueError("no polygon or RLE")
        except (ValueError, TypeError, KeyError) as exc:
            raise LabelpropError(f"{name}: annotation {i}: unreadable segmentation ({exc})") \
                from None
        groups.setdefault((iid, a.get("category_id")), []).append(rle)
    return groups, sizes


def match_ious(gt: dict, results: list, gt_name: str = "<gt>",
               results_name: str = "<results>") -> np.ndarray:
    """True IoU of each predicted mask: its best mask IoU (pycocotools) with a ground-truth
    object of the same image and class; 0 where there is none.  float32 (n,)."""
    from pycocotools import mask as mask_utils

    from orchestrator.campaign.ingest import validate_rle

    groups, sizes = _gt_rles(gt, gt_name)
    ious = np.zeros(len(results), np.float32)
    by_key: dict = {}
    rles = []
    for i, r in enumerate(results):
        where = f"{results_name}: result {i}"
        if not isinstance(r, dict):
            raise LabelpropError(f"{where}: not an object")
        iid = r.get("image_id")
        if iid not in sizes:
            raise LabelpropError(f"{where}: image_id {iid!r} is not in {gt_name}")
        rle, hw = validate_rle(r.get("segmentation"), where)
        if tuple(hw) != sizes[iid]:
            raise LabelpropError(f"{where}: segmentation size {hw[0]}x{hw[1]} differs from "
                                 f"image {iid}'s {sizes[iid][0]}x{sizes[iid][1]} in {gt_name}")
        rles.append({"size": rle["size"], "counts": rle["counts"].encode("ascii")})
        by_key.setdefault((iid, r.get("category_id")), []).append(i)
    for key, idx in by_key.items():
        gts = groups.get(key)
        if not gts:
            continue
        m = mask_utils.iou([rles[i] for i in idx], gts, [0] * len(gts))
        ious[idx] = np.asarray(m, dtype=np.float64).reshape(len(idx), len(gts)).max(axis=1)
    return np.clip(ious, 0.0, 1.0)


def triplets_from_coco(gt_json: str | os.PathLike, results_json: str | os.PathLike,
                       features_npy: str | os.PathLike) -> Triplets:
    """Held-out triplets {f, s, IoU, class} from detector output on images with ground
    truth: features from ``features_npy`` (row i for result i), s from the results'
    ``score``, IoU by :func:`match_ious`, class = ``category_id``."""
    import json

    def load(p: Path, what: str):
        if not p.is_file():
            raise LabelpropError(f"{p}: no such file ({what})")
        try:
            return json.loads(p.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise LabelpropError(f"{p}: not valid JSON ({str(exc).splitlines()[0]})") from None

    gp, rp, fp = Path(gt_json), Path(results_json), Path(features_npy)
    gt = load(gp, "ground-truth COCO instances")
    res = load(rp, "COCO results")
    if not isinstance(res, list) or not res:
        raise LabelpropError(f"{rp}: expected a non-empty list of COCO results")
    ious = match_ious(gt, res, str(gp), str(rp))
    if not fp.is_file():
        raise LabelpropError(f"{fp}: no such file (features)")
    try:
        feats = np.load(fp, allow_pickle=False)
    except Exception as exc:
        raise LabelpropError(f"{fp}: not a readable .npy array ({str(exc).splitlines()[0]})") \
            from None
    if feats.ndim != 2 or feats.shape[0] != len(res):
        raise LabelpropError(f"{fp}: has shape {feats.shape} but {rp} has {len(res)} results "
                             f"(need one feature row per result)")
    scores, classes = [], []
    for i, r in enumerate(res):
        s, c = r.get("score"), r.get("category_id")
        if not isinstance(s, (int, float)) or isinstance(s, bool):
            raise LabelpropError(f"{rp}: result {i}: score must be a number, got {s!r}")
        if not isinstance(c, int) or isinstance(c, bool):
            raise LabelpropError(f"{rp}: result {i}: category_id must be an integer, got {c!r}")
        scores.append(s)
        classes.append(c)
    return validate_triplets({"features": feats, "scores": np.asarray(scores, np.float32),
                              "ious": ious, "classes": np.asarray(classes, np.int64)},
                             name=str(rp))
