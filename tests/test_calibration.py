"""K_pr / K_pa calibration (paper Sec. 4.3) on data where the answer is known, and the CLI."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from orchestrator.calibration import (binned_curves, calibrate_forest, calibrate_nodes,
                                      cumulative_threshold)
from orchestrator.errors import LabelpropError
from orchestrator.synth import make_triplets
from orchestrator.triplets import save_triplets


def test_cumulative_threshold_exact():
    S = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    ev = np.array([0, 0, 0, 1, 1, 1], bool)
    assert cumulative_threshold(S, ev, 0.0, at_most=True) == 0.3
    assert cumulative_threshold(S, ev, 0.25, at_most=True) == 0.4      # 1/4 <= 0.25
    assert cumulative_threshold(S, ~ev, 0.0, at_most=False) == 0.3
    # no candidate qualifies -> 0
    assert cumulative_threshold(S, ~ev, 0.0, at_most=True) == 0.0
    # ties: S <= t includes every node at t
    assert cumulative_threshold(np.array([0.1, 0.2, 0.2]), np.array([0, 0, 1], bool), 0.0,
                                at_most=True) == 0.1


def _constructed(rng, n=3000):
    """Nodes with S uniform; Q = 0 below 0.3, mixed (0.5) in [0.3, 0.6), 1 at or above 0.6."""
    S = rng.random(n)
    Q = np.where(S < 0.3, 0.0, np.where(S < 0.6, 0.5, 1.0))
    return S, Q


def test_calibrate_recovers_known_thresholds():
    rng = np.random.default_rng(0)
    S, Q = _constructed(rng)
    sizes = np.full(S.shape[0], 20)
    cal = calibrate_nodes(S, Q, sizes, ka=0.85, min_size=15, eps=0.0)
    assert cal.kpr == S[S < 0.3].max()
    assert cal.kpa == S[S < 0.6].max()
    # a few high-quality nodes at low S are tolerated by eps, but not by eps = 0
    S2 = np.r_[S, [0.05, 0.07]]
    Q2 = np.r_[Q, [1.0, 1.0]]
    sizes2 = np.full(S2.shape[0], 20)
    # eps = 1% also admits a few of the good nodes just above 0.6 (1% of ~1800 nodes)
    assert S[S < 0.6].max() <= calibrate_nodes(S2, Q2, sizes2, eps=0.01).kpa < 0.62
    assert calibrate_nodes(S2, Q2, sizes2, eps=0.0).kpa < 0.07
    # ... and ignored altogether when they are too small to be estimated (min_size)
    sizes3 = np.r_[sizes, [3, 3]]
    assert calibrate_nodes(S2, Q2, sizes3, eps=0.0, min_size=15).kpa == S[S < 0.6].max()
    assert calibrate_nodes(S2, Q2, sizes3, eps=0.0, min_size=2).kpa < 0.07


def test_kpr_capped_at_kpa():
    # every node is low quality up to 0.8, but a high-quality node sits at 0.5:
    # K_pa stops below 0.5 (eps=0), and K_pr must not exceed it
    S = np.linspace(0.0, 0.8, 200)
    Q = np.zeros(200)
    Q[np.argmin(abs(S - 0.5))] = 1.0
    cal = calibrate_nodes(S, Q, np.full(200, 30), eps=0.0)
    assert cal.kpa < 0.5 and cal.kpr == cal.kpa


def test_binned_curves():
    rng = np.random.default_rng(1)
    S, Q = _constructed(rng)
    bins = binned_curves(S, Q, 0.85, bins=10)
    assert sum(b["nodes"] for b in bins) == S.shape[0]
    assert bins[0]["p_low"] == 1.0 and bins[0]["p_high"] == 0.0
    assert bins[-1]["p_high"] == 1.0 and bins[-1]["p_low"] == 0.0
    assert bins[4]["p_high"] == 0.0 and bins[4]["p_low"] == 0.0        # mixed region


def test_calibrate_errors():
    with pytest.raises(LabelpropError, match="no tree node has at least 50"):
        calibrate_nodes(np.array([0.5]), np.array([1.0]), np.array([3]), min_size=50)
    with pytest.raises(LabelpropError, match="eps"):
        calibrate_nodes(np.array([0.5]), np.array([1.0]), np.array([3]), eps=2.0)


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    t = make_triplets(3000, classes=2, seed=8)
    p = tmp_path_factory.mktemp("cal") / "heldout.npz"
    save_triplets(p, t)
    return p, t


def test_calibrate_forest_on_synthetic(held_out):
    from clustering.build import build_forest

    _, t = held_out
    f = build_forest(t.features, t.scores, t.classes)
    cal = calibrate_forest(f, t.ious, eps=0.01)
    assert 0.0 < cal.kpr < cal.kpa < 0.9
    S, Q = f.mean_scores, f.node_means(t.ious >= 0.75)
    keep = f.sizes >= 15
    below = keep & (S <= cal.kpa)
    assert (Q[below] >= 0.85).mean() <= 0.01                        # the definition holds
    assert ((Q[keep & (S <= cal.kpr)]) <= 0.15).mean() >= 0.99
    above = keep & (S > cal.kpa)
    assert (Q[above] >= 0.85).mean() > 0.2                           # K_pa is not vacuous


def _app():
    from orchestrator import cli_data

    app = typer.Typer(pretty_exceptions_enable=False)
    cli_data.register(app)
    return app


def test_cli_calibrate_outputs_and_write(held_out, tmp_path):
    from orchestrator.config import default_config, load_config, save_config

    p, _ = held_out
    camp = tmp_path / "camp"
    camp.mkdir()
    cfg = default_config("c1", seed=3)
    cfg.search.ns = 11
    save_config(camp, cfg)
    png, csv_path = tmp_path / "fig.png", tmp_path / "curve.csv"
    res = CliRunner().invoke(_app(), ["calibrate", str(p), "--json", "--plot", str(png),
                                      "--csv", str(csv_path), "--write", str(camp)])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert 0 <= out["kpr"] <= out["kpa"] <= 1 and out["min_size"] == 15
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(open(csv_path)))
    assert len(rows) == 20 and sum(int(r["nodes"]) for r in rows) == out["nodes_used"]
    cfg2 = load_config(camp)
    assert cfg2.search.kpr == pytest.approx(out["kpr"]) and cfg2.search.kpa == pytest.approx(out["kpa"])
    assert cfg2.search.ns == 11 and cfg2.campaign.name == "c1"         # the rest untouched
    # table output
    res = CliRunner().invoke(_app(), ["calibrate", str(p), "--min-size", "30"])
    assert res.exit_code == 0 and res.stdout.startswith("K_pr = ") and "P_h" in res.stdout


def test_cli_calibrate_errors(held_out, tmp_path):
    p, _ = held_out
    res = CliRunner().invoke(_app(), ["calibrate", str(p), "--write", str(tmp_path / "nocamp")])
    assert isinstance(res.exception, LabelpropError) and "nocamp" in str(res.exception)
    res = CliRunner().invoke(_app(), ["calibrate", str(p), "--ka", "1.5"])
    assert isinstance(res.exception, LabelpropError) and "--ka" in str(res.exception)
    res = CliRunner().invoke(_app(), ["calibrate", str(p), "--plot", str(tmp_path / "no/x.png")])
    assert isinstance(res.exception, LabelpropError) and "does not exist" in str(res.exception)
    unl = tmp_path / "unl.npz"
    np.savez(unl, features=np.zeros((3, 2), np.float32), scores=np.zeros(3, np.float32),
             classes=np.zeros(3, np.int64))
    res = CliRunner().invoke(_app(), ["calibrate", str(unl)])
    assert isinstance(res.exception, LabelpropError) and "missing key(s) 'ious'" in str(res.exception)
