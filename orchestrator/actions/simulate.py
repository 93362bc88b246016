"""Strategy comparisons and the demo: plain functions behind ``labelprop simulate`` and
``labelprop demo`` (:mod:`orchestrator.cli.simulate` parses and prints)."""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable, List, Optional

from clustering.build import ClusterParams as _CP
from orchestrator.crowd.annotators import SECONDS_PER_QUESTION
from orchestrator.atomic import json_safe
from orchestrator.crowd.cost import CostModel as _CM
from orchestrator.errors import LabelpropError
from orchestrator.search.params import ParamError
from orchestrator.search.search import SearchParams as _SP
from orchestrator.search.simulate import DEMO_STRATEGIES

__all__ = ["run_simulation", "run_demo", "DEMO_STRATEGIES", "DEMO_ERROR_RATE"]

#: the demo's simulated crowd: this share of answers is wrong
DEMO_ERROR_RATE = 0.02


def run_simulation(triplets_path: Path, strategies: list[str], *, ns: int = _SP.ns, ka: float = _SP.ka,
                   kiou: float = _SP.kiou, kpr: float = _SP.kpr, kpa: float = _SP.kpa, chunk: int = _SP.chunk,
                   budget_questions: Optional[int] = None, oracle: bool = False, seed: int = 0,
                   error_rate: float = 0.0, seconds_per_question: float = SECONDS_PER_QUESTION,
                   reward_usd: float = _CM.reward_usd, questions_per_hit: int = _CM.questions_per_hit,
                   report_at: Optional[List[int]] = None, out_dir: Optional[Path] = None,
                   score_weight: float = _CP.score_weight, exact_limit: int = _CP.exact_limit,
                   plots: bool = True,
                   progress=None, leaf_rule: Optional[str] = None, acceptance: Optional[str] = None,
                   risk_masks: Optional[float] = None, calibration: Optional[Path] = None,
                   forest=None) -> dict:
    """Everything `labelprop simulate` does, as a function returning the JSON object.

    Core parameters out of range raise :class:`~orchestrator.search.params.ParamError` (neutral
    names; the command renders them as options)."""
    from clustering.build import ClusterParams, build_forest
    from orchestrator.crowd.annotators import SimulatedAnnotators
    from orchestrator.crowd.cost import CostModel
    from orchestrator.search.results import summarize
    from orchestrator.search.search import SearchParams
    from orchestrator.search.simulate import REGISTRY, final, point, run_strategy
    from orchestrator.search.triplets import load_triplets

    from orchestrator.search.search import TREE_STRATEGIES

    curve = None
    if calibration is not None:
        from orchestrator.search.calibration import load_curve
        curve = load_curve(calibration).check_for(ka, kiou, str(calibration))
    d = SearchParams()
    params = SearchParams(ns=ns, ka=ka, kiou=kiou, kpa=kpa, kpr=kpr, chunk=chunk, oracle=oracle, seed=seed,
                          leaf_rule=leaf_rule or d.leaf_rule, acceptance=acceptance or d.acceptance,
                          risk_masks=d.risk_masks if risk_masks is None else risk_masks, curve=curve)
    if budget_questions is not None and budget_questions < 0:
        raise ParamError("budget_questions", f"must be >= 0, got {budget_questions}")
    if seconds_per_question <= 0:
        raise ParamError("seconds_per_question", f"must be > 0, got {seconds_per_question}")
    if oracle and any(s not in TREE_STRATEGIES for s in strategies):
        raise ParamError("oracle", f"applies to the tree searches only ({', '.join(TREE_STRATEGIES)})")
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
        if REGISTRY[name].sweep:
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
        from orchestrator.search.plots import curve, plot_fig6, plot_fig8, write_curves_csv

        curves = {name: curve(res) for name, res in results.items()}
        out_dir = Path(out_dir)
        title = f"{t.n:,} masks, N_s={ns}, K_a={ka}, K_iou={kiou}, K_pa={kpa}" + (" (oracle)" if oracle else "")
        out["files"] = {
            "fig6_png": str(plot_fig6(out_dir / "fig6_search.png", curves, "Fig. 6b: " + title)),
            "fig8_png": str(plot_fig8(out_dir / "fig8_cost.png", curves, "Fig. 8: " + title)),
            "curves_csv": str(write_curves_csv(out_dir / "curves.csv", curves)),
        }
    return json_safe(out)


def run_demo(out: Path, *, error_rate: float = DEMO_ERROR_RATE, compare: bool = True,
             say: Callable[[str], None] = lambda m: None, show=None) -> dict:
    """A whole simulated campaign on the bundled data in ``out/campaign`` (init, ingest,
    cluster, run, export) and, with ``compare``, the strategies of the paper on the same data
    (``out/plots``).  ``out`` is recreated (refused unless a previous demo made it).  Returns
    ``{"campaign", "run", "cost", "usd", "hours", "compare", "seconds"}``."""
    from orchestrator.actions.campaign import cluster_campaign, init_campaign
    from orchestrator.actions.run import run_simulated
    from orchestrator.campaign.export import export_indices
    from orchestrator.campaign.ingest import read_triplet_predictions, write_predictions
    from orchestrator.campaign.store import open_store
    from orchestrator.search.synth import DEMO_PATH

    marker = out / ".labelprop-demo"
    if out.exists():
        if not marker.exists():
            raise LabelpropError(f"{out}: exists and was not made by `labelprop demo`; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    marker.write_text("made by labelprop demo; safe to delete\n")
    camp = out / "campaign"
    t0 = time.perf_counter()
    say(f"campaign in {camp}: init, ingest {DEMO_PATH.name}, cluster")
    init_campaign(camp, name="demo")
    write_predictions(open_store(camp), camp, read_triplet_predictions(DEMO_PATH))
    cluster_campaign(camp)
    say(f"searching the trees with simulated annotators (yes iff IoU >= {_SP.kiou}, "
        f"{error_rate:.0%} wrong answers)")
    res = run_simulated(camp, error_rate=error_rate, show=show)
    export_indices(open_store(camp), camp, camp / "accepted_indices.npy")
    cost = _CM()
    sim = None
    if compare:
        say("comparing strategies on the same data (paper Fig. 6b and Fig. 8)")
        sim = run_simulation(DEMO_PATH, list(DEMO_STRATEGIES), error_rate=error_rate, out_dir=out / "plots",
                             seed=0)
    return {"campaign": camp, "run": res, "cost": cost, "usd": cost.cost(res["questions"]),
            "hours": res["questions"] * SECONDS_PER_QUESTION / 3600, "compare": sim,
            "seconds": time.perf_counter() - t0}
