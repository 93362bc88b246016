"""The Requester API operations (MTurk 2017-01-17), over the SQL store.

``RequesterApi.dispatch(operation, params)`` takes the JSON body botocore sent
and returns the JSON body botocore expects (shapes from the service model),
or raises ``api_errors.RequestError`` / ``ServiceFault``.
"""
from __future__ import annotations

import base64
import json
import time
from typing import Any, Callable

from sqlalchemy import and_
from sqlmodel import Session, select

from . import clock
from . import api_errors as E
from . import ids
from .models import (HIT, Account, Assignment, HITType, Message, Qualification, QualificationType,
                     RequestToken, Worker)
from .qualification_checks import BUILTIN, LOCALE, validate_requirements
from .store import (Store, format_money, hit_available, hit_status, parse_money, reviewable_clause)
from .validation import validate_input
from .xml_formats import parse_answer_key, parse_question, parse_test

TOKEN_WINDOW = 24 * 3600
DEFAULT_PAGE = 10          # MTurk's default page size when MaxResults is not given
MAX_PAGE = 100
OVERRIDE_WINDOW = 30 * 24 * 3600
MIN_DURATION, MAX_DURATION = 30, 31536000
MAX_AUTO_APPROVAL = 2592000
MAX_REWARD_CENTS = 100_000_000  # $1,000,000.00: keeps every sum of money far inside SQLite's 64-bit integers

Op = Callable[["RequesterApi", Session, dict, float], dict]
OPERATIONS: dict[str, tuple[Op, bool]] = {}  # name -> (function, writes)


def operation(name: str, writes: bool = True):
    def deco(fn: Op) -> Op:
        OPERATIONS[name] = (fn, writes)
        return fn
    return deco


# ---------------------------------------------------------------- parameter helpers

def _need(p: dict, name: str) -> Any:
    if p.get(name) is None:
        raise E.RequestError(f"Value null at '{name}' failed to satisfy constraint: Member must not be null",
                             E.MISSING_PARAMETER)
    return p[name]


def _int(p: dict, name: str, default: int | None, lo: int, hi: int) -> int:
    v = p.get(name, default)
    if v is None:
        return _need(p, name)
    if isinstance(v, bool) or not isinstance(v, int):
        raise E.RequestError(f"{name} must be an integer", E.INVALID_PARAMETER)
    if not lo <= v <= hi:
        raise E.RequestError(f"The value {v} for {name} is invalid. It must be between {lo} and {hi}.",
                             E.PARAMETER_OUT_OF_RANGE)
    return v


def _str(p: dict, name: str, default: str | None = None, max_len: int = 65535, required: bool = False) -> str | None:
    v = p.get(name, default)
    if v is None:
        if required:
            _need(p, name)
        return None
    if not isinstance(v, str):
        raise E.RequestError(f"{name} must be a string", E.INVALID_PARAMETER)
    if required and not v.strip():
        raise E.RequestError(f"{name} must not be empty", E.INVALID_PARAMETER)
    if len(v) > max_len:
        raise E.RequestError(f"{name} can be at most {max_len} characters long", E.PARAMETER_OUT_OF_RANGE)
    return v


def _timestamp(p: dict, name: str) -> float:
    v = _need(p, name)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise E.RequestError(f"{name} must be a timestamp in epoch seconds", E.INVALID_PARAMETER)
    return float(v)


def _encode_token(d: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(d, separators=(",", ":")).encode()).decode().rstrip("=")


def _decode_token(p: dict, op: str) -> dict | None:
    tok = p.get("NextToken")
    if tok is None:
        return None
    try:
        d = json.loads(base64.urlsafe_b64decode(tok + "=" * (-len(tok) % 4)))
        if d.get("op") != op:
            raise ValueError
        return d
    except Exception:
        raise E.RequestError("The NextToken you passed is invalid or belongs to another operation",
                             E.INVALID_PARAMETER) from None


def _page_size(p: dict) -> int:
    return _int(p, "MaxResults", DEFAULT_PAGE, 1, MAX_PAGE)


# ---------------------------------------------------------------- shapes

