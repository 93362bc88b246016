"""The ``mturk`` backend: the MTurk Requester API through boto3, exact to its model.

One implementation for three platforms, told apart by the endpoint: MTurk production,
the MTurk sandbox, and the bundled crowd server (``labelprop crowd-server``, also reached
as ``crowd.backend = "server"``).  Every call goes through :func:`orchestrator.crowd.mturk.call`
(ServiceFault retried with backoff; botocore retries throttling and transport errors in
adaptive mode); what remains is mapped to the portable errors of
:mod:`orchestrator.crowd.backends.base`.

* publish: ``CreateHITWithHITType`` with ``UniqueRequestToken``; a repeated token answers
  ``AWS.MechanicalTurk.HitAlreadyExists`` naming the HIT an earlier try created, which is
  returned as recovered.  Past MTurk's 24-hour token window, ``find_by_annotation`` scans
  ``ListHITs`` for the intent's RequesterAnnotation.
* paying: production MTurk is paying (a budget is required); the sandbox (fake balance)
  and the bundled crowd server (in-house annotators) are not.
* eligible_workers: on the bundled crowd server, the workers it knows are listed with
  their system qualification values (``ListWorkersWithQualificationType`` on the built-in
  types), so a requirement nobody can meet is reported before anything is posted.  On
  MTurk the population is unknown (None).
"""
from __future__ import annotations

import datetime as _dt
import json
import urllib.request
from typing import Iterable, Iterator

from orchestrator.crowd.backends import register_backend
from orchestrator.crowd.backends.base import (ALREADY_EXISTS, INVALID_STATE, NOT_FOUND, QUALIFICATION_EXISTS,
                                              REQUEST, WORKER_NOT_FOUND, BackendError, BackendOptions,
                                              PlatformUnavailable, PublishResult, QualificationTest,
                                              Submission, TaskInfo, TaskItem, TaskRef, TaskType)
from orchestrator.crowd.ledger import MTURK_FEES
from orchestrator.crowd.mturk import (LOCALE, MASTERS_PRODUCTION, MASTERS_SANDBOX, NUMBER_APPROVED, PERCENT_APPROVED,
                                PRODUCTION_URL, SANDBOX_URL, TurkError, call, existing_hit_id, make_client,
                                paginate, resolve_endpoint)

__all__ = ["MTurkBackend", "ServerAssetMirror", "requirements_to_mturk"]

_CODES = {
    "AWS.MechanicalTurk.HitAlreadyExists": ALREADY_EXISTS,
    "AWS.MechanicalTurk.QualificationTypeAlreadyExists": QUALIFICATION_EXISTS,
    "AWS.MechanicalTurk.InvalidAssignmentState": INVALID_STATE,
    "AWS.MechanicalTurk.InvalidHITState": INVALID_STATE,
    "AWS.MechanicalTurk.HITDoesNotExist": NOT_FOUND,
    "AWS.MechanicalTurk.AssignmentDoesNotExist": NOT_FOUND,
    "AWS.MechanicalTurk.WorkerDoesNotExist": WORKER_NOT_FOUND,
}


def _map(exc: TurkError) -> Exception:
    if exc.kind == "ServiceFault":
        return PlatformUnavailable(f"{exc.operation}: the crowd platform keeps failing (ServiceFault): {exc.message}")
    return BackendError(exc.operation, _CODES.get(exc.turk_code, REQUEST), str(exc).split(": ", 1)[-1],
                        existing_id=existing_hit_id(exc), platform_code=exc.turk_code)


def _call(client, op: str, **params) -> dict:
    try:
        return call(client, op, **params)
    except TurkError as exc:
        raise _map(exc) from None


def _pages(client, op: str, key: str, **params):
    try:
        yield from paginate(client, op, key, **params)
    except TurkError as exc:
        raise _map(exc) from None


def _epoch(t) -> float | None:
    if t is None:
        return None
    return t.timestamp() if hasattr(t, "timestamp") else float(t)


