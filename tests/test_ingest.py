"""`labelprop ingest`: COCO predictions and triplets, every bad input refused cleanly."""
from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
from sqlalchemy import select

from tests.cli_helpers import run_cli
from tests.cocodata import decode_rle, make_coco_dataset
from orchestrator.campaign.arrays import sha256_file
from orchestrator.campaign.ingest import rle_counts_from_string
from orchestrator.campaign.store import (ArrayFile, Category, Event, Image, Mask, count_rows, open_store,
                                read_session)
from orchestrator.search.synth import make_triplets
from orchestrator.search.triplets import save_triplets


@pytest.fixture(scope="module")
def coco_src(tmp_path_factory):
    return make_coco_dataset(tmp_path_factory.mktemp("coco"), n_images=6, counts_as="mixed")


@pytest.fixture
def ds(coco_src, tmp_path):
    """A private copy of the dataset that a test may break."""
    root = tmp_path / "coco"
    shutil.copytree(coco_src.root, root)
    return dataclasses.replace(coco_src, root=root, image_root=root / "images",
                               images_json=root / "instances.json",
                               results_json=root / "results.json",
                               features_npy=root / "features.npy")


@pytest.fixture
def camp(tmp_path):
    d = tmp_path / "camp"
    r = run_cli("init", d)
    assert r.code == 0, r.err
    return d


def ingest_coco(camp, ds, *extra):
    return run_cli("ingest", camp, "--results", ds.results_json, "--features", ds.features_npy,
                   "--images", ds.images_json, "--image-root", ds.image_root, *extra)


def store_counts(camp):
    eng = open_store(camp)
    with read_session(eng) as s:
        out = {m.__name__: count_rows(s, m) for m in (Mask, Image, Category, ArrayFile)}
        out["ingest_events"] = count_rows(s, Event, Event.kind == "ingest")
    eng.dispose()
    return out


def test_coco_round_trip(camp, ds):
    r = ingest_coco(camp, ds)
    assert r.code == 0, r.err
    assert f"ingested {len(ds.results)} masks" in r.out
    eng = open_store(camp)
    with read_session(eng) as s:
        masks = s.execute(select(Mask).order_by(Mask.id)).scalars().all()
        assert [m.id for m in masks] == list(range(len(ds.results)))
        for m, res, pm in zip(masks, ds.results, ds.pred_masks):
            rle = json.loads(m.rle)
            assert isinstance(rle["counts"], str)           # lists are stored compressed
            np.testing.assert_array_equal(decode_rle(rle), pm)
            assert (m.image_id, m.category_id) == (res["image_id"], res["category_id"])
            assert m.score == pytest.approx(res["score"], abs=1e-6)
            assert json.loads(m.bbox) == pytest.approx(res["bbox"])
            assert m.iou is None
        imgs = {i.id: (i.file_name, i.width, i.height) for i in s.execute(select(Image)).scalars()}
        assert imgs == {i["id"]: (i["file_name"], i["width"], i["height"]) for i in ds.images}
        cats = {c.id: c.name for c in s.execute(select(Category)).scalars()}
        assert cats == {c["id"]: c["name"] for c in ds.categories}
        rows = {a.name: a for a in s.execute(select(ArrayFile)).scalars()}
        assert sorted(rows) == ["classes", "features", "scores"]
        for a in rows.values():
            assert a.sha256 == sha256_file(camp / a.path)
    eng.dispose()
    np.testing.assert_array_equal(np.load(camp / "features.npy"), ds.features)
    np.testing.assert_array_equal(np.load(camp / "classes.npy"),
                                  [r["category_id"] for r in ds.results])


def test_ingest_twice_refused_then_replace(camp, ds, tmp_path):
    assert ingest_coco(camp, ds).code == 0
    before = store_counts(camp)
    r = ingest_coco(camp, ds)
    assert r.code == 2 and "already holds" in r.err and "--replace" in r.err
    assert store_counts(camp) == before
    t = make_triplets(50, classes=2, dim=4, seed=1)
    save_triplets(tmp_path / "t.npz", t)
    r = run_cli("ingest", camp, "--triplets", tmp_path / "t.npz", "--replace")
    assert r.code == 0, r.err
    c = store_counts(camp)
    assert c["Mask"] == 50 and c["Image"] == 0 and c["Category"] == 2 and c["ingest_events"] == 2


def test_triplets_ingest_keeps_ious(camp, tmp_path):
    t = make_triplets(300, classes=3, dim=6, seed=0)
    save_triplets(tmp_path / "t.npz", t)
    r = run_cli("ingest", camp, "--triplets", tmp_path / "t.npz")
    assert r.code == 0, r.err
    eng = open_store(camp)
    with read_session(eng) as s:
        rows = s.execute(select(Mask.id, Mask.rle, Mask.iou, Mask.category_id, Mask.score)
                         .order_by(Mask.id)).all()
        assert s.get(ArrayFile, "ious") is not None
    eng.dispose()
    assert len(rows) == 300 and all(r.rle is None for r in rows)
    np.testing.assert_allclose([r.iou for r in rows], t.ious, atol=1e-6)
    np.testing.assert_array_equal([r.category_id for r in rows], t.classes)
    np.testing.assert_allclose(np.load(camp / "scores.npy"), t.scores)


