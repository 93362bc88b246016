"""What a new user hit with an in-house crowd (issue 10), each on the real HTTP path: the bundled
crowd server as a subprocess, boto3, the campaign's store.

1. Workers locked out by default: in-house defaults; a warning before posting a requirement no
   worker meets; the HIT list names it; a relaxed configuration makes a new HIT type and re-posts
   the open HITs under it.
2. A HIT whose images are not served is not posted.
4. A worker's first HIT is not paid twice while their answers are held.
5. A paying backend refuses to post without a budget; `labelprop hits` lists, expires, deletes.
7. `run` stopped with Ctrl-C says how to resume; the soft-block qualification reads kindly;
   `crowd-server add-worker` on a missing data directory is an error.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from tests.crowd_campaign_helpers import (LABELPROP, ROOT, TruthPolicy, cli,  # noqa: E402
                                    make_crowd_campaign)

from orchestrator.campaign.config import load_config, save_config  # noqa: E402
from orchestrator.crowd_server.simulated_workers import WorkerSession  # noqa: E402
from orchestrator.crowd.poll import poll_once  # noqa: E402

SMALL = dict(n_images=8, gold_images=8, data_seed=9,
             crowd={"questions_per_hit": 4, "gold_per_hit": 2, "max_hits_in_flight": 2},
             qualification={"enabled": False, "min_gold_answers": 1},
             search={"kpa": 0.3, "ns": 6})


def _db(camp):
    return sqlite3.connect(camp / "campaign.db")


def test_init_writes_defaults_that_suit_the_backend(tmp_path):
    cli("init", tmp_path / "inhouse", "--backend", "server")
    cli("init", tmp_path / "amt", "--backend", "mturk", "--budget-usd", "40")
    q = load_config(tmp_path / "inhouse").crowd.qualification
    assert (q.min_hits_approved, q.min_percent_approved, q.retry_delay_seconds) == (0, 0, 600)
    amt = load_config(tmp_path / "amt").crowd
    assert (amt.qualification.min_hits_approved, amt.qualification.min_percent_approved) == (100, 95)
    assert amt.budget_usd == 40.0


def test_a_requirement_nobody_meets_is_named_and_a_relaxed_one_reposts_under_a_new_hit_type(server):
    srv, base, assets = server
    camp = make_crowd_campaign(base, "locked", endpoint_url=srv.endpoint_url, assets_dir=assets,
                               **{**SMALL, "qualification": {**SMALL["qualification"], "min_hits_approved": 100}})
    info = srv.add_worker("newbie")
    mturk = srv.client()
    out = poll_once(camp, client=mturk)
    assert out["hits_in_flight"] == 2
    assert any("no worker on the crowd platform can meet" in m and "at least 100 approved HITs" in m
               for m in out["messages"]), out["messages"]
    w = WorkerSession(srv.endpoint_url, info["token"])
    g, = [g for g in w.request("GET", "/")["groups"]]
    assert not g["can_accept"] and "at least 100 approved HITs (you have 0)" in g["needs"][0]["text"]
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    opener.open(info["signin_url"], timeout=10).read()
    page = opener.open(srv.endpoint_url + "/", timeout=10).read().decode()
    assert "Not open to you yet" in page and "at least 100 approved HITs (you have 0)" in page
    refused = w.request("POST", f"/groups/{g['hit_type_id']}/accept")
    assert refused["status"] == 403 and "at least 100 approved HITs" in refused["error"]
    # the soft-block qualification does not read as an accusation (and a worker who does not hold it
    # does not see it at all)
    con = _db(camp)
    block = con.execute("select remote_id from crowd_setup where key = 'block_qual'").fetchone()[0]
    con.close()
    qt = mturk.get_qualification_type(QualificationTypeId=block)["QualificationType"]
    assert "block" not in (qt["Name"] + qt["Description"]).lower() and "no more HITs for you" in qt["Name"]
    assert block not in {q["id"] for q in w.request("GET", "/qualifications")["qualifications"]}

    con = _db(camp)
    old = dict(con.execute("select id, hit_id from hit_intent where status = 'created'").fetchall())
    old_type = con.execute("select distinct hit_type_id from hit_intent").fetchone()[0]
    con.close()
    cfg = load_config(camp)
    cfg.crowd.qualification.min_hits_approved = 0          # the user edits campaign.toml
    save_config(camp, cfg)
    out = poll_once(camp, client=mturk)
    assert any("HIT type changed" in m for m in out["messages"]), out["messages"]
    assert out["pass"].get("hits_reposted") == 2 and out["hits_in_flight"] == 2
    con = _db(camp)
    rows = con.execute("select id, hit_id, hit_type_id, attempt, reposts from hit_intent "
                       "where status = 'created'").fetchall()
    con.close()
    assert {r[0] for r in rows} == set(old)
    assert all(t != old_type and a == 1 and rp == 0 for _, _, t, a, rp in rows)   # not counted as re-posts
    for iid, hid in old.items():
        assert mturk.get_hit(HITId=hid)["HIT"]["HITStatus"] in ("Reviewable", "Disposed")
    g, = [g for g in w.request("GET", "/")["groups"]]
    assert g["can_accept"] and g["hit_type_id"] != old_type
    assert "assignmentId" in w.request("POST", f"/groups/{g['hit_type_id']}/accept")


def test_a_hit_whose_images_are_not_served_is_not_posted(server):
    srv, base, assets = server
    camp = make_crowd_campaign(base, "noimg", endpoint_url=srv.endpoint_url, assets_dir=assets, **SMALL)
    cfg = load_config(camp)
    cfg.crowd.assets.base_url = srv.endpoint_url + "/elsewhere"      # overlays linked where nothing serves them
    save_config(camp, cfg)
    out = json.loads(cli("poll", camp, "--json", env=srv.env()).stdout)
    assert out["pass"].get("hits_created", 0) == 0 and out["hits_posted"] == 2
    assert any("images are not served" in m and "/elsewhere/assets/" in m for m in out["messages"]), out["messages"]
    assert all("/elsewhere/assets/" not in h["Question"] for h in srv.client().list_hits(MaxResults=100)["HITs"])
    cfg.crowd.assets.base_url = ""                                   # fixed: linked on the server it posts to
    save_config(camp, cfg)
    out = json.loads(cli("poll", camp, "--json", env=srv.env()).stdout)
    assert out["pass"].get("hits_created") == 2, out


def test_a_workers_first_hit_is_not_paid_twice_while_their_answers_are_held(server):
    srv, base, assets = server
    camp = make_crowd_campaign(base, "probation", endpoint_url=srv.endpoint_url, assets_dir=assets,
                               n_images=6, gold_images=8, data_seed=9,
                               crowd={"questions_per_hit": 40, "gold_per_hit": 2, "max_hits_in_flight": 1},
                               qualification={"enabled": False, "min_gold_answers": 4, "hold_seconds": 0},
                               search={"kpa": 0.3, "ns": 6})
    mturk = srv.client()
    pool = srv.simulate("solo:accuracy=1,seed=1,tests=false", TruthPolicy(camp), poll_interval=0.05)
    held_seen, deadline = 0, time.monotonic() + 180
    try:
        while True:
            out = poll_once(camp, client=mturk)
            held_seen = max(held_seen, out["answers_held"])
            if out["finished"]:
                break
            assert time.monotonic() < deadline, out
            time.sleep(0.2)
    finally:
        pool.stop()
    con = _db(camp)
    ev = [json.loads(p) for (p,) in con.execute("select payload from event where kind = 'probation_hit'")]
    twice = con.execute("select question_id, count(distinct intent_id) from hit_item where question_id is not null "
                        "group by question_id having count(distinct intent_id) > 1").fetchall()
    per_intent = con.execute("select intent_id, count(*) from crowd_assignment group by intent_id").fetchall()
    gold_only = con.execute("select n_questions, n_gold from hit_intent where id = ?", (ev[0]["intent"],)).fetchone()
    con.close()
    assert held_seen > 0                        # the display showed the held answers
    assert ev and gold_only[0] == 0 and gold_only[1] >= 2
    assert twice == []                           # no question was shown in two HITs
    assert all(n == 1 for _, n in per_intent)    # one paid assignment per HIT


def test_a_paying_backend_refuses_to_post_without_a_budget(tmp_path):
    import boto3

    from orchestrator.crowd.backends import BackendOptions
    from orchestrator.errors import LabelpropError

    camp = make_crowd_campaign(tmp_path, "paying", backend="mturk", n_images=4, gold_images=8,
                               qualification={"enabled": False}, search={"ns": 4})
    cfg = load_config(camp)
    cfg.crowd.assets.base_url = "https://img.example.org"
    save_config(camp, cfg)
    # a platform that is neither the sandbox nor the bundled server (nothing listens there: the refusal
    # comes before any request)
    client = boto3.client("mturk", endpoint_url="http://127.0.0.1:9", region_name="us-east-1",
                          aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="x" * 40)
    with pytest.raises(LabelpropError, match="crowd.budget_usd is 0 .* spends real money"):
        poll_once(camp, options=BackendOptions(client=client))
    con = _db(camp)
    assert con.execute("select count(*) from hit_intent").fetchone()[0] == 0
    con.close()


def test_hits_command_lists_expires_and_deletes(server):
    srv, base, assets = server
    camp = make_crowd_campaign(base, "hits", endpoint_url=srv.endpoint_url, assets_dir=assets, **SMALL)
    env = srv.env()
    cli("poll", camp, env=env)
    rows = json.loads(cli("hits", camp, "list", "--json", env=env).stdout)
    assert len(rows) == 2 and {r["platform_status"] for r in rows} == {"Assignable"}
    first = rows[0]["hit_id"]
    text = cli("hits", camp, "expire", "--hit", first, env=env).stdout
    assert "1 HITs expired" in text
    assert srv.client().get_hit(HITId=first)["HIT"]["HITStatus"] == "Reviewable"
    refused = cli("hits", camp, "delete", "--hit", rows[1]["hit_id"], env=env, check=False)
    assert refused.returncode == 2 and "can be deleted" in refused.stderr
    out = json.loads(cli("poll", camp, "--json", env=env).stdout)
    assert out["pass"].get("hits_reposted") == 1
    rows = json.loads(cli("hits", camp, "list", "--json", env=env).stdout)
    again = [r for r in rows if r["intent"] == 1][0]
    assert again["attempt"] == 1 and again["hit_id"] != first and again["platform_status"] == "Assignable"
    con = _db(camp)
    assert con.execute("select reposts from hit_intent where id = 1").fetchone()[0] == 0
    con.close()
    # a worker answers; a pass processes, pays and deletes what was answered
    pool = srv.simulate("h1:accuracy=1,seed=1,tests=false", TruthPolicy(camp), poll_interval=0.05)
    mturk = srv.client()
    try:
        for _ in range(300):
            out = poll_once(camp, client=mturk)
            if out["pass"].get("hits_disposed"):
                break
            time.sleep(0.1)
    finally:
        pool.stop()
    assert out["pass"].get("hits_disposed", 0) >= 1
    assert json.loads(cli("hits", camp, "delete", "--json", env=env).stdout)["done"] == 0   # poll disposed it
    statuses = [r["platform_status"] for r in json.loads(cli("hits", camp, "list", "--json", env=env).stdout)]
    assert statuses.count("Disposed") >= 1


def test_ctrl_c_on_run_says_how_to_resume(server):
    srv, base, assets = server
    camp = make_crowd_campaign(base, "ctrlc", endpoint_url=srv.endpoint_url, assets_dir=assets, **SMALL)
    # as in a terminal, Ctrl-C reaches `run` (a test run started in the background inherits SIGINT ignored)
    p = subprocess.Popen(LABELPROP + ["run", str(camp), "--interval", "0.5"], cwd=ROOT, env={**os.environ, **srv.env()},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    line = p.stderr.readline()                       # the first pass has been made (nobody answers)
    assert line.startswith("pass 1:"), line
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130
    assert f"Resume with: labelprop run {camp}" in err and "nothing is lost" in err


def test_add_worker_on_a_missing_data_directory_is_an_error(tmp_path):
    missing = tmp_path / "nope"
    for args in (["add-worker", "ann"], ["list-workers"], ["revoke-worker", "ann"]):
        r = subprocess.run([sys.executable, "-m", "orchestrator.crowd_server", *args, "--data-dir", str(missing)],
                           capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert r.returncode == 2 and "no crowd server data directory here" in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and not missing.exists()
