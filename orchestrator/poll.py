"""`labelprop poll`: one idempotent pass of a real crowd campaign (for cron), and `run`'s loop.

A pass, under an exclusive campaign lock (a second concurrent pass exits at once):

1. create (once) the qualification types and the HIT type (:mod:`orchestrator.posting`);
2. drop held answers older than ``hold_seconds`` (re-ask them);
3. create remote HITs for intents a previous pass recorded but did not create;
4. fetch: ``ListReviewableHITs`` (paginated, per HIT type) gives the HITs that are
   complete or expired; their assignments (``ListAssignmentsForHIT``, all statuses, so
   auto-approved ones are counted) are stored with the raw Answer XML in one
   transaction; reviewable HITs of the HIT type that the campaign never posted are
   logged once and left alone;
5. process HITs in posting order (``crowd.ordered``; otherwise as they complete):
   parse each Answer (xmltodict), score gold, approve or reject, update worker gold
   accuracy, soft-block, hold / record / discard answers (:mod:`orchestrator.quality`),
   decide nodes (accept, reject, split; released questions are re-asked), re-post a HIT
   that expired unanswered (the same intent, attempt + 1, same questions; with
   ``crowd.ordered`` also when it waits behind the head, since that changes no state), then
   :func:`~orchestrator.posting.fill` the free slots -- all in one transaction per batch
   of HITs, so the local state never runs ahead of what is stored;
6. remote effects recorded before they are made: approve / reject (with feedback),
   soft blocks (``AssociateQualificationWithWorker``), creation of the new HITs, and
   deletion of finished HITs.

Crash safety: every local state change is one transaction and every remote effect is
first recorded as intended, then made idempotently (UniqueRequestToken for CreateHIT;
approve/reject/delete answer "already done" states, which are read back), so a pass
killed at any point and rerun posts no duplicate HIT, loses no answer (assignments stay
on the platform until stored, and are stored before they are approved) and never
exceeds the budget (reserved at intent time).

Reproducibility: with ``crowd.ordered = true`` HITs are processed strictly in posting
order and the free slots are refilled after each one, so the sequence of search steps is
a function of the answers alone -- not of when passes run, how many HITs completed in
between, or where a pass was killed.  With error-free workers (and ``min_gold_answers``
at most ``gold_per_hit``, so no answer waits on a worker's later HITs) an interrupted
campaign posts exactly the HITs, accepts exactly the masks and spends exactly the money
of an uninterrupted one with the same seed.

Locking: ``fcntl.flock`` on ``DIR/.labelprop-poll.lock`` (non-blocking); with a
PostgreSQL store also ``pg_try_advisory_lock`` on a key derived from the campaign uid,
so pollers on different machines sharing the database exclude each other too.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import func, select, text

from orchestrator.crowd_store import (OPEN_INTENT, CrowdAnswer, CrowdAssignment, CrowdForeignHit,
                                      CrowdHit, CrowdSetup, CrowdWorker, Gold, HitIntent, HitItem)
from orchestrator.errors import LabelpropError
from orchestrator.mturk import TurkError, call, paginate
from orchestrator.store import (Event, Meta, Question, bulk_insert, bulk_update, get_meta, log_event, read_session,
                                transaction, utcnow)

__all__ = ["poll_once", "CrowdContext", "campaign_lock", "crowd_summary", "LOCK_NAME"]

LOCK_NAME = ".labelprop-poll.lock"
BATCH = 200      # HITs processed per transaction


# ------------------------------------------------------------------------------- lock
@contextmanager
def campaign_lock(campaign_dir: Path, engine=None, key: str = ""):
    """Yield True with the campaign's poll lock held, False (at once) if another pass holds it."""
    path = Path(campaign_dir) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    conn, k = None, None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        if engine is not None and engine.dialect.name == "postgresql":
            # a session-level advisory lock: it guards the store even when two machines poll the
            # same campaign from two directories, and dies with the session if the process is killed
            conn = engine.connect()
            lock_key = int.from_bytes(uuid.uuid5(uuid.NAMESPACE_URL, "labelprop-poll:" + key).bytes[:8],
                                      "big", signed=True)
            got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": lock_key}).scalar()
            conn.commit()
            if not got:
                yield False
                return
            k = lock_key
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield True
    finally:
        if conn is not None:
            if k is not None:
                # the connection goes back to the pool, its session alive: unlock explicitly
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": k})
                conn.commit()
            conn.close()
        os.close(fd)          # releases the flock


