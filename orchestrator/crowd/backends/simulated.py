"""The ``simulated`` backend: an in-process crowd that goes through the same poll path.

A campaign with ``crowd.backend = "simulated"`` posts HITs, fetches submissions, scores
gold, approves, rejects, soft-blocks and pays exactly as with a real platform -- the poll
pass cannot tell the difference -- but the "platform" is a handful of tables in the
campaign's own store (``sim_*``) and its workers answer from ground truth:

* a real question about mask ``m`` is correct when ``iou(m) >= K_iou``; a gold question
  has its known label;
* ``crowd.simulated.workers`` lists worker profiles (``"ann:accuracy=0.95;bob:spammer"``,
  keys ``accuracy``, ``seconds`` (per question), ``spammer``, ``spam_answer``,
  ``max_hits``, ``seed``, ``tests``).  Each answer of a profile is wrong with probability
  ``1 - accuracy``, drawn from (campaign seed, worker, item), so a rerun answers the same;
  a spammer answers at random.  Empty: one worker, ``sim-0``, wrong with probability
  ``crowd.simulated.error_rate`` (``labelprop run --error-rate``) with the flips of
  :class:`~orchestrator.crowd.annotators.SimulatedAnnotators` (fixed per mask), so a campaign run
  through the poll path answers exactly like the in-memory simulation;
* work happens when the poll pass asks what is ready (``list_ready``): every open HIT is
  taken, in posting order, by the next eligible workers in rotation (not blocked, meeting
  the requirements; a qualification test is taken on first sight and scores
  ``100 x accuracy``, a spammer's 50); a HIT that cannot get all its assignments expires.

The platform state is durable (the store's tables, one transaction per call, like a
remote platform's), so ``labelprop run`` can be killed at any line and rerun: publishing
is idempotent by token, approvals and rejections report "already done", and nothing is
posted or paid twice.  Fees follow MTurk's rules, so a rehearsal shows what a campaign
would cost; the backend is not paying (no budget needed).
"""
from __future__ import annotations

import hashlib
import json
import time
from typing import Iterable, Iterator, Optional

import numpy as np
from sqlalchemy import Column, Text, func, select, update
from sqlmodel import Field, SQLModel

from orchestrator.crowd.backends import register_backend
from orchestrator.crowd.backends.base import (INVALID_STATE, NOT_FOUND, QUALIFICATION_EXISTS, WORKER_NOT_FOUND,
                                              BackendError, BackendOptions, PublishResult, QualificationTest,
                                              Submission, TaskInfo, TaskItem, TaskRef, TaskType)
from orchestrator.crowd.ledger import MTURK_FEES
from orchestrator.errors import LabelpropError

__all__ = ["SimulatedBackend", "SIM_MODELS", "DEFAULT_WORKER"]

DEFAULT_WORKER = "sim-0"


class SimHitType(SQLModel, table=True):
    __tablename__ = "sim_hit_type"
    type_id: str = Field(primary_key=True)
    params: str = Field(sa_column=Column(Text, nullable=False))


class SimQualType(SQLModel, table=True):
    __tablename__ = "sim_qual_type"
    qual_id: str = Field(primary_key=True)
    name: str = Field(unique=True)
    has_test: bool = False


class SimWorkerQual(SQLModel, table=True):
    __tablename__ = "sim_worker_qual"
    qual_id: str = Field(primary_key=True)
    worker_id: str = Field(primary_key=True)
    value: int = 1


class SimHit(SQLModel, table=True):
    __tablename__ = "sim_hit"
    seq: Optional[int] = Field(default=None, primary_key=True)
    hit_id: str = Field(unique=True, index=True)
    type_id: str = Field(index=True)
    token: str = Field(unique=True)
    annotation: str = ""
    max_assignments: int = 1
    items: str = Field(sa_column=Column(Text, nullable=False))
    status: str = Field(default="Assignable", index=True)   # Assignable | Reviewable | Disposed
    created: float = 0.0


class SimAssignment(SQLModel, table=True):
    __tablename__ = "sim_assignment"
    assignment_id: str = Field(primary_key=True)
    hit_id: str = Field(index=True)
    worker_id: str = Field(index=True)
    status: str = "Submitted"                  # Submitted | Approved | Rejected
    answer: str = Field(sa_column=Column(Text, nullable=False))
    accept_time: float = 0.0
    submit_time: float = 0.0
    charged_cents: int = 0
    feedback: Optional[str] = None


