"""Input checks and dataset registration (COCO instances for training, image lists for
detection).  Every problem is one :class:`DetectionError` line naming the file."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from detection.errors import DetectionError

__all__ = ["CocoSource", "check_coco", "ImageEntry", "list_images", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class CocoSource:
    json_file: str
    image_root: str
    categories: tuple            # ((id, name), ...) sorted by id
    n_images: int
    n_annotations: int


def _load_json(path: Path, what: str):
    if not path.is_file():
        raise DetectionError(f"{path}: no such file ({what})")
    try:
        return json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DetectionError(f"{path}: not valid JSON ({str(exc).splitlines()[0]})") from None


def _check_image(path: Path, where: str, size: tuple[int, int] | None = None) -> tuple[int, int]:
    """Open and verify an image file; return (width, height)."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise DetectionError(f"{path}: image file not found ({where})")
    try:
        with Image.open(path) as im:
            wh = im.size
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DetectionError(f"{path}: corrupt or unreadable image ({where}: "
                             f"{str(exc).splitlines()[0][:120]})") from None
    if size is not None and tuple(wh) != tuple(size):
        raise DetectionError(f"{path}: image is {wh[0]}x{wh[1]} but {where} says "
                             f"{size[0]}x{size[1]} (width x height)")
    return int(wh[0]), int(wh[1])


def _images_of(data, path: Path) -> list[dict]:
    images = data.get("images") if isinstance(data, dict) else data
    if not isinstance(images, list) or not images:
        raise DetectionError(f"{path}: needs a non-empty 'images' list (COCO)")
    seen = set()
    for i, im in enumerate(images):
        if not isinstance(im, dict) or not isinstance(im.get("id"), int) \
                or not isinstance(im.get("file_name"), str):
            raise DetectionError(f"{path}: image {i} needs an integer 'id' and a 'file_name'")
        if im["id"] in seen:
            raise DetectionError(f"{path}: image {i}: duplicate image id {im['id']}")
        seen.add(im["id"])
    return images


def check_coco(json_file: str | os.PathLike, image_root: str | os.PathLike,
               progress=None) -> CocoSource:
    """Validate a COCO instances file for training: images present and readable with the
    sizes the file states, annotations pointing at known images and categories."""
    path, root = Path(json_file), Path(image_root)
    data = _load_json(path, "COCO instances JSON")
    if not isinstance(data, dict):
        raise DetectionError(f"{path}: expected a COCO dataset object with images, "
                             f"annotations and categories")
    images = _images_of(data, path)
    cats = data.get("categories")
    if not isinstance(cats, list) or not cats:
        raise DetectionError(f"{path}: needs a non-empty 'categories' list")
    for i, c in enumerate(cats):
        if not isinstance(c, dict) or not isinstance(c.get("id"), int) \
                or not isinstance(c.get("name"), str):
            raise DetectionError(f"{path}: category {i} needs an integer 'id' and a 'name'")
    anns = data.get("annotations")
    if not isinstance(anns, list) or not anns:
        raise DetectionError(f"{path}: needs a non-empty 'annotations' list to train on")
    ids = {im["id"] for im in images}
    cat_ids = {c["id"] for c in cats}
    for i, a in enumerate(anns):
        if not isinstance(a, dict):
            raise DetectionError(f"{path}: annotation {i} is not an object")
        if a.get("image_id") not in ids:
            raise DetectionError(f"{path}: annotation {i}: image_id {a.get('image_id')!r} is "
                                 f"not in 'images'")
        if a.get("category_id") not in cat_ids:
            raise DetectionError(f"{path}: annotation {i}: category_id "
                                 f"{a.get('category_id')!r} is not in 'categories'")
        if "segmentation" not in a:
            raise DetectionError(f"{path}: annotation {i} has no 'segmentation'")
    if not root.is_dir():
        raise DetectionError(f"{root}: image root is not a directory")
    for k, im in enumerate(images):
        size = (im["width"], im["height"]) if "width" in im and "height" in im else None
        _check_image(root / im["file_name"], f"image id {im['id']} of {path}", size)
        if progress is not None:
            progress(k + 1, len(images))
    categories = tuple(sorted((int(c["id"]), str(c["name"])) for c in cats))
    return CocoSource(str(path.resolve()), str(root.resolve()), categories, len(images), len(anns))


@dataclass(frozen=True)
class ImageEntry:
    id: int
    file_name: str     # relative to the image root
    path: str          # absolute
    width: int
    height: int

    def coco(self) -> dict:
        return {"id": self.id, "file_name": self.file_name, "width": self.width,
                "height": self.height}


def list_images(images: str | os.PathLike, image_root: str | os.PathLike | None = None
                ) -> tuple[list[ImageEntry], Path]:
    """The images to detect on, sorted by id, and their root.

    ``images`` is a directory (every image file below it, sorted by path, ids 1..n) or a
    COCO JSON (a dataset object or a list of images; ``image_root`` defaults to the
    JSON's directory, or its ``images/`` folder when the files are there).  Files are checked to exist; sizes are read from the file headers
    when the JSON does not give them.
    """
    from PIL import Image, UnidentifiedImageError

    src = Path(images)
    if src.is_dir():
        if image_root is not None and Path(image_root).resolve() != src.resolve():
            raise DetectionError(f"--image-root applies to a COCO JSON input, not a directory "
                                 f"({src})")
        files = sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS
                       and p.is_file() and not p.name.startswith("."))
        if not files:
            raise DetectionError(f"{src}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
        out = []
        for i, p in enumerate(files):
            try:
                with Image.open(p) as im:
                    w, h = im.size
            except (UnidentifiedImageError, OSError) as exc:
                raise DetectionError(f"{p}: corrupt or unreadable image "
                                     f"({str(exc).splitlines()[0][:120]})") from None
            out.append(ImageEntry(i + 1, str(p.relative_to(src)), str(p.resolve()), w, h))
        return out, src.resolve()
    if not src.exists():
        raise DetectionError(f"{src}: no such file or directory (images)")
    data = _load_json(src, "COCO images JSON")
    entries = _images_of(data, src)
    if image_root is not None:
        root = Path(image_root)
    else:                       # the JSON's folder, or its images/ subfolder (`labelprop shapes`)
        first = entries[0]["file_name"]
        root = src.parent / "images" if (src.parent / "images" / first).is_file() else src.parent
    if not root.is_dir():
        raise DetectionError(f"{root}: image root is not a directory")
    out = []
    for im in sorted(entries, key=lambda d: d["id"]):
        p = root / im["file_name"]
        if not p.is_file():
            raise DetectionError(f"{p}: image file not found (image id {im['id']} of {src})")
        w, h = im.get("width"), im.get("height")
        if not (isinstance(w, int) and isinstance(h, int)):
            try:
                with Image.open(p) as pil:
                    w, h = pil.size
            except (UnidentifiedImageError, OSError) as exc:
                raise DetectionError(f"{p}: corrupt or unreadable image "
                                     f"({str(exc).splitlines()[0][:120]})") from None
        out.append(ImageEntry(int(im["id"]), im["file_name"], str(p.resolve()), int(w), int(h)))
    return out, root.resolve()
