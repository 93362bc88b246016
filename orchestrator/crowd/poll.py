"""`labelprop poll`: one idempotent pass of a crowd campaign (for cron), and `run`'s loop.

Every backend goes through this pass (:mod:`orchestrator.crowd.backends`): MTurk, the bundled
crowd server, and the simulated crowd.  A pass, under an exclusive campaign lock (a second
concurrent pass exits at once):

1. setup (:func:`~orchestrator.crowd.posting.ensure_setup`): the qualifications and the HIT type the
   configuration describes (a new HIT type when it changed; open HITs of the old one expired);
2. drop held answers older than ``hold_seconds`` (re-ask them);
3. publish HITs for intents a previous pass recorded but did not create;
4. fetch: the backend lists the HITs that are complete or expired; their submissions (all
   statuses, so auto-approved ones are counted) are stored with the raw answer in one
   transaction; reviewable HITs of the campaign's HIT types it never posted are logged once
   and left alone; a worker seen for the first time gets their qualification-test score as
   the start of their gold record;
5. process HITs in posting order (``crowd.ordered``; otherwise as they complete): quality
   control is one pure function (:func:`orchestrator.crowd.quality.review_hit`: verdicts, answer
   dispositions, worker transitions), which the pass applies; then nodes are decided
   (accept, reject, split; released questions are re-asked), a HIT that expired unanswered
   is re-posted (the same intent, attempt + 1, same questions, under the current HIT type;
   with ``crowd.ordered`` also when it waits behind the head, since that changes no state),
   and :func:`~orchestrator.crowd.posting.fill` refills the free slots -- all in one transaction
   per batch of HITs, so the local state never runs ahead of what is stored.  With
   replication the aggregator (crowd-kit) is fitted once per batch;
6. remote effects recorded before they are made: approve / reject (with feedback), soft
   blocks, bonuses, creation of the new HITs, deletion of finished HITs;
7. answer-quality signals (agreement of each answer with its cluster) for the answers
   recorded this pass.

Crash safety: every local state change is one transaction and every remote effect is first
recorded as intended, then made idempotently (publish tokens; approve / reject / delete answer
"already done" states, which are read back; bonuses carry a token), so a pass killed at any
point and rerun posts no duplicate HIT, loses no answer (submissions stay on the platform until
stored, and are stored before they are approved), pays nothing twice and never exceeds the
budget (reserved at intent time).

Reproducibility: with ``crowd.ordered = true`` HITs are processed strictly in posting order and
the free slots are refilled after each one, so the sequence of search steps is a function of the
answers alone -- not of when passes run, how many HITs completed in between, or where a pass was
killed.  With error-free workers an interrupted campaign posts exactly the HITs, accepts exactly
the masks and spends exactly the money of an uninterrupted one with the same seed, and the
simulated backend decides exactly what the HTTP path decides.

Locking: ``fcntl.flock`` on ``DIR/.labelprop-poll.lock`` (non-blocking); with a PostgreSQL store
also ``pg_try_advisory_lock`` on a key derived from the campaign, so pollers on different machines
sharing the database exclude each other too.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
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

from orchestrator.crowd.backends import BackendOptions, make_backend
from orchestrator.crowd.backends.base import INVALID_STATE, NOT_FOUND, WORKER_NOT_FOUND, BackendError
from orchestrator.crowd.crowd_store import (OPEN_INTENT, CrowdAnswer, CrowdAssignment, CrowdBonus, CrowdForeignHit,
                                      CrowdHit, CrowdSetup, CrowdWorker, Gold, HitIntent, HitItem)
from orchestrator.errors import LabelpropError
from orchestrator.campaign.store import (Event, Meta, Question, bulk_insert, bulk_update, get_meta, log_event, read_session,
                                transaction, utcnow)

__all__ = ["poll_once", "CrowdContext", "campaign_lock", "crowd_summary", "LOCK_NAME", "record_bonus"]

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
    """Everything a pass needs: config, store, search, backend, asset store, campaign uid."""

    def __init__(self, campaign_dir, *, db=None, options: BackendOptions | None = None):
        from orchestrator.crowd.assets import asset_store_from_config
        from orchestrator.campaign.campaign import CampaignSearch
        from orchestrator.crowd.posting import hit_cost_cents

        self.dir = Path(campaign_dir)
        self.cs = CampaignSearch(self.dir, db)
        self.cfg = self.cs.cfg
        self.engine = self.cs.engine
        cc = self.cfg.crowd
        opts = options or BackendOptions()
        for k, v in opts.extra.get("crowd", {}).items():      # e.g. run --questions-per-step
            setattr(cc, k, v)
        self.backend = make_backend(self.dir, self.cfg, self.engine, opts)
        self.source = self.backend.source
        self.concurrency = getattr(self.backend, "concurrency", None) or cc.concurrency
        self.assets = None
        self.image_root = None
        if self.backend.needs_images:
            endpoint = getattr(self.backend, "endpoint", "") or cc.endpoint_url
            self.assets = asset_store_from_config(self.dir, dataclasses.replace(cc, endpoint_url=endpoint),
                                                  mirror=self.backend.asset_mirror())
            self.image_root = self._image_root()
        self.hit_cost = hit_cost_cents(self)
        self.budget_exhausted = False
        self.stalled: str | None = None
        self.messages: list[str] = []
        self.stats: dict[str, int] = defaultdict(int)
        self.urls_ok: set[str] = set()
        self.url_dirs_ok: set[str] = set()
        self.uid = self._uid()
        with read_session(self.engine) as s:
            golds = s.execute(select(Gold.id, Gold.label).where(Gold.pool == "hit").order_by(Gold.id)).all()
        self.gold_yes = [g for g, lb in golds if lb]
        self.gold_no = [g for g, lb in golds if not lb]
        self.has_gold = bool(golds) and cc.gold_per_hit > 0
        if cc.gold_per_hit > 0 and not golds and self.backend.needs_images:
            raise LabelpropError(f"{self.dir}: crowd.gold_per_hit = {cc.gold_per_hit} but the campaign has no "
                                 f"gold questions; run `labelprop gold {self.dir} ...` first "
                                 f"(or set gold_per_hit = 0: no quality control)")
        self.hit_type_id = ""
        self.test_qual = ""
        self.block_qual = ""
        self.task_type = None
        self.eligible_workers = None

    def note(self, msg: str) -> None:
        if msg not in self.messages:
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

    def close(self) -> None:
        self.backend.close()
        self.engine.dispose()


# ------------------------------------------------------------------------------- steps
def expire_holds(ctx) -> int:
    hold = ctx.cfg.crowd.qualification.hold_seconds
    if not hold:
        return 0
    cutoff = utcnow() - _dt.timedelta(seconds=hold)
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
    """Store the submissions of every reviewable HIT of the campaign; returns how many HITs."""
    with read_session(ctx.engine) as s:
        open_hits = {h: (i, a) for i, a, h in s.execute(select(HitIntent.id, HitIntent.attempt, HitIntent.hit_id)
                     .where(HitIntent.status == "created", HitIntent.reviewable == False)).all()}  # noqa: E712
        types = set(s.execute(select(HitIntent.hit_type_id).where(HitIntent.status == "created")).scalars())
        known = set(s.execute(select(CrowdHit.hit_id)).scalars())
        foreign_seen = set(s.execute(select(CrowdForeignHit.hit_id)).scalars())
    if not open_hits:
        return 0
    ready, foreign = [], []
    for ref in ctx.backend.list_ready(types):
        if ref.task_id in open_hits:
            ready.append(ref.task_id)
        elif ref.task_id not in known and ref.task_id not in foreign_seen:
            foreign.append((ref.task_id, ref.annotation))

    with ThreadPoolExecutor(max_workers=ctx.concurrency) as pool:
        fetched = list(pool.map(lambda hid: (hid, ctx.backend.list_submissions(hid)), ready))
    credit = _test_credit(ctx, {a.worker_id for _, lst in fetched for a in lst})
    with transaction(ctx.engine) as s:
        have = set()
        ids = [a.assignment_id for _, lst in fetched for a in lst]
        for i in range(0, len(ids), 5000):
            have |= set(s.execute(select(CrowdAssignment.assignment_id)
                                  .where(CrowdAssignment.assignment_id.in_(ids[i:i + 5000]))).scalars())
        rows = []
        for hid, lst in fetched:
            iid, attempt = open_hits[hid]
            for a in lst:
                if a.assignment_id in have:
                    continue
                at, st = a.accept_time, a.submit_time
                rows.append({"assignment_id": a.assignment_id, "hit_id": hid, "intent_id": iid,
                             "attempt": attempt, "worker_id": a.worker_id, "remote_status": a.status,
                             "answer_xml": a.raw_answer, "accept_time": at, "submit_time": st,
                             "seconds": (st - at) if (at is not None and st is not None) else None,
                             "fetched_at": utcnow()})
        bulk_insert(s, CrowdAssignment, rows)
        for wid, (correct, total, score) in credit.items():
            if s.get(CrowdWorker, wid) is None:
                s.add(CrowdWorker(worker_id=wid, gold_correct=correct, gold_total=total, test_credit=total))
                log_event(s, "worker_test_credit", worker=wid, score=score, gold_correct=correct, gold_total=total)
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


def _test_credit(ctx, workers: set[str]) -> dict[str, tuple[int, int, int]]:
    """New workers' qualification-test scores as the start of their gold record:
    ``{worker: (correct, questions, score)}``."""
    q = ctx.cfg.crowd.qualification
    if not (workers and ctx.test_qual and q.enabled and q.test_counts_as_gold and ctx.has_gold):
        return {}
    with read_session(ctx.engine) as s:
        known = set(s.execute(select(CrowdWorker.worker_id).where(CrowdWorker.worker_id.in_(sorted(workers))))
                    .scalars())
    new = workers - known
    if not new:
        return {}
    from orchestrator.crowd.posting import test_size

    n = test_size(ctx)
    if not n:
        return {}
    scores = ctx.backend.qualification_scores(ctx.test_qual)
    return {w: (int(round(min(100, max(0, scores[w])) * n / 100)), n, scores[w]) for w in new if w in scores}


def _block_effects(ctx, s, wid: str, transition, n_earlier: int) -> None:
    """A worker was soft-blocked: their recorded answers about masks whose node is still open are
    discarded (their nodes ask again); decided nodes stay decided."""
    rec = s.execute(select(CrowdAnswer.id, CrowdAnswer.question_id, Question.mask_id)
                    .join(Question, Question.id == CrowdAnswer.question_id)
                    .where(CrowdAnswer.worker_id == wid, CrowdAnswer.status == "recorded",
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
    log_event(s, "worker_blocked", worker=wid, gold_correct=transition.gold_correct,
              gold_total=transition.gold_total, held_discarded=n_earlier, recorded_discarded=n_rec,
              reason=transition.reason)
    ctx.stats["workers_blocked"] += 1


def _can_repost(ctx, it: HitIntent) -> bool:
    return bool(it.retired) or it.reposts < ctx.cfg.crowd.max_reposts


def _repost_or_abandon(ctx, s, it: HitIntent, items) -> None:
    """A HIT that expired with nobody's answers: the same questions again, or give them back."""
    from orchestrator.crowd.posting import annotation_for, token_for

    if _can_repost(ctx, it):
        if not it.retired:
            it.reposts += 1
        it.attempt += 1
        it.status, it.hit_id, it.reviewable, it.first_try_at = "intent", None, False, None
        if ctx.hit_type_id and it.hit_type_id != ctx.hit_type_id:
            # re-posted under a new HIT type (a new reward, say): the HIT as posted now sets its cost
            it.hit_type_id, it.reserve_cents = ctx.hit_type_id, ctx.hit_cost
            it.max_assignments = ctx.cfg.crowd.assignments_per_hit
        it.retired = 0
        it.token = token_for(ctx.uid, it.id, it.attempt)
        log_event(s, "hit_reposted", intent=it.id, attempt=it.attempt,
                  annotation=annotation_for(ctx.uid, it.id, it.attempt))
        ctx.stats["hits_reposted"] += 1
    else:
        it.status, it.reviewed_at = "abandoned", utcnow()
        ctx.cs.release_in(s, [i.question_id for i in items if i.question_id is not None], reason="hit_abandoned")
        log_event(s, "hit_abandoned", intent=it.id, attempts=it.attempt + 1)


