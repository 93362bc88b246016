"""`labelprop simulate`: run strategies against simulated annotators, print JSON, plot curves."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from orchestrator.actions.simulate import DEMO_ERROR_RATE, DEMO_STRATEGIES, run_demo, run_simulation
from orchestrator.crowd.annotators import SECONDS_PER_QUESTION
from orchestrator.atomic import atomic_write_json
from orchestrator.actions.demo_detect import DEMO_DETECT_ITERS
from orchestrator.errors import LabelpropError
from clustering.build import ClusterParams as _CP
from orchestrator.cli.options import flag_names, option
from orchestrator.crowd.cost import CostModel as _CM
from orchestrator.search.search import STRATEGIES as _STRATEGIES
from orchestrator.search.search import SearchParams as _SP

SIMULATE_HELP = """Run the label-propagation search (and baselines) against simulated annotators.

Annotators answer yes iff a mask's IoU >= K_iou, wrong with probability --error-rate, taking --seconds-per-question each. Prints one JSON object (the first strategy's summary, plus "runs" with every strategy and "compare" with each strategy at --report-at questions) and writes the paper's Fig. 6 and Fig. 8 curves as PNG and CSV into --out.

Examples:

  labelprop synth data.npz --n 20000
  labelprop simulate data.npz
  labelprop simulate data.npz -s all --report-at 2000 --out curves/
  labelprop simulate data.npz -s heuristic -s dfs --chunk 5 --error-rate 0.05
  labelprop simulate data.npz --oracle -s bfs -s dfs -s heuristic
  labelprop simulate data.npz -s value -s heuristic --acceptance size-aware
  labelprop calibrate heldout.npz --json > cal.json
  labelprop simulate data.npz -s value --calibration cal.json
"""


def _strategies(values: List[str]) -> list[str]:
    from orchestrator.search.search import STRATEGIES, SearchParams

    out: list[str] = []
    for v in values or [SearchParams.strategy]:
        for name in v.split(","):
            name = name.strip()
            if name == "all":
                out.extend(s for s in STRATEGIES if s not in out)
            elif name not in STRATEGIES:
                raise LabelpropError(f"--strategy: unknown strategy {name!r}; choose from all, {', '.join(STRATEGIES)}")
            elif name not in out:
                out.append(name)
    return out


def simulate(
    triplets: Path = typer.Argument(..., help="Triplets .npz (features, scores, ious, classes).", show_default=False),
    strategy: List[str] = typer.Option([_SP.strategy], "--strategy", "-s",
                                       help=f"{', '.join(_STRATEGIES)}, or all; repeat or comma-separate to "
                                            "compare."),
    ns: int = option(_SP, "ns"),
    ka: float = option(_SP, "ka"),
    kiou: float = option(_SP, "kiou"),
    kpr: float = option(_SP, "kpr"),
    kpa: float = option(_SP, "kpa"),
    chunk: int = option(_SP, "chunk"),
    budget_questions: Optional[int] = typer.Option(None, "--budget-questions", help="Stop before asking more questions."),
    oracle: bool = option(_SP, "oracle"),
    seed: int = option(_SP, "seed", help="Seed for sampling and annotator errors."),
    error_rate: float = typer.Option(0.0, "--error-rate", help="Probability that an annotator answers wrongly."),
    seconds_per_question: float = typer.Option(SECONDS_PER_QUESTION, "--seconds-per-question",
                                               help="For the hours estimate."),
    reward_usd: float = option(_CM, "reward_usd", "--reward"),
    questions_per_hit: int = option(_CM, "questions_per_hit"),
    report_at: Optional[List[int]] = typer.Option(None, "--report-at", help="Question budgets for the comparison "
                                                  "table (default: a quarter of the first tree search's questions)."),
    out: Path = typer.Option(Path("simulate-out"), "--out", help="Directory for fig6_search.png, fig8_cost.png, curves.csv."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the JSON object to this file."),
    no_plots: bool = typer.Option(False, "--no-plots", help="Skip the PNG/CSV curves."),
    score_weight: float = option(_CP, "score_weight"),
    exact_limit: int = option(_CP, "exact_limit"),
    acceptance: str = option(_SP, "acceptance"),
    risk_masks: float = option(_SP, "risk_masks"),
    leaf_rule: str = option(_SP, "leaf_rule"),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="P(accept | S) for the value "
                                               "strategies: a file from `labelprop calibrate --json` or a "
                                               "campaign's calibration.json (default: a ramp from K_pa to 1)."),
) -> None:
    from orchestrator.errors import check_unit_interval

    check_unit_interval("--error-rate", error_rate)
    names = _strategies(strategy)
    with flag_names({"reward_usd": "--reward"}):
        result = run_simulation(
            triplets, names, ns=ns, ka=ka, kiou=kiou, kpr=kpr, kpa=kpa, chunk=chunk,
            budget_questions=budget_questions, oracle=oracle, seed=seed, error_rate=error_rate,
            seconds_per_question=seconds_per_question, reward_usd=reward_usd,
            questions_per_hit=questions_per_hit, report_at=report_at, out_dir=out,
            score_weight=score_weight, exact_limit=exact_limit, plots=not no_plots,
            leaf_rule=leaf_rule, acceptance=acceptance, risk_masks=risk_masks, calibration=calibration,
            progress=lambda m: typer.secho(f"labelprop: {m}", err=True, fg=typer.colors.BRIGHT_BLACK))
    text = json.dumps(result, indent=2)
    if json_out is not None:
        atomic_write_json(json_out, result)
    sys.stdout.write(text + "\n")


DEMO_HELP = """Run a whole simulated campaign on the bundled synthetic data, offline, on CPU.

