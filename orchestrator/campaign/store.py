"""The campaign store: sqlmodel tables plus engine / session / transaction helpers.

SQLite by default (``DIR/campaign.db``, WAL mode, foreign keys on, busy timeout);
``--db URL`` takes any SQLAlchemy URL (PostgreSQL for many pollers).  Nothing here
issues dialect-specific SQL except the SQLite pragmas, applied only for SQLite.

Persistence of the search (lead's glue) goes through :func:`transaction` and the bulk
helpers at the bottom: :func:`load_node_arrays` / :func:`save_node_arrays` map the
search's per-node arrays to sparse ``Node`` rows (only nodes that left UNSEEN), and
:func:`load_mask_answers` gives the per-mask ``answer`` / ``pending`` arrays.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np
from sqlalchemy import Column, Index, Text, delete, event, func, insert, select, update
from sqlalchemy.engine import Engine
from sqlmodel import Field, Session, SQLModel, create_engine

from orchestrator.errors import LabelpropError

__all__ = [
    "SCHEMA_VERSION", "Category", "Image", "Mask", "ArrayFile", "Node", "Question", "Answer",
    "Event", "Meta", "CampaignRound", "open_store", "store_url_for", "transaction", "read_session", "log_event",
    "get_meta", "set_meta", "bulk_insert", "chunks", "utcnow", "load_node_arrays",
    "save_node_arrays", "clear_search_state", "load_mask_answers", "count_rows",
    "insert_questions", "record_answers",
]

SCHEMA_VERSION = "1"
# Bound parameters per statement stay below SQLite's limit (32766) and PostgreSQL's (65535).
CHUNK = 5000


def utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


# ----------------------------------------------------------------------------------- tables
class Category(SQLModel, table=True):
    __tablename__ = "category"
    id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    name: str


class Image(SQLModel, table=True):
    __tablename__ = "image"
    id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    file_name: str
    width: int
    height: int


class Mask(SQLModel, table=True):
    """One predicted mask; ``id`` is its row in the ingested predictions and in features.npy."""
    __tablename__ = "mask"
    id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    image_id: Optional[int] = Field(default=None, foreign_key="image.id", index=True)
    category_id: int = Field(foreign_key="category.id", index=True)
    score: float
    bbox: Optional[str] = Field(default=None, sa_column=Column(Text))   # JSON [x, y, w, h]
    rle: Optional[str] = Field(default=None, sa_column=Column(Text))    # JSON {"size", "counts"}
    iou: Optional[float] = None                                        # ground truth if known
    # the campaign round that detected it (`labelprop iterate`; 1 for every mask of a store
    # made before rounds existed: the column is added with DEFAULT 1 when such a store opens)
    round: int = Field(default=1, index=True)


class ArrayFile(SQLModel, table=True):
    """A large array beside the store, referenced by path (relative to DIR) and sha256."""
    __tablename__ = "array_file"
    name: str = Field(primary_key=True)
    path: str
    sha256: str
    shape: str          # JSON list
    dtype: str
    created_at: _dt.datetime = Field(default_factory=utcnow)


class Node(SQLModel, table=True):
    """Search state of one forest node; only nodes that left UNSEEN have a row."""
    __tablename__ = "node"
    node_id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    class_id: int = Field(index=True)
    state: int = Field(index=True)
    seq: int = 0
    q: Optional[float] = None
    rounds: int = 0
    n_yes: int = 0
    n_answered: int = 0
    updated_at: _dt.datetime = Field(default_factory=utcnow)


class Question(SQLModel, table=True):
    __tablename__ = "question"
    __table_args__ = (Index("ix_question_mask_status", "mask_id", "status"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    mask_id: int = Field(foreign_key="mask.id")
    node_id: int = Field(index=True)        # a forest node id (no FK: Node rows are sparse)
    round: int = 0
    status: str = Field(default="pending", index=True)  # pending | answered | discarded
    hit_id: Optional[str] = Field(default=None, index=True)
    created_at: _dt.datetime = Field(default_factory=utcnow)


class Answer(SQLModel, table=True):
    __tablename__ = "answer"
    id: Optional[int] = Field(default=None, primary_key=True)
    question_id: int = Field(foreign_key="question.id", index=True)
    mask_id: int = Field(foreign_key="mask.id", index=True)
    label: int                              # 1 yes, 0 no
    worker_id: Optional[str] = Field(default=None, index=True)
    seconds: Optional[float] = None
    source: str = "crowd"                   # e.g. mturk | server | simulated | gold | import
    created_at: _dt.datetime = Field(default_factory=utcnow)


class Event(SQLModel, table=True):
    __tablename__ = "event"
    id: Optional[int] = Field(default=None, primary_key=True)
    ts: _dt.datetime = Field(default_factory=utcnow, index=True)
    kind: str = Field(index=True)
    payload: str = Field(default="{}", sa_column=Column(Text, nullable=False))


class CampaignRound(SQLModel, table=True):
    """One round of the detect -> search -> retrain loop (``labelprop iterate``).

    Round 1 is the campaign as ingested (a store without rows is all round 1).  A round
    N > 1 is prepared in steps (``step``: train, detect, ingest, cluster, then ``open``:
    its search runs); ``plan`` (JSON) records what the round was started with, so a rerun
    after a kill redoes the unfinished step with the same inputs.  When round N+1 starts,
    round N is ``frozen``: its accepted and rejected masks are kept in
    ``rounds/round-N/decisions.npz`` and never change again."""
    __tablename__ = "campaign_round"
    round: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    step: str = "open"                      # train | detect | ingest | cluster | open | frozen
    plan: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    masks: int = 0
    accepted: int = 0                       # set when the round is frozen
    rejected: int = 0
    created_at: _dt.datetime = Field(default_factory=utcnow)
    updated_at: _dt.datetime = Field(default_factory=utcnow)


class Meta(SQLModel, table=True):
    __tablename__ = "meta"
    key: str = Field(primary_key=True)
    value: str = Field(sa_column=Column(Text, nullable=False))


CAMPAIGN_MODELS = (Category, Image, Mask, ArrayFile, Node, Question, Answer, Event, Meta,
                   CampaignRound)


# ----------------------------------------------------------------------------------- engine
def store_url_for(target: str | os.PathLike, url: str | None = None) -> str:
    """The SQLAlchemy URL for a campaign directory (its campaign.toml's [store] url) or a URL."""
    from orchestrator.campaign.config import CONFIG_NAME, load_config, resolve_store_url

    if url:
        return resolve_store_url(target, url) if Path(target).is_dir() else url
    t = str(target)
    if "://" in t:
        return t
    if (Path(t) / CONFIG_NAME).is_file():
        return resolve_store_url(t, load_config(t).store.url)
    return resolve_store_url(t, "sqlite:///campaign.db")


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # pragma: no cover - exercised through sqlite
        dbapi_conn.isolation_level = None      # let SQLAlchemy's "begin" event emit BEGIN
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # pragma: no cover
        # IMMEDIATE takes the write lock up front (waiting up to busy_timeout), so two
        # writers never deadlock on a read->write upgrade; read_session() asks for DEFERRED.
        mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {mode}")


def open_store(target: str | os.PathLike, url: str | None = None, create: bool = True) -> Engine:
    """Engine for a campaign directory or an SQLAlchemy URL; creates missing tables.

    ``target`` is a campaign directory (its ``[store] url`` is used, relative sqlite paths
    resolved against it) or a URL; ``url`` (the ``--db`` option) overrides the config.
    """
    full = store_url_for(target, url)
    try:
        if full.startswith("sqlite"):
            eng = create_engine(full, connect_args={"timeout": 30, "check_same_thread": False})
            _sqlite_setup(eng)
        else:
            eng = create_engine(full, pool_pre_ping=True)
        if create:
            # only the campaign's tables: other modules share SQLModel.metadata
            from orchestrator.crowd.crowd_store import CROWD_MODELS, add_missing_columns   # crowd campaign tables

            SQLModel.metadata.create_all(eng, tables=[m.__table__ for m in
                                                      (*CAMPAIGN_MODELS, *CROWD_MODELS)])
            add_missing_columns(eng, (*CAMPAIGN_MODELS, *CROWD_MODELS))
            with read_session(eng) as s:
                v = get_meta(s, "schema_version")
            if v is None:
                with transaction(eng) as s:
                    if s.get(Meta, "schema_version") is None:
                        s.add(Meta(key="schema_version", value=SCHEMA_VERSION))
            elif v != SCHEMA_VERSION:
                raise LabelpropError(f"store {full}: schema version {v}, this labelprop "
                                     f"expects {SCHEMA_VERSION}")
    except LabelpropError:
        raise
    except Exception as exc:  # bad URL, missing driver, unreachable server, corrupt file
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LabelpropError(f"cannot open store {full}: {msg}") from None
    return eng


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """One write transaction: commit at the end of the block, roll back on any exception.

    On SQLite it starts with ``BEGIN IMMEDIATE`` (the write lock is taken up front).
    Objects stay usable after the commit (``expire_on_commit=False``).
    """
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


@contextmanager
def read_session(engine: Engine) -> Iterator[Session]:
    """A read-only session (DEFERRED on SQLite: no write lock; WAL gives a snapshot)."""
    eng = engine.execution_options(sqlite_begin="DEFERRED") if engine.dialect.name == "sqlite" \
        else engine
    with Session(eng, expire_on_commit=False) as session:
        try:
            yield session
        finally:
            session.rollback()


def log_event(session: Session, kind: str, /, **payload) -> None:
    """Append an Event row (committed with the surrounding transaction)."""
    session.execute(insert(Event), [{"ts": utcnow(), "kind": kind,
                                     "payload": json.dumps(payload, default=_json_default)}])


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (Path, _dt.datetime)):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def get_meta(session: Session, key: str, default: str | None = None) -> str | None:
    row = session.get(Meta, key)
    return default if row is None else row.value


