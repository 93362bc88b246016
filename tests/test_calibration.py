"""K_pr / K_pa calibration (paper Sec. 4.3) on data where the answer is known, and the CLI."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from orchestrator.search.calibration import (binned_curves, calibrate_forest, calibrate_nodes,
                                      cumulative_threshold)
from orchestrator.errors import LabelpropError
from orchestrator.search.synth import make_triplets
from orchestrator.search.triplets import save_triplets


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
    from orchestrator.cli import data as cli_data

    app = typer.Typer(pretty_exceptions_enable=False)
    cli_data.register(app)
    return app


def test_cli_calibrate_outputs_and_write(held_out, tmp_path):
    from orchestrator.campaign.config import default_config, load_config, save_config

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
    # the curve is stored beside campaign.toml and named in it; it reads back as printed
    assert cfg2.search.calibration == "calibration.json"
    stored = json.loads((camp / "calibration.json").read_text())
    assert stored["bins"] == out["bins"] and stored["format"] == out["format"]
    assert out["files"]["calibration_json"] == str(camp / "calibration.json")
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


# ---------------------------------------------------------------- the curve for the search
def test_acceptance_curve_is_monotone_and_interpolates():
    from orchestrator.search.calibration import AcceptanceCurve

    bins = [{"s_lo": 0.0, "s_hi": 0.5, "nodes": 10, "p_high": 0.0, "p_low": 0.9},
            {"s_lo": 0.5, "s_hi": 0.7, "nodes": 0, "p_high": None, "p_low": None},
            {"s_lo": 0.7, "s_hi": 0.8, "nodes": 30, "p_high": 0.6, "p_low": 0.1},
            {"s_lo": 0.8, "s_hi": 0.9, "nodes": 10, "p_high": 0.2, "p_low": 0.2},   # a dip: pooled
            {"s_lo": 0.9, "s_hi": 1.0, "nodes": 20, "p_high": 0.9, "p_low": 0.0}]
    c = AcceptanceCurve.from_bins(bins, ka=0.85, kiou=0.75)
    assert c.knots == pytest.approx((0.25, 0.75, 0.85, 0.95))   # the empty bin is skipped
    assert c.p_high == pytest.approx((0.0, 0.5, 0.5, 0.9))   # (0.6 * 30 + 0.2 * 10) / 40 = 0.5
    assert c.p_low == pytest.approx((0.9, 0.125, 0.125, 0.0))
    ph, pl = c.lookup([0.0, 0.25, 0.5, 0.8, 1.0])
    assert ph == pytest.approx([0.0, 0.0, 0.25, 0.5, 0.9])   # linear between knots, flat outside
    f = AcceptanceCurve.fallback(0.7)
    assert f.lookup([0.5, 0.7, 0.85, 1.0])[0] == pytest.approx([0.0, 0.0, 0.5, 1.0])
    assert not f.lookup([0.9])[1].any()


def test_calibration_file_is_validated(tmp_path):
    from orchestrator.search.calibration import CALIBRATION_FORMAT, load_curve

    good = {"format": CALIBRATION_FORMAT, "ka": 0.85, "kiou": 0.75,
            "bins": [{"s_lo": 0.0, "s_hi": 0.5, "nodes": 4, "p_high": 0.0, "p_low": 1.0},
                     {"s_lo": 0.5, "s_hi": 1.0, "nodes": 2, "p_high": 1.0, "p_low": 0.0}]}
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(good))
    assert load_curve(path).lookup([0.5])[0] == pytest.approx([0.5])   # halfway between the bin centres
    bad_cases = [
        ("{not json", "invalid JSON"),
        (json.dumps({**good, "format": "other"}), "not a labelprop calibration"),
        (json.dumps({**good, "ka": 2}), "ka must be"),
        (json.dumps({**good, "bins": []}), "bins must be a non-empty list"),
        (json.dumps({**good, "bins": [{**good["bins"][0], "p_high": 1.5}]}), "bins[0].p_high"),
        (json.dumps({**good, "bins": [good["bins"][1], good["bins"][0]]}), "overlaps"),
        (json.dumps({**good, "bins": [{**good["bins"][0], "nodes": 0, "p_high": None, "p_low": None}]}),
         "every bin is empty"),
    ]
    for text, needle in bad_cases:
        path.write_text(text)
        with pytest.raises(LabelpropError) as e:
            load_curve(path)
        assert str(path) in str(e.value) and needle in str(e.value), (needle, str(e.value))
    with pytest.raises(LabelpropError, match="not found"):
        load_curve(tmp_path / "missing.json")
    path.write_text(json.dumps(good))
    with pytest.raises(LabelpropError, match="K_a=0.85.*K_a=0.8"):
        load_curve(path).check_for(0.8, 0.75, str(path))


def test_campaign_value_search_reads_its_calibration(held_out, tmp_path):
    from orchestrator.search.calibration import calibrate_forest, write_calibration
    from orchestrator.campaign.campaign import CampaignSearch
    from orchestrator.campaign.config import default_config, load_config, save_config
    from orchestrator.campaign.ingest import read_triplet_predictions, write_predictions
    from orchestrator.campaign.store import open_store
    from orchestrator.actions.campaign import cluster_campaign, init_campaign
    from clustering.build import build_forest

    p, t = held_out
    camp = tmp_path / "camp"
    init_campaign(camp, name="c")
    cfg = load_config(camp)
    cfg.search.strategy = "value"
    save_config(camp, cfg)
    write_predictions(open_store(camp), camp, read_triplet_predictions(p))
    cluster_campaign(camp)
    cal = calibrate_forest(build_forest(t.features, t.scores, t.classes), t.ious)
    write_calibration(camp, cal)
    cs = CampaignSearch(camp)
    assert cs.params.curve is not None and cs.params.curve.source.endswith("calibration.json")
    assert cs.params.kpa == pytest.approx(cal.kpa)
    asks = cs.ask(target=30)
    assert asks
    # a damaged or mismatched file is one clear error naming it
    (camp / "calibration.json").write_text("{")
    with pytest.raises(LabelpropError, match="calibration.json: invalid JSON"):
        CampaignSearch(camp)
    write_calibration(camp, cal)
    cfg = load_config(camp)
    cfg.search.ka = 0.9
    save_config(camp, cfg)
    with pytest.raises(LabelpropError, match="measured for K_a=0.85"):
        CampaignSearch(camp)
