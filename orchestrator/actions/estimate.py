"""What a campaign will ask and cost, before anything is posted (``labelprop estimate`` and
``labelprop run --dry-run`` print it)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from orchestrator.search.params import ParamError

__all__ = ["estimate_data"]


def estimate_data(campaign_dir: Path, db: Optional[str] = None, runs: int = 3) -> dict:
    from sqlalchemy import select

    from orchestrator.campaign.campaign import CampaignSearch
    from orchestrator.crowd.backends import backend_fees
    from orchestrator.crowd.estimate import estimate_campaign
    from orchestrator.crowd.crowd_store import CrowdAssignment
    from orchestrator.campaign.store import read_session

    if runs < 1:
        raise ParamError("runs", f"must be at least 1, got {runs}")
    cs = CampaignSearch(campaign_dir, db)
    cc = cs.cfg.crowd
    with read_session(cs.engine) as s:
        rows = s.execute(select(CrowdAssignment.seconds, CrowdAssignment.n_answers)
                         .where(CrowdAssignment.seconds.is_not(None), CrowdAssignment.n_answers > 0)).all()
    spq = None
    if rows:
        import statistics

        spq = statistics.median(sec / n for sec, n in rows)
    est = estimate_campaign(cs, fees=backend_fees(cc.backend), runs=runs, seconds_per_question=spq)
    out = {"campaign": str(campaign_dir), "backend": cc.backend, **est.as_dict(),
           "questions_per_hit": cc.questions_per_hit, "gold_per_hit": cc.gold_per_hit,
           "assignments_per_hit": cc.assignments_per_hit, "reward_usd": cc.reward_usd,
           "budget_usd": cc.budget_usd or None, "masks": cs.forest.n_masks}
    if cc.backend == "prolific":       # paid per place (reward + Prolific's fee), not per HIT
        from orchestrator.crowd.backends.prolific_api import place_estimate

        out["prolific"] = place_estimate(cs.cfg, est.hits * cc.assignments_per_hit, est.seconds_per_question)
        out["cost_usd"] = round(out["prolific"].pop("cost_cents") / 100, 2)
    out["within_budget"] = None if not cc.budget_usd else out["cost_usd"] <= cc.budget_usd
    cs.engine.dispose()
    return out
