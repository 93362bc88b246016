"""The Requester API, driven only through boto3 against a server subprocess (workers act over HTTP)."""
from __future__ import annotations

import datetime as dt
import json
import re
from decimal import Decimal

import pytest

from tests.crowd_server_support import (answer_key, classic_form_page, crowd_form_page, html_question, parse_answers, question_form)

pytestmark = pytest.mark.usefixtures("no_botocore_warnings")


def code(exc_info) -> tuple[str, str]:
    r = exc_info.value.response
    return r["Error"]["Code"], r.get("TurkErrorCode", "")


def balance(mturk) -> Decimal:
    return Decimal(mturk.get_account_balance()["AvailableBalance"])


def submit(worker, payload: dict, **answers) -> dict:
    fields = [("assignmentId", payload["assignmentId"])] + list(answers.items())
    return worker.request("POST", "/mturk/externalSubmit", fields)


def test_hit_type_is_deterministic(crowd):
    m = crowd.mturk
    a = crowd.hit_type(Title="same")
    assert crowd.hit_type(Title="same") == a
    assert crowd.hit_type(Title="same", Reward="0.06") != a
    assert re.fullmatch(r"[A-Z0-9]{30}", a)
    # CreateHIT with the same properties lands in the same HIT type.
    h = m.create_hit(Reward="0.05", Title="same", Description="Answer yes or no for each mask.",
                     AssignmentDurationInSeconds=600, AutoApprovalDelayInSeconds=86400, Keywords="labelprop",
                     LifetimeInSeconds=3600, Question=html_question(crowd_form_page(["q"])))["HIT"]
    assert h["HITTypeId"] == a
    assert h["HITGroupId"] == a


def test_create_and_get_hit_roundtrip(crowd):
    m = crowd.mturk
    tid = crowd.hit_type()
    q = html_question(crowd_form_page(["q1", "q2"]), frame_height=500)
    before = dt.datetime.now(dt.timezone.utc)
    h = crowd.hit(tid, q, MaxAssignments=3, LifetimeInSeconds=7200, RequesterAnnotation="batch=7;nodes=1,2")
    g = m.get_hit(HITId=h["HITId"])["HIT"]
    assert g["Question"] == q
    assert g["RequesterAnnotation"] == "batch=7;nodes=1,2"
    assert g["HITStatus"] == "Assignable" and g["HITReviewStatus"] == "NotReviewed"
    assert g["MaxAssignments"] == 3 and g["NumberOfAssignmentsAvailable"] == 3
    assert g["NumberOfAssignmentsPending"] == 0 and g["NumberOfAssignmentsCompleted"] == 0
    assert g["Reward"] == "0.05" and g["AssignmentDurationInSeconds"] == 600
    assert isinstance(g["CreationTime"], dt.datetime)
    assert abs((g["CreationTime"] - before).total_seconds()) < 5
    assert 7190 < (g["Expiration"] - g["CreationTime"]).total_seconds() <= 7200.01
    assert g["QualificationRequirements"] == []


def test_unique_request_token_gives_hit_already_exists(crowd):
    m = crowd.mturk
    tid = crowd.hit_type(Title="tokens")
    first = crowd.hit(tid, UniqueRequestToken="node-42-round-1")
    with pytest.raises(m.exceptions.RequestError) as e:
        crowd.hit(tid, UniqueRequestToken="node-42-round-1")
    assert code(e) == ("RequestError", "AWS.MechanicalTurk.HitAlreadyExists")
    assert first["HITId"] in e.value.response["Error"]["Message"]
    hits = [h for h in m.get_paginator("list_hits").paginate().build_full_result()["HITs"] if h["HITTypeId"] == tid]
    assert [h["HITId"] for h in hits] == [first["HITId"]]
    # A different token creates another HIT.
    assert crowd.hit(tid, UniqueRequestToken="node-42-round-2")["HITId"] != first["HITId"]