# ------------------------------------------------------------------------------- context
class CrowdContext:
    """Everything a pass needs: config, store, search, client, asset store, campaign uid."""

    def __init__(self, campaign_dir, *, db=None, endpoint_url=None, sandbox=None, profile=None, client=None):
        from orchestrator.assets import asset_store_from_config
        from orchestrator.campaign import CampaignSearch
        from orchestrator.mturk import make_client, resolve_endpoint
        from orchestrator.posting import hit_cost_cents

        self.dir = Path(campaign_dir)
        self.cs = CampaignSearch(self.dir, db)
        self.cfg = self.cs.cfg
        self.engine = self.cs.engine
        cc = self.cfg.crowd
        if cc.backend == "simulated":
            raise LabelpropError(f"{self.dir / 'campaign.toml'}: [crowd] backend is 'simulated'; `poll` talks "
                                 f"to MTurk or the crowd server (backend = \"mturk\" or \"server\"); "
                                 f"use `labelprop run` for simulated annotators")
        endpoint = resolve_endpoint(cc, endpoint_url, sandbox)
        self.client = client or make_client(cc, endpoint_url=endpoint, profile=profile)
        self.source = "server" if cc.backend == "server" else "mturk"
        self.assets = asset_store_from_config(self.dir, dataclasses.replace(cc, endpoint_url=endpoint))
        self.hit_cost = hit_cost_cents(cc)
        self.budget_exhausted = False
        self.messages: list[str] = []
        self.stats: dict[str, int] = defaultdict(int)
        self.uid = self._uid()
        self.image_root = self._image_root()
        with read_session(self.engine) as s:
            golds = s.execute(select(Gold.id, Gold.label).where(Gold.pool == "hit").order_by(Gold.id)).all()
        self.gold_yes = [g for g, lb in golds if lb]
        self.gold_no = [g for g, lb in golds if not lb]
        self.has_gold = bool(golds) and cc.gold_per_hit > 0
        if cc.gold_per_hit > 0 and not golds:
            raise LabelpropError(f"{self.dir}: crowd.gold_per_hit = {cc.gold_per_hit} but the campaign has no "
                                 f"gold questions; run `labelprop gold {self.dir} ...` first "
                                 f"(or set gold_per_hit = 0: no quality control)")
        self.hit_type_id = ""

    def note(self, msg: str) -> None:
        self.messages.append(msg)

    def _uid(self) -> str:
        with read_session(self.engine) as s:
            uid = get_meta(s, "crowd.uid")
        if uid:
            return uid
        with transaction(self.engine) as s:
            uid = get_meta(s, "crowd.uid")
            if not uid:
                uid = uuid.uuid4().hex[:16]
                s.add(Meta(key="crowd.uid", value=uid))
        return uid

    def _image_root(self) -> Path:
        with read_session(self.engine) as s:
            row = s.execute(select(Event.payload).where(Event.kind == "ingest").order_by(Event.id.desc())
                            .limit(1)).scalar()
        root = json.loads(row or "{}").get("sources", {}).get("image_root")
        if not root:
            raise LabelpropError(f"{self.dir}: no images ingested; crowd campaigns need COCO predictions "
                                 f"(labelprop ingest DIR --results ... --images ... --image-root ...)")
        return Path(root)

    def reload_search(self) -> None:
        self.cs.reload()


