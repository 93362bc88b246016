"""Synthetic instance-segmentation data, written as COCO (numpy + Pillow, no torch).

Each image holds a few objects of several shape classes on a textured background.  A
class is a shape *and* a texture family, so both matter for recognition; instances vary in
colour, size (log-uniform over a 5x range), aspect, rotation and texture phase.  Objects
are painted in order, so later ones occlude earlier ones: ground-truth masks are the
visible parts, and an object left mostly hidden is dropped.  Pixel noise and occasional
blur finish the image.  Same seed, same files.

    labelprop shapes data/train --images 200
    -> data/train/images/*.png, data/train/instances.json (COCO, RLE segmentations)
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["SHAPE_NAMES", "shape_mask", "make_shapes_dataset"]

# kind index -> name; kinds 0-4 are also the shapes of the tests' small COCO sets
SHAPE_NAMES = ["disc", "box", "bar", "ring", "diamond", "triangle"]


def shape_mask(h: int, w: int, kind: int, cy: float, cx: float, ry: float, rx: float,
               angle: float = 0.0) -> np.ndarray:
    """uint8 (h, w) mask of shape ``kind`` centred at (cy, cx) with radii (ry, rx), rotated
    by ``angle`` radians."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    y0, x0 = yy - cy, xx - cx
    if angle:
        c, s = np.cos(angle), np.sin(angle)
        y0, x0 = c * y0 - s * x0, s * y0 + c * x0
    dy, dx = y0 / ry, x0 / rx
    if kind == 0:                                   # disc / ellipse
        m = dy ** 2 + dx ** 2 <= 1.0
    elif kind == 1:                                 # box
        m = (np.abs(dy) <= 1.0) & (np.abs(dx) <= 1.0)
    elif kind == 2:                                 # bar (thin box)
        m = (np.abs(dy) <= 0.35) & (np.abs(dx) <= 1.0)
    elif kind == 3:                                 # ring
        r = dy ** 2 + dx ** 2
        m = (r <= 1.0) & (r >= 0.3)
    elif kind == 4:                                 # diamond
        m = np.abs(dy) + np.abs(dx) <= 1.0
    elif kind == 5:                                 # triangle (apex up)
        m = (dy <= 1.0) & (dy >= 2.0 * np.abs(dx) - 1.0)
    else:
        raise ValueError(f"unknown shape kind {kind}")
    return m.astype(np.uint8)