def _review_intent(ctx, s, it: HitIntent):
    """Quality control of one reviewable HIT (applies :func:`orchestrator.crowd.quality.review_hit`).
    Returns the review, or None when the HIT expired unanswered (re-posted or abandoned)."""
    from orchestrator.crowd.quality import (HeldAnswer, ReviewAssignment, ReviewItem, WorkerRecord, review_hit)

    cc = ctx.cfg.crowd
    q = cc.qualification
    asg = s.execute(select(CrowdAssignment).where(CrowdAssignment.intent_id == it.id,
                                                  CrowdAssignment.attempt == it.attempt,
                                                  CrowdAssignment.processed == False)  # noqa: E712
                    .order_by(CrowdAssignment.submit_time, CrowdAssignment.assignment_id)).scalars().all()
    items = s.execute(select(HitItem).where(HitItem.intent_id == it.id)).scalars().all()
    if not asg:
        _repost_or_abandon(ctx, s, it, items)
        return None
    gold_ids = [i.gold_id for i in items if i.gold_id is not None]
    glabel = dict(s.execute(select(Gold.id, Gold.label).where(Gold.id.in_(gold_ids))).all()) if gold_ids else {}
    ritems = [ReviewItem(i.identifier, i.question_id, i.gold_id, glabel.get(i.gold_id)) for i in items]
    rasg = []
    for a in asg:
        try:
            ans, err = ctx.backend.parse_answers(a.answer_xml), ""
        except ValueError as exc:
            ans, err = None, str(exc)
        secs = ctx.backend.answer_seconds(a.answer_xml) if ans is not None else {}
        rasg.append(ReviewAssignment(a.assignment_id, a.worker_id, a.remote_status, a.seconds, ans, secs, err))
    wids = sorted({a.worker_id for a in asg})
    rows = {w.worker_id: w for w in s.execute(select(CrowdWorker).where(CrowdWorker.worker_id.in_(wids))).scalars()}
    records = {w: WorkerRecord(w, r.gold_correct, r.gold_total, r.assignments, r.approved, r.rejected, r.flagged,
                               r.trusted, r.blocked, r.blocked_reason) for w, r in rows.items()}
    earlier: dict[str, list] = defaultdict(list)
    for aid, wid, qid, label, secs, st, qst in s.execute(
            select(CrowdAnswer.id, CrowdAnswer.worker_id, CrowdAnswer.question_id, CrowdAnswer.label,
                   CrowdAnswer.seconds, CrowdAnswer.status, Question.status)
            .join(Question, Question.id == CrowdAnswer.question_id, isouter=True)
            .where(CrowdAnswer.worker_id.in_(wids), CrowdAnswer.status.in_(["held", "pooled"]))
            .order_by(CrowdAnswer.id)).all():
        earlier[wid].append(HeldAnswer(aid, wid, qid, label, secs, st, qst == "pending"))
    rv = review_hit(ritems, rasg, records, earlier, q, has_gold=ctx.has_gold, replicate=cc.assignments_per_hit > 1)

    # ---- apply the verdicts
    now = utcnow()
    cost = it.reserve_cents // max(1, it.max_assignments)      # booked from the HIT as posted
    by_id = {a.assignment_id: a for a in asg}
    for v in rv.verdicts:
        a = by_id[v.assignment_id]
        a.decision, a.feedback, a.flagged_fast = v.decision, v.feedback, v.flagged_fast
        a.cost_cents = cost
        a.gold_correct, a.gold_total, a.n_answers = v.gold_correct, v.gold_total, v.n_answers
        a.outcome = "ok" if v.readable else "invalid"
        if a.remote_status in ("Approved", "Rejected"):
            a.remote_done, a.final_status = True, a.remote_status
        a.processed, a.processed_at = True, now
        if not v.readable:
            log_event(s, "answer_unreadable", assignment=a.assignment_id, hit=a.hit_id, error=v.error[:300],
                      policy="approved (not the worker's fault); its questions are asked again")
            ctx.stats["answers_unreadable"] += 1
        if v.unknown:
            log_event(s, "unknown_identifiers", assignment=a.assignment_id, hit=a.hit_id, count=len(v.unknown),
                      sample=list(v.unknown[:5]), policy="ignored")
            ctx.stats["unknown_identifiers"] += len(v.unknown)
        if v.missing:
            log_event(s, "missing_answers", assignment=a.assignment_id, hit=a.hit_id, count=len(v.missing),
                      policy="gold counts as wrong; questions are asked again")
        if v.broken:
            log_event(s, "images_broken", assignment=a.assignment_id, hit=a.hit_id, count=len(v.broken),
                      policy="the worker's page could not load these pictures; they are asked again")
            ctx.stats["images_broken"] += len(v.broken)
        if v.flagged_fast:
            log_event(s, "assignment_fast", assignment=a.assignment_id, worker=a.worker_id,
                      seconds_per_question=v.seconds_per_question, rejected=v.decision == "reject")
        ctx.stats["assignments_processed"] += 1
    # ---- the workers
    for wid, r in rv.workers.items():
        row = rows.get(wid)
        if row is None:
            row = CrowdWorker(worker_id=wid)
            s.add(row)
        row.gold_correct, row.gold_total, row.assignments = r.gold_correct, r.gold_total, r.assignments
        row.approved, row.rejected, row.flagged = r.approved, r.rejected, r.flagged
        row.trusted, row.blocked, row.blocked_reason = r.trusted, r.blocked, r.blocked_reason
    # ---- earlier answers (held / pooled) and the transitions
    by_status: dict[str, list[int]] = defaultdict(list)
    for aid, st in rv.earlier.items():
        by_status[st].append(aid)
    for st, aids in by_status.items():
        s.execute(bulk_update(CrowdAnswer).where(CrowdAnswer.id.in_(aids)).values(status=st))
    flat = {h.answer_id: h for lst in earlier.values() for h in lst}
    for t in rv.transitions:
        if t.to == "blocked":
            mine = [aid for aid in by_status.get("discarded", []) if flat[aid].worker_id == t.worker_id]
            ctx.cs.release_in(s, [flat[a].question_id for a in mine if flat[a].question_id is not None],
                              reason="worker_blocked")
            _block_effects(ctx, s, t.worker_id, t, len(mine))
        else:
            n = sum(1 for aid in rv.earlier if flat[aid].worker_id == t.worker_id)
            if n:
                log_event(s, "worker_trusted", worker=t.worker_id, released=n)
    bulk_insert(s, CrowdAnswer, [{"assignment_id": x.assignment_id, "worker_id": x.worker_id, "intent_id": it.id,
                                  "identifier": x.identifier, "question_id": x.question_id, "gold_id": x.gold_id,
                                  "label": x.label, "correct": x.correct, "status": x.status, "seconds": x.seconds,
                                  "worker_accuracy": x.worker_accuracy, "agreement": None, "created_at": now}
                                 for x in rv.answers])
    return rv


