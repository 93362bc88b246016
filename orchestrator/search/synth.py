"""Synthetic ``{f, s, IoU}`` triplets with the structure label propagation relies on.

The paper (Sec. 5.2) fits per-class Gaussian mixtures to ADE20K detections and samples
triplets from them.  We have no detector output here, so :func:`make_triplets` samples
from a hand-built generative model with the same ingredients:

* **Classes** with heavy-tailed sizes (Zipf, exponent ``class_zipf``).
* **Visual modes** per class: Gaussian blobs in feature space whose sizes are lognormal
  (heavy tail: a few big modes, many small ones).  Each mode has a *kind* that sets its
  quality: ``good`` (almost every mask has IoU ~ 0.85-0.95), ``bad`` (mostly IoU < 0.6),
  or ``mixed`` (around the K_iou boundary).
* **Sub-modes** inside each mode, each with its own mean IoU jittered around the mode's,
  and a shift of the feature along a per-mode "quality direction" proportional to the
  IoU.  So complete linkage separates good from bad masks *partially*: sub-modes are
  purer than modes, but not pure.
* **Scores** like the paper's detector: ``s = predicted IoU x class confidence`` where the
  predicted IoU is the true IoU plus noise (and a per-mode bias: some modes are
  over-confident) and the confidence is drawn per mode.  The mask-level correlation of
  s and IoU is about 0.6-0.7, much stronger at cluster level (paper Fig. 4a/b).

With the defaults about half of the masks have IoU >= 0.75.  The bundled demo dataset
(``orchestrator/data/demo_triplets.npz``) is ``make_triplets(**DEMO_ARGS)``; rebuild it
with :func:`write_demo_triplets`.  Everything here is pure except ``write_demo_triplets``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from orchestrator.errors import LabelpropError
from orchestrator.search.triplets import Triplets, save_triplets

__all__ = ["SynthParams", "make_triplets", "DEMO_ARGS", "DEMO_PATH", "demo_triplets",
           "write_demo_triplets", "describe"]

DEMO_PATH = Path(__file__).resolve().parents[1] / "data" / "demo_triplets.npz"   # orchestrator/data/
#: ``make_triplets(**DEMO_ARGS)`` reproduces the bundled demo dataset.
DEMO_ARGS = {"n": 20_000, "classes": 5, "dim": 16, "seed": 2021}


@dataclass(frozen=True)
class SynthParams:
    """Knobs of the generative model (defaults tuned for ~50% masks with IoU >= 0.75)."""

    class_zipf: float = 1.0          # class sizes proportional to 1 / rank**class_zipf
    masks_per_mode: float = 150.0    # average masks per visual mode
    mode_size_sigma: float = 1.1     # lognormal sigma of mode sizes (heavy tail)
    p_good: float = 0.40             # fraction of modes of each kind
    p_bad: float = 0.30              # (the rest are mixed)
    mode_spread: float = 3.0         # std of mode centres (feature units)
    sub_spread: float = 0.9          # std of sub-mode centres around their mode
    mask_spread: float = 0.55        # std of a mask around its sub-mode centre
    masks_per_sub: float = 30.0      # average masks per sub-mode
    quality_shift: float = 4.0       # feature shift along the mode's quality direction per unit IoU
    sub_iou_jitter: float = 0.07     # std of sub-mode mean IoU around the mode's
    pred_noise: float = 0.20         # std of the predicted-IoU error per mask
    mode_bias: float = 0.08          # std of the per-mode predicted-IoU bias


_KIND_IOU = {  # mean and within-sub-mode std of IoU for each kind of mode
    "good": (0.89, 0.06),
    "mixed": (0.72, 0.13),
    "bad": (0.45, 0.17),
}


def _split_counts(total: int, weights: np.ndarray, rng: np.random.Generator,
                  minimum: int = 1) -> np.ndarray:
    """Integer counts summing to ``total`` proportional to ``weights`` (each >= minimum)."""
    k = weights.shape[0]
    if total < k * minimum:
        raise LabelpropError(f"cannot split {total} masks into {k} groups of >= {minimum}")
    w = weights / weights.sum()
    base = np.full(k, minimum, dtype=np.int64)
    rest = total - base.sum()
    counts = base + rng.multinomial(rest, w)
    return counts


def make_triplets(n: int, classes: int = 5, dim: int = 16, seed: int = 0,
                  params: SynthParams = SynthParams(), with_modes: bool = False):
    """Sample ``n`` synthetic triplets (features float32 (n, dim), scores, ious, classes).

    Deterministic for a given ``(n, classes, dim, seed, params)``.  Masks are shuffled
    within the file so that mask ids carry no structure.  With ``with_modes=True`` returns
    ``(triplets, mode_ids)`` where ``mode_ids`` is the (global) visual mode of each mask.
    """
    n, classes, dim = int(n), int(classes), int(dim)
    if n < 1:
        raise LabelpropError(f"--n must be >= 1, got {n}")
    if classes < 1:
        raise LabelpropError(f"--classes must be >= 1, got {classes}")
    if classes > n:
        raise LabelpropError(f"--classes ({classes}) cannot exceed --n ({n})")
    if dim < 2:
        raise LabelpropError(f"--dim must be >= 2, got {dim}")
    p = params
    rng = np.random.default_rng(seed)
    ranks = rng.permutation(classes) + 1
    class_sizes = _split_counts(n, 1.0 / ranks.astype(np.float64) ** p.class_zipf, rng)

    feats, scores, ious, cls, modes = [], [], [], [], []
    mode_counter = 0
    kinds = np.array(["good", "bad", "mixed"])
    p_kind = np.array([p.p_good, p.p_bad, 1.0 - p.p_good - p.p_bad])
    for c in range(classes):
        nc = int(class_sizes[c])
        n_modes = max(1, int(round(nc / p.masks_per_mode)))
        mode_w = rng.lognormal(0.0, p.mode_size_sigma, n_modes)
        mode_sizes = _split_counts(nc, mode_w, rng, minimum=1 if nc < 2 * n_modes else 2)
        for m in range(n_modes):
            nm = int(mode_sizes[m])
            kind = kinds[rng.choice(3, p=p_kind)]
            mu_iou, sd_iou = _KIND_IOU[kind]
            centre = rng.normal(0.0, p.mode_spread, dim)
            qdir = rng.normal(0.0, 1.0, dim)
            qdir /= np.linalg.norm(qdir)
            conf_mean = rng.beta(9.0, 1.5)                # class confidence of this mode
            bias = rng.normal(0.0, p.mode_bias)           # over/under-confident mode
            n_sub = max(1, int(round(nm / p.masks_per_sub)))
            sub_sizes = _split_counts(nm, rng.lognormal(0.0, 0.7, n_sub), rng)
            for sz in sub_sizes:
                sz = int(sz)
                sub_mu = float(np.clip(mu_iou + rng.normal(0.0, p.sub_iou_jitter), 0.05, 0.97))
                iou = np.clip(rng.normal(sub_mu, sd_iou, sz), 0.0, 1.0)
                # a few masks are outright failures whatever their mode (wrong object, part)
                fail = rng.random(sz) < 0.04
                iou[fail] = rng.uniform(0.0, 0.4, int(fail.sum()))
                sub_c = centre + rng.normal(0.0, p.sub_spread, dim)
                f = (sub_c + rng.normal(0.0, p.mask_spread, (sz, dim))
                     + p.quality_shift * (iou[:, None] - 0.7) * qdir[None, :])
                pred = np.clip(iou + bias + rng.normal(0.0, p.pred_noise, sz), 0.0, 1.0)
                conf = np.clip(conf_mean + rng.normal(0.0, 0.08, sz), 0.2, 1.0)
                feats.append(f)
                ious.append(iou)
                scores.append(pred * conf)
                cls.append(np.full(sz, c, dtype=np.int64))
                modes.append(np.full(sz, mode_counter, dtype=np.int64))
            mode_counter += 1
    features = np.concatenate(feats).astype(np.float32)
    perm = rng.permutation(n)
    t = Triplets(features=np.ascontiguousarray(features[perm]),
                 scores=np.concatenate(scores).astype(np.float32)[perm],
                 ious=np.concatenate(ious).astype(np.float32)[perm],
                 classes=np.concatenate(cls)[perm])
    return (t, np.concatenate(modes)[perm]) if with_modes else t


def describe(t: Triplets, kiou: float = 0.75) -> dict:
    """Summary statistics of a triplet set (for ``labelprop synth`` and tests)."""
    sizes = np.bincount(t.classes)
    sizes = sizes[sizes > 0]
    out = {"masks": t.n, "classes": int(sizes.shape[0]), "dim": t.dim,
           "class_sizes": sorted((int(x) for x in sizes), reverse=True),
           "score_mean": float(t.scores.mean())}
    if t.ious is not None:
        out["positive_fraction"] = float((t.ious >= kiou).mean())
        out["iou_mean"] = float(t.ious.mean())
        out["score_iou_corr"] = float(np.corrcoef(t.scores, t.ious)[0, 1]) if t.n > 1 else None
    return out


def demo_triplets() -> Triplets:
    """The bundled demo dataset, regenerated in memory (identical to the shipped file)."""
    return make_triplets(**DEMO_ARGS)


def write_demo_triplets(path: str | Path = DEMO_PATH) -> Path:
    """Regenerate the bundled demo dataset (``make_triplets(**DEMO_ARGS)``) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_triplets(path, demo_triplets())