def hit_dict(h: HIT, ht: HITType, now: float) -> dict:
    d = {
        "HITId": h.hit_id,
        "HITTypeId": h.hit_type_id,
        "HITGroupId": h.hit_type_id,
        "CreationTime": h.created,
        "Title": ht.title,
        "Description": ht.description,
        "Question": h.question,
        "Keywords": ht.keywords,
        "HITStatus": hit_status(h, now),
        "MaxAssignments": h.max_assignments,
        "Reward": format_money(ht.reward_cents),
        "AutoApprovalDelayInSeconds": ht.auto_approval_delay,
        "Expiration": h.expiration,
        "AssignmentDurationInSeconds": ht.assignment_duration,
        "QualificationRequirements": json.loads(ht.qualification_requirements),
        "HITReviewStatus": h.review_status,
        "NumberOfAssignmentsPending": h.n_pending,
        "NumberOfAssignmentsAvailable": max(0, hit_available(h)),
        "NumberOfAssignmentsCompleted": h.n_done,
    }
    if h.requester_annotation is not None:
        d["RequesterAnnotation"] = h.requester_annotation
    return d


def assignment_dict(a: Assignment) -> dict:
    d = {
        "AssignmentId": a.assignment_id,
        "WorkerId": a.worker_id,
        "HITId": a.hit_id,
        "AssignmentStatus": a.status,
        "AutoApprovalTime": a.auto_approval_time,
        "AcceptTime": a.accept_time,
        "SubmitTime": a.submit_time,
        "Deadline": a.deadline,
        "Answer": a.answer or "",
    }
    if a.approval_time is not None:
        d["ApprovalTime"] = a.approval_time
    if a.rejection_time is not None:
        d["RejectionTime"] = a.rejection_time
    if a.requester_feedback is not None:
        d["RequesterFeedback"] = a.requester_feedback
    return d


def qualification_type_dict(q: QualificationType) -> dict:
    d: dict[str, Any] = {
        "QualificationTypeId": q.qualification_type_id,
        "CreationTime": q.created,
        "Name": q.name,
        "Description": q.description,
        "Keywords": q.keywords,
        "QualificationTypeStatus": q.status,
        "IsRequestable": True,
        "AutoGranted": q.auto_granted,
    }
    if q.test is not None:
        d["Test"] = q.test
        d["TestDurationInSeconds"] = q.test_duration
    if q.answer_key is not None:
        d["AnswerKey"] = q.answer_key
    if q.retry_delay is not None:
        d["RetryDelayInSeconds"] = q.retry_delay
    if q.auto_granted:
        d["AutoGrantedValue"] = q.auto_granted_value if q.auto_granted_value is not None else 1
    return d


BUILTIN_NAMES = {
    "000000000000000000L0": ("Worker_PercentAssignmentsApproved", "Percentage of your assignments that were approved"),
    "00000000000000000040": ("Worker_NumberHITsApproved", "Number of your HITs that were approved"),
    LOCALE: ("Worker_Locale", "The country (and subdivision) you work from"),
    "00000000000000000060": ("Worker_Adult", "You are 18 or older"),
    "2F1QJWKUDD8XADTFD2Q0G6UTO95ALH": ("Masters", "Masters (not granted on this server)"),
    "2ARFPLSP75KLA8M8DH1HTEQVJT3SY6": ("Masters", "Masters (sandbox id; not granted on this server)"),
}


# ---------------------------------------------------------------- lookups

def _hit(s: Session, hit_id: str) -> HIT:
    h = s.exec(select(HIT).where(HIT.hit_id == hit_id)).first()
    if h is None:
        raise E.RequestError(f"Hit {hit_id} does not exist.", E.HIT_DOES_NOT_EXIST)
    return h


def _assignment(s: Session, assignment_id: str) -> Assignment:
    a = s.exec(select(Assignment).where(Assignment.assignment_id == assignment_id)).first()
    if a is None or a.status not in ("Submitted", "Approved", "Rejected"):
        raise E.RequestError(f"Assignment {assignment_id} does not exist.", E.ASSIGNMENT_DOES_NOT_EXIST)
    return a


def _qual_type(s: Session, tid: str) -> QualificationType:
    q = s.get(QualificationType, tid)
    if q is None:
        raise E.RequestError(f"QualificationType {tid} does not exist.", E.QUAL_TYPE_DOES_NOT_EXIST)
    return q


