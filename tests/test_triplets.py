"""Triplet files: validation errors name the file and the problem; atomic save; CLI errors."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from orchestrator.errors import LabelpropError
from orchestrator.search.triplets import Triplets, load_triplets, save_triplets, validate_triplets

ROOT = Path(__file__).resolve().parents[1]


def _good(n=50, d=4, seed=0):
    rng = np.random.default_rng(seed)
    return {"features": rng.normal(size=(n, d)).astype(np.float32),
            "scores": rng.random(n).astype(np.float32),
            "ious": rng.random(n).astype(np.float32),
            "classes": rng.integers(0, 3, n).astype(np.int64)}


def _write(tmp_path, name, arrays):
    p = tmp_path / name
    with open(p, "wb") as fh:
        np.savez(fh, **arrays)
    return p


def test_roundtrip_and_dtypes(tmp_path):
    a = _good()
    a["classes"] = a["classes"].astype(np.int32)
    p = save_triplets(tmp_path / "t.npz", features=a["features"].astype(np.float64),
                      scores=a["scores"], ious=a["ious"], classes=a["classes"])
    t = load_triplets(p)
    assert t.features.dtype == np.float32 and t.classes.dtype == np.int64
    assert np.array_equal(t.features, a["features"]) and np.array_equal(t.ious, a["ious"])
    assert np.array_equal(t.classes, a["classes"])
    with np.load(p) as z:
        assert z["features"].dtype == np.float32 and z["classes"].dtype == np.int64
    # atomic write leaves no temporary files behind
    assert sorted(os.listdir(tmp_path)) == ["t.npz"]


def test_save_overwrites_atomically(tmp_path):
    p = tmp_path / "t.npz"
    save_triplets(p, validate_triplets(_good(seed=1)))
    save_triplets(p, validate_triplets(_good(n=7, seed=2)))
    assert load_triplets(p).n == 7
    assert sorted(os.listdir(tmp_path)) == ["t.npz"]


def test_unlabelled_allowed_only_when_asked(tmp_path):
    a = _good()
    del a["ious"]
    p = _write(tmp_path, "unl.npz", a)
    t = load_triplets(p, require_ious=False)
    assert t.ious is None and t.n == 50
    with pytest.raises(LabelpropError, match=r"unl\.npz: missing key\(s\) 'ious'"):
        load_triplets(p)


def _bad_cases():
    def drop(k):
        def f(a):
            del a[k]
        return f

    def setv(k, fn):
        def f(a):
            a[k] = fn(a[k])
        return f

    def nan_feat(a):
        a["features"][3, 1] = np.nan

    def inf_score(a):
        a["scores"][5] = np.inf

    return [
        ("missing_features", drop("features"), "missing key(s) 'features'"),
        ("missing_scores", drop("scores"), "missing key(s) 'scores'"),
        ("missing_classes", drop("classes"), "missing key(s) 'classes'"),
        ("short_scores", setv("scores", lambda x: x[:-1]), "mismatched lengths"),
        ("short_classes", setv("classes", lambda x: x[:10]), "mismatched lengths"),
        ("nan_features", nan_feat, "'features' has 1 NaN/inf value(s) (first in row 3)"),
        ("inf_scores", inf_score, "'scores' has 1 NaN/inf"),
        ("score_above_one", setv("scores", lambda x: x + 1.0), "'scores' must be in [0, 1]"),
        ("iou_negative", setv("ious", lambda x: x - 2.0), "'ious' must be in [0, 1]"),
        ("features_1d", setv("features", lambda x: x[:, 0]), "'features' must be 2-D"),
        ("scores_2d", setv("scores", lambda x: x[:, None]), "'scores' must be 1-D"),
        ("classes_fractional", setv("classes", lambda x: x + 0.5), "'classes' must be integers"),
        ("classes_negative", setv("classes", lambda x: x - 5), "'classes' must be >= 0"),
        ("strings", setv("scores", lambda x: np.array(["a"] * x.shape[0])), "must be numeric"),
        ("empty", lambda a: a.update({k: v[:0] for k, v in a.items()}), "no triplets"),
    ]


@pytest.mark.parametrize("name,mutate,expect", _bad_cases(), ids=[c[0] for c in _bad_cases()])
def test_bad_inputs_name_file_and_problem(tmp_path, name, mutate, expect):
    a = _good()
    mutate(a)
    p = _write(tmp_path, f"{name}.npz", a)
    with pytest.raises(LabelpropError) as ei:
        load_triplets(p)
    msg = str(ei.value)
    assert msg.startswith(f"{p}: "), msg
    assert expect in msg, msg
    assert "\n" not in msg


def test_unreadable_files(tmp_path):
    with pytest.raises(LabelpropError, match="nope.npz: no such file"):
        load_triplets(tmp_path / "nope.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"this is not a zip archive")
    with pytest.raises(LabelpropError, match=r"junk\.npz: not a readable \.npz"):
        load_triplets(junk)
    single = tmp_path / "single.npz"
    with open(single, "wb") as fh:
        np.save(fh, np.zeros(3))
    with pytest.raises(LabelpropError, match=r"single\.npz: is a single \.npy array"):
        load_triplets(single)
    with pytest.raises(LabelpropError, match="is a directory"):
        load_triplets(tmp_path)


def test_save_validates(tmp_path):
    a = _good()
    a["scores"][0] = 2.0
    with pytest.raises(LabelpropError, match="'scores' must be in"):
        save_triplets(tmp_path / "x.npz", **a)
    assert not (tmp_path / "x.npz").exists()
    with pytest.raises(LabelpropError, match="does not exist"):
        save_triplets(tmp_path / "no" / "x.npz", validate_triplets(_good()))


def test_subset():
    t = validate_triplets(_good())
    s = t.subset(np.arange(10))
    assert isinstance(s, Triplets) and s.n == 10 and np.array_equal(s.ious, t.ious[:10])


# ------------------------------------------------------------------------------ CLI
def _local_app() -> typer.Typer:
    from orchestrator.cli import data as cli_data

    app = typer.Typer(pretty_exceptions_enable=False)
    cli_data.register(app)
    return app


def test_cli_calibrate_bad_file_raises_one_line(tmp_path):
    a = _good()
    a["ious"][4] = np.nan
    p = _write(tmp_path, "broken.npz", a)
    res = CliRunner().invoke(_local_app(), ["calibrate", str(p)])
    assert res.exit_code != 0
    assert isinstance(res.exception, LabelpropError)
    assert str(res.exception) == f"{p}: 'ious' has 1 NaN/inf value(s) (first in row 4)"


def test_cli_entry_point_exits_nonzero_with_one_line(tmp_path):
    p = _write(tmp_path, "bad.npz", {k: v for k, v in _good().items() if k != "scores"})
    proc = subprocess.run([sys.executable, "-c", "from orchestrator.cli.app import main; main()",
                           "calibrate", str(p)], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("labelprop: error: ") and "bad.npz" in lines[0]
    assert "missing key(s) 'scores'" in lines[0]
