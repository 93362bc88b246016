"""The ``prolific`` backend: a Prolific study whose participants work on the bundled crowd server.

HITs are posted to the bundled crowd server exactly as the ``server`` backend does (this class
wraps an :class:`~orchestrator.crowd.backends.mturk.MTurkBackend` talking to it, by composition);
posting them costs nothing there.  The money is Prolific's: one *place* of the study pays
``crowd.prolific.hits_per_place`` HITs (reward = that many times ``crowd.reward_usd``), and a
participant may do up to ``extra_hits`` more, each paid as a bonus of ``reward_usd``.

Each poll pass runs :meth:`ProlificBackend.platform_pass` after the HITs' answers were reviewed:

1. the server's Prolific entry is configured (signed ``POST /prolific/config``), which answers
   the completion codes (COMPLETED, FAILED_ATTENTION_CHECK for a failed qualification test,
   OTHER for "no work");
2. the study: recorded as an intent named ``labelprop:<campaign uid>`` before ``POST /studies/``
   (a rerun finds it by that ``internal_name``), reward per place, ``total_available_places``,
   ``external_study_url`` = ``<public url>/prolific/start?PROLIFIC_PID={{%PROLIFIC_PID%}}&...``;
3. submissions (``GET /submissions/?study=``) are matched to the server's participants (signed
   ``GET /prolific/participants``: worker id, HITs submitted); a submission awaiting review is
   decided once every HIT its participant submitted has been reviewed: approved, or rejected
   (failed qualification test, blocked by gold checks, most HITs rejected, no or unknown code)
   with a message of at least 100 characters and a ``rejection_category``;
4. the transitions are made (idempotent; an "already" answer is read back);
5. an approved participant who did extra HITs gets one bonus intent (a ``CrowdBonus`` row with
   the token ``lpp-<submission id>``, so never two), paid by the pass's bonus step through
   :meth:`pay_bonus` (see :mod:`orchestrator.crowd.prolific_store` for the crash-safe steps);
6. places: added ``places_per_step`` at a time while the search has HITs out and every place is
   taken, within the budget (each place reserves its reward, fee and the worst-case bonuses);
   the study is published, paused when the budget cannot fund another place, and stopped when
   the search is done.

The Prolific side of the tests runs against a local fake of the documented endpoints
(``tests/prolific_fake.py``), since the real service cannot be reached from the test machines.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request

from sqlalchemy import func, select

from orchestrator.crowd.backends import register_backend
from orchestrator.crowd.backends.base import INVALID_STATE, REQUEST, BackendError, BackendOptions, PlatformUnavailable
from orchestrator.crowd.backends.prolific_api import PROLIFIC_ACADEMIC, ProlificClient, prolific_fees
from orchestrator.crowd.ledger import cents
from orchestrator.crowd.prolific_store import ProlificBonusPay, ProlificStudy, ProlificSubmission
from orchestrator.campaign.store import log_event, read_session, transaction, utcnow

__all__ = ["ProlificBackend", "place_money", "external_study_url", "REJECT_MESSAGES"]

COUNTED = ("ACTIVE", "AWAITING REVIEW", "APPROVED", "REJECTED", "PROCESSING")   # hold a place
REJECT_MESSAGES = {
    "FAILED_CHECK": ("Your submission was rejected because the qualification test of this study was not "
                     "passed, or because the hidden check questions with known answers in your HITs were "
                     "mostly answered wrongly. Thank you for your time."),
    "LOW_EFFORT": ("Your submission was rejected because most of the HITs you submitted in this study were "
                   "rejected by its quality checks (answers far too fast or inconsistent with known answers)."),
    "NO_CODE": ("Your submission was rejected because it carries no completion code, or a code this study "
                "never gave out; the study's pages give the code only when its work is done. Thank you."),
}


def external_study_url(public_url: str) -> str:
    """The study URL with Prolific's placeholders (written with double braces, as Prolific documents)."""
    return (public_url.rstrip("/") + "/prolific/start?PROLIFIC_PID={{%PROLIFIC_PID%}}"
            "&STUDY_ID={{%STUDY_ID%}}&SESSION_ID={{%SESSION_ID%}}")


