"""Store tables of real crowd campaigns (posting, polling, quality control, money).

They live in the campaign store beside the search tables and are created by
:func:`orchestrator.campaign.store.open_store`.  Money is kept in integer cents.

* :class:`CrowdSetup`: remote objects created once per campaign (the HIT type, the
  "blocked" and the test qualification types), with the parameters they were made from.
* :class:`HitIntent`: one HIT to post.  Its questions (:class:`HitItem` rows) are fixed
  in the same transaction that creates the intent, *before* any remote call; the remote
  HIT is then created with ``UniqueRequestToken = token`` (derived from campaign, intent
  and attempt) and ``RequesterAnnotation = "lp:<uid>:<intent id>"``.  Status:
  ``intent`` (not created remotely yet) -> ``created`` -> ``reviewed`` (answers
  processed) -> ``disposed`` (deleted remotely); ``abandoned`` when it expired unanswered
  more than ``crowd.max_reposts`` times.  ``reserve_cents`` is the worst-case cost of the
  HIT, reserved against the budget while the intent is open.
* :class:`CrowdHit`: every remote HIT (one per intent attempt), so that old attempts are
  deleted too.
* :class:`HitItem`: position ``position`` of a HIT shows ``identifier`` (opaque) for
  ``question_id`` (a search question) or ``gold_id`` (a known answer).
* :class:`Gold`: held-out masks with known answers; ``pool`` is ``hit`` (hidden in HITs)
  or ``test`` (the qualification test).
* :class:`CrowdAssignment`: a submitted assignment as fetched, then what quality control
  decided about it (approve/reject, cost, gold score, flags) and whether the remote
  approve/reject call was made.
* :class:`CrowdAnswer`: every answer of every assignment (gold, held, recorded, pooled
  or discarded).
* :class:`CrowdWorker`: gold accuracy, counts, soft block.
* :class:`CrowdForeignHit`: HITs of the campaign's HIT type it never posted (logged once).
* :class:`CrowdBonus`: a bonus to pay, recorded as an intent before the (not always
  idempotent) platform call is made with its token.

Columns added after a campaign was created are added to its tables when the store is
opened (:func:`add_missing_columns`), so older campaigns keep working.
"""
from __future__ import annotations

import datetime as _dt
from typing import Optional

from sqlalchemy import Column, Index, Text
from sqlmodel import Field, SQLModel

__all__ = ["CrowdSetup", "HitIntent", "CrowdHit", "HitItem", "Gold", "CrowdAssignment",
           "CrowdAnswer", "CrowdWorker", "CrowdForeignHit", "CrowdBonus", "CROWD_MODELS", "OPEN_INTENT",
           "add_missing_columns"]

OPEN_INTENT = ("intent", "created")


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


class CrowdSetup(SQLModel, table=True):
    __tablename__ = "crowd_setup"
    key: str = Field(primary_key=True)          # hit_type:<hash> | block_qual | test_qual
    remote_id: Optional[str] = None
    params: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    attempt: int = 0
    extra: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    created_at: _dt.datetime = Field(default_factory=_now)


class HitIntent(SQLModel, table=True):
    __tablename__ = "hit_intent"
    id: Optional[int] = Field(default=None, primary_key=True)
    status: str = Field(default="intent", index=True)
    attempt: int = 0
    token: str = ""
    hit_id: Optional[str] = Field(default=None, index=True)
    hit_type_id: str = ""
    n_questions: int = 0
    n_gold: int = 0
    max_assignments: int = 1
    reserve_cents: int = 0
    reviewable: bool = False                 # remote HIT reviewable and its assignments fetched
    reposts: int = 0                         # re-posts after expiring unanswered (max: crowd.max_reposts)
    retired: int = 0                         # 1: its HIT type was replaced, expire it; 2: expired
    first_try_at: Optional[float] = None     # epoch of the first CreateHIT try of this attempt
    created_at: _dt.datetime = Field(default_factory=_now)
    posted_at: Optional[_dt.datetime] = None
    reviewed_at: Optional[_dt.datetime] = None


class CrowdHit(SQLModel, table=True):
    __tablename__ = "crowd_hit"
    hit_id: str = Field(primary_key=True)
    intent_id: int = Field(index=True)
    attempt: int = 0
    status: str = Field(default="created", index=True)   # created | disposed
    created_at: _dt.datetime = Field(default_factory=_now)


class HitItem(SQLModel, table=True):
    __tablename__ = "hit_item"
    __table_args__ = (Index("ix_hit_item_intent_pos", "intent_id", "position", unique=True),)
    id: Optional[int] = Field(default=None, primary_key=True)
    intent_id: int
    position: int
    identifier: str = Field(index=True, unique=True)
    question_id: Optional[int] = Field(default=None, index=True)
    gold_id: Optional[int] = None
    mask_id: Optional[int] = None


class Gold(SQLModel, table=True):
    __tablename__ = "gold"
    id: Optional[int] = Field(default=None, primary_key=True)
    pool: str = Field(default="hit", index=True)          # hit | test
    label: int                                            # 1 yes, 0 no
    iou: Optional[float] = None
    mask_id: Optional[int] = None                         # --from-masks
    image_path: str
    rle: str = Field(sa_column=Column(Text, nullable=False))
    bbox: Optional[str] = Field(default=None, sa_column=Column(Text))
    category: str = ""
    identifier: Optional[str] = None                      # in the qualification test
    source: str = ""
    created_at: _dt.datetime = Field(default_factory=_now)