def test_request_errors_have_turk_error_codes(crowd):
    m = crowd.mturk
    cases = [
        (lambda: m.get_hit(HITId="3NOSUCHHIT000000000000000000000"), "AWS.MechanicalTurk.HITDoesNotExist"),
        (lambda: m.get_assignment(AssignmentId="3NOSUCH0000000000000000000000"), "AWS.MechanicalTurk.AssignmentDoesNotExist"),
        (lambda: m.create_hit_with_hit_type(HITTypeId="3NOSUCHTYPE", LifetimeInSeconds=60,
                                            Question=html_question("<p>x</p>")), "AWS.MechanicalTurk.HITTypeDoesNotExist"),
        (lambda: crowd.hit(Question="<HTMLQuestion><oops"), "AWS.MechanicalTurk.XMLParseError"),
        (lambda: crowd.hit(Question="<Foo/>"), "AWS.MechanicalTurk.XMLParseError"),
        (lambda: crowd.hit(LifetimeInSeconds=5), "AWS.ParameterOutOfRange"),
        (lambda: crowd.hit(MaxAssignments=0), "AWS.ParameterOutOfRange"),
        (lambda: crowd.hit_type(Reward="0.001"), "AWS.MechanicalTurk.InvalidParameterValue"),
        (lambda: crowd.hit_type(AssignmentDurationInSeconds=10), "AWS.ParameterOutOfRange"),
        (lambda: crowd.hit_type(QualificationRequirements=[{"QualificationTypeId": "3NOSUCHQUAL", "Comparator": "Exists"}]),
         "AWS.MechanicalTurk.InvalidParameterValue"),
        (lambda: m.get_qualification_type(QualificationTypeId="3NOSUCHQUAL"), "AWS.MechanicalTurk.QualificationTypeDoesNotExist"),
        (lambda: m.list_hits(NextToken="garbage"), "AWS.MechanicalTurk.InvalidParameterValue"),
    ]
    for call, turk_code in cases:
        with pytest.raises(m.exceptions.RequestError) as e:
            call()
        assert code(e) == ("RequestError", turk_code)
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_full_state_machine_with_approval_and_delete(crowd):
    m = crowd.mturk
    w = crowd.worker()
    tid = crowd.hit_type(Title="state machine", Reward="0.10")
    h = crowd.hit(tid, html_question(classic_form_page(["q1", "q2"])), RequesterAnnotation="sm")
    # Assignable -> (accept) Unassignable
    payload = w.request("POST", f"/groups/{tid}/accept")
    assert payload["hitId"] == h["HITId"]
    g = m.get_hit(HITId=h["HITId"])["HIT"]
    assert (g["HITStatus"], g["NumberOfAssignmentsPending"], g["NumberOfAssignmentsAvailable"]) == ("Unassignable", 1, 0)
    assert m.list_assignments_for_hit(HITId=h["HITId"])["NumResults"] == 0  # in progress is not listed
    with pytest.raises(m.exceptions.RequestError) as e:
        m.delete_hit(HITId=h["HITId"])
    assert code(e)[1] == "AWS.MechanicalTurk.InvalidHITState"
    # submit -> Reviewable
    assert submit(w, payload, q1="yes", q2="no & <maybe> é")["status"] == "Submitted"
    g = m.get_hit(HITId=h["HITId"])["HIT"]
    assert g["HITStatus"] == "Reviewable"
    reviewable = m.get_paginator("list_reviewable_hits").paginate(HITTypeId=tid).build_full_result()["HITs"]
    assert [x["HITId"] for x in reviewable] == [h["HITId"]]
    asg = m.list_assignments_for_hit(HITId=h["HITId"], AssignmentStatuses=["Submitted"])["Assignments"]
    assert len(asg) == 1
    a = asg[0]
    assert a["WorkerId"] == w.worker_id and a["AssignmentStatus"] == "Submitted"
    assert a["Answer"].startswith('<?xml version="1.0" encoding="ASCII"?><QuestionFormAnswers xmlns=')
    assert parse_answers(a["Answer"]) == {"q1": "yes", "q2": "no & <maybe> é"}
    assert a["SubmitTime"] >= a["AcceptTime"]
    assert (a["AutoApprovalTime"] - a["SubmitTime"]).total_seconds() == pytest.approx(86400, abs=1)
    # DeleteHIT refuses while a submitted assignment is neither approved nor rejected
    with pytest.raises(m.exceptions.RequestError) as e:
        m.delete_hit(HITId=h["HITId"])
    assert code(e)[1] == "AWS.MechanicalTurk.InvalidHITState"
    # approve: balance goes down by reward + 20% fee (min $0.01)
    b0 = balance(m)
    m.approve_assignment(AssignmentId=a["AssignmentId"], RequesterFeedback="thanks")
    assert balance(m) == b0 - Decimal("0.12")
    got = m.get_assignment(AssignmentId=a["AssignmentId"])
    assert got["Assignment"]["AssignmentStatus"] == "Approved" and got["HIT"]["HITId"] == h["HITId"]
    assert got["Assignment"]["RequesterFeedback"] == "thanks" and "ApprovalTime" in got["Assignment"]
    assert got["HIT"]["NumberOfAssignmentsCompleted"] == 1
    with pytest.raises(m.exceptions.RequestError) as e:
        m.approve_assignment(AssignmentId=a["AssignmentId"])
    assert code(e)[1] == "AWS.MechanicalTurk.InvalidAssignmentState"
    with pytest.raises(m.exceptions.RequestError) as e:
        m.reject_assignment(AssignmentId=a["AssignmentId"], RequesterFeedback="no")
    assert code(e)[1] == "AWS.MechanicalTurk.InvalidAssignmentState"
    # delete -> Disposed; gone from ListHITs, GetHIT still answers
    m.delete_hit(HITId=h["HITId"])
    assert m.get_hit(HITId=h["HITId"])["HIT"]["HITStatus"] == "Disposed"
    all_hits = m.get_paginator("list_hits").paginate().build_full_result()["HITs"]
    assert h["HITId"] not in {x["HITId"] for x in all_hits}
    with pytest.raises(m.exceptions.RequestError) as e:
        m.delete_hit(HITId=h["HITId"])
    assert code(e)[1] == "AWS.MechanicalTurk.InvalidHITState"
    # the worker sees the approval
    work = w.request("GET", "/work")
    assert [x["status"] for x in work["assignments"]] == ["Approved"] and work["earned"] == "0.10"


