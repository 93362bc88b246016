"""`labelprop iterate`: the retraining loop on real detectron2 (CPU, one torch thread).

Round 1: a tiny PointRend model trained for four iterations detects on generated images; the
masks get a ground-truth IoU by image (even image ids correct, odd ones wrong), so the
simulated crowd accepts exactly the masks of even images.  `iterate` then retrains on the
accepted masks, detects again, drops what overlaps an accepted mask and opens round 2, whose
masks get their IoU from a ground truth made of round 1's detections (`--gt`): the masks
of odd images, that round 1 rejected, are found again and accepted in round 2.

The iterate run is SIGKILLed once training is done, crashed in-process after its masks are
ingested, and rerun twice: one round, its masks once, no answer lost.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from detection.shapes import make_shapes_dataset
from orchestrator.campaign.iterate import OverlapRule, overlapping

ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
RULE = OverlapRule()


def labelprop(*args, timeout=900, **kw):
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *map(str, args)],
                          capture_output=True, text=True, env=ENV, timeout=timeout, **kw)


def _rle(m: np.ndarray) -> dict:
    return mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))


def _box(y0, y1, x0, x1, h=40, w=40):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


# ------------------------------------------------------------------------------ pure part
def test_overlap_rule_drops_duplicates_and_parts_of_accepted_objects_of_the_same_image():
    acc = [_rle(_box(0, 20, 0, 20)), _rle(_box(20, 40, 20, 40))]
    new = [_box(0, 20, 2, 22),        # the same object, shifted: IoU 0.82 -> drop
           _box(0, 10, 0, 10),        # a quarter of it: IoU 0.25 but all inside -> drop
           _box(0, 20, 10, 30),       # half on it: IoU 0.33, half inside -> keep
           _box(0, 20, 25, 40),       # elsewhere -> keep
           _box(0, 20, 0, 20)]        # identical, but on another image -> keep
    drop, iou, inside = overlapping([_rle(m) for m in new], np.array([1, 1, 1, 1, 2]),
                                    acc, np.array([1, 1]), RULE)
    assert drop.tolist() == [True, True, False, False, False]
    assert iou[0] == pytest.approx(360 / 440) and iou[1] == pytest.approx(0.25)
    assert inside[1] == pytest.approx(1.0) and inside[2] == pytest.approx(0.5)
    assert iou[4] == 0 and inside[4] == 0
    # the thresholds are the rule's: a stricter IoU keeps the shifted copy
    drop2, _, _ = overlapping([_rle(m) for m in new], np.array([1, 1, 1, 1, 2]), acc,
                              np.array([1, 1]), OverlapRule(iou=0.9, inside=1.0))
    assert drop2.tolist() == [False, True, False, False, False]


def test_a_store_from_before_rounds_opens_intact_as_round_one(tmp_path):
    """An older store (no campaign_round table, no mask.round column) gets both when
    opened; its masks are round 1 and its export and status are unchanged."""
    from orchestrator.actions.campaign import campaign_status, cluster_campaign, init_campaign
    from orchestrator.campaign.ingest import read_triplet_predictions, write_predictions
    from orchestrator.campaign.store import open_store
    from orchestrator.search.synth import make_triplets
    from orchestrator.search.triplets import save_triplets

    camp = tmp_path / "c"
    init_campaign(camp)
    save_triplets(tmp_path / "t.npz", make_triplets(300, classes=2, seed=3))
    eng = open_store(camp)
    write_predictions(eng, camp, read_triplet_predictions(tmp_path / "t.npz"))
    eng.dispose()
    cluster_campaign(camp)
    before = campaign_status(camp)
    db = sqlite3.connect(camp / "campaign.db")
    db.execute("DROP TABLE campaign_round")
    db.execute("DROP INDEX ix_mask_round")
    db.execute("ALTER TABLE mask DROP COLUMN round")
    db.commit()
    assert "round" not in [r[1] for r in db.execute("PRAGMA table_info(mask)")]
    db.close()
    after = campaign_status(camp)
    assert after["masks"] == before["masks"] == 300
    assert after["rounds"] == [{"round": 1, "step": "open", "masks": 300, "accepted_masks": 0,
                                "rejected_masks": 0, "undecided_masks": 300}]
    db = sqlite3.connect(camp / "campaign.db")
    assert db.execute("SELECT count(*), min(round), max(round) FROM mask").fetchone() == (300, 1, 1)
    assert db.execute("SELECT count(*) FROM campaign_round").fetchone() == (0,)
    db.close()


# ------------------------------------------------------------------------------ end to end
def _round_rows(camp: Path) -> dict:
    db = sqlite3.connect(camp / "campaign.db")
    try:
        return dict(db.execute("SELECT round, step FROM campaign_round").fetchall())
    except sqlite3.OperationalError:
        return {}
    finally:
        db.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from orchestrator.actions.campaign import cluster_campaign, init_campaign
    from orchestrator.actions.run import run_simulated
    from orchestrator.campaign.ingest import read_predictions, write_predictions
    from orchestrator.campaign.store import open_store

    root = tmp_path_factory.mktemp("iter")
    make_shapes_dataset(root / "train", 12, size=128, n_classes=3, seed=0)
    make_shapes_dataset(root / "pool", 6, size=128, n_classes=3, seed=7)
    r = labelprop("train", root / "train/instances.json", "--out", root / "model", "--preset",
                  "small", "--iters", 4, "--batch", 2, "--threads", 1, "--quiet")
    assert r.returncode == 0, r.stderr
    dets = root / "dets"
    r = labelprop("detect", root / "pool/instances.json", "--weights", root / "model", "--out", dets,
                  "--min-score", 0, "--min-area", 0, "--max-per-image", 5, "--threads", 1, "--quiet")
    assert r.returncode == 0, r.stderr
    res = json.loads((dets / "results.json").read_text())
    assert len({x["image_id"] for x in res}) >= 4
    for x in res:
        x["iou"] = 1.0 if x["image_id"] % 2 == 0 else 0.0
    (dets / "results_iou.json").write_text(json.dumps(res))
    gt = json.loads((dets / "images.json").read_text())
    gt["annotations"] = [{"id": i + 1, "image_id": x["image_id"], "category_id": x["category_id"],
                          "segmentation": x["segmentation"], "bbox": x["bbox"], "area": 1.0,
                          "iscrowd": 0} for i, x in enumerate(res)]
    (root / "gt.json").write_text(json.dumps(gt))
    camp = root / "camp"
    init_campaign(camp)
    toml = (camp / "campaign.toml").read_text()
    toml = toml.replace("kpa = 0.7", "kpa = 0.0")     # an untrained model's scores are low
    (camp / "campaign.toml").write_text(toml)
    eng = open_store(camp)
    write_predictions(eng, camp, read_predictions(dets / "results_iou.json", dets / "features.npy",
                                                  dets / "images.json", root / "pool/images"))
    eng.dispose()
    cluster_campaign(camp)
    shutil.copytree(camp, root / "unsearched")
    r1 = run_simulated(camp)
    return {"root": root, "camp": camp, "n1": len(res), "round1": r1, "results": res}


def test_iterate_killed_and_crashed_runs_round_two_once_and_proposes_no_overlapping_mask(world):
    from orchestrator.actions.campaign import campaign_status
    from orchestrator.actions.iterate import iterate_campaign
    from orchestrator.actions.run import run_simulated
    from orchestrator.campaign.export import export_coco
    from orchestrator.campaign.store import open_store

    root, camp, n1 = world["root"], world["camp"], world["n1"]
    even = sum(1 for x in world["results"] if x["image_id"] % 2 == 0)
    assert world["round1"]["accepted_masks"] == even > 0
    args = ["iterate", camp, "--iters", 1, "--threads", 1, "--gt", root / "gt.json", "--quiet"]
    # 1. SIGKILL (the whole process group: iterate and its `labelprop detect`) once trained
    p = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *map(str, args)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                         start_new_session=True)
    deadline = time.monotonic() + 900
    while _round_rows(camp).get(2) != "detect" and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    seen = _round_rows(camp)
    os.killpg(p.pid, signal.SIGKILL)
    p.communicate()
    assert seen == {1: "frozen", 2: "detect"}, p.stderr if p.returncode else seen
    assert (camp / "rounds/round-2/model/model_final.pth").is_file()
    # while round 2 is prepared, the search says so
    r = labelprop("run", camp)
    assert r.returncode == 2 and "round 2 is being prepared" in r.stderr and "step: detect" in r.stderr
    # 2. crash in-process right after the masks are ingested (the cluster step)
    import orchestrator.actions.campaign as cc

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cc, "cluster_campaign", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
        with pytest.raises(RuntimeError, match="boom"):
            iterate_campaign(camp, quiet=True, capture=True)
    assert _round_rows(camp) == {1: "frozen", 2: "cluster"}
    kept = json.loads((camp / "rounds/round-2/new/results.json").read_text())
    all_new = json.loads((camp / "rounds/round-2/dets/results.json").read_text())
    assert 0 < len(kept) < len(all_new)
    # 3. rerun: it resumes at the cluster step and opens round 2
    r = labelprop(*args)
    assert r.returncode == 0, r.stderr
    assert f"round 2 is ready: {len(kept)} masks" in r.stdout
    assert _round_rows(camp) == {1: "frozen", 2: "open"}
    db = sqlite3.connect(camp / "campaign.db")
    ids = [i for (i,) in db.execute("SELECT id FROM mask ORDER BY id")]
    assert ids == list(range(n1 + len(kept)))
    assert db.execute("SELECT count(*) FROM mask WHERE round = 2").fetchone() == (len(kept),)
    assert db.execute("SELECT count(*) FROM event WHERE kind = 'round_start'").fetchone() == (1,)
    answers1 = db.execute("SELECT count(*) FROM answer").fetchone()[0]
    assert answers1 == n1
    acc1 = db.execute("SELECT image_id, rle FROM mask WHERE round = 1 AND iou = 1.0").fetchall()
    new = db.execute("SELECT image_id, rle FROM mask WHERE round = 2").fetchall()
    db.close()
    assert np.load(camp / "features.npy").shape[0] == n1 + len(kept)
    # never a mask that overlaps an accepted one (recomputed here with pycocotools)
    for iid, rle in new:
        rle = json.loads(rle)
        mine = [json.loads(t) for i, t in acc1 if i == iid]
        if not mine:
            continue
        dt = [{"size": rle["size"], "counts": rle["counts"].encode()}]
        gt = [{"size": m["size"], "counts": m["counts"].encode()} for m in mine]
        assert max(mask_utils.iou(dt, gt, [0] * len(gt))[0]) < RULE.iou
        assert max(mask_utils.iou(dt, gt, [1] * len(gt))[0]) < RULE.inside
    # a rerun adds no round: round 2 has nothing accepted yet
    r = labelprop(*args)
    assert r.returncode == 2 and "round 2 has no accepted masks yet" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert _round_rows(camp) == {1: "frozen", 2: "open"}
    # the search goes on in round 2 and accepts masks (odd images: rejected in round 1)
    out = run_simulated(camp)
    st = campaign_status(camp)
    rounds = {x["round"]: x for x in st["rounds"]}
    assert rounds[1]["accepted_masks"] == even and rounds[2]["masks"] == len(kept)
    assert rounds[2]["accepted_masks"] > 0 and out["accepted_masks"] == rounds[2]["accepted_masks"]
    assert out["masks"] == len(kept)          # `run` reports on the round it searches
    assert st["accepted_masks"] == even + rounds[2]["accepted_masks"]
    eng = open_store(camp)
    export_coco(eng, camp, root / "all.json")
    eng.dispose()
    exp = json.loads((root / "all.json").read_text())
    by_round = {1: 0, 2: 0}
    for a in exp["annotations"]:
        by_round[1 if a["mask_id"] < n1 else 2] += 1
    assert by_round == {1: even, 2: rounds[2]["accepted_masks"]}


@pytest.mark.parametrize("case", ["triplets", "unsearched", "missing-train", "no-detect-json"])
def test_iterate_bad_input_one_line_nothing_changed(world, tmp_path, case):
    root = world["root"]
    extra = []
    if case == "triplets":
        from orchestrator.actions.campaign import init_campaign
        from orchestrator.campaign.ingest import read_triplet_predictions, write_predictions
        from orchestrator.campaign.store import open_store
        from orchestrator.search.synth import make_triplets
        from orchestrator.search.triplets import save_triplets

        camp = tmp_path / "t"
        init_campaign(camp)
        save_triplets(tmp_path / "t.npz", make_triplets(50, classes=1, seed=1))
        eng = open_store(camp)
        write_predictions(eng, camp, read_triplet_predictions(tmp_path / "t.npz"))
        eng.dispose()
        want = "not started from detections"
    else:
        camp = tmp_path / "c"
        shutil.copytree(root / "unsearched", camp)
        if case == "unsearched":
            want = "round 1 has no accepted masks yet"
        else:
            from orchestrator.actions.run import run_simulated

            run_simulated(camp)
            if case == "missing-train":
                extra = ["--train-data", tmp_path / "nope.json"]
                want = "nope.json: no such file (the initial training data"
            else:
                (root / "dets/detect.json").rename(tmp_path / "detect.json")
                want = "detect.json: not found: the campaign was not started from `labelprop detect`"
    files = sorted(p.relative_to(camp).as_posix() for p in camp.rglob("*") if "-wal" not in p.name
                   and "-shm" not in p.name)
    try:
        r = labelprop("iterate", camp, "--gt", root / "gt.json", *extra)
    finally:
        if (tmp_path / "detect.json").exists():
            (tmp_path / "detect.json").rename(root / "dets/detect.json")
    assert r.returncode == 2, r.stdout + r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and want in r.stderr, r.stderr
    assert _round_rows(camp) == {}
    assert not (camp / "rounds").exists()
    after = sorted(p.relative_to(camp).as_posix() for p in camp.rglob("*") if "-wal" not in p.name
                   and "-shm" not in p.name)
    assert after == files
