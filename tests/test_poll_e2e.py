"""A real crowd campaign end to end: synthetic images with ground-truth masks, overlays published
through the local asset store, the bundled crowd server as a subprocess, simulated workers
answering from ground truth (plus a spammer and a worker who fails gold), `labelprop run`."""
import json
import math
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from crowd_campaign_helpers import TruthPolicy, crowd_server_in, lp, make_crowd_campaign  # noqa: E402



@pytest.fixture(scope="module")
def campaign_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e")
    srv, assets = crowd_server_in(base)
    try:
        camp = make_crowd_campaign(
            base, "camp", endpoint_url=srv.endpoint_url, assets_dir=assets, seed=11, n_images=60, gold_images=16,
            crowd={"questions_per_hit": 10, "gold_per_hit": 6, "max_hits_in_flight": 8, "budget_usd": 25.0},
            qualification={"min_gold_answers": 24, "questions": 6, "min_percent_approved": 0,
                           "gold_min_accuracy": 0.8, "reject_below": 0.5},
            search={"kpa": 0.3, "ns": 8})
        policy = TruthPolicy(camp)
        pool = srv.simulate("good1:accuracy=1,seconds=0.05,seed=1;good2:accuracy=0.95,seconds=0.05,seed=2;"
                            "spam:spammer,tests=false,seed=3;bad:accuracy=0.1,tests=false,seed=4", policy,
                            poll_interval=0.05)
        mturk = srv.client()
        ids = {}
        for _ in range(200):
            ids = pool.worker_ids
            if all(ids.values()):
                break
            import time
            time.sleep(0.05)
        # the spammer and the bad worker "passed" the test (by luck): grant it directly
        out = json.loads(lp("poll", camp, "--json", env=srv.env()).stdout)      # creates the test qualification
        con = sqlite3.connect(camp / "campaign.db")
        test_qual = con.execute("select remote_id from crowd_setup where key='test_qual'").fetchone()[0]
        block_qual = con.execute("select remote_id from crowd_setup where key='block_qual'").fetchone()[0]
        con.close()
        for name in ("spam", "bad"):
            mturk.associate_qualification_with_worker(QualificationTypeId=test_qual, WorkerId=ids[name],
                                                      IntegerValue=100, SendNotification=False)
        p = lp("run", camp, "--interval", "0.2", "--json", env=srv.env(), timeout=300)
        final = json.loads(p.stdout)
        stats = pool.stats()
        pool.stop()
        balance = float(mturk.get_account_balance()["AvailableBalance"])
        blocked = {q["WorkerId"] for q in mturk.list_workers_with_qualification_type(
            QualificationTypeId=block_qual, MaxResults=100)["Qualifications"]}
        status = json.loads(lp("status", camp, "--json").stdout)
        lp("report", camp, "--out", base / "report.html")
        yield {"camp": camp, "final": final, "ids": ids, "stats": stats, "balance": balance, "blocked": blocked,
               "status": status, "report": base / "report.html", "first": out}
    finally:
        srv.stop()


def test_campaign_finishes_with_the_predicted_precision(campaign_run):
    from orchestrator.annotators import SimulatedAnnotators
    from orchestrator.campaign import CampaignSearch
    from orchestrator.search import Search
    from orchestrator.simulate import run_tree_search

    final, camp = campaign_run["final"], campaign_run["camp"]
    assert final["finished"], final
    assert final["accepted_masks"] > 0 and final["pending_questions"] == 0
    cs = CampaignSearch(camp)
    con = sqlite3.connect(camp / "campaign.db")
    ious = np.array([r[0] for r in con.execute("select iou from mask order by id")])
    con.close()
    acc = cs.search.accepted_mask()
    precision = float((ious[acc] >= cs.params.kiou).mean())
    # the simulation with error-free annotators on the same trees predicts this precision
    ref = run_tree_search(cs.forest, cs.params, SimulatedAnnotators(ious, cs.params.kiou), ious)
    predicted = float((ious[ref.accepted] >= cs.params.kiou).mean())
    sigma = math.sqrt(max(predicted * (1 - predicted), 0.01) / acc.sum())
    assert abs(precision - predicted) <= 3 * sigma + 0.02, (precision, predicted, int(acc.sum()))
    assert isinstance(cs.search, Search)


def test_spammer_and_gold_failer_are_soft_blocked_and_decide_nothing(campaign_run):
    ids, camp = campaign_run["ids"], campaign_run["camp"]
    assert campaign_run["stats"]["spam"]["submitted"] > 0
    con = sqlite3.connect(camp / "campaign.db")
    for name in ("spam", "bad"):
        wid = ids[name]
        blocked, gc, gt = con.execute("select blocked, gold_correct, gold_total from crowd_worker where worker_id=?",
                                      (wid,)).fetchone()
        assert blocked == 1 and gc / gt < 0.8, (name, gc, gt)
        assert wid in campaign_run["blocked"]          # the "blocked" qualification on the server
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


def test_spend_is_approved_rewards_plus_fees_and_under_budget(campaign_run):
    from orchestrator.cost import assignment_cost

    final, camp = campaign_run["final"], campaign_run["camp"]
    con = sqlite3.connect(camp / "campaign.db")
    n_approved = con.execute("select count(*) from crowd_assignment where final_status='Approved'").fetchone()[0]
    n_rejected = con.execute("select count(*) from crowd_assignment where final_status='Rejected'").fetchone()[0]
    unsettled = con.execute("select count(*) from crowd_assignment where remote_done=0").fetchone()[0]
    con.close()
    assert unsettled == 0
    assert n_approved > 0
    # the gold failer (10% accurate) gets under 50% of its 6 gold right on a HIT with p > 0.98
    assert n_rejected > 0
    expected = round(n_approved * assignment_cost(0.05), 2)
    assert final["spent_usd"] == pytest.approx(expected)
    assert 10000.0 - campaign_run["balance"] == pytest.approx(expected)   # what the platform charged
    assert final["spent_usd"] <= 25.0
    st = campaign_run["status"]
    assert st["crowd"]["spent_usd"] == pytest.approx(expected)
    assert {w["worker_id"] for w in st["crowd"]["workers"] if w["blocked"]} >= {campaign_run["ids"]["spam"]}
    html = campaign_run["report"].read_text()
    assert "<img" in html and "spent" in html.lower() and campaign_run["ids"]["spam"] in html
