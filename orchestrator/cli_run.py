"""`labelprop run`: walk a campaign's priority queue until it is done or the budget is spent.

Dispatches on ``[crowd] backend``:

* ``simulated``: drives the persisted search with in-process simulated annotators
  (answers from the ground-truth IoU stored with each mask).  Every step is one
  transaction, so `run` can be killed at any moment and rerun: questions already posted
  are answered first, nothing is asked twice, and the result is the same.
* ``mturk`` / ``server``: repeats :func:`orchestrator.poll.poll_once` passes (exactly what
  ``labelprop poll`` does from cron) every ``--interval`` seconds with a live progress
  display, until the campaign is finished or the budget is spent.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from orchestrator.errors import LabelpropError

RUN_HELP = """Run a campaign to the end: until the queue is empty or the budget is spent.

Backend "mturk" or "server" (crowd.backend): repeated `labelprop poll` passes every --interval
seconds (post HITs, fetch answers, quality control, pay, decide clusters) with a live display of
questions, accepted masks, spend against budget and HITs in flight. Safe to stop (Ctrl-C) or
kill at any moment, and to rerun; `labelprop poll` from cron does the same one pass at a time.

Backend "simulated": annotators answer yes iff the mask's stored ground-truth IoU >= K_iou (wrong
with probability --error-rate). Questions are posted --questions-per-step at a time, packing
several clusters, exactly as HITs would be.

Examples:

  labelprop run camp --endpoint-url http://127.0.0.1:8765 --interval 10   # bundled crowd server

  labelprop run camp --sandbox --profile mturk-sandbox                    # MTurk sandbox

  labelprop init camp && labelprop ingest camp --triplets data.npz && labelprop cluster camp
  labelprop run camp --error-rate 0.02                                    # simulated backend
  labelprop export camp --indices accepted.npy
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


def run_simulated(campaign_dir: Path, db: Optional[str] = None, error_rate: float = 0.0,
                  questions_per_step: Optional[int] = None, max_steps: Optional[int] = None,
                  seconds_per_question: float = 1.5, progress: bool = True) -> dict:
    from orchestrator.annotators import SimulatedAnnotators
    from orchestrator.campaign import AnswerIn, CampaignSearch

    cs = CampaignSearch(campaign_dir, db)
    if cs.cfg.crowd.backend != "simulated":
        raise LabelpropError(f"{campaign_dir / 'campaign.toml'}: [crowd] backend is "
                             f"{cs.cfg.crowd.backend!r}; `labelprop run` drives the 'simulated' backend")
    ious = mask_ious(cs.engine, cs.forest.n_masks, str(campaign_dir))
    ann = SimulatedAnnotators(ious, cs.params.kiou, error_rate=error_rate,
                              seconds_per_question=seconds_per_question, seed=cs.params.seed)
    per_step = questions_per_step or cs.cfg.crowd.questions_per_hit
    steps = 0

    def step() -> bool:
        pend = cs.pending()
        if pend:  # posted before a crash (or by another backend): answer them first
            masks = np.array([p["mask_id"] for p in pend], dtype=np.int64)
            labels = ann.answer(masks)
            cs.record([AnswerIn(p["question_id"], int(lb), "sim-0", seconds_per_question, "simulated")
                       for p, lb in zip(pend, labels.tolist())])
            return True
        if cs.done:
            return False
        return bool(cs.ask(target=per_step))

    if progress and sys.stderr.isatty():
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("[bold]searching"), BarColumn(), TextColumn("{task.description}"),
                      TimeElapsedColumn(), transient=True) as bar:
            task = bar.add_task("", total=None)
            while (max_steps is None or steps < max_steps) and step():
                steps += 1
                s = cs.search
                bar.update(task, description=f"{s.questions_asked:,} questions · "
                                             f"{s.clusters_annotated:,} clusters")
    else:
        while (max_steps is None or steps < max_steps) and step():
            steps += 1
    out = cs.summary()
    acc = cs.search.accepted_mask()
    out.update({"steps": steps,
                "mean_iou_accepted": float(ious[acc].mean()) if acc.any() else None,
                "precision_accepted": float((ious[acc] >= cs.params.kiou).mean()) if acc.any() else None})
    return out


