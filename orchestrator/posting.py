"""Posting verification HITs: the campaign's HIT type and qualifications, HIT intents, creation.

**Once per campaign** (:func:`ensure_setup`): a custom "blocked" qualification type (soft
blocks; the HIT type requires it ``DoesNotExist`` for discover, preview and accept), the
qualification test (a QualificationType with a Test and an AnswerKey, rendered by
``hit_templates.render`` from the ``test`` gold pool; required ``GreaterThanOrEqualTo``
the pass percentage) and the HIT type (reward, title, keywords, durations, auto-approval
delay, requirements: approval rate, approved HIT count, locales, the test, Masters).
A qualification type is recorded as an attempt *before* it is created; a crash right
after creation leaves an orphan type behind (names are unique, so the next attempt
uses the next name) and never two required ones.  CreateHITType is idempotent.

**Intents** (:func:`fill`, inside the caller's transaction): with at most
``max_hits_in_flight`` HITs open and only what the remaining budget can pay for
(``reserve_cents`` = (reward + fee) x assignments, reserved while a HIT is open),
the search is asked for about as many questions as the free slots hold (whole node
samples; sequential sampling spreads a node over rounds), and the pending questions not
yet in a HIT are packed in question-id order, ``questions_per_hit`` per HIT, with
``gold_per_hit`` gold questions (half known yes, half known no) shuffled in.  A HIT
less than half full waits for more questions unless nothing else is in flight.
Packing order, gold choice, shuffling and identifiers are all derived from the
campaign seed, its uid and the intent id, and :func:`fill` is idempotent (a second call
right after the first does nothing), so where a pass starts or stops never changes what
is posted.

**Creation** (:func:`create_hits`): intents are rendered (overlays published through the
asset store, cached by content hash, so the same question XML comes out after a crash)
and created with ``UniqueRequestToken = lp-<uid>-<intent>-<attempt>`` and
``RequesterAnnotation = lp:<uid>:<intent>:<attempt>``; each result is recorded before
further calls pile up.  A retried token answers ``HitAlreadyExists`` with the HIT an
earlier (crashed) try created, which is then recorded instead.  Past MTurk's 24-hour
token window the HIT is looked up by its annotation before a new one is created.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from sqlalchemy import func, select

from orchestrator.crowd_store import (OPEN_INTENT, CrowdAssignment, CrowdHit, CrowdSetup, Gold,
                                      HitIntent, HitItem)
from orchestrator.errors import LabelpropError
from orchestrator.mturk import (LOCALE, MASTERS_PRODUCTION, MASTERS_SANDBOX, NUMBER_APPROVED,
                                PERCENT_APPROVED, SANDBOX_URL, TurkError, call, existing_hit_id,
                                paginate)
from orchestrator.store import Question, bulk_insert, bulk_update, log_event, read_session, transaction, utcnow

__all__ = ["ensure_setup", "fill", "create_hits", "dispose_hits", "committed_cents", "spent_cents",
           "hit_cost_cents", "assignment_cost_cents", "token_for", "annotation_for"]

QUAL_EXISTS = "AWS.MechanicalTurk.QualificationTypeAlreadyExists"
TOKEN_WINDOW = 23 * 3600     # MTurk keeps a UniqueRequestToken for 24 h; look up by annotation after this


# ------------------------------------------------------------------------------- money
def assignment_cost_cents(crowd_cfg) -> int:
    from orchestrator.cost import assignment_cost

    return int(round(assignment_cost(crowd_cfg.reward_usd, crowd_cfg.assignments_per_hit,
                                     crowd_cfg.masters) * 100))


def hit_cost_cents(crowd_cfg) -> int:
    """Worst case for one HIT: every assignment approved, fees included."""
    return assignment_cost_cents(crowd_cfg) * crowd_cfg.assignments_per_hit


def committed_cents(s) -> int:
    """Reserved for open HITs plus owed or paid for processed assignments."""
    reserved = s.execute(select(func.coalesce(func.sum(HitIntent.reserve_cents), 0))
                         .where(HitIntent.status.in_(OPEN_INTENT))).scalar_one()
    owed = s.execute(select(func.coalesce(func.sum(CrowdAssignment.cost_cents), 0))
                     .where(CrowdAssignment.processed == True,  # noqa: E712
                            (CrowdAssignment.final_status == "Approved")
                            | ((CrowdAssignment.decision == "approve")
                               & (CrowdAssignment.final_status == "")))).scalar_one()
    return int(reserved) + int(owed)


def spent_cents(s) -> int:
    """Paid: reward + fee of every approved assignment (MTurk's fee rules)."""
    return int(s.execute(select(func.coalesce(func.sum(CrowdAssignment.cost_cents), 0))
                         .where(CrowdAssignment.final_status == "Approved")).scalar_one())


# ------------------------------------------------------------------------------- ids
def token_for(uid: str, intent_id: int, attempt: int) -> str:
    return f"lp-{uid}-{intent_id}-{attempt}"


def annotation_for(uid: str, intent_id: int, attempt: int) -> str:
    return f"lp:{uid}:{intent_id}:{attempt}"


def _identifier(uid: str, intent_id: int, position: int) -> str:
    return "q" + hashlib.sha256(f"{uid}:{intent_id}:{position}".encode()).hexdigest()[:15]


# ------------------------------------------------------------------------------- setup
def _ensure_qual(ctx, key: str, name: str, description: str, test: tuple[str, str] | None = None) -> str:
    with read_session(ctx.engine) as s:
        row = s.get(CrowdSetup, key)
        if row is not None and row.remote_id:
            return row.remote_id
        attempt = row.attempt if row is not None else 0
    q = ctx.cfg.crowd.qualification
    for _ in range(20):
        with transaction(ctx.engine) as s:          # the attempt is recorded before the call
            row = s.get(CrowdSetup, key)
            if row is None:
                s.add(CrowdSetup(key=key, attempt=attempt))
            else:
                row.attempt = attempt
        params = {"Name": f"{name} [{ctx.uid}-{attempt}]"[:256], "Description": description[:2000],
                  "Keywords": "labelprop", "QualificationTypeStatus": "Active"}
        if test is not None:
            params.update(Test=test[0], AnswerKey=test[1], TestDurationInSeconds=q.test_duration_seconds,
                          RetryDelayInSeconds=q.retry_delay_seconds)
        try:
            resp = call(ctx.client, "CreateQualificationType", **params)
        except TurkError as exc:
            if exc.turk_code == QUAL_EXISTS:
                attempt += 1
                continue
            raise LabelpropError(f"cannot create the {key.replace('_', ' ')}: {exc}") from None
        qid = resp["QualificationType"]["QualificationTypeId"]
        with transaction(ctx.engine) as s:
            row = s.get(CrowdSetup, key)
            row.remote_id = qid
            row.params = json.dumps({"name": params["Name"]})
            log_event(s, "crowd_qualification_created", key=key, id=qid, name=params["Name"])
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


def ensure_setup(ctx) -> str:
    """Create (once) the qualification types and the HIT type; returns the HIT type id."""
    cc = ctx.cfg.crowd
    q = cc.qualification
    name = ctx.cfg.campaign.name
    block = _ensure_qual(ctx, "block_qual", f"labelprop {name}: blocked",
                         f"Workers whose answers to known-answer questions of the labelprop campaign "
                         f"'{name}' were mostly wrong. Holders cannot take its HITs.")
    reqs = []
    if q.min_percent_approved > 0:
        reqs.append({"QualificationTypeId": PERCENT_APPROVED, "Comparator": "GreaterThanOrEqualTo",
                     "IntegerValues": [q.min_percent_approved], "ActionsGuarded": "Accept"})
    if q.min_hits_approved > 0:
        reqs.append({"QualificationTypeId": NUMBER_APPROVED, "Comparator": "GreaterThanOrEqualTo",
                     "IntegerValues": [q.min_hits_approved], "ActionsGuarded": "Accept"})
    if q.locales:
        locs = []
        for loc in q.locales:
            country, _, sub = loc.partition("-")
            locs.append({"Country": country.upper(), **({"Subdivision": sub.upper()} if sub else {})})
        reqs.append({"QualificationTypeId": LOCALE, "Comparator": "In", "LocaleValues": locs,
                     "ActionsGuarded": "Accept"})
    if cc.masters:
        sandbox = ctx.client.meta.endpoint_url.rstrip("/") == SANDBOX_URL
        reqs.append({"QualificationTypeId": MASTERS_SANDBOX if sandbox else MASTERS_PRODUCTION,
                     "Comparator": "Exists", "ActionsGuarded": "Accept"})
    if q.enabled:
        from hit_templates.render import qualification_pass_value, render_qualification_test

        items = _test_items(ctx)
        if not items:
            raise LabelpropError(f"{ctx.dir}: [crowd.qualification] enabled but the campaign has no "
                                 f"test gold; run `labelprop gold {ctx.dir} ...` (or set enabled = false)")
        with read_session(ctx.engine) as s:
            row = s.get(CrowdSetup, "test_qual")
            have = row is not None and row.remote_id
        test = None if have else render_qualification_test(items, pass_fraction=q.pass_fraction)
        tq = _ensure_qual(ctx, "test_qual", f"labelprop {name}: outline check test",
                          "A short test: say whether each highlighted object is outlined correctly.", test)
        reqs.append({"QualificationTypeId": tq, "Comparator": "GreaterThanOrEqualTo",
                     "IntegerValues": [qualification_pass_value(q.pass_fraction)], "ActionsGuarded": "Accept"})
    reqs.append({"QualificationTypeId": block, "Comparator": "DoesNotExist",
                 "ActionsGuarded": "DiscoverPreviewAndAccept"})
    params = {"AutoApprovalDelayInSeconds": cc.auto_approval_delay_seconds,
              "AssignmentDurationInSeconds": cc.assignment_duration_seconds,
              "Reward": f"{cc.reward_usd:.2f}", "Title": cc.title, "Keywords": cc.keywords,
              "Description": cc.description, "QualificationRequirements": reqs}
    key = "hit_type:" + hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    with read_session(ctx.engine) as s:
        row = s.get(CrowdSetup, key)
        if row is not None and row.remote_id:
            return row.remote_id
    try:
        tid = call(ctx.client, "CreateHITType", **params)["HITTypeId"]
    except TurkError as exc:
        raise LabelpropError(f"cannot create the HIT type: {exc}") from None
    with transaction(ctx.engine) as s:
        s.merge(CrowdSetup(key=key, remote_id=tid, params=json.dumps(params, sort_keys=True)))
        log_event(s, "crowd_hit_type", id=tid, reward=params["Reward"], requirements=len(reqs))
    return tid


# ------------------------------------------------------------------------------- intents
def _unpacked(s) -> list[int]:
    """Pending questions in no HIT yet.  Packing always takes the lowest unpacked ids first (and
    re-posted held questions were packed before), so they are exactly the pending questions
    above the highest packed id: one index range scan instead of an anti-join."""
    top = s.execute(select(func.max(HitItem.question_id))).scalar() or 0
    return list(s.execute(select(Question.id).where(Question.status == "pending", Question.id > top)
                          .order_by(Question.id)).scalars())


def fill(ctx, s) -> int:
    """Ask the search for questions and pack them into HIT intents (inside transaction ``s``);
    returns how many intents were made.  Idempotent: see the module docstring."""
    cc = ctx.cfg.crowd
    C = cc.questions_per_hit
    open_n = int(s.execute(select(func.count()).select_from(HitIntent)
                           .where(HitIntent.status.in_(OPEN_INTENT))).scalar_one())
    free = cc.max_hits_in_flight - open_n
    if free <= 0:
        return 0
    budget_bound = False
    if cc.budget_usd > 0:
        left = int(round(cc.budget_usd * 100)) - committed_cents(s)
        afford = max(0, left // ctx.hit_cost)
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
        # stalled: nothing in flight and the search waits on answers held while their workers
        # are on probation -- show those questions again (to anyone, gold included), so the
        # workers earn their gold record or others answer them
        held = _held_unposted(s)
        for i in range(0, len(held), C):
            if made >= free:
                break
            _make_intent(ctx, s, held[i:i + C])
            made += 1
        if held:
            log_event(s, "held_questions_reposted", questions=len(held), hits=made)
    if budget_bound and made >= free:
        ctx.budget_exhausted = True
    return made


def _held_unposted(s) -> list[int]:
    from orchestrator.crowd_store import CrowdAnswer

    held = select(CrowdAnswer.question_id).where(CrowdAnswer.status == "held")
    in_open = (select(HitItem.question_id).join(HitIntent, HitIntent.id == HitItem.intent_id)
               .where(HitIntent.status.in_(OPEN_INTENT), HitItem.question_id.is_not(None)))
    return list(s.execute(select(Question.id).where(Question.status == "pending", Question.id.in_(held),
                                                    Question.id.not_in(in_open)).order_by(Question.id)).scalars())


def _make_intent(ctx, s, question_ids: list[int]) -> int:
    from orchestrator.quality import gold_for_hit

    cc = ctx.cfg.crowd
    it = HitIntent(status="intent", attempt=0, hit_type_id=ctx.hit_type_id, n_questions=len(question_ids),
                   max_assignments=cc.assignments_per_hit, reserve_cents=ctx.hit_cost)
    s.add(it)
    s.flush()
    rng = np.random.default_rng([abs(int(ctx.cfg.campaign.seed)), int(it.id), 7])
    golds = gold_for_hit(ctx.gold_yes, ctx.gold_no, cc.gold_per_hit, rng)
    masks = dict(s.execute(select(Question.id, Question.mask_id)
                           .where(Question.id.in_(question_ids))).all())
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
    from orchestrator.assets import OverlayItem, publish_overlays

    items = [OverlayItem(f"gold-{g.id}", g.image_path, json.loads(g.rle), json.loads(g.bbox) if g.bbox else None)
             for g in golds]
    urls = publish_overlays(ctx.assets, items, **_overlay_opts(ctx))
    return {g.id: urls[f"gold-{g.id}"] for g in golds}


def _mask_overlays(ctx, mask_ids: list[int]) -> tuple[dict[int, str], dict[int, str]]:
    """URLs and class names of masks."""
    from orchestrator.assets import OverlayItem, publish_overlays
    from orchestrator.store import Category, Image, Mask, chunks

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


def render_intents(ctx, intent_ids: list[int]) -> dict[int, str]:
    """Question XML of each intent (deterministic: same items, same URLs)."""
    from hit_templates.render import HitQuestion, render_verification_question

    with read_session(ctx.engine) as s:
        items = s.execute(select(HitItem).where(HitItem.intent_id.in_(intent_ids))
                          .order_by(HitItem.intent_id, HitItem.position)).scalars().all()
        gold_ids = sorted({it.gold_id for it in items if it.gold_id is not None})
        golds = s.execute(select(Gold).where(Gold.id.in_(gold_ids))).scalars().all() if gold_ids else []
        s.expunge_all()
    mask_urls, names = _mask_overlays(ctx, [it.mask_id for it in items if it.mask_id is not None])
    gold_urls = publish_gold_overlays(ctx, golds) if golds else {}
    gold_names = {g.id: g.category for g in golds}
    by_intent: dict[int, list] = {}
    for it in items:
        if it.gold_id is not None:
            hq = HitQuestion(it.identifier, gold_urls[it.gold_id], gold_names[it.gold_id] or "object")
        else:
            hq = HitQuestion(it.identifier, mask_urls[it.mask_id], names[it.mask_id])
        by_intent.setdefault(it.intent_id, []).append(hq)
    return {i: render_verification_question(qs, form="crowd-form", allow_unsure=ctx.cfg.crowd.allow_unsure)
            for i, qs in by_intent.items()}


# ------------------------------------------------------------------------------- remote
def _find_by_annotation(ctx, annotation: str) -> str | None:
    for h in paginate(ctx.client, "ListHITs", "HITs"):
        if h.get("RequesterAnnotation") == annotation:
            return h["HITId"]
    return None


def create_hits(ctx, batch: int = 64) -> int:
    """Create the remote HIT of every intent not created yet; returns how many were created."""
    with read_session(ctx.engine) as s:
        todo = s.execute(select(HitIntent.id, HitIntent.attempt, HitIntent.hit_type_id, HitIntent.max_assignments,
                                HitIntent.first_try_at).where(HitIntent.status == "intent")
                         .order_by(HitIntent.id)).all()
    if not todo:
        return 0
    cc = ctx.cfg.crowd
    made = 0
    for start in range(0, len(todo), batch):
        part = todo[start:start + batch]
        xml = render_intents(ctx, [r[0] for r in part])
        now = time.time()
        with transaction(ctx.engine) as s:
            for r in part:
                if r[4] is None:
                    s.execute(bulk_update(HitIntent).where(HitIntent.id == r[0]).values(first_try_at=now))

        def create(r):
            iid, attempt, tid, max_a, first = r
            ann = annotation_for(ctx.uid, iid, attempt)
            if first is not None and now - first > TOKEN_WINDOW:
                found = _find_by_annotation(ctx, ann)
                if found:
                    return iid, attempt, found, None
            try:
                resp = call(ctx.client, "CreateHITWithHITType", HITTypeId=tid, MaxAssignments=max_a,
                            LifetimeInSeconds=cc.lifetime_seconds, Question=xml[iid], RequesterAnnotation=ann,
                            UniqueRequestToken=token_for(ctx.uid, iid, attempt))
                return iid, attempt, resp["HIT"]["HITId"], None
            except TurkError as exc:
                hid = existing_hit_id(exc)
                if hid:
                    return iid, attempt, hid, "recovered"
                return iid, attempt, None, str(exc)

        with ThreadPoolExecutor(max_workers=cc.concurrency) as pool:
            results = list(pool.map(create, part))
        with transaction(ctx.engine) as s:
            for iid, attempt, hid, note in results:
                if hid is None:
                    log_event(s, "hit_create_failed", intent=iid, attempt=attempt, error=note)
                    ctx.note(f"HIT intent {iid}: create failed: {note}")
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


def dispose_hits(ctx) -> int:
    """Delete HITs whose assignments are all settled, and old attempts of re-posted HITs."""
    from orchestrator.crowd_store import CrowdAssignment as A

    with read_session(ctx.engine) as s:
        unsettled = select(A.intent_id).where(A.processed == True, A.remote_done == False)  # noqa: E712
        done = s.execute(select(HitIntent.id, HitIntent.hit_id).where(
            HitIntent.status == "reviewed", HitIntent.id.not_in(unsettled))).all()
        stale = s.execute(select(CrowdHit.hit_id, CrowdHit.intent_id).join(HitIntent, HitIntent.id == CrowdHit.intent_id)
                          .where(CrowdHit.status == "created",
                                 (CrowdHit.attempt < HitIntent.attempt) | (HitIntent.status == "abandoned"))).all()
    jobs = [(hid, iid, True) for iid, hid in done if hid] + [(hid, iid, False) for hid, iid in stale]
    if not jobs:
        return 0

    def delete(job):
        hid, iid, current = job
        try:
            call(ctx.client, "DeleteHIT", HITId=hid)
            return job, "disposed"
        except TurkError as exc:
            if exc.turk_code == "AWS.MechanicalTurk.HITDoesNotExist":
                return job, "disposed"
            if not current and exc.turk_code == "AWS.MechanicalTurk.InvalidHITState":
                try:   # an old attempt still open somewhere: expire it now, delete next pass
                    call(ctx.client, "UpdateExpirationForHIT", HITId=hid, ExpireAt=0)
                except TurkError:
                    pass
            return job, str(exc)

    with ThreadPoolExecutor(max_workers=ctx.cfg.crowd.concurrency) as pool:
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