# ------------------------------------------------------------------------------- steps
def expire_holds(ctx) -> int:
    hold = ctx.cfg.crowd.qualification.hold_seconds
    if not hold:
        return 0
    cutoff = utcnow() - __import__("datetime").timedelta(seconds=hold)
    try:
        with transaction(ctx.engine) as s:
            rows = s.execute(select(CrowdAnswer.id, CrowdAnswer.question_id).where(
                CrowdAnswer.status == "held", CrowdAnswer.created_at < cutoff)).all()
            if not rows:
                return 0
            s.execute(bulk_update(CrowdAnswer).where(CrowdAnswer.id.in_([r[0] for r in rows])).values(status="discarded"))
            ctx.cs.release_in(s, [r[1] for r in rows], reason="hold_expired")
            log_event(s, "holds_expired", count=len(rows))
    except BaseException:
        ctx.reload_search()
        raise
    return len(rows)


def fetch(ctx) -> int:
    """Store the assignments of every reviewable HIT of the campaign; returns how many HITs."""
    with read_session(ctx.engine) as s:
        open_hits = {h: (i, a) for i, a, h in s.execute(select(HitIntent.id, HitIntent.attempt, HitIntent.hit_id)
                     .where(HitIntent.status == "created", HitIntent.reviewable == False)).all()}  # noqa: E712
        types = set(s.execute(select(HitIntent.hit_type_id).where(HitIntent.status == "created")).scalars())
        known = set(s.execute(select(CrowdHit.hit_id)).scalars())
        foreign_seen = set(s.execute(select(CrowdForeignHit.hit_id)).scalars())
    if not open_hits:
        return 0
    ready, foreign = [], []
    for t in sorted(types):
        for h in paginate(ctx.client, "ListReviewableHITs", "HITs", HITTypeId=t, Status="Reviewable"):
            hid = h["HITId"]
            if hid in open_hits:
                ready.append(hid)
            elif hid not in known and hid not in foreign_seen:
                foreign.append((hid, h.get("RequesterAnnotation")))

    def assignments(hid):
        return hid, list(paginate(ctx.client, "ListAssignmentsForHIT", "Assignments", HITId=hid,
                                  AssignmentStatuses=["Submitted", "Approved", "Rejected"]))

    with ThreadPoolExecutor(max_workers=ctx.cfg.crowd.concurrency) as pool:
        fetched = list(pool.map(assignments, ready))
    with transaction(ctx.engine) as s:
        have = set()
        ids = [a["AssignmentId"] for _, lst in fetched for a in lst]
        for i in range(0, len(ids), 5000):
            have |= set(s.execute(select(CrowdAssignment.assignment_id)
                                  .where(CrowdAssignment.assignment_id.in_(ids[i:i + 5000]))).scalars())
        rows = []
        for hid, lst in fetched:
            iid, attempt = open_hits[hid]
            for a in lst:
                if a["AssignmentId"] in have:
                    continue
                at, st = a.get("AcceptTime"), a.get("SubmitTime")
                at = at.timestamp() if hasattr(at, "timestamp") else at
                st = st.timestamp() if hasattr(st, "timestamp") else st
                rows.append({"assignment_id": a["AssignmentId"], "hit_id": hid, "intent_id": iid,
                             "attempt": attempt, "worker_id": a.get("WorkerId", ""),
                             "remote_status": a.get("AssignmentStatus", "Submitted"),
                             "answer_xml": a.get("Answer") or "", "accept_time": at, "submit_time": st,
                             "seconds": (st - at) if (at is not None and st is not None) else None,
                             "fetched_at": utcnow()})
        bulk_insert(s, CrowdAssignment, rows)
        if ready:
            ids = [open_hits[h][0] for h in ready]
            for i in range(0, len(ids), 5000):
                s.execute(bulk_update(HitIntent).where(HitIntent.id.in_(ids[i:i + 5000])).values(reviewable=True))
        for hid, ann in foreign:
            s.add(CrowdForeignHit(hit_id=hid, annotation=ann))
            log_event(s, "foreign_hit", hit=hid, annotation=ann,
                      note="a reviewable HIT of the campaign's HIT type that it never posted: left alone")
        ctx.stats["assignments_fetched"] += len(rows)
        ctx.stats["foreign_hits"] += len(foreign)
    return len(ready)


