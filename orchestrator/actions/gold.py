"""Gold questions: :func:`add_gold` (what ``labelprop gold`` does).

Gold (``labelprop gold``): held-out masks with known answers, labelled yes iff their
``iou`` >= K_iou of the campaign.  Either predictions with an ``iou`` field (a COCO
results JSON with RLE segmentations plus the images JSON and the image root: masks that
are not in the campaign), or ``--from-masks N``: N campaign masks with a known IoU
(ingested with an ``iou`` field), held out of the search: they leave the trees (which are
rebuilt at once if they were built), so they are never asked as real questions nor accepted.
This is allowed until the search starts.  Known yes and known no are balanced (``--balance``).  The first gold
added also fills the qualification test pool (``[crowd.qualification] questions`` items,
half yes, half no); the rest is hidden in HITs.  Everything is drawn from the campaign seed.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from orchestrator.errors import LabelpropError
from orchestrator.search.params import ParamError

__all__ = ["add_gold"]


def _balanced(rng, labels: np.ndarray, n: int | None, balance: bool) -> np.ndarray:
    idx = np.arange(labels.shape[0])
    if n is None or n >= labels.shape[0]:
        if not balance:
            return rng.permutation(idx)
        n = labels.shape[0]
    yes, no = rng.permutation(idx[labels == 1]), rng.permutation(idx[labels == 0])
    if not balance:
        return rng.permutation(idx)[:n]
    k = min(n // 2 + n % 2, yes.shape[0])
    m = min(n - k, no.shape[0])
    k = min(n - m, yes.shape[0])
    return rng.permutation(np.concatenate([yes[:k], no[:m]]))


def add_gold(campaign_dir, *, results=None, images=None, image_root=None, from_masks: int | None = None,
             limit: int | None = None, balance: bool = True, db: str | None = None) -> dict:
    from sqlalchemy import func, select

    from orchestrator.campaign.config import load_config
    from orchestrator.crowd.crowd_store import Gold
    from orchestrator.campaign.store import ArrayFile, Category, Event, Image, Mask, bulk_insert, log_event, \
        open_store, read_session, transaction, utcnow

    d = Path(campaign_dir)
    cfg = load_config(d)
    kiou = cfg.search.kiou
    engine = open_store(d, db)
    rows: list[dict] = []
    if from_masks is not None:
        if results is not None:
            raise LabelpropError("gold: give --results ... or --from-masks N, not both")
        if from_masks < 1:
            raise ParamError("from_masks", f"must be at least 1, got {from_masks}")
        _refuse_once_searching(engine, d)
        with read_session(engine) as s:
            ms = s.execute(select(Mask.id, Mask.iou, Mask.rle, Mask.bbox, Image.file_name, Category.name)
                           .join(Image, Image.id == Mask.image_id).join(Category, Category.id == Mask.category_id)
                           .where(Mask.iou.is_not(None), Mask.rle.is_not(None)).order_by(Mask.id)).all()
            ev = s.execute(select(Event.payload).where(Event.kind == "ingest").order_by(Event.id.desc())
                           .limit(1)).scalar()
            taken = set(s.execute(select(Gold.mask_id).where(Gold.mask_id.is_not(None))).scalars())
        ms = [m for m in ms if m[0] not in taken]
        if not ms:
            raise LabelpropError(f"{d}: no campaign masks with a known IoU and an image (ingest predictions "
                                 f"with an 'iou' field)")
        root = Path(json.loads(ev or "{}").get("sources", {}).get("image_root", "."))
        labels = np.array([1 if m[1] >= kiou else 0 for m in ms])
        rng = np.random.default_rng([abs(cfg.campaign.seed), 4242])
        pick = _balanced(rng, labels, from_masks, balance)
        for i in pick.tolist():
            mid, iou, rle, bbox, fname, cname = ms[i]
            rows.append({"label": int(labels[i]), "iou": float(iou), "mask_id": int(mid),
                         "image_path": str((root / fname).resolve()), "rle": rle, "bbox": bbox,
                         "category": cname, "source": "campaign-mask"})
    else:
        from orchestrator.campaign.ingest import load_json, read_images, validate_rle

        if results is None or images is None or image_root is None:
            raise LabelpropError("gold: give --results, --images and --image-root (or --from-masks N)")
        results, images, image_root = Path(results), Path(images), Path(image_root)
        if not image_root.is_dir():
            raise LabelpropError(f"{image_root}: image root is not a directory")
        imgs, cats = read_images(images)
        by_img = {im["id"]: im for im in imgs}
        catname = {c["id"]: c["name"] for c in (cats or [])}
        with read_session(engine) as s:
            catname.update({c.id: c.name for c in s.execute(select(Category)).scalars()})
        preds = load_json(results, "COCO results JSON")
        if not isinstance(preds, list) or not preds:
            raise LabelpropError(f"{results}: expected a non-empty list of predictions")
        labels = []
        for i, p in enumerate(preds):
            where = f"{results}: prediction {i}"
            if not isinstance(p, dict):
                raise LabelpropError(f"{where}: not an object")
            iou = p.get("iou")
            if isinstance(iou, bool) or not isinstance(iou, (int, float)) or not 0.0 <= float(iou) <= 1.0:
                raise LabelpropError(f"{where}: gold needs an 'iou' in [0, 1], got {iou!r}")
            im = by_img.get(p.get("image_id"))
            if im is None:
                raise LabelpropError(f"{where}: image_id {p.get('image_id')!r} is not in {images}")
            if not (image_root / im["file_name"]).is_file():
                raise LabelpropError(f"{image_root / im['file_name']}: image file not found ({where})")
            rle, (h, w) = validate_rle(p.get("segmentation"), where)
            if (h, w) != (im["height"], im["width"]):
                raise LabelpropError(f"{where}: mask size {h}x{w} differs from image {im['id']} "
                                     f"({im['height']}x{im['width']})")
            bbox = p.get("bbox")
            labels.append(1 if float(iou) >= kiou else 0)
            rows.append({"label": labels[-1], "iou": float(iou), "mask_id": None,
                         "image_path": str((image_root / im["file_name"]).resolve()), "rle": json.dumps(rle),
                         "bbox": json.dumps([float(x) for x in bbox]) if isinstance(bbox, list) and len(bbox) == 4
                         else None, "category": catname.get(p.get("category_id"), str(p.get("category_id"))),
                         "source": str(results)})
        rng = np.random.default_rng([abs(cfg.campaign.seed), 4243])
        pick = _balanced(rng, np.array(labels), limit, balance)
        rows = [rows[i] for i in pick.tolist()]
    if not rows:
        raise LabelpropError("gold: nothing to add")
    q = cfg.crowd.qualification
    recluster = False
    with transaction(engine) as s:
        if from_masks is not None:
            _refuse_once_searching(engine, d, s)
            forest_row = s.get(ArrayFile, "forest")
            if forest_row is not None:
                # the trees hold the new gold masks: drop them in this transaction, rebuild after
                # with the parameters they were built with
                s.delete(forest_row)
                recluster = True
                last = s.execute(select(Event.payload).where(Event.kind == "cluster").order_by(Event.id.desc())
                                 .limit(1)).scalar()
                built_with = {k: v for k, v in json.loads(last or "{}").items()
                              if k in ("score_weight", "exact_limit", "part_size", "reps", "jobs")}
        n_test = int(s.execute(select(func.count()).select_from(Gold).where(Gold.pool == "test")).scalar_one())
        for r in rows:
            r.update(pool="hit", identifier=None, created_at=utcnow())
        if n_test == 0 and q.enabled and q.questions > 0:
            want = min(q.questions, len(rows) // 3)
            yes = [r for r in rows if r["label"] == 1][: want // 2 + want % 2]
            no = [r for r in rows if r["label"] == 0][: want - len(yes)]
            rng = np.random.default_rng([abs(cfg.campaign.seed), 4244])
            test = [ (yes + no)[i] for i in rng.permutation(len(yes) + len(no)).tolist()]
            for i, r in enumerate(test):
                r["pool"] = "test"
                r["identifier"] = "t" + __import__("hashlib").sha256(
                    f"{cfg.campaign.seed}:{d.resolve()}:{i}".encode()).hexdigest()[:15]
        bulk_insert(s, Gold, rows)
        summary = {"added": len(rows), "yes": sum(r["label"] for r in rows),
                   "test": sum(r["pool"] == "test" for r in rows),
                   "hit": sum(r["pool"] == "hit" for r in rows)}
        log_event(s, "gold_added", **summary, trees_dropped=recluster)
    engine.dispose()
    if recluster:
        # killed here, the campaign simply has no trees: `labelprop cluster` (which any search
        # command asks for) builds them without the gold masks
        from orchestrator.actions.campaign import cluster_campaign

        cluster_campaign(d, db, **built_with)
    summary["reclustered"] = recluster
    return summary


def _refuse_once_searching(engine, d, s=None) -> None:
    """Campaign masks can become gold only before the search has asked anything."""
    from orchestrator.campaign.store import Node, Question, count_rows, read_session

    def check(s):
        if count_rows(s, Node) or count_rows(s, Question):
            raise LabelpropError(f"{d}: the search has started; campaign masks can become gold only before it "
                                 f"(use `labelprop gold --results ...` with held-out predictions instead)")

    if s is not None:
        return check(s)
    with read_session(engine) as s2:
        check(s2)
