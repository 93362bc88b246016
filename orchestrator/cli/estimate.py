"""``labelprop estimate``: expected questions, HITs, cost and hours before anything is posted."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from orchestrator.actions.estimate import estimate_data
from orchestrator.cli.display import print_estimate
from orchestrator.cli.options import flag_names

ESTIMATE_HELP = """Estimate what a campaign will ask and cost, before anything is posted.

The search is run to its end in memory from the campaign's current state, with answers drawn from the mask scores (a mask with score s is a "yes" with probability s), a few times over. The questions become HITs, dollars (the platform's fees included) and hours of work. Nothing is written; `labelprop run DIR --dry-run` prints the same.

Examples:

  labelprop estimate camp

  labelprop estimate camp --runs 5 --json
"""


def estimate_cmd(
    campaign: Path = typer.Argument(..., metavar="DIR", help="Campaign directory (trees built)."),
    db: Optional[str] = typer.Option(None, "--db", help="SQLAlchemy URL overriding the campaign's store."),
    runs: int = typer.Option(3, "--runs", help="Simulated finishes to average."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    with flag_names():
        out = estimate_data(campaign, db, runs)
    print_estimate(campaign, out, json_out)


def register(app: typer.Typer) -> None:
    app.command("estimate", help=ESTIMATE_HELP)(estimate_cmd)
