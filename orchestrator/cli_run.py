"""`labelprop run`: poll passes until the campaign is finished, the budget spent, or it stalls.

One loop for every backend: each step is :func:`orchestrator.poll.poll_once`, exactly what
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
import time
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from orchestrator.errors import LabelpropError

RUN_HELP = """Run a campaign to the end: poll passes until it is finished or cannot go on.

Each pass is what `labelprop poll` does: post HITs, fetch answers, check quality, pay, decide clusters. With the simulated backend the passes run back to back; with MTurk or the crowd server they run every --interval seconds, with a live display. An unreachable platform is waited for (up to crowd.platform_wait_seconds). Safe to stop (Ctrl-C) or kill at any moment and rerun: nothing is lost or paid twice.

Examples:

  labelprop run camp                      # the crowd in campaign.toml

  labelprop run camp --error-rate 0.02    # simulated, 2% wrong answers

  labelprop run camp --dry-run            # expected questions, cost, hours

  labelprop run camp --interval 10        # the crowd server, or MTurk
"""


def mask_ious(engine, n_masks: int, where: str) -> np.ndarray:
    """Ground-truth IoU of every mask (from the Mask table); error if any is unknown."""
    from sqlalchemy import select

    from orchestrator.store import Mask, read_session

    with read_session(engine) as s:
        rows = s.execute(select(Mask.id, Mask.iou)).all()
    ious = np.full(n_masks, np.nan)
    for i, v in rows:
        if v is not None and i < n_masks:
            ious[i] = v
    if np.isnan(ious).any():
        raise LabelpropError(f"{where}: the simulated crowd needs ground-truth IoUs, but "
                             f"{int(np.isnan(ious).sum())} masks have none (ingest triplets with `ious`)")
    return ious


class _Progress:
    """The live display: a table on a terminal, one line per pass otherwise (or nothing)."""

    def __init__(self, enabled: bool, simulated: bool):
        self.live = None
        self.enabled = enabled
        self.simulated = simulated
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.live import Live

            self.live = Live(console=Console(stderr=True), refresh_per_second=4, transient=simulated)
            self.live.start()

    def show(self, out: dict | None, passes: int, waiting: str | None = None) -> None:
        if self.live is not None:
            self.live.update(_progress_table(out, passes, waiting))
        elif self.enabled and not self.simulated:
            typer.echo(waiting or _progress_line(out, passes), err=True)

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()


def run_passes(campaign_dir: Path, *, db=None, endpoint_url=None, sandbox=None, profile=None, client=None,
               error_rate: float | None = None, overrides: dict | None = None, interval: float | None = None,
               max_passes: Optional[int] = None, platform_wait: float | None = None, progress: bool = True,
               sleep=time.sleep) -> dict:
    """Repeat poll passes until finished, stopped (budget, stall), or ``max_passes``."""
    from orchestrator.config import load_config
    from orchestrator.crowd.backends import BackendOptions
    from orchestrator.crowd.backends.base import PlatformUnavailable
    from orchestrator.poll import poll_once

    cfg = load_config(campaign_dir)
    simulated = cfg.crowd.backend == "simulated"
    if interval is None:
        interval = 0.0 if simulated else 10.0
    wait_limit = cfg.crowd.platform_wait_seconds if platform_wait is None else platform_wait
    opts = BackendOptions(endpoint_url=endpoint_url, sandbox=sandbox, profile=profile, client=client,
                          error_rate=error_rate, extra={"crowd": overrides or {}})
    passes, steps, out, same = 0, 0, {}, 0
    last = None
    waited, backoff, waits = 0.0, 1.0, 0
    bar = _Progress(progress, simulated)
    try:
        while max_passes is None or passes < max_passes:
            try:
                out = poll_once(campaign_dir, db=db, options=opts)
            except PlatformUnavailable as exc:
                waits += 1
                if waited >= wait_limit:
                    raise LabelpropError(f"{exc} -- gave up after waiting {waited:.0f} s "
                                         f"(crowd.platform_wait_seconds = {wait_limit}); rerun `labelprop run "
                                         f"{campaign_dir}` once the platform is back (nothing is lost)") from None
                pause = min(backoff, max(0.0, wait_limit - waited), 60.0)
                bar.show(out or None, passes, f"waiting for the platform (try {waits}, next in {pause:.0f} s, "
                                              f"{waited:.0f} of {wait_limit} s waited): {exc}")
                sleep(pause)
                waited += pause
                backoff = min(backoff * 2, 60.0)
                continue
            waited, backoff = 0.0, 1.0
            passes += 1
            if out["locked"]:
                if max_passes is not None and passes >= max_passes:
                    break
                sleep(max(interval, 1.0))
                continue
            p = out["pass"]
            did = any(p.get(k, 0) for k in ("hits_created", "hits_processed", "assignments_fetched",
                                            "hits_reposted", "hits_disposed", "assignments_settled"))
            steps += bool(did)
            bar.show(out, passes)
            if out["stopped"]:
                break
            state = (out["questions"], out["hits_posted"], out["assignments"], out["pending_questions"],
                     out["hits_in_flight"], out.get("answers_held"))
            same = same + 1 if (state == last and not did) else 0
            last = state
            if simulated and same >= 3:
                out["stalled"] = out.get("stalled") or "no progress in three passes"
                break
            if max_passes is not None and passes >= max_passes:
                break
            if interval:
                sleep(interval)
    finally:
        bar.stop()
    out["passes"] = passes
    out["steps"] = steps
    out["platform_waits"] = waits
    return out


def run_simulated(campaign_dir: Path, db: Optional[str] = None, error_rate: float = 0.0,
                  questions_per_step: Optional[int] = None, max_steps: Optional[int] = None,
                  progress: bool = True) -> dict:
    """A campaign with simulated annotators, through the poll path; adds the quality of the
    accepted masks (ground truth is known) to the summary."""
    from orchestrator.campaign import CampaignSearch
    from orchestrator.config import load_config

    if load_config(campaign_dir).crowd.backend != "simulated":
        raise LabelpropError(f"{Path(campaign_dir) / 'campaign.toml'}: [crowd] backend is not 'simulated'")
    overrides = {"questions_per_hit": int(questions_per_step)} if questions_per_step else None
    out = run_passes(Path(campaign_dir), db=db, error_rate=error_rate, overrides=overrides, max_passes=max_steps,
                     progress=progress)
    cs = CampaignSearch(campaign_dir, db)
    ious = mask_ious(cs.engine, cs.forest.n_masks, str(campaign_dir))
    acc = cs.search.accepted_mask()
    out.update({"mean_iou_accepted": float(ious[acc].mean()) if acc.any() else None,
                "precision_accepted": float((ious[acc] >= cs.params.kiou).mean()) if acc.any() else None})
    cs.engine.dispose()
    return out


def _money(out: dict) -> str:
    b = f" of ${out['budget_usd']:.2f}" if out.get("budget_usd") else " (no budget)"
    return f"${out['spent_usd']:.2f}{b}"


def _progress_line(out: dict, passes: int) -> str:
    held = f", {out['answers_held']} answers held (probation)" if out.get("answers_held") else ""
    return (f"pass {passes}: {out['questions']:,} questions, {out['accepted_masks']:,}/{out['masks']:,} masks "
            f"accepted, {_money(out)} spent, {out['hits_in_flight']} HITs in flight{held}")


def _progress_table(out: dict | None, passes: int, waiting: str | None = None):
    from rich.table import Table

    title = f"labelprop run: {out['campaign']} (pass {passes})" if out else "labelprop run"
    t = Table(title=title, show_header=False)
    t.add_column("what", style="bold")
    t.add_column("value", justify="right")
    if waiting:
        t.add_row("state", f"[yellow]{waiting}[/yellow]")
    if not out:
        return t
    t.add_row("questions asked / pending", f"{out['questions']:,} / {out['pending_questions']:,}")
    t.add_row("clusters annotated", f"{out['clusters_annotated']:,}")
    t.add_row("accepted masks", f"{out['accepted_masks']:,} of {out['masks']:,}")
    t.add_row("HITs in flight / posted", f"{out['hits_in_flight']} / {out['hits_posted']}")
    t.add_row("assignments approved / rejected", f"{out['assignments_approved']} / {out['assignments_rejected']}")
    if out.get("answers_held"):
        t.add_row("answers held (workers on probation)",
                  f"{out['answers_held']} ({out['workers_on_probation_with_held_answers']} workers)")
    t.add_row("spent", _money(out))
    t.add_row("workers (blocked)", f"{len(out['workers'])} ({sum(w['blocked'] for w in out['workers'])})")
    for m in out.get("messages", [])[:3]:
        t.add_row("note", m[:120])
    return t


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
    from orchestrator.config import load_config
    from orchestrator.errors import check_unit_interval

    if dry_run:
        from orchestrator.cli_estimate import estimate_cmd

        return estimate_cmd(campaign, db=db, runs=3, json_out=json_out)
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
            out = run_simulated(campaign, db, err, questions_per_step, max_steps, progress=not json_out)
        else:
            out = run_passes(campaign, db=db, endpoint_url=endpoint_url, sandbox=sandbox, profile=profile,
                             interval=interval, max_passes=max_steps, platform_wait=platform_wait,
                             progress=not json_out)
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
