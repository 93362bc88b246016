"""The live display of ``labelprop run`` and ``labelprop demo``: a table on a terminal, one
line per pass otherwise (or nothing).  ``Progress(...).show`` is the ``show`` callback of
:func:`orchestrator.actions.run.run_passes`."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

__all__ = ["Progress", "money", "print_estimate"]


class Progress:
    """The live display: a table on a terminal, one line per pass otherwise (or nothing)."""

    def __init__(self, enabled: bool, simulated: bool):
        self.live = None
        self.enabled = enabled
        self.simulated = simulated

    def show(self, out: dict | None, passes: int, waiting: str | None = None) -> None:
        if self.live is None and self.enabled and sys.stderr.isatty():   # started at the first pass
            from rich.console import Console
            from rich.live import Live

            self.live = Live(console=Console(stderr=True), refresh_per_second=4, transient=self.simulated)
            self.live.start()
        if self.live is not None:
            self.live.update(_progress_table(out, passes, waiting))
        elif self.enabled and not self.simulated:
            typer.echo(waiting or _progress_line(out, passes), err=True)

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def money(out: dict) -> str:
    b = f" of ${out['budget_usd']:.2f}" if out.get("budget_usd") else " (no budget)"
    return f"${out['spent_usd']:.2f}{b}"


def _progress_line(out: dict, passes: int) -> str:
    held = f", {out['answers_held']} answers held (probation)" if out.get("answers_held") else ""
    return (f"pass {passes}: {out['questions']:,} questions, {out['accepted_masks']:,}/{out['masks']:,} masks "
            f"accepted, {money(out)} spent, {out['hits_in_flight']} HITs in flight{held}")


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
    t.add_row("spent", money(out))
    t.add_row("workers (blocked)", f"{len(out['workers'])} ({sum(w['blocked'] for w in out['workers'])})")
    for m in out.get("messages", [])[:3]:
        t.add_row("note", m[:120])
    return t


def print_estimate(campaign: Path, out: dict, json_out: bool = False) -> None:
    """Print :func:`~orchestrator.actions.estimate.estimate_data`'s result (also `run --dry-run`)."""
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
