"""Rounds of a campaign in the store (``labelprop iterate``): which round is current, the
frozen decisions of earlier rounds, starting a round and adding its masks.

* A store without ``campaign_round`` rows (made before rounds existed) is one round: every
  mask has ``Mask.round`` = 1 (the column is added with that default when it opens).
* Starting round N+1 freezes round N in one transaction: its accepted and rejected mask
  ids (and its node states) go to ``rounds/round-N/decisions.npz``, its forest to
  ``rounds/round-N/forest.npz`` (both journaled like every array beside the store), its
  ``Node`` rows are cleared, and round N+1's row is written with its plan and step
  ``train``.  Decisions of a frozen round never change again.
* The masks of round N+1 are appended (ids after the last mask, ``Mask.round`` = N+1,
  the feature / score / class / IoU arrays extended) in one transaction that also moves
  the round to step ``cluster``; a rerun finds the step done and adds nothing.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from sqlalchemy import func, select

from orchestrator.errors import LabelpropError
from orchestrator.campaign.store import (ArrayFile, CampaignRound, Category, Event, Image, Mask,
                                bulk_insert, count_rows, log_event, utcnow)

__all__ = ["ROUNDS_DIR", "round_dir", "current_round", "round_row", "mask_rounds",
           "earlier_round_mask_ids", "frozen_decisions", "decisions", "preparing_round",
           "check_not_preparing", "ingest_sources", "freeze_and_start", "set_step",
           "append_round_masks", "rounds_summary"]

ROUNDS_DIR = "rounds"


def round_dir(campaign_dir, r: int) -> Path:
    return Path(campaign_dir) / ROUNDS_DIR / f"round-{r}"


def current_round(s) -> int:
    r = s.execute(select(func.max(CampaignRound.round))).scalar()
    return int(r) if r is not None else 1


def round_row(s, r: int) -> CampaignRound | None:
    return s.get(CampaignRound, r)


def mask_rounds(s, n_masks: int) -> np.ndarray:
    """The round of every mask (int64, length ``n_masks``)."""
    out = np.ones(n_masks, np.int64)
    rows = s.execute(select(Mask.id, Mask.round).where(Mask.round != 1)).all()
    if rows:
        a = np.asarray(rows, np.int64)
        out[a[:, 0]] = a[:, 1]
    return out


def earlier_round_mask_ids(s) -> np.ndarray:
    """Masks of rounds before the current one: frozen, in no tree of the current round."""
    r = current_round(s)
    if r == 1:
        return np.zeros(0, np.int64)
    ids = s.execute(select(Mask.id).where(Mask.round < r)).scalars().all()
    return np.asarray(sorted(ids), np.int64)


def frozen_decisions(s, campaign_dir, n_masks: int) -> tuple[np.ndarray, np.ndarray]:
    """(accepted, rejected) bool per mask over the frozen rounds."""
    from orchestrator.campaign.arrays import load_npz

    acc = np.zeros(n_masks, bool)
    rej = np.zeros(n_masks, bool)
    for r in s.execute(select(CampaignRound.round).where(CampaignRound.step == "frozen")).scalars():
        d = load_npz(s, campaign_dir, f"round/{r}/decisions")
        acc[d["accepted"]] = True
        rej[d["rejected"]] = True
    return acc, rej


def decisions(s, campaign_dir, n_masks: int) -> tuple[np.ndarray, np.ndarray]:
    """(accepted, rejected) bool per mask over every round: the frozen ones and the current
    round's search (when its trees are built)."""
    from orchestrator.campaign.arrays import load_forest
    from orchestrator.campaign.export import ACCEPTED, REJECTED_STATES, masks_with_state

    acc, rej = frozen_decisions(s, campaign_dir, n_masks)
    if s.get(ArrayFile, "forest") is not None:
        forest = load_forest(s, campaign_dir, verify=False)
        acc |= masks_with_state(s, forest, [ACCEPTED])
        rej |= masks_with_state(s, forest, REJECTED_STATES)
    return acc, rej


def preparing_round(s) -> CampaignRound | None:
    """The round that ``labelprop iterate`` is preparing (not yet open), if any."""
    from orchestrator.campaign.iterate import PREP_STEPS

    row = s.get(CampaignRound, current_round(s))
    return row if row is not None and row.step in PREP_STEPS else None


def check_not_preparing(s, campaign_dir, what: str) -> None:
    row = preparing_round(s)
    if row is not None and row.step != "cluster":
        raise LabelpropError(f"{campaign_dir}: round {row.round} is being prepared by `labelprop "
                             f"iterate` (step: {row.step}); rerun `labelprop iterate "
                             f"{campaign_dir}` to finish it before {what}")


def ingest_sources(s) -> dict | None:
    """The ``sources`` of the last ``ingest`` (results, features, images, image_root)."""
    row = s.execute(select(Event.payload).where(Event.kind == "ingest")
                    .order_by(Event.id.desc()).limit(1)).scalar()
    if row is None:
        return None
    return json.loads(row).get("sources") or None


