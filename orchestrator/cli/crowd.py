"""Crowd campaign commands: ``poll`` (one pass, for cron), ``gold`` (known-answer questions),
``report`` (an HTML page with plots and thumbnails), ``hits`` (list / expire / delete the
campaign's HITs) and ``bonus`` (pay a worker a bonus, recorded as an intent first).

What gold is and how it is drawn: :mod:`orchestrator.actions.gold`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from orchestrator.actions.gold import add_gold
from orchestrator.cli.options import flag_names
from orchestrator.errors import LabelpropError

DB_HELP = "SQLAlchemy URL overriding the campaign's store."

POLL_HELP = """One pass of a crowd campaign (any backend), for cron.

Takes the campaign's lock (a second concurrent poll exits at once with a message), fetches the submitted assignments, scores gold, approves or rejects, soft-blocks workers who fail gold, records answers, decides clusters, posts the next HITs (at most crowd.max_hits_in_flight, never beyond crowd.budget_usd, fees included), deletes finished HITs and re-posts HITs that expired unanswered. Safe to kill at any moment and to rerun.

Examples:

  labelprop poll runs/c1 --endpoint-url http://127.0.0.1:8765  # crowd server

  labelprop poll runs/c1 --sandbox --profile mturk              # the sandbox

  */5 * * * *  labelprop poll /data/c1 >> /data/c1/poll.log 2>&1   # crontab
"""

GOLD_HELP = """Add gold questions (masks with known answers) to a campaign.

Labels are yes iff iou >= the campaign's K_iou. The first call also fills the qualification test pool (crowd.qualification.questions items); the rest is hidden in every HIT.

Examples:

  labelprop gold runs/c1 --results gold_preds.json --images instances.json \\
      --image-root images/

  labelprop gold runs/c1 --from-masks 200
"""

REPORT_HELP = """Write an HTML report of a crowd campaign: plots, thumbnails and workers.

The page shows accepted masks and their quality against spend, the cluster decisions, thumbnails of the accepted masks (a grid per class), the accepted masks that look doubtful, and the workers ranked by their gold accuracy, agreement and speed.

Example:

  labelprop report runs/c1 --out runs/c1/report.html
"""


# ------------------------------------------------------------------------------- commands
def poll_cmd(
    campaign_dir: Path = typer.Argument(..., metavar="DIR", help="Campaign directory."),
    endpoint_url: Optional[str] = typer.Option(None, "--endpoint-url", help="Requester API URL (e.g. the "
                                               "bundled crowd server); default: crowd.endpoint_url, "
                                               "$AWS_ENDPOINT_URL_MTURK, sandbox or production."),
    sandbox: Optional[bool] = typer.Option(None, "--sandbox/--production", help="MTurk sandbox or production "
                                           "(default: crowd.sandbox)."),
    profile: Optional[str] = typer.Option(None, "--profile", help="AWS profile (default: the standard chain)."),
    as_json: bool = typer.Option(False, "--json", help="Print the pass summary as JSON."),
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    from orchestrator.crowd.poll import poll_once

    out = poll_once(campaign_dir, db=db, endpoint_url=endpoint_url, sandbox=sandbox, profile=profile)
    if out["locked"]:
        typer.echo(f"labelprop: poll: {out['message']}", err=True)
        if as_json:
            typer.echo(json.dumps(out))
        return
    if as_json:
        typer.echo(json.dumps(out, indent=2, default=str))
        return
    p = out["pass"]
    b = f" of ${out['budget_usd']:.2f}" if out["budget_usd"] else ""
    state = ("finished" if out["finished"] else f"stopped: {out['stalled']}" if out.get("stalled")
             else "budget spent" if out["stopped"] else "running")
    held = f"; {out['answers_held']} answers held (workers on probation)" if out.get("answers_held") else ""
    typer.echo(f"{campaign_dir}: {state}: {p.get('hits_processed', 0)} HITs processed, "
               f"{p.get('hits_created', 0)} posted, {out['hits_in_flight']} in flight; "
               f"{out['accepted_masks']:,} of {out['masks']:,} masks accepted; "
               f"${out['spent_usd']:.2f} spent{b}{held} ({out['seconds']:.1f} s)")
    for m in out["messages"]:
        typer.echo(f"  {m}", err=True)


def gold_cmd(
    campaign_dir: Path = typer.Argument(..., metavar="DIR", help="Campaign directory."),
    results: Optional[Path] = typer.Option(None, "--results", help="COCO results JSON whose predictions "
                                           "carry an 'iou' field."),
    images: Optional[Path] = typer.Option(None, "--images", help="COCO images JSON for --results."),
    image_root: Optional[Path] = typer.Option(None, "--image-root", help="Directory of the image files."),
    from_masks: Optional[int] = typer.Option(None, "--from-masks", help="Use N campaign masks with known IoU, "
                                             "held out of the search (only before it starts)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="At most this many from --results."),
    balance: bool = typer.Option(True, "--balance/--no-balance", help="As many known yes as known no."),
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    with flag_names():
        out = add_gold(campaign_dir, results=results, images=images, image_root=image_root,
                       from_masks=from_masks, limit=limit, balance=balance, db=db)
    typer.echo(f"{campaign_dir}: added {out['added']} gold questions ({out['yes']} known yes; "
               f"{out['test']} for the qualification test, {out['hit']} hidden in HITs)"
               + ("; trees rebuilt without them" if out["reclustered"] else ""))


def report_cmd(
    campaign_dir: Path = typer.Argument(..., metavar="DIR", help="Campaign directory."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="HTML file (default DIR/report.html)."),
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    from orchestrator.campaign.report import write_report

    path = write_report(campaign_dir, out or Path(campaign_dir) / "report.html", db=db)
    typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    app.command("poll", help=POLL_HELP)(poll_cmd)
    app.command("gold", help=GOLD_HELP)(gold_cmd)
    app.command("report", help=REPORT_HELP)(report_cmd)
    app.command("hits", help=HITS_HELP)(hits_cmd)
    app.command("bonus", help=BONUS_HELP)(bonus_cmd)


# ------------------------------------------------------------------------------- hits, bonus
HITS_HELP = """List, expire or delete a campaign's HITs on its crowd platform (no boto3 by hand).

