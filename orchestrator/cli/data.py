"""`labelprop synth` and `labelprop calibrate`: make simulation data, learn K_pr / K_pa."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from clustering.build import ClusterParams as _CP
from orchestrator.atomic import json_safe
from orchestrator.cli.options import option
from orchestrator.search.search import SearchParams as _SP
from orchestrator.errors import LabelpropError, check_unit_interval

SYNTH_HELP = """Write synthetic {features, score, IoU, class} triplets for `simulate` and `calibrate`.

Per class: visual modes (Gaussian blobs) with heavy-tailed sizes, each good, bad or mixed in quality, with sub-modes that clustering can partly separate; scores are a noisy predicted IoU times a class confidence, as from the paper's detector. About half the masks have IoU >= 0.75. Prints summary statistics as JSON. --demo rewrites the bundled demo dataset instead.

Examples:

  labelprop synth data.npz --n 20000

  labelprop synth big.npz --n 200000 --classes 20 --dim 32 --seed 7

  labelprop synth small-modes.npz --masks-per-mode 40 --pred-noise 0.3

  labelprop synth --demo
"""

CALIBRATE_HELP = """Learn the active-selection thresholds K_pr and K_pa from held-out ground truth (paper Sec. 4.3).

Clusters the triplets (complete linkage per class), measures for every tree node with at least --min-size masks its score S and true quality Q, and chooses K_pa = the largest S-threshold t with P(Q >= K_a | S <= t) <= eps, and K_pr = the largest t with P(Q <= 1-K_a | S <= t) >= 1-eps (capped at K_pa). Prints the thresholds and the binned P_h / P_l curve.

Examples:

  labelprop calibrate heldout.npz

  labelprop calibrate heldout.npz --eps 0.02 --plot fig4.png --csv curve.csv

  labelprop calibrate heldout.npz --write camp/   # kpr, kpa + calibration.json

  labelprop calibrate heldout.npz --json > cal.json   # simulate --calibration