def set_meta(session: Session, key: str, value) -> None:
    row = session.get(Meta, key)
    if row is None:
        session.add(Meta(key=key, value=str(value)))
    else:
        row.value = str(value)
    session.flush()


def chunks(seq, n: int = CHUNK):
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


def bulk_insert(session: Session, model, rows: list[dict], chunk: int = 20_000) -> None:
    """Fast executemany INSERT of plain dicts (no ORM objects); same keys in every row."""
    for part in chunks(rows, chunk):
        if part:
            session.execute(insert(model), part)


def bulk_update(model):
    """``UPDATE model`` for bulk changes by criteria.  No ORM session synchronisation: these
    statements change rows that are not loaded as objects, and SQLAlchemy's default
    ("evaluate") scans the whole identity map on every statement."""
    return update(model).execution_options(synchronize_session=False)


def count_rows(session: Session, model, *where) -> int:
    stmt = select(func.count()).select_from(model)
    for w in where:
        stmt = stmt.where(w)
    return int(session.execute(stmt).scalar_one())


# ------------------------------------------------------------------- search persistence
def load_node_arrays(session: Session, n_nodes: int) -> dict[str, np.ndarray]:
    """Dense per-node arrays from the sparse Node rows.

    Returns ``state`` (int8, 0 = UNSEEN where no row), ``seq`` (int64, -1 where no row),
    ``q`` (float64, nan where null), ``rounds``, ``n_yes``, ``n_answered`` (int64).
    """
    out = {"state": np.zeros(n_nodes, np.int8), "seq": np.full(n_nodes, -1, np.int64),
           "q": np.full(n_nodes, np.nan), "rounds": np.zeros(n_nodes, np.int64),
           "n_yes": np.zeros(n_nodes, np.int64), "n_answered": np.zeros(n_nodes, np.int64)}
    rows = session.execute(select(Node.node_id, Node.state, Node.seq, Node.q, Node.rounds,
                                  Node.n_yes, Node.n_answered)).all()
    if not rows:
        return out
    a = np.array([tuple(np.nan if v is None else v for v in r) for r in rows], dtype=np.float64)
    ids = a[:, 0].astype(np.int64)
    if ids.max() >= n_nodes:
        raise LabelpropError(f"the store has search state for node {int(ids.max())} but the "
                             f"forest has {n_nodes} nodes (re-run `labelprop cluster --force`?)")
    out["state"][ids] = a[:, 1].astype(np.int8)
    out["seq"][ids] = a[:, 2].astype(np.int64)
    out["q"][ids] = a[:, 3]
    for j, k in enumerate(("rounds", "n_yes", "n_answered"), start=4):
        out[k][ids] = a[:, j].astype(np.int64)
    return out


