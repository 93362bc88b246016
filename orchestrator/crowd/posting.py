"""Posting verification HITs: the campaign's HIT type and qualifications, HIT intents, creation.

Everything remote goes through the campaign's :class:`~orchestrator.crowd.backends.CrowdBackend`.

**Setup, every pass** (:func:`ensure_setup`): a custom soft-block qualification (the HIT
type requires it ``DoesNotExist`` for discover, preview and accept; it is named so a
worker does not read it as an accusation), the qualification test (a qualification with a
Test and an AnswerKey, rendered by ``hit_templates.render`` from the ``test`` gold pool;
required at least the pass percentage) and the HIT type (reward, title, keywords,
durations, auto-approval delay, requirements: approval rate, approved HIT count, locales,
the test, Masters -- the population filters only where configured).  A qualification is
recorded as an attempt *before* it is created; a crash right after creation leaves an
orphan behind (names are unique, so the next attempt uses the next name) and never two
required ones.  The HIT type follows the configuration: when its properties change (a
requirement relaxed, a new reward), a new HIT type is made, HITs not yet created move to
it, and open HITs of the old type are expired (recorded first, then expired on the
platform): those already answered are processed as usual, those unanswered are re-posted
under the new type (not counted as re-posts).  Before a HIT type is used the backend says
how many of the workers it knows can meet its requirements; none gives a warning (and
stops a simulated crowd, which would wait forever).  A paying backend (MTurk production)
refuses to post without ``crowd.budget_usd``.

**Intents** (:func:`fill`, inside the caller's transaction): with at most
``max_hits_in_flight`` HITs open and only what the budget can still commit (the worst-case
cost of a HIT, (reward + fee) x assignments under the platform's fee rules, is reserved
while it is open: :class:`~orchestrator.crowd.ledger.Ledger`), the search is asked for
about as many questions as the free slots hold (whole node samples; sequential sampling
spreads a node over rounds), and the pending questions not yet in a HIT are packed in
question-id order, ``questions_per_hit`` per HIT, with ``gold_per_hit`` gold questions
(half known yes, half known no) shuffled in.  A HIT less than half full waits for more
questions unless nothing else is in flight.  When nothing is in flight and the search
waits only on answers held while their workers are on probation, the same questions are
*not* shown again (that paid twice for one answer): a probation HIT of gold questions
alone is posted instead, so those workers finish probation and their answers count (or
are discarded); only if they do not come back for two such HITs each are the held
questions shown again.  Packing order, gold choice, shuffling and identifiers are all derived
from the campaign seed, its uid and the intent id, and :func:`fill` is idempotent (a
second call right after the first does nothing), so where a pass starts or stops never
changes what is posted.  The cost of a HIT is booked from the HIT as posted (its
reservation), never from the current configuration; a HIT moved or re-posted under a new
HIT type is booked again at that type's reward, and intents whose reservations no longer
fit the budget (a raised reward) are given up before anything is posted.

**Creation** (:func:`create_hits`): intents are rendered (overlays published through the
asset store, cached by content hash, so the same content comes out after a crash), the
images are fetched as a worker's browser would (a few per location, every one where one
fails; a HIT whose images are not served is not posted), and the HIT is published with ``token = lp-<uid>-<intent>-<attempt>``
and ``annotation = lp:<uid>:<intent>:<attempt>``; each result is recorded before further
calls pile up.  A retried token gives back the HIT an earlier (crashed) try created.  Past
a platform's token window the HIT is looked up by its annotation before a new one is made.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from sqlalchemy import func, select

from orchestrator.crowd.backends.base import (INVALID_STATE, NOT_FOUND, QUALIFICATION_EXISTS, BackendError,
                                              QualificationTest, Requirement, Task, TaskItem, TaskType)
from orchestrator.crowd.ledger import Ledger, cents
from orchestrator.crowd.crowd_store import (OPEN_INTENT, CrowdAnswer, CrowdAssignment, CrowdBonus, CrowdHit,
                                      CrowdSetup, CrowdWorker, Gold, HitIntent, HitItem)
from orchestrator.errors import LabelpropError
from orchestrator.campaign.store import Question, bulk_insert, bulk_update, log_event, read_session, transaction, utcnow

__all__ = ["ensure_setup", "fill", "create_hits", "dispose_hits", "ledger", "committed_cents", "spent_cents",
           "hit_cost_cents", "task_type_for", "token_for", "annotation_for", "block_qual_name"]

BLOCK_NAME = "labelprop {name}: no more HITs for you"
BLOCK_DESCRIPTION = ("This campaign needs no more answers from you. Thank you for your work; this does not "
                     "affect any other HITs.")


def block_qual_name(campaign: str) -> str:
    return BLOCK_NAME.format(name=campaign)


# ------------------------------------------------------------------------------- money
def hit_cost_cents(ctx) -> int:
    """Worst case for one HIT posted now: every assignment approved, the platform's fees included."""
    cc = ctx.cfg.crowd
    own = getattr(ctx.backend, "task_cost_cents", None)     # a platform paying per place (prolific): 0
    if own is not None:
        return int(own)
    return ctx.backend.fees.hit_cost_cents(cents(cc.reward_usd), cc.assignments_per_hit, cc.masters)


