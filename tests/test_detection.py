"""Detection with real detectron2 on CPU: one PointRend R18-FPN (the tiny preset) trained once
per module (through the CLI, SIGKILLed after its first checkpoint and resumed), then
detection, sharding, Ray, features, the mask-IoU head, ingest and bad input."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from tests.cli_helpers import run_cli
from detection.shapes import make_shapes_dataset

ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
ITERS, PERIOD = 6, 3
DETECT_ARGS = ["--min-score", "0", "--min-area", "0", "--max-per-image", "5", "--threads", "1",
               "--chunk-size", "2", "--batch-size", "2", "--quiet"]


def labelprop(*args, cwd=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *map(str, args)],
                          capture_output=True, text=True, env=ENV, cwd=cwd, timeout=timeout)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    make_shapes_dataset(root / "train", 12, size=128, n_classes=3, seed=0)
    make_shapes_dataset(root / "pool", 5, size=128, n_classes=3, seed=7)
    return root


@pytest.fixture(scope="module")
def trained(data):
    """Train through the CLI, SIGKILL it right after its first checkpoint, then rerun it."""
    out = data / "model"
    cmd = [sys.executable, "-m", "orchestrator.cli", "train", str(data / "train/instances.json"),
           "--out", str(out), "--preset", "tiny", "--iters", str(ITERS), "--batch", "2",
           "--checkpoint-period", str(PERIOD), "--threads", "1", "--quiet"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    tag = out / "last_checkpoint"
    deadline = time.monotonic() + 900
    while not (tag.is_file() and tag.read_text().strip()) and p.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    killed_at = tag.read_text().strip() if tag.is_file() else None
    p.send_signal(signal.SIGKILL)
    p.communicate()
    first = sorted(x.name for x in out.glob("*.pth"))
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=900)
    return {"out": out, "killed_at": killed_at, "first_files": first, "resume": r,
            "killed_rc": p.returncode}


def test_train_is_killed_resumes_and_lowers_the_loss(trained):
    from detection.train import read_metrics

    out = trained["out"]
    assert trained["killed_rc"] == -signal.SIGKILL
    assert trained["killed_at"] == f"model_{PERIOD - 1:07d}.pth"
    assert "model_final.pth" not in trained["first_files"]
    r = trained["resume"]
    assert r.returncode == 0, r.stderr
    assert f"resumed from {PERIOD}" in r.stdout
    assert (out / "model_final.pth").is_file() and (out / "config.yaml").is_file()
    m = read_metrics(out)
    assert [d["iteration"] for d in m] == list(range(ITERS))
    for d in m:
        assert {"loss_cls", "loss_mask", "loss_mask_point", "loss_maskiou", "loss_rpn_cls"} <= set(d)
    losses = [d["total_loss"] for d in m]
    assert np.mean(losses[-2:]) < losses[0]
    again = labelprop("train", out.parent / "train/instances.json", "--out", out, "--preset",
                      "tiny", "--iters", ITERS, "--batch", 2, "--checkpoint-period", PERIOD,
                      "--quiet")
    assert again.returncode == 0 and "already trained" in again.stdout
    other = labelprop("train", out.parent / "train/instances.json", "--out", out, "--preset",
                      "tiny", "--iters", ITERS, "--batch", 2, "--lr", "0.5", "--quiet")
    assert other.returncode == 2 and "SOLVER.BASE_LR" in other.stderr


@pytest.fixture(scope="module")
def detected(data, trained):
    out = data / "dets"
    r = labelprop("detect", data / "pool/instances.json", "--weights", trained["out"], "--out",
                  out, *DETECT_ARGS)
    assert r.returncode == 0, r.stderr
    return out


def _options(weights, **kw):
    from detection.infer import DetectOptions

    return DetectOptions(weights=str(weights), min_score=0.0, min_area=0.0, max_per_image=5,
                         batch_size=2, threads=1, **kw)


def test_detect_writes_coco_results_and_features_that_ingest_accepts(data, detected, tmp_path):
    res = json.loads((detected / "results.json").read_text())
    feats = np.load(detected / "features.npy")
    images = json.loads((detected / "images.json").read_text())
    proj = np.load(detected / "projection.npy")
    assert len(res) > 0 and feats.shape == (len(res), 64) and feats.dtype == np.float32
    assert proj.shape == (128, 64)          # the tiny preset's FPN width
    assert np.isfinite(feats).all() and not (detected / ".parts").exists()
    sizes = {im["id"]: (im["height"], im["width"]) for im in images["images"]}
    assert len(sizes) == 5 and {c["name"] for c in images["categories"]} == {"disc", "box", "bar"}
    for r in res:
        m = mask_utils.decode({"size": r["segmentation"]["size"],
                               "counts": r["segmentation"]["counts"].encode()})
        assert m.shape == sizes[r["image_id"]] and m.any()
        assert 0.0 <= r["score"] <= 1.0 and 0.0 <= r["pred_iou"] <= 1.0
        assert r["score"] == pytest.approx(r["class_score"] * r["pred_iou"], rel=1e-5, abs=1e-7)
    per_image = {}
    for r in res:
        per_image[r["image_id"]] = per_image.get(r["image_id"], 0) + 1
    assert max(per_image.values()) <= 5
    camp = tmp_path / "camp"
    assert run_cli("init", camp).code == 0
    r = run_cli("ingest", camp, "--results", detected / "results.json", "--features",
                detected / "features.npy", "--images", detected / "images.json",
                "--image-root", data / "pool/images")
    assert r.code == 0, r.err
    assert run_cli("cluster", camp).code == 0
    st = run_cli("status", camp, "--json")
    assert json.loads(st.out)["masks"] == len(res)


def test_features_are_deterministic_and_shards_concatenate_to_the_whole(data, trained, detected,
                                                                        tmp_path):
    from detection.data import list_images
    from detection.infer import detect

    entries, root = list_images(data / "pool/instances.json")
    detect(entries, root, tmp_path / "again", _options(trained["out"]), chunk_size=2)
    assert (tmp_path / "again/results.json").read_bytes() == (detected / "results.json").read_bytes()
    assert np.array_equal(np.load(tmp_path / "again/features.npy"), np.load(detected / "features.npy"))
    res, feats = [], []
    for i in range(2):
        d = tmp_path / f"shard{i}"
        detect(entries, root, d, _options(trained["out"]), shard=(i, 2), chunk_size=2)
        res += json.loads((d / "results.json").read_text())
        feats.append(np.load(d / "features.npy"))
    assert res == json.loads((detected / "results.json").read_text())
    assert np.array_equal(np.concatenate(feats), np.load(detected / "features.npy"))


def test_ray_data_job_writes_the_same_results(data, trained, detected, tmp_path):
    r = labelprop("detect", data / "pool/instances.json", "--weights", trained["out"], "--out",
                  tmp_path / "ray", "--ray", "local", "--workers", "2", *DETECT_ARGS)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "ray/results.json").read_bytes() == (detected / "results.json").read_bytes()
    assert np.array_equal(np.load(tmp_path / "ray/features.npy"), np.load(detected / "features.npy"))


def test_detect_resumes_from_finished_chunks(data, trained, detected, tmp_path):
    from detection.data import list_images
    from detection.infer import detect

    entries, root = list_images(data / "pool/instances.json")
    out = tmp_path / "d"
    calls = []
    with pytest.raises(KeyboardInterrupt):
        def stop_after_first(done, total, n):
            calls.append(done)
            if done >= 2:
                raise KeyboardInterrupt
        detect(entries, root, out, _options(trained["out"]), chunk_size=2, progress=stop_after_first)
    assert (out / ".parts/000000.json").is_file() and not (out / "results.json").exists()
    seen = []
    detect(entries, root, out, _options(trained["out"]), chunk_size=2,
           progress=lambda d, t, n: seen.append(d))
    assert seen[0] == 2                      # the first chunk was not recomputed
    assert (out / "results.json").read_bytes() == (detected / "results.json").read_bytes()


def test_maskiou_head_gets_gradients_and_changes_with_training(data, trained):
    import torch
    from detectron2.data import DatasetMapper
    from detectron2.data.datasets import load_coco_json
    from detectron2.modeling import build_model

    import detection.modeling  # noqa: F401
    from detection.checkpoint import load_model_weights
    from detection.config import load_cfg

    cfg = load_cfg(str(trained["out"] / "config.yaml"))
    torch.manual_seed(0)
    model = build_model(cfg)
    load_model_weights(model, str(trained["out"] / "model_final.pth"))
    dicts = load_coco_json(str(data / "train/instances.json"), str(data / "train/images"),
                           "labelprop_test_gradients")
    mapper = DatasetMapper(cfg, is_train=True)
    batch = [mapper(dict(d)) for d in dicts if d["annotations"]][:2]
    from detectron2.utils.events import EventStorage

    model.train()
    with EventStorage(0):
        losses = model(batch)
    losses["loss_maskiou"].backward()
    head = model.roi_heads.maskiou_head
    grads = [p.grad for p in head.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    # the IoU loss also trains the RoI features under the head
    assert model.backbone.fpn_output2.weight.grad is not None
    # the head's output moved between the killed run's first checkpoint and the end
    channels = head.convs[0].in_channels - 1
    x = torch.randn(3, channels, 14, 14, generator=torch.Generator().manual_seed(1))
    mask = torch.rand(3, 1, 14, 14, generator=torch.Generator().manual_seed(2))
    model.eval()
    with torch.no_grad():
        end = head(x, mask)
        state = torch.load(trained["out"] / f"model_{PERIOD - 1:07d}.pth", weights_only=True)["model"]
        model.load_state_dict(state, strict=False)
        mid = head(x, mask)
    assert not torch.allclose(end, mid)


def test_maskiou_losses():
    import torch

    from detection.modeling import maskiou_loss

    t = torch.tensor([0.2, 0.9, 0.5])
    assert float(maskiou_loss(t.clone(), t, "relaxed")) == pytest.approx(0.0)
    assert float(maskiou_loss(t.clone(), t, "l2")) == pytest.approx(0.0)
    p = torch.tensor([0.4, 0.9, 0.5])
    assert float(maskiou_loss(p, t, "relaxed")) == pytest.approx(1 - 1.6 / 1.8)
    assert float(maskiou_loss(p, t, "l2")) == pytest.approx(0.04 / 3)


def test_bad_input_gives_one_line_and_writes_nothing(data, trained, tmp_path):
    def one_line(r):
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1, r.stderr
        return lines[0]

    # a COCO file naming a missing image
    coco = json.loads((data / "train/instances.json").read_text())
    coco["images"][3]["file_name"] = "nope.png"
    (tmp_path / "missing.json").write_text(json.dumps(coco))
    msg = one_line(labelprop("train", tmp_path / "missing.json", "--image-root",
                             data / "train/images", "--out", tmp_path / "m1", "--preset", "tiny"))
    assert "nope.png" in msg and not (tmp_path / "m1").exists()
    # a corrupt image, in training and in detection
    bad = tmp_path / "bad"
    shutil.copytree(data / "pool", bad)
    (bad / "images/img_000003.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    msg = one_line(labelprop("train", bad / "instances.json", "--out", tmp_path / "m2",
                             "--preset", "tiny"))
    assert "img_000003.png" in msg and "corrupt" in msg and not (tmp_path / "m2").exists()
    msg = one_line(labelprop("detect", bad / "images", "--weights", trained["out"], "--out",
                             tmp_path / "d1", *DETECT_ARGS))
    assert "img_000003.png" in msg and not (tmp_path / "d1/results.json").exists()
    # weights of another architecture
    import torch
    import torchvision

    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(trained["out"] / "config.yaml", other / "config.yaml")
    torch.save({"model": torchvision.models.resnet18().state_dict()}, other / "model_final.pth")
    msg = one_line(labelprop("detect", data / "pool/images", "--weights", other, "--out",
                             tmp_path / "d2", *DETECT_ARGS))
    assert "another architecture" in msg and not (tmp_path / "d2").exists()
    # --shard out of range
    msg = one_line(labelprop("detect", data / "pool/images", "--weights", trained["out"],
                             "--out", tmp_path / "d3", "--shard", "3/2"))
    assert "--shard 3/2" in msg and not (tmp_path / "d3").exists()


@pytest.mark.parametrize("preset,depth,channels", [("default", 50, 256), ("small", 50, 256),
                                                    ("tiny", 18, 128)])
def test_every_preset_builds_the_same_model_family_and_scores_masks(preset, depth, channels):
    import torch
    from detectron2.modeling import build_model

    import detection.modeling  # noqa: F401
    from detection.config import get_labelprop_cfg

    cfg = get_labelprop_cfg(3, preset=preset)
    assert cfg.MODEL.RESNETS.DEPTH == depth and cfg.MODEL.FPN.OUT_CHANNELS == channels
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 96, 128     # cheap on CPU
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0                    # random weights: keep all
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    assert type(model.roi_heads).__name__ == "LabelpropROIHeads"
    assert type(model.roi_heads.mask_head).__name__ == "LabelpropMaskHead"
    image = torch.randint(0, 255, (3, 96, 112), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        inst = model([{"image": image.float(), "height": 96, "width": 112}])[0]["instances"]
    assert len(inst) > 0 and inst.pred_masks.shape[1:] == (96, 112)
    assert inst.pred_features.shape == (len(inst), 64)
    assert model.roi_heads.feature_projection.shape == (channels, 64)
    assert bool(((inst.scores >= 0) & (inst.scores <= 1)).all())
    assert torch.allclose(inst.scores, inst.class_scores * inst.pred_maskiou)


@pytest.mark.parametrize("iters", [1, 2, 3, 4, 300])
def test_lr_schedule_builds_for_any_iteration_count(tmp_path, iters):
    """`train --iters 2` or `3` used to put both learning-rate drops on the same step, which
    detectron2's scheduler refuses; the milestones must stay strictly increasing."""
    import torch
    from detectron2.solver import build_lr_scheduler

    from detection.data import CocoSource
    from detection.train import TrainOptions, build_train_cfg

    src = CocoSource("a.json", str(tmp_path), ((1, "thing"),), 1, 1)
    cfg = build_train_cfg([src], TrainOptions(preset="tiny", iters=iters), tmp_path)
    steps = list(cfg.SOLVER.STEPS)
    assert steps == sorted(set(steps)) and all(0 < s < iters for s in steps)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = build_lr_scheduler(cfg, opt)
    for _ in range(iters):
        opt.step()
        sched.step()