def _block_worker(ctx, s, w: CrowdWorker, reason: str) -> None:
    w.blocked, w.trusted, w.blocked_reason = True, False, reason
    held = s.execute(select(CrowdAnswer.id, CrowdAnswer.question_id).where(
        CrowdAnswer.worker_id == w.worker_id, CrowdAnswer.status.in_(["held", "pooled"]))).all()
    if held:
        s.execute(bulk_update(CrowdAnswer).where(CrowdAnswer.id.in_([r[0] for r in held])).values(status="discarded"))
        ctx.cs.release_in(s, [r[1] for r in held if r[1] is not None], reason="worker_blocked")
    rec = s.execute(select(CrowdAnswer.id, CrowdAnswer.question_id, Question.mask_id)
                    .join(Question, Question.id == CrowdAnswer.question_id)
                    .where(CrowdAnswer.worker_id == w.worker_id, CrowdAnswer.status == "recorded",
                           Question.status == "answered")).all()
    n_rec = 0
    if rec:
        final = ctx.cs.search.accepted_mask() | ctx.cs.search.rejected_mask()
        drop = [(a, q) for a, q, m in rec if not final[m]]
        if drop:
            s.execute(bulk_update(CrowdAnswer).where(CrowdAnswer.id.in_([a for a, _ in drop])).values(status="discarded"))
            s.execute(bulk_update(Question).where(Question.id.in_([q for _, q in drop])).values(status="discarded"))
            ctx.cs.reload_in(s)
            n_rec = len(drop)
    log_event(s, "worker_blocked", worker=w.worker_id, gold_correct=w.gold_correct, gold_total=w.gold_total,
              held_discarded=len(held), recorded_discarded=n_rec, reason=reason)
    ctx.stats["workers_blocked"] += 1