class CrowdAssignment(SQLModel, table=True):
    __tablename__ = "crowd_assignment"
    assignment_id: str = Field(primary_key=True)
    hit_id: str = Field(index=True)
    intent_id: int = Field(index=True)
    attempt: int = 0
    worker_id: str = Field(index=True)
    remote_status: str = "Submitted"           # as fetched: Submitted | Approved | Rejected
    answer_xml: str = Field(default="", sa_column=Column(Text, nullable=False))
    accept_time: Optional[float] = None
    submit_time: Optional[float] = None
    seconds: Optional[float] = None
    processed: bool = Field(default=False, index=True)
    outcome: str = ""                          # ok | invalid | blocked_worker | rejected ...
    decision: str = ""                         # approve | reject
    feedback: Optional[str] = None
    remote_done: bool = Field(default=False, index=True)
    final_status: str = ""                     # Approved | Rejected once the remote side agrees
    cost_cents: int = 0                        # reward + fee when approved
    gold_correct: int = 0
    gold_total: int = 0
    n_answers: int = 0
    flagged_fast: bool = False
    fetched_at: _dt.datetime = Field(default_factory=_now)
    processed_at: Optional[_dt.datetime] = None


class CrowdAnswer(SQLModel, table=True):
    __tablename__ = "crowd_answer"
    id: Optional[int] = Field(default=None, primary_key=True)
    assignment_id: str = Field(index=True)
    worker_id: str = Field(index=True)
    intent_id: int = Field(index=True)
    identifier: str
    question_id: Optional[int] = Field(default=None, index=True)
    gold_id: Optional[int] = None
    label: int                                 # 1 yes, 0 no, -1 unsure
    correct: Optional[bool] = None             # gold only
    status: str = Field(index=True)            # gold | held | recorded | pooled | discarded
    seconds: Optional[float] = None            # per question (the page's own timing when it sent one)
    worker_accuracy: Optional[float] = None    # the worker's gold accuracy when the answer was reviewed
    agreement: Optional[float] = None          # share of the other answers in its cluster with its label
    created_at: _dt.datetime = Field(default_factory=_now)


class CrowdWorker(SQLModel, table=True):
    __tablename__ = "crowd_worker"
    worker_id: str = Field(primary_key=True)
    gold_correct: int = 0
    gold_total: int = 0
    assignments: int = 0
    approved: int = 0
    rejected: int = 0
    flagged: int = 0
    trusted: bool = False
    blocked: bool = Field(default=False, index=True)
    blocked_reason: Optional[str] = None
    block_remote_done: bool = False
    test_credit: int = 0                       # qualification-test answers counted as gold (once)
    first_seen: _dt.datetime = Field(default_factory=_now)


class CrowdForeignHit(SQLModel, table=True):
    __tablename__ = "crowd_foreign_hit"
    hit_id: str = Field(primary_key=True)
    annotation: Optional[str] = None
    seen_at: _dt.datetime = Field(default_factory=_now)


class CrowdBonus(SQLModel, table=True):
    __tablename__ = "crowd_bonus"
    id: Optional[int] = Field(default=None, primary_key=True)
    worker_id: str = Field(index=True)
    assignment_id: str
    bonus_cents: int
    cost_cents: int                            # bonus + fee, booked when recorded
    reason: str = Field(default="", sa_column=Column(Text, nullable=False))
    token: str = Field(unique=True)
    status: str = Field(default="intent", index=True)   # intent | paid | failed
    error: Optional[str] = None
    created_at: _dt.datetime = Field(default_factory=_now)
    paid_at: Optional[_dt.datetime] = None


from orchestrator.crowd.prolific_store import PROLIFIC_MODELS  # noqa: E402  (the prolific backend's tables)

CROWD_MODELS = (CrowdSetup, HitIntent, CrowdHit, HitItem, Gold, CrowdAssignment, CrowdAnswer,
                CrowdWorker, CrowdForeignHit, CrowdBonus, *PROLIFIC_MODELS)


def add_missing_columns(engine, models=CROWD_MODELS) -> list[str]:
    """``ALTER TABLE ... ADD COLUMN`` for columns a model has and its table lacks (campaigns
    created by an older labelprop); returns what was added.  Only nullable or defaulted
    scalar columns are ever added, so existing rows stay valid."""
    from sqlalchemy import inspect, text

    insp = inspect(engine)
    todo = []
    for m in models:
        table = m.__table__
        if not insp.has_table(table.name):
            continue
        have = {c["name"] for c in insp.get_columns(table.name)}
        todo += [(table.name, col) for col in table.columns if col.name not in have]
    if not todo:
        return []
    added = []
    with engine.begin() as conn:
        for tname, col in todo:
            ctype = col.type.compile(dialect=engine.dialect)
            default = col.default.arg if col.default is not None and not callable(col.default.arg) else None
            if isinstance(default, bool):
                lit = ("1" if default else "0") if engine.dialect.name == "sqlite" else ("TRUE" if default else "FALSE")
            elif isinstance(default, (int, float)):
                lit = repr(default)
            elif isinstance(default, str):
                lit = "'" + default.replace("'", "''") + "'"
            else:
                lit = None
            clause = f" DEFAULT {lit}" if lit is not None else ""
            conn.execute(text(f"ALTER TABLE {tname} ADD COLUMN {col.name} {ctype}{clause}"))
            added.append(f"{tname}.{col.name}")
    return added
