"""`labelprop hits`: a campaign's HITs on its platform -- list, expire, delete -- through the backend.

Expiring records the intent first (``retired``), so the next poll re-posts what was not answered
under the current HIT type without counting it as a re-post; deleting is the poll pass's own
dispose step (only HITs whose assignments are all settled).
"""
from __future__ import annotations

from sqlalchemy import func, select

from orchestrator.crowd.crowd_store import CrowdAssignment, HitIntent
from orchestrator.errors import LabelpropError
from orchestrator.crowd.posting import expire_intents
from orchestrator.campaign.store import bulk_update, log_event, read_session, transaction

__all__ = ["list_hits", "expire_hits", "delete_hits"]


def _ctx(campaign_dir, db, options):
    from orchestrator.crowd.poll import CrowdContext

    return CrowdContext(campaign_dir, db=db, options=options)


def list_hits(campaign_dir, *, db=None, options=None) -> list[dict]:
    ctx = _ctx(campaign_dir, db, options)
    try:
        with read_session(ctx.engine) as s:
            intents = s.execute(select(HitIntent).order_by(HitIntent.id)).scalars().all()
            subs = dict(s.execute(select(CrowdAssignment.intent_id, func.count())
                                  .group_by(CrowdAssignment.intent_id)).all())
            s.expunge_all()
        remote = {}
        types = {it.hit_type_id for it in intents if it.hit_type_id}
        if types:
            remote = {t.task_id: t for t in ctx.backend.list_tasks(types)}
        return [{"intent": it.id, "attempt": it.attempt, "hit_id": it.hit_id, "status": it.status,
                 "platform_status": remote[it.hit_id].status if it.hit_id in remote else
                 ("Disposed" if it.status == "disposed" else None),
                 "questions": it.n_questions, "gold": it.n_gold, "submitted": int(subs.get(it.id, 0)),
                 "posted_at": it.posted_at, "assignment_cost_cents": it.reserve_cents // max(1, it.max_assignments)}
                for it in intents]
    finally:
        ctx.close()


def expire_hits(campaign_dir, *, hit: str | None = None, db=None, options=None) -> dict:
    ctx = _ctx(campaign_dir, db, options)
    try:
        with transaction(ctx.engine) as s:
            q = select(HitIntent.id, HitIntent.hit_id).where(HitIntent.status == "created",
                                                             HitIntent.reviewable == False)  # noqa: E712
            if hit:
                q = q.where(HitIntent.hit_id == hit)
            todo = s.execute(q).all()
            if hit and not todo:
                raise LabelpropError(f"{campaign_dir}: {hit} is not an open HIT of this campaign "
                                     f"(see `labelprop hits {campaign_dir} list`)")
            if todo:
                s.execute(bulk_update(HitIntent).where(HitIntent.id.in_([i for i, _ in todo])).values(retired=1))
                log_event(s, "hits_expire_requested", hits=[h for _, h in todo])
        failed = expire_intents(ctx, todo)
        return {"done": len(todo) - len(failed), "failed": failed}
    finally:
        ctx.close()


def delete_hits(campaign_dir, *, hit: str | None = None, db=None, options=None) -> dict:
    from orchestrator.crowd.posting import dispose_hits

    ctx = _ctx(campaign_dir, db, options)
    try:
        if hit:
            with read_session(ctx.engine) as s:
                it = s.execute(select(HitIntent.status).where(HitIntent.hit_id == hit)).scalar()
            if it is None:
                raise LabelpropError(f"{campaign_dir}: {hit} is not a HIT of this campaign")
            if it != "reviewed":
                raise LabelpropError(f"{campaign_dir}: HIT {hit} is {it}: only HITs whose answers were processed "
                                     f"and paid can be deleted (run `labelprop poll {campaign_dir}` first)")
        n = dispose_hits(ctx, only=hit)
        return {"done": n, "failed": []}
    finally:
        ctx.close()