Creates a campaign in OUT/campaign (init, ingest, cluster, run with simulated annotators, export), compares the search strategies of the paper on the same data (OUT/plots), and prints a short summary next to the paper's own figures. Takes about a minute.

Example:

  labelprop demo --out demo-out
"""

#: drawing one polygon by hand takes about this long (the paper's comparison)
POLYGON_SECONDS = 80.0

PAPER = {"masks": 4_268_921, "questions": 245_177, "usd": 980, "hours": 114,
         "speedup_vs_polygons": 830}


def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", help="Where the demo campaign and plots go (recreated)."),
    error_rate: float = typer.Option(DEMO_ERROR_RATE, "--error-rate", help="Probability that a simulated answer is "
                                     "wrong."),
    compare: bool = typer.Option(True, "--compare/--no-compare", help="Also compare strategies (plots)."),
    detect: bool = typer.Option(False, "--detect", help="Then a detection stage: train PointRend with "
                                "the mask-IoU head on synthetic images, detect, ingest, cluster, search "
                                "(CPU, a few minutes; needs the detect extra)."),
    detect_iters: int = typer.Option(DEMO_DETECT_ITERS, "--detect-iters",
                                     help="Training iterations of the detection stage."),
) -> None:
    from orchestrator.cli.display import Progress

    say = lambda m: typer.secho(f"labelprop demo: {m}", err=True, fg=typer.colors.BRIGHT_BLACK)  # noqa: E731
    with Progress(True, simulated=True) as bar:
        d = run_demo(out, error_rate=error_rate, compare=compare, say=say, show=bar.show)
    camp, res, cost, usd, hours, sim, wall = (d["campaign"], d["run"], d["cost"], d["usd"], d["hours"],
                                              d["compare"], d["seconds"])
    mpq = res["accepted_masks"] / max(res["questions"], 1)
    speedup = (res["accepted_masks"] * POLYGON_SECONDS) / max(res["questions"] * SECONDS_PER_QUESTION, 1e-9)
    lines = [
        "",
        "labelprop demo: a simulated label-propagation campaign",
        f"  masks predicted        {res['masks']:>10,}",
        f"  masks accepted         {res['accepted_masks']:>10,}   "
        f"(mean IoU {res['mean_iou_accepted']:.3f}, {res['precision_accepted']:.1%} with IoU >= {_SP.kiou})",
        f"  yes/no questions       {res['questions']:>10,}   ({mpq:.1f} masks per question; "
        f"{res['clusters_annotated']:,} clusters annotated)",
        f"  cost                   {'$' + format(usd, ',.2f'):>10}   "
        f"({cost.hits(res['questions'])} HITs of {cost.questions_per_hit} questions at ${cost.reward_usd:.2f} + MTurk fee)",
        f"  annotation time        {hours:>9.1f}h   ({SECONDS_PER_QUESTION:g} s per question; drawing polygons at "
        f"{POLYGON_SECONDS:g} s each: {res['accepted_masks'] * POLYGON_SECONDS / 3600:,.0f} h, {speedup:,.0f}x more)",
        "",
        f"  the paper (Places, 100 classes): {PAPER['masks']:,} masks from {PAPER['questions']:,} questions "
        f"({PAPER['masks'] / PAPER['questions']:.1f} per question), ${PAPER['usd']}, {PAPER['hours']} h, "
        f"{PAPER['speedup_vs_polygons']}x cheaper than polygons",
    ]
    if sim is not None:
        lines += ["", f"  strategies at {sim['compare'][0]['budget_questions']:,} questions "
                      f"(a quarter of the heuristic search) and at the end:"]
        ends = {r["strategy"]: r for r in sim["runs"]}
        for name in DEMO_STRATEGIES:
            at = sim["compare"][0][name]
            e = ends[name]
            prec = "   -" if at["precision_accepted"] is None else f"{at['precision_accepted']:.2f}"
            lines.append(f"    {name:<20} {at['accepted_masks']:>7,} masks ({prec})  |  end: "
                         f"{e['accepted_masks']:>7,} masks, {e['questions']:>6,} questions, "
                         f"precision {e['precision_accepted']:.2f}")
        lines += ["", f"  plots: {sim['files']['fig6_png']}", f"         {sim['files']['fig8_png']}",
                  f"  curves: {sim['files']['curves_csv']}"]
    lines += [f"  campaign: {camp} (try: labelprop status {camp})",
              f"  accepted mask indices: {camp / 'accepted_indices.npy'}", f"  took {wall:.0f} s", ""]
    typer.echo("\n".join(lines))
    if detect:
        from orchestrator.actions.demo_detect import run_detection_stage

        r = run_detection_stage(out, iters=detect_iters, error_rate=error_rate, say=say)
        typer.echo(format_detection_stage(r))


def format_detection_stage(r: dict) -> str:
    """The demo's printout for :func:`~orchestrator.actions.demo_detect.run_detection_stage`'s summary."""
    def num(v, f=".2f"):
        return "n/a" if v is None else format(v, f)

    mpq = r["accepted_masks"] / max(r["questions"], 1)
    return "\n".join([
        "labelprop demo --detect: images -> masks -> campaign",
        "  model                  PointRend Mask R-CNN + mask-IoU head on a ResNet-18 FPN",
        "                         (tiny preset), trained from random weights",
        f"  trained on             {r['train_images']:>10,} synthetic images   ({r['iters']} "
        f"iterations, {r['train_seconds']:.0f} s on CPU)",
        f"  masks detected         {r['detections']:>10,}   on {r['pool_images']} unlabeled images "
        f"with {r['gt_objects']} objects ({r['detect_seconds']:.0f} s)",
        f"  mask AP                {num(r['mask_ap'], '.3f'):>10}   (AP50 "
        f"{num(r['mask_ap50'], '.3f')}); true IoU mean {r['mean_true_iou']:.2f}, "
        f"{r['good_fraction']:.0%} >= {r['kiou']:g}",
        f"  predicted IoU          {num(r['pearson_r']):>10}   Pearson r with the true IoU",
        f"  K_pr, K_pa             {r['kpr']:>4.2f}, {r['kpa']:.2f}   (learned on {r['heldout_images']} "
        f"held-out images)",
        f"  masks accepted         {r['accepted_masks']:>10,}   (true IoU mean "
        f"{num(r['mean_iou_accepted'])}, {num(r['precision_accepted'], '.0%')} with IoU >= {r['kiou']:g})",
        f"  yes/no questions       {r['questions']:>10,}   ({mpq:.1f} masks per question, "
        f"simulated annotators)",
        f"  campaign: {r['campaign']} (try: labelprop status {r['campaign']})",
        f"  took {r['seconds']:.0f} s; more --detect-iters give better masks", ""])


def register(app: typer.Typer) -> None:
    app.command("simulate", help=SIMULATE_HELP)(simulate)
    app.command("demo", help=DEMO_HELP)(demo)
