"""A campaign's search, persisted: the pure :class:`~orchestrator.search.search.Search` restored from
the store, and every step (questions posted, answers recorded, questions released)
saved in one transaction together with the node states it changed.

Nothing lives only in memory between commands: a process can be killed at any line and
the next one restores exactly the state of the last committed step.  Because every
sampling round is seeded by (seed, node, round), the restored search asks what the
uninterrupted one would have asked.

Counters are derived from rows, never kept separately: questions asked = Question rows,
clusters annotated = nodes accepted, rejected or split by answers.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import func, select

from orchestrator.errors import LabelpropError
from orchestrator.search.search import NodeState, Search, SearchParams
from orchestrator.campaign.store import bulk_update

__all__ = ["CampaignSearch", "AnswerIn"]


@dataclass(frozen=True)
class AnswerIn:
    """One answer to record: the question it answers, 1 (yes) or 0 (no), and who/how long."""

    question_id: int
    label: int
    worker_id: str | None = None
    seconds: float | None = None
    source: str = "crowd"


class CampaignSearch:
    """The search of the campaign in ``campaign_dir`` (store from its config or ``db``)."""

    def __init__(self, campaign_dir: str | os.PathLike, db: str | None = None) -> None:
        from orchestrator.campaign.arrays import load_forest
        from orchestrator.campaign.config import load_config
        from orchestrator.campaign.store import open_store, read_session

        self.dir = Path(campaign_dir)
        self.cfg = load_config(self.dir)
        sc = self.cfg.search
        self.engine = open_store(self.dir, db)
        with read_session(self.engine) as s:
            quotas = self._quotas(s, sc.class_quotas)
        curve = None
        if sc.calibration:
            from orchestrator.search.calibration import load_curve
            path = self.dir / sc.calibration
            curve = load_curve(path).check_for(sc.ka, sc.kiou, str(path))
        self.params = SearchParams(ns=sc.ns, ka=sc.ka, kiou=sc.kiou, kpa=sc.kpa, kpr=sc.kpr, chunk=sc.chunk,
                                   strategy=sc.strategy, seed=self.cfg.campaign.seed, quotas=quotas,
                                   leaf_rule=sc.leaf_rule, acceptance=sc.acceptance,
                                   risk_masks=sc.risk_masks, bad_margin=sc.bad_margin,
                                   max_answers=sc.max_answers, curve=curve)
        with read_session(self.engine) as s:
            from orchestrator.campaign.rounds import current_round
            from orchestrator.campaign.store import Mask, count_rows

            self.forest = load_forest(s, self.dir)
            r = current_round(s)
            # the masks of this round (`labelprop iterate`): all masks before a second round
            self.round_masks = count_rows(s, Mask) if r == 1 else count_rows(s, Mask, Mask.round == r)
            self._restore(s)

    def _restore(self, s) -> None:
        """(Re)build the in-memory search from the store as session ``s`` sees it."""
        from orchestrator.campaign.store import load_mask_answers, load_node_arrays

        nodes = load_node_arrays(s, self.forest.n_nodes)
        answer, pending = load_mask_answers(s, self.forest.n_masks)
        n_questions = self._count_questions(s)
        touched = np.flatnonzero(nodes["state"] != NodeState.UNSEEN)
        if touched.shape[0] == 0:
            self.search = Search(self.forest, self.params)
        else:
            am = np.flatnonzero(answer >= 0)
            # answers to masks in no tree of this forest (gold, earlier rounds) play no part
            am = am[self.forest.leaf_of_mask[am] >= 0]
            self.search = Search.restore(
                self.forest, self.params, node_ids=touched, states=nodes["state"][touched],
                seqs=nodes["seq"][touched], qs=nodes["q"][touched], rounds=nodes["rounds"][touched],
                answered_masks=am, answered_labels=answer[am], pending_masks=np.flatnonzero(pending),
                questions_asked=n_questions,
                clusters_annotated=int(np.isin(nodes["state"], [3, 4, 5]).sum()))
            # answers for masks that no node needed yet stay known: restore() took them all

    def reload(self) -> None:
        """Rebuild the in-memory search from the committed store (after a failed transaction)."""
        from orchestrator.campaign.store import read_session

        with read_session(self.engine) as s:
            self._restore(s)

    def reload_in(self, s) -> None:
        """Rebuild the search inside transaction ``s`` after rows were changed behind its back
        (answers discarded by quality control): pending node changes are saved first."""
        self._save_nodes(s)
        s.flush()
        self._restore(s)

    # ------------------------------------------------------------------ helpers
    def _quotas(self, session, wanted: dict) -> tuple:
        """[search.class_quotas] (category name or id -> masks) as ((class_id, masks), ...)."""
        from orchestrator.campaign.store import Category

        if not wanted:
            return ()
        cats = {c.name: c.id for c in session.execute(select(Category)).scalars()}
        ids = set(cats.values())
        out = []
        for key, n in wanted.items():
            cid = cats.get(key)
            if cid is None and str(key).lstrip("-").isdigit() and int(key) in ids:
                cid = int(key)
            if cid is None:
                raise LabelpropError(f"{self.dir / 'campaign.toml'}: [search.class_quotas] names unknown "
                                     f"category {key!r}")
            out.append((int(cid), int(n)))
        return tuple(out)

    @staticmethod
    def _count_questions(session) -> int:
        from orchestrator.campaign.store import Question

        return int(session.execute(select(func.count()).select_from(Question)).scalar_one())

    def _save_nodes(self, session) -> list:
        from orchestrator.campaign.store import log_event, save_node_arrays

        dirty, decisions = self.search.drain()
        if dirty:
            n_yes = np.zeros(self.forest.n_nodes, dtype=np.int64)
            n_ans = np.zeros(self.forest.n_nodes, dtype=np.int64)
            for j in dirty:
                a, y, _ = self.search.counts(j)
                n_ans[j], n_yes[j] = a, y
            save_node_arrays(session, dirty, self.forest.node_class, self.search.node_state,
                             self.search.node_seq, self.search.node_q, self.search.node_rounds, n_yes, n_ans)
        for d in decisions:
            if d.state in (NodeState.ACCEPTED, NodeState.REJECTED, NodeState.SPLIT):
                log_event(session, "node_" + d.state.name.lower(), node=d.node, q=d.q,
                          answered=d.n_answered, size=self.forest.size(d.node))
        return decisions

    def remaining_budget(self) -> int | None:
        b = self.cfg.search.budget_questions
        return None if not b else max(0, b - self.search.questions_asked)

    # ------------------------------------------------------------------ steps
    def ask(self, target: int | None = None, max_nodes: int | None = None,
            max_questions: int | None = None) -> list[dict]:
        """Sample the next questions and record them as pending Question rows (one transaction).

        ``target``: about how many questions to gather (whole node samples, see
        :meth:`Search.next_questions`); ``max_questions``: hard cap, on top of the
        campaign's question budget.  Returns ``[{"question_id", "mask_id", "node_id", "round"}]``.
        """
        from orchestrator.campaign.store import transaction

        with transaction(self.engine) as s:
            return self.ask_in(s, target, max_nodes, max_questions)

    def ask_in(self, s, target: int | None = None, max_nodes: int | None = None,
               max_questions: int | None = None) -> list[dict]:
        """:meth:`ask` inside the caller's transaction ``s`` (the caller reloads the search
        if that transaction fails, since the in-memory search has already moved on)."""
        from orchestrator.campaign.store import Question, bulk_insert, utcnow

        left = self.remaining_budget()
        if left is not None:
            max_questions = left if max_questions is None else min(max_questions, left)
        asks = self.search.next_questions(max_questions=max_questions, max_nodes=max_nodes, target=target)
        rows = [{"mask_id": int(m), "node_id": a.node, "round": a.round, "status": "pending",
                 "created_at": utcnow()} for a in asks for m in a.masks.tolist()]
        start = s.execute(select(func.max(Question.id))).scalar() or 0
        bulk_insert(s, Question, rows)
        self._save_nodes(s)
        created = s.execute(select(Question.id, Question.mask_id, Question.node_id, Question.round)
                            .where(Question.id > start).order_by(Question.id)).all()
        return [{"question_id": q, "mask_id": m, "node_id": n, "round": r} for q, m, n, r in created]

    def record(self, answers: list[AnswerIn]) -> int:
        """Record answers to pending questions and decide what they determine (one transaction).

        Answers to unknown or no-longer-pending questions are skipped; returns how many
        were recorded.
        """
        from orchestrator.campaign.store import transaction

        if not answers:
            return 0
        with transaction(self.engine) as s:
            return self.record_in(s, answers)

    def record_in(self, s, answers: list[AnswerIn]) -> int:
        """:meth:`record` inside the caller's transaction ``s``."""
        from orchestrator.campaign.store import Answer, Question, bulk_insert, chunks, utcnow

        if not answers:
            return 0
        by_q = {a.question_id: a for a in answers}
        rows = []
        for part in chunks(list(by_q)):
            rows += s.execute(select(Question.id, Question.mask_id)
                              .where(Question.id.in_(part), Question.status == "pending")).all()
        if not rows:
            return 0
        rows.sort()
        masks = np.array([m for _, m in rows], dtype=np.int64)
        labels = np.array([1 if by_q[q].label else 0 for q, _ in rows], dtype=np.int8)
        self.search.record(masks, labels)
        now = utcnow()
        bulk_insert(s, Answer, [{"question_id": q, "mask_id": m, "label": int(by_q[q].label != 0),
                                 "worker_id": by_q[q].worker_id, "seconds": by_q[q].seconds,
                                 "source": by_q[q].source, "created_at": now} for q, m in rows])
        for part in chunks([q for q, _ in rows]):
            s.execute(bulk_update(Question).where(Question.id.in_(part)).values(status="answered"))
        self._save_nodes(s)
        return len(rows)

    def release(self, question_ids: list[int], reason: str = "released") -> int:
        """Return pending questions unanswered (expired HIT, discarded answers): their nodes
        ask again.  The questions are marked discarded (one transaction)."""
        from orchestrator.campaign.store import transaction

        with transaction(self.engine) as s:
            return self.release_in(s, question_ids, reason)

    def release_in(self, s, question_ids: list[int], reason: str = "released") -> int:
        """:meth:`release` inside the caller's transaction ``s``."""
        from orchestrator.campaign.store import Question, chunks, log_event

        rows = []
        for part in chunks(sorted(set(int(q) for q in question_ids))):
            rows += s.execute(select(Question.id, Question.mask_id)
                              .where(Question.id.in_(part), Question.status == "pending")).all()
        if not rows:
            return 0
        self.search.release(np.array([m for _, m in rows], dtype=np.int64))
        for part in chunks([q for q, _ in rows]):
            s.execute(bulk_update(Question).where(Question.id.in_(part)).values(status="discarded"))
        log_event(s, "questions_released", reason=reason, count=len(rows))
        self._save_nodes(s)
        return len(rows)

    def pending(self) -> list[dict]:
        from orchestrator.campaign.store import Question, read_session

        with read_session(self.engine) as s:
            rows = s.execute(select(Question.id, Question.mask_id, Question.node_id)
                             .where(Question.status == "pending").order_by(Question.id)).all()
        return [{"question_id": q, "mask_id": m, "node_id": n} for q, m, n in rows]

    @property
    def done(self) -> bool:
        left = self.remaining_budget()
        return self.search.done or (left == 0 and self.search.outstanding == 0)

    def summary(self) -> dict:
        acc = self.search.accepted_mask()
        return {"masks": self.round_masks, "accepted_masks": int(acc.sum()),
                "rejected_masks": int(self.search.rejected_mask().sum()),
                "questions": int(self.search.questions_asked),
                "clusters_annotated": int(self.search.clusters_annotated),
                "pending_questions": int(self.search.outstanding), "done": bool(self.done)}