def place_money(s) -> tuple[int, int, int]:
    """(reserved, owed, spent) cents of the campaign's Prolific places (0s for other backends).
    A place not settled yet reserves its reward, fee and worst-case bonus (``place_worst``)."""
    studies = s.execute(select(ProlificStudy)).scalars().all()
    if not studies:
        return 0, 0, 0
    reserved = owed = spent = 0
    for st in studies:
        if st.study_id is None and st.status != "intent":
            continue
        worst = _worst(st)
        rows = s.execute(select(ProlificSubmission).where(ProlificSubmission.study_id == (st.study_id or ""))) \
            .scalars().all() if st.study_id else []
        held = [r for r in rows if r.remote_status in COUNTED or r.decision]
        open_places = max(0, st.places - len(held))
        if st.status not in ("COMPLETED",):
            reserved += open_places * worst
        for r in held:
            if not r.decision:
                reserved += worst
            elif r.decision == "approve":
                if not r.bonus_checked:
                    reserved += max(0, worst - r.cost_cents)
                if r.final_status == "APPROVED":
                    spent += r.cost_cents
                else:
                    owed += r.cost_cents
    return reserved, owed, spent


def _load(engine, model, key):
    """A row read and detached with its values (None if absent)."""
    with read_session(engine) as s:
        obj = s.get(model, key)
        if obj is not None:
            s.expunge(obj)
        return obj


def _worst(st: ProlificStudy) -> int:
    return st.place_worst_cents or st.reward_cents


