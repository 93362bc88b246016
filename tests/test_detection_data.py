"""Detection's torch-free parts: synthetic shapes, matching predictions to ground truth,
evaluate, calibrate --heldout, the package boundary, and the CLI on a box without torch."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from typer.testing import CliRunner

from tests.cocodata import make_coco_dataset
from detection.shapes import make_shapes_dataset, shape_mask
from orchestrator.search.evaluate import evaluate_detections
from orchestrator.search.triplets import match_ious, triplets_from_coco

REPO = Path(__file__).resolve().parents[1]


def _decode(seg):
    return mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()})


def test_shapes_dataset_is_seeded_valid_coco_with_disjoint_visible_masks(tmp_path):
    a = make_shapes_dataset(tmp_path / "a", 10, size=96, n_classes=5, seed=3)
    b = make_shapes_dataset(tmp_path / "b", 10, size=96, n_classes=5, seed=3)
    c = make_shapes_dataset(tmp_path / "c", 10, size=96, n_classes=5, seed=4)
    ja, jb, jc = (json.loads(Path(x["instances_json"]).read_text()) for x in (a, b, c))
    assert ja == jb and ja != jc
    assert (tmp_path / "a/images/img_000001.png").read_bytes() == \
        (tmp_path / "b/images/img_000001.png").read_bytes()
    assert a["annotations"] >= 10 and {c["name"] for c in ja["categories"]} == \
        {"disc", "box", "bar", "ring", "diamond"}
    by_image = {}
    for ann in ja["annotations"]:
        m = _decode(ann["segmentation"])
        im = next(i for i in ja["images"] if i["id"] == ann["image_id"])
        assert m.shape == (im["height"], im["width"])
        assert int(m.sum()) == ann["area"] > 0
        by_image.setdefault(ann["image_id"], []).append(m.astype(bool))
    for masks in by_image.values():            # occlusion leaves visible parts disjoint
        total = np.sum(masks, axis=0)
        assert total.max() <= 1


def test_shape_masks_are_distinct_and_rotate():
    masks = [shape_mask(40, 50, kind, 20.0, 25.0, 10.0, 12.0) for kind in range(6)]
    for i in range(6):
        for j in range(i):
            assert not np.array_equal(masks[i], masks[j])
    for kind in range(6):
        m = shape_mask(40, 50, kind, 20.0, 25.0, 10.0, 12.0)
        assert m.dtype == np.uint8 and 20 < m.sum() < 40 * 50
    assert not np.array_equal(shape_mask(40, 50, 1, 20, 25, 10, 12, angle=0.6),
                              shape_mask(40, 50, 1, 20, 25, 10, 12))


def test_match_ious_finds_each_predictions_best_ground_truth(tmp_path):
    ds = make_coco_dataset(tmp_path / "c", n_images=6, counts_as="mixed", seed=1)
    gt = json.loads(ds.images_json.read_text())
    res = json.loads(ds.results_json.read_text())
    ious = match_ious(gt, res)
    assert ious.shape == (len(res),) and ious.dtype == np.float32
    # each prediction was made from one ground-truth object: its best match is at least that
    assert np.all(ious >= ds.pred_iou - 1e-6)
    assert np.mean(np.abs(ious - ds.pred_iou) < 1e-6) > 0.8
    # a prediction whose class has no ground truth in its image matches nothing
    res[0] = dict(res[0], category_id=99)
    assert match_ious(gt, res)[0] == 0.0


def test_triplets_from_coco_and_calibrate_heldout(tmp_path):
    from orchestrator.cli.data import register

    import typer

    ds = make_coco_dataset(tmp_path / "c", n_images=12, seed=2, preds_per_object=3)
    t = triplets_from_coco(ds.images_json, ds.results_json, ds.features_npy)
    assert t.n == len(ds.results) and t.ious is not None and t.dim == ds.features.shape[1]
    app = typer.Typer()
    register(app)
    r = CliRunner().invoke(app, ["calibrate", "--heldout", str(ds.images_json), "--results",
                                 str(ds.results_json), "--features", str(ds.features_npy),
                                 "--min-size", "3", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["nodes_used"] > 0 and 0.0 <= out["kpr"] <= out["kpa"] <= 1.0
    # features with the wrong number of rows: one clear error
    np.save(tmp_path / "short.npy", ds.features[:-1])
    r = CliRunner().invoke(app, ["calibrate", "--heldout", str(ds.images_json), "--results",
                                 str(ds.results_json), "--features", str(tmp_path / "short.npy")])
    assert r.exit_code != 0 and "feature row per result" in str(r.exception)


def test_evaluate_perfect_and_degraded_predictions(tmp_path):
    ds = make_coco_dataset(tmp_path / "c", n_images=8, seed=3)
    gt = json.loads(ds.images_json.read_text())
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"],
                "segmentation": a["segmentation"], "score": 0.9, "class_score": 0.9,
                "pred_iou": 1.0} for a in gt["annotations"]]
    (tmp_path / "perfect.json").write_text(json.dumps(perfect))
    ev = evaluate_detections(ds.images_json, tmp_path / "perfect.json")
    assert ev["mask"]["AP"] > 0.99 and ev["mean_true_iou"] > 0.999
    assert ev["precision_at_kiou"][0]["precision_by_score"] == 1.0
    # the perturbed predictions: scores carry the IoU, so ranking by them beats chance
    res = json.loads(ds.results_json.read_text())
    for r, q in zip(res, ds.pred_iou):
        r["pred_iou"], r["class_score"] = float(q), 0.5
    (tmp_path / "r.json").write_text(json.dumps(res))
    ev = evaluate_detections(ds.images_json, tmp_path / "r.json")
    assert ev["pearson_r_pred_iou"] > 0.9
    assert ev["mask"]["AP"] < 0.99


def _imports(path: Path) -> set[str]:
    mods = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            mods.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            mods.add(node.module.split(".")[0])
    return mods


def test_detection_and_orchestrator_do_not_import_each_other():
    for p in (REPO / "detection").rglob("*.py"):
        assert "orchestrator" not in _imports(p), p
    for p in (REPO / "orchestrator").rglob("*.py"):
        assert "detection" not in _imports(p), p
        assert "torch" not in _imports(p), p


def test_without_torch_help_works_and_detection_commands_say_how_to_install(tmp_path):
    block = ("import sys\n"
             "class Block:\n"
             "    def find_spec(self, name, path=None, target=None):\n"
             "        if name.split('.')[0] in ('torch', 'torchvision', 'detectron2'):\n"
             "            raise ImportError(f'No module named {name!r}')\n"
             "sys.meta_path.insert(0, Block())\n"
             "from orchestrator.cli.app import main\n"
             "sys.argv = ['labelprop'] + sys.argv[1:]\n"
             "main()\n")
    run = lambda *a: subprocess.run([sys.executable, "-c", block, *a], capture_output=True,  # noqa: E731
                                    text=True, cwd=tmp_path, timeout=120)
    r = run("--help")
    assert r.returncode == 0 and "detect" in r.stdout and "train" in r.stdout
    r = run("train", "x.json", "--out", "m")
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "pip install 'labelprop[detect]'" in lines[0]
    assert not (tmp_path / "m").exists()
    r = run("shapes", "data", "--images", "2", "--size", "64")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["images"] == 2