def _worker(s: Session, wid: str) -> Worker:
    w = s.get(Worker, wid)
    if w is None:
        raise E.RequestError(f"Worker {wid} does not exist.", E.WORKER_DOES_NOT_EXIST)
    return w


class _TypeCache:
    def __init__(self, s: Session):
        self.s, self.cache = s, {}

    def __call__(self, tid: str) -> HITType:
        if tid not in self.cache:
            self.cache[tid] = self.s.get(HITType, tid)
        return self.cache[tid]


# ---------------------------------------------------------------- HIT types and HITs

def _hit_type_from_params(s: Session, p: dict, now: float) -> HITType:
    try:
        reward = parse_money(_need(p, "Reward"))
    except ValueError as exc:
        raise E.RequestError(f"Reward: {exc}", E.INVALID_PARAMETER) from None
    if reward > MAX_REWARD_CENTS:
        raise E.RequestError(f"The value {p['Reward']} for Reward is invalid. It must be at most "
                             f"{format_money(MAX_REWARD_CENTS)}.", E.PARAMETER_OUT_OF_RANGE)
    title = _str(p, "Title", max_len=128, required=True)
    description = _str(p, "Description", max_len=2000, required=True)
    keywords = _str(p, "Keywords", "", max_len=1000) or ""
    duration = _int(p, "AssignmentDurationInSeconds", None, MIN_DURATION, MAX_DURATION)
    auto = _int(p, "AutoApprovalDelayInSeconds", MAX_AUTO_APPROVAL, 0, MAX_AUTO_APPROVAL)
    reqs = p.get("QualificationRequirements") or []
    if not isinstance(reqs, list):
        raise E.RequestError("QualificationRequirements must be a list", E.INVALID_PARAMETER)
    try:
        validate_requirements(reqs, lambda tid: s.get(QualificationType, tid) is not None)
    except ValueError as exc:
        raise E.RequestError(str(exc), E.INVALID_PARAMETER) from None
    canon_reqs = [{k: r[k] for k in sorted(r)} for r in reqs]
    canonical = json.dumps({"reward": reward, "title": title, "description": description, "keywords": keywords,
                            "duration": duration, "auto": auto, "reqs": canon_reqs}, sort_keys=True)
    tid = ids.hit_type_id_for(canonical)
    ht = s.get(HITType, tid)
    if ht is None:
        ht = HITType(hit_type_id=tid, title=title, description=description, keywords=keywords,
                     reward_cents=reward, assignment_duration=duration, auto_approval_delay=auto,
                     qualification_requirements=json.dumps(canon_reqs), created=now)
        s.add(ht)
        s.flush()
    return ht


def _create_hit(s: Session, ht: HITType, p: dict, now: float) -> dict:
    for unsupported in ("HITLayoutId", "HITLayoutParameters", "AssignmentReviewPolicy", "HITReviewPolicy"):
        if p.get(unsupported):
            raise E.RequestError(f"{unsupported} is not supported by the labelprop crowd server", E.UNSUPPORTED)
    lifetime = _int(p, "LifetimeInSeconds", None, MIN_DURATION, MAX_DURATION)
    max_asg = _int(p, "MaxAssignments", 1, 1, 1000000)
    question = _str(p, "Question", required=True, max_len=10**7)
    try:
        parse_question(question)
    except ValueError as exc:
        raise E.RequestError(str(exc), E.XML_PARSE_ERROR) from None
    annotation = _str(p, "RequesterAnnotation", max_len=255)
    token = _str(p, "UniqueRequestToken", max_len=64)
    prev = None
    if token is not None:
        if not token:
            raise E.RequestError("UniqueRequestToken must not be empty", E.INVALID_PARAMETER)
        prev = s.get(RequestToken, (token, "CreateHIT"))
        if prev is not None and prev.created > now - TOKEN_WINDOW:
            raise E.RequestError(f'The HIT with ID "{prev.ref_id}" already exists.', E.HIT_ALREADY_EXISTS)
    h = HIT(hit_id=ids.hit_id(), hit_type_id=ht.hit_type_id, created=now, expiration=now + lifetime,
            max_assignments=max_asg, question=question, requester_annotation=annotation,
            unique_request_token=token)
    s.add(h)
    if token is not None:
        if prev is not None:  # an expired (older than 24 h) token is reused
            prev.ref_id, prev.created = h.hit_id, now
            s.add(prev)
        else:
            s.add(RequestToken(token=token, operation="CreateHIT", ref_id=h.hit_id, created=now))
    s.flush()
    return {"HIT": hit_dict(h, ht, now)}


