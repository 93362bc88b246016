"""`labelprop gold --from-masks N`: campaign masks with a known IoU become gold questions and are
held out of the search.

The trees are rebuilt without them (every other mask stays in a tree), the qualification test is
built from them, a crowd campaign run to the end against the bundled crowd server shows them only
as gold (never as a real question, never accepted), and once the search has started the command is
refused with a one-line error and writes nothing.
"""
import json
import sqlite3

import numpy as np
import pytest

from tests.crowd_campaign_helpers import TruthPolicy, crowd_server_in, lp, make_crowd_campaign  # noqa: E402

from orchestrator.campaign.arrays import load_forest  # noqa: E402
from orchestrator.campaign.store import open_store, read_session  # noqa: E402

N_GOLD = 12


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("goldmasks")
    srv, assets = crowd_server_in(base)
    try:
        camp = make_crowd_campaign(
            base, "camp", endpoint_url=srv.endpoint_url, assets_dir=assets, seed=4, n_images=40, data_seed=8,
            gold=False, crowd={"questions_per_hit": 6, "gold_per_hit": 2, "max_hits_in_flight": 4},
            qualification={"enabled": True, "questions": 4, "min_gold_answers": 2, "min_percent_approved": 0},
            search={"kpa": 0.3, "ns": 6})
        trees_before = _forest(camp)
        assert (trees_before.leaf_of_mask >= 0).all()
        p = lp("gold", camp, "--from-masks", N_GOLD)
        assert "trees rebuilt without them" in p.stdout, p.stdout
        pool = srv.simulate("a:accuracy=1,seed=1;b:accuracy=1,seed=2", TruthPolicy(camp), poll_interval=0.03)
        try:
            final = json.loads(lp("run", camp, "--interval", "0.1", "--json", env=srv.env(), timeout=300).stdout)
        finally:
            pool.stop()
        refused = lp("gold", camp, "--from-masks", 3, check=False)
        yield {"camp": camp, "base": base, "final": final, "refused": refused}
    finally:
        srv.stop()


def _forest(camp):
    eng = open_store(camp)
    with read_session(eng) as s:
        f = load_forest(s, camp)
    eng.dispose()
    return f


def _gold_masks(camp):
    con = sqlite3.connect(camp / "campaign.db")
    rows = con.execute("select mask_id, pool, label, iou from gold where mask_id is not null").fetchall()
    con.close()
    return rows


def test_gold_masks_leave_the_trees_and_fill_the_qualification_test(run):
    camp = run["camp"]
    rows = _gold_masks(camp)
    assert len(rows) == N_GOLD
    ids = np.array([m for m, *_ in rows])
    assert sum(lb for _, _, lb, _ in rows) == N_GOLD // 2                 # balanced known yes / known no
    assert {p for _, p, _, _ in rows} == {"test", "hit"}                 # the test pool came from them
    f = _forest(camp)
    assert (f.leaf_of_mask[ids] == -1).all()
    others = np.setdiff1d(np.arange(f.n_masks), ids)
    assert (f.leaf_of_mask[others] >= 0).all()
    assert sorted(f.order.tolist()) == others.tolist()


def test_the_search_never_asks_or_accepts_a_gold_mask(run):
    camp, final = run["camp"], run["final"]
    assert final["finished"]
    ids = {m for m, *_ in _gold_masks(camp)}
    con = sqlite3.connect(camp / "campaign.db")
    asked = {m for (m,) in con.execute("select mask_id from question")}
    shown_as_gold = {m for (m,) in con.execute("select g.mask_id from hit_item h join gold g on g.id = h.gold_id "
                                               "where g.mask_id is not null")}
    con.close()
    assert asked and not asked & ids
    assert shown_as_gold and shown_as_gold <= ids                       # they did serve as gold in HITs
    out = run["base"] / "accepted.npy"
    lp("export", camp, "--indices", out)
    assert not set(np.load(out).tolist()) & ids


def test_from_masks_is_refused_once_the_search_has_started(run):
    r = run["refused"]
    assert r.returncode == 2
    err = r.stderr.strip()
    assert "the search has started" in err and "\n" not in err
    assert len(_gold_masks(run["camp"])) == N_GOLD                     # nothing written


def test_from_masks_needs_masks_with_a_known_iou_and_an_image(tmp_path):
    from orchestrator.search.synth import make_triplets
    from orchestrator.search.triplets import save_triplets

    t = make_triplets(200, classes=2, dim=4, seed=1)        # triplets: IoUs but no images or RLEs
    save_triplets(tmp_path / "t.npz", t)
    camp = tmp_path / "c"
    lp("init", camp)
    lp("ingest", camp, "--triplets", tmp_path / "t.npz")
    r = lp("gold", camp, "--from-masks", 5, check=False)
    assert r.returncode == 2 and "no campaign masks with a known IoU and an image" in r.stderr
    assert "\n" not in r.stderr.strip()


def test_trees_are_rebuilt_with_the_parameters_they_were_built_with(tmp_path):
    from clustering.build import build_forest
    from orchestrator.campaign.arrays import load_array
    from orchestrator.actions.campaign import resolve_cluster_params
    from orchestrator.campaign.config import load_config

    (tmp_path / "assets").mkdir()
    camp = make_crowd_campaign(tmp_path, "c", endpoint_url="http://127.0.0.1:9", assets_dir=tmp_path / "assets",
                               n_images=12, data_seed=3, gold=False)
    lp("cluster", camp, "--score-weight", "1.5")
    lp("gold", camp, "--from-masks", 6)
    ids = np.array(sorted(m for m, *_ in _gold_masks(camp)))
    eng = open_store(camp)
    with read_session(eng) as s:
        x = {k: load_array(s, camp, k) for k in ("features", "scores", "classes")}
    eng.dispose()
    cfg = load_config(camp)
    want = build_forest(x["features"], x["scores"], x["classes"],
                        resolve_cluster_params(cfg, x["features"].shape[1], score_weight=1.5),
                        exclude=ids)
    got = _forest(camp)
    for k in ("order", "left", "right", "leaf_of_mask"):
        np.testing.assert_array_equal(getattr(got, k), getattr(want, k))