def _finish_intent(ctx, s, it: HitIntent, to_record: list) -> None:
    """Record the HIT's answers, give back the questions left unanswered, mark it reviewed."""
    from orchestrator.campaign.campaign import AnswerIn

    ctx.cs.record_in(s, [AnswerIn(q, lb, w, sec, ctx.source) for q, lb, w, sec in to_record])
    # questions left without an answer are asked again -- unless some worker's answer to them is
    # held (probation) or another open HIT shows them too
    items = s.execute(select(HitItem.question_id).where(HitItem.intent_id == it.id,
                                                        HitItem.question_id.is_not(None))).scalars().all()
    qids = list(items)
    if qids:
        keep = set(s.execute(select(CrowdAnswer.question_id).where(CrowdAnswer.question_id.in_(qids),
                                                                  CrowdAnswer.status == "held")).scalars())
        keep |= set(s.execute(select(HitItem.question_id).join(HitIntent, HitIntent.id == HitItem.intent_id)
                              .where(HitItem.question_id.in_(qids), HitIntent.status.in_(OPEN_INTENT),
                                     HitIntent.id != it.id)).scalars())
        n = ctx.cs.release_in(s, [q for q in qids if q not in keep], reason="not_answered")
        ctx.stats["questions_reasked"] += n
    it.status, it.reviewed_at = "reviewed", utcnow()
    ctx.stats["hits_processed"] += 1


