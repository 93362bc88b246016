"""``labelprop prolific-test-study``: create the campaign's Prolific study and start a test run of it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from orchestrator.actions.prolific import prolific_test_study

HELP = """Create the campaign's Prolific study (unpublished) and start a test run of it, which spends no credits.

Prolific has no sandbox: its test-study call (POST /studies/{id}/test-study) lets you take the study yourself, from Prolific's page through the crowd server's /prolific/start to the completion redirect, before any participant sees it. Needs crowd.backend = "prolific", PROLIFIC_TOKEN in the environment and the crowd server running at crowd.endpoint_url. The next `labelprop poll` publishes the same study once it has HITs out.

Example: PROLIFIC_TOKEN=... labelprop prolific-test-study runs/c1
"""


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