list: every HIT the campaign posted, with its state here and on the platform. expire: stop workers from taking open HITs (all, or --hit ID); the next poll processes what was answered and re-posts the rest under the current settings (a re-post that is not counted against crowd.max_reposts), so expire before a change and poll after it. delete: delete the HITs whose work is settled (what poll does after each HIT).

Examples:

  labelprop hits camp list

  labelprop hits camp expire --hit 3Z9XEXAMPLEHITID

  labelprop hits camp delete --json
"""

BONUS_HELP = """Pay a worker a bonus for an assignment of the campaign.

The bonus is recorded first (with its fee, checked against crowd.budget_usd), then the next `labelprop poll` or `run` pays it once, with a token, so a retry never pays twice.

Example:

  labelprop bonus camp A1B2C3WORKER 3X7ASSIGNMENT 0.50 --reason "Careful work"
"""


def hits_cmd(
    campaign_dir: Path = typer.Argument(..., metavar="DIR", help="Campaign directory."),
    action: str = typer.Argument("list", metavar="ACTION", help="list, expire or delete."),
    hit: Optional[str] = typer.Option(None, "--hit", help="Only this HIT (expire, delete)."),
    endpoint_url: Optional[str] = typer.Option(None, "--endpoint-url", help="MTurk API URL (default: "
                                               "crowd.endpoint_url)."),
    sandbox: Optional[bool] = typer.Option(None, "--sandbox/--production", help="MTurk: sandbox or production."),
    profile: Optional[str] = typer.Option(None, "--profile", help="AWS profile (default: the standard chain)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    from orchestrator.crowd.backends import BackendOptions
    from orchestrator.crowd.hits import delete_hits, expire_hits, list_hits

    if action not in ("list", "expire", "delete"):
        raise LabelpropError(f"hits: ACTION must be list, expire or delete, got {action!r}")
    opts = BackendOptions(endpoint_url=endpoint_url, sandbox=sandbox, profile=profile)
    if action == "list":
        rows = list_hits(campaign_dir, db=db, options=opts)
        if as_json:
            typer.echo(json.dumps(rows, indent=2, default=str))
            return
        if not rows:
            typer.echo(f"{campaign_dir}: no HITs posted yet")
            return
        from rich.console import Console
        from rich.table import Table

        t = Table(title=f"HITs of {campaign_dir}")
        for col in ("intent", "HIT", "here", "platform", "questions", "gold", "submitted"):
            t.add_column(col, justify="left" if col in ("HIT", "here", "platform") else "right")
        for r in rows:
            t.add_row(str(r["intent"]), r["hit_id"] or "-", r["status"], r["platform_status"] or "-",
                      str(r["questions"]), str(r["gold"]), str(r["submitted"]))
        Console().print(t)
        return
    out = (expire_hits if action == "expire" else delete_hits)(campaign_dir, hit=hit, db=db, options=opts)
    if as_json:
        typer.echo(json.dumps(out, indent=2, default=str))
        return
    verb = "expired" if action == "expire" else "deleted"
    typer.echo(f"{campaign_dir}: {out['done']} HITs {verb}" + (f", {len(out['failed'])} not: " if out["failed"] else "")
               + "; ".join(f"{h}: {e}" for h, e in out["failed"][:5]))
    if action == "expire" and out["done"]:
        typer.echo(f"  the next `labelprop poll {campaign_dir}` processes their answers and re-posts the rest")


def bonus_cmd(
    campaign_dir: Path = typer.Argument(..., metavar="DIR", help="Campaign directory."),
    worker: str = typer.Argument(..., metavar="WORKER", help="The worker's id."),
    assignment: str = typer.Argument(..., metavar="ASSIGNMENT", help="One of the worker's assignments."),
    usd: float = typer.Argument(..., metavar="USD", help="The bonus in dollars, e.g. 0.50."),
    reason: str = typer.Option("Thank you for your careful work.", "--reason", help="What the worker is told."),
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    from orchestrator.campaign.config import load_config
    from orchestrator.crowd.backends import backend_fees
    from orchestrator.crowd.poll import record_bonus
    from orchestrator.campaign.store import open_store

    cfg = load_config(campaign_dir)
    engine = open_store(campaign_dir, db)
    try:
        out = record_bonus(engine, cfg, backend_fees(cfg.crowd.backend), worker_id=worker,
                           assignment_id=assignment, bonus_usd=usd, reason=reason)
    finally:
        engine.dispose()
    typer.echo(f"{campaign_dir}: bonus {out['bonus']} of ${out['bonus_usd']:.2f} (${out['cost_usd']:.2f} with the "
               f"fee) recorded for {worker}; the next `labelprop poll {campaign_dir}` pays it")

