"""Store tables of the ``prolific`` backend (created with the campaign store; money in cents).

* :class:`ProlificStudy`: the campaign's study, recorded as an intent (``internal_name``,
  derived from the campaign) *before* ``POST /studies/``; a pass killed after the call finds
  the study again by that name instead of creating a second one.  ``places`` is what the
  campaign asked for (the budget reserves every place it has not settled yet).
* :class:`ProlificSubmission`: one Prolific submission (a participant's place) as listed,
  then the decision (approve / reject with message and category) and whether the remote
  transition was made; ``cost_cents`` is booked from the study's reward when decided.
* :class:`ProlificBonusPay`: the steps of one bonus (a :class:`~orchestrator.crowd.crowd_store.CrowdBonus`
  row, same token): the participant's bonus count before, the bulk bonus id once created, and
  ``pay_sent_at`` written *before* the non-idempotent pay call.  A rerun that finds
  ``pay_sent_at`` set reads the submission's bonus payments: one more than before means the
  call went through (never pay again); none after ``crowd.prolific.bonus_settle_seconds``
  means it never arrived (pay once more).
"""
from __future__ import annotations

import datetime as _dt
from typing import Optional

from sqlmodel import Field, SQLModel


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


class ProlificStudy(SQLModel, table=True):
    __tablename__ = "prolific_study"
    internal_name: str = Field(primary_key=True)
    study_id: Optional[str] = None
    status: str = "intent"                 # intent | UNPUBLISHED | ACTIVE | PAUSED | COMPLETED
    reward_cents: int = 0                  # per place
    places: int = 0                        # total_available_places asked for
    place_worst_cents: int = 0             # one place at worst: reward, fee and every extra HIT's bonus with fee
    created_at: _dt.datetime = Field(default_factory=_now)


class ProlificSubmission(SQLModel, table=True):
    __tablename__ = "prolific_submission"
    submission_id: str = Field(primary_key=True)
    study_id: str = Field(index=True)
    participant_id: str = Field(index=True)
    remote_status: str = ""                # as listed: ACTIVE, AWAITING REVIEW, RETURNED, APPROVED, ...
    entered_code: str = ""
    worker_id: str = ""                    # the crowd server's worker
    hits: int = 0                          # HITs the participant submitted on the server
    decision: str = ""                     # approve | reject | "" (not decided yet)
    reason: str = ""
    cost_cents: int = 0                    # reward + fee, booked when decided "approve"
    remote_done: bool = False
    final_status: str = ""                 # APPROVED | REJECTED once the transition is made
    bonus_checked: bool = False
    decided_at: Optional[_dt.datetime] = None


class ProlificBonusPay(SQLModel, table=True):
    __tablename__ = "prolific_bonus_pay"
    token: str = Field(primary_key=True)
    submission_id: str
    before: int = 0                        # bonus payments the submission had before this one
    bulk_id: Optional[str] = None
    pay_sent_at: Optional[_dt.datetime] = None
    done: bool = False


PROLIFIC_MODELS = (ProlificStudy, ProlificSubmission, ProlificBonusPay)