From detector output on held-out images with ground truth (each mask's IoU is its best match with a ground-truth object of the same image and class):

  labelprop calibrate --heldout gt.json --results dets/results.json \\
      --features dets/features.npy
"""


def _say(msg: str) -> None:
    typer.secho(f"labelprop: {msg}", err=True, fg=typer.colors.BRIGHT_BLACK)


def synth(
    out: Optional[Path] = typer.Argument(None, help="Output .npz (written atomically).",
                                         show_default=False),
    n: int = typer.Option(20_000, "--n", help="Number of triplets (masks)."),
    classes: int = typer.Option(5, "--classes", help="Number of classes (Zipf-distributed sizes)."),
    dim: int = typer.Option(16, "--dim", help="Feature dimension d."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same file)."),
    kiou: float = option(_SP, "kiou", help="IoU threshold used for the reported positive fraction."),
    demo: bool = typer.Option(False, "--demo", help="Regenerate the bundled demo dataset "
                              "(n=20000, 5 classes, d=16, seed 2021) at OUT or its package path."),
    masks_per_mode: float = typer.Option(150.0, "--masks-per-mode", help="Average masks per visual mode "
                                         "(cluster sizes)."),
    pred_noise: float = typer.Option(0.20, "--pred-noise", help="Std of the detector's IoU prediction error "
                                     "(how noisy scores are)."),
    p_good: float = typer.Option(0.40, "--p-good", help="Fraction of good modes."),
    p_bad: float = typer.Option(0.30, "--p-bad", help="Fraction of bad modes (the rest are mixed)."),
) -> None:
    from orchestrator.search.synth import (DEMO_ARGS, DEMO_PATH, SynthParams, describe, make_triplets,
                                    write_demo_triplets)
    from orchestrator.search.triplets import save_triplets

    check_unit_interval("--kiou", kiou)
    if not masks_per_mode >= 1:
        raise LabelpropError(f"--masks-per-mode must be >= 1, got {masks_per_mode}")
    if not pred_noise >= 0:
        raise LabelpropError(f"--pred-noise must be >= 0, got {pred_noise}")
    check_unit_interval("--p-good", p_good)
    check_unit_interval("--p-bad", p_bad)
    if p_good + p_bad > 1:
        raise LabelpropError(f"--p-good + --p-bad must not exceed 1, got {p_good + p_bad}")
    sp = SynthParams(masks_per_mode=masks_per_mode, pred_noise=pred_noise, p_good=p_good, p_bad=p_bad)
    if demo:
        path = write_demo_triplets(out if out is not None else DEMO_PATH)
        from orchestrator.search.triplets import load_triplets
        t = load_triplets(path)
        info = {"file": str(path), **DEMO_ARGS, **describe(t, kiou)}
    else:
        if out is None:
            raise LabelpropError("synth: missing OUT.npz (or pass --demo)")
        if out.suffix != ".npz":
            raise LabelpropError(f"{out}: output must end in .npz")
        if out.is_dir():
            raise LabelpropError(f"{out}: is a directory")
        if not out.parent.is_dir() and str(out.parent):
            raise LabelpropError(f"{out}: directory {out.parent} does not exist")
        t = make_triplets(n, classes=classes, dim=dim, seed=seed, params=sp)
        save_triplets(out, t)
        info = {"file": str(out), "seed": seed, "masks_per_mode": masks_per_mode, "pred_noise": pred_noise,
                "p_good": p_good, "p_bad": p_bad, **describe(t, kiou)}
    sys.stdout.write(json.dumps(json_safe(info), indent=2) + "\n")


def _table(cal) -> str:
    lines = [f"K_pr = {cal.kpr:.4f}   K_pa = {cal.kpa:.4f}   "
             f"(K_a={cal.ka}, K_iou={cal.kiou}, eps={cal.eps}, nodes with >= {cal.min_size} "
             f"masks: {cal.nodes_used})",
             "",
             "   S range      nodes   P_h=P(Q>=K_a|S)  P_l=P(Q<=1-K_a|S)"]
    for b in cal.bins:
        if not b["nodes"]:
            continue
        lines.append(f"  {b['s_lo']:.2f}-{b['s_hi']:.2f}   {b['nodes']:7d}   "
                     f"{b['p_high']:15.3f}  {b['p_low']:17.3f}")
    return "\n".join(lines)


def calibrate(
    triplets: Optional[Path] = typer.Argument(None, help="Held-out triplets .npz with ground-truth "
                                              "ious (or use --heldout).", show_default=False),
    heldout: Optional[Path] = typer.Option(None, "--heldout", help="Ground-truth COCO instances "
                                           "of held-out images (with --results and --features)."),
    results: Optional[Path] = typer.Option(None, "--results", help="Detector COCO results on "
                                           "the --heldout images."),
    features: Optional[Path] = typer.Option(None, "--features", help="features.npy of --results."),
    ka: float = option(_SP, "ka", help="K_a: high quality at Q >= K_a, low at Q <= 1-K_a."),
    kiou: float = option(_SP, "kiou"),
    min_size: int = typer.Option(_SP.ns, "--min-size", help="Only nodes with at least this many masks "
                                 "(default N_s: smaller nodes are asked in full, not estimated)."),
    eps: float = typer.Option(0.01, "--eps", help="Tolerance of '~0' and '~1'."),
    bins: int = typer.Option(20, "--bins", help="Score bins of the displayed P_h / P_l curve."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write paper Fig. 4 (3 panels) as PNG."),
    csv_out: Optional[Path] = typer.Option(None, "--csv", help="Write the binned curve as CSV."),
    write: Optional[Path] = typer.Option(None, "--write", help="Campaign directory: sets \\[search] kpr "
                                         "and kpa in its campaign.toml and stores the P_h / P_l curve "
                                         "(calibration.json, read by the value strategies)."),
    json_flag: bool = typer.Option(False, "--json", help="Print JSON instead of the table."),
    score_weight: float = option(_CP, "score_weight"),
    exact_limit: int = option(_CP, "exact_limit"),
    seed: int = typer.Option(0, "--seed", help="Seed of two-level clustering and plot subsampling."),
) -> None:
    from orchestrator.actions.calibrate import calibrate_triplets
    from orchestrator.search.triplets import load_triplets

    check_unit_interval("--ka", ka)
    check_unit_interval("--kiou", kiou)
    check_unit_interval("--eps", eps)
    if min_size < 1:
        raise LabelpropError(f"--min-size must be >= 1, got {min_size}")
    if bins < 1:
        raise LabelpropError(f"--bins must be >= 1, got {bins}")
    for p in (plot, csv_out):
        if p is not None and str(p.parent) and not p.parent.is_dir():
            raise LabelpropError(f"{p}: directory {p.parent} does not exist")
    if heldout is not None or results is not None or features is not None:
        from orchestrator.search.triplets import triplets_from_coco

        if triplets is not None:
            raise LabelpropError("calibrate: give TRIPLETS.npz or --heldout/--results/--features, "
                                 "not both")
        if heldout is None or results is None or features is None:
            raise LabelpropError("calibrate: --heldout, --results and --features go together")
        t = triplets_from_coco(heldout, results, features)
        triplets = results
    elif triplets is None:
        raise LabelpropError("calibrate: missing TRIPLETS.npz (or --heldout GT.json --results "
                             "R.json --features F.npy)")
    else:
        t = load_triplets(triplets, require_ious=True)
    cal, files = calibrate_triplets(
        t, ka=ka, kiou=kiou, min_size=min_size, eps=eps, bins=bins, seed=seed, plot=plot,
        csv_out=csv_out, write=write, say=_say,
        cluster=_CP(score_weight=score_weight, exact_limit=exact_limit, seed=seed))
    out = {"triplets": str(triplets), **cal.to_dict(), "files": files}
    if json_flag:
        sys.stdout.write(json.dumps(json_safe(out), indent=2) + "\n")
    else:
        sys.stdout.write(_table(cal) + "\n")
        for k, v in out["files"].items():
            sys.stdout.write(f"wrote {v}\n")


def register(app: typer.Typer) -> None:
    app.command("synth", help=SYNTH_HELP)(synth)
    app.command("calibrate", help=CALIBRATE_HELP)(calibrate)
