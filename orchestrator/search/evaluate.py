"""Quality of detector output against ground truth (no torch): COCO mask AP
(pycocotools), how well the predicted IoU tracks the true IoU (Pearson r, a reliability
table), and precision at K_iou of the top masks ranked by s = confidence x predicted IoU
against ranked by confidence alone (the reason for the mask-IoU head)."""
from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np

from orchestrator.errors import LabelpropError
from orchestrator.search.paper import KIOU
from orchestrator.search.triplets import match_ious

__all__ = ["evaluate_detections", "pearson", "precision_at", "reliability",
           "plot_reliability"]


def pearson(a, b) -> float | None:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def precision_at(rank_by, ious, kiou: float, k: int) -> float | None:
    """Fraction with IoU >= kiou among the k highest ``rank_by`` (stable order)."""
    if k <= 0 or len(ious) == 0:
        return None
    order = np.argsort(-np.asarray(rank_by, np.float64), kind="stable")[:k]
    return float(np.mean(np.asarray(ious)[order] >= kiou))


def reliability(pred, true, bins: int = 10) -> list[dict]:
    """Predicted-IoU bins with the mean true IoU of their masks."""
    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(pred, edges[1:-1]), 0, bins - 1)
    out = []
    for b in range(bins):
        m = idx == b
        out.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": int(m.sum()),
                    "mean_pred": float(pred[m].mean()) if m.any() else None,
                    "mean_true": float(true[m].mean()) if m.any() else None})
    return out


def _mask_ap(gt: dict, results: list) -> dict:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO()
        cg.dataset = {k: gt[k] for k in ("images", "annotations", "categories") if k in gt}
        cg.dataset.setdefault("categories", [])
        cg.createIndex()
        dt = cg.loadRes([dict(r) for r in results]) if results else None
        if dt is None:
            return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
        ev = COCOeval(cg, dt, "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    s = ev.stats
    return {"AP": float(max(s[0], 0.0)), "AP50": float(max(s[1], 0.0)), "AP75": float(max(s[2], 0.0))}


def evaluate_detections(gt_json: str | os.PathLike, results_json: str | os.PathLike,
                        kiou: float = KIOU, top_fractions=(0.1, 0.25, 0.5)) -> dict:
    gp, rp = Path(gt_json), Path(results_json)
    for p in (gp, rp):
        if not p.is_file():
            raise LabelpropError(f"{p}: no such file")
    try:
        gt = json.loads(gp.read_bytes())
        res = json.loads(rp.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LabelpropError(f"{exc.__class__.__name__}: {str(exc).splitlines()[0]}") from None
    if not isinstance(res, list):
        raise LabelpropError(f"{rp}: expected a list of COCO results")
    ious = match_ious(gt, res, str(gp), str(rp))
    scores = np.asarray([r.get("score", 0.0) for r in res], np.float64)
    out = {"gt": str(gp), "results": str(rp), "detections": len(res),
           "gt_objects": sum(1 for a in gt.get("annotations", []) if not a.get("iscrowd", 0)),
           "kiou": kiou, "mask": _mask_ap(gt, res),
           "mean_true_iou": float(ious.mean()) if len(res) else None,
           "pearson_r_score_vs_iou": pearson(scores, ious)}
    have_pred = bool(res) and all("pred_iou" in r for r in res)
    have_cls = bool(res) and all("class_score" in r for r in res)
    if have_pred:
        pred = np.asarray([r["pred_iou"] for r in res], np.float64)
        out["pearson_r_pred_iou"] = pearson(pred, ious)
        out["reliability"] = reliability(pred, ious)
    top = []
    for f in top_fractions:
        k = max(1, int(round(f * len(res)))) if res else 0
        row = {"top_fraction": f, "k": k, "precision_by_score": precision_at(scores, ious, kiou, k)}
        if have_cls:
            cls = np.asarray([r["class_score"] for r in res], np.float64)
            row["precision_by_confidence"] = precision_at(cls, ious, kiou, k)
        top.append(row)
    out["precision_at_kiou"] = top
    return out


def plot_reliability(path: str | os.PathLike, ev: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from orchestrator.atomic import atomic_open

    rows = [r for r in ev.get("reliability", []) if r["n"]]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="0.7", lw=1, label="ideal")
    if rows:
        ax.plot([r["mean_pred"] for r in rows], [r["mean_true"] for r in rows], "o-",
                label=f"r = {ev.get('pearson_r_pred_iou') or float('nan'):.2f}")
    ax.set_xlabel("predicted IoU")
    ax.set_ylabel("true IoU (best match)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title("mask-IoU head reliability")
    ax.legend(loc="upper left")
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)
    return Path(path)