@operation("CreateHITType")
def create_hit_type(api, s, p, now):
    return {"HITTypeId": _hit_type_from_params(s, p, now).hit_type_id}


@operation("CreateHITWithHITType")
def create_hit_with_hit_type(api, s, p, now):
    tid = _str(p, "HITTypeId", required=True)
    ht = s.get(HITType, tid)
    if ht is None:
        raise E.RequestError(f"HITType {tid} does not exist.", E.HIT_TYPE_DOES_NOT_EXIST)
    return _create_hit(s, ht, p, now)


@operation("CreateHIT")
def create_hit(api, s, p, now):
    ht = _hit_type_from_params(s, p, now)
    return _create_hit(s, ht, p, now)


@operation("GetHIT", writes=False)
def get_hit(api, s, p, now):
    h = _hit(s, _str(p, "HITId", required=True))
    return {"HIT": hit_dict(h, s.get(HITType, h.hit_type_id), now)}


def _list_hits(s: Session, p: dict, now: float, op: str, where) -> dict:
    tok = _decode_token(p, op)
    size = _page_size(p)
    q = select(HIT).where(where)
    if tok:
        q = q.where(HIT.seq > tok["s"])
    rows = s.exec(q.order_by(HIT.seq).limit(size + 1)).all()
    more, rows = len(rows) > size, rows[:size]
    types = _TypeCache(s)
    out: dict[str, Any] = {"NumResults": len(rows), "HITs": [hit_dict(h, types(h.hit_type_id), now) for h in rows]}
    if more:
        out["NextToken"] = _encode_token({"op": op, "s": rows[-1].seq})
    return out


@operation("ListHITs", writes=False)
def list_hits(api, s, p, now):
    return _list_hits(s, p, now, "ListHITs", HIT.disposed == False)  # noqa: E712


@operation("ListReviewableHITs", writes=False)
def list_reviewable_hits(api, s, p, now):
    status = p.get("Status") or "Reviewable"
    if status not in ("Reviewable", "Reviewing"):
        raise E.RequestError("Status must be Reviewable or Reviewing", E.INVALID_PARAMETER)
    where = reviewable_clause(now) if status == "Reviewable" else and_(HIT.disposed == False, HIT.reviewing == True)  # noqa: E712
    if p.get("HITTypeId"):
        where = and_(where, HIT.hit_type_id == p["HITTypeId"])
    return _list_hits(s, p, now, "ListReviewableHITs", where)


@operation("ListAssignmentsForHIT", writes=False)
def list_assignments_for_hit(api, s, p, now):
    h = _hit(s, _str(p, "HITId", required=True))
    statuses = p.get("AssignmentStatuses") or ["Submitted", "Approved", "Rejected"]
    if not isinstance(statuses, list) or any(x not in ("Submitted", "Approved", "Rejected") for x in statuses):
        raise E.RequestError("AssignmentStatuses must be a list of Submitted | Approved | Rejected", E.INVALID_PARAMETER)
    tok = _decode_token(p, "ListAssignmentsForHIT")
    size = _page_size(p)
    q = select(Assignment).where(Assignment.hit_id == h.hit_id, Assignment.status.in_(statuses))
    if tok:
        q = q.where(Assignment.seq > tok["s"])
    rows = s.exec(q.order_by(Assignment.seq).limit(size + 1)).all()
    more, rows = len(rows) > size, rows[:size]
    out: dict[str, Any] = {"NumResults": len(rows), "Assignments": [assignment_dict(a) for a in rows]}
    if more:
        out["NextToken"] = _encode_token({"op": "ListAssignmentsForHIT", "s": rows[-1].seq})
    return out


