"""Mask overlay images for verification HITs: render them, and publish them where workers can load them.

A worker answers "does this mask outline the chair?" from one picture: a square crop
around the mask's box with some context, the mask drawn as a translucent tint and a
two-tone outline (a dark band with a light line inside it, so it shows on dark and on
light images).  :func:`render_overlay` draws one; :func:`publish_overlays` draws many
(grouped by image, so each image is read and decoded once) and uploads them to an
asset store, returning ``key -> URL`` for the HIT templates (``hit_templates/render.py``).

Cache.  An overlay's file name is ``<sha256>.jpg`` where the hash covers the image
file's bytes, the mask (normalised compressed RLE), the box and every render
parameter (and :data:`RENDER_VERSION`).  Publishing the same mask again costs one
existence check and no rendering; after a crash the URLs come out the same.

Stores (both have ``put(name, data, content_type) -> url`` (idempotent: nothing is
written when the name is already there), ``url(name)`` and ``exists(name)``):

- :class:`LocalAssetStore`: files under a directory of the campaign, linked as
  ``{base_url}/assets/<name>``; with the bundled crowd server every file is also uploaded to
  it (its ``/assets/`` upload route, signed like the Requester API), so the server a campaign
  posts to serves that campaign's overlays, whichever machine either runs on.  Without it,
  something must serve the directory (``labelprop crowd-server --assets DIR``).
- :class:`S3AssetStore`: objects under ``s3://bucket/prefix``, linked by their public
  URL (needs a bucket policy allowing ``s3:GetObject`` on the prefix, or
  ``public_read_acl=True`` on a bucket with ACLs enabled) or by presigned GET URLs
  (``presign_seconds``; SigV4 caps them at 7 days, and URLs signed with temporary
  credentials die with those credentials, so sign with a long-lived key and keep
  ``presign_seconds`` above the HIT lifetime plus the assignment duration).

S3 CORS.  HIT pages run on MTurk's own origins (``https://*.mturkcontent.com`` iframes
inside ``https://worker.mturk.com``), and MTurk's guidance is that images loaded from
S3 need a CORS configuration on the bucket or the HIT can fail.  Apply
:data:`S3_CORS_RULES` once (``S3AssetStore.apply_cors()`` does it, or
``aws s3api put-bucket-cors --bucket BUCKET --cors-configuration file://cors.json``
with this ``cors.json``)::

    {"CORSRules": [{"AllowedOrigins": ["*"],
                    "AllowedMethods": ["GET", "HEAD"],
                    "AllowedHeaders": ["*"],
                    "MaxAgeSeconds": 3000}]}

(To restrict origins, list ``https://worker.mturk.com``, ``https://www.mturk.com``,
``https://workersandbox.mturk.com``, ``https://*.mturkcontent.com`` and your own crowd
server's URL instead of ``*``.)  For public URLs, also allow anonymous reads of the prefix
(and turn off "Block public access" for bucket policies)::

    {"Version": "2012-10-17",
     "Statement": [{"Sid": "LabelpropPublicOverlays", "Effect": "Allow", "Principal": "*",
                    "Action": "s3:GetObject", "Resource": "arn:aws:s3:::BUCKET/PREFIX*"}]}
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import quote

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from orchestrator.errors import LabelpropError

__all__ = ["OverlayItem", "LocalAssetStore", "S3AssetStore", "PublishStats", "render_overlay",
           "render_overlay_array", "overlay_name", "publish_overlays", "asset_store_from_config",
           "decode_rle", "S3_CORS_RULES", "RENDER_VERSION", "check_urls"]

RENDER_VERSION = 1                 # bump when the drawing changes: old cached files are then not reused
JPEG_QUALITY = 88
TINT_RGB = (0, 170, 255)           # mask interior
TINT_ALPHA = 0.33
DARK_RGB = (16, 16, 16)            # outer band of the outline
LIGHT_RGB = (255, 232, 0)          # inner line of the outline
PAD_RGB = (128, 128, 128)          # outside the image when the crop extends beyond it
MIN_CROP_PX = 32                   # tiny objects are not blown up beyond this crop side
MAX_PRESIGN_SECONDS = 7 * 86_400
S3_CORS_RULES = [{"AllowedOrigins": ["*"], "AllowedMethods": ["GET", "HEAD"], "AllowedHeaders": ["*"],
                  "MaxAgeSeconds": 3000}]
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*")


@dataclass(frozen=True)
class OverlayItem:
    """One mask to show: ``key`` is stable (``f"mask-{mask_id}"``, ``f"gold-{id}"``); ``rle`` is COCO RLE
    ``{"size": [h, w], "counts": str | list}``; ``bbox`` ``[x, y, w, h]`` (computed from the mask if None)."""
    key: str
    image_path: Path
    rle: dict
    bbox: list[float] | None = None


# ---------------------------------------------------------------- masks

def _compressed_rle(rle: dict) -> dict:
    """Normalise COCO RLE (compressed str/bytes or uncompressed list counts) to {"size", "counts": bytes}."""
    try:
        h, w = (int(x) for x in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError):
        raise LabelpropError(f"not a COCO RLE (need 'size' [h, w] and 'counts'): {str(rle)[:80]}") from None
    if isinstance(counts, list):
        return mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    if not isinstance(counts, bytes):
        raise LabelpropError(f"RLE counts must be a string or a list, got {type(counts).__name__}")
    return {"size": [h, w], "counts": counts}


def decode_rle(rle: dict) -> np.ndarray:
    """COCO RLE -> bool array (h, w)."""
    return mask_utils.decode(_compressed_rle(rle)).astype(bool)


def _bbox_of(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        raise LabelpropError("the mask is empty: nothing to outline")
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


# ---------------------------------------------------------------- drawing

def _crop_window(bbox: list[float], img_w: int, img_h: int, context: float) -> tuple[int, int, int]:
    """Square window (x0, y0, side) around the box: side = larger box side * (1 + context), kept inside
    the image when it fits there."""
    bx, by, bw, bh = bbox
    side = max(float(bw), float(bh), 1.0) * (1.0 + context)
    side = int(np.ceil(max(side, min(MIN_CROP_PX, max(img_w, img_h)))))
    cx, cy = bx + bw / 2.0, by + bh / 2.0
    x0, y0 = int(round(cx - side / 2.0)), int(round(cy - side / 2.0))
    if side <= img_w:
        x0 = min(max(x0, 0), img_w - side)
    if side <= img_h:
        y0 = min(max(y0, 0), img_h - side)
    return x0, y0, side


def _crop_padded(arr: np.ndarray, x0: int, y0: int, side: int, fill) -> np.ndarray:
    h, w = arr.shape[:2]
    out = np.empty((side, side) + arr.shape[2:], dtype=arr.dtype)
    out[...] = fill
    sx0, sy0 = max(x0, 0), max(y0, 0)
    sx1, sy1 = min(x0 + side, w), min(y0 + side, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = arr[sy0:sy1, sx0:sx1]
    return out


def render_overlay_array(image: np.ndarray, mask: np.ndarray, bbox: list[float] | None = None, *,
                         size: int = 384, context: float = 0.6) -> bytes:
    """Draw one overlay from arrays: ``image`` uint8 (h, w, 3), ``mask`` bool (h, w).  Returns JPEG bytes."""
    if size < 16:
        raise LabelpropError(f"overlay size must be at least 16 pixels, got {size}")
    if context < 0:
        raise LabelpropError(f"overlay context must be >= 0, got {context}")
    if image.shape[:2] != mask.shape:
        raise LabelpropError(f"the mask is {mask.shape[1]}x{mask.shape[0]} but the image is "
                             f"{image.shape[1]}x{image.shape[0]} (width x height)")
    box = list(bbox) if bbox is not None else _bbox_of(mask)
    if not mask.any():
        raise LabelpropError("the mask is empty: nothing to outline")
    x0, y0, side = _crop_window(box, image.shape[1], image.shape[0], context)
    crop = Image.fromarray(_crop_padded(image, x0, y0, side, PAD_RGB)).resize((size, size), Image.LANCZOS)
    mcrop = Image.fromarray(_crop_padded(mask.astype(np.uint8) * 255, x0, y0, side, 0))
    m = np.asarray(mcrop.resize((size, size), Image.BILINEAR)) >= 128
    out = np.asarray(crop, dtype=np.float32).copy()
    # Tint inside the mask.
    out[m] = out[m] * (1.0 - TINT_ALPHA) + np.asarray(TINT_RGB, np.float32) * TINT_ALPHA
    # Two-tone outline: a light line on the boundary, inside a dark band on both of its sides.
    light_w = max(1, size // 256)
    dark_w = light_w + max(1, size // 192)
    if m.any() and not m.all():
        from scipy import ndimage      # here, not at the top: a poll pass that draws nothing skips ~0.3 s of import

        light = ndimage.binary_dilation(m, iterations=light_w) & ~ndimage.binary_erosion(m, iterations=light_w,
                                                                                         border_value=1)
        dark = ndimage.binary_dilation(m, iterations=dark_w) & ~ndimage.binary_erosion(m, iterations=dark_w,
                                                                                       border_value=1)
        out[dark] = DARK_RGB
        out[light] = LIGHT_RGB
    buf = io.BytesIO()
    Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8)).save(
        buf, "JPEG", quality=JPEG_QUALITY, optimize=True, subsampling=0)
    return buf.getvalue()


def _load_rgb(data: bytes, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as exc:  # PIL raises many kinds
        raise LabelpropError(f"{where}: cannot decode the image: {exc}") from None


def _read(path: Path, key: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise LabelpropError(f"overlay {key!r}: cannot read the image {path}: {exc.strerror or exc}") from None


def render_overlay(item: OverlayItem, *, size: int = 384, context: float = 0.6) -> bytes:
    """JPEG (``size`` x ``size``): a square crop around the mask's box with ``context`` (fraction of the
    box's larger side) around it, the mask drawn as a tint plus a two-tone outline (dark band, light
    line), visible on dark and on light images.  Raises LabelpropError on unreadable or mismatched input."""
    image = _load_rgb(_read(item.image_path, item.key), str(item.image_path))
    return render_overlay_array(image, decode_rle(item.rle), item.bbox, size=size, context=context)


# ---------------------------------------------------------------- cache key

def overlay_name(image_sha256: str, rle: dict, bbox: list[float] | None, *, size: int, context: float) -> str:
    """The content-hash file name ``<sha256>.jpg`` of one overlay."""
    c = _compressed_rle(rle)
    doc = {"v": RENDER_VERSION, "image": image_sha256, "size_hw": c["size"], "counts": c["counts"].decode("ascii"),
           "bbox": None if bbox is None else [round(float(x), 3) for x in bbox], "px": int(size),
           "context": round(float(context), 6), "q": JPEG_QUALITY}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest() + ".jpg"


# ---------------------------------------------------------------- stores

def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or len(name) > 512:
        raise LabelpropError(f"bad asset name {name!r} (letters, digits, '_', '.', '-' and '/' between parts)")
    return name


class LocalAssetStore:
    """Files under ``root``, linked as ``{base_url}/assets/<name>``.

    ``mirror``: a second place every file is also put (an object with ``exists(name)`` and
    ``put(name, data, content_type)``): the bundled crowd server's upload route, so the server
    a campaign posts to serves its overlays whatever machine the campaign runs on.  Without a
    mirror, something must serve ``root`` at ``base_url`` (``labelprop crowd-server --assets
    ROOT``, or any web server).
    """

    def __init__(self, root: Path, base_url: str, mirror=None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.base_url = base_url.rstrip("/")
        self.mirror = mirror
        self._mirrored: set[str] = set()
        self._lock = threading.Lock()

    def path(self, name: str) -> Path:
        return self.root.joinpath(*_check_name(name).split("/"))

    def url(self, name: str) -> str:
        return f"{self.base_url}/assets/{quote(_check_name(name))}"

    def _mirror_has(self, name: str) -> bool:
        if self.mirror is None:
            return True
        with self._lock:
            if name in self._mirrored:
                return True
        if self.mirror.exists(name):
            with self._lock:
                self._mirrored.add(name)
            return True
        return False

    def exists(self, name: str) -> bool:
        return self.path(name).is_file() and self._mirror_has(name)

    def put(self, name: str, data: bytes, content_type: str = "image/jpeg") -> str:
        """Write ``data`` as ``name`` (atomically) unless it is already there, and put it on the
        mirror unless it is there; return its URL."""
        p = self.path(name)
        new = not p.is_file()
        if new:
            p.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".tmp-", suffix=p.suffix)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.chmod(tmp, 0o644)
                os.replace(tmp, p)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        # a file new here is put on the mirror at once (its put is idempotent); an old one only if missing
        if self.mirror is not None and (new or not self._mirror_has(name)):
            self.mirror.put(name, data, content_type)
            with self._lock:
                self._mirrored.add(name)
        return self.url(name)

    def __repr__(self) -> str:
        return f"LocalAssetStore({str(self.root)!r}, {self.base_url!r})"


class S3AssetStore:
    """Objects ``s3://bucket/prefix<name>`` through a boto3 ``s3`` client.

    ``presign_seconds=None``: links are plain public URLs (virtual-hosted style on AWS, path style on
    a custom ``endpoint_url``); the objects must be publicly readable (bucket policy, or
    ``public_read_acl=True`` to upload with ``ACL=public-read``).  ``presign_seconds=N``: links are
    presigned GET URLs valid for N seconds (at most 7 days); make N outlive the HIT.
    """

    def __init__(self, bucket: str, prefix: str = "", client=None, presign_seconds: int | None = None, *,
                 public_read_acl: bool = False, cache_control: str = "public, max-age=31536000, immutable"):
        if not bucket:
            raise LabelpropError("S3AssetStore needs a bucket name")
        if presign_seconds is not None and not 1 <= int(presign_seconds) <= MAX_PRESIGN_SECONDS:
            raise LabelpropError(f"presign_seconds must be in [1, {MAX_PRESIGN_SECONDS}] (7 days), "
                                 f"got {presign_seconds}")
        if client is None:
            import boto3
            client = boto3.client("s3")
        self.bucket = bucket
        self.prefix = prefix if (not prefix or prefix.endswith("/")) else prefix + "/"
        self.client = client
        self.presign_seconds = int(presign_seconds) if presign_seconds is not None else None
        self.public_read_acl = public_read_acl
        self.cache_control = cache_control
        self._known: set[str] = set()
        self._lock = threading.Lock()

    def key(self, name: str) -> str:
        return self.prefix + _check_name(name)

    def public_url(self, name: str) -> str:
        key = quote(self.key(name))
        endpoint = (self.client.meta.endpoint_url or "").rstrip("/")
        region = self.client.meta.region_name or "us-east-1"
        if not endpoint or re.match(r"^https://s3[.-]([a-z0-9-]+\.)?amazonaws\.com", endpoint):
            if re.fullmatch(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]", self.bucket):
                return f"https://{self.bucket}.s3.{region}.amazonaws.com/{key}"
            return f"https://s3.{region}.amazonaws.com/{self.bucket}/{key}"
        return f"{endpoint}/{self.bucket}/{key}"

    def url(self, name: str) -> str:
        if self.presign_seconds is None:
            return self.public_url(name)
        return self.client.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": self.key(name)},
                                                  ExpiresIn=self.presign_seconds)

    def exists(self, name: str) -> bool:
        key = self.key(name)
        with self._lock:
            if key in self._known:
                return True
        from botocore.exceptions import ClientError
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchKey", "NotFound"):
                return False
            raise LabelpropError(f"s3://{self.bucket}/{key}: {code or exc}") from None
        with self._lock:
            self._known.add(key)
        return True

    def put(self, name: str, data: bytes, content_type: str = "image/jpeg") -> str:
        """Upload unless the object exists (HEAD first); return its URL."""
        if not self.exists(name):
            extra = {"ACL": "public-read"} if self.public_read_acl else {}
            self.client.put_object(Bucket=self.bucket, Key=self.key(name), Body=data, ContentType=content_type,
                                   CacheControl=self.cache_control, **extra)
            with self._lock:
                self._known.add(self.key(name))
        return self.url(name)

    def apply_cors(self) -> None:
        """Put :data:`S3_CORS_RULES` on the bucket (MTurk HIT pages load the images cross-origin)."""
        self.client.put_bucket_cors(Bucket=self.bucket, CORSConfiguration={"CORSRules": S3_CORS_RULES})

    def __repr__(self) -> str:
        return f"S3AssetStore(s3://{self.bucket}/{self.prefix}, presign_seconds={self.presign_seconds})"


# ---------------------------------------------------------------- publishing

@dataclass
class PublishStats:
    """What one :func:`publish_overlays` call did (``rendered`` counts calls to the renderer)."""
    items: int = 0
    rendered: int = 0
    reused: int = 0
    images_read: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **kw: int) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)


def _publish_group(store, items: list[OverlayItem], size: int, context: float, stats: PublishStats,
                   done: Callable[[int], None]) -> dict[str, str]:
    data = _read(items[0].image_path, items[0].key)
    stats.add(images_read=1)
    sha = hashlib.sha256(data).hexdigest()
    out: dict[str, str] = {}
    image = None
    for it in items:
        name = overlay_name(sha, it.rle, it.bbox, size=size, context=context)
        if store.exists(name):
            out[it.key] = store.url(name)
            stats.add(reused=1)
        elif isinstance(store, LocalAssetStore) and store.path(name).is_file():
            out[it.key] = store.put(name, store.path(name).read_bytes(), "image/jpeg")   # mirror it
            stats.add(reused=1)
        else:
            if image is None:
                image = _load_rgb(data, str(it.image_path))
            try:
                jpeg = render_overlay_array(image, decode_rle(it.rle), it.bbox, size=size, context=context)
            except LabelpropError as exc:
                raise LabelpropError(f"overlay {it.key!r} ({it.image_path}): {exc}") from None
            stats.add(rendered=1)
            out[it.key] = store.put(name, jpeg, "image/jpeg")
        done(1)
    return out


def publish_overlays(store, items: list[OverlayItem], *, workers: int = 2, progress=None, size: int = 384,
                     context: float = 0.6, stats: PublishStats | None = None) -> dict[str, str]:
    """Render (batched by image: each image file is read and decoded once; cached by the content hash of
    image bytes + RLE + box + render parameters) and publish overlays; returns ``{item.key: URL}``.

    Already published overlays are not rendered again (``stats.rendered`` stays 0 for them).
    ``progress(done, total)`` is called after each item (from worker threads, serialised).
    ``workers`` threads render different images in parallel.
    """
    keys = [it.key for it in items]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise LabelpropError(f"publish_overlays: duplicate key {dup!r}")
    stats = stats if stats is not None else PublishStats()
    stats.add(items=len(items))
    groups: "OrderedDict[str, list[OverlayItem]]" = OrderedDict()
    for it in items:
        groups.setdefault(str(Path(it.image_path)), []).append(it)
    total, count, lock = len(items), [0], threading.Lock()

    def done(n: int) -> None:
        with lock:
            count[0] += n
            if progress is not None:
                progress(count[0], total)

    result: dict[str, str] = {}
    if workers <= 1 or len(groups) <= 1:
        for g in groups.values():
            result.update(_publish_group(store, g, size, context, stats, done))
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="overlay") as pool:
            for part in pool.map(lambda g: _publish_group(store, g, size, context, stats, done), groups.values()):
                result.update(part)
    return {k: result[k] for k in keys}


# ---------------------------------------------------------------- configuration

def asset_store_from_config(campaign_dir, crowd_cfg, mirror=None) -> "LocalAssetStore | S3AssetStore":
    """The asset store described by ``[crowd.assets]`` of a campaign (``crowd_cfg``: its CrowdSection).

    local: ``campaign_dir / local_dir``, URLs under ``base_url`` (default ``crowd.endpoint_url``; for the
    simulated backend, where nobody loads images, ``http://127.0.0.1:8765``).  ``mirror``: where the
    files are also put (the bundled crowd server's upload route, given by its backend), so that
    server serves them.  MTurk workers cannot reach a local directory: with ``backend = "mturk"`` a
    local store needs an https ``base_url``.
    s3: a boto3 client from the default credential chain with ``s3_region`` / ``s3_endpoint_url``.
    """
    a = crowd_cfg.assets
    if a.store == "s3":
        if not a.s3_bucket:
            raise LabelpropError("crowd.assets.s3_bucket must be set when crowd.assets.store = \"s3\"")
        import boto3
        from botocore.config import Config
        client = boto3.client("s3", region_name=a.s3_region or None, endpoint_url=a.s3_endpoint_url or None,
                              config=Config(signature_version="s3v4"))   # SigV4 presigned URLs (<= 7 days)
        return S3AssetStore(a.s3_bucket, a.s3_prefix, client, a.presign_seconds or None)
    if a.store != "local":
        raise LabelpropError(f"crowd.assets.store must be \"local\" or \"s3\", got {a.store!r}")
    root = Path(a.local_dir)
    if not root.is_absolute():
        root = Path(campaign_dir) / root
    base = a.base_url or crowd_cfg.endpoint_url
    if crowd_cfg.backend == "mturk" and mirror is None:
        if not a.base_url.startswith("https://"):
            raise LabelpropError("crowd.assets: MTurk workers cannot load images from a local directory; set "
                                 "crowd.assets.store = \"s3\" (with s3_bucket), or crowd.assets.base_url to the "
                                 "https URL of a public server that serves crowd.assets.local_dir at /assets/")
        base = a.base_url
    if not base:
        if crowd_cfg.backend == "server":
            raise LabelpropError("crowd.assets: set crowd.endpoint_url (the crowd server's URL) or "
                                 "crowd.assets.base_url, so HIT pages can link the overlay images")
        base = "http://127.0.0.1:8765"
    return LocalAssetStore(root, base, mirror=mirror)


# ---------------------------------------------------------------- checks

def check_urls(urls, *, workers: int = 4, timeout: float = 15.0) -> dict[str, str]:
    """Fetch the first byte of every URL as a browser would (``GET`` with ``Range: bytes=0-0``);
    returns ``{url: what is wrong}`` for those that do not answer 200/206 with an image."""
    import urllib.error
    import urllib.request

    def one(url: str):
        req = urllib.request.Request(url, headers={"Range": "bytes=0-0", "User-Agent": "labelprop-asset-check"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                ctype = r.headers.get("Content-Type", "")
                r.read(1)
                if r.status not in (200, 206):
                    return url, f"HTTP {r.status}"
                if not ctype.startswith("image/"):
                    return url, f"served as {ctype or 'no content type'}, not an image"
                return url, None
        except urllib.error.HTTPError as exc:
            return url, f"HTTP {exc.code}"
        except (OSError, ValueError) as exc:
            return url, f"cannot fetch it: {getattr(exc, 'reason', exc)}"

    todo = sorted(set(urls))
    if not todo:
        return {}
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(todo)))) as pool:
        return {u: err for u, err in pool.map(one, todo) if err}