def ledger(s, budget_usd: float = 0.0) -> Ledger:
    """The campaign's money from its rows (see :mod:`orchestrator.crowd.ledger`)."""
    def total(stmt) -> int:
        return int(s.execute(stmt).scalar_one())

    reserved = total(select(func.coalesce(func.sum(HitIntent.reserve_cents), 0))
                     .where(HitIntent.status.in_(OPEN_INTENT)))
    owed = total(select(func.coalesce(func.sum(CrowdAssignment.cost_cents), 0))
                 .where(CrowdAssignment.processed == True, CrowdAssignment.decision == "approve",  # noqa: E712
                        CrowdAssignment.final_status == ""))
    owed += total(select(func.coalesce(func.sum(CrowdBonus.cost_cents), 0)).where(CrowdBonus.status == "intent"))
    spent = total(select(func.coalesce(func.sum(CrowdAssignment.cost_cents), 0))
                  .where(CrowdAssignment.final_status == "Approved"))
    spent += total(select(func.coalesce(func.sum(CrowdBonus.cost_cents), 0)).where(CrowdBonus.status == "paid"))
    from orchestrator.crowd.backends.prolific import place_money      # places of a Prolific study

    r2, o2, s2 = place_money(s)
    reserved, owed, spent = reserved + r2, owed + o2, spent + s2
    return Ledger(budget_cents=cents(budget_usd), reserved_cents=reserved, owed_cents=owed, spent_cents=spent)


def committed_cents(s) -> int:
    """Reserved for open HITs plus owed or paid for processed assignments and bonuses."""
    return ledger(s).committed_cents


def spent_cents(s) -> int:
    """Paid: reward + fee of every approved assignment, and paid bonuses."""
    return ledger(s).spent_cents


# ------------------------------------------------------------------------------- ids
def token_for(uid: str, intent_id: int, attempt: int) -> str:
    return f"lp-{uid}-{intent_id}-{attempt}"


def annotation_for(uid: str, intent_id: int, attempt: int) -> str:
    return f"lp:{uid}:{intent_id}:{attempt}"


def _identifier(uid: str, intent_id: int, position: int) -> str:
    return "q" + hashlib.sha256(f"{uid}:{intent_id}:{position}".encode()).hexdigest()[:15]


# ------------------------------------------------------------------------------- setup
def _ensure_qual(ctx, key: str, name: str, description: str, test: QualificationTest | None = None) -> str:
    with read_session(ctx.engine) as s:
        row = s.get(CrowdSetup, key)
        if row is not None and row.remote_id:
            return row.remote_id
        attempt = row.attempt if row is not None else 0
    for _ in range(20):
        with transaction(ctx.engine) as s:          # the attempt is recorded before the call
            row = s.get(CrowdSetup, key)
            if row is None:
                s.add(CrowdSetup(key=key, attempt=attempt))
            else:
                row.attempt = attempt
        full = f"{name} [{ctx.uid}-{attempt}]"[:256]
        try:
            qid = ctx.backend.create_qualification(full, description, test)
        except BackendError as exc:
            if exc.code == QUALIFICATION_EXISTS:
                attempt += 1
                continue
            raise LabelpropError(f"cannot create the {key.replace('_', ' ')}: {exc}") from None
        with transaction(ctx.engine) as s:
            row = s.get(CrowdSetup, key)
            row.remote_id = qid
            row.params = json.dumps({"name": full})
            log_event(s, "crowd_qualification_created", key=key, id=qid, name=full)
        return qid
    raise LabelpropError(f"cannot create the {key}: 20 names taken")


def _test_items(ctx):
    from hit_templates.render import HitQuestion

    with read_session(ctx.engine) as s:
        golds = s.execute(select(Gold).where(Gold.pool == "test").order_by(Gold.id)).scalars().all()
        s.expunge_all()     # keep the loaded rows usable after the read session ends
    if not golds:
        return []
    urls = publish_gold_overlays(ctx, golds)
    return [(HitQuestion(g.identifier, urls[g.id], g.category or "object"), bool(g.label)) for g in golds]


def test_size(ctx) -> int:
    """How many questions the qualification test has (its answers count as gold)."""
    with read_session(ctx.engine) as s:
        return int(s.execute(select(func.count()).select_from(Gold).where(Gold.pool == "test")).scalar_one())


