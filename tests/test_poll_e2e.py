"""A crowd campaign end to end through the poll path, on the simulated backend (in process, fast):
synthetic images with ground-truth masks, gold questions, good workers plus a spammer and a worker who
fails gold, `labelprop run`.  (The same path over real HTTP -- boto3, the bundled crowd server, a worker
in a browser -- is tests/test_new_user_path.py, tests/test_crowd_paths.py and tests/test_poll_crash.py;
the simulated backend decides exactly what it decides: tests/test_crowd_paths.py.)

* the spammer and the gold failer are soft-blocked (on the platform too) and decide nothing; spend is
  approved assignments x (reward + fee), exactly what the platform charged, under the budget; the
  precision is what the in-memory simulation predicts;
* every answer carries its quality signals; workers are ranked by them;
* the report shows a no-data message before anything is accepted, then a thumbnail grid per class
  and the doubtful masks; `status` sums masks and says the campaign finished and what it cost;
* `estimate` / `run --dry-run` give the expected questions, HITs, cost and hours before posting;
* a bonus is recorded against the budget and paid once by the next pass;
* the cost of a HIT is booked from the HIT as posted, not from the current configuration.
"""
from __future__ import annotations

import json
import math
import re
import sqlite3

import numpy as np
import pytest

from tests.crowd_campaign_helpers import cli, make_crowd_campaign  # noqa: E402

WORKERS = "good1:accuracy=1;good2:accuracy=0.95;spam:spammer;bad:accuracy=0.1"


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    base = tmp_path_factory.mktemp("sim")
    camp = make_crowd_campaign(
        base, "camp", backend="simulated", seed=11, n_images=60, gold_images=16, simulated_workers=WORKERS,
        crowd={"questions_per_hit": 10, "gold_per_hit": 6, "max_hits_in_flight": 8, "budget_usd": 25.0},
        qualification={"enabled": False, "min_gold_answers": 12, "gold_min_accuracy": 0.8, "reject_below": 0.5},
        search={"kpa": 0.3, "ns": 8})
    from orchestrator.actions.campaign import campaign_status
    from orchestrator.actions.estimate import estimate_data
    from orchestrator.campaign.report import write_report

    est = estimate_data(camp)
    dry = cli("run", camp, "--dry-run").stdout
    write_report(camp, base / "before.html")
    out = json.loads(cli("run", camp, "--json").stdout)
    write_report(camp, base / "after.html")
    status = cli("status", camp, env={"COLUMNS": "120"}).stdout
    st = campaign_status(camp)
    return {"camp": camp, "base": base, "out": out, "est": est, "dry": dry, "status": status, "st": st}


def _db(camp):
    return sqlite3.connect(camp / "campaign.db")


