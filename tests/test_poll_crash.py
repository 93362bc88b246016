"""`labelprop poll` killed by SIGKILL at random points, resumed by the next poll.

Error-free workers: the final accepted set, the number of HITs and the spend equal those of an
uninterrupted run with the same seed.  Noisy workers (and a spammer, a binding budget): no HIT
is duplicated, no submitted answer is lost, every node is decided once, spend stays under budget.
"""
import json
import os
import random
import signal
import sqlite3
import subprocess
import time
from collections import Counter

import numpy as np
import pytest

from tests.crowd_campaign_helpers import (LABELPROP, ROOT, TruthPolicy, lp,  # noqa: E402
                                    make_crowd_campaign)


SMALL = dict(n_images=40, gold_images=8, data_seed=5,
             # one HIT in flight: the campaign runs through ~27 post/answer/poll cycles, so the
             # kills land while it is running (not after it finished)
             crowd={"questions_per_hit": 3, "gold_per_hit": 2, "max_hits_in_flight": 1},
             qualification={"enabled": False, "min_gold_answers": 2, "min_percent_approved": 0},
             search={"kpa": 0.3, "ns": 6})


def _env(srv):
    return {**os.environ, **srv.env()}


def _kill_loop(srv, camp, min_kills: int, seed: int, max_seconds: float = 1200):
    """Start polls and SIGKILL them at random points until ``min_kills`` kills, then finish cleanly.

    Kill times are drawn from the durations of passes measured on this machine now (a first clean
    pass, then every pass that ended before its kill), so the kills land inside passes whether the
    machine is fast or loaded.  Only ``max_seconds`` (a hang guard) ends the loop early.
    """
    rng = random.Random(seed)
    t0 = time.monotonic()
    lp("poll", camp, "--json", env=srv.env())          # posts the first HITs
    durations = [time.monotonic() - t0]
    kills, mid_run, t_end = 0, 0, time.monotonic() + max_seconds
    while kills < min_kills and time.monotonic() < t_end:
        t_pass = float(np.median(durations[-5:]))
        p = subprocess.Popen(LABELPROP + ["poll", str(camp), "--json"], cwd=ROOT, env=_env(srv),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        t_start = time.monotonic()
        try:
            p.wait(timeout=rng.uniform(0.3, 1.1) * t_pass)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
            kills += 1
            con = sqlite3.connect(camp / "campaign.db", timeout=30)
            mid_run += con.execute("select count(*) from hit_intent where status in ('intent', 'created')"
                                   ).fetchone()[0] > 0
            con.close()
        else:
            out, err = p.communicate()
            assert p.returncode == 0, err
            durations.append(time.monotonic() - t_start)
    # finish with clean passes: wait as long as the campaign makes progress (a loaded CI
    # machine is slow), fail only if it stalls for a minute
    final, last, stall_end, hard_end = None, None, time.monotonic() + 60, time.monotonic() + 600
    while time.monotonic() < min(stall_end, hard_end):
        out = json.loads(lp("poll", camp, "--json", env=srv.env()).stdout)
        if out["stopped"]:
            final = out
            break
        progress = (out.get("questions"), out.get("hits_posted"), out.get("assignments"), out.get("spent_usd"))
        if progress != last:
            last, stall_end = progress, time.monotonic() + 60
        time.sleep(0.2)
    assert final is not None, f"the campaign stalled after the kills (last progress {last})"
    return kills, mid_run, final


def _accepted(camp, tmp):
    out = tmp / f"{camp.name}-acc.npy"
    lp("export", camp, "--indices", out)
    return sorted(np.load(out).tolist())


def test_error_free_interrupted_run_equals_uninterrupted_run(server):
    srv, base, assets = server
    ref = make_crowd_campaign(base, "ref", endpoint_url=srv.endpoint_url, assets_dir=assets, seed=7, **SMALL)
    crash = make_crowd_campaign(base, "crash", endpoint_url=srv.endpoint_url, assets_dir=assets, seed=7, **SMALL)
    pool = srv.simulate("e1:accuracy=1,seconds=0.3;e2:accuracy=1,seconds=0.3;e3:accuracy=1,seconds=0.3",
                        TruthPolicy(ref, crash), poll_interval=0.03)
    try:
        r = json.loads(lp("run", ref, "--interval", "0.1", "--json", env=srv.env(), timeout=300).stdout)
        assert r["finished"] and r["hits_posted"] >= 15, r
        kills, mid_run, c = _kill_loop(srv, crash, min_kills=30, seed=1)
    finally:
        pool.stop()
    assert kills >= 30 and mid_run >= 15, (kills, mid_run)     # at least half hit a campaign with HITs out
    print(f"kills={kills} mid_run={mid_run} hits={c['hits_posted']}")
    assert c["finished"]
    assert _accepted(crash, base) == _accepted(ref, base)
    assert c["hits_posted"] == r["hits_posted"]
    assert c["questions"] == r["questions"]
    assert c["spent_usd"] == pytest.approx(r["spent_usd"])
    con = sqlite3.connect(crash / "campaign.db")
    # one remote HIT per intent, and the server holds exactly those
    n_hits = con.execute("select count(*) from crowd_hit").fetchone()[0]
    uid = con.execute("select value from meta where key='crowd.uid'").fetchone()[0]
    con.close()
    scon = sqlite3.connect(srv.data_dir / "crowd.sqlite3")
    anns = [a for (a,) in scon.execute("select requester_annotation from cs_hit where requester_annotation like ?",
                                       (f"lp:{uid}:%",))]
    scon.close()
    assert n_hits == c["hits_posted"] == len(anns) == len(set(anns))


def test_noisy_interrupted_run_loses_nothing_and_stays_under_budget(server):
    srv, base, assets = server
    budget = 1.20     # 20 assignments at $0.05 + $0.01 fee: binds before the search is done
    camp = make_crowd_campaign(base, "noisy", endpoint_url=srv.endpoint_url, assets_dir=assets, seed=3,
                               **{**SMALL, "crowd": {**SMALL["crowd"], "budget_usd": budget},
                                  "qualification": {**SMALL["qualification"], "min_gold_answers": 6,
                                                    "gold_min_accuracy": 0.6}})
    # answers wait on probation (6 gold answers = 3 HITs), some workers may get blocked
    pool = srv.simulate("n0:accuracy=1,seed=4;n1:accuracy=0.9,seed=1;n2:accuracy=0.95,seed=2;nsp:spammer,seed=3",
                        TruthPolicy(camp), poll_interval=0.03)
    try:
        kills, _, final = _kill_loop(srv, camp, min_kills=15, seed=2)
    finally:
        pool.stop()
    for _ in range(3):          # settle what the workers submitted last
        final = json.loads(lp("poll", camp, "--json", env=srv.env()).stdout)
    assert kills >= 15
    assert final["spent_usd"] <= budget + 1e-9 and final["committed_usd"] <= budget + 1e-9
    con = sqlite3.connect(camp / "campaign.db")
    uid = con.execute("select value from meta where key='crowd.uid'").fetchone()[0]
    ours = {h for (h,) in con.execute("select hit_id from crowd_hit")}
    local = {a: (p, st) for a, p, st in con.execute(
        "select assignment_id, processed, final_status from crowd_assignment")}
    answers = Counter(a for (a,) in con.execute("select assignment_id from crowd_answer"))
    nodes = Counter(json.loads(p)["node"] for (p,) in con.execute(
        "select payload from event where kind in ('node_accepted','node_rejected','node_split')"))
    intents = con.execute("select count(*) from hit_intent").fetchone()[0]
    con.close()
    scon = sqlite3.connect(srv.data_dir / "crowd.sqlite3")
    anns = [a for (a,) in scon.execute("select requester_annotation from cs_hit where requester_annotation like ?",
                                       (f"lp:{uid}:%",))]
    remote = {a: st for a, h, st in scon.execute("select assignment_id, hit_id, status from cs_assignment")
              if h in ours and st in ("Submitted", "Approved", "Rejected")}
    spent_remote = scon.execute("select sum(charged_cents) from cs_assignment where status='Approved' and hit_id in "
                                f"({','.join('?' * len(ours))})", sorted(ours)).fetchone()[0] or 0
    scon.close()
    assert len(anns) == len(set(anns)) == len(ours) >= intents      # no HIT duplicated
    assert set(remote) == set(local)                                  # no submitted assignment lost
    assert all(p == 1 for p, _ in local.values())
    assert all(local[a][1] == st for a, st in remote.items())         # settled exactly as decided
    assert all(answers[a] > 0 for a in local)                          # every answer stored
    assert all(v == 1 for v in nodes.values())                         # every node decided once
    assert spent_remote / 100 == pytest.approx(final["spent_usd"])