def save_node_arrays(session: Session, node_ids: Iterable[int], node_class: np.ndarray,
                     state: np.ndarray, seq: np.ndarray, q: np.ndarray, rounds: np.ndarray,
                     n_yes: np.ndarray | None = None, n_answered: np.ndarray | None = None) -> int:
    """Upsert the Node rows of ``node_ids`` from full-length per-node arrays.

    Pass the nodes that changed since the last save (or ``np.flatnonzero(state != 0)``
    for everything).  Implemented as delete + insert in chunks, which is portable across
    dialects and as fast as an upsert.  Returns the number of rows written.
    """
    ids = np.unique(np.asarray(list(node_ids) if not isinstance(node_ids, np.ndarray)
                               else node_ids, dtype=np.int64))
    now = utcnow()
    for part in chunks(ids):
        plist = part.tolist()
        session.execute(delete(Node).where(Node.node_id.in_(plist)))
        rows = []
        for j in plist:
            qj = float(q[j])
            rows.append({"node_id": j, "class_id": int(node_class[j]), "state": int(state[j]),
                         "seq": int(seq[j]), "q": None if qj != qj else qj,
                         "rounds": int(rounds[j]),
                         "n_yes": int(n_yes[j]) if n_yes is not None else 0,
                         "n_answered": int(n_answered[j]) if n_answered is not None else 0,
                         "updated_at": now})
        if rows:
            session.execute(insert(Node), rows)
    return int(ids.shape[0])


