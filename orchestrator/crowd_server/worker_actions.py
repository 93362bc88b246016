"""What a worker can do (no HTML here): find HIT groups, preview, accept, return, submit,
see their work and messages, take qualification tests.  Used by ``worker_web``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import func
from sqlmodel import Session, select

from . import clock
from . import ids
from .models import HIT, Assignment, HITType, Message, Qualification, QualificationType, TestAttempt, Worker
from .qualification_checks import access_for, describe_unmet, pass_mark, worker_values
from .store import Store, format_money, hit_available, open_clause
from .xml_formats import (answers_xml, form_fields_to_answers, parse_answer_key, parse_question,
                          parse_test, question_form_answers, score_test)

ACTIVE = ("Accepted", "Submitted", "Approved", "Rejected")


class WorkerError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Group:
    hit_type_id: str
    title: str
    description: str
    keywords: str
    reward: str
    assignment_duration: int
    hits_available: int
    can_preview: bool
    can_accept: bool
    unmet: list
    needs: list = None           # the unmet requirements in a worker's words (describe_unmet)

    def as_json(self) -> dict:
        return dict(self.__dict__)


SESSION_SECONDS = 14 * 24 * 3600  # a sign-in lasts two weeks; then the worker opens their link again


class WorkerActions:
    def __init__(self, store: Store, session_seconds: float = SESSION_SECONDS):
        self.store = store
        self.session_seconds = session_seconds

    # ------------------------------------------------------------ identity

    def authenticate(self, credential: str | None, *, bearer: bool = False) -> Worker:
        """The worker behind a session id (the cookie); with ``bearer`` (an ``Authorization: Bearer`` header
        from a programmatic client) also a sign-in token whose link is still valid."""
        if not credential:
            raise WorkerError(401, "Sign in with the personal link your requester gave you.")
        w = self.store.worker_by_session(credential) or (self.store.worker_by_token(credential) if bearer else None)
        if w is None:
            raise WorkerError(401, "You are not signed in, or your sign-in has expired or was revoked. "
                                   "Open your personal sign-in link again (ask your requester for a new one).")
        if w.blocked_reason is not None:
            raise WorkerError(403, "Your account has been blocked by the requester.")
        return w

    def sign_in(self, token: str) -> tuple[Worker, str, float]:
        """Open a session with a sign-in link's token; returns (worker, session id, seconds it lasts)."""
        w = self.store.worker_by_token(token) if token else None
        if w is None:
            state = self.store.link_state(token) if token else "unknown"
            if state == "expired":
                raise WorkerError(401, "This sign-in link has expired. Ask your requester for a new one.")
            raise WorkerError(401, "This sign-in link is not valid (it may have been replaced by a newer one, "
                                   "or revoked). Ask your requester for a new one.")
        if w.blocked_reason is not None:
            raise WorkerError(403, "Your account has been blocked by the requester.")
        sid, _expires = self.store.start_session(w, self.session_seconds)
        return w, sid, self.session_seconds

    def sign_out(self, session_id: str | None) -> None:
        if session_id:
            self.store.end_session(session_id)

    # ------------------------------------------------------------ discovery

    def groups(self, w: Worker) -> list[Group]:
        self.store.tick()
        now = clock.now()
        with self.store.read() as s:
            done = select(Assignment.hit_id).where(Assignment.worker_id == w.worker_id,
                                                   Assignment.status.in_(ACTIVE))
            rows = s.exec(select(HIT.hit_type_id, func.count()).where(open_clause(now), HIT.hit_id.not_in(done))
                          .group_by(HIT.hit_type_id)).all()
            values = worker_values(s, w)
            out = []
            for tid, n in rows:
                ht = s.get(HITType, tid)
                acc = access_for(s, w, ht.qualification_requirements, values)
                if not acc.discover:
                    continue
                out.append(Group(tid, ht.title, ht.description, ht.keywords, format_money(ht.reward_cents),
                                 ht.assignment_duration, n, acc.preview, acc.accept, acc.unmet,
                                 [describe_unmet(s, w, r, values) for r in acc.unmet]))
            out.sort(key=lambda g: (not g.can_accept, g.title))
            return out

    def next_hit(self, s: Session, w: Worker, hit_type_id: str, now: float) -> HIT | None:
        done = select(Assignment.hit_id).where(Assignment.worker_id == w.worker_id, Assignment.status.in_(ACTIVE))
        return s.exec(select(HIT).where(open_clause(now), HIT.hit_type_id == hit_type_id, HIT.hit_id.not_in(done))
                      .order_by(HIT.seq).limit(1)).first()

    def preview(self, w: Worker, hit_type_id: str | None = None, hit_id: str | None = None) -> tuple[HIT, HITType]:
        self.store.tick()
        now = clock.now()
        with self.store.read() as s:
            h = self._find(s, w, hit_type_id, hit_id, now)
            ht = s.get(HITType, h.hit_type_id)
            acc = access_for(s, w, ht.qualification_requirements)
            if not acc.preview:
                needs = "; ".join(d["text"] for d in (describe_unmet(s, w, r) for r in acc.unmet))
                raise WorkerError(403, f"You cannot preview this HIT yet. It needs {needs}.")
            return h, ht

    def _find(self, s: Session, w: Worker, hit_type_id: str | None, hit_id: str | None, now: float) -> HIT:
        if hit_id:
            h = s.exec(select(HIT).where(HIT.hit_id == hit_id)).first()
            if h is None or h.disposed:
                raise WorkerError(404, "This HIT does not exist.")
            return h
        h = self.next_hit(s, w, hit_type_id or "", now)
        if h is None:
            raise WorkerError(404, "There are no more HITs in this group for you.")
        return h

    # ------------------------------------------------------------ assignments

    def accept(self, w: Worker, hit_type_id: str | None = None, hit_id: str | None = None) -> Assignment:
        self.store.tick()
        now = clock.now()
        with self.store.write() as s:
            h = self._find(s, w, hit_type_id, hit_id, now)
            ht = s.get(HITType, h.hit_type_id)
            acc = access_for(s, w, ht.qualification_requirements)
            if not acc.accept:
                needs = "; ".join(d["text"] for d in (describe_unmet(s, w, r) for r in acc.unmet))
                raise WorkerError(403, f"You cannot accept this HIT yet. It needs {needs}.")
            if h.reviewing or h.expiration <= now or hit_available(h) <= 0:
                raise WorkerError(409, "This HIT is no longer available.")
            mine = s.exec(select(Assignment).where(Assignment.hit_id == h.hit_id, Assignment.worker_id == w.worker_id,
                                                   Assignment.status.in_(ACTIVE))).first()
            if mine is not None:
                if mine.status == "Accepted":
                    return mine
                raise WorkerError(409, "You have already worked on this HIT.")
            a = Assignment(assignment_id=ids.assignment_id(), hit_id=h.hit_id, worker_id=w.worker_id,
                           status="Accepted", accept_time=now, deadline=now + ht.assignment_duration)
            h.n_pending += 1
            s.add(a)
            s.add(h)
        self.store.note_due(a.deadline)
        return a

    def assignment(self, w: Worker, assignment_id: str) -> tuple[Assignment, HIT, HITType]:
        self.store.tick()
        with self.store.read() as s:
            a = s.exec(select(Assignment).where(Assignment.assignment_id == assignment_id)).first()
            if a is None or a.worker_id != w.worker_id:
                raise WorkerError(404, "This assignment does not exist.")
            h = s.exec(select(HIT).where(HIT.hit_id == a.hit_id)).one()
            return a, h, s.get(HITType, h.hit_type_id)

    def return_assignment(self, w: Worker, assignment_id: str) -> None:
        with self.store.write() as s:
            a = s.exec(select(Assignment).where(Assignment.assignment_id == assignment_id)).first()
            if a is None or a.worker_id != w.worker_id:
                raise WorkerError(404, "This assignment does not exist.")
            if a.status != "Accepted":
                raise WorkerError(409, f"This assignment is {a.status} and cannot be returned.")
            h = s.exec(select(HIT).where(HIT.hit_id == a.hit_id)).one()
            a.status = "Returned"
            h.n_pending -= 1
            s.add(a)
            s.add(h)

    def submit(self, assignment_id: str, fields: list[tuple[str, str]], w: Worker | None = None) -> Assignment:
        """externalSubmit: the assignment id is the capability (as on MTurk); the worker must not be blocked."""
        self.store.tick()
        now = clock.now()
        with self.store.write() as s:
            a = s.exec(select(Assignment).where(Assignment.assignment_id == assignment_id)).first()
            if a is None or (w is not None and a.worker_id != w.worker_id):
                raise WorkerError(404, "This assignment does not exist.")
            owner = s.get(Worker, a.worker_id)
            if owner is None or owner.blocked_reason is not None:
                raise WorkerError(403, "Your account has been blocked by the requester.")
            if a.status == "Abandoned" or (a.status == "Accepted" and a.deadline <= now):
                raise WorkerError(409, "The time allotted for this assignment has expired.")
            if a.status != "Accepted":
                raise WorkerError(409, f"This assignment has already been {a.status.lower()}.")
            h = s.exec(select(HIT).where(HIT.hit_id == a.hit_id)).one()
            ht = s.get(HITType, h.hit_type_id)
            q = parse_question(h.question)
            try:
                answers = (question_form_answers(q.form, fields) if q.kind == "QuestionForm"
                           else form_fields_to_answers(fields))
            except ValueError as exc:
                raise WorkerError(400, str(exc)) from None
            a.answer = answers_xml(answers)
            a.status, a.submit_time = "Submitted", now
            a.auto_approval_time = now + ht.auto_approval_delay
            h.n_pending -= 1
            h.n_submitted += 1
            s.add(a)
            s.add(h)
        self.store.note_due(a.auto_approval_time)
        return a

    # ------------------------------------------------------------ status pages

    def work(self, w: Worker) -> dict:
        self.store.tick()
        with self.store.read() as s:
            rows = s.exec(select(Assignment, HIT, HITType).where(Assignment.worker_id == w.worker_id,
                                                                Assignment.hit_id == HIT.hit_id,
                                                                HIT.hit_type_id == HITType.hit_type_id)
                          .order_by(Assignment.seq.desc()).limit(500)).all()
            items = [{"assignmentId": a.assignment_id, "hitId": a.hit_id, "title": ht.title,
                      "reward": format_money(ht.reward_cents), "status": a.status,
                      "acceptTime": a.accept_time, "submitTime": a.submit_time,
                      "feedback": a.requester_feedback} for a, h, ht in rows]
            earned = sum(ht.reward_cents for a, h, ht in rows if a.status == "Approved")
            pending = sum(ht.reward_cents for a, h, ht in rows if a.status == "Submitted")
            msgs = s.exec(select(Message).where(Message.worker_id == w.worker_id)
                          .order_by(Message.id.desc()).limit(100)).all()
            return {"assignments": items, "earned": format_money(earned), "pending": format_money(pending),
                    "messages": [{"subject": m.subject, "text": m.text, "time": m.created} for m in msgs]}

    # ------------------------------------------------------------ qualifications

    def qualifications(self, w: Worker) -> list[dict]:
        now = clock.now()
        with self.store.read() as s:
            out = []
            for qt in s.exec(select(QualificationType).where(QualificationType.status == "Active")
                             .order_by(QualificationType.created)).all():
                q = s.get(Qualification, (qt.qualification_type_id, w.worker_id))
                if qt.test is None and not qt.auto_granted and (q is None or q.status != "Granted"):
                    continue        # granted by the requester alone, and not to this worker: nothing to do
                can, why = self._can_request(s, w, qt, now)
                mark = pass_mark(s, qt.qualification_type_id) if qt.test is not None else None
                held = q is not None and q.status == "Granted"
                passed = None if not held or mark is None else q.integer_value >= mark
                out.append({"id": qt.qualification_type_id, "name": qt.name, "description": qt.description,
                            "hasTest": qt.test is not None, "autoGranted": qt.auto_granted,
                            "status": q.status if q else None, "value": q.integer_value if q else None,
                            "passMark": mark, "passed": passed, "canRequest": can, "why": why})
            return out

    def _can_request(self, s: Session, w: Worker, qt: QualificationType, now: float) -> tuple[bool, str]:
        """A worker may take a test they do not hold, or retake one whose score is below the pass mark
        that the requester's HIT types ask -- once the test's retry delay has passed."""
        q = s.get(Qualification, (qt.qualification_type_id, w.worker_id))
        if q is not None and q.status == "Granted":
            mark = pass_mark(s, qt.qualification_type_id) if qt.test is not None else None
            if mark is None or q.integer_value >= mark:
                return False, "You already hold this qualification."
        if qt.test is None and not qt.auto_granted:
            return False, "This qualification is granted by the requester."
        last = s.exec(select(TestAttempt).where(TestAttempt.qualification_type_id == qt.qualification_type_id,
                                                TestAttempt.worker_id == w.worker_id,
                                                TestAttempt.finished != None)  # noqa: E711
                      .order_by(TestAttempt.id.desc())).first()
        if last is not None:
            if qt.retry_delay is None:
                return False, "This test cannot be retaken."
            if last.finished + qt.retry_delay > now:
                return False, f"You can retake the test in {_duration(last.finished + qt.retry_delay - now)}."
        return True, ""

    def start_test(self, w: Worker, qtid: str) -> tuple[QualificationType, TestAttempt | None]:
        now = clock.now()
        with self.store.write() as s:
            qt = s.get(QualificationType, qtid)
            if qt is None or qt.status != "Active":
                raise WorkerError(404, "This qualification does not exist.")
            can, why = self._can_request(s, w, qt, now)
            if not can:
                raise WorkerError(409, why)
            if qt.auto_granted:
                s.merge(Qualification(qualification_type_id=qtid, worker_id=w.worker_id, status="Granted",
                                      integer_value=qt.auto_granted_value if qt.auto_granted_value is not None else 1,
                                      grant_time=now))
                return qt, None
            att = s.exec(select(TestAttempt).where(TestAttempt.qualification_type_id == qtid,
                                                   TestAttempt.worker_id == w.worker_id,
                                                   TestAttempt.finished == None)).first()  # noqa: E711
            if att is None or att.started + (qt.test_duration or 0) <= now:
                if att is not None:
                    att.finished, att.score = now, None
                    s.add(att)
                att = TestAttempt(qualification_type_id=qtid, worker_id=w.worker_id, started=now)
                s.add(att)
                s.flush()
            return qt, att

    def test_form(self, qt: QualificationType):
        return parse_test(qt.test or "")

    def submit_test(self, w: Worker, qtid: str, fields: list[tuple[str, str]]) -> dict:
        now = clock.now()
        with self.store.write() as s:
            qt = s.get(QualificationType, qtid)
            if qt is None or qt.test is None:
                raise WorkerError(404, "This qualification has no test.")
            att = s.exec(select(TestAttempt).where(TestAttempt.qualification_type_id == qtid,
                                                   TestAttempt.worker_id == w.worker_id,
                                                   TestAttempt.finished == None)).first()  # noqa: E711
            if att is None:
                raise WorkerError(409, "Start the test first.")
            if att.started + (qt.test_duration or 0) < now:
                att.finished = now
                s.add(att)
                return {"status": "expired", "message": "The time allowed for this test has run out."}
            try:
                answers = question_form_answers(parse_test(qt.test), fields)
            except ValueError as exc:
                raise WorkerError(400, str(exc)) from None
            att.finished, att.answer = now, answers_xml(answers)
            if qt.answer_key is None:
                s.add(att)
                return {"status": "pending", "message": "Your answers await review by the requester."}
            score = score_test(parse_answer_key(qt.answer_key), answers)
            att.score = score
            s.add(att)
            s.merge(Qualification(qualification_type_id=qtid, worker_id=w.worker_id, integer_value=score,
                                  status="Granted", grant_time=now))
            mark = pass_mark(s, qtid)
            passed = None if mark is None else score >= mark
            if qt.retry_delay is None:
                retake = "This test cannot be retaken."
            else:
                retake = f"You can retake it in {_duration(qt.retry_delay)}, on the Qualifications page."
            if passed is False:
                message = f"Not passed this time: your score is {score}, and {mark} is needed. {retake}"
            elif passed:
                message = f"You passed '{qt.name}' with a score of {score} ({mark} needed). You can now work on its HITs."
            else:
                message = f"You have been granted '{qt.name}' with a score of {score}."
            return {"status": "granted", "score": score, "passMark": mark, "passed": passed,
                    "retryDelay": qt.retry_delay, "message": message, "name": qt.name}


def _duration(seconds: float) -> str:
    """'45 seconds', '10 minutes', '2 hours', '1 day' (rounded up)."""
    import math

    seconds = max(0.0, float(seconds))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = math.ceil(seconds / size - 1e-9)
            return f"{n} {unit}{'s' if n != 1 else ''}"
    n = max(1, math.ceil(seconds))
    return f"{n} second{'s' if n != 1 else ''}"