def test_simulated_campaign_runs_through_the_poll_path_with_gold_and_soft_blocks(sim):
    from orchestrator.crowd.annotators import SimulatedAnnotators
    from orchestrator.campaign.campaign import CampaignSearch
    from orchestrator.crowd.cost import assignment_cost
    from orchestrator.search.simulate import run_tree_search

    out, camp = sim["out"], sim["camp"]
    assert out["finished"] and out["backend"] == "simulated" and out["passes"] >= 3
    con = _db(camp)
    ids = {w: f"sim-{w}" for w in ("good1", "good2", "spam", "bad")}
    for name in ("spam", "bad"):
        blocked, gc, gt = con.execute("select blocked, gold_correct, gold_total from crowd_worker where worker_id=?",
                                      (ids[name],)).fetchone()
        assert blocked == 1 and gc / gt < 0.8, (name, gc, gt)
        assert con.execute("select count(*) from answer where worker_id=?", (ids[name],)).fetchone()[0] == 0
        # the soft block reached the platform: the simulated crowd holds the blocked qualification
        qual = con.execute("select remote_id from crowd_setup where key='block_qual'").fetchone()[0]
        assert con.execute("select count(*) from sim_worker_qual where qual_id=? and worker_id=?",
                           (qual, ids[name])).fetchone()[0] == 1
    assert con.execute("select blocked from crowd_worker where worker_id=?", (ids["good1"],)).fetchone()[0] == 0
    nodes = [json.loads(p)["node"] for (p,) in con.execute(
        "select payload from event where kind in ('node_accepted','node_rejected','node_split')")]
    assert len(nodes) == len(set(nodes))
    n_ok = con.execute("select count(*) from crowd_assignment where final_status='Approved'").fetchone()[0]
    n_rej = con.execute("select count(*) from crowd_assignment where final_status='Rejected'").fetchone()[0]
    charged = con.execute("select sum(charged_cents) from sim_assignment where status='Approved'").fetchone()[0]
    ious = np.array([r[0] for r in con.execute("select iou from mask order by id")])
    con.close()
    assert n_rej > 0 and out["spent_usd"] == pytest.approx(n_ok * assignment_cost(0.05))
    assert charged / 100 == pytest.approx(out["spent_usd"]) and out["spent_usd"] <= 25.0
    cs = CampaignSearch(camp)
    acc = cs.search.accepted_mask()
    precision = float((ious[acc] >= cs.params.kiou).mean())
    ref = run_tree_search(cs.forest, cs.params, SimulatedAnnotators(ious, cs.params.kiou), ious)
    predicted = float((ious[ref.accepted] >= cs.params.kiou).mean())
    sigma = math.sqrt(max(predicted * (1 - predicted), 0.01) / acc.sum())
    assert abs(precision - predicted) <= 3 * sigma + 0.02, (precision, predicted)
    # workers are ranked by their answer-quality signals: the good ones first
    ranks = {w["worker_id"]: w["rank"] for w in sim["st"]["crowd"]["workers"]}
    assert max(ranks[ids["good1"]], ranks[ids["good2"]]) < min(ranks[ids["spam"]], ranks[ids["bad"]])


def test_every_answer_carries_its_quality_signals(sim):
    con = _db(sim["camp"])
    rows = con.execute("select seconds, worker_accuracy, agreement from crowd_answer where status='recorded'").fetchall()
    con.close()
    assert rows and all(s is not None and s > 0 for s, _, _ in rows)
    assert all(a is not None for _, a, _ in rows)                    # the worker's gold accuracy then
    assert all(g is not None and (g == -1 or 0 <= g <= 1) for _, _, g in rows)
    assert any(0 <= g < 1 for _, _, g in rows) and any(g == 1 for _, _, g in rows)


def test_status_sums_masks_and_says_it_finished_and_what_it_cost(sim):
    st, text = sim["st"], sim["status"]
    assert st["state"] == "finished"
    assert st["accepted_masks"] + st["rejected_masks"] + st["undecided_masks"] == st["masks"]
    assert st["crowd"]["spent_usd"] == pytest.approx(sim["out"]["spent_usd"]) and st["crowd"]["work_hours"] > 0
    assert re.search(r"finished: \$\d+\.\d\d spent, \d+(\.\d h| min| s) of work", text), text
    assert "undecided masks" in text and "workers, best first" in text


def test_report_shows_a_no_data_message_then_thumbnails_per_class_and_doubtful_masks(sim):
    before = (sim["base"] / "before.html").read_text()
    after = (sim["base"] / "after.html").read_text()
    assert 'id="no-accepted"' in before and "No masks accepted yet" in before
    assert 'data-mask=' not in before
    assert 'id="no-accepted"' not in after
    grids = re.findall(r'<div class="grid" data-class="([^"]+)">(.*?)</div>', after, re.S)
    assert len(grids) >= 2                                           # one grid per class with accepted masks
    for _, g in grids:
        thumbs = re.findall(r'<img src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"', g)
        assert 1 <= len(thumbs) <= 24
    import base64
    import io

    from PIL import Image
    im = Image.open(io.BytesIO(base64.b64decode(re.search(r'data:image/jpeg;base64,([A-Za-z0-9+/=]+)',
                                                          grids[0][1]).group(1))))
    assert im.size == (112, 112)
    assert 'id="doubtful"' in after or 'id="no-doubtful"' in after
    assert "sim-good1" in after and "agreement" in after