def _unanswered(s, it: HitIntent) -> bool:
    """A reviewable HIT with no assignment to process: it expired unanswered."""
    return s.execute(select(CrowdAssignment.assignment_id).where(
        CrowdAssignment.intent_id == it.id, CrowdAssignment.attempt == it.attempt,
        CrowdAssignment.processed == False).limit(1)).first() is None  # noqa: E712


def _plan(ctx, s, intents) -> list[tuple[HitIntent, bool]]:
    """Which reviewable HITs this batch processes, in order, and whether the free slots are
    refilled after each (``crowd.ordered``: strictly in posting order; behind an unprocessed head
    only HITs that expired unanswered move on: re-posting them changes neither the search nor the
    answers, so the order is kept, and they do not sit dead in their slots)."""
    ordered = ctx.cfg.crowd.ordered
    plan, waiting = [], False
    for it in intents:
        if it.status != "created" or not it.reviewable:
            waiting = waiting or ordered
            continue
        unanswered = _unanswered(s, it)
        if waiting:
            if unanswered and _can_repost(ctx, it):
                plan.append((it, False))
        else:
            plan.append((it, True))
            if ordered and unanswered and _can_repost(ctx, it):
                waiting = True      # the head HIT will be re-posted: it stays the head
        if len(plan) >= BATCH:
            break
    return plan