def test_reject_then_override(crowd):
    m = crowd.mturk
    w = crowd.worker()
    tid = crowd.hit_type(Title="reject", Reward="0.02")
    h = crowd.hit(tid)
    p = w.request("POST", f"/hits/{h['HITId']}/accept")
    submit(w, p, taskAnswers='[{"q1":"yes"}]')
    b0 = balance(m)
    m.reject_assignment(AssignmentId=p["assignmentId"], RequesterFeedback="failed the gold questions")
    a = m.get_assignment(AssignmentId=p["assignmentId"])["Assignment"]
    assert a["AssignmentStatus"] == "Rejected" and a["RequesterFeedback"] == "failed the gold questions"
    assert balance(m) == b0
    with pytest.raises(m.exceptions.RequestError):
        m.approve_assignment(AssignmentId=p["assignmentId"])
    m.approve_assignment(AssignmentId=p["assignmentId"], OverrideRejection=True)
    assert m.get_assignment(AssignmentId=p["assignmentId"])["Assignment"]["AssignmentStatus"] == "Approved"
    assert balance(m) == b0 - Decimal("0.03")  # 0.02 + minimum fee 0.01
    assert w.request("GET", "/work")["assignments"][0]["feedback"] == "failed the gold questions"


def test_max_assignments_and_one_assignment_per_worker(crowd):
    m = crowd.mturk
    tid = crowd.hit_type(Title="two assignments")
    h = crowd.hit(tid, MaxAssignments=2)
    w1, w2, w3 = crowd.worker(), crowd.worker(), crowd.worker()
    p1 = w1.request("POST", f"/groups/{tid}/accept")
    assert w1.request("POST", f"/hits/{h['HITId']}/accept")["assignmentId"] == p1["assignmentId"]  # same one back
    submit(w1, p1, q1="yes")
    assert w1.request("POST", f"/groups/{tid}/accept")["status"] == 404  # no second go at the same HIT
    p2 = w2.request("POST", f"/groups/{tid}/accept")
    assert m.get_hit(HITId=h["HITId"])["HIT"]["HITStatus"] == "Unassignable"
    assert w3.request("POST", f"/hits/{h['HITId']}/accept")["status"] == 409
    # returning frees the slot
    assert w2.request("POST", f"/assignments/{p2['assignmentId']}/return")["status"] == "Returned"
    assert m.get_hit(HITId=h["HITId"])["HIT"]["HITStatus"] == "Assignable"
    p3 = w3.request("POST", f"/groups/{tid}/accept")
    submit(w3, p3, q1="no")
    g = m.get_hit(HITId=h["HITId"])["HIT"]
    assert g["HITStatus"] == "Reviewable" and g["NumberOfAssignmentsAvailable"] == 0
    assert submit(w2, p2, q1="late")["status"] == 409  # returned work cannot be submitted


