"""Learn K_pr / K_pa from held-out ground truth (``labelprop calibrate``): cluster the
triplets, measure every node's score S and true quality Q, choose the thresholds, and write
the files asked for (Fig. 4 plot, binned curve, a campaign's calibration)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

__all__ = ["calibrate_triplets"]


def calibrate_triplets(t, *, ka: float, kiou: float, min_size: int, eps: float, bins: int,
                       cluster, seed: int = 0, plot: Optional[Path] = None,
                       csv_out: Optional[Path] = None, write: Optional[Path] = None,
                       say: Callable[[str], None] = lambda _m: None):
    """``t``: triplets with ground-truth ious; ``cluster``: the ClusterParams of the trees.
    Returns the calibration and ``{kind: path}`` of every file written."""
    from clustering.build import build_forest
    from orchestrator.search.calibration import (calibrate_nodes, node_table, plot_calibration,
                                                 write_calibration, write_csv)

    if t.n > 5000:
        say(f"clustering {t.n:,} masks in {len(set(t.classes.tolist()))} classes (complete linkage)")
    forest = build_forest(t.features, t.scores, t.classes, cluster)
    S, Q, sizes = node_table(forest, t.ious, kiou)
    cal = calibrate_nodes(S, Q, sizes, ka=ka, kiou=kiou, min_size=min_size, eps=eps, bins=bins)
    files = {}
    if plot is not None:
        files["plot_png"] = str(plot_calibration(plot, cal, t.scores, t.ious, S, Q, sizes, seed=seed))
    if csv_out is not None:
        files["curve_csv"] = str(write_csv(csv_out, cal))
    if write is not None:
        js, toml = write_calibration(write, cal)
        files["calibration_json"] = str(js)
        files["campaign_toml"] = str(toml)
    return cal, files