def load_mask_answers(session: Session, n_masks: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-mask ``answer`` (int8: -1 none, 0 no, 1 yes) and ``pending`` (bool) arrays.

    An answer counts unless its question was discarded (quality control); with several
    answers for one mask the latest (highest id) wins.  ``pending`` marks masks with a
    question in status "pending".
    """
    answer = np.full(n_masks, -1, np.int8)
    rows = session.execute(
        select(Answer.mask_id, Answer.label).join(Question, Question.id == Answer.question_id)
        .where(Question.status != "discarded").order_by(Answer.id)).all()
    if rows:
        a = np.asarray(rows, dtype=np.int64)
        answer[a[:, 0]] = a[:, 1].astype(np.int8)   # later rows overwrite earlier ones
    pending = np.zeros(n_masks, bool)
    p = session.execute(select(Question.mask_id).where(Question.status == "pending")).scalars().all()
    if p:
        pending[np.asarray(p, dtype=np.int64)] = True
    return answer, pending


def clear_search_state(session: Session) -> dict[str, int]:
    """Forget the tree search (new forest): delete Node rows and ``search.*`` Meta keys and
    discard pending questions.  Answers stay: they are about masks, not nodes, and a new
    search reuses them (answers are never asked twice)."""
    n_nodes = session.execute(delete(Node)).rowcount
    n_q = session.execute(update(Question).where(Question.status == "pending")
                          .values(status="discarded")).rowcount
    session.execute(delete(Meta).where(Meta.key.like("search.%")))
    return {"nodes_deleted": int(n_nodes or 0), "questions_discarded": int(n_q or 0)}


def insert_questions(session: Session, rows: list[dict]) -> np.ndarray:
    """Insert Question rows (``mask_id``, ``node_id``, ``round``, optional ``hit_id`` /
    ``status``) in one executemany; return their new ids in the order of ``rows``."""
    if not rows:
        return np.zeros(0, np.int64)
    now = utcnow()
    full = [{"status": "pending", "hit_id": None, "created_at": now, **r} for r in rows]
    ids: list[int] = []
    for part in chunks(full, 20_000):
        res = session.execute(insert(Question).returning(Question.id,
                                                         sort_by_parameter_order=True), part)
        ids.extend(res.scalars().all())
    return np.asarray(ids, np.int64)


def record_answers(session: Session, rows: list[dict]) -> int:
    """Insert Answer rows (``question_id``, ``mask_id``, ``label``, optional ``worker_id``,
    ``seconds``, ``source``) and mark their questions "answered"; returns the count."""
    if not rows:
        return 0
    now = utcnow()
    full = [{"worker_id": None, "seconds": None, "source": "crowd", "created_at": now, **r}
            for r in rows]
    bulk_insert(session, Answer, full)
    qids = sorted({int(r["question_id"]) for r in rows})
    for part in chunks(qids):
        session.execute(update(Question).where(Question.id.in_(part))
                        .values(status="answered"))
    return len(rows)