def test_paging_hits_and_assignments(crowd):
    m = crowd.mturk
    tid = crowd.hit_type(Title="paging")
    created = [crowd.hit(tid, RequesterAnnotation=f"p{i}")["HITId"] for i in range(23)]
    pages = list(m.get_paginator("list_hits").paginate(PaginationConfig={"PageSize": 10}))
    assert all(p["NumResults"] == len(p["HITs"]) <= 10 for p in pages)
    listed = [h["HITId"] for p in pages for h in p["HITs"]]
    assert len(listed) == len(set(listed))
    assert [x for x in listed if x in set(created)] == created  # creation order, all there
    first = m.list_hits(MaxResults=5)
    assert first["NumResults"] == 5 and "NextToken" in first
    # assignments: 5 workers on one HIT, pages of 2
    h = crowd.hit(tid, MaxAssignments=5)
    workers = [crowd.worker() for _ in range(5)]
    ids = []
    for w in workers:
        p = w.request("POST", f"/hits/{h['HITId']}/accept")
        submit(w, p, q1="yes")
        ids.append(p["assignmentId"])
    seen, token, npages = [], None, 0
    while True:
        kw = {"NextToken": token} if token else {}
        r = m.list_assignments_for_hit(HITId=h["HITId"], MaxResults=2, **kw)
        npages += 1
        assert r["NumResults"] == len(r["Assignments"])
        seen += [a["AssignmentId"] for a in r["Assignments"]]
        token = r.get("NextToken")
        if not token:
            break
    assert seen == ids and npages == 3
    m.approve_assignment(AssignmentId=ids[0])
    m.reject_assignment(AssignmentId=ids[1], RequesterFeedback="x")
    by = lambda *st: [a["AssignmentId"] for a in m.get_paginator("list_assignments_for_hit").paginate(  # noqa: E731
        HITId=h["HITId"], AssignmentStatuses=list(st)).build_full_result()["Assignments"]]
    assert by("Approved") == ids[:1] and by("Rejected") == ids[1:2] and by("Submitted") == ids[2:]
    assert by("Approved", "Rejected") == ids[:2]


def test_update_expiration_and_review_status(crowd):
    m = crowd.mturk
    tid = crowd.hit_type(Title="expiration")
    h = crowd.hit(tid)
    now = dt.datetime.now(dt.timezone.utc)
    with pytest.raises(m.exceptions.RequestError) as e:  # never shortened to a later time
        m.update_expiration_for_hit(HITId=h["HITId"], ExpireAt=now + dt.timedelta(seconds=600))
    assert code(e)[1] == "AWS.MechanicalTurk.InvalidExpirationIncrement"
    m.update_expiration_for_hit(HITId=h["HITId"], ExpireAt=now - dt.timedelta(days=1))  # expire now
    g = m.get_hit(HITId=h["HITId"])["HIT"]
    assert g["HITStatus"] == "Reviewable"
    assert abs((g["Expiration"] - now).total_seconds()) < 5
    w = crowd.worker()
    assert w.request("POST", f"/hits/{h['HITId']}/accept")["status"] == 409
    assert tid not in [x["hit_type_id"] for x in w.request("GET", "/")["groups"]]
    m.update_hit_review_status(HITId=h["HITId"], Revert=False)
    assert m.get_hit(HITId=h["HITId"])["HIT"]["HITStatus"] == "Reviewing"
    rv = m.list_reviewable_hits(HITTypeId=tid, Status="Reviewing")["HITs"]
    assert [x["HITId"] for x in rv] == [h["HITId"]]
    assert m.list_reviewable_hits(HITTypeId=tid)["HITs"] == []
    m.update_hit_review_status(HITId=h["HITId"], Revert=True)
    m.update_expiration_for_hit(HITId=h["HITId"], ExpireAt=now + dt.timedelta(hours=2))  # extend again
    assert m.get_hit(HITId=h["HITId"])["HIT"]["HITStatus"] == "Assignable"
    m.update_expiration_for_hit(HITId=h["HITId"], ExpireAt=now - dt.timedelta(seconds=1))
    m.delete_hit(HITId=h["HITId"])  # the usual cleanup: expire, then delete
    assert m.get_hit(HITId=h["HITId"])["HIT"]["HITStatus"] == "Disposed"