def _aggregate(ctx, s, reviews: dict[int, object]) -> dict[int, int]:
    """Fit the aggregator once for the batch: ``{question id: label}`` for the pooled questions."""
    from orchestrator.crowd.quality import aggregate

    cc = ctx.cfg.crowd
    mine = sorted({qid for rv in reviews.values() if rv is not None for qid, _, _ in rv.pooled})
    if not mine:
        return {}
    blocked = set(s.execute(select(CrowdWorker.worker_id).where(CrowdWorker.blocked == True)).scalars())  # noqa: E712
    if cc.aggregation == "dawid-skene":
        hist = s.execute(select(CrowdAnswer.question_id, CrowdAnswer.gold_id, CrowdAnswer.worker_id,
                                CrowdAnswer.label).where(CrowdAnswer.status.in_(["pooled", "gold"]),
                                                         CrowdAnswer.label >= 0)).all()
        rows = [(f"q{qi}" if qi is not None else f"g{gi}", wid, lb) for qi, gi, wid, lb in hist if wid not in blocked]
        gold = dict(s.execute(select(Gold.id, Gold.label)).all())
        truth = {f"g{g}": int(lb) for g, lb in gold.items()}
    else:
        want = set(mine)
        pooled = s.execute(select(CrowdAnswer.question_id, CrowdAnswer.worker_id, CrowdAnswer.label)
                           .where(CrowdAnswer.status == "pooled", CrowdAnswer.question_id.in_(mine))).all()
        rows = [(f"q{qi}", wid, lb) for qi, wid, lb in pooled if wid not in blocked and qi in want]
        truth = None
    agg = aggregate(rows, cc.aggregation, truth)
    log_event(s, "aggregator_fitted", method=cc.aggregation, answers=len(rows), questions=len(mine))
    return {q: agg[f"q{q}"] for q in mine if f"q{q}" in agg}