def test_estimate_before_posting_gives_questions_hits_cost_and_hours(sim):
    est, out = sim["est"], sim["out"]
    assert est["already_asked"] == 0 and est["runs"] == 3
    lo, hi = est["questions_range"]
    assert 0 < lo <= est["questions"] <= hi
    assert est["hits"] == math.ceil(est["questions"] / 10)
    assert est["assignments"] == est["hits"] and est["cost_usd"] == pytest.approx(est["hits"] * 0.06)
    assert est["hours"] == pytest.approx((est["questions"] + est["hits"] * 6) * 1.5 / 3600, abs=0.006)
    assert est["within_budget"] is (est["cost_usd"] <= 25.0)
    assert f"{est['questions']:,}" in sim["dry"] and "HITs" in sim["dry"] and "$" in sim["dry"]
    # the finished campaign has nothing left to ask
    from orchestrator.actions.estimate import estimate_data

    done = estimate_data(sim["camp"])
    assert done["questions"] == 0 and done["already_asked"] == out["questions"] and done["cost_usd"] == 0


def test_a_bonus_is_recorded_within_the_budget_and_paid_once(sim):
    camp = sim["camp"]
    con = _db(camp)
    wid, aid = con.execute("select worker_id, assignment_id from crowd_assignment where final_status='Approved' "
                           "and worker_id='sim-good1' limit 1").fetchone()
    con.close()
    from orchestrator.actions.campaign import campaign_status
    from orchestrator.campaign.config import load_config
    from orchestrator.crowd.ledger import MTURK_FEES
    from orchestrator.errors import LabelpropError
    from orchestrator.crowd.poll import poll_once, record_bonus
    from orchestrator.campaign.store import open_store

    too_much = cli("bonus", camp, wid, aid, "100", check=False)
    assert too_much.returncode == 2 and "exceeds what is left of the budget" in too_much.stderr
    engine = open_store(camp)
    with pytest.raises(LabelpropError, match="was not done by worker"):
        record_bonus(engine, load_config(camp), MTURK_FEES, worker_id="sim-nobody", assignment_id=aid,
                     bonus_usd=0.5, reason="")
    engine.dispose()
    r = cli("bonus", camp, wid, aid, "0.50", "--reason", "careful work")
    assert "$0.60 with the fee" in r.stdout
    before = campaign_status(camp)["crowd"]
    assert before["owed_usd"] == pytest.approx(0.60)
    for _ in range(2):                        # paid by the first pass, never again
        poll_once(camp)
    con = _db(camp)
    assert con.execute("select count(*), sum(charged_cents) from sim_bonus").fetchone() == (1, 60)
    assert con.execute("select status from crowd_bonus").fetchall() == [("paid",)]
    con.close()
    after = campaign_status(camp)["crowd"]
    assert after["spent_usd"] == pytest.approx(before["spent_usd"] + 0.60) and after["owed_usd"] == 0


def test_cost_is_booked_from_the_hit_as_posted_not_from_the_current_config(tmp_path):
    """The reward is raised mid-campaign: HITs posted before cost what they cost then, the rest the
    new price; the spend is exactly what the platform charged."""
    from orchestrator.campaign.config import load_config, save_config
    from orchestrator.crowd.ledger import MTURK_FEES
    from orchestrator.crowd.poll import poll_once

    camp = make_crowd_campaign(tmp_path, "reward", backend="simulated", seed=5, n_images=16, gold_images=8,
                               simulated_workers="a:accuracy=1;b:accuracy=1",
                               crowd={"questions_per_hit": 4, "gold_per_hit": 2, "max_hits_in_flight": 2},
                               qualification={"enabled": False, "min_gold_answers": 2}, search={"kpa": 0.3, "ns": 6})
    poll_once(camp)
    mid = poll_once(camp)                      # the first HITs answered and paid at $0.05
    assert mid["assignments_approved"] >= 2
    cfg = load_config(camp)
    cfg.crowd.reward_usd = 0.10
    save_config(camp, cfg)
    for _ in range(200):
        out = poll_once(camp)
        if out["finished"]:
            break
    assert out["finished"]
    con = _db(camp)
    rows = con.execute("select a.cost_cents, t.params from crowd_assignment a join sim_hit h on h.hit_id = a.hit_id "
                       "join sim_hit_type t on t.type_id = h.type_id where a.final_status = 'Approved'").fetchall()
    charged = con.execute("select sum(charged_cents) from sim_assignment where status = 'Approved'").fetchone()[0]
    con.close()
    rewards = [json.loads(p)["reward"] for _, p in rows]
    assert set(rewards) == {5, 10}                                       # both prices were paid
    assert all(c == MTURK_FEES.assignment_cost_cents(r) for (c, _), r in zip(rows, rewards))
    assert sum(c for c, _ in rows) == charged and out["spent_usd"] == pytest.approx(charged / 100)