def test_create_additional_assignments(crowd):
    m = crowd.mturk
    h = crowd.hit(MaxAssignments=5)
    m.create_additional_assignments_for_hit(HITId=h["HITId"], NumberOfAdditionalAssignments=4, UniqueRequestToken="ext-1")
    assert m.get_hit(HITId=h["HITId"])["HIT"]["MaxAssignments"] == 9
    with pytest.raises(m.exceptions.RequestError) as e:
        m.create_additional_assignments_for_hit(HITId=h["HITId"], NumberOfAdditionalAssignments=4, UniqueRequestToken="ext-1")
    assert code(e)[1] == "AWS.MechanicalTurk.ExtendHITAlreadyExists"
    with pytest.raises(m.exceptions.RequestError) as e:
        m.create_additional_assignments_for_hit(HITId=h["HITId"], NumberOfAdditionalAssignments=1)
    assert code(e)[1] == "AWS.MechanicalTurk.InvalidMaximumAssignmentsIncrease"
    big = crowd.hit(MaxAssignments=10)
    m.create_additional_assignments_for_hit(HITId=big["HITId"], NumberOfAdditionalAssignments=5)
    assert m.get_hit(HITId=big["HITId"])["HIT"]["MaxAssignments"] == 15


def test_fee_with_ten_or_more_assignments(crowd):
    m = crowd.mturk
    tid = crowd.hit_type(Title="ten", Reward="0.50")
    h = crowd.hit(tid, MaxAssignments=10)
    w = crowd.worker()
    p = w.request("POST", f"/hits/{h['HITId']}/accept")
    submit(w, p, q1="yes")
    b0 = balance(m)
    m.approve_assignment(AssignmentId=p["assignmentId"])
    assert balance(m) == b0 - Decimal("0.70")  # 0.50 + 40%