class SimBonus(SQLModel, table=True):
    __tablename__ = "sim_bonus"
    token: str = Field(primary_key=True)
    worker_id: str
    assignment_id: str
    cents: int
    charged_cents: int


class SimMeta(SQLModel, table=True):
    __tablename__ = "sim_meta"
    key: str = Field(primary_key=True)
    value: str


SIM_MODELS = (SimHitType, SimQualType, SimWorkerQual, SimHit, SimAssignment, SimBonus, SimMeta)


def _id(prefix: str, *parts) -> str:
    return prefix + hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:24].upper()


class SimulatedBackend:
    """See the module docstring.  ``ious``: ground-truth IoU per mask id (nan: unknown)."""

    name = "simulated"
    source = "simulated"
    paying = False
    needs_images = False
    token_window_seconds = None
    fees = MTURK_FEES
    concurrency = 1              # one writer: calls are transactions on the campaign's own store

    def __init__(self, engine, *, ious: np.ndarray, kiou: float, gold_labels: dict[int, int], seed: int,
                 workers: str = "", error_rate: float = 0.0, seconds_per_question: float = 1.5):
        from orchestrator.crowd.annotators import SimulatedAnnotators
        from orchestrator.crowd_server.simulated_workers import WorkerProfile, parse_workers_spec

        self.engine = engine
        self.seed = abs(int(seed))
        self.ious = np.asarray(ious, dtype=np.float64)
        self.kiou = float(kiou)
        self.gold = dict(gold_labels)
        self.spq = float(seconds_per_question)
        if workers.strip():
            try:
                self.profiles = parse_workers_spec(workers)
            except LabelpropError as exc:
                raise LabelpropError(f"crowd.simulated.workers: {str(exc).split(': ', 1)[-1]}") from None
            self.flips = None
        else:
            self.profiles = [WorkerProfile(DEFAULT_WORKER.removeprefix("sim-"), accuracy=1.0 - error_rate)]
            known = np.nan_to_num(self.ious, nan=0.0)
            self.flips = SimulatedAnnotators(known, self.kiou, error_rate=error_rate, seed=self.seed).flipped
        self.worker_ids = [f"sim-{p.name}" for p in self.profiles]
        SQLModel.metadata.create_all(engine, tables=[m.__table__ for m in SIM_MODELS])

    def close(self) -> None:
        pass

    def asset_mirror(self):
        return None

    # ------------------------------------------------------------ transactions
    def _tx(self):
        from orchestrator.campaign.store import transaction

        return transaction(self.engine)

    def _ro(self):
        from orchestrator.campaign.store import read_session

        return read_session(self.engine)

    # ------------------------------------------------------------ setup
    def create_qualification(self, name: str, description: str, test: QualificationTest | None = None) -> str:
        with self._tx() as s:
            if s.execute(select(SimQualType.qual_id).where(SimQualType.name == name)).first():
                raise BackendError("CreateQualificationType", QUALIFICATION_EXISTS,
                                   f"a qualification named {name!r} already exists")
            qid = _id("SQ", name)
            s.add(SimQualType(qual_id=qid, name=name, has_test=test is not None))
        return qid

    def ensure_task_type(self, t: TaskType) -> str:
        params = json.dumps({"title": t.title, "reward": t.reward_cents, "assignment": t.assignment_seconds,
                             "auto": t.auto_approve_seconds, "keywords": t.keywords, "description": t.description,
                             "req": [r.__dict__ for r in t.requirements]}, sort_keys=True)
        tid = _id("ST", params)
        with self._tx() as s:
            if s.get(SimHitType, tid) is None:
                s.add(SimHitType(type_id=tid, params=params))
        return tid

    def eligible_workers(self, t: TaskType) -> int | None:
        with self._ro() as s:
            return sum(1 for w, p in zip(self.worker_ids, self.profiles) if self._eligible(s, w, p, t, take_tests=False))

    def _eligible(self, s, wid: str, p, t: TaskType, take_tests: bool) -> bool:
        stats = None
        for r in t.requirements:
            if r.kind == "not_qualification":
                if s.get(SimWorkerQual, (r.qualification_id, wid)) is not None:
                    return False
            elif r.kind == "qualification":
                q = s.get(SimWorkerQual, (r.qualification_id, wid))
                score = q.value if q is not None else (self._test_score(p) if p.tests else None)
                if score is None or score < r.value:
                    return False
                if q is None and take_tests:
                    s.add(SimWorkerQual(qual_id=r.qualification_id, worker_id=wid, value=score))
                    s.flush()
            elif r.kind in ("approval_rate", "approved_tasks"):
                if stats is None:
                    stats = dict(s.execute(select(SimAssignment.status, func.count()).where(
                        SimAssignment.worker_id == wid).group_by(SimAssignment.status)).all())
                ok, bad = stats.get("Approved", 0), stats.get("Rejected", 0)
                have = ok if r.kind == "approved_tasks" else (100 if ok + bad == 0 else round(100 * ok / (ok + bad)))
                if have < r.value:
                    return False
            elif r.kind == "locale":
                if not any(v.upper().partition("-")[0] == "US" for v in r.values):
                    return False
            elif r.kind == "masters":
                return False
        return True

    @staticmethod
    def _test_score(p) -> int:
        return 50 if p.spammer else int(round(100 * p.accuracy))

    # ------------------------------------------------------------ posting
    def render(self, items: list[TaskItem], *, allow_unsure: bool) -> None:
        return None          # nothing to show: the simulated workers read the items

    def publish(self, task) -> PublishResult:
        items = json.dumps([[i.identifier, i.mask_id, i.gold_id] for i in task.items])
        with self._tx() as s:
            have = s.execute(select(SimHit.hit_id).where(SimHit.token == task.token)).scalar()
            if have:
                return PublishResult(have, recovered=True)
            if s.get(SimHitType, task.type_id) is None:
                raise BackendError("CreateHITWithHITType", NOT_FOUND, f"no HIT type {task.type_id}")
            hid = _id("SH", task.token)
            s.add(SimHit(hit_id=hid, type_id=task.type_id, token=task.token, annotation=task.annotation,
                         max_assignments=task.max_assignments, items=items, created=time.time()))
        return PublishResult(hid)

    def find_by_annotation(self, annotation: str) -> str | None:
        with self._ro() as s:
            return s.execute(select(SimHit.hit_id).where(SimHit.annotation == annotation)).scalar()

    # ------------------------------------------------------------ the workers
    def _u(self, widx: int, kind: int, key: int) -> float:
        return float(np.random.default_rng([self.seed, widx, kind, int(key)]).random())

    def _answer(self, widx: int, p, mask_id, gold_id) -> str:
        """Worker ``widx``'s answer (the shared policy of the simulated crowds, drawn from
        (campaign seed, worker, item))."""
        from orchestrator.crowd_server.simulated_workers import answers_wrongly, true_answer, worker_answer

        if gold_id is not None:
            truth, kind, key = true_answer(None, self.kiou, self.gold.get(int(gold_id), 0)), 1, int(gold_id)
        else:
            iou = self.ious[int(mask_id)] if 0 <= int(mask_id) < self.ious.shape[0] else np.nan
            if np.isnan(iou):
                raise LabelpropError(f"the simulated crowd needs ground-truth IoUs, but mask {mask_id} has none "
                                     f"(ingest triplets with `ious`, or predictions with an 'iou' field)")
            truth, kind, key = true_answer(float(iou), self.kiou), 0, int(mask_id)
        if p.spammer:
            return worker_answer(truth, p, wrong=False, spam_draw=0.0 if p.spam_answer else self._u(widx, 2 + kind, key))
        if self.flips is not None and gold_id is None:
            wrong = bool(self.flips[key])
        else:
            wrong = answers_wrongly(p, self._u(widx, kind, key))
        return worker_answer(truth, p, wrong=wrong, spam_draw=0.0)

    def _work(self) -> None:
        """Every open HIT is taken by the next eligible workers (one transaction), or expires."""
        with self._tx() as s:
            hits = s.execute(select(SimHit).where(SimHit.status == "Assignable").order_by(SimHit.seq)).scalars().all()
            if not hits:
                return
            meta = s.get(SimMeta, "rotation")
            rot = int(meta.value) if meta is not None else 0
            done_by = dict(s.execute(select(SimAssignment.worker_id, func.count())
                                     .group_by(SimAssignment.worker_id)).all())
            types: dict[str, TaskType] = {}
            now = time.time()
            for h in hits:
                t = types.get(h.type_id)
                if t is None:
                    t = types[h.type_id] = self._type(s, h.type_id)
                have = {w for (w,) in s.execute(select(SimAssignment.worker_id).where(SimAssignment.hit_id == h.hit_id))}
                items = json.loads(h.items)
                n = len(self.profiles)
                for k in range(n):
                    if len(have) >= h.max_assignments:
                        break
                    widx = (rot + k) % n
                    wid, p = self.worker_ids[widx], self.profiles[widx]
                    if wid in have or (p.max_hits is not None and done_by.get(wid, 0) >= p.max_hits):
                        continue
                    if not self._eligible(s, wid, p, t, take_tests=True):
                        continue
                    spq = p.seconds or self.spq
                    answers = {ident: self._answer(widx, p, m, g) for ident, m, g in items}
                    secs = {ident: spq for ident, _, _ in items}
                    s.add(SimAssignment(assignment_id=_id("SA", h.hit_id, wid), hit_id=h.hit_id, worker_id=wid,
                                        answer=json.dumps({"answers": answers, "seconds": secs}),
                                        accept_time=now, submit_time=now + spq * len(items)))
                    have.add(wid)
                    done_by[wid] = done_by.get(wid, 0) + 1
                rot += 1
                h.status = "Reviewable"           # complete, or expired short of assignments
            if meta is None:
                s.add(SimMeta(key="rotation", value=str(rot)))
            else:
                meta.value = str(rot)

    @staticmethod
    def _type(s, type_id: str) -> TaskType:
        from orchestrator.crowd.backends.base import Requirement

        d = json.loads(s.get(SimHitType, type_id).params)
        return TaskType(d["title"], d["description"], d["keywords"], d["reward"], d["assignment"], d["auto"],
                        tuple(Requirement(**{**r, "values": tuple(r["values"])}) for r in d["req"]))

    # ------------------------------------------------------------ reading
    def list_ready(self, type_ids: Iterable[str]) -> Iterator[TaskRef]:
        self._work()
        want = set(type_ids)
        with self._ro() as s:
            rows = s.execute(select(SimHit.hit_id, SimHit.annotation, SimHit.type_id)
                             .where(SimHit.status == "Reviewable").order_by(SimHit.seq)).all()
        for hid, ann, tid in rows:
            if tid in want:
                yield TaskRef(hid, ann)

    def list_submissions(self, task_id: str) -> list[Submission]:
        with self._ro() as s:
            rows = s.execute(select(SimAssignment).where(SimAssignment.hit_id == task_id)
                             .order_by(SimAssignment.assignment_id)).scalars().all()
            return [Submission(a.assignment_id, a.hit_id, a.worker_id, a.status, a.answer, a.accept_time,
                               a.submit_time) for a in rows]

    def parse_answers(self, raw_answer: str) -> dict[str, str]:
        try:
            data = json.loads(raw_answer)["answers"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"not a simulated answer: {exc}") from None
        if not isinstance(data, dict) or not data:
            raise ValueError("the submission holds no answers")
        return {str(k): str(v) for k, v in data.items()}

    def answer_seconds(self, raw_answer: str) -> dict[str, float]:
        try:
            return {str(k): float(v) for k, v in json.loads(raw_answer).get("seconds", {}).items()}
        except (ValueError, AttributeError, TypeError):
            return {}

    def qualification_scores(self, qualification_id: str) -> dict[str, int]:
        with self._ro() as s:
            return dict(s.execute(select(SimWorkerQual.worker_id, SimWorkerQual.value)
                                  .where(SimWorkerQual.qual_id == qualification_id)).all())

    def _info(self, s, h: SimHit) -> TaskInfo:
        n = int(s.execute(select(func.count()).select_from(SimAssignment)
                          .where(SimAssignment.hit_id == h.hit_id)).scalar_one())
        open_ = h.status == "Assignable"
        return TaskInfo(h.hit_id, h.type_id, h.status, h.annotation, h.max_assignments, 0,
                        h.max_assignments - n if open_ else 0, n, None)

    def list_tasks(self, type_ids: Iterable[str]) -> list[TaskInfo]:
        want = set(type_ids)
        with self._ro() as s:
            return [self._info(s, h) for h in s.execute(select(SimHit).order_by(SimHit.seq)).scalars()
                    if h.type_id in want]

    def get_task(self, task_id: str) -> TaskInfo:
        with self._ro() as s:
            h = s.execute(select(SimHit).where(SimHit.hit_id == task_id)).scalar()
            if h is None:
                raise BackendError("GetHIT", NOT_FOUND, f"HIT {task_id} does not exist")
            return self._info(s, h)

    # ------------------------------------------------------------ effects
    def _decide(self, op: str, assignment_id: str, status: str, feedback: str | None = None) -> None:
        with self._tx() as s:
            a = s.get(SimAssignment, assignment_id)
            if a is None:
                raise BackendError(op, NOT_FOUND, f"assignment {assignment_id} does not exist")
            if a.status != "Submitted":
                raise BackendError(op, INVALID_STATE, f"assignment {assignment_id} is {a.status}")
            a.status, a.feedback = status, feedback
            if status == "Approved":
                h = s.execute(select(SimHit).where(SimHit.hit_id == a.hit_id)).scalar_one()
                reward = self._type(s, h.type_id).reward_cents
                a.charged_cents = self.fees.assignment_cost_cents(reward, h.max_assignments)

    def approve(self, assignment_id: str) -> None:
        self._decide("ApproveAssignment", assignment_id, "Approved")

    def reject(self, assignment_id: str, feedback: str) -> None:
        self._decide("RejectAssignment", assignment_id, "Rejected", feedback)

    def assignment_status(self, assignment_id: str) -> str:
        with self._ro() as s:
            a = s.get(SimAssignment, assignment_id)
            if a is None:
                raise BackendError("GetAssignment", NOT_FOUND, f"assignment {assignment_id} does not exist")
            return a.status

    def block(self, qualification_id: str, worker_id: str) -> None:
        if worker_id not in self.worker_ids:
            raise BackendError("AssociateQualificationWithWorker", WORKER_NOT_FOUND, f"no worker {worker_id}")
        with self._tx() as s:
            if s.get(SimWorkerQual, (qualification_id, worker_id)) is None:
                s.add(SimWorkerQual(qual_id=qualification_id, worker_id=worker_id, value=1))

    def expire(self, task_id: str) -> None:
        with self._tx() as s:
            s.execute(update(SimHit).where(SimHit.hit_id == task_id, SimHit.status == "Assignable")
                      .values(status="Reviewable"))

    def dispose(self, task_id: str) -> None:
        with self._tx() as s:
            h = s.execute(select(SimHit).where(SimHit.hit_id == task_id)).scalar()
            if h is None:
                raise BackendError("DeleteHIT", NOT_FOUND, f"HIT {task_id} does not exist")
            if h.status == "Disposed":
                return
            open_asg = s.execute(select(func.count()).select_from(SimAssignment).where(
                SimAssignment.hit_id == task_id, SimAssignment.status == "Submitted")).scalar_one()
            if h.status != "Reviewable" or open_asg:
                raise BackendError("DeleteHIT", INVALID_STATE, f"HIT {task_id} is {h.status} with "
                                   f"{open_asg} submitted assignments")
            h.status = "Disposed"

    def pay_bonus(self, worker_id: str, assignment_id: str, bonus_cents: int, reason: str, token: str) -> None:
        with self._tx() as s:
            if s.get(SimBonus, token) is not None:
                return
            if worker_id not in self.worker_ids:
                raise BackendError("SendBonus", WORKER_NOT_FOUND, f"no worker {worker_id}")
            s.add(SimBonus(token=token, worker_id=worker_id, assignment_id=assignment_id, cents=bonus_cents,
                           charged_cents=self.fees.bonus_cost_cents(bonus_cents)))

    # ------------------------------------------------------------ accounting (tests, status)
    def charged_cents(self) -> int:
        """What the simulated platform has charged: approved assignments plus bonuses."""
        with self._ro() as s:
            a = s.execute(select(func.coalesce(func.sum(SimAssignment.charged_cents), 0))
                          .where(SimAssignment.status == "Approved")).scalar_one()
            b = s.execute(select(func.coalesce(func.sum(SimBonus.charged_cents), 0))).scalar_one()
        return int(a) + int(b)


def _factory(campaign_dir, cfg, engine, opts: BackendOptions) -> SimulatedBackend:
    from orchestrator.crowd.crowd_store import Gold
    from orchestrator.campaign.store import Mask, read_session

    with read_session(engine) as s:
        rows = s.execute(select(Mask.id, Mask.iou)).all()
        gold = dict(s.execute(select(Gold.id, Gold.label)).all())
    n = (max(i for i, _ in rows) + 1) if rows else 0
    ious = np.full(n, np.nan)
    for i, v in rows:
        if v is not None:
            ious[i] = v
    sim = cfg.crowd.simulated
    err = sim.error_rate if opts.error_rate is None else opts.error_rate
    return SimulatedBackend(engine, ious=ious, kiou=cfg.search.kiou, gold_labels=gold, seed=cfg.campaign.seed,
                            workers=sim.workers, error_rate=err, seconds_per_question=sim.seconds_per_question)


register_backend("simulated")(_factory)
