"""Prolific actions: create a campaign's Prolific study and start its test run
(``labelprop prolific-test-study`` prints the result)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from orchestrator.errors import LabelpropError

__all__ = ["prolific_test_study"]


def prolific_test_study(campaign_dir: Path, db: Optional[str] = None) -> dict:
    from orchestrator.campaign.config import load_config
    from orchestrator.crowd.poll import CrowdContext, campaign_lock

    d = Path(campaign_dir)
    if load_config(d).crowd.backend != "prolific":
        raise LabelpropError(f"{d}: crowd.backend is not \"prolific\"; set it in campaign.toml first")
    with campaign_lock(d) as ok:
        if not ok:
            raise LabelpropError(f"another `labelprop poll` holds the lock on {d}; try again when it is done")
        ctx = CrowdContext(d, db=db)
        try:
            be = ctx.backend
            st = be._study(ctx, f"labelprop:{ctx.uid}", be.codes())
            if st is None:
                raise LabelpropError(f"{d}: the budget cannot fund one place; raise crowd.budget_usd")
            be.codes(st.study_id)
            be.client.test_study(st.study_id)
            study = be.client.get_study(st.study_id)
            return {"campaign": str(d), "study_id": st.study_id, "status": study.get("status"),
                    "external_study_url": study.get("external_study_url"), "test_study": "started"}
        finally:
            ctx.close()