class ProlificBackend:
    """See the module docstring.  ``inner``: the ``server`` backend; ``client``: a ProlificClient."""

    name = "prolific"
    source = "prolific"
    paying = True
    needs_images = True
    task_cost_cents = 0                   # HITs on the bundled server cost nothing; places and bonuses do

    def __init__(self, inner, client: ProlificClient, cfg, engine):
        self.inner, self.client, self.cfg, self.engine = inner, client, cfg, engine
        pc = cfg.crowd.prolific
        self.fees = prolific_fees(pc.account, pc.min_hourly_usd, pc.fee_permille)
        self.token_window_seconds = inner.token_window_seconds
        self.concurrency = inner.concurrency
        self.reward_cents = cents(cfg.crowd.reward_usd)
        self.place_reward = self.reward_cents * pc.hits_per_place
        self.place_cost = self.fees.place_cost_cents(self.place_reward)
        self.place_worst = self.place_cost + pc.extra_hits * self.fees.bonus_cost_cents(self.reward_cents)
        self._codes: dict | None = None

    def __getattr__(self, item):            # everything about HITs: the bundled server
        return getattr(self.inner, item)

    def close(self) -> None:
        self.inner.close()

    # ------------------------------------------------------------ the server's Prolific entry
    def _signed(self, method: str, path: str, body: bytes = b"") -> dict:
        from botocore.awsrequest import AWSRequest

        url = self.inner.endpoint + path
        headers = {"Content-Type": "application/json"} if body else {}
        req = AWSRequest(method=method, url=url, data=body, headers=headers)
        self.inner.client._request_signer.sign("ProlificEntry", req)
        out = urllib.request.Request(url, data=body if method == "POST" else None, method=method,
                                     headers=dict(req.headers.items()))
        try:
            with urllib.request.urlopen(out, timeout=30) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:300]
            if exc.code >= 500:
                raise PlatformUnavailable(f"crowd server {method} {path}: HTTP {exc.code}: {detail}") from None
            raise BackendError(f"crowd server {method} {path}", REQUEST, f"HTTP {exc.code}: {detail}") from None
        except OSError as exc:
            raise PlatformUnavailable(f"cannot reach the crowd server at {self.inner.endpoint}: {exc}") from None

    def codes(self, study_id: str = "") -> dict:
        """Configure the server's Prolific entry (idempotent) and return its completion codes."""
        if self._codes is None or study_id:
            pc = self.cfg.crowd.prolific
            body = json.dumps({"hits_per_place": pc.hits_per_place, "extra_hits": pc.extra_hits,
                               "wait_seconds": pc.wait_seconds, "study_id": study_id}).encode()
            self._codes = self._signed("POST", "/prolific/config", body)["codes"]
        return self._codes

    # ------------------------------------------------------------ the pass
    def platform_pass(self, ctx) -> dict:
        from orchestrator.crowd.posting import ledger

        internal = f"labelprop:{ctx.uid}"
        codes = self.codes()
        st = self._study(ctx, internal, codes)
        if st is None:
            return {}
        self.codes(st.study_id)           # from now on the server lets in this study's participants only
        self._sync(st)
        self._decide(ctx, st, codes)
        self._transitions(ctx)
        self._bonus_intents(ctx, st)
        with read_session(ctx.engine) as s:
            led = ledger(s, ctx.cfg.crowd.budget_usd)
        self._places(ctx, st, led)
        return {}

    def _study(self, ctx, internal: str, codes: dict) -> ProlificStudy | None:
        from orchestrator.crowd.posting import ledger

        cc, pc = ctx.cfg.crowd, ctx.cfg.crowd.prolific
        st = _load(ctx.engine, ProlificStudy, internal)
        with read_session(ctx.engine) as s:
            led = ledger(s, cc.budget_usd)
        if st is None:
            places = pc.places_per_step
            if led.left_cents is not None:
                places = min(places, led.left_cents // self.place_worst)
            if places <= 0:
                ctx.budget_exhausted = True
                ctx.note(f"the budget cannot fund one Prolific place (${self.place_worst / 100:.2f} with fee and "
                         f"bonuses); no study created")
                return None
            with transaction(ctx.engine) as s:      # the intent, before the remote call
                if s.get(ProlificStudy, internal) is None:
                    s.add(ProlificStudy(internal_name=internal, reward_cents=self.place_reward, places=places,
                                        place_worst_cents=self.place_worst))
                    log_event(s, "prolific_study_intent", internal_name=internal, places=places,
                              reward_cents=self.place_reward)
            st = _load(ctx.engine, ProlificStudy, internal)
        if st.study_id is None:
            found = [x for x in self.client.list_studies() if x.get("internal_name") == internal]
            if found:
                sid, how = found[0]["id"], "found again"
            else:
                public = pc.public_url or cc.endpoint_url or self.inner.endpoint
                body = {"name": pc.study_name or cc.title, "internal_name": internal,
                        "description": cc.description, "external_study_url": external_study_url(public),
                        "prolific_id_option": "url_parameters",
                        "completion_codes": [
                            {"code": codes["COMPLETED"], "code_type": "COMPLETED",
                             "actions": [{"action": "MANUALLY_REVIEW"}]},
                            {"code": codes["FAILED_ATTENTION_CHECK"], "code_type": "FAILED_ATTENTION_CHECK",
                             "actions": [{"action": "MANUALLY_REVIEW"}]},
                            {"code": codes["OTHER"], "code_type": "OTHER", "actions": [{"action": "MANUALLY_REVIEW"}]}],
                        "total_available_places": st.places, "estimated_completion_time": pc.estimated_minutes,
                        "reward": self.place_reward, "device_compatibility": ["desktop"]}
                sid, how = self.client.create_study(body)["id"], "created"
            with transaction(ctx.engine) as s:
                row = s.get(ProlificStudy, internal)
                row.study_id, row.status = sid, "UNPUBLISHED"
                log_event(s, "prolific_study", study=sid, how=how)
            st = _load(ctx.engine, ProlificStudy, internal)
        return st

    def _sync(self, st: ProlificStudy) -> None:
        subs = self.client.list_submissions(st.study_id)
        parts = self._signed("GET", "/prolific/participants").get("participants", {})
        with transaction(self.engine) as s:
            for x in subs:
                pid = x.get("participant_id") or x.get("participant") or ""
                info = parts.get(pid, {})
                row = s.get(ProlificSubmission, x["id"])
                if row is None:
                    row = ProlificSubmission(submission_id=x["id"], study_id=st.study_id, participant_id=pid)
                    s.add(row)
                row.remote_status = x.get("status", "")
                row.entered_code = x.get("entered_code") or x.get("study_code") or ""
                if not row.decision:
                    row.worker_id = info.get("worker_id", row.worker_id)
                    row.hits = int(info.get("hits_submitted", row.hits))

    def _decide(self, ctx, st: ProlificStudy, codes: dict) -> None:
        from orchestrator.crowd.crowd_store import CrowdAssignment, CrowdWorker

        kinds = {v: k for k, v in codes.items()}
        with transaction(ctx.engine) as s:
            todo = s.execute(select(ProlificSubmission).where(ProlificSubmission.study_id == st.study_id,
                                                              ProlificSubmission.decision == "",
                                                              ProlificSubmission.remote_status == "AWAITING REVIEW")
                             ).scalars().all()
            for r in todo:
                kind = kinds.get(r.entered_code)
                if kind == "FAILED_ATTENTION_CHECK":
                    decision, reason = "reject", "FAILED_CHECK"
                elif kind is None:
                    decision, reason = "reject", "NO_CODE"
                else:
                    processed = int(s.execute(select(func.count()).select_from(CrowdAssignment).where(
                        CrowdAssignment.worker_id == r.worker_id, CrowdAssignment.processed == True)  # noqa: E712
                    ).scalar_one()) if r.worker_id else 0
                    if processed < r.hits:
                        continue                 # some of their HITs are not reviewed yet: next pass
                    w = s.get(CrowdWorker, r.worker_id) if r.worker_id else None
                    rejected = int(s.execute(select(func.count()).select_from(CrowdAssignment).where(
                        CrowdAssignment.worker_id == r.worker_id, CrowdAssignment.decision == "reject")
                    ).scalar_one()) if r.worker_id else 0
                    if w is not None and w.blocked:
                        decision, reason = "reject", "FAILED_CHECK"
                    elif r.hits and 2 * rejected > r.hits:
                        decision, reason = "reject", "LOW_EFFORT"
                    else:
                        decision, reason = "approve", kind
                r.decision, r.reason, r.decided_at = decision, reason, utcnow()
                r.cost_cents = self.place_cost if decision == "approve" else 0
                r.bonus_checked = decision != "approve"
                log_event(s, "prolific_decided", submission=r.submission_id, participant=r.participant_id,
                          decision=decision, reason=reason, hits=r.hits)
                ctx.stats["prolific_decided"] += 1

    def _transitions(self, ctx) -> None:
        with read_session(ctx.engine) as s:
            todo = s.execute(select(ProlificSubmission.submission_id, ProlificSubmission.decision,
                                    ProlificSubmission.reason).where(ProlificSubmission.decision != "",
                                                                     ProlificSubmission.remote_done == False)  # noqa: E712
                             ).all()
        for sid, decision, reason in todo:
            want = "APPROVED" if decision == "approve" else "REJECTED"
            try:
                if decision == "approve":
                    got = self.client.transition_submission(sid, "APPROVE")
                else:
                    got = self.client.transition_submission(sid, "REJECT", REJECT_MESSAGES[reason], reason)
                status = got.get("status", want)
            except BackendError as exc:
                if exc.code not in (INVALID_STATE, REQUEST):
                    ctx.note(f"submission {sid}: {exc}")
                    continue
                status = self.client.get_submission(sid).get("status", "")
                if status != want:
                    ctx.note(f"submission {sid}: {exc}")
                    continue
            with transaction(ctx.engine) as s:
                row = s.get(ProlificSubmission, sid)
                row.remote_done, row.final_status = True, want if status in (want, "PROCESSING") else status
                log_event(s, "prolific_transition", submission=sid, status=row.final_status)
            ctx.stats["prolific_" + want.lower()] += 1

    def _bonus_intents(self, ctx, st: ProlificStudy) -> None:
        from orchestrator.crowd.crowd_store import CrowdAssignment, CrowdBonus

        pc = ctx.cfg.crowd.prolific
        with transaction(ctx.engine) as s:
            rows = s.execute(select(ProlificSubmission).where(ProlificSubmission.study_id == st.study_id,
                                                              ProlificSubmission.final_status == "APPROVED",
                                                              ProlificSubmission.bonus_checked == False)  # noqa: E712
                             ).scalars().all()
            for r in rows:
                approved = int(s.execute(select(func.count()).select_from(CrowdAssignment).where(
                    CrowdAssignment.worker_id == r.worker_id, CrowdAssignment.decision == "approve")).scalar_one())
                extra = max(0, min(approved, pc.hits_per_place + pc.extra_hits) - pc.hits_per_place)
                token = f"lpp-{r.submission_id}"
                if extra and s.execute(select(CrowdBonus.id).where(CrowdBonus.token == token)).first() is None:
                    amount = extra * self.reward_cents
                    b = CrowdBonus(worker_id=r.participant_id, assignment_id=r.submission_id, bonus_cents=amount,
                                   cost_cents=self.fees.bonus_cost_cents(amount), token=token,
                                   reason=f"{extra} extra HIT(s) at ${self.reward_cents / 100:.2f} each")
                    s.add(b)
                    log_event(s, "bonus_intent", worker=r.participant_id, submission=r.submission_id,
                              cents=amount, extra_hits=extra)
                r.bonus_checked = True

    def _places(self, ctx, st: ProlificStudy, led) -> None:
        from orchestrator.crowd.crowd_store import OPEN_INTENT, HitIntent

        pc = ctx.cfg.crowd.prolific
        with read_session(ctx.engine) as s:
            open_hits = int(s.execute(select(func.count()).select_from(HitIntent)
                                      .where(HitIntent.status.in_(OPEN_INTENT))).scalar_one())
            held = int(s.execute(select(func.count()).select_from(ProlificSubmission).where(
                ProlificSubmission.study_id == st.study_id,
                (ProlificSubmission.remote_status.in_(COUNTED)) | (ProlificSubmission.decision != ""))).scalar_one())
            active = int(s.execute(select(func.count()).select_from(ProlificSubmission).where(
                ProlificSubmission.study_id == st.study_id, ProlificSubmission.remote_status == "ACTIVE")).scalar_one())
        done = bool(ctx.cs.summary().get("done"))
        status = st.status
        if done and open_hits == 0:
            if status in ("ACTIVE", "PAUSED"):
                self._study_transition(ctx, st, "STOP", "COMPLETED")
            return
        # more places only while every place is taken and there are more HITs out than people on them
        if open_hits and held >= st.places and open_hits > active:
            add = pc.places_per_step
            if led.left_cents is not None:
                add = min(add, max(0, led.left_cents) // self.place_worst)
            if add > 0:
                self.client.update_study(st.study_id, {"total_available_places": st.places + add})
                with transaction(ctx.engine) as s:
                    row = s.get(ProlificStudy, st.internal_name)
                    row.places = st.places + add
                    log_event(s, "prolific_places", study=st.study_id, places=row.places)
                ctx.stats["prolific_places_added"] += add
            else:
                ctx.budget_exhausted = True
                ctx.note("the budget cannot fund another Prolific place: study paused")
                if status == "ACTIVE":
                    self._study_transition(ctx, st, "PAUSE", "PAUSED")
                return
        if status == "UNPUBLISHED" and open_hits:
            self._study_transition(ctx, st, "PUBLISH", "ACTIVE")
        elif status == "PAUSED" and open_hits and not ctx.budget_exhausted:
            self._study_transition(ctx, st, "START", "ACTIVE")

    def _study_transition(self, ctx, st: ProlificStudy, action: str, status: str) -> None:
        try:
            self.client.transition_study(st.study_id, action)
        except BackendError:
            if self.client.get_study(st.study_id).get("status") != status:     # not "already done"
                raise
        with transaction(ctx.engine) as s:
            s.get(ProlificStudy, st.internal_name).status = status
            log_event(s, "prolific_study_" + status.lower(), study=st.study_id)

    # ------------------------------------------------------------ bonuses (the pass's bonus step)
    def pay_bonus(self, worker_id: str, assignment_id: str, bonus_cents: int, reason: str, token: str) -> None:
        """Pay a bonus to participant ``worker_id`` for submission ``assignment_id`` (see
        :mod:`orchestrator.crowd.prolific_store`: every step is recorded before the next call)."""
        if not token.startswith("lpp-"):
            raise BackendError("pay_bonus", REQUEST, "Prolific bonuses are paid per submission "
                                                     "(labelprop records them itself)")
        with read_session(self.engine) as s:
            study = s.execute(select(ProlificStudy.study_id)).scalars().first()
        row = _load(self.engine, ProlificBonusPay, token)
        if row is None:
            before = len(self.client.get_submission(assignment_id).get("bonus_payments") or [])
            with transaction(self.engine) as s:
                if s.get(ProlificBonusPay, token) is None:
                    s.add(ProlificBonusPay(token=token, submission_id=assignment_id, before=before))
            row = _load(self.engine, ProlificBonusPay, token)
        if row.done:
            return
        if row.pay_sent_at is not None:
            now_count = len(self.client.get_submission(assignment_id).get("bonus_payments") or [])
            if now_count > row.before:
                self._bonus_done(token, "paid by an earlier pass (found on the submission)")
                return
            age = (utcnow() - row.pay_sent_at).total_seconds()
            if age < self.cfg.crowd.prolific.bonus_settle_seconds:
                raise BackendError("pay_bonus", INVALID_STATE,
                                   f"a pay call for bonus {token} went out {age:.0f} s ago and is not on the "
                                   f"submission yet; checking again next pass (never paying twice)")
        if row.bulk_id is None:
            bulk = self.client.create_bonus(study, worker_id, bonus_cents)["id"]
            with transaction(self.engine) as s:
                s.get(ProlificBonusPay, token).bulk_id = bulk
                log_event(s, "prolific_bonus_created", token=token, bulk=bulk)
            row.bulk_id = bulk
        with transaction(self.engine) as s:          # recorded BEFORE the non-idempotent call
            s.get(ProlificBonusPay, token).pay_sent_at = utcnow()
        try:
            self.client.pay_bonus(row.bulk_id)
        except PlatformUnavailable as exc:        # sent, answer lost: it may have paid; never call blindly again
            raise BackendError("pay_bonus", INVALID_STATE, f"the pay call for bonus {token} got no answer ({exc}); "
                                                           f"the next pass checks the submission before anything "
                                                           f"else") from None
        self._bonus_done(token, "paid")

    def _bonus_done(self, token: str, how: str) -> None:
        with transaction(self.engine) as s:
            s.get(ProlificBonusPay, token).done = True
            log_event(s, "prolific_bonus_paid", token=token, how=how)


def _factory(campaign_dir, cfg, engine, opts: BackendOptions) -> ProlificBackend:
    from orchestrator.crowd.backends.mturk import MTurkBackend
    from orchestrator.crowd.mturk import make_client, resolve_endpoint

    cc = cfg.crowd
    client = opts.client
    if client is None:
        client = make_client(cc, endpoint_url=resolve_endpoint(cc, opts.endpoint_url, opts.sandbox),
                             profile=opts.profile)
    api = ProlificClient(base_url=opts.extra.get("prolific_api_url") or cc.prolific.api_url)
    return ProlificBackend(MTurkBackend(client, bundled=True), api, cfg, engine)


_factory.fees = PROLIFIC_ACADEMIC
register_backend("prolific")(_factory)
