"""Small synthetic COCO datasets for tests: PNG images with simple shapes, ground-truth
instance masks, and "predictions" (perturbed masks) as a COCO results JSON with RLE
segmentations (pycocotools), plus ``features.npy`` (row i for result i).

    ds = make_coco_dataset(tmp_path / "coco", n_images=12)
    ds.results_json, ds.features_npy, ds.images_json, ds.image_root

Features carry the category, the ground-truth object and the prediction quality, so
clustering groups good predictions of a class together, as real mask features would.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from pycocotools import mask as mask_utils

from detection.shapes import shape_mask

__all__ = ["CocoSet", "make_coco_dataset", "encode_rle", "uncompressed_rle", "decode_rle"]

CATEGORY_NAMES = ["disc", "box", "bar", "ring", "blob"]
COLORS = [(220, 40, 40), (40, 180, 60), (50, 80, 220), (200, 160, 30), (150, 60, 190)]


@dataclass
class CocoSet:
    root: Path
    image_root: Path
    images_json: Path        # COCO dataset dict: images + categories (+ gt annotations)
    results_json: Path       # COCO results: predictions with RLE segmentation
    features_npy: Path
    images: list[dict]
    categories: list[dict]
    results: list[dict]
    pred_masks: list[np.ndarray] = field(repr=False)   # uint8 (h, w) per result
    gt_masks: list[np.ndarray] = field(repr=False)
    pred_iou: np.ndarray = field(repr=False)
    features: np.ndarray = field(repr=False)


def encode_rle(mask: np.ndarray) -> dict:
    """Compressed COCO RLE with ``counts`` as str."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(x) for x in rle["size"]], "counts": rle["counts"].decode("ascii")}


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE (``counts`` a list of run lengths, column-major, zeros first)."""
    flat = np.asarray(mask, dtype=np.uint8).flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        runs = [0] + runs
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(r) for r in runs]}


def decode_rle(rle: dict) -> np.ndarray:
    r = dict(rle)
    if isinstance(r["counts"], list):
        r = mask_utils.frPyObjects(r, *r["size"])
    elif isinstance(r["counts"], str):
        r["counts"] = r["counts"].encode("ascii")
    return mask_utils.decode(r)


def _shape_mask(h: int, w: int, kind: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    """Kinds 0-4 (disc, box, bar, ring, diamond) of the synthetic shapes generator."""
    return shape_mask(h, w, kind, cy, cx, ry, rx)


def _perturb(m: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Shift, grow or shrink, and speckle a mask; strength 0 keeps it, 1 ruins it."""
    out = m.astype(bool)
    h, w = m.shape
    sy, sx = (rng.integers(-1, 2, size=2) * int(round(strength * 8)))
    out = np.roll(out, (int(sy), int(sx)), axis=(0, 1))
    steps = int(round(strength * 3))
    grow = rng.random() < 0.5
    for _ in range(steps):
        nb = out.copy()
        for ax in (0, 1):
            for d in (-1, 1):
                nb = (nb | np.roll(out, d, axis=ax)) if grow else (nb & np.roll(out, d, axis=ax))
        out = nb
    noise = rng.random((h, w)) < strength * 0.01
    out = out ^ noise
    if not out.any():
        out[h // 2, w // 2] = True
    return out.astype(np.uint8)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.logical_and(a, b).sum()
    union = np.logical_or(a, b).sum()
    return float(inter / union) if union else 0.0


def make_coco_dataset(root: str | Path, n_images: int = 8, n_categories: int = 3,
                      objects_per_image: tuple[int, int] = (1, 3), preds_per_object: int = 2,
                      height: int = 40, width: int = 56, feat_dim: int = 8, seed: int = 0,
                      counts_as: str = "str", image_ext: str = "png") -> CocoSet:
    """Write a synthetic COCO dataset under ``root`` and return its paths and arrays.

    Image ``i`` is ``width + 8 * (i % 3)`` pixels wide (sizes differ between images).
    ``counts_as``: "str" (compressed RLE), "list" (uncompressed) or "mixed" (alternating).
    """
    root = Path(root)
    image_root = root / "images"
    image_root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    categories = [{"id": c + 1, "name": CATEGORY_NAMES[c % len(CATEGORY_NAMES)]
                   + ("" if c < len(CATEGORY_NAMES) else str(c))} for c in range(n_categories)]
    cat_centers = rng.normal(0.0, 3.0, size=(n_categories, feat_dim))
    images, gt_anns, results = [], [], []
    pred_masks, gt_masks, ious, feats = [], [], [], []
    ann_id = 1
    for i in range(n_images):
        h, w = height, width + 8 * (i % 3)
        img = (rng.integers(0, 30, size=(h, w, 3)) + 200).astype(np.uint8)
        fname = f"img_{i:04d}.{image_ext}"
        images.append({"id": 100 + i, "file_name": fname, "width": w, "height": h})
        for _ in range(int(rng.integers(objects_per_image[0], objects_per_image[1] + 1))):
            c = int(rng.integers(n_categories))
            ry, rx = rng.uniform(5, h / 3), rng.uniform(5, w / 3)
            cy, cx = rng.uniform(ry, h - ry), rng.uniform(rx, w - rx)
            g = _shape_mask(h, w, c % 5, cy, cx, ry, rx)
            if not g.any():
                continue
            img[g.astype(bool)] = COLORS[c % len(COLORS)]
            gt_anns.append({"id": ann_id, "image_id": 100 + i, "category_id": c + 1,
                            "segmentation": encode_rle(g), "area": int(g.sum()),
                            "bbox": [float(x) for x in mask_utils.toBbox(mask_utils.encode(
                                np.asfortranarray(g)))], "iscrowd": 0})
            obj_vec = rng.normal(0.0, 1.0, size=feat_dim)
            for _ in range(preds_per_object):
                strength = float(rng.uniform(0.0, 1.0))
                p = _perturb(g, rng, strength)
                q = _iou(p, g)
                k = len(results)
                use_list = counts_as == "list" or (counts_as == "mixed" and k % 2 == 1)
                seg = uncompressed_rle(p) if use_list else encode_rle(p)
                bbox = mask_utils.toBbox(mask_utils.encode(np.asfortranarray(p))).tolist()
                score = float(np.clip(q + rng.normal(0, 0.1), 0.0, 1.0))
                results.append({"image_id": 100 + i, "category_id": c + 1, "segmentation": seg,
                                "bbox": [float(x) for x in bbox], "score": round(score, 4)})
                pred_masks.append(p)
                gt_masks.append(g)
                ious.append(q)
                feats.append(cat_centers[c] + 0.5 * obj_vec + 2.0 * (1 - q)
                             + rng.normal(0, 0.2, size=feat_dim))
            ann_id += 1
        PILImage.fromarray(img).save(image_root / fname)
    images_json = root / "instances.json"
    images_json.write_text(json.dumps({"images": images, "categories": categories,
                                       "annotations": gt_anns}))
    results_json = root / "results.json"
    results_json.write_text(json.dumps(results))
    features = np.asarray(feats, dtype=np.float32).reshape(len(results), feat_dim)
    features_npy = root / "features.npy"
    np.save(features_npy, features)
    return CocoSet(root=root, image_root=image_root, images_json=images_json,
                   results_json=results_json, features_npy=features_npy, images=images,
                   categories=categories, results=results, pred_masks=pred_masks,
                   gt_masks=gt_masks, pred_iou=np.asarray(ious), features=features)
