"""Prolific participants on the crowd server: entry, sign-in, hand-off back with a completion code.

A Prolific study's ``external_study_url`` points at ``/prolific/start`` with Prolific's URL
placeholders (``PROLIFIC_PID={{%PROLIFIC_PID%}}&STUDY_ID={{%STUDY_ID%}}&SESSION_ID={{%SESSION_ID%}}``).
A participant arriving there is signed in as a worker of this server (created on first arrival,
named ``prolific-<PID>``; the same qualification tests, gold and blocks as any worker) and sent on
by ``/prolific/next``, which decides what comes next:

* a HIT (the next group the worker can accept), or the qualification test a group requires;
* after ``hits_per_place`` submitted HITs: a choice between finishing and up to ``extra_hits``
  more HITs for a bonus each (paid by the requester through Prolific's bonus API);
* done (``hits_per_place + extra_hits`` HITs, or finished by choice, or no HIT left after at
  least one): the completion URL ``https://app.prolific.com/submissions/complete?cc=<COMPLETED code>``;
* a failed qualification test that cannot be retaken now: the ``FAILED_ATTENTION_CHECK`` code;
* no HIT available before doing any: the ``OTHER`` ("no work") code.

A participant who wants to stop before doing any HIT returns the study on Prolific (the page
says so); one who stops after some HITs finishes with the COMPLETED code.

The requester configures this with ``POST /prolific/config`` (JSON: ``hits_per_place``,
``extra_hits``, ``completion_url``, ``wait_seconds``, and once the study exists ``study_id``: then
only arrivals with that ``STUDY_ID`` are let in), signed with the requester key like every Requester API
call (SigV4, as ``POST /assets/...``); the answer carries the completion codes, made once per
data directory and kept.  ``GET /prolific/participants`` (signed too) lists every participant
with their worker id and how many HITs they submitted, so the requester can reconcile Prolific
submissions with this server's assignments.  Nothing here imports the orchestrator.
"""
from __future__ import annotations

import json
import re
import secrets
from pathlib import Path
from urllib.parse import quote, urlencode

from sqlmodel import func, select

from . import clock
from .models import Assignment, Setting, TestAttempt, Worker

CONFIG_KEY = "prolific.config"
PARTICIPANT_PREFIX = "prolific.participant:"
WORKER_PREFIX = "prolific-"
DEFAULT_COMPLETION_URL = "https://app.prolific.com/submissions/complete"
CODE_TYPES = ("COMPLETED", "FAILED_ATTENTION_CHECK", "OTHER")
_PID = re.compile(r"[A-Za-z0-9]{1,64}")
_DONE = ("Submitted", "Approved", "Rejected")


def _code() -> str:
    return "".join(secrets.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(8))