def test_qualification_types_and_soft_blocks(crowd):
    m = crowd.mturk
    test = question_form([("t1", ["a", "b"]), ("t2", ["a", "b"])])
    qt = m.create_qualification_type(Name="mask-test", Description="Spot good masks", Keywords="masks",
                                      QualificationTypeStatus="Active", Test=test, TestDurationInSeconds=300,
                                      AnswerKey=answer_key({"t1": "a", "t2": "b"}, percentage_of=2),
                                      RetryDelayInSeconds=3600)["QualificationType"]
    got = m.get_qualification_type(QualificationTypeId=qt["QualificationTypeId"])["QualificationType"]
    assert got["Name"] == "mask-test" and got["Test"] == test and got["TestDurationInSeconds"] == 300
    assert got["AutoGranted"] is False and got["RetryDelayInSeconds"] == 3600
    with pytest.raises(m.exceptions.RequestError) as e:
        m.create_qualification_type(Name="mask-test", Description="dup", QualificationTypeStatus="Active")
    assert code(e)[1] == "AWS.MechanicalTurk.QualificationTypeAlreadyExists"
    with pytest.raises(m.exceptions.RequestError):
        m.create_qualification_type(Name="bad", Description="x", QualificationTypeStatus="Active", Test=test,
                                    TestDurationInSeconds=60, AutoGranted=True)
    with pytest.raises(m.exceptions.RequestError):
        m.create_qualification_type(Name="bad2", Description="x", QualificationTypeStatus="Active", Test="<QuestionForm/>",
                                    TestDurationInSeconds=60)
    assert m.get_qualification_type(QualificationTypeId="000000000000000000L0")["QualificationType"]["Name"]

    block = m.create_qualification_type(Name="labelprop-blocked", Description="soft block",
                                        QualificationTypeStatus="Active")["QualificationType"]["QualificationTypeId"]
    tid = crowd.hit_type(Title="guarded", QualificationRequirements=[
        {"QualificationTypeId": block, "Comparator": "DoesNotExist", "ActionsGuarded": "DiscoverPreviewAndAccept"}])
    crowd.hit(tid, MaxAssignments=3)
    good, bad = crowd.worker(), crowd.worker()
    assert tid in [g["hit_type_id"] for g in bad.request("GET", "/")["groups"]]
    m.associate_qualification_with_worker(QualificationTypeId=block, WorkerId=bad.worker_id, IntegerValue=1,
                                          SendNotification=False)
    assert tid not in [g["hit_type_id"] for g in bad.request("GET", "/")["groups"]]
    assert bad.request("POST", f"/groups/{tid}/accept")["status"] in (403, 404)
    assert good.request("POST", f"/groups/{tid}/accept")["assignmentId"]
    with pytest.raises(m.exceptions.RequestError) as e:
        m.associate_qualification_with_worker(QualificationTypeId=block, WorkerId="ANOSUCHWORKER1", IntegerValue=1)
    assert code(e)[1] == "AWS.MechanicalTurk.WorkerDoesNotExist"
    listed = m.list_workers_with_qualification_type(QualificationTypeId=block, Status="Granted")["Qualifications"]
    assert [(q["WorkerId"], q["IntegerValue"], q["Status"]) for q in listed] == [(bad.worker_id, 1, "Granted")]
    m.disassociate_qualification_from_worker(QualificationTypeId=block, WorkerId=bad.worker_id, Reason="second chance")
    assert m.list_workers_with_qualification_type(QualificationTypeId=block, Status="Granted")["Qualifications"] == []
    assert m.list_workers_with_qualification_type(QualificationTypeId=block, Status="Revoked")["NumResults"] == 1
    assert tid in [g["hit_type_id"] for g in bad.request("GET", "/")["groups"]]
    assert any(msg["text"] == "second chance" for msg in bad.request("GET", "/work")["messages"])
    with pytest.raises(m.exceptions.RequestError) as e:
        m.disassociate_qualification_from_worker(QualificationTypeId=block, WorkerId=bad.worker_id, Reason="again")
    assert code(e)[1] == "AWS.MechanicalTurk.QualificationDoesNotExist"

    # EqualTo with the default ActionsGuarded (Accept): visible and previewable, not acceptable.
    level = m.create_qualification_type(Name="level", Description="lvl", QualificationTypeStatus="Active")[
        "QualificationType"]["QualificationTypeId"]
    tid2 = crowd.hit_type(Title="level 3 only", QualificationRequirements=[
        {"QualificationTypeId": level, "Comparator": "EqualTo", "IntegerValues": [3]}])
    h2 = crowd.hit(tid2)
    g = [g for g in good.request("GET", "/")["groups"] if g["hit_type_id"] == tid2][0]
    assert g["can_preview"] and not g["can_accept"]
    assert good.request("GET", f"/hits/{h2['HITId']}")["hitId"] == h2["HITId"]
    assert good.request("POST", f"/hits/{h2['HITId']}/accept")["status"] == 403
    m.associate_qualification_with_worker(QualificationTypeId=level, WorkerId=good.worker_id, IntegerValue=3)
    assert good.request("POST", f"/hits/{h2['HITId']}/accept")["hitId"] == h2["HITId"]

    # paging of ListWorkersWithQualificationType
    many = [crowd.worker() for _ in range(5)]
    for w in many:
        m.associate_qualification_with_worker(QualificationTypeId=level, WorkerId=w.worker_id, IntegerValue=1,
                                              SendNotification=False)
    res = m.get_paginator("list_workers_with_qualification_type").paginate(
        QualificationTypeId=level, PaginationConfig={"PageSize": 2}).build_full_result()["Qualifications"]
    assert sorted(q["WorkerId"] for q in res) == sorted([good.worker_id] + [w.worker_id for w in many])


def test_locale_requirement(crowd):
    tid = crowd.hit_type(Title="german speakers", QualificationRequirements=[
        {"QualificationTypeId": "00000000000000000071", "Comparator": "In",
         "LocaleValues": [{"Country": "DE"}, {"Country": "AT"}]}])
    h = crowd.hit(tid)
    us, de = crowd.worker(locale="US"), crowd.worker(locale="DE")
    assert us.request("POST", f"/hits/{h['HITId']}/accept")["status"] == 403
    assert de.request("POST", f"/hits/{h['HITId']}/accept")["hitId"] == h["HITId"]