def _process_intent(ctx, s, it: HitIntent) -> None:
    from orchestrator.campaign import AnswerIn
    from orchestrator.posting import annotation_for, assignment_cost_cents, token_for
    from orchestrator.quality import judge_assignment, parse_answers, score_gold, worker_state

    cc = ctx.cfg.crowd
    q = cc.qualification
    asg = s.execute(select(CrowdAssignment).where(CrowdAssignment.intent_id == it.id,
                                                  CrowdAssignment.attempt == it.attempt,
                                                  CrowdAssignment.processed == False)  # noqa: E712
                    .order_by(CrowdAssignment.submit_time, CrowdAssignment.assignment_id)).scalars().all()
    items = s.execute(select(HitItem).where(HitItem.intent_id == it.id)).scalars().all()
    if not asg:
        # expired with nobody working on it: the same questions again, or give them back
        if it.attempt < cc.max_reposts:
            it.attempt += 1
            it.status, it.hit_id, it.reviewable, it.first_try_at = "intent", None, False, None
            it.token = token_for(ctx.uid, it.id, it.attempt)
            log_event(s, "hit_reposted", intent=it.id, attempt=it.attempt,
                      annotation=annotation_for(ctx.uid, it.id, it.attempt))
            ctx.stats["hits_reposted"] += 1
        else:
            it.status, it.reviewed_at = "abandoned", utcnow()
            ctx.cs.release_in(s, [i.question_id for i in items if i.question_id is not None], reason="hit_abandoned")
            log_event(s, "hit_abandoned", intent=it.id, attempts=it.attempt + 1)
        return
    by_ident = {i.identifier: i for i in items}
    gold_ids = [i.gold_id for i in items if i.gold_id is not None]
    glabel = dict(s.execute(select(Gold.id, Gold.label).where(Gold.id.in_(gold_ids))).all()) if gold_ids else {}
    gold_items = {i.identifier: glabel[i.gold_id] for i in items if i.gold_id is not None}
    cost = assignment_cost_cents(cc)
    replicate = cc.assignments_per_hit > 1
    to_record: list = []
    pooled: list = []
    answer_rows: list[dict] = []
    now = utcnow()
    for a in asg:
        w = s.get(CrowdWorker, a.worker_id)
        if w is None:
            w = CrowdWorker(worker_id=a.worker_id)
            s.add(w)
        readable, ans = True, {}
        try:
            ans = parse_answers(a.answer_xml)
        except ValueError as exc:
            readable = False
            log_event(s, "answer_unreadable", assignment=a.assignment_id, hit=a.hit_id, error=str(exc)[:300],
                      policy="approved (not the worker's fault); its questions are asked again")
            ctx.stats["answers_unreadable"] += 1
        unknown = sorted(set(ans) - set(by_ident))
        if unknown:
            log_event(s, "unknown_identifiers", assignment=a.assignment_id, hit=a.hit_id, count=len(unknown),
                      sample=unknown[:5], policy="ignored")
            ctx.stats["unknown_identifiers"] += len(unknown)
        missing = [k for k in by_ident if k not in ans]
        if readable and missing:
            log_event(s, "missing_answers", assignment=a.assignment_id, hit=a.hit_id, count=len(missing),
                      policy="gold counts as wrong; questions are asked again")
        gc, gt = score_gold(ans, gold_items) if readable else (0, 0)
        v = judge_assignment(q, gold_correct=gc, gold_total=gt, seconds=a.seconds, n_items=len(items),
                             remote_status=a.remote_status, readable=readable)
        a.decision, a.feedback, a.flagged_fast = v.decision, v.feedback, v.flagged_fast
        a.cost_cents = cost
        a.gold_correct, a.gold_total, a.n_answers = gc, gt, len(ans)
        a.outcome = "ok" if readable else "invalid"
        if a.remote_status in ("Approved", "Rejected"):
            a.remote_done, a.final_status = True, a.remote_status
        a.processed, a.processed_at = True, now
        if v.flagged_fast:
            log_event(s, "assignment_fast", assignment=a.assignment_id, worker=a.worker_id,
                      seconds_per_question=v.seconds_per_question, rejected=v.decision == "reject")
        w.assignments += 1
        w.approved += v.decision == "approve"
        w.rejected += v.decision == "reject"
        w.flagged += bool(v.flagged_fast)
        w.gold_correct += gc
        w.gold_total += gt
        state = worker_state(q, w.gold_correct, w.gold_total, ctx.has_gold)
        if state == "block" and not w.blocked:
            _block_worker(ctx, s, w, f"gold accuracy {w.gold_correct}/{w.gold_total} below "
                                     f"{q.gold_min_accuracy:.2f}")
        elif state == "trusted" and not w.trusted and not w.blocked and not replicate:
            w.trusted = True
            held = s.execute(select(CrowdAnswer, Question.status).join(Question, Question.id == CrowdAnswer.question_id)
                             .where(CrowdAnswer.worker_id == w.worker_id, CrowdAnswer.status == "held")).all()
            recorded_q = {a.question_id for a in to_record}
            for h, qstatus in held:
                if qstatus != "pending" or h.question_id in recorded_q:
                    h.status = "discarded"      # answered meanwhile (re-posted), or re-asked
                    continue
                h.status = "recorded"
                recorded_q.add(h.question_id)
                to_record.append(AnswerIn(h.question_id, h.label, w.worker_id, h.seconds, ctx.source))
            held = [h for h, _ in held]
            if held:
                log_event(s, "worker_trusted", worker=w.worker_id, released=len(held))
        spq = v.seconds_per_question
        for ident, val in ans.items():
            item = by_ident.get(ident)
            if item is None:
                continue
            label = {"yes": 1, "no": 0}.get(val, -1)
            if item.gold_id is not None:
                st, correct = "gold", (label == gold_items[ident])
            else:
                correct = None
                if w.blocked or v.decision == "reject" or label < 0:
                    st = "discarded"
                elif replicate:
                    st = "pooled"
                    pooled.append((item.question_id, w.worker_id, label))
                elif w.trusted:
                    st = "recorded"
                    to_record.append(AnswerIn(item.question_id, label, w.worker_id, spq, ctx.source))
                else:
                    st = "held"
            answer_rows.append({"assignment_id": a.assignment_id, "worker_id": w.worker_id, "intent_id": it.id,
                                "identifier": ident, "question_id": item.question_id, "gold_id": item.gold_id,
                                "label": label, "correct": correct, "status": st, "seconds": spq,
                                "created_at": now})
        ctx.stats["assignments_processed"] += 1
    bulk_insert(s, CrowdAnswer, answer_rows)
    if replicate and pooled:
        blocked = set(s.execute(select(CrowdWorker.worker_id).where(CrowdWorker.blocked == True)).scalars())  # noqa: E712
        rows = [(f"q{qid}", wid, lb) for qid, wid, lb in pooled if wid not in blocked]
        if cc.aggregation == "dawid-skene":
            hist = s.execute(select(CrowdAnswer.question_id, CrowdAnswer.gold_id, CrowdAnswer.worker_id,
                                    CrowdAnswer.label).where(CrowdAnswer.status.in_(["pooled", "gold"]),
                                                             CrowdAnswer.label >= 0)).all()
            rows = [(f"q{qi}" if qi is not None else f"g{gi}", wid, lb) for qi, gi, wid, lb in hist
                    if wid not in blocked]
        from orchestrator.quality import aggregate

        agg = aggregate(rows, cc.aggregation)
        mine = {qid for qid, _, _ in pooled}
        for qid in sorted(mine):
            if f"q{qid}" in agg:
                to_record.append(AnswerIn(qid, agg[f"q{qid}"], cc.aggregation, None, ctx.source))
        log_event(s, "aggregated", intent=it.id, method=cc.aggregation, questions=len(mine))
    ctx.cs.record_in(s, to_record)
    # questions left without an answer are asked again -- unless some worker's answer to them is
    # held (probation) or another open HIT shows them too (held questions re-posted)
    qids = [i.question_id for i in items if i.question_id is not None]
    keep = set(s.execute(select(CrowdAnswer.question_id).where(CrowdAnswer.question_id.in_(qids),
                                                              CrowdAnswer.status == "held")).scalars())
    keep |= set(s.execute(select(HitItem.question_id).join(HitIntent, HitIntent.id == HitItem.intent_id)
                          .where(HitItem.question_id.in_(qids), HitIntent.status.in_(OPEN_INTENT),
                                 HitIntent.id != it.id)).scalars())
    rel = [q for q in qids if q not in keep]
    n = ctx.cs.release_in(s, rel, reason="not_answered")
    ctx.stats["questions_reasked"] += n
    it.status, it.reviewed_at = "reviewed", now
    ctx.stats["hits_processed"] += 1


