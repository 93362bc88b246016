"""The crowd server's SQL tables (sqlmodel).  Times are epoch seconds (float, UTC); money is integer cents."""
from __future__ import annotations

from typing import Optional

from sqlalchemy import Index
from sqlmodel import Field, SQLModel


class Setting(SQLModel, table=True):
    __tablename__ = "cs_setting"
    key: str = Field(primary_key=True)
    value: str


class Account(SQLModel, table=True):
    __tablename__ = "cs_account"
    id: int = Field(default=1, primary_key=True)
    balance_cents: int
    spent_cents: int = 0


class HITType(SQLModel, table=True):
    __tablename__ = "cs_hit_type"
    hit_type_id: str = Field(primary_key=True)
    title: str
    description: str
    keywords: str = ""
    reward_cents: int
    assignment_duration: int
    auto_approval_delay: int
    qualification_requirements: str = "[]"  # JSON, as sent
    created: float


class HIT(SQLModel, table=True):
    __tablename__ = "cs_hit"
    __table_args__ = (
        Index("ix_cs_hit_open", "disposed", "reviewing", "n_pending", "seq"),
        Index("ix_cs_hit_type_seq", "hit_type_id", "seq"),
    )
    seq: Optional[int] = Field(default=None, primary_key=True)
    hit_id: str = Field(unique=True, index=True)
    hit_type_id: str = Field(foreign_key="cs_hit_type.hit_type_id")
    created: float
    expiration: float = Field(index=True)
    max_assignments: int
    question: str
    requester_annotation: Optional[str] = None
    unique_request_token: Optional[str] = None
    review_status: str = "NotReviewed"
    reviewing: bool = False
    disposed: bool = False
    n_pending: int = 0     # accepted, being worked on
    n_submitted: int = 0   # submitted, awaiting approval/rejection
    n_done: int = 0        # approved or rejected


class RequestToken(SQLModel, table=True):
    """UniqueRequestToken bookkeeping (24 h protection window)."""
    __tablename__ = "cs_request_token"
    token: str = Field(primary_key=True)
    operation: str = Field(primary_key=True)
    ref_id: str
    created: float


class Assignment(SQLModel, table=True):
    __tablename__ = "cs_assignment"
    __table_args__ = (
        Index("ix_cs_asg_hit_seq", "hit_id", "seq"),
        Index("ix_cs_asg_status_deadline", "status", "deadline"),
        Index("ix_cs_asg_status_auto", "status", "auto_approval_time"),
        Index("ix_cs_asg_worker_status", "worker_id", "status"),
    )
    seq: Optional[int] = Field(default=None, primary_key=True)
    assignment_id: str = Field(unique=True, index=True)
    hit_id: str
    worker_id: str
    # Accepted | Submitted | Approved | Rejected | Returned | Abandoned
    status: str
    accept_time: float
    deadline: float
    submit_time: Optional[float] = None
    auto_approval_time: Optional[float] = None
    approval_time: Optional[float] = None
    rejection_time: Optional[float] = None
    answer: Optional[str] = None
    requester_feedback: Optional[str] = None
    charged_cents: int = 0


class Worker(SQLModel, table=True):
    __tablename__ = "cs_worker"
    worker_id: str = Field(primary_key=True)
    name: str = Field(unique=True, index=True)
    token_hash: str = Field(unique=True, index=True)
    created: float
    locale_country: str = "US"
    locale_subdivision: Optional[str] = None
    simulated: bool = False
    blocked_reason: Optional[str] = None  # set by CreateWorkerBlock
    # The sign-in link (token_hash) works until this time; None: no expiry; 0: revoked (revoke-worker).
    link_expires: Optional[float] = None


class WorkerSession(SQLModel, table=True):
    """A signed-in browser (or programmatic client): the cookie holds the session id, we keep its hash."""
    __tablename__ = "cs_worker_session"
    session_hash: str = Field(primary_key=True)
    worker_id: str = Field(index=True)
    created: float
    expires: float


class QualificationType(SQLModel, table=True):
    __tablename__ = "cs_qualification_type"
    qualification_type_id: str = Field(primary_key=True)
    name: str = Field(unique=True)
    description: str
    keywords: str = ""
    status: str = "Active"
    test: Optional[str] = None
    answer_key: Optional[str] = None
    test_duration: Optional[int] = None
    retry_delay: Optional[int] = None
    auto_granted: bool = False
    auto_granted_value: Optional[int] = None
    created: float


class Qualification(SQLModel, table=True):
    __tablename__ = "cs_qualification"
    qualification_type_id: str = Field(primary_key=True)
    worker_id: str = Field(primary_key=True, index=True)
    integer_value: int = 1
    status: str = "Granted"  # Granted | Revoked
    grant_time: float


class TestAttempt(SQLModel, table=True):
    """A worker's qualification-test attempt (for TestDurationInSeconds and RetryDelayInSeconds)."""
    __tablename__ = "cs_test_attempt"
    id: Optional[int] = Field(default=None, primary_key=True)
    qualification_type_id: str = Field(index=True)
    worker_id: str = Field(index=True)
    started: float
    finished: Optional[float] = None
    score: Optional[int] = None
    answer: Optional[str] = None


class Message(SQLModel, table=True):
    """NotifyWorkers messages and revocation notices, shown on the worker's page."""
    __tablename__ = "cs_message"
    id: Optional[int] = Field(default=None, primary_key=True)
    worker_id: str = Field(index=True)
    subject: str
    text: str
    created: float
