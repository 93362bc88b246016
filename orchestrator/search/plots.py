"""The paper's curves (Fig. 6 and Fig. 8) as PNG plots and one long-format CSV.

Fig. 6: number of high-quality (accepted) clusters, annotation quantity (accepted
masks) and annotation quality (mean IoU of accepted masks) against the number of
annotated clusters, log-log.  Fig. 8: quantity and quality against annotation cost in
hours.  One line per strategy; the universal threshold is a sweep, so its line joins
the end points of its runs (one per number of flat clusters k).
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from orchestrator.atomic import atomic_open
from orchestrator.search.results import RunResult

__all__ = ["curve", "write_curves_csv", "plot_fig6", "plot_fig8"]

CSV_COLUMNS = ("strategy", "questions", "clusters_annotated", "hours", "accepted_masks",
               "mean_iou_accepted", "precision_accepted", "hq_clusters")


def curve(result: RunResult | list[RunResult]) -> dict[str, np.ndarray]:
    """Per-point arrays of one strategy: a run's trace, or a sweep's end points."""
    if isinstance(result, list):  # universal-threshold sweep: one point per k
        rows = [r.at_budget(r.questions) for r in sorted(result, key=lambda r: r.questions)]
        spq = result[0].seconds_per_question if result else 1.5
        t = {k: np.array([row[k] for row in rows]) for k in rows[0]} if rows else {}
    else:
        tr = result.trace
        spq = result.seconds_per_question
        am = tr["accepted_masks"]
        with np.errstate(invalid="ignore", divide="ignore"):
            t = {
                "questions": tr["questions"],
                "clusters_annotated": tr["clusters_annotated"],
                "accepted_masks": am,
                "mean_iou_accepted": np.where(am > 0, tr["accepted_iou_sum"] / np.maximum(am, 1), np.nan),
                "precision_accepted": np.where(am > 0, tr["accepted_correct"] / np.maximum(am, 1), np.nan),
                "hq_clusters": tr["hq_clusters"],
            }
    if t:
        t["hours"] = t["questions"] * spq / 3600.0
    return t


def write_curves_csv(path: str | os.PathLike, curves: dict[str, dict[str, np.ndarray]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(CSV_COLUMNS)
        for name, c in curves.items():
            for i in range(len(c.get("questions", []))):
                w.writerow([name] + [_fmt(c[k][i]) for k in CSV_COLUMNS[1:]])
    return path


def _fmt(v) -> str:
    v = float(v)
    if np.isnan(v):
        return ""
    return str(int(v)) if v.is_integer() else f"{v:.6g}"


def _figure(panels: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.2), constrained_layout=True)
    return plt, fig, axes


def _save(plt, fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_open(path, "wb") as fh:
            fig.savefig(fh, dpi=110, format="png")
    finally:
        plt.close(fig)
    return path


def plot_fig6(path: str | os.PathLike, curves: dict[str, dict[str, np.ndarray]], title: str = "") -> Path:
    """Paper Fig. 6: HQ clusters, quantity, quality vs annotated clusters (log-log)."""
    plt, fig, axes = _figure(3)
    specs = [("hq_clusters", "# high-quality clusters"), ("accepted_masks", "annotation quantity (masks)"),
             ("mean_iou_accepted", "annotation quality (mean IoU)")]
    for ax, (key, label) in zip(axes, specs):
        for name, c in curves.items():
            x, y = c["clusters_annotated"], c[key]
            ok = (x > 0) & np.isfinite(y) & ((y > 0) if key != "mean_iou_accepted" else True)
            ax.plot(x[ok], y[ok], label=name, lw=1.6, marker="o" if name == "universal-threshold" else None, ms=3)
        ax.set_xscale("log")
        if key != "mean_iou_accepted":
            ax.set_yscale("log")
        ax.set_xlabel("# annotated clusters")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title or "Fig. 6: searching the tree")
    return _save(plt, fig, Path(path))


def plot_fig8(path: str | os.PathLike, curves: dict[str, dict[str, np.ndarray]], title: str = "") -> Path:
    """Paper Fig. 8: quantity and quality vs annotation cost in hours."""
    plt, fig, axes = _figure(2)
    for ax, (key, label) in zip(axes, [("accepted_masks", "annotation quantity (masks)"),
                                       ("mean_iou_accepted", "annotation quality (mean IoU)")]):
        for name, c in curves.items():
            x, y = c["hours"], c[key]
            ok = (x > 0) & np.isfinite(y)
            ax.plot(x[ok], y[ok], label=name, lw=1.6, marker="o" if name == "universal-threshold" else None, ms=3)
        ax.set_xscale("log")
        ax.set_xlabel("annotation cost (hours)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title or "Fig. 8: quantity and quality against cost")
    return _save(plt, fig, Path(path))
