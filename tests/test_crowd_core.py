"""The pure core of crowd campaigns: fee rules and the ledger (integer cents), quality control as one
function (review_hit), answer-quality signals, the backend registry."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from orchestrator.crowd.ledger import MTURK_FEES, NO_FEES, Ledger, cents, usd
from orchestrator.crowd.signals import agreement_with_cluster, doubtful_masks, worker_scores
from orchestrator.crowd.quality import (HeldAnswer, ReviewAssignment, ReviewItem, WorkerRecord, aggregate, review_hit,
                                  score_gold)

# ------------------------------------------------------------------------------- fees, by hand
# reward (cents), assignments in the HIT, Masters -> fee and reward + fee per approved assignment.
# 20% of the reward, +20% at 10 or more assignments, +5% for Masters, at least 1 cent, half-up.
FEES = [
    (5, 1, False, 1, 6),          # 20% of 5 = 1.0
    (1, 1, False, 1, 2),          # 0.2 -> the 1-cent minimum
    (0, 1, False, 1, 1),          # a free HIT still pays the minimum fee
    (15, 1, False, 3, 18),        # the paper's $0.15 HIT
    (12, 1, False, 2, 14),        # 2.4 -> 2
    (13, 1, False, 3, 16),        # 2.6 -> 3
    (25, 1, False, 5, 30),        # 5.0
    (10, 9, False, 2, 12),        # 9 assignments: no surcharge
    (10, 10, False, 4, 14),       # 10 assignments: 40%
    (10, 1, True, 3, 13),         # Masters: 25% of 10 = 2.5 -> 3 (half-up)
    (10, 10, True, 5, 15),        # 45% of 10 = 4.5 -> 5
    (250, 12, True, 113, 363),    # 45% of 250 = 112.5 -> 113
    (100, 1, False, 20, 120),
]


@pytest.mark.parametrize("reward, n, masters, fee, cost", FEES)
def test_mturk_fee_rules_match_values_computed_by_hand(reward, n, masters, fee, cost):
    assert MTURK_FEES.fee_cents(reward, n, masters) == fee
    assert MTURK_FEES.assignment_cost_cents(reward, n, masters) == cost
    assert MTURK_FEES.hit_cost_cents(reward, n, masters) == cost * n


def test_bonus_fees_and_conversions():
    assert MTURK_FEES.bonus_cost_cents(50) == 60          # 20% of 50
    assert MTURK_FEES.bonus_cost_cents(3) == 4            # 0.6 -> 1
    assert MTURK_FEES.bonus_cost_cents(1) == 2            # the minimum
    assert NO_FEES.assignment_cost_cents(15) == 15
    assert cents(0.15) == 15 and cents(0.145) == 15 and cents(25.0) == 2500 and usd(1422) == 14.22
    from orchestrator.crowd.cost import CostModel, assignment_cost, assignment_fee

    assert assignment_fee(0.15) == 0.03 and assignment_cost(0.05) == 0.06 and assignment_cost(0.10, 10) == 0.14
    assert CostModel().cost(3915) == 14.22                # the demo: 79 HITs of $0.15 + $0.03


def test_ledger_reserves_against_the_budget():
    led = Ledger(budget_cents=100, reserved_cents=30, owed_cents=12, spent_cents=40)
    assert led.committed_cents == 82 and led.left_cents == 18
    assert led.affordable_hits(6, 5) == 3 and led.affordable_hits(19, 5) == 0
    assert Ledger(reserved_cents=10**6).affordable_hits(6, 5) == 5      # no budget
    assert Ledger(budget_cents=100).as_dict()["budget_left_usd"] == 1.0


# ------------------------------------------------------------------------------- quality control
@dataclass
class Policy:
    min_seconds_per_question: float = 0.3
    reject_below: float = 0.5
    reject_fast: bool = False
    min_gold_answers: int = 4
    gold_min_accuracy: float = 0.75


ITEMS = [ReviewItem("a", question_id=1), ReviewItem("b", question_id=2),
         ReviewItem("g1", gold_id=10, gold_label=1), ReviewItem("g0", gold_id=11, gold_label=0)]


def _asg(aid, wid, answers, seconds=20.0, status="Submitted"):
    return ReviewAssignment(aid, wid, status, seconds, answers)


def test_gold_is_scored_and_a_broken_picture_does_not_count():
    assert score_gold({"g1": "yes", "g0": "yes"}, {"g1": 1, "g0": 0}) == (1, 2)
    assert score_gold({"g1": "yes", "g0": "broken"}, {"g1": 1, "g0": 0}) == (1, 1)
    assert score_gold({"g1": "unsure"}, {"g1": 1, "g0": 0}) == (0, 2)


def test_new_worker_is_held_then_trusted_and_held_answers_are_released():
    p = Policy()
    rv = review_hit(ITEMS, [_asg("A1", "w", {"a": "yes", "b": "no", "g1": "yes", "g0": "no"})], {}, {}, p,
                    has_gold=True, replicate=False)
    assert [v.decision for v in rv.verdicts] == ["approve"]
    assert {x.identifier: x.status for x in rv.answers} == {"a": "held", "b": "held", "g1": "gold", "g0": "gold"}
    assert rv.to_record == [] and rv.transitions == []
    w = rv.workers["w"]
    assert (w.gold_correct, w.gold_total, w.trusted) == (2, 2, False)
    # the next HIT completes probation: the earlier held answers are recorded, one of them was re-asked meanwhile
    earlier = {"w": [HeldAnswer(7, "w", 1, 1, 2.0, "held", True), HeldAnswer(8, "w", 2, 0, 2.0, "held", False)]}
    items2 = [ReviewItem("c", question_id=3), ReviewItem("g2", gold_id=12, gold_label=1),
              ReviewItem("g3", gold_id=13, gold_label=0)]
    rv2 = review_hit(items2, [_asg("A2", "w", {"c": "yes", "g2": "yes", "g3": "no"})], {"w": w}, earlier, p,
                     has_gold=True, replicate=False)
    assert [t.to for t in rv2.transitions] == ["trusted"]
    assert rv2.earlier == {7: "recorded", 8: "discarded"}
    assert sorted(rv2.to_record) == [(1, 1, "w", 2.0), (3, 1, "w", pytest.approx(20 / 3))]
    assert w.trusted is False and rv2.workers["w"].trusted is True      # the input is not changed


def test_a_spammer_is_blocked_and_loses_everything_held():
    p = Policy()
    w = WorkerRecord("s", gold_correct=1, gold_total=2)
    earlier = {"s": [HeldAnswer(5, "s", 9, 1, None, "held")]}
    rv = review_hit(ITEMS, [_asg("A", "s", {"a": "yes", "b": "yes", "g1": "no", "g0": "yes"})], {"s": w}, earlier,
                    p, has_gold=True, replicate=False)
    assert [v.decision for v in rv.verdicts] == ["reject"]                # 0 of 2 gold, below reject_below
    assert "0 of 2 check questions" in rv.verdicts[0].feedback
    assert [t.to for t in rv.transitions] == ["blocked"] and rv.workers["s"].blocked
    assert rv.earlier == {5: "discarded"}
    assert {x.status for x in rv.answers if x.gold_id is None} == {"discarded"} and rv.to_record == []


def test_unreadable_answers_are_approved_and_asked_again():
    rv = review_hit(ITEMS, [ReviewAssignment("A", "w", "Submitted", 10.0, None, error="bad xml")], {}, {},
                    Policy(), has_gold=True, replicate=False)
    v = rv.verdicts[0]
    assert v.decision == "approve" and not v.readable and rv.answers == [] and rv.to_record == []


def test_replication_pools_answers_and_a_broken_picture_is_discarded():
    rv = review_hit(ITEMS, [_asg("A", "x", {"a": "yes", "b": "broken", "g1": "yes", "g0": "no"}),
                            _asg("B", "y", {"a": "no", "b": "yes", "g1": "yes", "g0": "no"})],
                    {}, {}, Policy(), has_gold=True, replicate=True)
    assert sorted(rv.pooled) == [(1, "x", 1), (1, "y", 0), (2, "y", 1)]
    st = {(x.assignment_id, x.identifier): x.status for x in rv.answers}
    assert st[("A", "b")] == "discarded" and rv.verdicts[0].broken == ("b",)


def test_dawid_skene_uses_gold_as_true_labels():
    # two workers disagree on every task; the gold shows that w2 is always right
    rows = [(f"g{i}", "w1", 1 - (i % 2)) for i in range(6)] + [(f"g{i}", "w2", i % 2) for i in range(6)]
    rows += [("q1", "w1", 1), ("q1", "w2", 0), ("q2", "w1", 0), ("q2", "w2", 1)]
    truth = {f"g{i}": i % 2 for i in range(6)}
    agg = aggregate(rows, "dawid-skene", truth)
    assert agg["q1"] == 0 and agg["q2"] == 1
    assert aggregate([("q", "a", 1), ("q", "b", 1), ("q", "c", 0)], "majority") == {"q": 1}


# ------------------------------------------------------------------------------- signals
def test_agreement_ranking_and_doubtful_masks():
    assert agreement_with_cluster((1, 3), 1, 1) == pytest.approx(2 / 3)   # 3 yes (one is its own), 1 no
    assert agreement_with_cluster((1, 3), 1, 0) == pytest.approx(1 / 3)   # a pooled "no" on a question decided yes
    assert agreement_with_cluster((0, 1), 1, 1) is None                   # nobody else in the cluster
    ranked = worker_scores([{"worker_id": "good", "gold_correct": 9, "gold_total": 10, "assignments": 4},
                            {"worker_id": "fast", "gold_correct": 9, "gold_total": 10, "assignments": 4, "flagged": 4},
                            {"worker_id": "bad", "gold_correct": 3, "gold_total": 10, "assignments": 4}],
                           {"good": [1.0, 0.9], "fast": [1.0, 0.9], "bad": [0.2]}, {"good": [1.5, 2.0]})
    assert [r.worker_id for r in ranked] == ["good", "fast", "bad"]
    assert ranked[0].median_seconds == 1.75 and ranked[1].fast_share == 1.0
    d = doubtful_masks([(1, 0, "good", 1.5), (2, 1, "bad", 1.5), (3, 1, "good", 0.1), (4, 1, "good", 1.5),
                        (5, 0, "good", 1.5)], accepted={1, 2, 3, 4}, scores={"good": 0.9, "bad": 0.3},
                       min_seconds=0.3, low_score=0.6)
    assert [(x.mask_id, x.reason.split()[0]) for x in d] == [(1, "answered"), (2, "yes"), (3, "yes")]
    assert "scoring 0.30 (best 0.90)" in d[1].reason
    # one careful worker whose clusters are impure scores low in absolute terms (agreement is also
    # cluster purity): their "yes" answers are not all doubtful; a worker far below the best is
    alone = doubtful_masks([(2, 1, "only", 1.5), (4, 1, "only", 1.5)], accepted={2, 4}, scores={"only": 0.58},
                           min_seconds=0.3, low_score=0.6)
    assert alone == []
    pair = doubtful_masks([(2, 1, "a", 1.5), (4, 1, "b", 1.5)], accepted={2, 4}, scores={"a": 0.9, "b": 0.58},
                          min_seconds=0.3, low_score=0.6)
    assert [x.mask_id for x in pair] == [4]


# ------------------------------------------------------------------------------- registry
def test_backend_registry_and_protocol():
    from orchestrator.crowd.backends import backend_fees, backend_names
    from orchestrator.crowd.backends.base import CrowdBackend
    from orchestrator.crowd.backends.mturk import MTurkBackend
    from orchestrator.crowd.backends.simulated import SimulatedBackend

    assert {"mturk", "server", "simulated"} <= set(backend_names())
    assert backend_fees("simulated") is MTURK_FEES
    for cls in (MTurkBackend, SimulatedBackend):
        missing = [m for m in ("create_qualification", "ensure_task_type", "eligible_workers", "render", "publish",
                               "find_by_annotation", "list_ready", "list_submissions", "parse_answers",
                               "answer_seconds", "qualification_scores", "list_tasks", "get_task", "approve",
                               "reject", "assignment_status", "block", "expire", "dispose", "pay_bonus",
                               "asset_mirror", "close") if not callable(getattr(cls, m, None))]
        assert missing == [], (cls, missing)
    assert CrowdBackend.__name__ == "CrowdBackend"


# ------------------------------------------------------------------------------- older stores
def test_columns_added_since_a_campaign_was_created_are_added_when_it_is_opened(tmp_path):
    """A campaign store made by an older labelprop (no reposts/retired, no answer signals, no bonus table)
    opens with the new columns added and its rows intact."""
    import sqlalchemy as sa

    from orchestrator.crowd.crowd_store import add_missing_columns

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    with engine.begin() as c:
        c.execute(sa.text("CREATE TABLE hit_intent (id INTEGER PRIMARY KEY, status VARCHAR NOT NULL, attempt INTEGER "
                          "NOT NULL, reserve_cents INTEGER NOT NULL)"))
        c.execute(sa.text("INSERT INTO hit_intent (id, status, attempt, reserve_cents) VALUES (1, 'created', 0, 6)"))
    added = add_missing_columns(engine)
    assert {"hit_intent.reposts", "hit_intent.retired", "hit_intent.first_try_at"} <= set(added)
    assert not any(a.startswith("crowd_answer.") for a in added)          # absent tables are created, not altered
    with engine.connect() as c:
        row = c.execute(sa.text("SELECT status, reserve_cents, reposts, retired, first_try_at FROM hit_intent")).one()
    assert tuple(row) == ("created", 6, 0, 0, None)
    assert add_missing_columns(engine) == []
    engine.dispose()
