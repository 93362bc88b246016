"""HIT lifecycle of a real crowd campaign (crowd server subprocess, boto3, the campaign's SQL store):

* HITs that expire unanswered are re-posted: the server's clock is moved past the HIT
  lifetime (``LABELPROP_CROWD_CLOCK_OFFSET_FILE``), `poll` disposes of the expired HIT and
  posts the same intent again (attempt + 1, same questions, a new HITId), carrying its
  budget reservation over; workers then answer and the campaign finishes.  A HIT that
  expires with a submitted assignment (``assignments_per_hit = 2``, one answer) is
  processed normally and not re-posted.
* Replication (``assignments_per_hit = 3``): three simulated workers of accuracies
  1.0, 1.0 and 0.6 answer every HIT; the answers are aggregated by majority vote or by
  Dawid-Skene (``crowd.aggregation``) into one recorded answer per question, which
  matches the ground truth; spend is approved assignments x (reward + fee).
"""
import os
import sqlite3
import time
from pathlib import Path

import pytest

from tests.crowd_campaign_helpers import TruthPolicy, crowd_server_in, make_crowd_campaign  # noqa: E402

from orchestrator.crowd.cost import assignment_cost  # noqa: E402
from orchestrator.crowd.poll import poll_once  # noqa: E402

LIFETIME = 600
REWARD = 0.05


def _config(*, assignments=1, in_flight=2, budget=5.0, aggregation="majority", gold_min_accuracy=0.8, **crowd):
    return dict(
        n_images=10, gold_images=8, data_seed=9,
        crowd={"questions_per_hit": 4, "gold_per_hit": 2, "max_hits_in_flight": in_flight, "budget_usd": budget,
               "assignments_per_hit": assignments, "aggregation": aggregation, "lifetime_seconds": LIFETIME,
               **crowd},
        qualification={"enabled": False, "min_gold_answers": 1, "min_percent_approved": 0,
                       "gold_min_accuracy": gold_min_accuracy},
        search={"kpa": 0.3, "ns": 6})


