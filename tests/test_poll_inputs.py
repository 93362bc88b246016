"""`labelprop poll`: the campaign lock, and bad input from the platform (malformed Answer XML,
unknown question ids, missing fields, an assignment for a HIT the campaign never posted)."""
import fcntl
import json
import os
import sqlite3
import subprocess
import time


from tests.crowd_campaign_helpers import (LABELPROP, ROOT, TruthPolicy, lp,  # noqa: E402
                                    make_crowd_campaign)

from orchestrator.crowd_server.simulated_workers import WorkerSession, describe_html  # noqa: E402
from orchestrator.crowd_server.xml_formats import parse_question  # noqa: E402

SMALL = dict(n_images=10, gold_images=8, data_seed=9,
             crowd={"questions_per_hit": 4, "gold_per_hit": 2, "max_hits_in_flight": 4},
             qualification={"enabled": False, "min_gold_answers": 1, "min_percent_approved": 0},
             search={"kpa": 0.3, "ns": 6})


def test_two_polls_started_together_exactly_one_works(server):
    srv, base, assets = server
    camp = make_crowd_campaign(base, "lock", endpoint_url=srv.endpoint_url, assets_dir=assets, **SMALL)
    env = {**os.environ, **srv.env()}
    procs = [subprocess.Popen(LABELPROP + ["poll", str(camp), "--json"], cwd=ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    res = [json.loads(o) for o, _ in outs]
    assert sorted(r["locked"] for r in res) == [False, True], res
    loser = [e for (o, e), r in zip(outs, res) if r["locked"]][0]
    assert "another `labelprop poll` holds the lock" in loser
    con = sqlite3.connect(camp / "campaign.db")
    assert con.execute("select count(*) from hit_intent").fetchone()[0] == \
        [r for r in res if not r["locked"]][0]["hits_posted"]
    con.close()
    # while someone holds the lock, poll exits at once and changes nothing
    fd = os.open(camp / ".labelprop-poll.lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        t0 = time.monotonic()
        p = lp("poll", camp, env=srv.env())
        assert "holds the lock" in p.stderr and time.monotonic() - t0 < 20
    finally:
        os.close(fd)


def _truthful(policy, fields):
    return {f: policy._truth(f) for f in fields}


def test_bad_input_is_logged_and_skipped_and_nothing_else_is_affected(server):
    srv, base, assets = server
    camp = make_crowd_campaign(base, "bad", endpoint_url=srv.endpoint_url, assets_dir=assets, **SMALL)
    first = json.loads(lp("poll", camp, "--json", env=srv.env()).stdout)
    assert first["hits_posted"] == 4
    mturk = srv.client()
    con = sqlite3.connect(camp / "campaign.db")
    hit_type = con.execute("select hit_type_id from hit_intent limit 1").fetchone()[0]
    intent_of = dict(con.execute("select hit_id, id from hit_intent"))
    con.close()
    # a HIT of the same HIT type that the campaign never posted
    q = mturk.get_hit(HITId=next(iter(intent_of)))["HIT"]["Question"]
    foreign = mturk.create_hit_with_hit_type(HITTypeId=hit_type, MaxAssignments=1, LifetimeInSeconds=3600,
                                            Question=q, RequesterAnnotation="not-labelprop")["HIT"]["HITId"]
    policy = TruthPolicy(camp)
    w = srv.add_worker("tester")
    sess = WorkerSession(srv.endpoint_url, w["token"])
    done = {}
    for _ in range(5):
        pay = sess.request("POST", f"/groups/{hit_type}/accept")
        hid, aid = pay["hitId"], pay["assignmentId"]
        fields = [f.name for f in describe_html(parse_question(pay["question"]).html)[0]]
        ans = _truthful(policy, fields)
        kind = {0: "malformed", 1: "unknown", 2: "missing", 3: "normal"}.get(
            sorted(intent_of.values()).index(intent_of[hid]) if hid in intent_of else -1, "foreign")
        if kind == "unknown":
            ans["qdeadbeef0000000"] = "yes"
        if kind == "missing":
            con = sqlite3.connect(camp / "campaign.db")
            real = {i for (i,) in con.execute("select identifier from hit_item where question_id is not null")}
            con.close()
            drop = [f for f in fields if f in real][:3]
            for f in drop:
                ans.pop(f)
        r = sess.request("POST", "/mturk/externalSubmit",
                         [("assignmentId", aid), ("taskAnswers", json.dumps([ans]))])
        assert r.get("status") == "Submitted", r
        done[kind] = (hid, aid)
    assert set(done) == {"malformed", "unknown", "missing", "normal", "foreign"}
    assert done["foreign"][0] == foreign
    scon = sqlite3.connect(srv.data_dir / "crowd.sqlite3")
    scon.execute("update cs_assignment set answer = ? where assignment_id = ?",
                 ("<QuestionFormAnswers><Answer><QuestionIdentifier>x", done["malformed"][1]))
    scon.commit()
    scon.close()
    out = json.loads(lp("poll", camp, "--json", env=srv.env()).stdout)
    assert out["pass"]["hits_processed"] == 4
    con = sqlite3.connect(camp / "campaign.db")
    kinds = dict(con.execute("select kind, count(*) from event group by kind"))
    assert kinds.get("answer_unreadable") == 1 and kinds.get("unknown_identifiers") == 1
    assert kinds.get("missing_answers") == 1 and kinds.get("foreign_hit") == 1

    def n_recorded(kind):
        return con.execute("select count(*) from answer a join question q on q.id = a.question_id "
                           "where q.hit_id = ?", (done[kind][0],)).fetchone()[0]

    def n_questions(kind):
        return con.execute("select count(*) from question where hit_id = ?", (done[kind][0],)).fetchone()[0]

    assert n_recorded("malformed") == 0                                # re-asked, not guessed
    assert n_recorded("unknown") == n_questions("unknown") == 4        # the unknown id ignored, the rest used
    assert n_recorded("missing") == n_questions("missing") - 3          # what was answered is used
    assert n_recorded("normal") == 4
    decisions = dict(con.execute("select assignment_id, decision from crowd_assignment"))
    assert decisions[done["malformed"][1]] == "approve"                # policy: not the worker's fault
    assert done["foreign"][1] not in decisions
    reasked = con.execute("select count(*) from question where status='discarded'").fetchone()[0]
    assert reasked == 4 + 3
    con.close()
    # the foreign HIT's assignment was left alone; ours were all approved
    assert mturk.get_assignment(AssignmentId=done["foreign"][1])["Assignment"]["AssignmentStatus"] == "Submitted"
    for k in ("malformed", "unknown", "missing", "normal"):
        assert mturk.get_assignment(AssignmentId=done[k][1])["Assignment"]["AssignmentStatus"] == "Approved"
    again = json.loads(lp("poll", camp, "--json", env=srv.env()).stdout)
    assert again["pass"].get("foreign_hits", 0) == 0                    # logged once
