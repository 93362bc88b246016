"""Data directory, database engine and transactions, and the clock-driven state transitions.

Crash safety: SQLite in WAL mode with ``synchronous=FULL``; every API call is one
transaction (``BEGIN IMMEDIATE`` for writes), so an operation is either fully
stored before the response is sent or not at all.  Writes are serialised in the
process by one lock (SQLite has one writer anyway) and across processes by
SQLite's own locking with a busy timeout, so the CLI (``add-worker``) can write
while the server runs.
"""
from __future__ import annotations

import json
import os
import threading
import time
from contextlib import contextmanager
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Iterator

from sqlalchemy import event, func
from sqlmodel import Session, SQLModel, create_engine, select

from . import clock
from . import ids
from .models import HIT, Account, Assignment, Setting, Worker, WorkerSession

# Columns added after the first release: (table, column, SQL type); added to older databases on open.
_ADDED_COLUMNS = [("cs_worker", "link_expires", "FLOAT")]
LINK_REVOKED = 0.0

DB_NAME = "crowd.sqlite3"
DEFAULT_BALANCE = "10000.00"  # like the MTurk sandbox
DEFAULT_DATA_DIR_ENV = "LABELPROP_CROWD_DATA"


def default_data_dir() -> Path:
    return Path(os.environ.get(DEFAULT_DATA_DIR_ENV, "crowd-server-data"))


def prepare_data_dir(data_dir: Path) -> Path:
    data_dir = Path(data_dir).expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    return data_dir


# ---------------------------------------------------------------- money

def parse_money(text: str) -> int:
    """'0.05' -> 5 cents.  Raises ValueError for anything that is not a non-negative amount."""
    try:
        d = Decimal(str(text))
    except InvalidOperation:
        raise ValueError(f"not an amount: {text!r}") from None
    if d < 0 or d != d or d.as_tuple().exponent < -2:
        raise ValueError(f"not an amount with at most 2 decimals: {text!r}")
    return int(d * 100)