def run_crowd(campaign_dir: Path, *, db=None, endpoint_url=None, sandbox=None, profile=None,
              interval: float = 10.0, max_passes: Optional[int] = None, progress: bool = True) -> dict:
    """Repeat poll passes until finished, budget spent, or ``max_passes``."""
    import time

    from orchestrator.poll import poll_once

    passes, out = 0, {}
    live = None
    if progress and sys.stderr.isatty():
        from rich.console import Console
        from rich.live import Live

        live = Live(console=Console(stderr=True), refresh_per_second=4, transient=False)
        live.start()
    try:
        while max_passes is None or passes < max_passes:
            out = poll_once(campaign_dir, db=db, endpoint_url=endpoint_url, sandbox=sandbox, profile=profile)
            passes += 1
            if not out["locked"] and live is not None:
                live.update(_progress_table(out, passes))
            elif not out["locked"] and progress:
                typer.echo(_progress_line(out, passes), err=True)
            if not out["locked"] and out["stopped"]:
                break
            if max_passes is not None and passes >= max_passes:
                break
            time.sleep(interval)
    finally:
        if live is not None:
            live.stop()
    out["passes"] = passes
    return out


def _progress_line(out: dict, passes: int) -> str:
    b = f"/${out['budget_usd']:.2f}" if out.get("budget_usd") else ""
    return (f"pass {passes}: {out['questions']:,} questions, {out['accepted_masks']:,}/{out['masks']:,} masks "
            f"accepted, ${out['spent_usd']:.2f}{b} spent, {out['hits_in_flight']} HITs in flight")


def _progress_table(out: dict, passes: int):
    from rich.table import Table

    t = Table(title=f"labelprop run: {out['campaign']} (pass {passes})", show_header=False)
    t.add_column("what", style="bold")
    t.add_column("value", justify="right")
    t.add_row("questions asked / pending", f"{out['questions']:,} / {out['pending_questions']:,}")
    t.add_row("clusters annotated", f"{out['clusters_annotated']:,}")
    t.add_row("accepted masks", f"{out['accepted_masks']:,} of {out['masks']:,}")
    t.add_row("HITs in flight / posted", f"{out['hits_in_flight']} / {out['hits_posted']}")
    t.add_row("assignments approved / rejected", f"{out['assignments_approved']} / {out['assignments_rejected']}")
    b = f" of ${out['budget_usd']:.2f}" if out.get("budget_usd") else " (no budget)"
    t.add_row("spent", f"${out['spent_usd']:.2f}{b}")
    t.add_row("workers (blocked)", f"{len(out['workers'])} ({sum(w['blocked'] for w in out['workers'])})")
    return t


def run(
    campaign: Path = typer.Argument(..., metavar="DIR", help="Campaign directory (from `labelprop init`)."),
    db: Optional[str] = typer.Option(None, "--db", help="SQLAlchemy URL overriding the campaign's store."),
    error_rate: float = typer.Option(0.0, "--error-rate", help="simulated: probability that an answer is wrong."),
    questions_per_step: Optional[int] = typer.Option(None, "--questions-per-step",
                                                     help="simulated: questions posted per step (default: crowd.questions_per_hit)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="simulated: stop after this many steps; "
                                            "mturk/server: after this many poll passes (resume later)."),
    endpoint_url: Optional[str] = typer.Option(None, "--endpoint-url", help="mturk/server: Requester API URL."),
    sandbox: Optional[bool] = typer.Option(None, "--sandbox/--production", help="mturk: sandbox or production."),
    profile: Optional[str] = typer.Option(None, "--profile", help="mturk/server: AWS profile (default: standard chain)."),
    interval: float = typer.Option(10.0, "--interval", help="mturk/server: seconds between poll passes."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    from orchestrator.config import load_config
    from orchestrator.errors import check_unit_interval

    backend = load_config(campaign).crowd.backend
    if backend != "simulated":
        if interval < 0:
            raise LabelpropError(f"--interval must be >= 0, got {interval}")
        out = run_crowd(campaign, db=db, endpoint_url=endpoint_url, sandbox=sandbox, profile=profile,
                        interval=interval, max_passes=max_steps, progress=not json_out)
        if json_out:
            sys.stdout.write(json.dumps(out, indent=2, default=str) + "\n")
        elif out.get("locked"):
            typer.echo(f"labelprop: run: {out['message']}", err=True)
        else:
            state = ("finished" if out["finished"] else "budget spent" if out["stopped"]
                     else "paused (rerun to continue)")
            typer.echo(f"{campaign}: {state}: {out['accepted_masks']:,} of {out['masks']:,} masks accepted "
                       f"with {out['questions']:,} questions in {out['hits_posted']} HITs; "
                       f"${out['spent_usd']:.2f} spent")
        return
    check_unit_interval("--error-rate", error_rate)
    out = run_simulated(campaign, db, error_rate, questions_per_step, max_steps)
    if json_out:
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
    else:
        state = "done" if out["done"] else "paused (rerun to continue)"
        typer.echo(f"{campaign}: {state}: {out['accepted_masks']:,} of {out['masks']:,} masks accepted "
                   f"with {out['questions']:,} questions ({out['clusters_annotated']:,} clusters annotated)")


def register(app: typer.Typer) -> None:
    app.command("run", help=RUN_HELP)(run)