def freeze_and_start(s, campaign_dir, r: int, plan: dict, first_plan: dict | None) -> dict:
    """In the caller's transaction: freeze round ``r`` (the current one) and start ``r + 1``
    with ``plan`` at step ``train``.  ``first_plan`` describes round 1 when it has no row."""
    from orchestrator.campaign.arrays import load_forest, save_arrays_npz
    from orchestrator.campaign.export import ACCEPTED, REJECTED_STATES, masks_with_state
    from orchestrator.campaign.store import Node, clear_search_state

    forest = load_forest(s, campaign_dir)
    acc = np.flatnonzero(masks_with_state(s, forest, [ACCEPTED]))
    rej = np.flatnonzero(masks_with_state(s, forest, REJECTED_STATES))
    nodes = s.execute(select(Node.node_id, Node.state, Node.q)).all()
    na = np.asarray([(i, st, np.nan if q is None else q) for i, st, q in nodes], np.float64) \
        .reshape(-1, 3)
    rel = f"{ROUNDS_DIR}/round-{r}"
    save_arrays_npz(s, campaign_dir, f"round/{r}/decisions",
                    {"accepted": acc.astype(np.int64), "rejected": rej.astype(np.int64),
                     "node_id": na[:, 0].astype(np.int64), "node_state": na[:, 1].astype(np.int8),
                     "node_q": na[:, 2]}, f"{rel}/decisions.npz")
    save_arrays_npz(s, campaign_dir, f"round/{r}/forest", forest.to_npz_dict(), f"{rel}/forest.npz")
    s.delete(s.get(ArrayFile, "forest"))
    cleared = clear_search_state(s)
    n_masks = count_rows(s, Mask, Mask.round == r)
    row = s.get(CampaignRound, r)
    if row is None:
        row = CampaignRound(round=r, plan=json.dumps(first_plan or {}))
        s.add(row)
    row.step, row.masks, row.accepted, row.rejected = "frozen", n_masks, int(acc.size), int(rej.size)
    row.updated_at = utcnow()
    s.add(CampaignRound(round=r + 1, step="train", plan=json.dumps(plan)))
    s.flush()
    info = {"frozen_round": r, "accepted": int(acc.size), "rejected": int(rej.size),
            "masks": n_masks, "round": r + 1, **cleared}
    log_event(s, "round_start", **info, plan=plan)
    return info


def set_step(s, r: int, step: str, **payload) -> None:
    row = s.get(CampaignRound, r)
    row.step = step
    row.updated_at = utcnow()
    log_event(s, "round_step", round=r, step=step, **payload)


def append_round_masks(s, campaign_dir, r: int, p) -> dict:
    """In the caller's transaction: add validated predictions ``p``
    (:class:`orchestrator.campaign.ingest.Predictions`) as the masks of round ``r`` and move it to
    step ``cluster``.  Categories must be the campaign's; images already in the campaign
    must be the same files."""
    from orchestrator.campaign.arrays import array_row, load_array, save_array

    where = p.sources.get("results") if p.sources else "predictions"
    cats = {c.id: c.name for c in s.execute(select(Category)).scalars()}
    for c in p.categories:
        if c["id"] not in cats:
            raise LabelpropError(f"{where}: category {c['id']} ({c['name']!r}) is not one of "
                                 f"the campaign's categories")
    known = {im.id: im for im in s.execute(select(Image)).scalars()}
    new_images = []
    for im in p.images or []:
        old = known.get(im["id"])
        if old is None:
            new_images.append(im)
        elif (old.file_name, old.width, old.height) != (im["file_name"], im["width"], im["height"]):
            raise LabelpropError(f"{where}: image id {im['id']} is {im['file_name']} "
                                 f"({im['width']}x{im['height']}) but the campaign's image "
                                 f"{im['id']} is {old.file_name} ({old.width}x{old.height})")
    if new_images:
        bulk_insert(s, Image, new_images)
    n_old = count_rows(s, Mask)
    n = p.n
    rows = [{"id": n_old + i, "image_id": int(p.image_ids[i]), "category_id": int(p.classes[i]),
             "score": float(p.scores[i]), "bbox": p.bboxes[i], "rle": p.rles[i],
             "iou": None if p.ious is None else float(p.ious[i]), "round": r} for i in range(n)]
    bulk_insert(s, Mask, rows)
    feats = load_array(s, campaign_dir, "features")
    if feats.shape[1] != p.features.shape[1]:
        raise LabelpropError(f"{p.sources.get('features')}: {p.features.shape[1]}-d features, "
                             f"but the campaign's are {feats.shape[1]}-d")
    have_iou = array_row(s, "ious") is not None
    if have_iou != (p.ious is not None):
        raise LabelpropError(f"{where}: the campaign's masks {'have' if have_iou else 'have no'} "
                             f"ground-truth IoUs; round {r}'s must too")
    save_array(s, campaign_dir, "features", np.concatenate([feats, p.features]).astype(np.float32))
    for name, new, dt in (("scores", p.scores, np.float32), ("classes", p.classes, np.int64),
                          ("ious", p.ious, np.float32)):
        if new is None:
            continue
        old = load_array(s, campaign_dir, name)
        save_array(s, campaign_dir, name, np.concatenate([old, new]).astype(dt))
    row = s.get(CampaignRound, r)
    row.masks = n
    set_step(s, r, "cluster", masks=n, first_mask=n_old, images_added=len(new_images))
    return {"masks": n, "first_mask": n_old, "images_added": len(new_images)}


def rounds_summary(s, campaign_dir, acc: np.ndarray, rej: np.ndarray) -> list[dict]:
    """One entry per round: its step, masks, accepted / rejected / undecided masks."""
    n = int(acc.shape[0])
    mr = mask_rounds(s, n)
    rows = {r.round: r for r in s.execute(select(CampaignRound)).scalars()}
    out = []
    for r in sorted(set(rows) | {1}):
        row = rows.get(r)
        m = mr == r
        out.append({"round": r, "step": row.step if row is not None else "open",
                    "masks": int(m.sum()), "accepted_masks": int((acc & m).sum()),
                    "rejected_masks": int((rej & m).sum()),
                    "undecided_masks": int((m & ~acc & ~rej).sum())})
    return out