def task_type_for(cfg, block_qual: str = "", test_qual: str = "", test_label: str = "") -> TaskType:
    """The HIT type the configuration describes (requirements in a fixed order)."""
    from hit_templates.render import qualification_pass_value

    cc = cfg.crowd
    q = cc.qualification
    reqs = []
    if q.min_percent_approved > 0:
        reqs.append(Requirement("approval_rate", q.min_percent_approved, label="approval rate"))
    if q.min_hits_approved > 0:
        reqs.append(Requirement("approved_tasks", q.min_hits_approved, label="approved HITs"))
    if q.locales:
        reqs.append(Requirement("locale", values=tuple(q.locales), label="locale"))
    if cc.masters:
        reqs.append(Requirement("masters", label="Masters"))
    if test_qual:
        reqs.append(Requirement("qualification", qualification_pass_value(q.pass_fraction),
                                qualification_id=test_qual, label=test_label))
    if block_qual:
        reqs.append(Requirement("not_qualification", qualification_id=block_qual))
    return TaskType(title=cc.title, description=cc.description, keywords=cc.keywords,
                    reward_cents=cents(cc.reward_usd), assignment_seconds=cc.assignment_duration_seconds,
                    auto_approve_seconds=cc.auto_approval_delay_seconds, requirements=tuple(reqs))


def _describe(reqs) -> str:
    out = []
    for r in reqs:
        if r.kind == "approval_rate":
            out.append(f"an approval rate of at least {r.value}% (crowd.qualification.min_percent_approved)")
        elif r.kind == "approved_tasks":
            out.append(f"at least {r.value} approved HITs (crowd.qualification.min_hits_approved)")
        elif r.kind == "locale":
            out.append(f"a locale in {', '.join(r.values)} (crowd.qualification.locales)")
        elif r.kind == "masters":
            out.append("the Masters qualification (crowd.masters)")
    return "; ".join(out)


def ensure_setup(ctx) -> str:
    """Create (once) the qualifications and the HIT type the configuration describes; retire open
    HITs of an older HIT type; returns the HIT type id (see the module docstring)."""
    cc = ctx.cfg.crowd
    q = cc.qualification
    name = ctx.cfg.campaign.name
    if ctx.backend.paying and cc.budget_usd <= 0:
        raise LabelpropError(f"{ctx.dir / 'campaign.toml'}: crowd.budget_usd is 0 (no limit) but "
                             f"{ctx.backend.name} at {getattr(ctx.backend, 'endpoint', 'this platform')} spends "
                             f"real money; set [crowd] budget_usd first (`labelprop estimate {ctx.dir}` "
                             f"shows what the campaign is expected to cost)")
    block = _ensure_qual(ctx, "block_qual", block_qual_name(name), BLOCK_DESCRIPTION)
    test_qual, test_label = "", ""
    n_test = test_size(ctx) if q.enabled else 0
    if q.enabled and not n_test and not ctx.backend.needs_images:
        pass               # a simulated crowd on a campaign without gold: no test to take
    elif q.enabled:
        from hit_templates.render import render_qualification_test

        with read_session(ctx.engine) as s:
            row = s.get(CrowdSetup, "test_qual")
            have = row is not None and row.remote_id
        test = None
        if not have:
            if not n_test:
                raise LabelpropError(f"{ctx.dir}: [crowd.qualification] enabled but the campaign has no "
                                     f"test gold; run `labelprop gold {ctx.dir} ...` (or set enabled = false)")
            if ctx.backend.needs_images:
                doc, key = render_qualification_test(_test_items(ctx), pass_fraction=q.pass_fraction)
            else:
                doc, key = "", ""      # a simulated crowd takes the test without seeing it
            test = QualificationTest(doc, key, q.test_duration_seconds, q.retry_delay_seconds)
        test_label = f"labelprop {name}: outline check test"
        test_qual = _ensure_qual(ctx, "test_qual", test_label,
                                 "A short test: say whether each highlighted object is outlined correctly.", test)
    ctx.test_qual = test_qual
    ctx.block_qual = block
    tt = task_type_for(ctx.cfg, block, test_qual, test_label)
    ctx.task_type = tt
    key = "hit_type:" + hashlib.sha256(json.dumps(
        {"b": ctx.backend.name, **{k: getattr(tt, k) for k in ("title", "description", "keywords", "reward_cents",
                                                              "assignment_seconds", "auto_approve_seconds")},
         "req": [r.__dict__ for r in tt.requirements]}, sort_keys=True, default=list).encode()).hexdigest()[:16]
    with read_session(ctx.engine) as s:
        row = s.get(CrowdSetup, key)
        tid = row.remote_id if row is not None and row.remote_id else None
        cur = s.get(CrowdSetup, "current_hit_type")
        current = cur.remote_id if cur is not None else None
    if tid is None:
        try:
            tid = ctx.backend.ensure_task_type(tt)
        except BackendError as exc:
            raise LabelpropError(f"cannot create the HIT type: {exc}") from None
        with transaction(ctx.engine) as s:
            s.merge(CrowdSetup(key=key, remote_id=tid, params=json.dumps(
                {"reward_cents": tt.reward_cents, "requirements": [r.__dict__ for r in tt.requirements]},
                default=list)))
            log_event(s, "crowd_hit_type", id=tid, reward_cents=tt.reward_cents, requirements=len(tt.requirements))
    if current != tid:
        _retire_old_types(ctx, tid, current)
    _expire_retired(ctx)
    return tid


