"""``labelprop export``: the accepted masks of a campaign.

A mask is accepted when it lies under a node whose ``Node.state`` is ACCEPTED: the
masks of node ``j`` are ``forest.masks(j)`` of the campaign's ``forest.npz``.

* ``--coco OUT.json``: COCO instances (``images`` and ``categories`` carried over,
  ``annotations`` with RLE ``segmentation`` (counts as str), ``bbox`` and ``area`` of the
  mask, ``iscrowd`` 0, ``score``; annotation id = mask id + 1), loadable by
  ``pycocotools.coco.COCO``.  Campaigns with real masks only.
* ``--indices OUT.npy|OUT.txt``: the sorted accepted mask ids (any campaign).

Files are written atomically.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.engine import Engine

from orchestrator.campaign.arrays import atomic_save_npy, atomic_write_bytes, load_forest
from orchestrator.errors import LabelpropError
from orchestrator.search.search import NodeState
from orchestrator.campaign.store import (Category, Image, Mask, Node, chunks, count_rows, get_meta,
                                read_session)

__all__ = ["accepted_masks", "masks_with_state", "coco_instances", "export_coco",
           "export_indices"]

ACCEPTED = int(NodeState.ACCEPTED)
REJECTED_STATES = (int(NodeState.REJECTED), int(NodeState.AUTO_REJECTED))


def masks_with_state(session, forest, states) -> np.ndarray:
    """Boolean per mask: under a node whose stored state is one of ``states``."""
    node_ids = session.execute(select(Node.node_id).where(Node.state.in_(list(states)))) \
        .scalars().all()
    out = np.zeros(forest.n_masks, bool)
    if not node_ids:
        return out
    ids = np.asarray(node_ids, np.int64)
    if ids.max() >= forest.n_nodes:
        raise LabelpropError(f"the store names node {int(ids.max())} but the forest has only "
                             f"{forest.n_nodes} nodes; was the forest rebuilt without --force?")
    # Mark the accepted leaf-order positions with a difference array: O(n + nodes).
    diff = np.zeros(forest.order.shape[0] + 1, np.int64)
    np.add.at(diff, forest.start[ids], 1)
    np.add.at(diff, forest.end[ids], -1)
    covered = np.cumsum(diff[:-1]) > 0
    out[forest.order[covered]] = True
    return out


def accepted_masks(session, campaign_dir) -> np.ndarray:
    """Sorted ids of the accepted masks of every round (`labelprop iterate`): the frozen
    rounds' and those of the current round's search."""
    from orchestrator.campaign.rounds import current_round, decisions

    if current_round(session) == 1:
        forest = load_forest(session, campaign_dir)
        return np.flatnonzero(masks_with_state(session, forest, [ACCEPTED]))
    acc, _ = decisions(session, campaign_dir, count_rows(session, Mask))
    return np.flatnonzero(acc)


def coco_instances(session, mask_ids: np.ndarray) -> dict:
    """A COCO instances dict with the given masks as annotations."""
    from pycocotools import mask as mask_utils

    images = [{"id": r.id, "file_name": r.file_name, "width": r.width, "height": r.height}
              for r in session.execute(select(Image).order_by(Image.id)).scalars()]
    cats = [{"id": r.id, "name": r.name}
            for r in session.execute(select(Category).order_by(Category.id)).scalars()]
    anns = []
    for part in chunks(np.asarray(mask_ids, np.int64).tolist()):
        rows = session.execute(select(Mask.id, Mask.image_id, Mask.category_id, Mask.score,
                                      Mask.rle).where(Mask.id.in_(part)).order_by(Mask.id)).all()
        for mid, iid, cid, score, rle_text in rows:
            if rle_text is None:
                raise LabelpropError(f"mask {mid} has no segmentation (a triplet campaign); "
                                     f"use --indices")
            rle = json.loads(rle_text)
            r = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
            anns.append({"id": int(mid) + 1, "mask_id": int(mid), "image_id": int(iid),
                         "category_id": int(cid), "segmentation": rle,
                         "area": float(mask_utils.area(r)),
                         "bbox": [float(v) for v in mask_utils.toBbox(r)],
                         "iscrowd": 0, "score": float(score)})
    return {"info": {"description": "labelprop export: accepted masks",
                     "date_created": _dt.datetime.now(_dt.timezone.utc).isoformat()},
            "images": images, "categories": cats, "annotations": anns}


def _campaign_kind(session) -> str:
    return get_meta(session, "campaign.kind", "") or ""


def export_coco(engine: Engine, campaign_dir: str | os.PathLike, out: str | os.PathLike) -> dict:
    with read_session(engine) as s:
        if count_rows(s, Mask) == 0:
            raise LabelpropError(f"{campaign_dir}: nothing ingested yet")
        if _campaign_kind(s) != "coco":
            raise LabelpropError(f"{campaign_dir}: a triplet campaign has no segmentations; "
                                 f"use --indices OUT.npy")
        ids = accepted_masks(s, campaign_dir)
        data = coco_instances(s, ids)
    _check_out_dir(out)
    atomic_write_bytes(out, json.dumps(data).encode("utf-8"))
    return {"out": str(out), "accepted_masks": int(ids.shape[0]), "images": len(data["images"]),
            "categories": len(data["categories"])}


def export_indices(engine: Engine, campaign_dir: str | os.PathLike,
                   out: str | os.PathLike) -> dict:
    out = Path(out)
    if out.suffix not in (".npy", ".txt"):
        raise LabelpropError(f"{out}: --indices must end in .npy or .txt")
    with read_session(engine) as s:
        if count_rows(s, Mask) == 0:
            raise LabelpropError(f"{campaign_dir}: nothing ingested yet")
        ids = accepted_masks(s, campaign_dir)
    _check_out_dir(out)
    if out.suffix == ".npy":
        atomic_save_npy(out, ids.astype(np.int64))
    else:
        atomic_write_bytes(out, "".join(f"{i}\n" for i in ids.tolist()).encode("ascii"))
    return {"out": str(out), "accepted_masks": int(ids.shape[0])}


def _check_out_dir(out) -> None:
    parent = Path(out).parent
    if not parent.is_dir():
        raise LabelpropError(f"{out}: directory {parent} does not exist")