def process(ctx) -> int:
    """Process reviewable HITs (see the module docstring) and refill the slots."""
    from orchestrator.crowd.posting import fill

    replicate = ctx.cfg.crowd.assignments_per_hit > 1
    total = 0
    while True:
        n = 0
        try:
            with transaction(ctx.engine) as s:
                intents = s.execute(select(HitIntent).where(HitIntent.status.in_(OPEN_INTENT))
                                    .order_by(HitIntent.id)).scalars().all()
                plan = _plan(ctx, s, intents)
                reviews: dict[int, object] = {}
                agg: dict[int, int] = {}
                if replicate:
                    for it, _ in plan:
                        reviews[it.id] = _review_intent(ctx, s, it)
                    agg = _aggregate(ctx, s, reviews)
                for it, refill in plan:
                    rv = reviews[it.id] if replicate else _review_intent(ctx, s, it)
                    if rv is not None:
                        to_record = list(rv.to_record)
                        if replicate:
                            qs = sorted({qid for qid, _, _ in rv.pooled})
                            to_record += [(q, agg[q], ctx.cfg.crowd.aggregation, None) for q in qs if q in agg]
                            log_event(s, "aggregated", intent=it.id, method=ctx.cfg.crowd.aggregation, questions=len(qs))
                        _finish_intent(ctx, s, it, to_record)
                    n += 1
                    if refill:
                        ctx.stats["intents_made"] += fill(ctx, s)
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
                ctx.backend.reject(aid, feedback or "Rejected.")
                return aid, "Rejected", None
            ctx.backend.approve(aid)
            return aid, "Approved", None
        except BackendError as exc:
            if exc.code == INVALID_STATE:
                try:      # already approved or rejected (auto-approval, or a call that died after succeeding)
                    st = ctx.backend.assignment_status(aid)
                    if st in ("Approved", "Rejected"):
                        return aid, st, None
                except BackendError as exc2:
                    return aid, None, str(exc2)
            return aid, None, str(exc)

    with ThreadPoolExecutor(max_workers=ctx.concurrency) as pool:
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
        row = s.get(CrowdSetup, "block_qual")
        qual = row.remote_id if row is not None else None
    if not todo or not qual:
        return 0
    done = []
    for wid in todo:
        try:
            ctx.backend.block(qual, wid)
            done.append(wid)
        except BackendError as exc:
            if exc.code == WORKER_NOT_FOUND:
                done.append(wid)
            ctx.note(f"worker {wid}: soft block failed: {exc}")
    if done:
        with transaction(ctx.engine) as s:
            s.execute(bulk_update(CrowdWorker).where(CrowdWorker.worker_id.in_(done)).values(block_remote_done=True))
    return len(done)


def record_bonus(engine, cfg, backend_fees, *, worker_id: str, assignment_id: str, bonus_usd: float,
                 reason: str) -> dict:
    """Record a bonus as an intent (the next pass pays it, with a token): refused beyond the budget."""
    from orchestrator.crowd.ledger import cents
    from orchestrator.crowd.posting import ledger

    amount = cents(bonus_usd)
    if amount <= 0:
        raise LabelpropError(f"a bonus must be at least $0.01, got {bonus_usd}")
    cost = backend_fees.bonus_cost_cents(amount)
    with transaction(engine) as s:
        if s.get(CrowdAssignment, assignment_id) is None:
            raise LabelpropError(f"assignment {assignment_id} is not one of this campaign's")
        if s.get(CrowdAssignment, assignment_id).worker_id != worker_id:
            raise LabelpropError(f"assignment {assignment_id} was not done by worker {worker_id}")
        led = ledger(s, cfg.crowd.budget_usd)
        if led.left_cents is not None and led.left_cents < cost:
            raise LabelpropError(f"a bonus of ${amount / 100:.2f} (${cost / 100:.2f} with the fee) exceeds what is "
                                 f"left of the budget (${led.left_cents / 100:.2f})")
        b = CrowdBonus(worker_id=worker_id, assignment_id=assignment_id, bonus_cents=amount, cost_cents=cost,
                       reason=reason, token=f"lpb-{uuid.uuid4().hex[:24]}")
        s.add(b)
        s.flush()
        log_event(s, "bonus_intent", bonus=b.id, worker=worker_id, cents=amount, cost_cents=cost)
        return {"bonus": b.id, "bonus_usd": amount / 100, "cost_usd": cost / 100, "token": b.token}