def check_workers(ctx) -> None:
    """Warn (once per pass that posts) when no worker the backend knows can meet the requirements."""
    tt = getattr(ctx, "task_type", None)
    if tt is None or getattr(ctx, "workers_checked", False):
        return
    ctx.workers_checked = True
    n = ctx.backend.eligible_workers(tt)
    ctx.eligible_workers = n
    if n is None or n > 0:
        return
    pop = [r for r in tt.requirements if r.kind in ("approval_rate", "approved_tasks", "locale", "masters")]
    if ctx.backend.name == "simulated":
        why = _describe(pop) or "every simulated worker is blocked or cannot pass the qualification test"
        ctx.stalled = f"no simulated worker can take these HITs: {why}"
        ctx.note(ctx.stalled)
        return
    if pop:
        msg = (f"no worker on the crowd platform can meet these HIT requirements, so nobody can accept the HITs: "
               f"{_describe(pop)}; relax them in {ctx.dir / 'campaign.toml'} (a new HIT type is made at once)")
    else:
        msg = ("the crowd server has no workers yet: add one with `labelprop crowd-server add-worker NAME "
               "--data-dir DIR` and send them their sign-in link")
    if msg not in ctx.messages:
        ctx.note(msg)
        with transaction(ctx.engine) as s:
            log_event(s, "requirements_unmet", message=msg)


def _retire_old_types(ctx, tid: str, old: str | None) -> None:
    """A new HIT type replaces the current one: intents not created yet move to it (their cost booked
    again at the new type's reward, since that is how they will be posted), open HITs of other types
    are marked to be expired (re-posted under the new type once reviewable)."""
    cc = ctx.cfg.crowd
    with transaction(ctx.engine) as s:
        s.merge(CrowdSetup(key="current_hit_type", remote_id=tid))
        todo = s.execute(select(HitIntent.id, HitIntent.max_assignments).where(
            HitIntent.status == "intent", HitIntent.hit_type_id != tid, HitIntent.first_try_at.is_(None))).all()
        by_n: dict[int, list[int]] = {}
        for iid, n in todo:
            by_n.setdefault(int(n), []).append(iid)
        for n, ids in by_n.items():
            s.execute(bulk_update(HitIntent).where(HitIntent.id.in_(ids)).values(
                hit_type_id=tid, reserve_cents=ctx.backend.fees.hit_cost_cents(cents(cc.reward_usd), n, cc.masters)))
        moved = len(todo)
        retired = s.execute(bulk_update(HitIntent).where(HitIntent.status == "created", HitIntent.reviewable == False,  # noqa: E712
                                                         HitIntent.hit_type_id != tid, HitIntent.retired == 0)
                            .values(retired=1)).rowcount or 0
        if old is not None:
            log_event(s, "hit_type_changed", old=old, new=tid, intents_moved=int(moved), hits_retired=int(retired))
            if retired:
                ctx.note(f"the HIT type changed (new requirements or reward): {retired} open HITs of the old type "
                         f"are expired; answered ones are processed, the others re-posted under the new type")


def _expire_retired(ctx) -> None:
    with read_session(ctx.engine) as s:
        todo = s.execute(select(HitIntent.id, HitIntent.hit_id).where(HitIntent.retired == 1,
                                                                      HitIntent.status == "created")).all()
    for hid, err in expire_intents(ctx, todo):
        ctx.note(f"HIT {hid}: cannot expire it: {err}")


def expire_intents(ctx, todo) -> list[tuple[str, str]]:
    """Expire the HITs of ``todo`` (``(intent id, hit id)`` pairs) on the platform; a HIT that
    is already gone or closed counts as expired.  Marks the expired intents ``retired = 2``
    and returns ``(hit id, error)`` of those that could not be expired."""
    done, failed = [], []
    for iid, hid in todo:
        try:
            ctx.backend.expire(hid)
            done.append(iid)
        except BackendError as exc:
            if exc.code in (NOT_FOUND, INVALID_STATE):
                done.append(iid)
            else:
                failed.append((hid, str(exc)))
    if done:
        with transaction(ctx.engine) as s:
            s.execute(bulk_update(HitIntent).where(HitIntent.id.in_(done)).values(retired=2))
    return failed


