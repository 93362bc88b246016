"""The worker side over HTTP and the clock-driven state machine; simulated workers close the loop."""
from __future__ import annotations

import json
import os
from decimal import Decimal
from pathlib import Path

import pytest

from tests.crowd_server_support import (answer_key, classic_form_page, crowd_form_page, html_question, parse_answers, question_form, start_crowd, wait_until)
from tests.crowd_server_helpers import TRUTH, truth_policy

from orchestrator.crowd_server.simulated_workers import WorkerProfile

TESTS_DIR = Path(__file__).resolve().parent


def _answers_of(mturk, hit_id) -> dict[str, dict]:
    """WorkerId -> {field: value}, decoding crowd-form's taskAnswers JSON."""
    out = {}
    for a in mturk.get_paginator("list_assignments_for_hit").paginate(HITId=hit_id).build_full_result()["Assignments"]:
        ans = parse_answers(a["Answer"])
        if "taskAnswers" in ans:
            ans = json.loads(ans["taskAnswers"])[0]
        out[a["WorkerId"]] = ans
    return out


def test_abandoned_assignment_frees_the_hit(crowd):
    m = crowd.mturk
    tid = crowd.hit_type(Title="short", AssignmentDurationInSeconds=30)
    h = crowd.hit(tid)
    w1, w2 = crowd.worker(), crowd.worker()
    p = w1.request("POST", f"/groups/{tid}/accept")
    assert m.get_hit(HITId=h["HITId"])["HIT"]["HITStatus"] == "Unassignable"
    crowd.advance(31)
    g = m.get_hit(HITId=h["HITId"])["HIT"]
    assert (g["HITStatus"], g["NumberOfAssignmentsPending"], g["NumberOfAssignmentsAvailable"]) == ("Assignable", 0, 1)
    r = w1.request("POST", "/mturk/externalSubmit", [("assignmentId", p["assignmentId"]), ("q1", "yes")])
    assert r["status"] == 409 and "expired" in r["error"]
    assert w2.request("POST", f"/groups/{tid}/accept")["hitId"] == h["HITId"]


def test_auto_approval_pays_after_the_delay(crowd):
    m = crowd.mturk
    tid = crowd.hit_type(Title="auto approve", Reward="0.20", AutoApprovalDelayInSeconds=60)
    h = crowd.hit(tid)
    w = crowd.worker()
    p = w.request("POST", f"/groups/{tid}/accept")
    w.request("POST", "/mturk/externalSubmit", [("assignmentId", p["assignmentId"]), ("q1", "no")])
    b0 = Decimal(m.get_account_balance()["AvailableBalance"])
    assert m.get_assignment(AssignmentId=p["assignmentId"])["Assignment"]["AssignmentStatus"] == "Submitted"
    crowd.advance(61)
    a = m.get_assignment(AssignmentId=p["assignmentId"])["Assignment"]
    assert a["AssignmentStatus"] == "Approved" and a["ApprovalTime"] == a["AutoApprovalTime"]
    assert Decimal(m.get_account_balance()["AvailableBalance"]) == b0 - Decimal("0.24")
    m.delete_hit(HITId=h["HITId"])


def test_lifetime_expiry_makes_hit_reviewable(crowd):
    m = crowd.mturk
    tid = crowd.hit_type(Title="lifetime")
    h = crowd.hit(tid, LifetimeInSeconds=60, MaxAssignments=2)
    w = crowd.worker()
    p = w.request("POST", f"/groups/{tid}/accept")
    crowd.advance(61)
    # expired with an assignment in progress: Unassignable until it is submitted
    assert m.get_hit(HITId=h["HITId"])["HIT"]["HITStatus"] == "Unassignable"
    assert crowd.worker().request("POST", f"/groups/{tid}/accept")["status"] == 404
    w.request("POST", "/mturk/externalSubmit", [("assignmentId", p["assignmentId"]), ("q1", "yes")])
    assert m.get_hit(HITId=h["HITId"])["HIT"]["HITStatus"] == "Reviewable"
    assert h["HITId"] in [x["HITId"] for x in m.list_reviewable_hits(HITTypeId=tid)["HITs"]]


