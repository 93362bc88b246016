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

The same curves order the ``value`` search strategies: :class:`AcceptanceCurve` is P_h(S)
and P_l(S) smoothed to be monotone (isotonic regression over the bins, weighted by their
node counts), stored in a campaign by :func:`write_calibration` (``labelprop calibrate
--write``) as ``calibration.json`` beside ``campaign.toml``, and read back, validated, by
:func:`load_curve`.

Everything here is pure (arrays in, arrays/dataclasses out) except :func:`write_csv`,
:func:`plot_calibration`, :func:`write_calibration` and
:func:`load_curve`.
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from orchestrator.atomic import atomic_open
from orchestrator.search import paper
from orchestrator.errors import LabelpropError, check_unit_interval

__all__ = ["Calibration", "node_table", "cumulative_threshold", "binned_curves",
           "calibrate_nodes", "calibrate_forest", "write_csv", "plot_calibration",
           "AcceptanceCurve", "write_calibration", "load_curve",
           "CALIBRATION_NAME", "CALIBRATION_FORMAT"]

CALIBRATION_NAME = "calibration.json"
CALIBRATION_FORMAT = "labelprop-calibration/1"


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
        return {"format": CALIBRATION_FORMAT, **asdict(self)}


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


def calibrate_nodes(S: np.ndarray, Q: np.ndarray, sizes: np.ndarray, *, ka: float = paper.KA,
                    kiou: float = paper.KIOU, min_size: int = paper.NS, eps: float = 0.01,
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


def calibrate_forest(forest, ious: np.ndarray, *, ka: float = paper.KA, kiou: float = paper.KIOU,
                     min_size: int = paper.NS, eps: float = 0.01, bins: int = 20) -> Calibration:
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


# --------------------------------------------------------------- the curve for the search
def _isotonic(values: list[float], weights: list[float]) -> list[float]:
    """Weighted least-squares non-decreasing fit (pool adjacent violators)."""
    blocks: list[list[float]] = []          # [mean, weight, count]
    for v, w in zip(values, weights):
        blocks.append([float(v), float(w), 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            v2, w2, c2 = blocks.pop()
            v1, w1, c1 = blocks.pop()
            blocks.append([(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, c1 + c2])
    out: list[float] = []
    for v, _, c in blocks:
        out += [v] * int(c)
    return out


@dataclass(frozen=True)
class AcceptanceCurve:
    """P_h(S) = P(Q >= K_a | S) and P_l(S) = P(Q <= 1 - K_a | S) as piecewise-linear curves.

    ``knots`` are increasing cluster scores; between knots the curves are interpolated
    linearly, outside they are constant.  :meth:`from_bins` builds them from the binned
    calibration (bin centres as knots, isotonic so that P_h never falls and P_l never
    rises with S); :meth:`fallback` is the curve used without a calibration.
    """

    knots: tuple[float, ...]
    p_high: tuple[float, ...]
    p_low: tuple[float, ...]
    ka: float | None = None          # the K_a (and K_iou) the curve was measured for
    kiou: float | None = None
    source: str = "fallback"

    def lookup(self, S) -> tuple[np.ndarray, np.ndarray]:
        """(P_h, P_l) at the scores ``S``."""
        S = np.asarray(S, dtype=np.float64)
        return (np.interp(S, self.knots, self.p_high), np.interp(S, self.knots, self.p_low))

    @classmethod
    def fallback(cls, kpa: float) -> "AcceptanceCurve":
        """Without a calibration: P_h rises linearly from 0 at S = K_pa to 1 at S = 1, P_l = 0.

        K_pa is by definition the score below which a cluster is (almost) never of high
        quality (Sec. 4.3), and a cluster whose every mask has score 1 is predicted perfect;
        a straight line between the two is the least-committal monotone curve through both.
        P_l = 0 makes the look-ahead assume that a cluster which is not accepted splits.
        """
        kpa = check_unit_interval("kpa", kpa)
        if kpa >= 1.0:
            return cls(knots=(0.0, 1.0), p_high=(0.0, 0.0), p_low=(0.0, 0.0))
        return cls(knots=(0.0, kpa, 1.0), p_high=(0.0, 0.0, 1.0), p_low=(0.0, 0.0, 0.0))

    @classmethod
    def from_bins(cls, bins: list[dict], ka: float, kiou: float, source: str = "calibration") -> "AcceptanceCurve":
        """From :func:`binned_curves` rows (empty bins are skipped)."""
        rows = [b for b in bins if b["nodes"]]
        if not rows:
            raise LabelpropError("the calibration has no non-empty score bin")
        w = [float(b["nodes"]) for b in rows]
        ph = _isotonic([b["p_high"] for b in rows], w)
        pl = [-v for v in _isotonic([-b["p_low"] for b in rows], w)]
        knots = tuple((b["s_lo"] + b["s_hi"]) / 2.0 for b in rows)
        return cls(knots=knots, p_high=tuple(min(max(v, 0.0), 1.0) for v in ph),
                   p_low=tuple(min(max(v, 0.0), 1.0) for v in pl), ka=float(ka), kiou=float(kiou),
                   source=source)

    @classmethod
    def from_dict(cls, d, where: str) -> "AcceptanceCurve":
        """Validate a calibration as written by :func:`write_calibration` (or printed by
        ``labelprop calibrate --json``); every error names ``where`` and the field."""
        if not isinstance(d, dict):
            raise LabelpropError(f"{where}: must hold a JSON object")
        fmt = d.get("format")
        if fmt != CALIBRATION_FORMAT:
            raise LabelpropError(f"{where}: not a labelprop calibration (format {fmt!r}, expected "
                                 f"{CALIBRATION_FORMAT!r}; write one with `labelprop calibrate`)")
        vals = {}
        for k in ("ka", "kiou"):
            v = d.get(k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise LabelpropError(f"{where}: {k} must be a number in [0, 1], got {v!r}")
            vals[k] = float(v)
        bins = d.get("bins")
        if not isinstance(bins, list) or not bins:
            raise LabelpropError(f"{where}: bins must be a non-empty list")
        prev_hi = 0.0
        for i, b in enumerate(bins):
            if not isinstance(b, dict):
                raise LabelpropError(f"{where}: bins[{i}] must be an object")
            nodes = b.get("nodes")
            if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 0:
                raise LabelpropError(f"{where}: bins[{i}].nodes must be a non-negative integer, got {nodes!r}")
            lo, hi = b.get("s_lo"), b.get("s_hi")
            for k, v in (("s_lo", lo), ("s_hi", hi)):
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                    raise LabelpropError(f"{where}: bins[{i}].{k} must be a number in [0, 1], got {v!r}")
            if not lo < hi or lo < prev_hi - 1e-9:
                raise LabelpropError(f"{where}: bins[{i}] [{lo}, {hi}) is empty or overlaps the bin before")
            prev_hi = hi
            for k in ("p_high", "p_low"):
                v = b.get(k)
                if nodes == 0 and v is None:
                    continue
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0 \
                        or not math.isfinite(v):
                    raise LabelpropError(f"{where}: bins[{i}].{k} must be a probability in [0, 1], got {v!r}")
        if not any(b["nodes"] for b in bins):
            raise LabelpropError(f"{where}: every bin is empty")
        return cls.from_bins(bins, vals["ka"], vals["kiou"], source=str(where))

    def check_for(self, ka: float, kiou: float, where: str) -> "AcceptanceCurve":
        """Refuse a curve measured for other thresholds than the search uses."""
        if self.ka is not None and (abs(self.ka - ka) > 1e-9 or abs((self.kiou or 0.0) - kiou) > 1e-9):
            raise LabelpropError(f"{where}: measured for K_a={self.ka}, K_iou={self.kiou} but the search "
                                 f"uses K_a={ka}, K_iou={kiou}; rerun `labelprop calibrate` with those")
        return self


def load_curve(path: str | os.PathLike) -> AcceptanceCurve:
    """Read and validate a calibration JSON file (see :meth:`AcceptanceCurve.from_dict`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LabelpropError(f"{path}: not found") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise LabelpropError(f"{path}: cannot read: {exc}") from None
    try:
        d = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LabelpropError(f"{path}: invalid JSON: {exc}") from None
    return AcceptanceCurve.from_dict(d, str(path))


def write_calibration(campaign_dir: str | os.PathLike, cal: Calibration) -> tuple[Path, Path]:
    """Store a calibration in a campaign: ``DIR/calibration.json`` (the binned P_h / P_l,
    read by the ``value`` strategies), then ``[search] kpr``, ``kpa`` and ``calibration`` in
    ``DIR/campaign.toml``; both written atomically, the JSON first, so a crash in between
    leaves the campaign as it was.  Returns the two paths."""
    from orchestrator.atomic import atomic_write_json
    from orchestrator.campaign.config import load_config, save_config

    d = Path(campaign_dir)
    cfg = load_config(d)  # LabelpropError naming the file if it is missing or invalid
    AcceptanceCurve.from_dict(cal.to_dict(), "calibration")     # what we write reads back
    js = d / CALIBRATION_NAME
    atomic_write_json(js, cal.to_dict())
    cfg.search.kpr = float(cal.kpr)
    cfg.search.kpa = float(cal.kpa)
    cfg.search.calibration = CALIBRATION_NAME
    return js, save_config(d, cfg)
