"""`labelprop evaluate`: detector output against ground truth (no torch needed)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from orchestrator.atomic import json_safe
from orchestrator.cli.options import option
from orchestrator.errors import check_unit_interval
from orchestrator.search.search import SearchParams as _SP

EVALUATE_HELP = """Evaluate detector output (COCO results) against ground-truth COCO instances.

Prints COCO mask AP (pycocotools), the Pearson r between the predicted IoU (`pred_iou` of `labelprop detect`) and the true IoU (each mask's best match with a ground-truth object of its image and class), and precision at K_iou of the top masks ranked by score s = confidence x predicted IoU and by confidence alone. --plot writes the reliability plot (predicted vs true IoU).

Examples:

  labelprop evaluate --gt data/val/instances.json --results dets/results.json

  labelprop evaluate --gt val.json --results dets/results.json \\
      --plot reliability.png --json
"""


def evaluate(
    gt: Path = typer.Option(..., "--gt", help="Ground-truth COCO instances JSON."),
    results: Path = typer.Option(..., "--results", help="COCO results JSON (labelprop detect)."),
    kiou: float = option(_SP, "kiou", help="A mask is correct at IoU >= K_iou."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write the reliability plot (PNG)."),
    json_flag: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    from orchestrator.search.evaluate import evaluate_detections, plot_reliability

    check_unit_interval("--kiou", kiou)
    ev = evaluate_detections(gt, results, kiou=kiou)
    if plot is not None:
        ev["plot"] = str(plot_reliability(plot, ev))
    if json_flag:
        sys.stdout.write(json.dumps(json_safe(ev), indent=2) + "\n")
        return

    def f(v):
        return "n/a" if v is None else f"{v:.3f}"

    lines = [f"{ev['detections']} detections, {ev['gt_objects']} ground-truth objects",
             f"mask AP {f(ev['mask']['AP'])}   AP50 {f(ev['mask']['AP50'])}   AP75 {f(ev['mask']['AP75'])}",
             f"Pearson r(predicted IoU, true IoU) {f(ev.get('pearson_r_pred_iou'))}   "
             f"r(score, true IoU) {f(ev['pearson_r_score_vs_iou'])}",
             f"precision at IoU >= {kiou}:"]
    for row in ev["precision_at_kiou"]:
        lines.append(f"  top {row['top_fraction']:.0%} ({row['k']}): by s {f(row['precision_by_score'])}"
                     + (f", by confidence {f(row.get('precision_by_confidence'))}"
                        if "precision_by_confidence" in row else ""))
    if plot is not None:
        lines.append(f"wrote {plot}")
    typer.echo("\n".join(lines))


def register(app: typer.Typer) -> None:
    app.command("evaluate", help=EVALUATE_HELP)(evaluate)
