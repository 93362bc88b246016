"""`labelprop run`: poll passes until the campaign is finished, the budget spent, or it stalls.

One loop for every backend: each step is :func:`orchestrator.crowd.poll.poll_once`, exactly what
``labelprop poll`` does from cron (post HITs, fetch answers, quality control, pay, decide
clusters).  With the ``simulated`` backend the crowd answers at once, so passes follow each
other without waiting; with a real platform ``--interval`` seconds pass between them.

A platform that cannot be reached (the crowd server restarting, a network blip) is waited
out: ``run`` shows "waiting for the platform", retries with exponential backoff (1 s doubling
to 60 s) and gives up after ``crowd.platform_wait_seconds`` (``--platform-wait``).  Every
pass is crash-safe, so retrying one is always correct.  Ctrl-C stops at once and says how
to resume.  ``--dry-run`` prints the estimate (``labelprop estimate``) and posts nothing.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from orchestrator.actions.run import run_passes, run_simulated
from orchestrator.cli.display import Progress
from orchestrator.errors import LabelpropError

RUN_HELP = """Run a campaign to the end: poll passes until it is finished or cannot go on.

Each pass is what `labelprop poll` does: post HITs, fetch answers, check quality, pay, decide clusters. With the simulated backend the passes run back to back; with MTurk or the crowd server they run every --interval seconds, with a live display. An unreachable platform is waited for (up to crowd.platform_wait_seconds). Safe to stop (Ctrl-C) or kill at any moment and rerun: nothing is lost or paid twice.

Examples:

  labelprop run camp                      # the crowd in campaign.toml

  labelprop run camp --error-rate 0.02    # simulated, 2% wrong answers

  labelprop run camp --dry-run            # expected questions, cost, hours

  labelprop run camp --interval 10        # the crowd server, or MTurk
"""


def run(
    campaign: Path = typer.Argument(..., metavar="DIR", help="Campaign directory (from `labelprop init`)."),
    db: Optional[str] = typer.Option(None, "--db", help="SQLAlchemy URL overriding the campaign's store."),
    error_rate: Optional[float] = typer.Option(None, "--error-rate", help="Simulated: the probability that "
                                               "an answer is wrong (default crowd.simulated.error_rate)."),
    questions_per_step: Optional[int] = typer.Option(None, "--questions-per-step", help="Simulated: questions "
                                                     "per HIT (default crowd.questions_per_hit)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after this many poll passes "
                                            "(resume later)."),
    endpoint_url: Optional[str] = typer.Option(None, "--endpoint-url", help="MTurk API URL, e.g. the "
                                               "bundled crowd server's (default crowd.endpoint_url)."),
    sandbox: Optional[bool] = typer.Option(None, "--sandbox/--production", help="MTurk: the sandbox or "
                                           "production."),
    profile: Optional[str] = typer.Option(None, "--profile", help="AWS profile (default: the standard "
                                          "chain)."),
    interval: Optional[float] = typer.Option(None, "--interval", help="Seconds between passes (default 10; "
                                             "0 for the simulated backend)."),
    platform_wait: Optional[float] = typer.Option(None, "--platform-wait", help="Seconds to wait for an "
                                                  "unreachable platform (default crowd.platform_wait_seconds)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the estimate and post nothing."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    from orchestrator.campaign.config import load_config
    from orchestrator.errors import check_unit_interval

    if dry_run:
        from orchestrator.actions.estimate import estimate_data
        from orchestrator.cli.display import print_estimate

        return print_estimate(campaign, estimate_data(campaign, db, runs=3), json_out)
    cfg = load_config(campaign)
    if error_rate is not None:
        check_unit_interval("--error-rate", error_rate)
    for name, v in (("--interval", interval), ("--platform-wait", platform_wait)):
        if v is not None and v < 0:
            raise LabelpropError(f"{name} must be >= 0, got {v}")
    if questions_per_step is not None and questions_per_step < 1:
        raise LabelpropError(f"--questions-per-step must be at least 1, got {questions_per_step}")
    try:
        if cfg.crowd.backend == "simulated":
            err = cfg.crowd.simulated.error_rate if error_rate is None else error_rate
            with Progress(not json_out, simulated=True) as bar:
                out = run_simulated(campaign, db, err, questions_per_step, max_steps, show=bar.show)
        else:
            with Progress(not json_out, simulated=False) as bar:
                out = run_passes(campaign, db=db, endpoint_url=endpoint_url, sandbox=sandbox, profile=profile,
                                 interval=interval, max_passes=max_steps, platform_wait=platform_wait,
                                 show=bar.show)
    except KeyboardInterrupt:
        typer.echo(f"\nlabelprop: run stopped by Ctrl-C; nothing is lost (every step is saved). "
                   f"Resume with: labelprop run {campaign}", err=True)
        raise typer.Exit(130)
    if json_out:
        sys.stdout.write(json.dumps(out, indent=2, default=str) + "\n")
        return
    if out.get("locked"):
        typer.echo(f"labelprop: run: {out['message']}", err=True)
        return
    state = ("finished" if out["finished"] else f"stopped: {out['stalled']}" if out.get("stalled")
             else "budget spent" if out["stopped"] else "paused (rerun to continue)")
    h = out.get("work_hours") or 0
    from orchestrator.crowd.estimate import work_text

    hours = f", {work_text(h)} of work" if h else ""
    typer.echo(f"{campaign}: {state}: {out['accepted_masks']:,} of {out['masks']:,} masks accepted with "
               f"{out['questions']:,} questions in {out['hits_posted']} HITs ({out['clusters_annotated']:,} "
               f"clusters annotated); ${out['spent_usd']:.2f} spent{hours}")
    for m in out.get("messages", []):
        typer.echo(f"  {m}", err=True)


def register(app: typer.Typer) -> None:
    app.command("run", help=RUN_HELP)(run)