def _unanswered(s, it: HitIntent) -> bool:
    """A reviewable HIT with no assignment to process: it expired unanswered."""
    return s.execute(select(CrowdAssignment.assignment_id).where(
        CrowdAssignment.intent_id == it.id, CrowdAssignment.attempt == it.attempt,
        CrowdAssignment.processed == False).limit(1)).first() is None  # noqa: E712


def process(ctx) -> int:
    """Process reviewable HITs (in posting order when ``crowd.ordered``) and refill the slots."""
    from orchestrator.posting import fill

    total = 0
    while True:
        n = 0
        try:
            with transaction(ctx.engine) as s:
                intents = s.execute(select(HitIntent).where(HitIntent.status.in_(OPEN_INTENT))
                                    .order_by(HitIntent.id)).scalars().all()
                waiting = False     # ordered: an earlier HIT is not processed yet
                for it in intents:
                    if it.status != "created" or not it.reviewable:
                        waiting = waiting or ctx.cfg.crowd.ordered
                        continue
                    if waiting:
                        # behind the head only HITs that expired unanswered move on: re-posting them
                        # changes neither the search nor the answers, so the order is kept, and
                        # they do not sit dead in their slots until the head is answered
                        if it.attempt < ctx.cfg.crowd.max_reposts and _unanswered(s, it):
                            _process_intent(ctx, s, it)
                            n += 1
                            if n >= BATCH:
                                break
                        continue
                    _process_intent(ctx, s, it)
                    ctx.stats["intents_made"] += fill(ctx, s)
                    n += 1
                    if n >= BATCH:
                        break   # a batch is full
                    if it.status == "intent" and ctx.cfg.crowd.ordered:
                        waiting = True  # the head HIT was re-posted: it stays the head
                if n == 0:
                    ctx.stats["intents_made"] += fill(ctx, s)
        except BaseException:
            ctx.reload_search()
            raise
        total += n
        if n < BATCH:
            return total