# ------------------------------------------------------------------------------- intents
def _unpacked(s) -> list[int]:
    """Pending questions in no HIT yet.  Packing always takes the lowest unpacked ids first,
    so they are exactly the pending questions above the highest packed id: one index range
    scan instead of an anti-join."""
    top = s.execute(select(func.max(HitItem.question_id))).scalar() or 0
    return list(s.execute(select(Question.id).where(Question.status == "pending", Question.id > top)
                          .order_by(Question.id)).scalars())


def fill(ctx, s) -> int:
    """Ask the search for questions and pack them into HIT intents (inside transaction ``s``);
    returns how many intents were made.  Idempotent: see the module docstring."""
    cc = ctx.cfg.crowd
    C = cc.questions_per_hit
    if getattr(ctx, "stalled", None):
        return 0
    open_n = int(s.execute(select(func.count()).select_from(HitIntent)
                           .where(HitIntent.status.in_(OPEN_INTENT))).scalar_one())
    free = cc.max_hits_in_flight - open_n
    if free <= 0:
        return 0
    budget_bound = False
    if cc.budget_usd > 0:
        afford = ledger(s, cc.budget_usd).affordable_hits(ctx.hit_cost, free)
        if afford < free:
            free, budget_bound = afford, True
        if free <= 0:
            ctx.budget_exhausted = True
            return 0
    unpacked = _unpacked(s)
    need = free * C - len(unpacked)
    if need > 0 and not ctx.cs.search.done:
        ctx.cs.ask_in(s, target=need, max_questions=need if budget_bound else None)
        unpacked = _unpacked(s)
    made = 0
    for i in range(0, len(unpacked), C):
        chunk = unpacked[i:i + C]
        if made >= free:
            break
        if len(chunk) < C and len(chunk) < math.ceil(C / 2) and open_n + made > 0:
            break
        _make_intent(ctx, s, chunk)
        made += 1
    if made == 0 and open_n == 0 and free > 0:
        made += _probation_hit(ctx, s)
    if budget_bound and made >= free:
        ctx.budget_exhausted = True
    return made


def _probation_hit(ctx, s) -> int:
    """Stalled: nothing in flight and the search waits only on answers held while their workers are
    on probation.  Re-posting those questions would pay a second time for the same answers (the
    same worker may take them again); a HIT of gold questions alone lets the workers finish
    probation instead.  Up to two such HITs per worker whose answers are held; if those workers do
    not come back for them, the held questions are shown again (to anyone, gold included) rather
    than leaving the campaign stalled until the holds expire.  Returns how many HITs were made."""
    from orchestrator.campaign.store import get_meta, set_meta

    held = s.execute(select(CrowdAnswer.worker_id, func.count()).join(Question, Question.id == CrowdAnswer.question_id)
                     .where(CrowdAnswer.status == "held", Question.status == "pending")
                     .group_by(CrowdAnswer.worker_id)).all()
    if not held:
        return 0
    newest = int(s.execute(select(func.max(CrowdAnswer.id)).where(CrowdAnswer.status == "held")).scalar() or 0)
    made_for, count = (get_meta(s, "crowd.probation_hits", "0:0") or "0:0").split(":")
    count = int(count) if int(made_for) == newest else 0
    if (ctx.gold_yes or ctx.gold_no) and count < 2 * len(held):
        q = ctx.cfg.crowd.qualification
        records = {w.worker_id: w for w in s.execute(select(CrowdWorker).where(
            CrowdWorker.worker_id.in_([w for w, _ in held]))).scalars()}
        short = max(max(1, q.min_gold_answers) - (records[w].gold_total if w in records else 0) for w, _ in held)
        n_gold = max(1, ctx.cfg.crowd.gold_per_hit, min(short, ctx.cfg.crowd.questions_per_hit))
        iid = _make_intent(ctx, s, [], n_gold=n_gold)
        set_meta(s, "crowd.probation_hits", f"{newest}:{count + 1}")
        log_event(s, "probation_hit", intent=iid, gold=n_gold, workers=[w for w, _ in held],
                  held_answers=int(sum(n for _, n in held)))
        return 1
    qids = _held_unposted(s)
    C = ctx.cfg.crowd.questions_per_hit
    made = 0
    for i in range(0, len(qids), C):
        _make_intent(ctx, s, qids[i:i + C])
        made += 1
        break                      # one HIT at a time: the next pass sees what it resolved
    if made:
        log_event(s, "held_questions_reposted", questions=min(len(qids), C),
                  reason="the workers on probation did not take the gold HITs posted for them")
    return made


