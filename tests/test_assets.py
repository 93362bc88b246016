"""Mask overlays (orchestrator/crowd/assets.py): drawing, content-hash caching, and publishing to a local
directory served by the crowd server and to a real S3-compatible endpoint (moto's server)."""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.cocodata import encode_rle, make_coco_dataset, uncompressed_rle
from tests.crowd_server_support import run_cli

from orchestrator.crowd.assets import (S3_CORS_RULES, LocalAssetStore, OverlayItem, PublishStats, S3AssetStore,
                                 asset_store_from_config, publish_overlays, render_overlay, render_overlay_array)
from orchestrator.campaign.config import config_from_dict, default_config
from orchestrator.crowd_server.testing import start_server
from orchestrator.errors import LabelpropError


def _decode(jpeg: bytes) -> np.ndarray:
    im = Image.open(io.BytesIO(jpeg))
    assert im.format == "JPEG"
    return np.asarray(im.convert("RGB")).astype(int)


def _disc(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _yellow(a: np.ndarray) -> np.ndarray:
    return (a[..., 0] > 200) & (a[..., 1] > 180) & (a[..., 2] < 110)


def _dark(a: np.ndarray) -> np.ndarray:
    return a.sum(axis=2) < 3 * 60


# ---------------------------------------------------------------- drawing

@pytest.mark.parametrize("size", [384, 200])
def test_outline_shows_on_black_and_on_white_images(size):
    mask = _disc(240, 320, 120, 160, 50)
    for bg in (0, 255):
        img = np.full((240, 320, 3), bg, np.uint8)
        out = _decode(render_overlay_array(img, mask, size=size, context=0.6))
        assert out.shape == (size, size, 3)
        yellow, dark = _yellow(out), _dark(out)
        row = out[size // 2]
        # the light line crosses the middle row twice (left and right edge of the disc)
        ys = np.flatnonzero(_yellow(row[None])[0])
        assert ys.size >= 2 and ys.min() < size // 2 < ys.max()
        assert yellow.sum() > size * 2            # a closed line all around
        if bg == 255:
            # the dark band shows on white: dark pixels right outside the yellow line
            left = ys.min()
            assert _dark(row[max(0, left - 4):left][None]).any()
            assert dark.sum() > size * 2
        # tint inside: bluish, different from the background
        c = out[size // 2, size // 2]
        assert c[2] > c[0] + 40
        # far corners keep the image as it was
        assert abs(out[2, 2] - bg).max() < 12 and abs(out[-3, -3] - bg).max() < 12


def test_crop_keeps_context_around_the_box_and_pads_outside_the_image():
    img = np.full((400, 600, 3), 90, np.uint8)
    m = np.zeros((400, 600), bool)
    m[180:220, 280:320] = True                       # a 40x40 box in the middle
    out = _decode(render_overlay_array(img, m, size=300, context=1.0))
    tinted = np.flatnonzero(out[150, :, 2] > out[150, :, 0] + 30)
    # side = 40 * (1 + 1.0) = 80 source pixels -> the 40-pixel box spans about half the output
    assert 130 <= tinted.size + 8 <= 175
    assert abs((tinted.min() + tinted.max()) / 2 - 150) < 6
    # an object in the corner of a small image: the window is padded with grey outside the image
    small = np.full((60, 60, 3), 250, np.uint8)
    m2 = np.zeros((60, 60), bool)
    m2[0:50, 0:50] = True
    out2 = _decode(render_overlay_array(small, m2, size=128, context=0.6))   # side 80 > 60: padding
    assert abs(out2[-2, -2] - 128).max() < 10


def test_rle_forms_and_explicit_bbox(tmp_path):
    mask = _disc(120, 160, 60, 70, 30)
    p = tmp_path / "a.png"
    Image.fromarray(np.full((120, 160, 3), 200, np.uint8)).save(p)
    rle = encode_rle(mask.astype(np.uint8))
    a = render_overlay(OverlayItem("m", p, rle))
    b = render_overlay(OverlayItem("m", p, {"size": rle["size"], "counts": rle["counts"].encode()}))
    c = render_overlay(OverlayItem("m", p, uncompressed_rle(mask.astype(np.uint8))))
    d = render_overlay(OverlayItem("m", p, rle, [40.0, 30.0, 61.0, 61.0]))   # the mask's own box
    assert a == b == c == d
    assert render_overlay(OverlayItem("m", p, rle, [0.0, 0.0, 160.0, 120.0])) != a   # another crop


def test_render_errors_are_clear(tmp_path):
    p = tmp_path / "a.png"
    Image.fromarray(np.zeros((50, 60, 3), np.uint8)).save(p)
    with pytest.raises(LabelpropError, match="the mask is 40x30 but the image is 60x50"):
        render_overlay(OverlayItem("m", p, encode_rle(np.ones((30, 40), np.uint8))))
    with pytest.raises(LabelpropError, match="empty"):
        render_overlay(OverlayItem("m", p, encode_rle(np.zeros((50, 60), np.uint8))))
    with pytest.raises(LabelpropError, match="cannot read the image"):
        render_overlay(OverlayItem("m", tmp_path / "missing.png", encode_rle(np.ones((50, 60), np.uint8))))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(LabelpropError, match="cannot decode"):
        render_overlay(OverlayItem("m", tmp_path / "bad.png", encode_rle(np.ones((50, 60), np.uint8))))
    with pytest.raises(LabelpropError, match="COCO RLE"):
        render_overlay(OverlayItem("m", p, {"counts": "x"}))


# ---------------------------------------------------------------- publishing and the cache

@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    ds = make_coco_dataset(tmp_path_factory.mktemp("coco"), n_images=6, height=120, width=160, counts_as="mixed",
                           seed=2)
    files = {im["id"]: ds.image_root / im["file_name"] for im in ds.images}
    items = [OverlayItem(f"mask-{i}", files[r["image_id"]], r["segmentation"], r["bbox"] if i % 2 else None)
             for i, r in enumerate(ds.results)]
    return ds, items


def test_publish_renders_once_and_reuses_by_content_hash(tmp_path, coco):
    ds, items = coco
    n = len(items)
    store = LocalAssetStore(tmp_path / "assets", "http://127.0.0.1:9/")
    calls: list[tuple[int, int]] = []
    s1 = PublishStats()
    urls = publish_overlays(store, items, workers=2, progress=lambda d, t: calls.append((d, t)), stats=s1)
    assert list(urls) == [it.key for it in items]
    assert (s1.items, s1.rendered, s1.reused, s1.images_read) == (n, n, 0, len(ds.images))
    assert sorted(calls)[-1] == (n, n) and len(calls) == n
    files = sorted(p.name for p in (tmp_path / "assets").iterdir())
    assert len(files) == n and all(re.fullmatch(r"[0-9a-f]{64}\.jpg", f) for f in files)
    assert all(u.startswith("http://127.0.0.1:9/assets/") and u.endswith(".jpg") for u in urls.values())
    mtimes = {f: os.stat(tmp_path / "assets" / f).st_mtime_ns for f in files}

    # Same inputs (a new store object, as after a crash): nothing is rendered or rewritten, same URLs.
    s2 = PublishStats()
    again = publish_overlays(LocalAssetStore(tmp_path / "assets", "http://127.0.0.1:9"), items, workers=1, stats=s2)
    assert again == urls and (s2.rendered, s2.reused) == (0, n)
    assert {f: os.stat(tmp_path / "assets" / f).st_mtime_ns for f in files} == mtimes

    # Other render parameters: other files.
    s3 = PublishStats()
    bigger = publish_overlays(store, items[:3], size=256, stats=s3)
    assert s3.rendered == 3 and set(bigger.values()).isdisjoint(urls.values())

    # A changed image re-renders only its own masks.
    first = items[0].image_path
    Image.fromarray(np.zeros((ds.images[0]["height"], ds.images[0]["width"], 3), np.uint8)).save(first)
    s4 = PublishStats()
    changed = publish_overlays(store, items, stats=s4)
    on_first = [it.key for it in items if it.image_path == first]
    assert s4.rendered == len(on_first) > 0
    assert {k for k in urls if changed[k] != urls[k]} == set(on_first)

    with pytest.raises(LabelpropError, match="duplicate key"):
        publish_overlays(store, [items[0], items[0]])


def test_local_store_put_is_idempotent_and_names_are_checked(tmp_path):
    store = LocalAssetStore(tmp_path, "http://h:1")
    assert store.put("ex/good.jpg", b"one") == "http://h:1/assets/ex/good.jpg"
    assert store.put("ex/good.jpg", b"two") == "http://h:1/assets/ex/good.jpg"
    assert (tmp_path / "ex" / "good.jpg").read_bytes() == b"one"
    for bad in ("../x.jpg", "/abs.jpg", "a/../b.jpg", ".hidden", "a b.jpg", ""):
        with pytest.raises(LabelpropError, match="bad asset name"):
            store.put(bad, b"x")


def _get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def test_crowd_server_serves_local_assets_over_http(tmp_path, coco):
    _, items = coco
    root = tmp_path / "assets"
    root.mkdir()
    (tmp_path / "secret.txt").write_text("outside")
    srv = start_server(tmp_path / "crowd", assets_dir=root)
    try:
        store = LocalAssetStore(root, srv.endpoint_url)
        urls = publish_overlays(store, items[:3])
        for it in items[:3]:
            status, headers, body = _get(urls[it.key])                 # no sign-in, like a public bucket
            assert status == 200 and headers["Content-Type"] == "image/jpeg"
            assert headers["Access-Control-Allow-Origin"] == "*"
            assert body == store.path(urls[it.key].rsplit("/", 1)[1]).read_bytes()
            assert Image.open(io.BytesIO(body)).size == (384, 384)
        head = urllib.request.Request(urls[items[0].key], method="HEAD")
        with urllib.request.urlopen(head, timeout=10) as r:
            assert r.status == 200 and r.read() == b""
        base = srv.endpoint_url
        for path in ("/assets/missing.jpg", "/assets/../secret.txt", "/assets/%2e%2e/secret.txt",
                     "/assets/..%2fsecret.txt", "/assets/", "/assets/.hidden"):
            assert _get(base + path)[0] == 404, path
    finally:
        assert srv.stop() == 0
    # Without --assets there is nothing at /assets/.
    plain = start_server(tmp_path / "crowd2")
    try:
        assert _get(plain.endpoint_url + "/assets/" + urls[items[0].key].rsplit("/", 1)[1])[0] == 404
    finally:
        plain.stop()


def test_crowd_server_cli_assets_option(tmp_path):
    r = run_cli("--help")
    assert r.returncode == 0 and "--assets" in r.stdout
    r = run_cli("--port", "0", "--data-dir", str(tmp_path / "d"), "--assets", str(tmp_path / "nope"))
    assert r.returncode != 0 and "--assets" in (r.stderr + r.stdout) and "no such directory" in (r.stderr + r.stdout)


# ---------------------------------------------------------------- S3 (moto's real HTTP server on loopback)

def _moto_python() -> str:
    """moto[server] is a test dependency (pyproject's `test` extra): run it from this venv."""
    return os.environ.get("LABELPROP_MOTO_PYTHON") or sys.executable


@pytest.fixture(scope="module")
def moto_endpoint(tmp_path_factory):
    py = _moto_python()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([py, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"], stdout=fh,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 60
        port = None
        while time.time() < deadline and port is None:
            m = re.search(r"Running on http://127\.0\.0\.1:(\d+)", log.read_text(errors="replace"))
            port = m.group(1) if m else None
            if proc.poll() is not None:
                pytest.fail(f"moto server exited: {log.read_text()[-1000:]}")
            time.sleep(0.05)
        assert port, f"moto server did not start: {log.read_text()[-1000:]}"
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def _s3(endpoint: str):
    import boto3
    from botocore.config import Config
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testkey",
                        aws_secret_access_key="testsecret", config=Config(signature_version="s3v4"))


def test_s3_store_public_and_presigned_urls(moto_endpoint, coco):
    _, items = coco
    s3 = _s3(moto_endpoint)
    s3.create_bucket(Bucket="lp-overlays")
    puts: list[str] = []
    s3.meta.events.register("provide-client-params.s3.PutObject", lambda params, **kw: puts.append(params["Key"]))

    public = S3AssetStore("lp-overlays", "camp1", s3, public_read_acl=True)
    url = public.put("x/a.jpg", b"jpeg-bytes", "image/jpeg")
    assert url == f"{moto_endpoint}/lp-overlays/camp1/x/a.jpg"
    assert public.put("x/a.jpg", b"other", "image/jpeg") == url and puts == ["camp1/x/a.jpg"]
    assert S3AssetStore("lp-overlays", "camp1", s3).exists("x/a.jpg")     # a fresh store HEADs, no upload
    status, headers, body = _get(url)                                      # anonymous GET
    assert (status, body, headers["Content-Type"]) == (200, b"jpeg-bytes", "image/jpeg")
    head = s3.head_object(Bucket="lp-overlays", Key="camp1/x/a.jpg")
    assert head["ContentType"] == "image/jpeg" and "immutable" in head["CacheControl"]

    private = S3AssetStore("lp-overlays", "camp2/", s3)                     # no ACL, no presigning
    priv_url = private.put("b.jpg", b"secret", "image/jpeg")
    assert _get(priv_url)[0] == 403                                        # not public: the check can fail

    presigned = S3AssetStore("lp-overlays", "camp2/", s3, presign_seconds=5 * 86400)
    purl = presigned.url("b.jpg")
    assert "X-Amz-Signature=" in purl and "X-Amz-Expires=432000" in purl
    assert _get(purl)[:1] == (200,) and _get(purl)[2] == b"secret"

    # Publishing overlays: rendered and uploaded once, then only HEAD checks.
    store = S3AssetStore("lp-overlays", "ov/", s3, presign_seconds=86400)
    s1, s2 = PublishStats(), PublishStats()
    n_put = len(puts)
    urls = publish_overlays(store, items[:4], stats=s1)
    assert s1.rendered == 4 and len(puts) == n_put + 4
    publish_overlays(S3AssetStore("lp-overlays", "ov/", s3, presign_seconds=86400), items[:4], stats=s2)
    assert s2.rendered == 0 and len(puts) == n_put + 4
    for u in urls.values():
        status, headers, body = _get(u)
        assert status == 200 and Image.open(io.BytesIO(body)).size == (384, 384)

    store.apply_cors()
    assert s3.get_bucket_cors(Bucket="lp-overlays")["CORSRules"] == S3_CORS_RULES


def test_s3_urls_on_aws_and_limits():
    import boto3
    from botocore.config import Config
    c = boto3.client("s3", region_name="eu-west-1", aws_access_key_id="k", aws_secret_access_key="s",
                     config=Config(signature_version="s3v4"))
    assert S3AssetStore("my-bucket", "p", c).url("a.jpg") == "https://my-bucket.s3.eu-west-1.amazonaws.com/p/a.jpg"
    assert S3AssetStore("my.dotted.bucket", "", c).url("a.jpg") == "https://s3.eu-west-1.amazonaws.com/my.dotted.bucket/a.jpg"
    assert "X-Amz-Expires=604800" in S3AssetStore("my-bucket", "", c, presign_seconds=604800).url("a.jpg")
    with pytest.raises(LabelpropError, match="7 days"):
        S3AssetStore("my-bucket", "", c, presign_seconds=604801)


# ---------------------------------------------------------------- configuration

def _cfg(**assets):
    d = {"crowd": {"backend": "server", "endpoint_url": "http://127.0.0.1:8765", "assets": assets}}
    return config_from_dict(d, "campaign.toml")


def test_asset_store_from_config(tmp_path):
    st = asset_store_from_config(tmp_path, _cfg().crowd)
    assert isinstance(st, LocalAssetStore) and st.root == tmp_path / "assets"
    assert st.url("a.jpg") == "http://127.0.0.1:8765/assets/a.jpg"
    st = asset_store_from_config(tmp_path, _cfg(local_dir="ov", base_url="https://img.example.org").crowd)
    assert st.root == tmp_path / "ov" and st.url("a.jpg") == "https://img.example.org/assets/a.jpg"
    cfg = default_config()
    cfg.crowd.backend = "mturk"
    with pytest.raises(LabelpropError, match="cannot load images from a local directory"):
        asset_store_from_config(tmp_path, cfg.crowd)
    s3 = asset_store_from_config(tmp_path, _cfg(store="s3", s3_bucket="bkt", s3_region="us-west-2",
                                                presign_seconds=7 * 86400).crowd)
    assert isinstance(s3, S3AssetStore) and s3.presign_seconds == 7 * 86400 and s3.prefix == "labelprop/"


@pytest.mark.parametrize("assets, match", [
    ({"store": "ftp"}, "crowd.assets.store"),
    ({"store": "s3"}, "crowd.assets.s3_bucket"),
    ({"presign_seconds": 3600}, "must outlive a HIT"),
    ({"presign_seconds": 10**7}, "7 days"),
    ({"base_url": "ftp://x"}, "crowd.assets.base_url"),
    ({"overlay_size": 10}, "crowd.assets.overlay_size"),
    ({"color": "red"}, "unknown key crowd.assets.color"),
])
def test_asset_config_validation(assets, match):
    with pytest.raises(LabelpropError, match=match):
        _cfg(**assets)