def settle(ctx) -> int:
    """Make the approve / reject calls decided by :func:`process`."""
    with read_session(ctx.engine) as s:
        todo = s.execute(select(CrowdAssignment.assignment_id, CrowdAssignment.decision, CrowdAssignment.feedback)
                         .where(CrowdAssignment.processed == True, CrowdAssignment.remote_done == False)  # noqa: E712
                         ).all()
    if not todo:
        return 0

    def one(job):
        aid, decision, feedback = job
        try:
            if decision == "reject":
                call(ctx.client, "RejectAssignment", AssignmentId=aid, RequesterFeedback=feedback or "Rejected.")
                return aid, "Rejected", None
            call(ctx.client, "ApproveAssignment", AssignmentId=aid)
            return aid, "Approved", None
        except TurkError as exc:
            if exc.turk_code == "AWS.MechanicalTurk.InvalidAssignmentState":
                try:      # already approved or rejected (auto-approval, or a call that died after succeeding)
                    st = call(ctx.client, "GetAssignment", AssignmentId=aid)["Assignment"]["AssignmentStatus"]
                    if st in ("Approved", "Rejected"):
                        return aid, st, None
                except TurkError as exc2:
                    return aid, None, str(exc2)
            return aid, None, str(exc)

    with ThreadPoolExecutor(max_workers=ctx.cfg.crowd.concurrency) as pool:
        results = list(pool.map(one, todo))
    with transaction(ctx.engine) as s:
        for aid, final, err in results:
            if final is None:
                log_event(s, "settle_failed", assignment=aid, error=err)
                ctx.note(f"assignment {aid}: {err}")
                continue
            s.execute(bulk_update(CrowdAssignment).where(CrowdAssignment.assignment_id == aid)
                      .values(remote_done=True, final_status=final))
    ctx.stats["assignments_settled"] += sum(1 for r in results if r[1])
    return len(results)


def push_blocks(ctx) -> int:
    with read_session(ctx.engine) as s:
        todo = list(s.execute(select(CrowdWorker.worker_id).where(
            CrowdWorker.blocked == True, CrowdWorker.block_remote_done == False)).scalars())  # noqa: E712
        qual = s.get(CrowdSetup, "block_qual").remote_id
    done = []
    for wid in todo:
        try:
            call(ctx.client, "AssociateQualificationWithWorker", QualificationTypeId=qual, WorkerId=wid,
                 IntegerValue=1, SendNotification=False)
            done.append(wid)
        except TurkError as exc:
            if exc.turk_code == "AWS.MechanicalTurk.WorkerDoesNotExist":
                done.append(wid)
            ctx.note(f"worker {wid}: soft block failed: {exc}")
    if done:
        with transaction(ctx.engine) as s:
            s.execute(bulk_update(CrowdWorker).where(CrowdWorker.worker_id.in_(done)).values(block_remote_done=True))
    return len(done)