def _held_unposted(s) -> list[int]:
    held = select(CrowdAnswer.question_id).where(CrowdAnswer.status == "held")
    in_open = (select(HitItem.question_id).join(HitIntent, HitIntent.id == HitItem.intent_id)
               .where(HitIntent.status.in_(OPEN_INTENT), HitItem.question_id.is_not(None)))
    return list(s.execute(select(Question.id).where(Question.status == "pending", Question.id.in_(held),
                                                    Question.id.not_in(in_open)).order_by(Question.id)).scalars())


def _make_intent(ctx, s, question_ids: list[int], n_gold: int | None = None) -> int:
    from orchestrator.crowd.quality import gold_for_hit

    cc = ctx.cfg.crowd
    it = HitIntent(status="intent", attempt=0, hit_type_id=ctx.hit_type_id, n_questions=len(question_ids),
                   max_assignments=cc.assignments_per_hit, reserve_cents=ctx.hit_cost)
    s.add(it)
    s.flush()
    rng = np.random.default_rng([abs(int(ctx.cfg.campaign.seed)), int(it.id), 7])
    golds = gold_for_hit(ctx.gold_yes, ctx.gold_no, cc.gold_per_hit if n_gold is None else n_gold, rng)
    if not ctx.has_gold and n_gold is None:
        golds = []
    masks = dict(s.execute(select(Question.id, Question.mask_id)
                           .where(Question.id.in_(question_ids))).all()) if question_ids else {}
    entries = [(q, None, masks[q]) for q in question_ids] + [(None, g, None) for g in golds]
    perm = rng.permutation(len(entries)).tolist()
    bulk_insert(s, HitItem, [{"intent_id": it.id, "position": pos, "identifier": _identifier(ctx.uid, it.id, pos),
                              "question_id": entries[k][0], "gold_id": entries[k][1], "mask_id": entries[k][2]}
                             for pos, k in enumerate(perm)])
    it.n_gold = len(golds)
    it.token = token_for(ctx.uid, it.id, 0)
    log_event(s, "hit_intent", intent=it.id, questions=len(question_ids), gold=len(golds))
    return it.id


# ------------------------------------------------------------------------------- overlays
def _overlay_opts(ctx) -> dict:
    a = ctx.cfg.crowd.assets
    return {"size": a.overlay_size, "context": a.overlay_context}


def publish_gold_overlays(ctx, golds) -> dict[int, str]:
    from orchestrator.crowd.assets import OverlayItem, publish_overlays

    items = [OverlayItem(f"gold-{g.id}", g.image_path, json.loads(g.rle), json.loads(g.bbox) if g.bbox else None)
             for g in golds]
    urls = publish_overlays(ctx.assets, items, **_overlay_opts(ctx))
    return {g.id: urls[f"gold-{g.id}"] for g in golds}


def _mask_overlays(ctx, mask_ids: list[int]) -> tuple[dict[int, str], dict[int, str]]:
    """URLs and class names of masks."""
    from orchestrator.crowd.assets import OverlayItem, publish_overlays
    from orchestrator.campaign.store import Category, Image, Mask, chunks

    rows = []
    with read_session(ctx.engine) as s:
        for part in chunks(sorted(set(mask_ids))):
            rows += s.execute(select(Mask.id, Mask.rle, Mask.bbox, Image.file_name, Category.name)
                              .join(Image, Image.id == Mask.image_id, isouter=True)
                              .join(Category, Category.id == Mask.category_id)
                              .where(Mask.id.in_(part))).all()
    items, names = [], {}
    for mid, rle, bbox, fname, cname in rows:
        if rle is None or fname is None:
            raise LabelpropError(f"{ctx.dir}: mask {mid} has no image or RLE; crowd campaigns need COCO "
                                 f"predictions (ingest --results ... --image-root ...)")
        items.append(OverlayItem(f"mask-{mid}", ctx.image_root / fname, json.loads(rle),
                                 json.loads(bbox) if bbox else None))
        names[mid] = cname
    urls = publish_overlays(ctx.assets, items, **_overlay_opts(ctx))
    return {int(k.split("-", 1)[1]): v for k, v in urls.items()}, names