def test_insufficient_funds(tmp_path):
    c = start_crowd(tmp_path, extra_args=["--balance", "0.05", "--quiet"])
    try:
        m = c.mturk
        h = c.hit(c.hit_type(Reward="0.05"))
        w = c.worker()
        p = w.request("POST", f"/hits/{h['HITId']}/accept")
        w.request("POST", "/mturk/externalSubmit", [("assignmentId", p["assignmentId"]), ("q1", "yes")])
        with pytest.raises(m.exceptions.RequestError) as e:
            m.approve_assignment(AssignmentId=p["assignmentId"])
        assert e.value.response["TurkErrorCode"] == "AWS.MechanicalTurk.InsufficientFunds"
        assert m.get_assignment(AssignmentId=p["assignmentId"])["Assignment"]["AssignmentStatus"] == "Submitted"
        assert m.get_account_balance()["AvailableBalance"] == "0.05"
    finally:
        assert c.srv.stop() == 0


def test_simulated_workers_accurate_spammer_and_always_wrong(crowd):
    m = crowd.mturk
    tid = crowd.hit_type(Title="sim loop", Reward="0.01")
    hits = []
    for i in range(6):
        fields = [f"m{3 * i + k}" for k in range(1, 4)]
        page = crowd_form_page(fields) if i % 2 else classic_form_page(fields)
        hits.append((crowd.hit(tid, html_question(page), MaxAssignments=3)["HITId"], fields))
    pool = crowd.srv.simulate([WorkerProfile("sim-ann", accuracy=1.0),
                               WorkerProfile("sim-bob", spammer=True, spam_answer="yes"),
                               WorkerProfile("sim-cy", accuracy=0.0, seconds=0.01)], truth_policy)
    try:
        wait_until(lambda: all(m.get_hit(HITId=h)["HIT"]["HITStatus"] == "Reviewable" for h, _ in hits),
                   timeout=60, what="all simulated assignments")
    finally:
        pool.stop()
    ids = pool.worker_ids
    stats = pool.stats()
    assert all(stats[n]["submitted"] >= 6 and stats[n]["errors"] == 0 for n in ids), stats
    flip = {"yes": "no", "no": "yes"}
    for hit_id, fields in hits:
        answers = _answers_of(m, hit_id)
        assert set(answers) == set(ids.values())
        assert answers[ids["sim-ann"]] == {f: TRUTH[f] for f in fields}
        assert answers[ids["sim-bob"]] == {f: "yes" for f in fields}
        assert answers[ids["sim-cy"]] == {f: flip[TRUTH[f]] for f in fields}


def test_simulated_workers_take_qualification_tests(crowd):
    m = crowd.mturk
    test = question_form([("t1", ["a", "b"]), ("t2", ["a", "b"]), ("t3", ["a", "b"])])
    qt = m.create_qualification_type(Name="sim-test", Description="three questions", QualificationTypeStatus="Active",
                                      Test=test, TestDurationInSeconds=60,
                                      AnswerKey=answer_key({"t1": "a", "t2": "b", "t3": "a"}, percentage_of=3)
                                      )["QualificationType"]["QualificationTypeId"]
    tid = crowd.hit_type(Title="needs test", QualificationRequirements=[
        {"QualificationTypeId": qt, "Comparator": "GreaterThanOrEqualTo", "IntegerValues": [100]}])
    h = crowd.hit(tid, html_question(crowd_form_page(["m1", "m2"])), MaxAssignments=2)["HITId"]
    truth = {"t1": "a", "t2": "b", "t3": "a", "m1": TRUTH["m1"], "m2": TRUTH["m2"]}
    answers_file = crowd.srv.data_dir.parent / "truth.json"
    answers_file.write_text(json.dumps(truth))
    pool = crowd.srv.simulate("qa-good:accuracy=1;qa-bad:accuracy=0", str(answers_file))
    try:
        wait_until(lambda: m.get_hit(HITId=h)["HIT"]["NumberOfAssignmentsAvailable"] == 1 and
                   m.list_assignments_for_hit(HITId=h)["NumResults"] == 1, timeout=30, what="the qualified worker")
        wait_until(lambda: pool.stats()["qa-bad"]["tests_taken"] == 1, timeout=10, what="the failing test")
    finally:
        pool.stop()
    ids = pool.worker_ids
    quals = {q["WorkerId"]: q["IntegerValue"] for q in m.list_workers_with_qualification_type(
        QualificationTypeId=qt)["Qualifications"]}
    assert quals == {ids["qa-good"]: 100, ids["qa-bad"]: 0}
    assert _answers_of(m, h) == {ids["qa-good"]: {"m1": TRUTH["m1"], "m2": TRUTH["m2"]}}


