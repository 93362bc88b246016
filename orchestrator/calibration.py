"""Learning the active-selection thresholds K_pr and K_pa (paper Sec. 4.3, Fig. 4).

On a held-out set with ground truth, every tree node j has a cluster score S_j (mean
mask score) and a true quality Q_j (fraction of its masks with IoU >= K_iou).  The paper
estimates ``P_h(S) = P(Q >= K_a | S)`` and ``P_l(S) = P(Q <= 1 - K_a | S)`` and picks

* ``K_pa`` with ``P(Q >= K_a | S <= K_pa) ~ 0``: clusters at or below it are not worth a
  question (split without asking);
* ``K_pr`` with ``P(Q <= 1 - K_a | S <= K_pr) ~ 1``: clusters at or below it are rejected
  without asking.

"~ 0" and "~ 1" are made precise with a tolerance ``eps``: K_pa is the largest node score
t with ``P(Q >= K_a | S <= t) <= eps`` and K_pr the largest t with
``P(Q <= 1 - K_a | S <= t) >= 1 - eps``, then K_pr is capped at K_pa.  The probabilities
are the empirical fractions over nodes with at least ``min_size`` masks: by default N_s,
because smaller nodes are asked in full (their quality is measured, not estimated) and
the many leaves would otherwise swamp the estimate.  If no t qualifies the threshold is
0 (nothing is skipped or rejected automatically).

Everything here is pure (arrays in, arrays/dataclasses out) except :func:`write_csv`,
:func:`plot_calibration` and :func:`write_thresholds`.
"""
from __future__ import annotations

import csv
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from orchestrator.atomic import atomic_open
from orchestrator.errors import LabelpropError, check_unit_interval

__all__ = ["Calibration", "node_table", "cumulative_threshold", "binned_curves",
           "calibrate_nodes", "calibrate_forest", "write_csv", "plot_calibration",
           "write_thresholds"]


