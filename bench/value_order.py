#!/usr/bin/env python3
"""Issue 9: how fast each tree strategy turns a question budget into accepted masks.

For several generator settings (the bundled data and others with different mode sizes,
score noise and feature dimension) and several seeds, runs every tree strategy to the end
and reads its trace at 1/8, 1/4 and 1/2 of the questions the ``heuristic`` search needs to
finish.  ``value`` and ``value-simple`` run twice: with the fallback curve (a ramp from K_pa
to 1) and with P_h / P_l calibrated on a held-out set drawn from the same setting
(``+cal``).  With ``--acceptance both`` every run is repeated with size-aware acceptance.

Prints one JSON object: per setting, per strategy, per budget fraction, the mean accepted
masks and precision over seeds (and the per-seed values), plus the ratios the issue's
target is stated in (value / heuristic and value / bfs at the quarter budget).

    .venv/bin/python bench/value_order.py                      # 3 settings x 5 seeds (~5 min)
    .venv/bin/python bench/value_order.py --seeds 2 --settings bundled
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import replace

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from clustering.build import ClusterParams, build_forest  # noqa: E402
from orchestrator.crowd.annotators import SimulatedAnnotators  # noqa: E402
from orchestrator.search.calibration import AcceptanceCurve, calibrate_forest  # noqa: E402
from orchestrator.search.search import SearchParams  # noqa: E402
from orchestrator.search.simulate import run_tree_search  # noqa: E402
from orchestrator.search.synth import DEMO_ARGS, SynthParams, make_triplets  # noqa: E402
from orchestrator.search.triplets import load_triplets  # noqa: E402

SETTINGS = {
    # the bundled 20,000 triplets (fixed data; the seed varies the search's samples)
    "bundled": {"n": 20_000, "classes": 5, "dim": 16, "params": SynthParams(), "bundled": True},
    # many small visual modes, noisier scores
    "small-modes-noisy": {"n": 20_000, "classes": 5, "dim": 16,
                          "params": SynthParams(masks_per_mode=40.0, masks_per_sub=12.0, pred_noise=0.30)},
    # few large modes in a 64-d feature space, cleaner scores
    "large-modes-64d": {"n": 20_000, "classes": 5, "dim": 64,
                        "params": SynthParams(masks_per_mode=500.0, masks_per_sub=60.0, pred_noise=0.15)},
}
FRACTIONS = (0.125, 0.25, 0.5)
ORDERS = ("heuristic", "bfs", "dfs", "value-simple", "value")


def data_for(setting: dict, seed: int):
    if setting.get("bundled"):
        from orchestrator.search.synth import DEMO_PATH
        data = load_triplets(DEMO_PATH)
        held = make_triplets(setting["n"], classes=setting["classes"], dim=setting["dim"],
                             seed=DEMO_ARGS["seed"] + 1000 + seed, params=setting["params"])
    else:
        data = make_triplets(setting["n"], classes=setting["classes"], dim=setting["dim"], seed=seed,
                             params=setting["params"])
        held = make_triplets(setting["n"], classes=setting["classes"], dim=setting["dim"],
                             seed=seed + 1000, params=setting["params"])
    return data, held


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--acceptance", choices=("fixed", "size-aware", "both"), default="both")
    ap.add_argument("--error-rate", type=float, default=0.0)
    args = ap.parse_args()
    accs = ("fixed", "size-aware") if args.acceptance == "both" else (args.acceptance,)
    out: dict = {"fractions_of_heuristic_full_run": FRACTIONS, "seeds": args.seeds,
                 "error_rate": args.error_rate, "settings": {}}
    t_start = time.perf_counter()
    for name in args.settings:
        setting = SETTINGS[name]
        per: dict = {}
        for seed in range(args.seeds):
            data, held = data_for(setting, seed)
            cp = ClusterParams(seed=seed)
            forest = build_forest(data.features, data.scores, data.classes, cp)
            hforest = build_forest(held.features, held.scores, held.classes, cp)
            cal = calibrate_forest(hforest, held.ious)
            curve = AcceptanceCurve.from_bins(cal.bins, cal.ka, cal.kiou)
            for acc in accs:
                base = SearchParams(seed=seed, acceptance=acc)
                runs = {}
                for st in ORDERS:
                    runs[st] = run_tree_search(forest, replace(base, strategy=st),
                                               SimulatedAnnotators(data.ious, 0.75, error_rate=args.error_rate,
                                                                   seed=seed), data.ious)
                    if st.startswith("value"):
                        runs[st + "+cal"] = run_tree_search(
                            forest, replace(base, strategy=st, curve=curve),
                            SimulatedAnnotators(data.ious, 0.75, error_rate=args.error_rate, seed=seed), data.ious)
                full = runs["heuristic"].questions
                for st, r in runs.items():
                    key = st if acc == "fixed" else f"{st} (size-aware)"
                    row = per.setdefault(key, {"end": [], **{str(f): [] for f in FRACTIONS}})
                    acc_mask = r.accepted
                    row["end"].append({"accepted_masks": int(acc_mask.sum()), "questions": int(r.questions),
                                       "precision": float((data.ious[acc_mask] >= 0.75).mean())})
                    for f in FRACTIONS:
                        p = r.at_budget(int(full * f))
                        row[str(f)].append({"budget": int(full * f), "accepted_masks": int(p["accepted_masks"]),
                                            "precision": p["precision_accepted"]})
            print(f"{name} seed {seed} done ({time.perf_counter() - t_start:.0f} s)", file=sys.stderr)
        summary = {}
        for st, row in per.items():
            s = {}
            for f in FRACTIONS:
                pts = row[str(f)]
                s[str(f)] = {"accepted_masks": statistics.mean(p["accepted_masks"] for p in pts),
                             "precision": statistics.mean(p["precision"] for p in pts if p["precision"] == p["precision"]),
                             "per_seed": [p["accepted_masks"] for p in pts]}
            s["end"] = {"accepted_masks": statistics.mean(e["accepted_masks"] for e in row["end"]),
                        "questions": statistics.mean(e["questions"] for e in row["end"]),
                        "precision": statistics.mean(e["precision"] for e in row["end"])}
            summary[st] = s
        ratios = {}
        for suffix in ("", " (size-aware)"):
            h, b = summary.get("heuristic" + suffix), summary.get("bfs" + suffix)
            if h is None:
                continue
            for st in summary:
                if st.startswith("value") and st.endswith(suffix) and (suffix or "(size-aware)" not in st):
                    q = summary[st]["0.25"]
                    ratios[st] = {"vs_heuristic": q["accepted_masks"] / h["0.25"]["accepted_masks"],
                                  "vs_bfs": q["accepted_masks"] / b["0.25"]["accepted_masks"],
                                  "precision_minus_heuristic": q["precision"] - h["0.25"]["precision"]}
        out["settings"][name] = {"strategies": summary, "quarter_budget_ratios": ratios}
    out["wall_s"] = round(time.perf_counter() - t_start, 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