def test_cli_simulate_workers_with_dotted_policy(tmp_path):
    c = start_crowd(tmp_path, extra_args=["--quiet", "--simulate-workers",
                                          "cli-ann:accuracy=1;cli-bob:spammer,spam_answer=no",
                                          "--policy", "crowd_server_helpers:truth_policy"],
                    env_extra={"PYTHONPATH": str(TESTS_DIR)})
    try:
        m = c.mturk
        tid = c.hit_type(Title="cli sim")
        hid = c.hit(tid, html_question(crowd_form_page(["m4", "m6"])), MaxAssignments=2)["HITId"]
        wait_until(lambda: m.get_hit(HITId=hid)["HIT"]["HITStatus"] == "Reviewable", timeout=30, what="CLI workers")
        got = sorted(_answers_of(m, hid).values(), key=json.dumps)
        assert got == sorted([{"m4": "yes", "m6": "no"}, {"m4": "no", "m6": "no"}], key=json.dumps)
    finally:
        assert c.srv.stop() == 0


def test_external_question_gets_mturk_query_parameters(crowd):
    from urllib.parse import parse_qs, urlsplit
    ext = ('<ExternalQuestion xmlns="http://mechanicalturk.amazonaws.com/AWSMechanicalTurkDataSchemas/2006-07-14/'
           'ExternalQuestion.xsd"><ExternalURL>https://tasks.example.org/verify?batch=3</ExternalURL>'
           '<FrameHeight>400</FrameHeight></ExternalQuestion>')
    h = crowd.hit(question=ext)
    w = crowd.worker()
    prev = w.request("GET", f"/hits/{h['HITId']}")
    q = parse_qs(urlsplit(prev["taskUrl"]).query)
    assert prev["taskUrl"].startswith("https://tasks.example.org/verify?batch=3&")
    assert q["assignmentId"] == ["ASSIGNMENT_ID_NOT_AVAILABLE"] and "workerId" not in q
    p = w.request("POST", f"/hits/{h['HITId']}/accept")
    q = parse_qs(urlsplit(p["taskUrl"]).query)
    assert q["assignmentId"] == [p["assignmentId"]] and q["hitId"] == [h["HITId"]]
    assert q["workerId"] == [w.worker_id] and q["turkSubmitTo"] == [crowd.srv.endpoint_url]
    r = w.request("POST", "/mturk/externalSubmit", [("assignmentId", p["assignmentId"]), ("verdict", "yes")])
    assert r["status"] == "Submitted"
    a = crowd.mturk.list_assignments_for_hit(HITId=h["HITId"])["Assignments"][0]
    assert parse_answers(a["Answer"]) == {"verdict": "yes"}


def test_qualification_test_in_html_pages(crowd):
    """The browser flow of a test: the HTML pages render the QuestionForm and score the posted form."""
    import urllib.request
    from urllib.parse import urlencode
    m = crowd.mturk
    qt = m.create_qualification_type(Name="html-test", Description="two questions", QualificationTypeStatus="Active",
                                      Test=question_form([("h1", ["a", "b"]), ("h2", ["a", "b"])]),
                                      TestDurationInSeconds=60, AnswerKey=answer_key({"h1": "a", "h2": "b"})
                                      )["QualificationType"]["QualificationTypeId"]
    info = crowd.srv.add_worker("html-tester")
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    opener.open(info["signin_url"], timeout=5).read()
    page = opener.open(crowd.srv.endpoint_url + "/qualifications", timeout=5).read().decode()
    assert "html-test" in page and f"/qualifications/{qt}/request" in page
    form = opener.open(urllib.request.Request(crowd.srv.endpoint_url + f"/qualifications/{qt}/request", data=b"",
                                              method="POST"), timeout=5).read().decode()
    assert 'id="qualification-test"' in form and 'name="h1"' in form and 'value="b"' in form
    done = opener.open(urllib.request.Request(crowd.srv.endpoint_url + f"/qualifications/{qt}/test",
                                              data=urlencode({"h1": "a", "h2": "a"}).encode(), method="POST"),
                       timeout=5).read().decode()
    assert "granted" in done and "score of 1" in done
    got = m.list_workers_with_qualification_type(QualificationTypeId=qt)["Qualifications"]
    assert [(q["WorkerId"], q["IntegerValue"]) for q in got] == [(info["worker_id"], 1)]
    again = opener.open(crowd.srv.endpoint_url + "/qualifications", timeout=5).read().decode()
    assert "Retries are not allowed" in again or "already hold" in again
