"""One poll path for every backend.

* The simulated backend decides exactly what the HTTP path (boto3 -> the bundled crowd server ->
  a worker answering through the worker endpoints) decides, for the same seed and the same
  answers: the same HITs with the same questions and gold, the same node decisions in the same
  order, the same accepted masks and the same spend.
* `labelprop run` survives the crowd server being stopped and restarted mid-campaign: it waits
  for the platform, then finishes with no HIT posted twice, no submitted answer lost and nothing
  paid twice.
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.crowd_campaign_helpers import LABELPROP, ROOT, TruthPolicy, cli, crowd_server_in, make_crowd_campaign  # noqa: E402

from orchestrator.crowd.poll import poll_once  # noqa: E402

CFG = dict(n_images=24, gold_images=8, data_seed=5,
           crowd={"questions_per_hit": 6, "gold_per_hit": 2, "max_hits_in_flight": 3},
           qualification={"enabled": True, "questions": 4, "min_gold_answers": 2},
           search={"kpa": 0.3, "ns": 6})


def _trace(camp: Path) -> dict:
    con = sqlite3.connect(camp / "campaign.db")
    out = {
        "decisions": [(k, json.loads(p)["node"]) for k, p in con.execute(
            "select kind, payload from event where kind in ('node_accepted','node_rejected','node_split') "
            "order by id")],
        "items": con.execute("select intent_id, position, mask_id, gold_id from hit_item "
                             "order by intent_id, position").fetchall(),
        "answers": con.execute("select q.mask_id, a.label from answer a join question q on q.id = a.question_id "
                               "order by q.mask_id").fetchall(),
        "intents": con.execute("select count(*) from hit_intent").fetchone()[0],
        "approved": con.execute("select count(*), sum(cost_cents) from crowd_assignment "
                                "where final_status = 'Approved'").fetchone(),
    }
    con.close()
    return out


def test_simulated_backend_decides_what_the_http_path_decides(tmp_path):
    srv, assets = crowd_server_in(tmp_path)
    try:
        http = make_crowd_campaign(tmp_path, "http", endpoint_url=srv.endpoint_url, assets_dir=assets, seed=7, **CFG)
        sim = make_crowd_campaign(tmp_path, "sim", backend="simulated", simulated_workers="solo:accuracy=1", seed=7,
                                  **CFG)
        pool = srv.simulate("solo:accuracy=1,seed=1", TruthPolicy(http), poll_interval=0.03)
        mturk = srv.client()
        deadline = time.monotonic() + 240
        try:
            while True:
                h = poll_once(http, client=mturk)
                if h["finished"]:
                    break
                assert time.monotonic() < deadline, h
                time.sleep(0.1)
        finally:
            pool.stop()
    finally:
        srv.stop()
    s = json.loads(cli("run", sim, "--json").stdout)
    assert s["finished"] and s["backend"] == "simulated" and h["backend"] == "mturk"
    a, b = _trace(http), _trace(sim)
    assert a["intents"] == b["intents"] >= 4
    assert a["items"] == b["items"]                    # the same HITs, questions and gold, position by position
    assert a["decisions"] == b["decisions"] and len(a["decisions"]) > 5
    assert a["answers"] == b["answers"]
    assert a["approved"] == b["approved"]
    assert (h["questions"], h["accepted_masks"], h["spent_usd"]) == (s["questions"], s["accepted_masks"],
                                                                    s["spent_usd"])


def test_run_survives_the_crowd_server_stopping_and_restarting(tmp_path):
    srv, assets = crowd_server_in(tmp_path)
    camp = make_crowd_campaign(tmp_path, "restart", endpoint_url=srv.endpoint_url, assets_dir=assets, seed=3,
                               n_images=30, gold_images=8, data_seed=5,
                               crowd={"questions_per_hit": 5, "gold_per_hit": 2, "max_hits_in_flight": 2},
                               qualification={"enabled": False, "min_gold_answers": 2}, search={"kpa": 0.3, "ns": 6})
    workers = "r1:accuracy=1,seed=1,tests=false;r2:accuracy=1,seed=2,tests=false"
    pool = srv.simulate(workers, TruthPolicy(camp), poll_interval=0.05)
    env = {**os.environ, **srv.env()}
    err_file = tmp_path / "run.err"           # stderr to a file: read while run is still going
    with open(err_file, "w") as err_out:
        run = subprocess.Popen(LABELPROP + ["run", str(camp), "--interval", "0.2", "--platform-wait", "300"],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err_out, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:                           # some HITs answered and processed: the campaign is under way
            con = sqlite3.connect(camp / "campaign.db", timeout=30)
            n = con.execute("select count(*) from crowd_assignment where processed = 1").fetchone()[0]
            con.close()
            if n >= 2:
                break
            assert run.poll() is None and time.monotonic() < deadline, "the campaign did not start"
            time.sleep(0.2)
        pool.stop()
        assert srv.stop() == 0                # the platform goes away (graceful stop, as for an upgrade)
        deadline = time.monotonic() + 240     # run notices and keeps trying (however loaded the machine)
        while "waiting for the platform" not in err_file.read_text():
            assert run.poll() is None, run.communicate()
            assert time.monotonic() < deadline, "run did not notice that the platform went away"
            time.sleep(0.2)
        assert run.poll() is None, run.communicate()
        srv = srv.restart()
        pool = srv.simulate(workers, TruthPolicy(camp), poll_interval=0.05)
        out, _ = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
        pool.stop()
    err = err_file.read_text()
    try:
        assert run.returncode == 0, err
        assert "waiting for the platform" in err and "finished:" in out, (out, err[-2000:])
        st = json.loads(cli("status", camp, "--json").stdout)
        assert st["state"] == "finished"
        con = sqlite3.connect(camp / "campaign.db")
        uid = con.execute("select value from meta where key='crowd.uid'").fetchone()[0]
        ours = {h for (h,) in con.execute("select hit_id from crowd_hit")}
        local = dict(con.execute("select assignment_id, final_status from crowd_assignment"))
        unsettled = con.execute("select count(*) from crowd_assignment where remote_done = 0").fetchone()[0]
        con.close()
        scon = sqlite3.connect(srv.data_dir / "crowd.sqlite3")
        anns = [a for (a,) in scon.execute("select requester_annotation from cs_hit where requester_annotation like ?",
                                           (f"lp:{uid}:%",))]
        remote = {a: s for a, h, s in scon.execute("select assignment_id, hit_id, status from cs_assignment")
                  if h in ours and s in ("Submitted", "Approved", "Rejected")}
        charged = scon.execute("select sum(charged_cents) from cs_assignment where status = 'Approved'").fetchone()[0]
        scon.close()
        assert len(anns) == len(set(anns)) == len(ours)            # no HIT posted twice
        assert remote == local and unsettled == 0                   # nothing lost, everything settled once
        assert charged / 100 == pytest.approx(st["crowd"]["spent_usd"])    # nothing paid twice
    finally:
        srv.stop()
