"""The retraining loop (``labelprop iterate``), its pure part: which new detections to drop,
the steps of a round, and the train / detect command lines of a round.

A round N+1 is prepared in steps, each redone or skipped on a rerun (the step reached is
journaled in the store, ``CampaignRound.step``):

``train``    the accepted masks of every round so far, exported as COCO, plus the initial
             training set, fine-tune the model of round N (``labelprop train``, resumable);
``detect``   the new model detects again on the pool images (``labelprop detect``, resumable);
``ingest``   new detections that overlap an accepted mask of the same image are dropped
             (:func:`overlapping`), the rest become the masks of round N+1 (one transaction);
``cluster``  one tree per class over round N+1's masks only (``cluster``, resumable);
``open``     the search of round N+1 runs (``labelprop run``, ``poll``).

Nothing here does I/O: :mod:`orchestrator.campaign.rounds` keeps the rounds in the store and
:mod:`orchestrator.actions.iterate` runs the steps.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["STEPS", "PREP_STEPS", "OverlapRule", "overlapping", "RoundPlan", "train_argv",
           "detect_argv"]

#: The steps of a round, in order; a round whose step is ``open`` is searched.
STEPS = ("train", "detect", "ingest", "cluster", "open")
PREP_STEPS = STEPS[:-1]


@dataclass(frozen=True)
class OverlapRule:
    """A new mask duplicates an accepted one of the same image when their mask IoU is at
    least ``iou``, or when at least ``inside`` of the new mask's area lies inside it (a
    part of an object that is already annotated).  ``[iterate]`` in campaign.toml."""

    iou: float = 0.5
    inside: float = 0.8


def overlapping(new_rles: list[dict], new_images: np.ndarray, accepted_rles: list[dict],
                accepted_images: np.ndarray, rule: OverlapRule) -> tuple[np.ndarray, np.ndarray,
                                                                          np.ndarray]:
    """Which new masks overlap an accepted mask of the same image.

    RLEs are pycocotools' compressed dicts (``counts`` as bytes).  Returns ``drop`` (bool
    per new mask), and per new mask the largest IoU and the largest inside-share with an
    accepted mask of its image (0 where the image has none).  Classes are ignored: one
    object gets at most one annotation, whatever class the new model gives it.
    """
    from pycocotools import mask as mask_utils

    n = len(new_rles)
    best_iou = np.zeros(n, np.float64)
    best_in = np.zeros(n, np.float64)
    new_images = np.asarray(new_images, np.int64)
    accepted_images = np.asarray(accepted_images, np.int64)
    by_image: dict[int, list[int]] = {}
    for j, iid in enumerate(accepted_images.tolist()):
        by_image.setdefault(iid, []).append(j)
    for iid in np.unique(new_images).tolist():
        acc = by_image.get(iid)
        if not acc:
            continue
        idx = np.flatnonzero(new_images == iid)
        dt = [new_rles[i] for i in idx.tolist()]
        gt = [accepted_rles[j] for j in acc]
        # iscrowd=0: intersection over union; iscrowd=1: intersection over the new mask's area
        iou = np.asarray(mask_utils.iou(dt, gt, [0] * len(gt)), np.float64).reshape(len(dt), len(gt))
        ins = np.asarray(mask_utils.iou(dt, gt, [1] * len(gt)), np.float64).reshape(len(dt), len(gt))
        best_iou[idx] = iou.max(axis=1)
        best_in[idx] = ins.max(axis=1)
    drop = (best_iou >= rule.iou) | (best_in >= rule.inside)
    return drop, best_iou, best_in


@dataclass
class RoundPlan:
    """What round ``round`` is prepared from (recorded in the store when it starts, so a
    rerun uses the same inputs).  Paths are absolute."""

    round: int
    weights: str                         # the previous round's model (file), fine-tuned
    train: list[list[str]]               # initial training set: [[COCO json, image root], ...]
    images: str                          # pool: COCO json or image directory
    image_root: str | None               # image root of a COCO json pool
    preset: str = "default"
    norm: str = "GN"
    iters: int | None = None
    batch: int | None = None
    detect: dict = field(default_factory=dict)   # min_score, min_area, nms, max_per_image
    gt: str | None = None                # ground truth of the pool (simulated crowd's IoUs)
    threads: int | None = None
    device: str = "cpu"
    out: str = ""                        # DIR/rounds/round-N: model, dets, accepted-*.json

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict) -> "RoundPlan":
        return cls(**d)


def train_argv(plan: RoundPlan, accepted: list[tuple[str, str]], out: str, quiet: bool) -> list[str]:
    """``labelprop train`` arguments: the initial set plus the accepted masks (one image root
    per file), fine-tuned from the previous round's weights."""
    files = [list(t) for t in plan.train] + [list(a) for a in accepted]
    argv = ["train", *[f for f, _ in files]]
    for _, root in files:
        argv += ["--image-root", root]
    argv += ["--out", out, "--preset", plan.preset, "--norm", plan.norm,
             "--init-weights", plan.weights, "--device", plan.device]
    if plan.iters is not None:
        argv += ["--iters", str(plan.iters)]
    if plan.batch is not None:
        argv += ["--batch", str(plan.batch)]
    if plan.threads:
        argv += ["--threads", str(plan.threads)]
    if quiet:
        argv.append("--quiet")
    return argv


def detect_argv(plan: RoundPlan, weights_dir: str, out: str, quiet: bool) -> list[str]:
    """``labelprop detect`` arguments: the pool, with the previous round's filters."""
    argv = ["detect", plan.images, "--weights", weights_dir, "--out", out, "--device", plan.device]
    if plan.image_root:
        argv += ["--image-root", plan.image_root]
    flags = {"min_score": "--min-score", "min_area": "--min-area", "nms": "--nms",
             "max_per_image": "--max-per-image"}
    for k, flag in flags.items():
        v = plan.detect.get(k)
        if v is not None:
            argv += [flag, str(v)]
    if plan.threads:
        argv += ["--threads", str(plan.threads)]
    if quiet:
        argv.append("--quiet")
    return argv