def requirements_to_mturk(task_type: TaskType, *, sandbox: bool) -> list[dict]:
    """The QualificationRequirements of a task type, in its order."""
    out = []
    for r in task_type.requirements:
        if r.kind == "approval_rate":
            out.append({"QualificationTypeId": PERCENT_APPROVED, "Comparator": "GreaterThanOrEqualTo",
                        "IntegerValues": [int(r.value)], "ActionsGuarded": "Accept"})
        elif r.kind == "approved_tasks":
            out.append({"QualificationTypeId": NUMBER_APPROVED, "Comparator": "GreaterThanOrEqualTo",
                        "IntegerValues": [int(r.value)], "ActionsGuarded": "Accept"})
        elif r.kind == "locale":
            locs = []
            for loc in r.values:
                country, _, sub = loc.partition("-")
                locs.append({"Country": country.upper(), **({"Subdivision": sub.upper()} if sub else {})})
            out.append({"QualificationTypeId": LOCALE, "Comparator": "In", "LocaleValues": locs,
                        "ActionsGuarded": "Accept"})
        elif r.kind == "masters":
            out.append({"QualificationTypeId": MASTERS_SANDBOX if sandbox else MASTERS_PRODUCTION,
                        "Comparator": "Exists", "ActionsGuarded": "Accept"})
        elif r.kind == "qualification":
            out.append({"QualificationTypeId": r.qualification_id, "Comparator": "GreaterThanOrEqualTo",
                        "IntegerValues": [int(r.value)], "ActionsGuarded": "Accept"})
        elif r.kind == "not_qualification":
            out.append({"QualificationTypeId": r.qualification_id, "Comparator": "DoesNotExist",
                        "ActionsGuarded": "DiscoverPreviewAndAccept"})
        else:
            raise ValueError(f"unknown requirement kind {r.kind!r}")
    return out


def _locale_ok(have: tuple[str, str], wanted: tuple[str, ...]) -> bool:
    country, sub = have
    for loc in wanted:
        c, _, s = loc.upper().partition("-")
        if c == country and (not s or s == sub):
            return True
    return False


class ServerAssetMirror:
    """The bundled crowd server's asset route, as a mirror for :class:`~orchestrator.crowd.assets.LocalAssetStore`:
    ``exists`` asks ``HEAD /assets/<name>``, ``put`` uploads with ``POST /assets/<name>`` signed by the
    boto3 client's own SigV4 signer (the requester's key, as for every Requester API call)."""

    def __init__(self, client):
        self.client = client
        self.base = client.meta.endpoint_url.rstrip("/")

    def _url(self, name: str) -> str:
        from urllib.parse import quote

        return f"{self.base}/assets/{quote(name)}"

    def exists(self, name: str) -> bool:
        import urllib.error

        req = urllib.request.Request(self._url(name), method="HEAD")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status == 200
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return False
            raise PlatformUnavailable(f"HEAD {self._url(name)}: HTTP {exc.code}") from None
        except OSError as exc:
            raise PlatformUnavailable(f"cannot reach the crowd server at {self.base}: {exc}") from None

    def put(self, name: str, data: bytes, content_type: str = "image/jpeg") -> None:
        import urllib.error

        from botocore.awsrequest import AWSRequest

        req = AWSRequest(method="POST", url=self._url(name), data=data, headers={"Content-Type": content_type})
        self.client._request_signer.sign("UploadAsset", req)
        out = urllib.request.Request(self._url(name), data=data, method="POST",
                                     headers={k: v for k, v in req.headers.items()})
        try:
            with urllib.request.urlopen(out, timeout=60) as r:
                if r.status in (200, 201):
                    return
                raise BackendError("UploadAsset", REQUEST, f"HTTP {r.status}")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:300]
            if exc.code >= 500:
                raise PlatformUnavailable(f"UploadAsset {name}: HTTP {exc.code}: {detail}") from None
            raise BackendError("UploadAsset", REQUEST, f"{name}: HTTP {exc.code}: {detail}") from None
        except OSError as exc:
            raise PlatformUnavailable(f"cannot reach the crowd server at {self.base}: {exc}") from None


