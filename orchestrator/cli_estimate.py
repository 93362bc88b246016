"""``labelprop estimate``: expected questions, HITs, cost and hours before anything is posted."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from orchestrator.errors import LabelpropError

ESTIMATE_HELP = """Estimate what a campaign will ask and cost, before anything is posted.

The search is run to its end in memory from the campaign's current state, with answers drawn from the mask scores (a mask with score s is a "yes" with probability s), a few times over. The questions become HITs, dollars (the platform's fees included) and hours of work. Nothing is written; `labelprop run DIR --dry-run` prints the same.

Examples:

  labelprop estimate camp

  labelprop estimate camp --runs 5 --json
"""


def estimate_data(campaign_dir: Path, db: Optional[str] = None, runs: int = 3) -> dict:
    from sqlalchemy import select

    from orchestrator.campaign import CampaignSearch
    from orchestrator.crowd.backends import backend_fees
    from orchestrator.crowd.estimate import estimate_campaign
    from orchestrator.crowd_store import CrowdAssignment
    from orchestrator.store import read_session

    if runs < 1:
        raise LabelpropError(f"--runs must be at least 1, got {runs}")
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


def estimate_cmd(
    campaign: Path = typer.Argument(..., metavar="DIR", help="Campaign directory (trees built)."),
    db: Optional[str] = typer.Option(None, "--db", help="SQLAlchemy URL overriding the campaign's store."),
    runs: int = typer.Option(3, "--runs", help="Simulated finishes to average."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    out = estimate_data(campaign, db, runs)
    if json_out:
        typer.echo(json.dumps(out, indent=2))
        return
    lo, hi = out["questions_range"]
    done = f" (after the {out['already_asked']:,} already asked)" if out["already_asked"] else ""
    budget = ""
    if out["budget_usd"]:
        budget = (f"; budget ${out['budget_usd']:.2f}: "
                  + ("enough" if out["within_budget"] else "NOT enough, raise crowd.budget_usd"))
    typer.echo(
        f"{campaign}: expected to ask, from the mask scores ({out['runs']} simulated finishes):\n"
        f"  questions      {out['questions']:>9,}   (range {lo:,} to {hi:,}){done}\n"
        f"  HITs           {out['hits']:>9,}   ({out['questions_per_hit']} questions + {out['gold_per_hit']} "
        f"gold each, {out['assignments_per_hit']} assignment(s))\n"
        f"  cost           {'$' + format(out['cost_usd'], ',.2f'):>9}   (${out['reward_usd']:.2f} per HIT "
        f"plus fees{budget})\n"
        f"  work           {_hours(out['hours']):>9}   ({out['seconds_per_question']} s per question)\n"
        f"  masks accepted {out['accepted_masks']:>9,}   of {out['masks']:,}")
    pr = out.get("prolific")
    if pr:
        pay = pr["expected_hourly_usd"]
        typer.echo(f"  Prolific       {pr['places']:>9,}   places at ${pr['place_reward_usd']:.2f} + "
                   f"{pr['fee_percent']:g}% fee; about ${pay:.2f} an hour for participants "
                   f"({'meets' if pr['meets_min_hourly'] else 'BELOW'} the ${pr['min_hourly_usd']:.2f} minimum)")


def _hours(h: float) -> str:
    from orchestrator.crowd.estimate import work_text

    return work_text(h)


def register(app: typer.Typer) -> None:
    app.command("estimate", help=ESTIMATE_HELP)(estimate_cmd)