def test_notify_workers_and_worker_blocks(crowd):
    m = crowd.mturk
    w = crowd.worker()
    r = m.notify_workers(Subject="New batch", MessageText="500 new masks to check", WorkerIds=[w.worker_id, "ANOBODY00000001"])
    assert r["NotifyWorkersFailureStatuses"] == [{"NotifyWorkersFailureCode": "HardFailure", "WorkerId": "ANOBODY00000001",
                                                  "NotifyWorkersFailureMessage": "Worker ANOBODY00000001 does not exist."}]
    msgs = w.request("GET", "/work")["messages"]
    assert msgs[0]["subject"] == "New batch" and msgs[0]["text"] == "500 new masks to check"
    assert w.request("GET", "/")["messages"][0]["subject"] == "New batch"
    h = crowd.hit()
    p = w.request("POST", f"/hits/{h['HITId']}/accept")
    m.create_worker_block(WorkerId=w.worker_id, Reason="spam")
    assert w.request("GET", "/")["status"] == 403
    assert submit(w, p, q1="yes")["status"] == 403
    assert [b["WorkerId"] for b in m.list_worker_blocks()["WorkerBlocks"]] == [w.worker_id]
    m.delete_worker_block(WorkerId=w.worker_id, Reason="ok")
    assert submit(w, p, q1="yes")["status"] == "Submitted"


def test_question_form_hit(crowd):
    m = crowd.mturk
    h = crowd.hit(Question=question_form([("color", ["red", "green"]), ("size", ["s", "m", "l"])]))
    w = crowd.worker()
    p = w.request("POST", f"/hits/{h['HITId']}/accept")
    assert p["questionKind"] == "QuestionForm"
    assert submit(w, p, color="blue")["status"] == 400  # not a valid selection
    assert submit(w, p, color="green", size="m")["status"] == "Submitted"
    a = m.list_assignments_for_hit(HITId=h["HITId"])["Assignments"][0]
    assert parse_answers(a["Answer"]) == {"color": ["green"], "size": ["m"]}
    assert "<SelectionIdentifier>green</SelectionIdentifier>" in a["Answer"]


def test_unsupported_operation_and_boto3_error_classes(crowd):
    m = crowd.mturk
    from botocore.exceptions import ClientError
    with pytest.raises(ClientError) as e:
        m.list_bonus_payments(HITId="3X")
    assert e.value.response["Error"]["Code"] == "UnknownOperationException"
    assert issubclass(m.exceptions.RequestError, ClientError) and issubclass(m.exceptions.ServiceFault, ClientError)


def test_concurrent_creates_and_accepts_are_safe(crowd):
    from concurrent.futures import ThreadPoolExecutor
    tid = crowd.hit_type(Title="concurrency")
    clients = [crowd.client() for _ in range(6)]

    def make(i):
        c = clients[i % len(clients)]
        out = []
        for j in range(10):
            try:
                out.append(c.create_hit_with_hit_type(HITTypeId=tid, LifetimeInSeconds=3600, MaxAssignments=1,
                                                      UniqueRequestToken=f"conc-{j}",
                                                      Question=html_question(crowd_form_page(["q"])))["HIT"]["HITId"])
            except c.exceptions.RequestError as exc:
                assert exc.response["TurkErrorCode"] == "AWS.MechanicalTurk.HitAlreadyExists"
        return out

    with ThreadPoolExecutor(6) as ex:
        created = [x for r in ex.map(make, range(6)) for x in r]
    assert len(created) == 10 and len(set(created)) == 10  # each token created exactly one HIT
    # 6 workers race for 3 single-assignment HITs' worth of group: nobody gets a HIT twice, none over-assigned
    workers = [crowd.worker() for _ in range(6)]
    with ThreadPoolExecutor(6) as ex:
        got = list(ex.map(lambda w: [w.request("POST", f"/groups/{tid}/accept").get("hitId") for _ in range(3)], workers))
    taken = [h for r in got for h in r if h]
    assert len(taken) == len(set(taken)) == 10
    for hid in set(taken):
        assert crowd.mturk.get_hit(HITId=hid)["HIT"]["NumberOfAssignmentsPending"] == 1