def task_items(ctx, intent_ids: list[int]) -> dict[int, list[TaskItem]]:
    """The items of each intent, with image URLs and class names when the backend shows images
    (deterministic: same items, same URLs)."""
    with read_session(ctx.engine) as s:
        items = s.execute(select(HitItem).where(HitItem.intent_id.in_(intent_ids))
                          .order_by(HitItem.intent_id, HitItem.position)).scalars().all()
        gold_ids = sorted({it.gold_id for it in items if it.gold_id is not None})
        golds = s.execute(select(Gold).where(Gold.id.in_(gold_ids))).scalars().all() if gold_ids else []
        s.expunge_all()
    by_intent: dict[int, list[TaskItem]] = {i: [] for i in intent_ids}
    if not ctx.backend.needs_images:
        for it in items:
            by_intent[it.intent_id].append(TaskItem(it.identifier, mask_id=it.mask_id, gold_id=it.gold_id))
        return by_intent
    mask_urls, names = _mask_overlays(ctx, [it.mask_id for it in items if it.mask_id is not None])
    gold_urls = publish_gold_overlays(ctx, golds) if golds else {}
    gold_names = {g.id: g.category for g in golds}
    for it in items:
        if it.gold_id is not None:
            ti = TaskItem(it.identifier, gold_urls[it.gold_id], gold_names[it.gold_id] or "object", gold_id=it.gold_id)
        else:
            ti = TaskItem(it.identifier, mask_urls[it.mask_id], names[it.mask_id], mask_id=it.mask_id)
        by_intent[it.intent_id].append(ti)
    return by_intent


# ------------------------------------------------------------------------------- remote
def _within_budget(ctx) -> int:
    """Give up intents never tried whose reservations no longer fit the budget (newest first), and
    give their questions back; returns how many.  Reservations fit when they are made, but a HIT
    re-posted or moved under a new HIT type is booked again at the new type's reward, which may be
    higher: without this a raised reward could spend past the budget."""
    cc = ctx.cfg.crowd
    if cc.budget_usd <= 0:
        return 0
    try:
        with transaction(ctx.engine) as s:
            over = -(ledger(s, cc.budget_usd).left_cents or 0)
            if over <= 0:
                return 0
            drop = []
            for it in s.execute(select(HitIntent).where(HitIntent.status == "intent", HitIntent.first_try_at.is_(None))
                                .order_by(HitIntent.id.desc())).scalars():
                if over <= 0:
                    break
                drop.append(it)
                over -= it.reserve_cents
            for it in drop:
                it.status, it.reviewed_at = "abandoned", utcnow()
            qids = list(s.execute(select(HitItem.question_id).where(
                HitItem.intent_id.in_([it.id for it in drop]), HitItem.question_id.is_not(None))).scalars())
            ctx.cs.release_in(s, qids, reason="over_budget")
            if drop:
                log_event(s, "hits_over_budget", intents=[it.id for it in drop], questions=len(qids))
    except BaseException:
        ctx.reload_search()
        raise
    if drop:
        ctx.budget_exhausted = True
        ctx.note(f"{len(drop)} HITs not posted: at the current reward they no longer fit in the budget "
                 f"(crowd.budget_usd = {cc.budget_usd})")
    return len(drop)


def create_hits(ctx, batch: int = 64) -> int:
    """Publish the HIT of every intent not created yet (within the budget); returns how many were created."""
    _within_budget(ctx)
    with read_session(ctx.engine) as s:
        todo = s.execute(select(HitIntent.id, HitIntent.attempt, HitIntent.hit_type_id, HitIntent.max_assignments,
                                HitIntent.first_try_at).where(HitIntent.status == "intent")
                         .order_by(HitIntent.id)).all()
    if not todo:
        return 0
    check_workers(ctx)
    cc = ctx.cfg.crowd
    made = 0
    window = ctx.backend.token_window_seconds
    for start in range(0, len(todo), batch):
        part = todo[start:start + batch]
        items = task_items(ctx, [r[0] for r in part])
        bad_images: dict[str, str] = {}
        if ctx.backend.needs_images:
            bad_images = _check_images(ctx, {i.image_url for lst in items.values() for i in lst})
        content = {iid: ctx.backend.render(lst, allow_unsure=cc.allow_unsure) for iid, lst in items.items()
                   if not any(i.image_url in bad_images for i in lst)}
        now = time.time()
        with transaction(ctx.engine) as s:
            for r in part:
                if r[4] is None and r[0] in content:
                    s.execute(bulk_update(HitIntent).where(HitIntent.id == r[0]).values(first_try_at=now))

        def create(r):
            iid, attempt, tid, max_a, first = r
            if iid not in content:
                lst = [i for i in items[iid] if i.image_url in bad_images]
                return iid, attempt, None, (f"not posted: {len(lst)} of its images are not served, e.g. "
                                            f"{lst[0].image_url} ({bad_images[lst[0].image_url]})")
            ann = annotation_for(ctx.uid, iid, attempt)
            if window is not None and first is not None and now - first > window:
                found = ctx.backend.find_by_annotation(ann)
                if found:
                    return iid, attempt, found, None
            task = Task(token=token_for(ctx.uid, iid, attempt), annotation=ann, type_id=tid, max_assignments=max_a,
                        lifetime_seconds=cc.lifetime_seconds, items=tuple(items[iid]), content=content[iid])
            try:
                res = ctx.backend.publish(task)
                return iid, attempt, res.task_id, "recovered" if res.recovered else None
            except BackendError as exc:
                return iid, attempt, None, str(exc)

        with ThreadPoolExecutor(max_workers=ctx.concurrency) as pool:
            results = list(pool.map(create, part))
        with transaction(ctx.engine) as s:
            for iid, attempt, hid, note in results:
                if hid is None:
                    log_event(s, "hit_create_failed", intent=iid, attempt=attempt, error=note)
                    ctx.note(f"HIT intent {iid}: {note}")
                    continue
                if s.get(CrowdHit, hid) is None:
                    s.add(CrowdHit(hit_id=hid, intent_id=iid, attempt=attempt))
                s.execute(bulk_update(HitIntent).where(HitIntent.id == iid, HitIntent.attempt == attempt,
                                                       HitIntent.status == "intent")
                          .values(status="created", hit_id=hid, posted_at=utcnow()))
                qids = select(HitItem.question_id).where(HitItem.intent_id == iid,
                                                         HitItem.question_id.is_not(None))
                s.execute(bulk_update(Question).where(Question.id.in_(qids)).values(hit_id=hid))
                if note == "recovered":
                    log_event(s, "hit_recovered", intent=iid, attempt=attempt, hit=hid)
                made += 1
        failed = [r for r in results if r[2] is None]
        if failed:
            break
    return made