def test_hits_recorded_but_not_posted_when_the_reward_changes_are_booked_at_the_new_reward(tmp_path):
    """A pass recorded its HIT intents and stopped before publishing them (killed, or the platform was
    away); meanwhile the reward is raised: they are posted under the new HIT type and booked at what
    they are posted for, so the ledger matches what the platform charges."""
    from orchestrator.campaign.config import load_config, save_config
    from orchestrator.crowd.ledger import MTURK_FEES
    from orchestrator.crowd.poll import CrowdContext, poll_once
    from orchestrator.crowd.posting import ensure_setup, fill
    from orchestrator.campaign.store import transaction

    camp = make_crowd_campaign(tmp_path, "moved", backend="simulated", seed=5, n_images=12, gold_images=8,
                               simulated_workers="a:accuracy=1",
                               crowd={"questions_per_hit": 4, "gold_per_hit": 2, "max_hits_in_flight": 2},
                               qualification={"enabled": False, "min_gold_answers": 2}, search={"kpa": 0.3, "ns": 6})
    ctx = CrowdContext(camp)
    try:
        ctx.hit_type_id = ensure_setup(ctx)
        with transaction(ctx.engine) as s:
            assert fill(ctx, s) == 2
    finally:
        ctx.close()
    cfg = load_config(camp)
    cfg.crowd.reward_usd = 0.10
    save_config(camp, cfg)
    for _ in range(100):
        out = poll_once(camp)
        if out["finished"]:
            break
    assert out["finished"]
    con = _db(camp)
    rows = con.execute("select a.intent_id, a.cost_cents, s.charged_cents from crowd_assignment a "
                       "join sim_assignment s on s.assignment_id = a.assignment_id "
                       "where a.final_status = 'Approved' order by a.intent_id").fetchall()
    con.close()
    assert [r[0] for r in rows[:2]] == [1, 2]
    assert all(c == ch == MTURK_FEES.assignment_cost_cents(10) for _, c, ch in rows)
    assert out["spent_usd"] == pytest.approx(sum(ch for _, _, ch in rows) / 100)


def test_a_raised_reward_never_spends_past_the_budget(tmp_path):
    """Two HITs recorded at $0.05 (+ fee) fit a $0.15 budget; the reward is raised to $0.10 before they are
    posted: only what fits at the new price is posted, the rest of the questions go back to the search."""
    from orchestrator.campaign.config import load_config, save_config
    from orchestrator.crowd.poll import CrowdContext, poll_once
    from orchestrator.crowd.posting import ensure_setup, fill
    from orchestrator.campaign.store import transaction

    camp = make_crowd_campaign(tmp_path, "raise", backend="simulated", seed=5, n_images=12, gold_images=8,
                               simulated_workers="a:accuracy=1",
                               crowd={"questions_per_hit": 4, "gold_per_hit": 2, "max_hits_in_flight": 2,
                                      "budget_usd": 0.15},
                               qualification={"enabled": False, "min_gold_answers": 2}, search={"kpa": 0.3, "ns": 6})
    ctx = CrowdContext(camp)
    try:
        ctx.hit_type_id = ensure_setup(ctx)
        with transaction(ctx.engine) as s:
            assert fill(ctx, s) == 2
    finally:
        ctx.close()
    cfg = load_config(camp)
    cfg.crowd.reward_usd = 0.10
    save_config(camp, cfg)
    for _ in range(20):
        out = poll_once(camp)
        if out["stopped"]:
            break
    assert out["stopped"] and out["budget_exhausted"]
    con = _db(camp)
    charged = con.execute("select coalesce(sum(charged_cents), 0) from sim_assignment").fetchone()[0]
    abandoned = con.execute("select count(*) from hit_intent where status = 'abandoned'").fetchone()[0]
    con.close()
    assert charged == 12 and abandoned == 1 and out["spent_usd"] == pytest.approx(0.12)
    assert out["committed_usd"] <= 0.15