@operation("GetAssignment", writes=False)
def get_assignment(api, s, p, now):
    a = _assignment(s, _str(p, "AssignmentId", required=True))
    h = _hit(s, a.hit_id)
    return {"Assignment": assignment_dict(a), "HIT": hit_dict(h, s.get(HITType, h.hit_type_id), now)}


@operation("ApproveAssignment")
def approve_assignment(api, s, p, now):
    a = _assignment(s, _str(p, "AssignmentId", required=True))
    feedback = _str(p, "RequesterFeedback", max_len=1024)
    override = bool(p.get("OverrideRejection", False))
    h = _hit(s, a.hit_id)
    if a.status == "Rejected" and override:
        if h.disposed:
            raise E.RequestError("You cannot approve a rejected assignment of a deleted HIT.", E.INVALID_ASSIGNMENT_STATE)
        if (a.submit_time or 0) < now - OVERRIDE_WINDOW:
            raise E.RequestError("Rejections can only be overridden within 30 days of submission.",
                                 E.INVALID_ASSIGNMENT_STATE)
    elif a.status != "Submitted":
        raise E.RequestError(f"This operation can be called with a status of: Submitted "
                             f"(assignment {a.assignment_id} is {a.status}).", E.INVALID_ASSIGNMENT_STATE)
    if not api.store.approve_in(s, a, h, when=now, feedback=feedback):
        raise E.RequestError("You do not have enough funds to approve this assignment (reward plus fee).",
                             E.INSUFFICIENT_FUNDS)
    return {}


@operation("RejectAssignment")
def reject_assignment(api, s, p, now):
    a = _assignment(s, _str(p, "AssignmentId", required=True))
    feedback = _str(p, "RequesterFeedback", max_len=1024, required=True)
    if a.status != "Submitted":
        raise E.RequestError(f"This operation can be called with a status of: Submitted "
                             f"(assignment {a.assignment_id} is {a.status}).", E.INVALID_ASSIGNMENT_STATE)
    h = _hit(s, a.hit_id)
    a.status, a.rejection_time, a.requester_feedback = "Rejected", now, feedback
    h.n_submitted -= 1
    h.n_done += 1
    s.add(a)
    s.add(h)
    return {}


@operation("UpdateExpirationForHIT")
def update_expiration_for_hit(api, s, p, now):
    h = _hit(s, _str(p, "HITId", required=True))
    at = _timestamp(p, "ExpireAt")
    if h.disposed:
        raise E.RequestError(f"This HIT is currently in the state 'Disposed'. This operation can be called "
                             f"with a status of: Assignable, Unassignable, Reviewable, Reviewing", E.INVALID_HIT_STATE)
    if at <= now:
        h.expiration = min(h.expiration, now)
    elif at >= h.expiration or h.expiration <= now:
        h.expiration = at
    else:
        raise E.RequestError("The expiration of a HIT can be extended or set to a past time (expire now), "
                             "not shortened to a later time.", E.INVALID_EXPIRATION)
    s.add(h)
    return {}


@operation("UpdateHITReviewStatus")
def update_hit_review_status(api, s, p, now):
    h = _hit(s, _str(p, "HITId", required=True))
    revert = bool(p.get("Revert", False))
    status = hit_status(h, now)
    if not revert and status == "Reviewable":
        h.reviewing = True
    elif revert and status == "Reviewing":
        h.reviewing = False
    else:
        want = "Reviewing" if revert else "Reviewable"
        raise E.RequestError(f"This HIT is currently in the state '{status}'. This operation can be called "
                             f"with a status of: {want}", E.INVALID_HIT_STATE)
    s.add(h)
    return {}


@operation("DeleteHIT")
def delete_hit(api, s, p, now):
    h = _hit(s, _str(p, "HITId", required=True))
    status = hit_status(h, now)
    if status != "Reviewable":
        raise E.RequestError(f"This HIT is currently in the state '{status}'. This operation can be called "
                             f"with a status of: Reviewable", E.INVALID_HIT_STATE)
    if h.n_submitted > 0:
        raise E.RequestError(f"This HIT has {h.n_submitted} submitted assignment(s) that are neither approved "
                             f"nor rejected; approve or reject them first.", E.INVALID_HIT_STATE)
    h.disposed = True
    s.add(h)
    return {}