def _check_images(ctx, urls: set[str]) -> dict[str, str]:
    """``{url: what is wrong}`` for the images a worker's browser could not load.  Images under one
    location (the URL without its file name) are published the same way, so a few of them are fetched
    per location and pass; where one fails, every image there is fetched."""
    from orchestrator.crowd.assets import check_urls

    todo = {u for u in urls if u not in ctx.urls_ok and u.rsplit("/", 1)[0] not in ctx.url_dirs_ok}
    by_dir: dict[str, list[str]] = {}
    for u in sorted(todo):
        by_dir.setdefault(u.rsplit("/", 1)[0], []).append(u)
    sample = [u for lst in by_dir.values() for u in lst[:3]]
    bad = check_urls(sample)
    for d, lst in by_dir.items():
        if any(u in bad for u in lst[:3]):
            bad.update(check_urls(lst[3:]))
        else:
            ctx.url_dirs_ok.add(d)
    ctx.urls_ok |= set(sample) - set(bad)
    return bad


def dispose_hits(ctx, only: str | None = None) -> int:
    """Delete HITs whose assignments are all settled, and old attempts of re-posted HITs
    (``only``: just that HIT)."""
    from orchestrator.crowd.crowd_store import CrowdAssignment as A

    with read_session(ctx.engine) as s:
        unsettled = select(A.intent_id).where(A.processed == True, A.remote_done == False)  # noqa: E712
        done = s.execute(select(HitIntent.id, HitIntent.hit_id).where(
            HitIntent.status == "reviewed", HitIntent.id.not_in(unsettled))).all()
        stale = s.execute(select(CrowdHit.hit_id, CrowdHit.intent_id).join(HitIntent, HitIntent.id == CrowdHit.intent_id)
                          .where(CrowdHit.status == "created",
                                 (CrowdHit.attempt < HitIntent.attempt) | (HitIntent.status == "abandoned"))).all()
    jobs = [(hid, iid, True) for iid, hid in done if hid] + [(hid, iid, False) for hid, iid in stale]
    if only is not None:
        jobs = [j for j in jobs if j[0] == only]
    if not jobs:
        return 0

    def delete(job):
        hid, iid, current = job
        try:
            ctx.backend.dispose(hid)
            return job, "disposed"
        except BackendError as exc:
            if exc.code == NOT_FOUND:
                return job, "disposed"
            if not current and exc.code == INVALID_STATE:
                try:   # an old attempt still open somewhere: expire it now, delete next pass
                    ctx.backend.expire(hid)
                except BackendError:
                    pass
            return job, str(exc)

    with ThreadPoolExecutor(max_workers=ctx.concurrency) as pool:
        results = list(pool.map(delete, jobs))
    n = 0
    with transaction(ctx.engine) as s:
        for (hid, iid, current), res in results:
            if res != "disposed":
                log_event(s, "hit_delete_failed", hit=hid, intent=iid, error=res)
                continue
            s.execute(bulk_update(CrowdHit).where(CrowdHit.hit_id == hid).values(status="disposed"))
            if current:
                s.execute(bulk_update(HitIntent).where(HitIntent.id == iid, HitIntent.status == "reviewed")
                          .values(status="disposed"))
            n += 1
    return n