# ------------------------------------------------------------------------------- the original e2e checks
def test_campaign_finishes_with_the_predicted_precision(sim):
    from orchestrator.crowd.annotators import SimulatedAnnotators
    from orchestrator.campaign.campaign import CampaignSearch
    from orchestrator.search.search import Search
    from orchestrator.search.simulate import run_tree_search

    final, camp = sim["out"], sim["camp"]
    assert final["finished"], final
    assert final["accepted_masks"] > 0 and final["pending_questions"] == 0
    cs = CampaignSearch(camp)
    con = _db(camp)
    ious = np.array([r[0] for r in con.execute("select iou from mask order by id")])
    con.close()
    acc = cs.search.accepted_mask()
    precision = float((ious[acc] >= cs.params.kiou).mean())
    ref = run_tree_search(cs.forest, cs.params, SimulatedAnnotators(ious, cs.params.kiou), ious)
    predicted = float((ious[ref.accepted] >= cs.params.kiou).mean())
    sigma = math.sqrt(max(predicted * (1 - predicted), 0.01) / acc.sum())
    assert abs(precision - predicted) <= 3 * sigma + 0.02, (precision, predicted, int(acc.sum()))
    assert isinstance(cs.search, Search)


def test_spammer_and_gold_failer_are_soft_blocked_and_decide_nothing(sim):
    camp = sim["camp"]
    ids = {n: f"sim-{n}" for n in ("good1", "spam", "bad")}
    con = _db(camp)
    assert con.execute("select count(*) from sim_assignment where worker_id = ?", (ids["spam"],)).fetchone()[0] > 0
    qual = con.execute("select remote_id from crowd_setup where key='block_qual'").fetchone()[0]
    blocked_on_platform = {w for (w,) in con.execute("select worker_id from sim_worker_qual where qual_id = ?",
                                                      (qual,))}
    for name in ("spam", "bad"):
        wid = ids[name]
        blocked, gc, gt = con.execute("select blocked, gold_correct, gold_total from crowd_worker where worker_id=?",
                                      (wid,)).fetchone()
        assert blocked == 1 and gc / gt < 0.8, (name, gc, gt)
        assert wid in blocked_on_platform          # the "blocked" qualification on the platform
        # none of its answers reached the search: no Answer row, no recorded crowd answer
        assert con.execute("select count(*) from answer where worker_id=?", (wid,)).fetchone()[0] == 0
        assert con.execute("select count(*) from crowd_answer where worker_id=? and status in ('recorded','held')",
                           (wid,)).fetchone()[0] == 0
    for name in ("good1",):
        assert con.execute("select blocked from crowd_worker where worker_id=?", (ids[name],)).fetchone()[0] == 0
    # every node decision is logged once
    nodes = [json.loads(p)["node"] for (p,) in con.execute(
        "select payload from event where kind in ('node_accepted','node_rejected','node_split')")]
    assert len(nodes) == len(set(nodes))
    con.close()


def test_spend_is_approved_rewards_plus_fees_and_under_budget(sim):
    from orchestrator.crowd.cost import assignment_cost

    final, camp = sim["out"], sim["camp"]
    con = _db(camp)
    n_approved = con.execute("select count(*) from crowd_assignment where final_status='Approved'").fetchone()[0]
    n_rejected = con.execute("select count(*) from crowd_assignment where final_status='Rejected'").fetchone()[0]
    unsettled = con.execute("select count(*) from crowd_assignment where remote_done=0").fetchone()[0]
    charged = con.execute("select sum(charged_cents) from sim_assignment where status='Approved'").fetchone()[0]
    con.close()
    assert unsettled == 0
    assert n_approved > 0
    # the gold failer (10% accurate) gets under 50% of its 6 gold right on a HIT with p > 0.98
    assert n_rejected > 0
    expected = round(n_approved * assignment_cost(0.05), 2)
    assert final["spent_usd"] == pytest.approx(expected)
    assert charged / 100 == pytest.approx(expected)                     # what the platform charged
    assert final["spent_usd"] <= 25.0
    st = sim["st"]
    assert st["crowd"]["spent_usd"] == pytest.approx(expected)
    assert {w["worker_id"] for w in st["crowd"]["workers"] if w["blocked"]} >= {"sim-spam"}
    html = (sim["base"] / "after.html").read_text()
    assert "<img" in html and "spent" in html.lower() and "sim-spam" in html
