"""Synthetic triplets: statistics, cluster structure, determinism, bundled demo data, CLI."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from clustering.build import build_forest
from orchestrator.errors import LabelpropError
from orchestrator.search.synth import (DEMO_ARGS, DEMO_PATH, demo_triplets, describe, make_triplets,
                                write_demo_triplets)
from orchestrator.search.triplets import load_triplets


@pytest.fixture(scope="module")
def big():
    return make_triplets(20_000, classes=5, dim=16, seed=11, with_modes=True)


def test_format_and_ranges(big):
    t, _ = big
    assert t.features.shape == (20_000, 16) and t.features.dtype == np.float32
    assert t.scores.dtype == np.float32 and t.ious.dtype == np.float32
    assert t.classes.dtype == np.int64 and set(np.unique(t.classes)) == set(range(5))
    for a in (t.scores, t.ious):
        assert np.all(np.isfinite(a)) and a.min() >= 0 and a.max() <= 1


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_positive_fraction_and_correlation(seed):
    t = make_triplets(20_000, classes=5, seed=seed)
    pos = float((t.ious >= 0.75).mean())
    assert 0.40 <= pos <= 0.60, pos
    r = float(np.corrcoef(t.scores, t.ious)[0, 1])
    assert 0.5 < r < 0.9, r           # informative but noisy at mask level


def test_heavy_tailed_sizes(big):
    t, modes = big
    ms = np.sort(np.bincount(modes))[::-1]
    assert ms.shape[0] > 50
    assert ms[0] > 8 * np.median(ms)                          # a few huge modes
    assert ms[: ms.shape[0] // 10].sum() > 0.3 * ms.sum()     # top 10% hold > 30% of masks
    cs = np.sort(np.bincount(t.classes))[::-1]
    assert cs[0] >= 3 * cs[-1]                                # Zipf class sizes


def test_modes_differ_in_quality(big):
    t, modes = big
    good = (t.ious >= 0.75).astype(float)
    q = np.bincount(modes, weights=good) / np.bincount(modes)
    big_modes = np.bincount(modes) >= 30
    q = q[big_modes]
    assert (q >= 0.85).mean() > 0.15 and (q <= 0.3).mean() > 0.15
    assert ((q > 0.3) & (q < 0.85)).mean() > 0.15            # mixed modes exist


def test_cluster_structure_partially_separates_quality():
    t = make_triplets(4000, classes=2, seed=5)
    f = build_forest(t.features, t.scores, t.classes)
    Q = f.node_means(t.ious >= 0.75)
    S = f.mean_scores
    sel = f.sizes >= 15
    pure = (Q[sel] >= 0.85) | (Q[sel] <= 0.15)
    assert 0.3 < pure.mean() < 0.95                           # purer than random, not trivially
    # paper Fig. 4: score and quality correlate much more at cluster level than at mask level
    r_mask = np.corrcoef(t.scores, t.ious >= 0.75)[0, 1]
    r_node = np.corrcoef(S[sel], Q[sel])[0, 1]
    assert r_node > r_mask + 0.1
    # a random grouping of masks of the same sizes would be far less pure
    rng = np.random.default_rng(0)
    rand = rng.permutation(t.ious >= 0.75).astype(float)
    Qr = f.node_means(rand)[sel]
    assert ((Qr >= 0.85) | (Qr <= 0.15)).mean() < pure.mean() / 2


def test_deterministic_by_seed():
    a = make_triplets(3000, classes=3, seed=4)
    b = make_triplets(3000, classes=3, seed=4)
    c = make_triplets(3000, classes=3, seed=5)
    for k in ("features", "scores", "ious", "classes"):
        assert np.array_equal(getattr(a, k), getattr(b, k))
    assert not np.array_equal(a.ious, c.ious)


def test_small_and_bad_arguments():
    t = make_triplets(7, classes=3, dim=2, seed=0)
    assert t.n == 7 and set(np.unique(t.classes)) == {0, 1, 2}
    for kw, msg in [({"n": 0}, "--n"), ({"n": 5, "classes": 6}, "--classes"),
                    ({"n": 5, "classes": 0}, "--classes"), ({"n": 5, "dim": 1}, "--dim")]:
        with pytest.raises(LabelpropError, match=msg):
            make_triplets(**{"classes": 1, **kw})


def test_bundled_demo_matches_generator(tmp_path):
    assert DEMO_PATH.exists() and DEMO_PATH.stat().st_size < 3 * 2**20
    shipped = load_triplets(DEMO_PATH)
    fresh = demo_triplets()
    assert shipped.n == DEMO_ARGS["n"] == 20_000 and shipped.dim == DEMO_ARGS["dim"]
    for k in ("features", "scores", "ious", "classes"):
        assert np.array_equal(getattr(shipped, k), getattr(fresh, k)), k
    d = describe(shipped)
    assert 0.4 <= d["positive_fraction"] <= 0.6
    again = write_demo_triplets(tmp_path / "demo.npz")
    assert np.array_equal(load_triplets(again).ious, shipped.ious)


def _app():
    from orchestrator.cli import data as cli_data

    app = typer.Typer(pretty_exceptions_enable=False)
    cli_data.register(app)
    return app


def test_cli_synth(tmp_path):
    out = tmp_path / "s.npz"
    res = CliRunner().invoke(_app(), ["synth", str(out), "--n", "3000", "--classes", "3",
                                      "--seed", "2"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    t = load_triplets(out)
    assert info["masks"] == t.n == 3000 and info["classes"] == 3
    assert info["positive_fraction"] == pytest.approx(float((t.ious >= 0.75).mean()))
    assert np.array_equal(t.ious, make_triplets(3000, classes=3, seed=2).ious)
    assert sorted(os.listdir(tmp_path)) == ["s.npz"]
    res = CliRunner().invoke(_app(), ["synth", str(tmp_path / "s.txt")])
    assert isinstance(res.exception, LabelpropError) and "must end in .npz" in str(res.exception)
    res = CliRunner().invoke(_app(), ["synth", str(tmp_path / "x.npz"), "--n", "0"])
    assert isinstance(res.exception, LabelpropError) and "--n" in str(res.exception)
