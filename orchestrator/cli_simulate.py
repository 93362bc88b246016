"""`labelprop simulate`: run strategies against simulated annotators, print JSON, plot curves."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from orchestrator.atomic import atomic_write_json, json_safe
from orchestrator.demo_detect import DEMO_DETECT_ITERS
from orchestrator.errors import LabelpropError
from orchestrator.search import STRATEGIES as _STRATEGIES
from orchestrator.search import SearchParams as _SP

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
    from orchestrator.search import STRATEGIES, SearchParams

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


def run_simulation(triplets_path: Path, strategies: list[str], *, ns: int = 15, ka: float = 0.85,
                   kiou: float = 0.75, kpr: float = 0.0, kpa: float = 0.7, chunk: int = 0,
                   budget_questions: Optional[int] = None, oracle: bool = False, seed: int = 0,
                   error_rate: float = 0.0, seconds_per_question: float = 1.5,
                   reward_usd: float = 0.15, questions_per_hit: int = 50,
                   report_at: Optional[List[int]] = None, out_dir: Optional[Path] = None,
                   score_weight: float = 0.25, exact_limit: int = 40_000, plots: bool = True,
                   progress=None, leaf_rule: Optional[str] = None, acceptance: Optional[str] = None,
                   risk_masks: Optional[float] = None, calibration: Optional[Path] = None,
                   forest=None) -> dict:
    """Everything `labelprop simulate` does, as a function returning the JSON object."""
    from clustering.build import ClusterParams, build_forest
    from orchestrator.annotators import SimulatedAnnotators
    from orchestrator.cost import CostModel
    from orchestrator.results import summarize
    from orchestrator.search import SearchParams
    from orchestrator.simulate import final, point, run_strategy
    from orchestrator.triplets import load_triplets

    from orchestrator.search import TREE_STRATEGIES

    curve = None
    if calibration is not None:
        from orchestrator.calibration import load_curve
        curve = load_curve(calibration).check_for(ka, kiou, str(calibration))
    d = SearchParams()
    params = SearchParams(ns=ns, ka=ka, kiou=kiou, kpa=kpa, kpr=kpr, chunk=chunk, oracle=oracle, seed=seed,
                          leaf_rule=leaf_rule or d.leaf_rule, acceptance=acceptance or d.acceptance,
                          risk_masks=d.risk_masks if risk_masks is None else risk_masks, curve=curve)
    if budget_questions is not None and budget_questions < 0:
        raise LabelpropError(f"--budget-questions must be >= 0, got {budget_questions}")
    if seconds_per_question <= 0:
        raise LabelpropError(f"--seconds-per-question must be > 0, got {seconds_per_question}")
    if oracle and any(s not in TREE_STRATEGIES for s in strategies):
        raise LabelpropError(f"--oracle applies to the tree searches only ({', '.join(TREE_STRATEGIES)})")
    t = load_triplets(triplets_path)
    say = progress or (lambda msg: None)
    t0 = time.perf_counter()
    if forest is None:
        say(f"clustering {t.n:,} masks in {len(set(t.classes.tolist()))} classes (complete linkage)")
        forest = build_forest(t.features, t.scores, t.classes,
                              ClusterParams(score_weight=score_weight, exact_limit=exact_limit, seed=seed))
    elif forest.n_masks != t.n:
        raise LabelpropError(f"{triplets_path}: {t.n} masks but the given forest has {forest.n_masks}")
    cluster_s = time.perf_counter() - t0
    cost = CostModel(reward_usd=reward_usd, questions_per_hit=questions_per_hit)
    results = {}
    for name in strategies:
        say(f"running {name}")
        ann = SimulatedAnnotators(t.ious, kiou, error_rate=error_rate,
                                  seconds_per_question=seconds_per_question, seed=seed)
        results[name] = run_strategy(name, t, forest, params, ann, budget_questions)
    runs = []
    for name, res in results.items():
        r = final(res)
        summ = summarize(r, t.ious, kiou, cost.cost(r.questions))
        summ["strategy"] = name + ("+oracle" if oracle else "")
        if name == "universal-threshold":
            summ["k"] = r.extra.get("k")
        runs.append(summ)
    # the comparison table (paper Fig. 6b): every strategy at the same question budgets
    if report_at is None:
        first_tree = next((runs[i] for i, s in enumerate(strategies) if s in TREE_STRATEGIES), runs[0])
        report_at = [max(1, first_tree["questions"] // 4)] if len(strategies) > 1 else []
    compare = []
    for b in report_at:
        row = {"budget_questions": int(b)}
        for name, res in results.items():
            p = point(res, int(b))
            row[name] = {"accepted_masks": int(p["accepted_masks"]), "questions": int(p["questions"]),
                         "mean_iou_accepted": p["mean_iou_accepted"],
                         "precision_accepted": p["precision_accepted"]}
        compare.append(row)
    out = dict(runs[0])
    out.update({"runs": runs, "compare": compare, "clustering_seconds": round(cluster_s, 3),
                "params": {"ns": ns, "ka": ka, "kiou": kiou, "kpa": kpa, "kpr": kpr, "chunk": chunk,
                           "oracle": oracle, "seed": seed, "error_rate": error_rate,
                           "leaf_rule": params.leaf_rule, "acceptance": params.acceptance,
                           "risk_masks": params.risk_masks,
                           "calibration": None if calibration is None else str(calibration),
                           "seconds_per_question": seconds_per_question, "reward_usd": reward_usd,
                           "questions_per_hit": questions_per_hit, "budget_questions": budget_questions},
                "triplets": str(triplets_path)})
    if plots and out_dir is not None:
        from orchestrator.plots import curve, plot_fig6, plot_fig8, write_curves_csv

        curves = {name: curve(res) for name, res in results.items()}
        out_dir = Path(out_dir)
        title = f"{t.n:,} masks, N_s={ns}, K_a={ka}, K_iou={kiou}, K_pa={kpa}" + (" (oracle)" if oracle else "")
        out["files"] = {
            "fig6_png": str(plot_fig6(out_dir / "fig6_search.png", curves, "Fig. 6b: " + title)),
            "fig8_png": str(plot_fig8(out_dir / "fig8_cost.png", curves, "Fig. 8: " + title)),
            "curves_csv": str(write_curves_csv(out_dir / "curves.csv", curves)),
        }
    return json_safe(out)


def simulate(
    triplets: Path = typer.Argument(..., help="Triplets .npz (features, scores, ious, classes).", show_default=False),
    strategy: List[str] = typer.Option([_SP.strategy], "--strategy", "-s",
                                       help=f"{', '.join(_STRATEGIES)}, or all; repeat or comma-separate to "
                                            "compare."),
    ns: int = typer.Option(15, "--ns", help="N_s: masks verified per cluster."),
    ka: float = typer.Option(0.85, "--ka", help="K_a: accept a cluster at Q >= K_a, reject at Q <= 1 - K_a."),
    kiou: float = typer.Option(0.75, "--kiou", help="K_iou: a mask is correct when its IoU >= K_iou."),
    kpr: float = typer.Option(0.0, "--kpr", help="K_pr: auto-reject clusters with score S <= K_pr."),
    kpa: float = typer.Option(0.7, "--kpa", help="K_pa: auto-split clusters with S <= K_pa (no questions)."),
    chunk: int = typer.Option(0, "--chunk", help="Sequential sampling: ask K at a time, stop once the decision is "
                                                "determined (0: ask all N_s at once)."),
    budget_questions: Optional[int] = typer.Option(None, "--budget-questions", help="Stop before asking more questions."),
    oracle: bool = typer.Option(False, "--oracle", help="Q is the true cluster quality (paper Sec. 5.1): no sampling."),
    seed: int = typer.Option(0, "--seed", help="Seed for sampling and annotator errors."),
    error_rate: float = typer.Option(0.0, "--error-rate", help="Probability that an annotator answers wrongly."),
    seconds_per_question: float = typer.Option(1.5, "--seconds-per-question", help="For the hours estimate."),
    reward_usd: float = typer.Option(0.15, "--reward", help="Reward per HIT in USD (fees added by MTurk's rules)."),
    questions_per_hit: int = typer.Option(50, "--questions-per-hit", help="Questions packed into one HIT."),
    report_at: Optional[List[int]] = typer.Option(None, "--report-at", help="Question budgets for the comparison "
                                                  "table (default: a quarter of the first tree search's questions)."),
    out: Path = typer.Option(Path("simulate-out"), "--out", help="Directory for fig6_search.png, fig8_cost.png, curves.csv."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the JSON object to this file."),
    no_plots: bool = typer.Option(False, "--no-plots", help="Skip the PNG/CSV curves."),
    score_weight: float = typer.Option(0.25, "--score-weight", help="Weight of the mask score next to the features in the clustering."),
    exact_limit: int = typer.Option(40_000, "--exact-limit", help="Largest class clustered exactly (memory ~ 8n^2/2 bytes)."),
    acceptance: str = typer.Option(_SP.acceptance, "--acceptance", help="fixed: accept at Q >= K_a over N_s "
                                   "answers (the paper). size-aware: also require a sequential test whose error "
                                   "budget shrinks with the cluster's size (asks more before accepting a large "
                                   "cluster)."),
    risk_masks: float = typer.Option(_SP.risk_masks, "--risk-masks", help="size-aware: a cluster of n masks whose "
                                     "quality is at most K_a - 0.1 is accepted with probability <= risk-masks / n."),
    leaf_rule: str = typer.Option(_SP.leaf_rule, "--leaf-rule", help="drop: a one-mask leaf with S <= K_pa is "
                                  "dropped (the paper). ask: it is asked (the authors' code)."),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="P(accept | S) for the value "
                                               "strategies: a file from `labelprop calibrate --json` or a "
                                               "campaign's calibration.json (default: a ramp from K_pa to 1)."),
) -> None:
    from orchestrator.errors import check_unit_interval

    check_unit_interval("--error-rate", error_rate)
    names = _strategies(strategy)
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

#: compared by `labelprop demo`; the first sets the budget (a quarter of its questions)
DEMO_STRATEGIES = ("heuristic", "value", "bfs", "dfs", "naive", "universal-threshold", "lsun")

PAPER = {"masks": 4_268_921, "questions": 245_177, "usd": 980, "hours": 114,
         "speedup_vs_polygons": 830}


def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", help="Where the demo campaign and plots go (recreated)."),
    error_rate: float = typer.Option(0.02, "--error-rate", help="Probability that a simulated answer is wrong."),
    compare: bool = typer.Option(True, "--compare/--no-compare", help="Also compare strategies (plots)."),
    detect: bool = typer.Option(False, "--detect", help="Then a detection stage: train PointRend with "
                                "the mask-IoU head on synthetic images, detect, ingest, cluster, search "
                                "(CPU, a few minutes; needs the detect extra)."),
    detect_iters: int = typer.Option(DEMO_DETECT_ITERS, "--detect-iters",
                                     help="Training iterations of the detection stage."),
) -> None:
    import shutil

    from orchestrator.cli_campaign import cluster_campaign, init_campaign
    from orchestrator.cli_run import run_simulated
    from orchestrator.cost import CostModel
    from orchestrator.export import export_indices
    from orchestrator.ingest import read_triplet_predictions, write_predictions
    from orchestrator.store import open_store
    from orchestrator.synth import DEMO_PATH

    marker = out / ".labelprop-demo"
    if out.exists():
        if not marker.exists():
            raise LabelpropError(f"{out}: exists and was not made by `labelprop demo`; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    marker.write_text("made by labelprop demo; safe to delete\n")
    say = lambda m: typer.secho(f"labelprop demo: {m}", err=True, fg=typer.colors.BRIGHT_BLACK)  # noqa: E731
    camp = out / "campaign"
    t0 = time.perf_counter()
    say(f"campaign in {camp}: init, ingest {DEMO_PATH.name}, cluster")
    init_campaign(camp, name="demo")
    write_predictions(open_store(camp), camp, read_triplet_predictions(DEMO_PATH))
    cluster_campaign(camp)
    say("searching the trees with simulated annotators (yes iff IoU >= 0.75, "
        f"{error_rate:.0%} wrong answers)")
    res = run_simulated(camp, error_rate=error_rate, progress=True)
    export_indices(open_store(camp), camp, camp / "accepted_indices.npy")
    cost = CostModel()
    usd = cost.cost(res["questions"])
    hours = res["questions"] * 1.5 / 3600
    sim = None
    if compare:
        say("comparing strategies on the same data (paper Fig. 6b and Fig. 8)")
        sim = run_simulation(DEMO_PATH, list(DEMO_STRATEGIES), error_rate=error_rate, out_dir=out / "plots",
                             seed=0)
    wall = time.perf_counter() - t0
    mpq = res["accepted_masks"] / max(res["questions"], 1)
    speedup = (res["accepted_masks"] * 80.0) / max(res["questions"] * 1.5, 1e-9)
    lines = [
        "",
        "labelprop demo: a simulated label-propagation campaign",
        f"  masks predicted        {res['masks']:>10,}",
        f"  masks accepted         {res['accepted_masks']:>10,}   "
        f"(mean IoU {res['mean_iou_accepted']:.3f}, {res['precision_accepted']:.1%} with IoU >= 0.75)",
        f"  yes/no questions       {res['questions']:>10,}   ({mpq:.1f} masks per question; "
        f"{res['clusters_annotated']:,} clusters annotated)",
        f"  cost                   {'$' + format(usd, ',.2f'):>10}   "
        f"({cost.hits(res['questions'])} HITs of {cost.questions_per_hit} questions at ${cost.reward_usd:.2f} + MTurk fee)",
        f"  annotation time        {hours:>9.1f}h   (1.5 s per question; drawing polygons at 80 s each: "
        f"{res['accepted_masks'] * 80 / 3600:,.0f} h, {speedup:,.0f}x more)",
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
        from orchestrator.demo_detect import format_detection_stage, run_detection_stage

        r = run_detection_stage(out, iters=detect_iters, error_rate=error_rate, say=say)
        typer.echo(format_detection_stage(r))


def register(app: typer.Typer) -> None:
    app.command("simulate", help=SIMULATE_HELP)(simulate)
    app.command("demo", help=DEMO_HELP)(demo)