@operation("CreateAdditionalAssignmentsForHIT")
def create_additional_assignments(api, s, p, now):
    h = _hit(s, _str(p, "HITId", required=True))
    n = _int(p, "NumberOfAdditionalAssignments", None, 1, 1000000)
    token = _str(p, "UniqueRequestToken", max_len=64)
    if h.disposed:
        raise E.RequestError("This HIT is currently in the state 'Disposed'.", E.INVALID_HIT_STATE)
    prev = None
    if token:
        prev = s.get(RequestToken, (token, "CreateAdditionalAssignmentsForHIT"))
        if prev is not None and prev.created > now - TOKEN_WINDOW:
            raise E.RequestError(f'The extension of HIT "{prev.ref_id}" with this UniqueRequestToken already exists.',
                                 E.EXTEND_ALREADY_DONE)
    if h.max_assignments < 10 <= h.max_assignments + n:
        raise E.RequestError(f"HITs created with fewer than 10 assignments cannot be extended to have 10 or more "
                             f"assignments ({h.max_assignments} + {n}).", E.INVALID_MAX_ASSIGNMENTS_INCREASE)
    h.max_assignments += n
    h.reviewing = False
    s.add(h)
    if token:
        if prev is not None:
            prev.ref_id, prev.created = h.hit_id, now
            s.add(prev)
        else:
            s.add(RequestToken(token=token, operation="CreateAdditionalAssignmentsForHIT", ref_id=h.hit_id, created=now))
    return {}


# ---------------------------------------------------------------- qualifications

@operation("CreateQualificationType")
def create_qualification_type(api, s, p, now):
    name = _str(p, "Name", required=True, max_len=256)
    description = _str(p, "Description", required=True, max_len=2000)
    status = _need(p, "QualificationTypeStatus")
    if status not in ("Active", "Inactive"):
        raise E.RequestError("QualificationTypeStatus must be Active or Inactive", E.INVALID_PARAMETER)
    test, key = _str(p, "Test", max_len=10**6), _str(p, "AnswerKey", max_len=10**6)
    auto = bool(p.get("AutoGranted", False))
    duration = p.get("TestDurationInSeconds")
    if test is not None:
        if auto:
            raise E.RequestError("AutoGranted cannot be true when a Test is given", E.INVALID_PARAMETER)
        if duration is None:
            raise E.RequestError("TestDurationInSeconds is required with a Test", E.MISSING_PARAMETER)
        _int(p, "TestDurationInSeconds", None, 1, MAX_DURATION)
        try:
            form = parse_test(test)
        except ValueError as exc:
            raise E.RequestError(str(exc), E.XML_PARSE_ERROR) from None
        if key is not None:
            try:
                ak = parse_answer_key(key)
            except ValueError as exc:
                raise E.RequestError(str(exc), E.XML_PARSE_ERROR) from None
            unknown = set(ak.scores) - {q.identifier for q in form.questions}
            if unknown:
                raise E.RequestError(f"AnswerKey names questions that are not in the Test: {sorted(unknown)}",
                                     E.INVALID_PARAMETER)
    elif key is not None:
        raise E.RequestError("An AnswerKey needs a Test", E.INVALID_PARAMETER)
    retry = p.get("RetryDelayInSeconds")
    if retry is not None:
        _int(p, "RetryDelayInSeconds", None, 0, MAX_DURATION)
    if s.exec(select(QualificationType).where(QualificationType.name == name)).first() is not None:
        raise E.RequestError("You have already created a QualificationType with this name. A QualificationType's "
                             "name must be unique among all of the QualificationTypes created by the same user.",
                             E.QUAL_TYPE_ALREADY_EXISTS)
    q = QualificationType(qualification_type_id=ids.qualification_type_id(), name=name, description=description,
                          keywords=_str(p, "Keywords", "", max_len=1000) or "", status=status, test=test,
                          answer_key=key, test_duration=duration if test is not None else None, retry_delay=retry,
                          auto_granted=auto, auto_granted_value=p.get("AutoGrantedValue") if auto else None,
                          created=now)
    s.add(q)
    return {"QualificationType": qualification_type_dict(q)}