class MTurkBackend:
    """See the module docstring.  ``client``: a boto3 ``mturk`` client."""

    name = "mturk"
    needs_images = True
    token_window_seconds = 23 * 3600     # MTurk keeps a UniqueRequestToken for 24 h
    fees = MTURK_FEES
    concurrency = None                   # crowd.concurrency parallel requests

    def __init__(self, client, *, bundled: bool | None = None):
        self.client = client
        self.endpoint = client.meta.endpoint_url.rstrip("/")
        self.sandbox = self.endpoint == SANDBOX_URL
        self.bundled = self._probe_bundled() if bundled is None else bundled
        self.source = "server" if self.bundled else "mturk"
        self.paying = not (self.sandbox or self.bundled)

    def _probe_bundled(self) -> bool:
        if self.endpoint in (PRODUCTION_URL, SANDBOX_URL):
            return False
        try:
            with urllib.request.urlopen(self.endpoint + "/health", timeout=10) as r:
                return json.loads(r.read()).get("service") == "labelprop-crowd-server"
        except (OSError, ValueError):
            return False

    def close(self) -> None:
        pass

    def asset_mirror(self):
        """Where overlays must also be put so workers can load them: the bundled server's upload route."""
        return ServerAssetMirror(self.client) if self.bundled else None

    # ------------------------------------------------------------ setup
    def create_qualification(self, name: str, description: str, test: QualificationTest | None = None) -> str:
        params = {"Name": name[:256], "Description": description[:2000], "Keywords": "labelprop",
                  "QualificationTypeStatus": "Active"}
        if test is not None:
            params.update(Test=test.test, AnswerKey=test.answer_key, TestDurationInSeconds=test.duration_seconds,
                          RetryDelayInSeconds=test.retry_delay_seconds)
        return _call(self.client, "CreateQualificationType", **params)["QualificationType"]["QualificationTypeId"]

    def hit_type_params(self, t: TaskType) -> dict:
        return {"AutoApprovalDelayInSeconds": t.auto_approve_seconds, "AssignmentDurationInSeconds": t.assignment_seconds,
                "Reward": f"{t.reward_cents // 100}.{t.reward_cents % 100:02d}", "Title": t.title,
                "Keywords": t.keywords, "Description": t.description,
                "QualificationRequirements": requirements_to_mturk(t, sandbox=self.sandbox)}

    def ensure_task_type(self, t: TaskType) -> str:
        return _call(self.client, "CreateHITType", **self.hit_type_params(t))["HITTypeId"]

    def eligible_workers(self, t: TaskType) -> int | None:
        if not self.bundled:
            return None
        pop = [r for r in t.requirements if r.kind in ("approval_rate", "approved_tasks", "locale", "masters")]
        try:
            workers = self._system_values()
        except BackendError:
            return None          # a server that does not list system qualifications
        n = 0
        for vals in workers.values():
            ok = True
            for r in pop:
                if r.kind == "approval_rate":
                    ok = vals.get(PERCENT_APPROVED, 100) >= r.value
                elif r.kind == "approved_tasks":
                    ok = vals.get(NUMBER_APPROVED, 0) >= r.value
                elif r.kind == "locale":
                    ok = _locale_ok(vals.get(LOCALE, ("", "")), r.values)
                elif r.kind == "masters":
                    ok = False               # nobody holds Masters outside MTurk
                if not ok:
                    break
            n += ok
        return n

    def _system_values(self) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for tid in (PERCENT_APPROVED, NUMBER_APPROVED, LOCALE):
            for q in _pages(self.client, "ListWorkersWithQualificationType", "Qualifications",
                            QualificationTypeId=tid, Status="Granted"):
                v = out.setdefault(q["WorkerId"], {})
                if tid == LOCALE:
                    loc = q.get("LocaleValue") or {}
                    v[tid] = (str(loc.get("Country", "")).upper(), str(loc.get("Subdivision", "") or "").upper())
                else:
                    v[tid] = int(q.get("IntegerValue", 0))
        return out

    # ------------------------------------------------------------ posting
    def render(self, items: list[TaskItem], *, allow_unsure: bool) -> str:
        from hit_templates.render import HitQuestion, render_verification_question

        return render_verification_question([HitQuestion(i.identifier, i.image_url, i.class_name) for i in items],
                                            form="crowd-form", allow_unsure=allow_unsure)

    def publish(self, task) -> PublishResult:
        try:
            resp = call(self.client, "CreateHITWithHITType", HITTypeId=task.type_id, MaxAssignments=task.max_assignments,
                        LifetimeInSeconds=task.lifetime_seconds, Question=task.content,
                        RequesterAnnotation=task.annotation, UniqueRequestToken=task.token)
            return PublishResult(resp["HIT"]["HITId"])
        except TurkError as exc:
            hid = existing_hit_id(exc)
            if hid:
                return PublishResult(hid, recovered=True)
            raise _map(exc) from None

    def find_by_annotation(self, annotation: str) -> str | None:
        for h in _pages(self.client, "ListHITs", "HITs"):
            if h.get("RequesterAnnotation") == annotation:
                return h["HITId"]
        return None

    # ------------------------------------------------------------ reading
    def list_ready(self, type_ids: Iterable[str]) -> Iterator[TaskRef]:
        for t in sorted(set(type_ids)):
            for h in _pages(self.client, "ListReviewableHITs", "HITs", HITTypeId=t, Status="Reviewable"):
                yield TaskRef(h["HITId"], h.get("RequesterAnnotation"))

    def list_submissions(self, task_id: str) -> list[Submission]:
        return [Submission(a["AssignmentId"], task_id, a.get("WorkerId", ""), a.get("AssignmentStatus", "Submitted"),
                           a.get("Answer") or "", _epoch(a.get("AcceptTime")), _epoch(a.get("SubmitTime")))
                for a in _pages(self.client, "ListAssignmentsForHIT", "Assignments", HITId=task_id,
                                AssignmentStatuses=["Submitted", "Approved", "Rejected"])]

    def parse_answers(self, raw_answer: str) -> dict[str, str]:
        from orchestrator.crowd.quality import parse_answers

        return parse_answers(raw_answer)

    def answer_seconds(self, raw_answer: str) -> dict[str, float]:
        from hit_templates.render import parse_verification_seconds

        try:
            return parse_verification_seconds(raw_answer)
        except ValueError:
            return {}

    def qualification_scores(self, qualification_id: str) -> dict[str, int]:
        return {q["WorkerId"]: int(q.get("IntegerValue", 0))
                for q in _pages(self.client, "ListWorkersWithQualificationType", "Qualifications",
                                QualificationTypeId=qualification_id, Status="Granted")}

    @staticmethod
    def _info(h: dict) -> TaskInfo:
        return TaskInfo(h["HITId"], h.get("HITTypeId", ""), h.get("HITStatus", ""), h.get("RequesterAnnotation"),
                        int(h.get("MaxAssignments", 1)), int(h.get("NumberOfAssignmentsPending", 0)),
                        int(h.get("NumberOfAssignmentsAvailable", 0)), int(h.get("NumberOfAssignmentsCompleted", 0)),
                        _epoch(h.get("Expiration")))

    def list_tasks(self, type_ids: Iterable[str]) -> list[TaskInfo]:
        want = set(type_ids)
        return [self._info(h) for h in _pages(self.client, "ListHITs", "HITs") if h.get("HITTypeId") in want]

    def get_task(self, task_id: str) -> TaskInfo:
        return self._info(_call(self.client, "GetHIT", HITId=task_id)["HIT"])

    # ------------------------------------------------------------ effects
    def approve(self, assignment_id: str) -> None:
        _call(self.client, "ApproveAssignment", AssignmentId=assignment_id)

    def reject(self, assignment_id: str, feedback: str) -> None:
        _call(self.client, "RejectAssignment", AssignmentId=assignment_id, RequesterFeedback=feedback or "Rejected.")

    def assignment_status(self, assignment_id: str) -> str:
        return _call(self.client, "GetAssignment", AssignmentId=assignment_id)["Assignment"]["AssignmentStatus"]

    def block(self, qualification_id: str, worker_id: str) -> None:
        _call(self.client, "AssociateQualificationWithWorker", QualificationTypeId=qualification_id,
              WorkerId=worker_id, IntegerValue=1, SendNotification=False)

    def expire(self, task_id: str) -> None:
        _call(self.client, "UpdateExpirationForHIT", HITId=task_id,
              ExpireAt=_dt.datetime.fromtimestamp(0, _dt.timezone.utc))

    def dispose(self, task_id: str) -> None:
        _call(self.client, "DeleteHIT", HITId=task_id)

    def pay_bonus(self, worker_id: str, assignment_id: str, bonus_cents: int, reason: str, token: str) -> None:
        try:
            call(self.client, "SendBonus", WorkerId=worker_id, AssignmentId=assignment_id,
                 BonusAmount=f"{bonus_cents // 100}.{bonus_cents % 100:02d}", Reason=reason[:4096],
                 UniqueRequestToken=token)
        except TurkError as exc:
            # a repeated UniqueRequestToken: the bonus was paid by an earlier (crashed) try
            if "UniqueRequestToken" in exc.message or "already" in exc.message.lower():
                return
            raise _map(exc) from None


def _factory(campaign_dir, cfg, engine, opts: BackendOptions) -> MTurkBackend:
    cc = cfg.crowd
    client = opts.client
    if client is None:
        endpoint = resolve_endpoint(cc, opts.endpoint_url, opts.sandbox)
        client = make_client(cc, endpoint_url=endpoint, profile=opts.profile)
    return MTurkBackend(client, bundled=True if cc.backend == "server" else None)


register_backend("mturk")(_factory)
register_backend("server")(_factory)