# ------------------------------------------------------------------------------- summary
def crowd_summary(engine, cfg, cs=None) -> dict:
    """Crowd counters for `status`, `poll --json`, `run` and the report (derived from rows)."""
    from orchestrator.posting import committed_cents, spent_cents

    with read_session(engine) as s:
        by_status = dict(s.execute(select(HitIntent.status, func.count()).group_by(HitIntent.status)).all())
        n_asg = int(s.execute(select(func.count()).select_from(CrowdAssignment)).scalar_one())
        decided = dict(s.execute(select(CrowdAssignment.final_status, func.count())
                                 .group_by(CrowdAssignment.final_status)).all())
        ans = dict(s.execute(select(CrowdAnswer.status, func.count()).group_by(CrowdAnswer.status)).all())
        spent, committed = spent_cents(s), committed_cents(s)
        workers = s.execute(select(CrowdWorker)).scalars().all()
        s.expunge_all()
        secs = defaultdict(list)     # seconds per question of each assignment
        for wid, sec, n in s.execute(select(CrowdAssignment.worker_id, CrowdAssignment.seconds,
                                            CrowdAssignment.n_answers)
                                     .where(CrowdAssignment.seconds.is_not(None),
                                            CrowdAssignment.processed == True)).all():  # noqa: E712
            secs[wid].append(sec / max(n, 1))
        gold = int(s.execute(select(func.count()).select_from(Gold)).scalar_one())
        foreign = int(s.execute(select(func.count()).select_from(CrowdForeignHit)).scalar_one())
    import statistics

    wl = [{"worker_id": w.worker_id, "assignments": w.assignments, "approved": w.approved, "rejected": w.rejected,
           "gold_correct": w.gold_correct, "gold_total": w.gold_total,
           "gold_accuracy": round(w.gold_correct / w.gold_total, 4) if w.gold_total else None,
           "median_seconds_per_question": round(statistics.median(secs[w.worker_id]), 3) if secs[w.worker_id] else None,
           "flagged": w.flagged, "trusted": w.trusted, "blocked": w.blocked} for w in workers]
    wl.sort(key=lambda r: (-r["assignments"], r["worker_id"]))
    budget = int(round(cfg.crowd.budget_usd * 100))
    return {"hits_in_flight": int(sum(by_status.get(k, 0) for k in OPEN_INTENT)),
            "hits_by_status": {k: int(v) for k, v in sorted(by_status.items())},
            "hits_posted": int(sum(by_status.values())),
            "assignments": n_asg, "assignments_approved": int(decided.get("Approved", 0)),
            "assignments_rejected": int(decided.get("Rejected", 0)),
            "crowd_answers": {k: int(v) for k, v in sorted(ans.items())},
            "spent_usd": spent / 100, "committed_usd": committed / 100,
            "budget_usd": budget / 100 if budget else None,
            "budget_left_usd": (budget - committed) / 100 if budget else None,
            "gold_questions": gold, "foreign_hits": foreign, "workers": wl}


# ------------------------------------------------------------------------------- the pass
def poll_once(campaign_dir, *, db=None, endpoint_url=None, sandbox=None, profile=None, client=None) -> dict:
    """One pass (see the module docstring); returns a summary dict (``locked``: another pass runs)."""
    from orchestrator.config import load_config
    from orchestrator.posting import create_hits, dispose_hits, ensure_setup

    d = Path(campaign_dir)
    cfg = load_config(d)
    t0 = time.perf_counter()
    with campaign_lock(d, None if not cfg.store.url.startswith("postgresql") else _engine(d, db),
                       key=str(d.resolve())) as ok:
        if not ok:
            return {"campaign": str(d), "locked": True,
                    "message": f"another `labelprop poll` holds the lock on {d}; nothing done"}
        timings: dict[str, float] = {}

        def step(name, fn, *args):
            t = time.perf_counter()
            r = fn(*args)
            timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - t, 3)
            return r

        ctx = step("load", lambda: CrowdContext(d, db=db, endpoint_url=endpoint_url, sandbox=sandbox,
                                                profile=profile, client=client))
        ctx.hit_type_id = step("setup", ensure_setup, ctx)
        step("expire_holds", expire_holds, ctx)
        ctx.stats["hits_created"] += step("create", create_hits, ctx)
        step("fetch", fetch, ctx)
        step("process", process, ctx)
        step("settle", settle, ctx)
        step("blocks", push_blocks, ctx)
        ctx.stats["hits_created"] += step("create", create_hits, ctx)
        ctx.stats["hits_disposed"] += step("dispose", dispose_hits, ctx)
        out = {"campaign": str(d), "locked": False, **ctx.cs.summary(),
               **crowd_summary(ctx.engine, ctx.cfg), "pass": dict(ctx.stats),
               "budget_exhausted": ctx.budget_exhausted, "messages": ctx.messages,
               "seconds": round(time.perf_counter() - t0, 3), "timings": timings}
        out["finished"] = bool(out["done"] and out["hits_in_flight"] == 0)
        out["stopped"] = out["finished"] or (ctx.budget_exhausted and out["hits_in_flight"] == 0)
        ctx.engine.dispose()
        return out


def _engine(d, db):
    from orchestrator.store import open_store

    return open_store(d, db)