def pay_bonuses(ctx) -> int:
    """Pay recorded bonus intents, each with its token (a retry never pays twice)."""
    with read_session(ctx.engine) as s:
        todo = s.execute(select(CrowdBonus.id, CrowdBonus.worker_id, CrowdBonus.assignment_id, CrowdBonus.bonus_cents,
                                CrowdBonus.reason, CrowdBonus.token).where(CrowdBonus.status == "intent")).all()
    paid = 0
    for bid, wid, aid, amount, reason, token in todo:
        try:
            ctx.backend.pay_bonus(wid, aid, amount, reason or "Thank you for your careful work.", token)
            status, err = "paid", None
        except BackendError as exc:
            status, err = ("failed", str(exc)) if exc.code in (NOT_FOUND, WORKER_NOT_FOUND) else ("intent", str(exc))
        with transaction(ctx.engine) as s:
            s.execute(bulk_update(CrowdBonus).where(CrowdBonus.id == bid)
                      .values(status=status, error=err, paid_at=utcnow() if status == "paid" else None))
            log_event(s, "bonus_" + ("paid" if status == "paid" else "failed"), bonus=bid, error=err)
        if err:
            ctx.note(f"bonus {bid} for worker {wid}: {err}")
        paid += status == "paid"
    ctx.stats["bonuses_paid"] += paid
    return paid


def update_signals(ctx) -> int:
    """Agreement of every recorded or pooled answer whose question is answered and has none yet:
    the share of the other answers of its cluster with the same label (see crowd/signals.py);
    -1 marks an answer whose cluster has no other answer."""
    from orchestrator.crowd.signals import agreement_with_cluster
    from orchestrator.campaign.store import Answer

    with transaction(ctx.engine) as s:
        todo = s.execute(select(CrowdAnswer.id, CrowdAnswer.label, Question.node_id, Answer.label)
                         .join(Question, Question.id == CrowdAnswer.question_id)
                         .join(Answer, Answer.question_id == Question.id)
                         .where(CrowdAnswer.agreement.is_(None), CrowdAnswer.status.in_(["recorded", "pooled"]),
                                CrowdAnswer.label >= 0, Question.status == "answered")).all()
        if not todo:
            return 0
        nodes = sorted({n for _, _, n, _ in todo})
        counts: dict[int, list[int]] = {}
        for i in range(0, len(nodes), 5000):
            for node, label, n in s.execute(
                    select(Question.node_id, Answer.label, func.count()).join(Answer, Answer.question_id == Question.id)
                    .where(Question.node_id.in_(nodes[i:i + 5000]), Question.status == "answered")
                    .group_by(Question.node_id, Answer.label)).all():
                counts.setdefault(node, [0, 0])[int(label)] += int(n)
        by_value: dict[float, list[int]] = defaultdict(list)
        for aid, label, node, own in todo:
            val = agreement_with_cluster(tuple(counts.get(node, [0, 0])), own, label)
            by_value[-1.0 if val is None else round(val, 4)].append(aid)
        for val, aids in by_value.items():
            for i in range(0, len(aids), 5000):
                s.execute(bulk_update(CrowdAnswer).where(CrowdAnswer.id.in_(aids[i:i + 5000])).values(agreement=val))
    return len(todo)