class ProlificEntry:
    """The ``/prolific/*`` routes (used by :class:`~orchestrator.crowd_server.worker_web.WorkerWeb`)."""

    def __init__(self, web):
        self.web = web
        self.actions = web.actions
        self.store = web.actions.store

    # ------------------------------------------------------------ configuration
    def config(self) -> dict | None:
        with self.store.read() as s:
            row = s.get(Setting, CONFIG_KEY)
            return json.loads(row.value) if row is not None else None

    def _verify(self, method: str, raw_path: str, headers, body: bytes) -> str | None:
        from . import credentials as cm
        from .api_errors import ApiError
        from .sigv4 import verify

        creds = cm.load(Path(self.store.data_dir))
        try:
            verify(method, raw_path, list(headers.items()), body,
                   lambda akid: creds.secret_access_key if creds and akid == creds.access_key_id else None)
        except ApiError as exc:
            return f"not signed with the requester key: {exc.message}"
        return None

    def put_config(self, raw_path: str, headers, body: bytes):
        from .worker_web import _json

        err = self._verify("POST", raw_path, headers, body)
        if err:
            return _json(403, {"status": 403, "message": err})
        try:
            p = json.loads(body or b"{}")
            hits = int(p.get("hits_per_place", 1))
            extra = int(p.get("extra_hits", 0))
            wait = int(p.get("wait_seconds", 300))
            study = str(p.get("study_id") or "")[:64]
            url = str(p.get("completion_url") or DEFAULT_COMPLETION_URL)
            if not (1 <= hits <= 1000 and 0 <= extra <= 1000) or not url.startswith(("https://", "http://")):
                raise ValueError
        except (ValueError, TypeError, AttributeError):
            return _json(400, {"status": 400, "message": "body: JSON with hits_per_place (1..1000), extra_hits "
                                                         "(0..1000) and completion_url (http[s]://...)"})
        with self.store.write() as s:
            row = s.get(Setting, CONFIG_KEY)
            old = json.loads(row.value) if row is not None else {}
            codes = old.get("codes") or {t: _code() for t in CODE_TYPES}
            cfg = {"hits_per_place": hits, "extra_hits": extra, "completion_url": url, "codes": codes,
                   "wait_seconds": max(0, wait), "study_id": study or old.get("study_id", "")}
            s.merge(Setting(key=CONFIG_KEY, value=json.dumps(cfg)))
        return _json(200, cfg)

    def participants(self, raw_path: str, headers):
        from .worker_web import _json

        err = self._verify("GET", raw_path, headers, b"")
        if err:
            return _json(403, {"status": 403, "message": err})
        out = {}
        with self.store.read() as s:
            rows = s.exec(select(Setting).where(Setting.key.startswith(PARTICIPANT_PREFIX))).all()
            for r in rows:
                info = json.loads(r.value)
                n = s.exec(select(func.count()).select_from(Assignment).where(
                    Assignment.worker_id == info["worker_id"], Assignment.status.in_(_DONE))).one()
                out[r.key[len(PARTICIPANT_PREFIX):]] = {**info, "hits_submitted": int(n)}
        return _json(200, {"participants": out})

    # ------------------------------------------------------------ participants
    def start(self, query: dict, wants_json: bool):
        from .worker_actions import WorkerError
        from .worker_web import _redirect

        cfg = self.config()
        if cfg is None:
            raise WorkerError(409, "This study is not open yet (the requester has not configured it).")
        pid = query.get("PROLIFIC_PID", "")
        if not _PID.fullmatch(pid):
            raise WorkerError(400, "Open this study from Prolific: the link carries your Prolific ID.")
        study, session = query.get("STUDY_ID", ""), query.get("SESSION_ID", "")
        if cfg.get("study_id") and study != cfg["study_id"]:
            raise WorkerError(403, "This link does not belong to the study that is open here; open the study "
                                   "from Prolific again.")
        name = WORKER_PREFIX + pid
        w = self.store.find_worker(name)
        if w is None:
            try:
                w, _token = self.store.add_worker(name)
            except KeyError:        # two first arrivals at once
                w = self.store.find_worker(name)
        if w.blocked_reason is not None:
            raise WorkerError(403, "Your account has been blocked by the requester.")
        now = clock.now()
        with self.store.write() as s:
            key = PARTICIPANT_PREFIX + pid
            row = s.get(Setting, key)
            info = json.loads(row.value) if row is not None else {"worker_id": w.worker_id, "first_seen": now}
            info.update(study_id=study[:64], session_id=session[:64], last_seen=now)
            info.setdefault("finished", False)
            s.merge(Setting(key=key, value=json.dumps(info)))
        sid, expires = self.store.start_session(w, self.actions.session_seconds)
        cookie = self.web._cookie(sid, int(expires - now))
        nxt = "/prolific/next" + ("?format=json" if wants_json else "")
        return _redirect(nxt, [("Set-Cookie", cookie)])

    def _info(self, w: Worker) -> tuple[str, dict] | None:
        if not w.name.startswith(WORKER_PREFIX):
            return None
        pid = w.name[len(WORKER_PREFIX):]
        with self.store.read() as s:
            row = s.get(Setting, PARTICIPANT_PREFIX + pid)
            return (pid, json.loads(row.value)) if row is not None else None

    def _update(self, pid: str, **kv) -> None:
        with self.store.write() as s:
            row = s.get(Setting, PARTICIPANT_PREFIX + pid)
            info = json.loads(row.value)
            info.update(kv)
            s.merge(Setting(key=row.key, value=json.dumps(info)))

    def _submitted(self, w: Worker) -> int:
        with self.store.read() as s:
            return int(s.exec(select(func.count()).select_from(Assignment).where(
                Assignment.worker_id == w.worker_id, Assignment.status.in_(_DONE))).one())

    def _finish(self, w: Worker, pid: str, code_type: str, wants_json: bool, reason: str):
        from .worker_web import _json, _redirect

        cfg = self.config()
        code = cfg["codes"][code_type]
        url = cfg["completion_url"] + "?" + urlencode({"cc": code})
        with self.store.write() as s:
            row = s.get(Setting, PARTICIPANT_PREFIX + pid)
            info = json.loads(row.value)
            info.update(finished=True, code_type=code_type)
            s.merge(Setting(key=row.key, value=json.dumps(info)))
        if wants_json:
            return _json(200, {"action": "complete", "url": url, "code_type": code_type, "reason": reason})
        return _redirect(url)

    def next(self, w: Worker, wants_json: bool):
        """What a participant does next (see the module docstring)."""
        from .qualification_checks import pass_mark
        from .worker_actions import WorkerError
        from .worker_web import _html, _json, _redirect

        got = self._info(w)
        if got is None:
            raise WorkerError(404, "This page is for participants who came from Prolific.")
        pid, info = got
        cfg = self.config()
        done = self._submitted(w)
        need, extra = cfg["hits_per_place"], cfg["extra_hits"]
        if done >= need + extra:
            return self._finish(w, pid, "COMPLETED", wants_json, "all HITs done")
        groups = self.actions.groups(w)
        ready = [g for g in groups if g.can_accept]
        if ready and done >= need:
            if wants_json:
                return _json(200, {"action": "choose", "done": done, "extra_left": need + extra - done,
                                   "bonus_per_hit": ready[0].reward})
            return _html(200, self.web.render(
                "message.html", w=w, signed_in=True, title="Thank you: your part is done",
                message=(f"You have done the {need} HITs of this study. You may finish now "
                         f"(open /prolific/finish), or do up to {need + extra - done} more for a bonus of "
                         f"${ready[0].reward} each (open /groups/{ready[0].hit_type_id})."),
                back="/prolific/finish"))
        if ready and info.get("waiting_since") is not None:
            self._update(pid, waiting_since=None)
        if ready:
            g = ready[0]
            if wants_json:
                return _json(200, {"action": "hit", "hit_type_id": g.hit_type_id, "done": done})
            return _redirect(f"/groups/{quote(g.hit_type_id)}")
        now = clock.now()
        if not ready and not any(g.unmet for g in groups):
            # no HIT to take right now: the requester's next poll may post more; wait a while
            since = info.get("waiting_since") or now
            if info.get("waiting_since") is None:
                self._update(pid, waiting_since=now)
            if now - since < cfg.get("wait_seconds", 300):
                if wants_json:
                    return _json(200, {"action": "wait", "done": done})
                return _html(200, "<!doctype html><meta http-equiv=refresh content=10><title>Please wait</title>"
                                  "<p>More HITs are being prepared; this page reloads by itself.</p>",
                             [("Refresh", "10")])
        if done:
            return self._finish(w, pid, "COMPLETED", wants_json, "no HIT left")
        # nothing to accept: a test to take, a test failed, or no work
        wanted = {r["QualificationTypeId"] for g in groups for r in g.unmet or []}
        if wanted:
            quals = {q["id"]: q for q in self.actions.qualifications(w)}
            for qid in sorted(wanted):
                q = quals.get(qid)
                if q is not None and q.get("canRequest"):
                    if wants_json:
                        return _json(200, {"action": "test", "qualification_type_id": qid})
                    return _redirect(f"/qualifications/{quote(qid)}/test")
            with self.store.read() as s:
                failed = False
                for qid in wanted:
                    mark = pass_mark(s, qid)
                    att = s.exec(select(TestAttempt).where(TestAttempt.worker_id == w.worker_id,
                                                           TestAttempt.qualification_type_id == qid,
                                                           TestAttempt.score != None)).all()  # noqa: E711
                    failed |= bool(att) and mark is not None and max(a.score for a in att) < mark
            if failed:
                return self._finish(w, pid, "FAILED_ATTENTION_CHECK", wants_json, "qualification test failed")
        return self._finish(w, pid, "OTHER", wants_json, "no work available")

    def finish(self, w: Worker, wants_json: bool):
        """The participant chose to stop: COMPLETED after at least one HIT; before any, they return."""
        from .worker_actions import WorkerError

        got = self._info(w)
        if got is None:
            raise WorkerError(404, "This page is for participants who came from Prolific.")
        if self._submitted(w) == 0:
            raise WorkerError(409, "You have not done any HIT: please return the study on Prolific "
                                   "(\"Return submission\") so it does not count against you.")
        return self._finish(w, got[0], "COMPLETED", wants_json, "finished by the participant")
