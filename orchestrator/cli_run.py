"""`labelprop run`: walk a campaign's priority queue until it is done or the budget is spent.

This module drives the persisted search with the in-process ``simulated`` crowd backend
(answers from the ground-truth IoU stored with each mask).  Every step is one
transaction, so `run` can be killed at any moment and rerun: questions already posted
are answered first, nothing is asked twice, and the result is the same.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from orchestrator.errors import LabelpropError

RUN_HELP = """Run a campaign's search to the end with simulated annotators (crowd backend "simulated").

Annotators answer yes iff the mask's stored ground-truth IoU >= K_iou (wrong with probability
--error-rate). Questions are posted --questions-per-step at a time, packing several clusters,
exactly as HITs would be. Safe to kill and rerun at any moment.

Example:

  labelprop init camp && labelprop ingest camp --triplets data.npz && labelprop cluster camp
  labelprop run camp --error-rate 0.02
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


def run(
    campaign: Path = typer.Argument(..., help="Campaign directory (from `labelprop init`)."),
    db: Optional[str] = typer.Option(None, "--db", help="SQLAlchemy URL overriding the campaign's store."),
    error_rate: float = typer.Option(0.0, "--error-rate", help="Probability that a simulated answer is wrong."),
    questions_per_step: Optional[int] = typer.Option(None, "--questions-per-step",
                                                     help="Questions posted per step (default: crowd.questions_per_hit)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after this many steps (resume later)."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    from orchestrator.errors import check_unit_interval

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
