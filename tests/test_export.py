"""`labelprop export`: exactly the masks under accepted nodes, as COCO or as indices."""
from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from tests.cli_helpers import run_cli
from tests.cocodata import decode_rle, make_coco_dataset
from orchestrator.campaign.arrays import load_forest
from orchestrator.search.search import NodeState
from orchestrator.campaign.store import Node, bulk_insert, open_store, read_session, transaction
from orchestrator.search.synth import make_triplets
from orchestrator.search.triplets import save_triplets


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return make_coco_dataset(tmp_path_factory.mktemp("coco"), n_images=8, n_categories=3,
                             seed=5)


@pytest.fixture
def camp(tmp_path, ds):
    d = tmp_path / "camp"
    assert run_cli("init", d).code == 0
    r = run_cli("ingest", d, "--results", ds.results_json, "--features", ds.features_npy,
                "--images", ds.images_json, "--image-root", ds.image_root)
    assert r.code == 0, r.err
    r = run_cli("cluster", d)
    assert r.code == 0, r.err
    return d


def mark(camp, states: dict[int, NodeState]):
    eng = open_store(camp)
    with read_session(eng) as s:
        forest = load_forest(s, camp)
    with transaction(eng) as s:
        bulk_insert(s, Node, [{"node_id": int(j), "class_id": int(forest.node_class[j]),
                               "state": int(st), "seq": i, "rounds": 1}
                              for i, (j, st) in enumerate(states.items())])
    eng.dispose()
    return forest


def pick_nodes(forest):
    """An internal node of the first tree, a leaf of the second, the root of the third."""
    r0, r1, r2 = (int(r) for r in forest.roots[:3])
    inner = int(forest.left[r0]) if forest.left[r0] >= 0 else r0
    leaf = int(forest.leaf_of_mask[forest.masks(r1)[0]])
    return inner, leaf, r2


def test_export_coco_exactly_accepted(camp, ds, tmp_path):
    eng = open_store(camp)
    with read_session(eng) as s:
        forest = load_forest(s, camp)
    eng.dispose()
    inner, leaf, root = pick_nodes(forest)
    # the parent of `inner` split, a sibling was rejected: neither adds masks
    sibling = int(forest.right[forest.parent[inner]]) if forest.parent[inner] >= 0 else None
    states = {inner: NodeState.ACCEPTED, leaf: NodeState.ACCEPTED, root: NodeState.ACCEPTED}
    if sibling is not None and sibling != inner:
        states[int(forest.parent[inner])] = NodeState.SPLIT
        states[sibling] = NodeState.REJECTED
    mark(camp, states)
    expected = sorted(set(forest.masks(inner).tolist()) | set(forest.masks(leaf).tolist())
                      | set(forest.masks(root).tolist()))
    assert 0 < len(expected) < len(ds.results)
    out = tmp_path / "accepted.json"
    r = run_cli("export", camp, "--coco", out, "--indices", tmp_path / "acc.txt")
    assert r.code == 0, r.err
    assert f"wrote {len(expected)} accepted masks" in r.out
    coco = COCO(str(out))
    anns = coco.loadAnns(coco.getAnnIds())
    assert sorted(a["mask_id"] for a in anns) == expected
    assert sorted(a["id"] for a in anns) == [m + 1 for m in expected]
    assert len(coco.getImgIds()) == len(ds.images) and len(coco.getCatIds()) == 3
    for a in anns:
        res = ds.results[a["mask_id"]]
        assert isinstance(a["segmentation"]["counts"], str) and a["iscrowd"] == 0
        assert (a["image_id"], a["category_id"]) == (res["image_id"], res["category_id"])
        m = coco.annToMask(a)
        np.testing.assert_array_equal(m, ds.pred_masks[a["mask_id"]])
        assert a["area"] == pytest.approx(float(m.sum()))
        x, y, w, h = a["bbox"]
        ys, xs = np.nonzero(m)
        assert (x, y, w, h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1,
                                ys.max() - ys.min() + 1)
        assert a["score"] == pytest.approx(res["score"], abs=1e-6)
    txt = [int(v) for v in (tmp_path / "acc.txt").read_text().split()]
    assert txt == expected
    assert json.loads(out.read_text())["categories"] == ds.categories


def test_export_nothing_accepted_and_errors(camp, tmp_path):
    mark(camp, {})
    r = run_cli("export", camp, "--coco", tmp_path / "a.json")
    assert r.code == 0 and "wrote 0 accepted masks" in r.out
    assert COCO(str(tmp_path / "a.json")).getAnnIds() == []
    r = run_cli("export", camp, "--indices", tmp_path / "a.csv")
    assert r.code == 2 and "a.csv: --indices must end in .npy or .txt" in r.err
    r = run_cli("export", camp, "--coco", tmp_path / "nodir" / "a.json")
    assert r.code == 2 and "does not exist" in r.err
    r = run_cli("export", camp)
    assert r.code == 2 and "--coco" in r.err


def test_export_triplet_indices(tmp_path):
    t = make_triplets(120, classes=2, dim=4, seed=2)
    save_triplets(tmp_path / "t.npz", t)
    d = tmp_path / "sim"
    assert run_cli("init", d).code == 0
    assert run_cli("ingest", d, "--triplets", tmp_path / "t.npz").code == 0
    r = run_cli("export", d, "--indices", tmp_path / "none.npy")
    assert r.code == 2 and "no trees yet" in r.err
    assert run_cli("cluster", d).code == 0
    forest = mark(d, {})
    eng = open_store(d)
    with transaction(eng) as s:
        bulk_insert(s, Node, [{"node_id": int(forest.roots[1]), "class_id": 1, "state": 3,
                               "seq": 0}])
    eng.dispose()
    r = run_cli("export", d, "--indices", tmp_path / "acc.npy")
    assert r.code == 0, r.err
    got = np.load(tmp_path / "acc.npy")
    np.testing.assert_array_equal(got, np.flatnonzero(t.classes == forest.root_class[1]))
    r = run_cli("export", d, "--coco", tmp_path / "x.json")
    assert r.code == 2 and "triplet campaign" in r.err and not (tmp_path / "x.json").exists()