# --------------------------------------------------------------------------- bad inputs
def _edit_results(ds, fn):
    res = json.loads(ds.results_json.read_text())
    fn(res)
    ds.results_json.write_text(json.dumps(res))


def _missing_image(ds):
    (ds.image_root / ds.images[2]["file_name"]).unlink()
    return ds.images[2]["file_name"], "image file not found"


def _wrong_image_id(ds):
    _edit_results(ds, lambda r: r[3].__setitem__("image_id", 424242))
    return "results.json: result 3", "image_id 424242 is not in"


def _wrong_category(ds):
    _edit_results(ds, lambda r: r[1].__setitem__("category_id", 77))
    return "results.json: result 1", "category_id 77"


def _feature_rows(ds):
    np.save(ds.features_npy, ds.features[:-1])
    return "features.npy", "feature rows"


def _nan_feature(ds):
    f = ds.features.copy()
    f[4, 1] = np.nan
    np.save(ds.features_npy, f)
    return "features.npy", "row 4 has NaN"


def _bad_rle_string(ds):
    _edit_results(ds, lambda r: r[0]["segmentation"].__setitem__(
        "counts", r[0]["segmentation"]["counts"][:-3] + "~~~"))
    return "results.json: result 0", "RLE"


def _rle_list_wrong_total(ds):
    def edit(r):
        seg = r[1]["segmentation"]          # result 1 has list counts (mixed)
        assert isinstance(seg["counts"], list)
        seg["counts"][-1] += 5
    _edit_results(ds, edit)
    return "results.json: result 1", "covers"


def _size_mismatch(ds):
    def edit(r):
        seg = r[2]["segmentation"]
        h, w = seg["size"]
        m = decode_rle(seg)
        from tests.cocodata import encode_rle
        r[2]["segmentation"] = encode_rle(np.ascontiguousarray(m.T))   # w x h now
    _edit_results(ds, edit)
    return "results.json: result 2", "differs from image"


def _score_out_of_range(ds):
    _edit_results(ds, lambda r: r[5].__setitem__("score", 1.5))
    return "results.json: result 5", "score must be a number in [0, 1]"


def _polygon(ds):
    _edit_results(ds, lambda r: r[0].__setitem__("segmentation", [[1, 1, 5, 1, 5, 5]]))
    return "results.json: result 0", "RLE dict"


def _not_json(ds):
    ds.results_json.write_text("[{")
    return "results.json", "not valid JSON"


def _duplicate_image_id(ds):
    d = json.loads(ds.images_json.read_text())
    d["images"][1]["id"] = d["images"][0]["id"]
    ds.images_json.write_text(json.dumps(d))
    return "instances.json: image 1", "duplicate image id"


BAD = [_missing_image, _wrong_image_id, _wrong_category, _feature_rows, _nan_feature,
       _bad_rle_string, _rle_list_wrong_total, _size_mismatch, _score_out_of_range, _polygon,
       _not_json, _duplicate_image_id]


@pytest.mark.parametrize("breaker", BAD, ids=[b.__name__.strip("_") for b in BAD])
def test_bad_input_refused_store_unchanged(camp, ds, breaker):
    where, what = breaker(ds)
    before = store_counts(camp)
    r = ingest_coco(camp, ds)
    assert r.code == 2
    assert r.err.startswith("labelprop: error: ") and "\n" not in r.err.strip()
    assert where in r.err and what in r.err, r.err
    assert store_counts(camp) == before == {"Mask": 0, "Image": 0, "Category": 0,
                                            "ArrayFile": 0, "ingest_events": 0}
    assert not (camp / "features.npy").exists()


def test_bad_triplets_and_missing_options(camp, tmp_path):
    r = run_cli("ingest", camp, "--triplets", tmp_path / "nope.npz")
    assert r.code == 2 and "nope.npz: no such file" in r.err
    np.savez(tmp_path / "bad.npz", features=np.ones((3, 2)), scores=np.array([0.1, 2.0, 0.3]),
             classes=np.array([0, 0, 1]))
    r = run_cli("ingest", camp, "--triplets", tmp_path / "bad.npz")
    assert r.code == 2 and "bad.npz" in r.err and "scores" in r.err
    r = run_cli("ingest", camp, "--results", tmp_path / "r.json")
    assert r.code == 2 and "missing --features, --images, --image-root" in r.err
    assert store_counts(camp)["Mask"] == 0


def test_rle_string_decoder_matches_pycocotools():
    from tests.cocodata import encode_rle, uncompressed_rle
    rng = np.random.default_rng(3)
    for t in range(60):
        h, w = rng.integers(1, 40, size=2)
        m = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        if t % 5 == 0:
            m[:] = t % 2
        runs = rle_counts_from_string(encode_rle(m)["counts"])
        assert runs.tolist() == uncompressed_rle(m)["counts"]
    assert rle_counts_from_string("0P") is None     # truncated: continuation bit on last char
    assert rle_counts_from_string("0A").tolist() == [0, -15]   # sign bit: a negative run
    assert rle_counts_from_string("\x01") is None   # below '0'
