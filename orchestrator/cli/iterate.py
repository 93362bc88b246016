"""``labelprop iterate``: retrain on the accepted masks, detect again, start the next round.

The work is :func:`orchestrator.actions.iterate.iterate_campaign`; this module parses and prints.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from orchestrator.actions.iterate import iterate_campaign
from orchestrator.cli.options import flag_names

__all__ = ["register"]


# ------------------------------------------------------------------------------ command
ITERATE_HELP = """Start the next round: retrain on the accepted masks, detect again, cluster the new masks.

One command for the paper's iterative loop. It freezes the current round (its accepted and rejected masks never change again), exports the accepted masks of every round as COCO, adds them to the initial training set and fine-tunes the current model on both (`labelprop train --init-weights`), detects again on the pool images with the same filters (`labelprop detect`), drops new detections that overlap an accepted mask of the same image (mask IoU >= overlap_iou, 0.5, or at least overlap_inside, 80%, of the new mask inside it: the iterate section of campaign.toml), and ingests and clusters the rest as the next round. Then `labelprop run` searches the new round; `export` covers every round; `status` shows them.

What the current round was detected with (model, pool images, filters, initial training set) is read from the detector output the campaign ingested (detect.json beside it, the model's labelprop_model.json); options override it. The new round's files go to DIR/rounds/round-N/ (model, dets, accepted-*.json).

Safe to kill: rerun the same command and it resumes the step it was in (training and detection resume too), with the inputs the round was started with; no round, mask or answer is added twice.

Examples:

  labelprop iterate runs/c1

  labelprop iterate runs/c1 --iters 300 --threads 2

  labelprop iterate runs/c1 --train-data train.json --images more-images/

  labelprop iterate runs/sim --gt pool.json   # IoUs for a simulated crowd
"""


def iterate_cmd(
    campaign_dir: Path = typer.Argument(..., metavar="DIR", help="Campaign directory."),
    train_data: Optional[List[Path]] = typer.Option(None, "--train-data", help="Initial training "
                                                    "set, COCO instances (repeatable; default: what "
                                                    "the current model was trained on)."),
    train_root: Optional[List[Path]] = typer.Option(None, "--train-root", help="Image root of each "
                                                    "--train-data (one for all, or one per file)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Pool images: a directory or a COCO "
                                          "JSON (default: the images the current round detected on)."),
    image_root: Optional[Path] = typer.Option(None, "--image-root", help="Image root of a COCO "
                                              "--images."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="The current round's model "
                                           "(default: the one that detected its masks)."),
    iters: Optional[int] = typer.Option(None, "--iters", help="Training iterations (default: as "
                                        "the current model)."),
    batch: Optional[int] = typer.Option(None, "--batch", help="Images per training batch "
                                        "(default: as the current model)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Model preset (default: the "
                                         "current model's)."),
    gt: Optional[Path] = typer.Option(None, "--gt", help="Ground truth of the pool (COCO): IoUs of "
                                      "the new masks for a simulated crowd."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    db: Optional[str] = typer.Option(None, "--db", help="SQLAlchemy URL of the store (overrides "
                                     "campaign.toml)."),
) -> None:
    def say(msg: str) -> None:
        if not quiet:
            typer.secho(f"labelprop: {msg}", err=True, fg=typer.colors.BRIGHT_BLACK)

    with flag_names():
        info = iterate_campaign(campaign_dir, db=db, train_data=[str(p) for p in train_data or []],
                                train_roots=[str(p) for p in train_root or []],
                                images=str(images) if images else None,
                                image_root=str(image_root) if image_root else None,
                                weights=str(weights) if weights else None, iters=iters, batch=batch,
                                preset=preset, gt=str(gt) if gt else None, threads=threads,
                                device=device, quiet=quiet, say=say)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    typer.echo(f"round {info['round']} is ready: {info['masks']} masks"
               + (f" ({info['dropped_overlapping']} detections dropped as overlapping accepted "
                  f"masks)" if "dropped_overlapping" in info else "")
               + f"; search it with `labelprop run {campaign_dir}`")


def register(app: typer.Typer) -> None:
    app.command("iterate", help=ITERATE_HELP)(iterate_cmd)
