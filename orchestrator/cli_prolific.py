"""``labelprop prolific-test-study``: create the campaign's Prolific study and start a test run of it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from orchestrator.errors import LabelpropError

HELP = """Create the campaign's Prolific study (unpublished) and start a test run of it, which spends no credits.

Prolific has no sandbox: its test-study call (POST /studies/{id}/test-study) lets you take the study yourself, from Prolific's page through the crowd server's /prolific/start to the completion redirect, before any participant sees it. Needs crowd.backend = "prolific", PROLIFIC_TOKEN in the environment and the crowd server running at crowd.endpoint_url. The next `labelprop poll` publishes the same study once it has HITs out.

Example: PROLIFIC_TOKEN=... labelprop prolific-test-study runs/c1
"""


def prolific_test_study(campaign_dir: Path, db: Optional[str] = None) -> dict:
    from orchestrator.config import load_config
    from orchestrator.poll import CrowdContext, campaign_lock

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


def test_study_cmd(
    campaign: Path = typer.Argument(..., metavar="DIR", help="Campaign directory (crowd.backend = \"prolific\")."),
    db: Optional[str] = typer.Option(None, "--db", help="SQLAlchemy URL overriding the campaign's store."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    out = prolific_test_study(campaign, db)
    if json_out:
        typer.echo(json.dumps(out, indent=2))
        return
    typer.echo(f"{campaign}: Prolific study {out['study_id']} ({out['status']}): test run started, no credits "
               f"spent.\n  Take it from your Prolific account; it opens {out['external_study_url']}")


def register(app: typer.Typer) -> None:
    app.command("prolific-test-study", help=HELP)(test_study_cmd)