# ------------------------------------------------------------------------------- summary
def crowd_summary(engine, cfg, cs=None, backend=None) -> dict:
    """Crowd counters for `status`, `poll --json`, `run` and the report (derived from rows)."""
    from orchestrator.crowd.signals import worker_scores
    from orchestrator.crowd.posting import ledger

    with read_session(engine) as s:
        by_status = dict(s.execute(select(HitIntent.status, func.count()).group_by(HitIntent.status)).all())
        n_asg = int(s.execute(select(func.count()).select_from(CrowdAssignment)).scalar_one())
        decided = dict(s.execute(select(CrowdAssignment.final_status, func.count())
                                 .group_by(CrowdAssignment.final_status)).all())
        ans = dict(s.execute(select(CrowdAnswer.status, func.count()).group_by(CrowdAnswer.status)).all())
        led = ledger(s, cfg.crowd.budget_usd)
        workers = s.execute(select(CrowdWorker)).scalars().all()
        s.expunge_all()
        secs, agree = defaultdict(list), defaultdict(list)
        for wid, sec, ag in s.execute(select(CrowdAnswer.worker_id, CrowdAnswer.seconds, CrowdAnswer.agreement)
                                      .where(CrowdAnswer.status.in_(["recorded", "pooled", "held", "gold"]))).all():
            secs[wid].append(sec)
            if ag is not None and ag >= 0:
                agree[wid].append(ag)
        held_workers = int(s.execute(select(func.count(func.distinct(CrowdAnswer.worker_id)))
                                     .where(CrowdAnswer.status == "held")).scalar_one())
        answered_seconds = s.execute(select(func.coalesce(func.sum(CrowdAssignment.seconds), 0.0))
                                     .where(CrowdAssignment.processed == True)).scalar_one()  # noqa: E712
        gold = int(s.execute(select(func.count()).select_from(Gold)).scalar_one())
        foreign = int(s.execute(select(func.count()).select_from(CrowdForeignHit)).scalar_one())
    ranked = {r.worker_id: (i + 1, r) for i, r in enumerate(worker_scores(
        [{"worker_id": w.worker_id, "gold_correct": w.gold_correct, "gold_total": w.gold_total,
          "assignments": w.assignments, "flagged": w.flagged} for w in workers], agree, secs))}
    wl = []
    for w in workers:
        rank, r = ranked[w.worker_id]
        wl.append({"worker_id": w.worker_id, "rank": rank, "score": r.score, "assignments": w.assignments,
                   "approved": w.approved, "rejected": w.rejected, "gold_correct": w.gold_correct,
                   "gold_total": w.gold_total, "test_credit": w.test_credit,
                   "gold_accuracy": round(w.gold_correct / w.gold_total, 4) if w.gold_total else None,
                   "mean_agreement": r.mean_agreement, "median_seconds_per_question": r.median_seconds,
                   "flagged": w.flagged, "trusted": w.trusted, "blocked": w.blocked,
                   "state": "blocked" if w.blocked else "trusted" if w.trusted else "probation"})
    wl.sort(key=lambda r: (r["rank"], r["worker_id"]))
    return {"hits_in_flight": int(sum(by_status.get(k, 0) for k in OPEN_INTENT)),
            "hits_by_status": {k: int(v) for k, v in sorted(by_status.items())},
            "hits_posted": int(sum(by_status.values())),
            "assignments": n_asg, "assignments_approved": int(decided.get("Approved", 0)),
            "assignments_rejected": int(decided.get("Rejected", 0)),
            "crowd_answers": {k: int(v) for k, v in sorted(ans.items())},
            "answers_held": int(ans.get("held", 0)), "workers_on_probation_with_held_answers": held_workers,
            **led.as_dict(), "work_hours": round(float(answered_seconds or 0.0) / 3600, 4),
            "gold_questions": gold, "foreign_hits": foreign, "workers": wl}


# ------------------------------------------------------------------------------- the pass
def poll_once(campaign_dir, *, db=None, endpoint_url=None, sandbox=None, profile=None, client=None,
              options: BackendOptions | None = None) -> dict:
    """One pass (see the module docstring); returns a summary dict (``locked``: another pass runs)."""
    from orchestrator.campaign.config import load_config
    from orchestrator.crowd.posting import check_workers, create_hits, dispose_hits, ensure_setup

    d = Path(campaign_dir)
    cfg = load_config(d)
    opts = options or BackendOptions(endpoint_url=endpoint_url, sandbox=sandbox, profile=profile, client=client)
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

        ctx = step("load", lambda: CrowdContext(d, db=db, options=opts))
        try:
            ctx.hit_type_id = step("setup", ensure_setup, ctx)
            if not ctx.backend.needs_images:          # in-process: cheap to check every pass
                check_workers(ctx)
            step("expire_holds", expire_holds, ctx)
            ctx.stats["hits_created"] += step("create", create_hits, ctx)
            step("fetch", fetch, ctx)
            step("process", process, ctx)
            step("settle", settle, ctx)
            step("blocks", push_blocks, ctx)
            if hasattr(ctx.backend, "platform_pass"):   # a platform with its own side (prolific)
                step("platform", ctx.backend.platform_pass, ctx)
            step("bonuses", pay_bonuses, ctx)
            ctx.stats["hits_created"] += step("create", create_hits, ctx)
            ctx.stats["hits_disposed"] += step("dispose", dispose_hits, ctx)
            step("signals", update_signals, ctx)
            out = {"campaign": str(d), "locked": False, "backend": ctx.backend.name, **ctx.cs.summary(),
                   **crowd_summary(ctx.engine, ctx.cfg), "pass": dict(ctx.stats),
                   "budget_exhausted": ctx.budget_exhausted, "stalled": ctx.stalled,
                   "eligible_workers": ctx.eligible_workers, "messages": ctx.messages,
                   "seconds": round(time.perf_counter() - t0, 3), "timings": timings}
        finally:
            ctx.close()
        out["finished"] = bool(out["done"] and out["hits_in_flight"] == 0)
        out["stopped"] = out["finished"] or ((ctx.budget_exhausted or bool(ctx.stalled))
                                             and out["hits_in_flight"] == 0)
        return out


def _engine(d, db):
    from orchestrator.campaign.store import open_store

    return open_store(d, db)