@operation("GetQualificationType", writes=False)
def get_qualification_type(api, s, p, now):
    tid = _str(p, "QualificationTypeId", required=True)
    if tid in BUILTIN_NAMES:
        name, desc = BUILTIN_NAMES[tid]
        return {"QualificationType": {"QualificationTypeId": tid, "CreationTime": 0.0, "Name": name,
                                      "Description": desc, "Keywords": "", "QualificationTypeStatus": "Active",
                                      "IsRequestable": False, "AutoGranted": False}}
    return {"QualificationType": qualification_type_dict(_qual_type(s, tid))}


@operation("AssociateQualificationWithWorker")
def associate_qualification(api, s, p, now):
    qt = _qual_type(s, _str(p, "QualificationTypeId", required=True))
    w = _worker(s, _str(p, "WorkerId", required=True))
    value = _int(p, "IntegerValue", 1, -2**31, 2**31 - 1)
    q = s.get(Qualification, (qt.qualification_type_id, w.worker_id))
    if q is None:
        q = Qualification(qualification_type_id=qt.qualification_type_id, worker_id=w.worker_id,
                          integer_value=value, status="Granted", grant_time=now)
    else:
        q.integer_value, q.status, q.grant_time = value, "Granted", now
    s.add(q)
    if p.get("SendNotification", True):
        s.add(Message(worker_id=w.worker_id, subject=f"Qualification granted: {qt.name}",
                      text=f"You have been granted the qualification '{qt.name}' with value {value}.", created=now))
    return {}


@operation("DisassociateQualificationFromWorker")
def disassociate_qualification(api, s, p, now):
    qt = _qual_type(s, _str(p, "QualificationTypeId", required=True))
    wid = _str(p, "WorkerId", required=True)
    reason = _str(p, "Reason", max_len=4096)
    q = s.get(Qualification, (qt.qualification_type_id, wid))
    if q is None or q.status != "Granted":
        raise E.RequestError(f"You requested a Qualification that does not exist "
                             f"(worker {wid}, type {qt.qualification_type_id}).", E.QUAL_DOES_NOT_EXIST)
    q.status = "Revoked"
    s.add(q)
    s.add(Message(worker_id=wid, subject=f"Qualification revoked: {qt.name}",
                  text=reason or f"Your qualification '{qt.name}' has been revoked.", created=now))
    return {}


def _list_system_values(s: Session, tid: str, p: dict) -> dict:
    """ListWorkersWithQualificationType on a built-in (system) type: every worker of this server with
    the value the system computes (labelprop uses it to tell a requester, before posting, whether
    any worker can meet a HIT type's requirements)."""
    from .qualification_checks import worker_values

    tok = _decode_token(p, "ListWorkersWithQualificationType")
    size = _page_size(p)
    if p.get("Status") not in (None, "Granted"):
        return {"NumResults": 0, "Qualifications": []}
    q = select(Worker)
    if tok:
        q = q.where(Worker.worker_id > tok["w"])
    rows = s.exec(q.order_by(Worker.worker_id).limit(size + 1)).all()
    more, rows = len(rows) > size, rows[:size]
    quals = []
    for w in rows:
        if tid in BUILTIN_NAMES and BUILTIN_NAMES[tid][0] == "Masters":
            continue
        v = worker_values(s, w).get(tid)
        item: dict[str, Any] = {"QualificationTypeId": tid, "WorkerId": w.worker_id, "GrantTime": w.created,
                                "Status": "Granted"}
        if tid == LOCALE:
            item["LocaleValue"] = {"Country": v[0], **({"Subdivision": v[1]} if v[1] else {})}
        else:
            item["IntegerValue"] = int(v)
        quals.append(item)
    out: dict[str, Any] = {"NumResults": len(quals), "Qualifications": quals}
    if more:
        out["NextToken"] = _encode_token({"op": "ListWorkersWithQualificationType", "w": rows[-1].worker_id})
    return out