def _texture(kind: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """(h, w, 3) float texture of class ``kind``'s family, values about 0..255."""
    hue = rng.uniform(0, 1)
    base = np.array([np.cos(2 * np.pi * (hue + k / 3)) for k in range(3)]) * 70 + 140
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    phase = rng.uniform(0, 2 * np.pi)
    period = rng.uniform(4, 9)
    if kind % 6 == 0:                               # solid with soft shading
        t = 0.85 + 0.15 * np.sin(yy / 20 + phase)
    elif kind % 6 == 1:                             # stripes
        t = 0.6 + 0.4 * (np.sin((xx + yy) * 2 * np.pi / period + phase) > 0)
    elif kind % 6 == 2:                             # horizontal gradient
        t = 0.5 + 0.5 * (xx % 64) / 64
    elif kind % 6 == 3:                             # checker
        t = 0.55 + 0.45 * (((xx // (period / 1.5)).astype(int) + (yy // (period / 1.5)).astype(int)) % 2)
    elif kind % 6 == 4:                             # dots
        t = 0.6 + 0.4 * ((np.sin(xx * 2 * np.pi / period + phase) * np.sin(yy * 2 * np.pi / period)) > 0.5)
    else:                                           # speckle
        t = 0.6 + 0.4 * rng.random((h, w))
    return base[None, None, :] * t[:, :, None]


def _background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    coarse = rng.uniform(60, 200, size=(4, 4, 3))
    ys = np.linspace(0, 3, h)
    xs = np.linspace(0, 3, w)
    y0, x0 = np.floor(ys).astype(int).clip(0, 2), np.floor(xs).astype(int).clip(0, 2)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    a = coarse[y0][:, x0]
    b = coarse[y0][:, x0 + 1]
    c = coarse[y0 + 1][:, x0]
    d = coarse[y0 + 1][:, x0 + 1]
    img = (a * (1 - fy) * (1 - fx) + b * (1 - fy) * fx + c * fy * (1 - fx) + d * fy * fx)
    if rng.random() < 0.5:                          # distracting thin lines
        yy, xx = np.mgrid[0:h, 0:w]
        lines = np.sin((xx * rng.uniform(-1, 1) + yy) * 2 * np.pi / rng.uniform(10, 30)) > 0.9
        img[lines] *= 0.7
    return img


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("ascii")}


def _write_atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def make_shapes_dataset(root: str | os.PathLike, n_images: int = 100, *, size: int = 128,
                        n_classes: int = 4, objects: tuple[int, int] = (1, 4),
                        min_visible: float = 0.5, noise: float = 8.0, seed: int = 0,
                        first_image_id: int = 1, progress=None) -> dict:
    """Write ``root/images/*.png`` and ``root/instances.json``; return a summary dict.

    ``size`` is the longer image side (the shorter is 75-100% of it); objects' radii range
    from ``size/16`` to ``size/4``.  ``min_visible`` drops objects whose visible fraction
    after occlusion falls below it.  ``noise`` is the standard deviation of the pixel noise.
    """
    from PIL import Image, ImageFilter

    if not 1 <= n_classes <= len(SHAPE_NAMES):
        raise ValueError(f"n_classes must be in 1..{len(SHAPE_NAMES)}, got {n_classes}")
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}")
    root = Path(root)
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    categories = [{"id": k + 1, "name": SHAPE_NAMES[k]} for k in range(n_classes)]
    images, anns = [], []
    for i in range(n_images):
        h = w = size
        if rng.random() < 0.5:                      # some images are not square
            if rng.random() < 0.5:
                h = int(size * rng.uniform(0.75, 1.0))
            else:
                w = int(size * rng.uniform(0.75, 1.0))
        img = _background(h, w, rng)
        placed: list[tuple[int, np.ndarray, int]] = []     # (kind, visible mask, full area)
        for _ in range(int(rng.integers(objects[0], objects[1] + 1))):
            kind = int(rng.integers(n_classes))
            r = float(np.exp(rng.uniform(np.log(size / 16), np.log(size / 4))))
            aspect = float(np.exp(rng.uniform(-0.3, 0.3)))
            ry, rx = r * aspect, r / aspect
            cy, cx = rng.uniform(0.1 * h, 0.9 * h), rng.uniform(0.1 * w, 0.9 * w)
            angle = float(rng.uniform(0, np.pi)) if kind in (1, 2, 4, 5) else 0.0
            m = shape_mask(h, w, kind, cy, cx, ry, rx, angle).astype(bool)
            if m.sum() < 20:
                continue
            tex = _texture(kind, h, w, rng)
            img[m] = tex[m]
            placed = [(k, pm & ~m, a) for k, pm, a in placed]      # occluded by the new one
            placed.append((kind, m, int(m.sum())))
        image_id = first_image_id + i
        for kind, m, full in placed:
            visible = int(m.sum())
            if visible < 20 or visible < min_visible * full:      # mostly hidden: dropped
                continue
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": kind + 1,
                         "segmentation": _rle(m), "area": visible, "bbox": _bbox(m),
                         "iscrowd": 0})
        img = img + rng.normal(0.0, noise, size=img.shape)
        pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
        if rng.random() < 0.2:
            pil = pil.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.5, 1.2))))
        name = f"img_{image_id:06d}.png"
        _write_atomic(image_dir / name, lambda p, pil=pil: pil.save(p, format="PNG"))
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
        if progress is not None:
            progress(i + 1, n_images)
    data = {"info": {"description": "labelprop synthetic shapes", "seed": seed},
            "images": images, "categories": categories, "annotations": anns}
    out = root / "instances.json"
    _write_atomic(out, lambda p: Path(p).write_text(json.dumps(data)))
    per_class = {c["name"]: sum(a["category_id"] == c["id"] for a in anns) for c in categories}
    return {"instances_json": str(out), "image_root": str(image_dir), "images": len(images),
            "annotations": len(anns), "per_class": per_class}


def _bbox(m: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(m)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
            float(ys.max() - ys.min() + 1)]