def format_money(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    cents = abs(cents)
    return f"{sign}{cents // 100}.{cents % 100:02d}"


def fee_cents(reward_cents: int, max_assignments: int) -> int:
    """MTurk's commission: 20% (+20% with 10 or more assignments), at least $0.01 per assignment."""
    rate = Decimal("0.20") + (Decimal("0.20") if max_assignments >= 10 else Decimal("0"))
    fee = (Decimal(reward_cents) * rate).quantize(Decimal("1"), rounding=ROUND_HALF_UP)
    return max(1, int(fee))


# ---------------------------------------------------------------- HIT state

def hit_available(h: HIT) -> int:
    return h.max_assignments - h.n_pending - h.n_submitted - h.n_done


def hit_status(h: HIT, now: float) -> str:
    if h.disposed:
        return "Disposed"
    if h.reviewing:
        return "Reviewing"
    full = hit_available(h) <= 0
    expired = h.expiration <= now
    if h.n_pending > 0:
        return "Unassignable" if (full or expired) else "Assignable"
    if full or expired:
        return "Reviewable"
    return "Assignable"


def reviewable_clause(now: float):
    from sqlalchemy import and_, or_
    return and_(HIT.disposed == False, HIT.reviewing == False, HIT.n_pending == 0,  # noqa: E712
                or_(HIT.max_assignments - HIT.n_submitted - HIT.n_done <= 0, HIT.expiration <= now))


def open_clause(now: float):
    """HITs a worker could accept now."""
    from sqlalchemy import and_
    return and_(HIT.disposed == False, HIT.reviewing == False, HIT.expiration > now,  # noqa: E712
                HIT.max_assignments - HIT.n_pending - HIT.n_submitted - HIT.n_done > 0)


# ---------------------------------------------------------------- the store

class Store:
    def __init__(self, data_dir: Path, *, synchronous: str = "FULL", initial_balance: str = DEFAULT_BALANCE):
        self.data_dir = prepare_data_dir(data_dir)
        self.db_path = self.data_dir / DB_NAME
        self._lock = threading.RLock()
        self._next_due = 0.0
        url = f"sqlite:///{self.db_path}"
        self.read_engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                                         pool_size=16, max_overflow=32)
        self.write_engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                                          pool_size=2, max_overflow=4)
        for engine, begin in ((self.read_engine, "BEGIN"), (self.write_engine, "BEGIN IMMEDIATE")):
            self._configure(engine, begin, synchronous)
        SQLModel.metadata.create_all(self.write_engine)
        self._add_missing_columns()
        if self.db_path.exists():
            os.chmod(self.db_path, 0o600)
        with self.write() as s:
            if s.get(Account, 1) is None:
                s.add(Account(id=1, balance_cents=parse_money(initial_balance)))
                s.add(Setting(key="schema", value="1"))
        self._next_due = 0.0

    @staticmethod
    def _configure(engine, begin_sql: str, synchronous: str) -> None:
        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):  # pragma: no cover - trivial
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={synchronous}")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn):  # pragma: no cover - trivial
            conn.exec_driver_sql(begin_sql)

    def _add_missing_columns(self) -> None:
        with self.write_engine.begin() as conn:
            for table, column, sql_type in _ADDED_COLUMNS:
                have = {row[1] for row in conn.exec_driver_sql(f"PRAGMA table_info({table})")}
                if column not in have:
                    conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}")

    def close(self) -> None:
        self.read_engine.dispose()
        self.write_engine.dispose()

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One write transaction; commits on success, rolls back on any exception."""
        with self._lock:
            with Session(self.write_engine, expire_on_commit=False) as s:
                yield s
                s.commit()

    @contextmanager
    def read(self) -> Iterator[Session]:
        with Session(self.read_engine, expire_on_commit=False) as s:
            yield s

    # ------------------------------------------------------------ clock

    def note_due(self, when: float | None) -> None:
        if when is not None and when < self._next_due:
            self._next_due = when

    def tick(self, now: float | None = None) -> None:
        """Apply transitions that became due: abandon overdue assignments, auto-approve submitted ones."""
        now = clock.now() if now is None else now
        if now < self._next_due:
            return
        with self.write() as s:
            self.tick_in(s, now)
            nd = s.exec(select(func.min(Assignment.deadline)).where(Assignment.status == "Accepted")).one()
            na = s.exec(select(func.min(Assignment.auto_approval_time))
                        .where(Assignment.status == "Submitted")).one()
            self._next_due = min(x for x in (nd, na, now + 3600.0) if x is not None)

    def tick_in(self, s: Session, now: float) -> None:
        overdue = s.exec(select(Assignment).where(Assignment.status == "Accepted",
                                                  Assignment.deadline <= now)).all()
        for a in overdue:
            a.status = "Abandoned"
            h = s.exec(select(HIT).where(HIT.hit_id == a.hit_id)).one()
            h.n_pending -= 1
            s.add(h)
            s.add(a)
        due = s.exec(select(Assignment).where(Assignment.status == "Submitted",
                                              Assignment.auto_approval_time <= now)).all()
        for a in due:
            h = s.exec(select(HIT).where(HIT.hit_id == a.hit_id)).one()
            self.approve_in(s, a, h, when=a.auto_approval_time or now, feedback=None, allow_negative=True)

    def approve_in(self, s: Session, a: Assignment, h: HIT, *, when: float, feedback: str | None,
                   allow_negative: bool = False) -> bool:
        """Approve (from Submitted or Rejected) and pay reward + fee.  False if funds are insufficient."""
        from .models import HITType
        ht = s.get(HITType, h.hit_type_id)
        cost = ht.reward_cents + fee_cents(ht.reward_cents, h.max_assignments)
        acct = s.get(Account, 1)
        if acct.balance_cents < cost and not allow_negative:
            return False
        acct.balance_cents -= cost
        acct.spent_cents += cost
        if a.status == "Submitted":
            h.n_submitted -= 1
            h.n_done += 1
        a.status = "Approved"
        a.approval_time = when
        a.rejection_time = None
        a.charged_cents = cost
        if feedback is not None:
            a.requester_feedback = feedback
        s.add(acct)
        s.add(a)
        s.add(h)
        return True

    # ------------------------------------------------------------ workers (also used by the CLI)

    def add_worker(self, name: str, *, locale: str = "US", simulated: bool = False,
                   rotate_if_exists: bool = False, link_seconds: float | None = None) -> tuple[Worker, str]:
        """Create a worker (or give an existing one a new sign-in link); returns (worker, token).

        ``link_seconds``: the link works for that long (None: no expiry).  A new link for an existing
        worker ends the old link and every session signed in with it.
        """
        token = ids.worker_token()
        now = clock.now()
        expires = now + link_seconds if link_seconds is not None else None
        with self.write() as s:
            w = s.exec(select(Worker).where(Worker.name == name)).first()
            if w is not None:
                if not rotate_if_exists:
                    raise KeyError(name)
                w.token_hash = ids.token_hash(token)
                w.link_expires = expires
                self._end_sessions(s, w.worker_id)
            else:
                country, _, sub = locale.partition("-")
                w = Worker(worker_id=ids.worker_id(), name=name, token_hash=ids.token_hash(token),
                           created=now, locale_country=country.upper(),
                           locale_subdivision=sub.upper() or None, simulated=simulated, link_expires=expires)
            s.add(w)
        return w, token

    @staticmethod
    def _end_sessions(s: Session, worker_id: str) -> int:
        rows = s.exec(select(WorkerSession).where(WorkerSession.worker_id == worker_id)).all()
        for r in rows:
            s.delete(r)
        return len(rows)

    def find_worker(self, name_or_id: str) -> Worker | None:
        with self.read() as s:
            return s.exec(select(Worker).where((Worker.name == name_or_id) | (Worker.worker_id == name_or_id))).first()

    def revoke_worker(self, name_or_id: str) -> tuple[Worker, int]:
        """End the worker's sign-in link and every session; returns (worker, sessions ended). KeyError if unknown."""
        with self.write() as s:
            w = s.exec(select(Worker).where((Worker.name == name_or_id) | (Worker.worker_id == name_or_id))).first()
            if w is None:
                raise KeyError(name_or_id)
            w.token_hash = ids.token_hash("revoked:" + ids.worker_token())  # matches no link
            w.link_expires = LINK_REVOKED
            s.add(w)
            return w, self._end_sessions(s, w.worker_id)

    def worker_by_token(self, token: str) -> Worker | None:
        """The worker whose sign-in link this is, if the link is still valid."""
        with self.read() as s:
            w = s.exec(select(Worker).where(Worker.token_hash == ids.token_hash(token))).first()
        if w is None or (w.link_expires is not None and w.link_expires <= clock.now()):
            return None
        return w

    def link_state(self, token: str) -> str:
        """'valid', 'expired' or 'unknown' (never issued, replaced or revoked)."""
        with self.read() as s:
            w = s.exec(select(Worker).where(Worker.token_hash == ids.token_hash(token))).first()
        if w is None:
            return "unknown"
        return "expired" if w.link_expires is not None and w.link_expires <= clock.now() else "valid"

    def start_session(self, w: Worker, seconds: float) -> tuple[str, float]:
        """A new session for a signed-in worker; returns (session id, expiry time)."""
        sid = ids.session_id()
        now = clock.now()
        with self.write() as s:
            s.add(WorkerSession(session_hash=ids.token_hash(sid), worker_id=w.worker_id, created=now,
                                expires=now + seconds))
            # Housekeeping: expired sessions go when new ones come.
            for old in s.exec(select(WorkerSession).where(WorkerSession.expires <= now)).all():
                s.delete(old)
        return sid, now + seconds

    def worker_by_session(self, sid: str) -> Worker | None:
        with self.read() as s:
            row = s.get(WorkerSession, ids.token_hash(sid))
            if row is None or row.expires <= clock.now():
                return None
            return s.get(Worker, row.worker_id)

    def end_session(self, sid: str) -> None:
        with self.write() as s:
            row = s.get(WorkerSession, ids.token_hash(sid))
            if row is not None:
                s.delete(row)

    def session_counts(self) -> dict[str, int]:
        now = clock.now()
        with self.read() as s:
            return dict(s.exec(select(WorkerSession.worker_id, func.count()).where(WorkerSession.expires > now)
                               .group_by(WorkerSession.worker_id)).all())

    def list_workers(self) -> list[Worker]:
        with self.read() as s:
            return list(s.exec(select(Worker).order_by(Worker.created)).all())

    def balance_cents(self) -> int:
        with self.read() as s:
            return s.get(Account, 1).balance_cents

    def add_funds(self, cents: int) -> int:
        with self.write() as s:
            acct = s.get(Account, 1)
            acct.balance_cents += cents
            s.add(acct)
            return acct.balance_cents


def server_info_path(data_dir: Path) -> Path:
    return Path(data_dir) / "server.json"


def read_server_info(data_dir: Path) -> dict | None:
    try:
        return json.loads(server_info_path(data_dir).read_text())
    except (OSError, ValueError):
        return None