@operation("ListWorkersWithQualificationType", writes=False)
def list_workers_with_qualification_type(api, s, p, now):
    tid = _str(p, "QualificationTypeId", required=True)
    if tid in BUILTIN_NAMES:
        return _list_system_values(s, tid, p)
    qt = _qual_type(s, tid)
    status = p.get("Status")
    if status is not None and status not in ("Granted", "Revoked"):
        raise E.RequestError("Status must be Granted or Revoked", E.INVALID_PARAMETER)
    tok = _decode_token(p, "ListWorkersWithQualificationType")
    size = _page_size(p)
    q = select(Qualification).where(Qualification.qualification_type_id == qt.qualification_type_id)
    if status:
        q = q.where(Qualification.status == status)
    if tok:
        q = q.where(Qualification.worker_id > tok["w"])
    rows = s.exec(q.order_by(Qualification.worker_id).limit(size + 1)).all()
    more, rows = len(rows) > size, rows[:size]
    out: dict[str, Any] = {"NumResults": len(rows), "Qualifications": [
        {"QualificationTypeId": r.qualification_type_id, "WorkerId": r.worker_id, "GrantTime": r.grant_time,
         "IntegerValue": r.integer_value, "Status": r.status} for r in rows]}
    if more:
        out["NextToken"] = _encode_token({"op": "ListWorkersWithQualificationType", "w": rows[-1].worker_id})
    return out


# ---------------------------------------------------------------- account, workers

@operation("GetAccountBalance", writes=False)
def get_account_balance(api, s, p, now):
    acct = s.get(Account, 1)
    return {"AvailableBalance": format_money(acct.balance_cents), "OnHoldBalance": "0.00"}


@operation("NotifyWorkers")
def notify_workers(api, s, p, now):
    subject = _str(p, "Subject", required=True, max_len=200)
    text = _str(p, "MessageText", required=True, max_len=4096)
    wids = _need(p, "WorkerIds")
    if not isinstance(wids, list) or not 1 <= len(wids) <= 100:
        raise E.RequestError("WorkerIds must list between 1 and 100 worker ids", E.PARAMETER_OUT_OF_RANGE)
    failures = []
    for wid in wids:
        if s.get(Worker, wid) is None:
            failures.append({"NotifyWorkersFailureCode": "HardFailure", "WorkerId": wid,
                             "NotifyWorkersFailureMessage": f"Worker {wid} does not exist."})
            continue
        s.add(Message(worker_id=wid, subject=subject, text=text, created=now))
    return {"NotifyWorkersFailureStatuses": failures}


@operation("CreateWorkerBlock")
def create_worker_block(api, s, p, now):
    w = _worker(s, _str(p, "WorkerId", required=True))
    w.blocked_reason = _str(p, "Reason", required=True, max_len=4096)
    s.add(w)
    return {}


@operation("DeleteWorkerBlock")
def delete_worker_block(api, s, p, now):
    w = _worker(s, _str(p, "WorkerId", required=True))
    w.blocked_reason = None
    s.add(w)
    return {}


@operation("ListWorkerBlocks", writes=False)
def list_worker_blocks(api, s, p, now):
    tok = _decode_token(p, "ListWorkerBlocks")
    size = _page_size(p)
    q = select(Worker).where(Worker.blocked_reason != None)  # noqa: E711
    if tok:
        q = q.where(Worker.worker_id > tok["w"])
    rows = s.exec(q.order_by(Worker.worker_id).limit(size + 1)).all()
    more, rows = len(rows) > size, rows[:size]
    out: dict[str, Any] = {"NumResults": len(rows),
                           "WorkerBlocks": [{"WorkerId": w.worker_id, "Reason": w.blocked_reason} for w in rows]}
    if more:
        out["NextToken"] = _encode_token({"op": "ListWorkerBlocks", "w": rows[-1].worker_id})
    return out


# ---------------------------------------------------------------- dispatcher

class RequesterApi:
    def __init__(self, store: Store):
        self.store = store

    def dispatch(self, op: str, params: dict) -> dict:
        entry = OPERATIONS.get(op)
        if entry is None:
            raise E.UnknownOperation(op)
        validate_input(op, params)  # types, required members, enums, lengths, patterns: the service model
        fn, writes = entry
        self.store.tick()
        now = clock.now()
        if writes:
            with self.store.write() as s:
                return fn(self, s, params, now)
        with self.store.read() as s:
            return fn(self, s, params, now)