class Clock:
    """The crowd server's fake clock: seconds it is moved forward, in the file the server reads."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0.0
        self.set(0.0)

    def set(self, seconds: float) -> None:
        self.offset = float(seconds)
        self.path.write_text(repr(self.offset))
        t = time.time_ns() + int(self.offset * 1e9)     # a distinct mtime: the server re-reads the file
        os.utime(self.path, ns=(t, t))

    def advance(self, seconds: float) -> None:
        self.set(self.offset + seconds)


@pytest.fixture
def crowd(tmp_path):
    clock = Clock(tmp_path / "clock-offset")
    srv, assets = crowd_server_in(tmp_path, env={**os.environ, "LABELPROP_CROWD_CLOCK_OFFSET_FILE": str(clock.path)})
    try:
        yield srv, tmp_path, assets, clock
    finally:
        srv.stop()


def _db(camp):
    return sqlite3.connect(camp / "campaign.db")


def _poll(camp, mturk):
    out = poll_once(camp, client=mturk)
    assert not out["locked"]
    budget = out["budget_usd"]
    if budget:      # committed spend + reservations never exceed the budget
        assert out["committed_usd"] <= budget + 1e-9, out
    return out


def _poll_until_finished(camp, mturk, timeout=120.0):
    deadline = time.monotonic() + timeout
    passes = 0
    while True:
        out = _poll(camp, mturk)
        passes += 1
        if out["finished"]:
            return out, passes
        assert not out["stopped"], out
        assert time.monotonic() < deadline, f"campaign not finished after {passes} passes: {out}"
        time.sleep(0.2)


def _wait(pred, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _submitted(mturk, hit_id):
    return mturk.list_assignments_for_hit(HITId=hit_id, AssignmentStatuses=["Submitted", "Approved", "Rejected"],
                                          MaxResults=100)["Assignments"]


def _truth_of_questions(camp):
    """{question id: true label} for every answered question (mask IoU >= K_iou)."""
    from orchestrator.campaign.config import load_config

    kiou = load_config(camp).search.kiou
    con = _db(camp)
    rows = con.execute("select q.id, m.iou from question q join mask m on m.id = q.mask_id").fetchall()
    con.close()
    return {q: int(iou >= kiou) for q, iou in rows}


def _assert_answered_once_and_paid(camp, final, mturk, balance0, assignments):
    con = _db(camp)
    dup = con.execute("select question_id, count(*) from answer group by question_id having count(*) > 1").fetchall()
    assert dup == [], f"questions answered twice: {dup}"
    n_ans = con.execute("select count(*) from answer").fetchone()[0]
    n_answered = con.execute("select count(*) from question where status = 'answered'").fetchone()[0]
    assert n_ans == n_answered > 0
    # no assignment is counted twice, and each one belongs to the attempt that was live
    per_hit = con.execute("select a.hit_id, count(*), max(h.max_assignments) from crowd_assignment a "
                          "join hit_intent h on h.id = a.intent_id group by a.hit_id").fetchall()
    assert all(n <= m for _, n, m in per_hit), per_hit
    n_approved = con.execute("select count(*) from crowd_assignment where final_status = 'Approved'").fetchone()[0]
    unsettled = con.execute("select count(*) from crowd_assignment where remote_done = 0").fetchone()[0]
    open_intents = con.execute("select count(*) from hit_intent where status in ('intent', 'created')").fetchone()[0]
    con.close()
    assert unsettled == 0 and open_intents == 0
    expected = round(n_approved * assignment_cost(REWARD, assignments), 2)
    assert final["spent_usd"] == pytest.approx(expected)
    assert final["committed_usd"] == pytest.approx(expected)        # nothing reserved once finished
    balance = float(mturk.get_account_balance()["AvailableBalance"])
    assert balance0 - balance == pytest.approx(expected)             # what the platform charged
    return n_approved


# ------------------------------------------------------------------------------- expiry
def test_hit_that_expires_unanswered_is_reposted_and_the_campaign_then_finishes(crowd):
    srv, base, assets, clock = crowd
    camp = make_crowd_campaign(base, "expire", endpoint_url=srv.endpoint_url, assets_dir=assets,
                               **_config(assignments=1, in_flight=2))
    mturk = srv.client()
    balance0 = float(mturk.get_account_balance()["AvailableBalance"])
    first = _poll(camp, mturk)
    assert first["hits_in_flight"] == 2 and first["pass"].get("hits_created") == 2
    con = _db(camp)
    before = {i: (a, h, r) for i, a, h, r in con.execute(
        "select id, attempt, hit_id, reserve_cents from hit_intent where status = 'created'")}
    items_before = con.execute("select intent_id, position, identifier, question_id, gold_id "
                               "from hit_item order by intent_id, position").fetchall()
    con.close()
    assert len(before) == 2 and all(a == 0 for a, _, _ in before.values())
    hit_cost = round(assignment_cost(REWARD, 1) * 100)
    assert all(r == hit_cost for _, _, r in before.values())
    assert first["committed_usd"] == pytest.approx(2 * hit_cost / 100)

    # nobody works; a pass before the lifetime runs out changes nothing
    clock.advance(LIFETIME / 2)
    mid = _poll(camp, mturk)
    assert mid["pass"].get("hits_reposted", 0) == 0 and mid["pass"].get("hits_created", 0) == 0
    for _, _, hid in ((i, *v[:2]) for i, v in before.items()):
        assert mturk.get_hit(HITId=hid)["HIT"]["HITStatus"] == "Assignable"

    # the lifetime runs out: both HITs expire unanswered
    clock.advance(LIFETIME)
    for _, hid, _ in before.values():
        assert mturk.get_hit(HITId=hid)["HIT"]["HITStatus"] == "Reviewable"
    out = _poll(camp, mturk)
    assert out["pass"].get("hits_reposted") == 2, out["pass"]
    assert out["pass"].get("hits_created") == 2 and out["pass"].get("hits_disposed") == 2, out["pass"]
    assert out["hits_in_flight"] == 2 and out["hits_posted"] == 2          # the same two intents, no new ones
    # the reservation is carried over, not released and not taken twice
    assert out["committed_usd"] == pytest.approx(first["committed_usd"])
    assert out["spent_usd"] == 0
    con = _db(camp)
    after = {i: (a, h, r) for i, a, h, r in con.execute(
        "select id, attempt, hit_id, reserve_cents from hit_intent where status = 'created'")}
    assert set(after) == set(before)
    for i, (a, hid, r) in after.items():
        assert a == 1 and r == hit_cost
        assert hid and hid != before[i][1]
    # same questions, same identifiers
    assert con.execute("select intent_id, position, identifier, question_id, gold_id from hit_item "
                       "order by intent_id, position").fetchall() == items_before
    # the questions point at the new HIT; both attempts are known, the old one disposed
    for i, (_, hid, _) in after.items():
        qh = {h for (h,) in con.execute("select q.hit_id from question q join hit_item it on it.question_id = q.id "
                                        "where it.intent_id = ?", (i,))}
        assert qh == {hid}
        rows = dict(con.execute("select attempt, status from crowd_hit where intent_id = ?", (i,)).fetchall())
        assert rows == {0: "disposed", 1: "created"}
    n_events = con.execute("select count(*) from event where kind = 'hit_reposted'").fetchone()[0]
    con.close()
    assert n_events == 2
    for i, (_, old, _) in before.items():
        assert mturk.get_hit(HITId=old)["HIT"]["HITStatus"] == "Disposed"
        new = mturk.get_hit(HITId=after[i][1])["HIT"]
        assert new["HITStatus"] == "Assignable"
        assert new["RequesterAnnotation"].endswith(f":{i}:1")
        idents = [r[2] for r in items_before if r[0] == i]
        assert all(ident in new["Question"] for ident in idents)

    # a second pass right away changes nothing (idempotent)
    again = _poll(camp, mturk)
    assert again["pass"].get("hits_reposted", 0) == 0 and again["pass"].get("hits_created", 0) == 0
    assert again["committed_usd"] == pytest.approx(first["committed_usd"])

    # now workers answer: the campaign finishes
    policy = TruthPolicy(camp)
    srv.simulate("w1:accuracy=1,seed=1,tests=false;w2:accuracy=1,seed=2,tests=false", policy, poll_interval=0.05)
    final, _ = _poll_until_finished(camp, mturk)
    assert final["pending_questions"] == 0 and final["accepted_masks"] + final["rejected_masks"] > 0
    _assert_answered_once_and_paid(camp, final, mturk, balance0, 1)
    con = _db(camp)
    # the expired attempts got no assignment; the re-posted ones were answered and processed
    assert con.execute("select count(*) from crowd_assignment where hit_id in (%s)"
                       % ",".join("?" * len(before)), [v[1] for v in before.values()]).fetchone()[0] == 0
    for i in before:
        st, att = con.execute("select status, attempt from hit_intent where id = ?", (i,)).fetchone()
        assert (st, att) == ("disposed", 1)
        assert con.execute("select count(*) from crowd_assignment where intent_id = ? and attempt = 1",
                           (i,)).fetchone()[0] == 1
    # recorded answers equal the truth (error-free workers)
    truth = _truth_of_questions(camp)
    wrong = [(q, lb) for q, lb in con.execute("select question_id, label from answer") if truth[q] != lb]
    con.close()
    assert wrong == []


def test_hit_that_expires_past_max_reposts_is_abandoned_and_its_questions_asked_again(crowd):
    srv, base, assets, clock = crowd
    camp = make_crowd_campaign(base, "abandon", endpoint_url=srv.endpoint_url, assets_dir=assets,
                               **_config(assignments=1, in_flight=2, max_reposts=1))
    mturk = srv.client()
    balance0 = float(mturk.get_account_balance()["AvailableBalance"])
    first = _poll(camp, mturk)
    con = _db(camp)
    intents0 = dict(con.execute("select id, hit_id from hit_intent where status = 'created'").fetchall())
    masks0 = sorted(m for (m,) in con.execute(
        "select q.mask_id from question q join hit_item it on it.question_id = q.id where it.intent_id in (%s)"
        % ",".join("?" * len(intents0)), list(intents0)))
    con.close()
    assert len(intents0) == 2 and masks0
    clock.advance(LIFETIME + 1)
    assert _poll(camp, mturk)["pass"].get("hits_reposted") == 2           # attempt 1 = max_reposts
    clock.advance(LIFETIME + 1)
    out = _poll(camp, mturk)                 # expired again: abandoned, questions back to the search
    assert out["pass"].get("hits_reposted", 0) == 0
    con = _db(camp)
    st = dict(con.execute("select id, status from hit_intent where id in (%s)" % ",".join("?" * len(intents0)),
                          list(intents0)).fetchall())
    assert set(st.values()) == {"abandoned"}, st
    assert con.execute("select count(*) from event where kind = 'hit_abandoned'").fetchone()[0] == 2
    released = {m for (m,) in con.execute("select mask_id from question where status = 'discarded'")}
    assert set(masks0) <= released          # given back to the search, which samples its nodes again
    # the masks are asked again in new HITs, whose reservations replace the abandoned ones
    new = dict(con.execute("select id, hit_id from hit_intent where status = 'created'").fetchall())
    con.close()
    assert new and not set(new) & set(intents0)
    assert out["committed_usd"] == pytest.approx(first["committed_usd"])
    srv.simulate("w1:accuracy=1,seed=1,tests=false;w2:accuracy=1,seed=2,tests=false", TruthPolicy(camp),
                 poll_interval=0.05)
    final, _ = _poll_until_finished(camp, mturk)
    _assert_answered_once_and_paid(camp, final, mturk, balance0, 1)
    con = _db(camp)
    # nothing was paid for the abandoned HITs: every approved assignment belongs to a later HIT
    assert con.execute("select count(*) from crowd_assignment where intent_id in (%s)"
                       % ",".join("?" * len(intents0)), list(intents0)).fetchone()[0] == 0
    hits = [h for (h,) in con.execute("select hit_id from crowd_hit where intent_id in (%s)"
                                       % ",".join("?" * len(intents0)), list(intents0))]
    con.close()
    assert len(hits) == 4                    # two intents, two attempts each, all disposed on the platform
    assert {mturk.get_hit(HITId=h)["HIT"]["HITStatus"] for h in hits} == {"Disposed"}


def test_held_answers_of_a_worker_on_probation_expire_and_are_asked_again(crowd):
    srv, base, assets, clock = crowd
    camp = make_crowd_campaign(base, "hold", endpoint_url=srv.endpoint_url, assets_dir=assets,
                               **_config(assignments=1, in_flight=2, gold_min_accuracy=0.5))
    from orchestrator.campaign.config import load_config, save_config

    cfg = load_config(camp)
    cfg.crowd.qualification.min_gold_answers = 4        # two HITs of gold before answers count
    cfg.crowd.qualification.hold_seconds = 2
    cfg.crowd.ordered = False       # the one HIT answered is processed even if it is not the oldest
    save_config(camp, cfg)
    mturk = srv.client()
    _poll(camp, mturk)
    # a worker does one HIT and leaves: its answers wait on probation
    pool = srv.simulate("once:accuracy=1,seed=3,tests=false,max_hits=1", TruthPolicy(camp), poll_interval=0.05)
    _wait(lambda: _poll(camp, mturk) and _db(camp).execute("select count(*) from crowd_answer").fetchone()[0] > 0,
          what="the one assignment processed")
    pool.stop()
    con = _db(camp)
    held = con.execute("select question_id from crowd_answer where status = 'held'").fetchall()
    assert held, "the worker's answers are held while on probation"
    assert con.execute("select count(*) from answer").fetchone()[0] == 0
    con.close()
    time.sleep(2.5)                                     # past hold_seconds
    _poll(camp, mturk)
    con = _db(camp)
    assert con.execute("select count(*) from crowd_answer where status = 'held'").fetchone()[0] == 0
    assert con.execute("select count(*) from crowd_answer where status = 'discarded'").fetchone()[0] == len(held)
    ev = con.execute("select payload from event where kind = 'holds_expired'").fetchall()
    assert len(ev) == 1 and f'"count": {len(held)}' in ev[0][0]
    rel = {q for (q,) in con.execute("select id from question where status = 'discarded'")}
    assert {q for (q,) in held} <= rel
    con.close()
    # regular workers finish the campaign; nothing of the worker who left decides a node.  Their own
    # probation ends with their first HIT and holds no longer expire: on a loaded machine a 2-second
    # hold would otherwise also expire answers of theirs that are merely waiting for the next pass
    cfg = load_config(camp)
    cfg.crowd.qualification.min_gold_answers = 2
    cfg.crowd.qualification.hold_seconds = 0
    save_config(camp, cfg)
    srv.simulate("w1:accuracy=1,seed=1,tests=false;w2:accuracy=1,seed=2,tests=false", TruthPolicy(camp),
                 poll_interval=0.05)
    _poll_until_finished(camp, mturk)
    con = _db(camp)
    once = {w for (w,) in con.execute("select distinct worker_id from crowd_answer where status = 'discarded'")}
    assert len(once) == 1
    assert con.execute("select count(*) from crowd_answer where worker_id = ? and status in ('held', 'recorded')",
                       (once.pop(),)).fetchone()[0] == 0
    con.close()


def test_hit_that_expires_with_a_submitted_assignment_is_processed_not_reposted(crowd):
    srv, base, assets, clock = crowd
    camp = make_crowd_campaign(base, "partial", endpoint_url=srv.endpoint_url, assets_dir=assets,
                               **_config(assignments=2, in_flight=2, concurrency=1))
    mturk = srv.client()
    first = _poll(camp, mturk)
    assert first["hits_in_flight"] == 2
    con = _db(camp)
    hits = dict(con.execute("select id, hit_id from hit_intent where status = 'created'"))
    con.close()
    # one worker answers one of the two HITs (once: each HIT wants 2 assignments), then leaves.
    # HITs are created one at a time (concurrency 1), so the worker takes the oldest: the head
    # in posting order (crowd.ordered), which is processed first
    policy = TruthPolicy(camp)
    pool = srv.simulate("solo:accuracy=1,seed=5,max_hits=1,tests=false", policy, poll_interval=0.05)
    _wait(lambda: sum(len(_submitted(mturk, h)) for h in hits.values()) >= 1, what="one submitted assignment")
    pool.stop()
    answered = [i for i, h in hits.items() if _submitted(mturk, h)]
    assert len(answered) == 1
    done_i, = answered
    empty_i, = set(hits) - {done_i}
    assert done_i < empty_i
    # not reviewable yet: the HIT still wants another assignment
    assert mturk.get_hit(HITId=hits[done_i])["HIT"]["HITStatus"] == "Assignable"
    quiet = _poll(camp, mturk)
    assert quiet["pass"].get("hits_processed", 0) == 0

    clock.advance(LIFETIME + 60)
    out = _poll(camp, mturk)
    assert out["pass"].get("hits_processed") == 1 and out["pass"].get("hits_reposted") == 1, out["pass"]
    assert out["pass"].get("assignments_processed") == 1
    con = _db(camp)
    st, att = con.execute("select status, attempt from hit_intent where id = ?", (done_i,)).fetchone()
    assert (st, att) == ("disposed", 0)             # processed, settled and deleted; never re-posted
    st, att, new_hit = con.execute("select status, attempt, hit_id from hit_intent where id = ?",
                                   (empty_i,)).fetchone()
    assert (st, att) == ("created", 1) and new_hit != hits[empty_i]
    asg = con.execute("select final_status, decision from crowd_assignment where intent_id = ?",
                      (done_i,)).fetchall()
    assert asg == [("Approved", "approve")]
    # its answers were recorded (aggregated from the one answer it got), once per question
    qids = [q for (q,) in con.execute("select question_id from hit_item where intent_id = ? and "
                                      "question_id is not null", (done_i,))]
    rec = con.execute("select question_id, label, worker_id from answer where question_id in (%s)"
                      % ",".join("?" * len(qids)), qids).fetchall()
    assert sorted(q for q, _, _ in rec) == sorted(qids)
    truth = _truth_of_questions(camp)
    assert all(truth[q] == lb for q, lb, _ in rec)
    assert {w for _, _, w in rec} == {"majority"}
    assert con.execute("select count(*) from event where kind = 'hit_reposted'").fetchone()[0] == 1
    con.close()
    assert mturk.get_hit(HITId=hits[done_i])["HIT"]["HITStatus"] == "Disposed"
    # the budget: one approved assignment paid, the open HITs reserved in full
    cost = round(assignment_cost(REWARD, 2) * 100)
    assert out["spent_usd"] == pytest.approx(cost / 100)
    assert out["committed_usd"] == pytest.approx((cost + out["hits_in_flight"] * 2 * cost) / 100)


# ------------------------------------------------------------------------------- replication
@pytest.mark.parametrize("aggregation", ["majority", "dawid-skene"])
def test_replicated_hits_are_aggregated_into_one_answer_per_question(crowd, aggregation):
    srv, base, assets, clock = crowd
    # gold_min_accuracy 0: the 0.6 worker is never soft-blocked (with three workers a block would
    # leave every later HIT one assignment short until it expires)
    camp = make_crowd_campaign(base, "rep", endpoint_url=srv.endpoint_url, assets_dir=assets,
                               **_config(assignments=3, in_flight=3, aggregation=aggregation,
                                         gold_min_accuracy=0.0, budget=10.0))
    from orchestrator.campaign.config import load_config
    assert load_config(camp).crowd.aggregation == aggregation       # the campaign.toml key
    assert f'aggregation = "{aggregation}"' in (camp / "campaign.toml").read_text()
    mturk = srv.client()
    balance0 = float(mturk.get_account_balance()["AvailableBalance"])
    policy = TruthPolicy(camp)
    pool = srv.simulate("a:accuracy=1,seed=11,tests=false;b:accuracy=1,seed=12,tests=false;"
                        "c:accuracy=0.6,seed=13,tests=false", policy, poll_interval=0.05)
    first = _poll(camp, mturk)
    assert first["committed_usd"] == pytest.approx(first["hits_in_flight"] * 3 * assignment_cost(REWARD, 3))
    final, _ = _poll_until_finished(camp, mturk)
    ids = pool.worker_ids
    assert final["pending_questions"] == 0
    n_approved = _assert_answered_once_and_paid(camp, final, mturk, balance0, 3)
    con = _db(camp)
    n_hits = con.execute("select count(*) from hit_intent").fetchone()[0]
    # every HIT got its three assignments, one per worker
    per_intent = con.execute("select intent_id, count(*), count(distinct worker_id) from crowd_assignment "
                             "group by intent_id").fetchall()
    assert len(per_intent) == n_hits and all(n == 3 and d == 3 for _, n, d in per_intent), per_intent
    n_rejected = con.execute("select count(*) from crowd_assignment where final_status = 'Rejected'").fetchone()[0]
    assert n_approved + n_rejected == 3 * n_hits
    # the accurate workers are never rejected (all their gold is right)
    for name in ("a", "b"):
        assert con.execute("select count(*) from crowd_assignment where worker_id = ? and final_status != 'Approved'",
                           (ids[name],)).fetchone()[0] == 0
    # one Answer row per question, from the aggregate (worker_id names the method), none from a worker
    rows = con.execute("select question_id, label, worker_id, source from answer").fetchall()
    assert {w for _, _, w, _ in rows} == {aggregation}
    assert {s for _, _, _, s in rows} == {"server"}
    # every individual answer is pooled (or discarded: rejected assignment), never recorded directly
    st = dict(con.execute("select status, count(*) from crowd_answer where gold_id is null group by status"))
    assert set(st) <= {"pooled", "discarded"} and st.get("pooled", 0) > 0, st
    # each answered question got its worker answers pooled: 3 (2 when c's assignment was rejected)
    pooled = dict(con.execute("select question_id, count(*) from crowd_answer where status = 'pooled' "
                              "group by question_id"))
    assert all(pooled.get(q, 0) in (2, 3) for q, _, _, _ in rows), pooled
    assert con.execute("select count(*) from event where kind = 'aggregated'").fetchone()[0] == n_hits
    # the 0.6 worker was wrong on some questions, the aggregate (almost) never
    truth = _truth_of_questions(camp)
    c_answers = con.execute("select question_id, label from crowd_answer where worker_id = ? "
                            "and question_id is not null and label >= 0", (ids["c"],)).fetchall()
    con.close()
    c_wrong = sum(truth[q] != lb for q, lb in c_answers)
    wrong = [q for q, lb, _, _ in rows if truth[q] != lb]
    assert len(rows) >= 10
    assert len(wrong) <= (0 if aggregation == "majority" else max(1, len(rows) // 20)), (wrong, len(rows))
    assert c_wrong > 0