@dataclass
class Calibration:
    """Result of a calibration: thresholds plus the binned P_h / P_l curves."""

    kpr: float
    kpa: float
    ka: float
    kiou: float
    eps: float
    min_size: int
    nodes_used: int
    bins: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def node_table(forest, ious: np.ndarray, kiou: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(S, Q, size) of every node of ``forest``: mean score, true quality, number of masks."""
    ious = np.asarray(ious, dtype=np.float64)
    if ious.shape[0] != forest.n_masks:
        raise LabelpropError(f"ious has {ious.shape[0]} entries but the forest has "
                             f"{forest.n_masks} masks")
    return forest.mean_scores, forest.node_means(ious >= kiou), forest.sizes


def cumulative_threshold(S: np.ndarray, event: np.ndarray, eps: float, *, at_most: bool) -> float:
    """Largest node score t with P(event | S <= t) <= eps (``at_most``) or >= 1 - eps.

    The conditional is the fraction of nodes with S <= t where ``event`` holds; candidate
    thresholds are the distinct node scores (so "S <= t" includes ties).  Returns 0.0
    when no candidate qualifies.
    """
    S = np.asarray(S, dtype=np.float64)
    event = np.asarray(event, dtype=bool)
    if S.shape[0] == 0:
        return 0.0
    o = np.argsort(S, kind="stable")
    s, e = S[o], event[o]
    # evaluate only at the last occurrence of each distinct score (S <= t includes ties)
    last = np.flatnonzero(np.r_[s[1:] != s[:-1], True])
    frac = np.cumsum(e)[last] / (last + 1.0)
    ok = frac <= eps if at_most else frac >= 1.0 - eps
    if not ok.any():
        return 0.0
    return float(s[last[np.flatnonzero(ok)[-1]]])


def binned_curves(S: np.ndarray, Q: np.ndarray, ka: float, bins: int = 20) -> list[dict]:
    """P_h and P_l per score bin (equal width on [0, 1]); empty bins have None."""
    edges = np.linspace(0.0, 1.0, int(bins) + 1)
    b = np.clip(np.searchsorted(edges, S, side="right") - 1, 0, int(bins) - 1)
    n = np.bincount(b, minlength=bins)
    hi = np.bincount(b, weights=(Q >= ka).astype(float), minlength=bins)
    lo = np.bincount(b, weights=(Q <= 1.0 - ka).astype(float), minlength=bins)
    out = []
    for i in range(int(bins)):
        out.append({"s_lo": round(float(edges[i]), 4), "s_hi": round(float(edges[i + 1]), 4),
                    "nodes": int(n[i]),
                    "p_high": float(hi[i] / n[i]) if n[i] else None,
                    "p_low": float(lo[i] / n[i]) if n[i] else None})
    return out


def calibrate_nodes(S: np.ndarray, Q: np.ndarray, sizes: np.ndarray, *, ka: float = 0.85,
                    kiou: float = 0.75, min_size: int = 15, eps: float = 0.01,
                    bins: int = 20) -> Calibration:
    """Thresholds from per-node (S, Q, size) arrays; see the module docstring."""
    ka = check_unit_interval("ka", ka)
    eps = check_unit_interval("eps", eps)
    if int(min_size) < 1:
        raise LabelpropError(f"min-size must be >= 1, got {min_size}")
    S = np.asarray(S, dtype=np.float64)
    Q = np.asarray(Q, dtype=np.float64)
    keep = np.asarray(sizes) >= int(min_size)
    if not keep.any():
        raise LabelpropError(f"no tree node has at least {int(min_size)} masks; "
                             f"lower --min-size or use a larger held-out set")
    S, Q = S[keep], Q[keep]
    kpa = cumulative_threshold(S, Q >= ka, eps, at_most=True)
    kpr = cumulative_threshold(S, Q <= 1.0 - ka, eps, at_most=False)
    kpr = min(kpr, kpa)
    return Calibration(kpr=kpr, kpa=kpa, ka=ka, kiou=float(kiou), eps=eps,
                       min_size=int(min_size), nodes_used=int(keep.sum()),
                       bins=binned_curves(S, Q, ka, bins))


def calibrate_forest(forest, ious: np.ndarray, *, ka: float = 0.85, kiou: float = 0.75,
                     min_size: int = 15, eps: float = 0.01, bins: int = 20) -> Calibration:
    """:func:`calibrate_nodes` over every node of ``forest`` (trees from ``build_forest``)."""
    kiou = check_unit_interval("kiou", kiou)
    S, Q, sizes = node_table(forest, ious, kiou)
    return calibrate_nodes(S, Q, sizes, ka=ka, kiou=kiou, min_size=min_size, eps=eps, bins=bins)


# ------------------------------------------------------------------------- output
def _atomic_write(path: Path, write) -> Path:
    with atomic_open(path, "wb") as fh:
        write(fh)
    return Path(path)


def write_csv(path: str | os.PathLike, cal: Calibration) -> Path:
    """The binned curve as CSV (s_lo, s_hi, nodes, p_high, p_low), written atomically."""
    import io

    def write(fh):
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["s_lo", "s_hi", "nodes", "p_high", "p_low"],
                           lineterminator="\n")
        w.writeheader()
        for row in cal.bins:
            w.writerow({k: ("" if v is None else v) for k, v in row.items()})
        fh.write(buf.getvalue().encode())

    return _atomic_write(Path(path), write)


def plot_calibration(path: str | os.PathLike, cal: Calibration, scores: np.ndarray,
                     ious: np.ndarray, S: np.ndarray, Q: np.ndarray, sizes: np.ndarray,
                     max_points: int = 5000, seed: int = 0) -> Path:
    """Paper Fig. 4 as a PNG: (a) mask IoU vs s, (b) node Q vs S, (c) P_h, P_l and the
    thresholds.  Written atomically with matplotlib's Agg backend."""
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    fig, ax = plt.subplots(1, 3, figsize=(13, 4))
    i = rng.permutation(len(scores))[:max_points]
    ax[0].scatter(np.asarray(scores)[i], np.asarray(ious)[i], s=2, alpha=0.3)
    ax[0].axhline(cal.kiou, color="k", lw=0.8, ls=":")
    ax[0].set(xlabel="mask score s", ylabel="IoU", title="(a) mask IoU vs score",
              xlim=(0, 1), ylim=(0, 1))
    keep = np.flatnonzero(np.asarray(sizes) >= cal.min_size)
    j = keep[rng.permutation(keep.shape[0])[:max_points]]
    ax[1].scatter(np.asarray(S)[j], np.asarray(Q)[j], s=2, alpha=0.3, color="tab:purple")
    ax[1].axhline(cal.ka, color="tab:green", lw=0.8, ls=":")
    ax[1].axhline(1 - cal.ka, color="tab:red", lw=0.8, ls=":")
    ax[1].set(xlabel="cluster score S", ylabel="cluster quality Q",
              title=f"(b) nodes with >= {cal.min_size} masks", xlim=(0, 1), ylim=(-0.02, 1.02))
    mids = [(b["s_lo"] + b["s_hi"]) / 2 for b in cal.bins]
    ph = [np.nan if b["p_high"] is None else b["p_high"] for b in cal.bins]
    pl = [np.nan if b["p_low"] is None else b["p_low"] for b in cal.bins]
    ax[2].plot(mids, ph, "o-", color="tab:green", label="P_h = P(Q >= K_a | S)")
    ax[2].plot(mids, pl, "o-", color="tab:red", label="P_l = P(Q <= 1-K_a | S)")
    ax[2].axvline(cal.kpr, color="tab:red", ls="--", label=f"K_pr = {cal.kpr:.3f}")
    ax[2].axvline(cal.kpa, color="tab:green", ls="--", label=f"K_pa = {cal.kpa:.3f}")
    ax[2].set(xlabel="cluster score S", ylabel="probability", title="(c) likelihoods",
              xlim=(0, 1), ylim=(-0.02, 1.02))
    ax[2].legend(fontsize=8, loc="center left")
    fig.tight_layout()

    def write(fh):
        fig.savefig(fh, format="png", dpi=110)

    try:
        return _atomic_write(Path(path), write)
    finally:
        plt.close(fig)


def write_thresholds(campaign_dir: str | os.PathLike, kpr: float, kpa: float) -> Path:
    """Set ``[search] kpr`` and ``kpa`` in ``DIR/campaign.toml`` (atomically, via the
    campaign config module so the file stays valid and keeps its header)."""
    from orchestrator.config import load_config, save_config

    d = Path(campaign_dir)
    cfg = load_config(d)  # LabelpropError naming the file if it is missing or invalid
    cfg.search.kpr = float(kpr)
    cfg.search.kpa = float(kpa)
    return save_config(d, cfg)
