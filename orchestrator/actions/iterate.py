"""The next round of a campaign (``labelprop iterate``): retrain on the accepted masks, detect
again, ingest and cluster the new masks.

The steps of a round are in :mod:`orchestrator.campaign.iterate` (pure) and the rounds in the store
in :mod:`orchestrator.campaign.rounds`.  Training and detection run as ``labelprop train`` and
``labelprop detect`` in a subprocess, as a user would run them: the orchestrator never
imports the detection package (a polling machine needs no torch), and both commands resume
after a kill.  Every step is journaled in the store (``CampaignRound.step``), so a killed
``iterate`` resumes at the step it was in, with the inputs the round was started with.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from orchestrator.errors import LabelpropError
from orchestrator.search.params import ParamError
from orchestrator.campaign.iterate import PREP_STEPS, OverlapRule, RoundPlan, detect_argv, overlapping, \
    train_argv

__all__ = ["iterate_campaign"]


# ------------------------------------------------------------------------------ inputs
def _read_json(path: Path, what: str):
    if not path.is_file():
        raise LabelpropError(f"{path}: no such file ({what})")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LabelpropError(f"{path}: not valid JSON ({str(exc).splitlines()[0]})") from None


def _model_info(weights: Path) -> tuple[Path, dict, dict]:
    """(weights file, labelprop_model.json, solver settings from config.yaml) of a model."""
    if weights.is_dir():
        d = weights
        f = d / "model_final.pth"
        if not f.is_file():
            raise LabelpropError(f"{d}: no model_final.pth (not a finished `labelprop train` "
                                 f"output directory)")
    elif weights.is_file():
        d, f = weights.parent, weights
    else:
        raise LabelpropError(f"{weights}: no such weights file or directory")
    info = _read_json(d / "labelprop_model.json", "the model's labelprop_model.json, written by "
                      "`labelprop train`")
    solver = {}
    try:
        import yaml

        cfg = yaml.safe_load((d / "config.yaml").read_text()) or {}
        sv = cfg.get("SOLVER", {})
        solver = {"iters": sv.get("MAX_ITER"), "batch": sv.get("IMS_PER_BATCH")}
    except (ImportError, OSError, ValueError, AttributeError):
        pass
    return f.resolve(), info, solver


def _round_one_provenance(s, campaign_dir: Path) -> dict:
    """What round 1 was detected with, from the ingested detector output (``detect.json``
    beside the results that `labelprop ingest` read)."""
    from orchestrator.campaign.rounds import ingest_sources

    src = ingest_sources(s)
    if not src or "results" not in src:
        raise LabelpropError(f"{campaign_dir}: the campaign was not started from detections "
                             f"(it was ingested from triplets); iterate needs masks from "
                             f"`labelprop detect`")
    results = Path(src["results"])
    det_file = results.parent / "detect.json"
    if not det_file.is_file():
        raise LabelpropError(f"{det_file}: not found: the campaign was not started from "
                             f"`labelprop detect` output (its results {results} have no detect.json "
                             f"beside them); give --weights and --images")
    det = _read_json(det_file, "detect.json")
    fp = det.get("fingerprint", {})
    return {"weights": fp.get("weights"), "images": str((results.parent / "images.json").resolve()),
            "image_root": str(Path(det.get("image_root") or src.get("image_root")).resolve()),
            "detect": {k: fp.get(k) for k in ("min_score", "min_area", "nms", "max_per_image")},
            "detections": str(results.parent.resolve())}


def _plan_next(s, campaign_dir: Path, r: int, opts: dict) -> tuple[RoundPlan, dict | None]:
    """The plan of round ``r + 1`` (options over what the campaign recorded), validated;
    and round 1's provenance when round 1 has no row yet."""
    from orchestrator.campaign.arrays import array_row
    from orchestrator.campaign.rounds import round_row

    prev = round_row(s, r)
    first = None
    if prev is not None and prev.plan not in ("", "{}"):
        recorded = json.loads(prev.plan)
        base = {"weights": str(Path(recorded["out"]) / "model" / "model_final.pth")
                if recorded.get("out") else recorded.get("weights"),
                "images": recorded["images"], "image_root": recorded["image_root"],
                "detect": recorded.get("detect", {}), "train": recorded["train"],
                "preset": recorded.get("preset"), "norm": recorded.get("norm"),
                "gt": recorded.get("gt")}
    else:
        if opts.get("weights") and opts.get("images"):
            base = {"weights": None, "images": None, "image_root": None, "detect": {}}
            try:
                base = {**base, **_round_one_provenance(s, campaign_dir)}
            except LabelpropError:
                pass
        else:
            base = _round_one_provenance(s, campaign_dir)
        first = dict(base)
    weights = Path(opts.get("weights") or base.get("weights") or "")
    if not str(weights) or str(weights) == ".":
        raise LabelpropError(f"{campaign_dir}: unknown model of round {r}; give --weights")
    wfile, info, solver = _model_info(weights)
    images = opts.get("images") or base.get("images")
    image_root = opts.get("image_root") or (None if opts.get("images") else base.get("image_root"))
    if images is None:
        raise LabelpropError(f"{campaign_dir}: unknown pool images; give --images")
    images_p = Path(images)
    if not images_p.exists():
        raise LabelpropError(f"{images_p}: no such file or directory (the pool images)")
    if image_root is not None and not Path(image_root).is_dir():
        raise LabelpropError(f"{image_root}: image root is not a directory")
    if images_p.is_dir():
        image_root = str(images_p)
    elif image_root is None:
        image_root = str((images_p.parent / "images") if (images_p.parent / "images").is_dir()
                         else images_p.parent)
    # the initial training set: given, else what round 2 recorded, else the model's own
    if opts.get("train_data"):
        roots = list(opts.get("train_roots") or [])
        data = list(opts["train_data"])
        if roots and len(roots) not in (1, len(data)):
            raise LabelpropError(f"--train-root: give one, or one per --train-data ({len(data)})")
        train = []
        for i, d in enumerate(data):
            root = Path(roots[0] if len(roots) == 1 else roots[i]) if roots else (
                Path(d).parent / "images" if (Path(d).parent / "images").is_dir() else Path(d).parent)
            train.append([str(Path(d).resolve()), str(root.resolve())])
    elif base.get("train"):
        train = base["train"]
    else:
        train = [[t["json"], t["image_root"]] for t in info.get("train", [])]
    if not train:
        raise LabelpropError(f"{wfile.parent}/labelprop_model.json names no training data; "
                             f"give --train-data COCO.json")
    for f, root in train:
        if not Path(f).is_file():
            raise LabelpropError(f"{f}: no such file (the initial training data; give "
                                 f"--train-data)")
        if not Path(root).is_dir():
            raise LabelpropError(f"{root}: image root of {f} is not a directory")
    has_iou = array_row(s, "ious") is not None
    gt = opts.get("gt") or base.get("gt")
    if has_iou and not gt:
        raise LabelpropError(f"{campaign_dir}: its masks carry ground-truth IoUs (a simulated "
                             f"crowd); give --gt POOL_GT.json so round {r + 1}'s masks get them too")
    if gt and not has_iou:
        raise LabelpropError(f"--gt {gt}: the campaign's masks have no ground-truth IoUs, so "
                             f"round {r + 1}'s cannot have them either")
    if gt and not Path(gt).is_file():
        raise LabelpropError(f"{gt}: no such file (--gt)")
    plan = RoundPlan(round=r + 1, weights=str(wfile), train=train,
                     images=str(images_p.resolve()),
                     image_root=str(Path(image_root).resolve()) if image_root else None,
                     preset=opts.get("preset") or info.get("preset") or "default",
                     norm=info.get("norm") or "GN",
                     iters=opts.get("iters") or solver.get("iters"),
                     batch=opts.get("batch") or solver.get("batch"),
                     detect=dict(base.get("detect") or {}),
                     gt=str(Path(gt).resolve()) if gt else None,
                     threads=opts.get("threads"), device=opts.get("device") or "cpu")
    if first is not None:
        first = {"weights": str(wfile), "images": plan.images, "image_root": plan.image_root,
                 "detect": plan.detect, "train": train, "preset": plan.preset, "norm": plan.norm,
                 "gt": plan.gt}
    return plan, first


# ------------------------------------------------------------------------------ steps
def _labelprop(argv: list[str], what: str, r: int, campaign_dir, capture: bool) -> None:
    cmd = [sys.executable, "-m", "orchestrator.cli", *argv]
    env = {**os.environ}
    # stdout (the command's summary and its "next:" hint) is iterate's business; stderr
    # (progress bars, messages) goes to the user unless ``capture``
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE if capture else None,
                       text=True, env=env)
    if p.returncode != 0:
        last = ""
        if capture:
            lines = (p.stderr or "").strip().splitlines()
            last = ": " + lines[-1].removeprefix("labelprop: error: ") if lines else ""
        raise LabelpropError(f"iterate: round {r}: `labelprop {what}` failed (exit {p.returncode})"
                             f"{last}; fix that and rerun `labelprop iterate {campaign_dir}` "
                             f"(it resumes)")


def _accepted_files(engine, campaign_dir: Path, r: int, rdir: Path) -> list[tuple[str, str]]:
    """Write the accepted masks of rounds 1..r-1 as COCO, one file per image root; returns
    [(file, image root)].  Deterministic: a rerun writes the same files."""
    from orchestrator.atomic import atomic_write_text
    from orchestrator.campaign.export import coco_instances
    from orchestrator.campaign.rounds import frozen_decisions, mask_rounds
    from sqlalchemy import select

    from orchestrator.campaign.store import CampaignRound, Mask, count_rows, read_session

    with read_session(engine) as s:
        n = count_rows(s, Mask)
        acc, _ = frozen_decisions(s, campaign_dir, n)
        mr = mask_rounds(s, n)
        roots = {}
        for row in s.execute(select(CampaignRound)).scalars():
            roots[row.round] = json.loads(row.plan).get("image_root")
        by_root: dict[str, list[int]] = {}
        for k in range(1, r):
            ids = np.flatnonzero(acc & (mr == k))
            if ids.size:
                by_root.setdefault(roots.get(k) or "", []).extend(ids.tolist())
        out = []
        for i, (root, ids) in enumerate(sorted(by_root.items())):
            data = coco_instances(s, np.asarray(sorted(ids), np.int64))
            used = {a["image_id"] for a in data["annotations"]}
            data["images"] = [im for im in data["images"] if im["id"] in used]
            f = rdir / f"accepted-{i + 1}.json"
            atomic_write_text(f, json.dumps(data))
            out.append((str(f.resolve()), root))
    if not out:
        raise LabelpropError(f"{campaign_dir}: no accepted masks to train on")
    return out


def _ingest_step(engine, campaign_dir: Path, r: int, plan: RoundPlan, rdir: Path, rule: OverlapRule,
                 say) -> dict:
    """Drop new detections overlapping accepted masks; add the rest as round ``r``'s masks."""
    from orchestrator.campaign.arrays import atomic_save_npy
    from orchestrator.atomic import atomic_write_text
    from orchestrator.campaign.ingest import read_predictions
    from orchestrator.campaign.rounds import append_round_masks, frozen_decisions
    from sqlalchemy import select

    from orchestrator.campaign.store import Mask, chunks, count_rows, read_session, transaction

    dets = rdir / "dets"
    results = _read_json(dets / "results.json", "detections of the retrained model")
    feats = np.load(dets / "features.npy", allow_pickle=False)
    with read_session(engine) as s:
        n = count_rows(s, Mask)
        acc, _ = frozen_decisions(s, campaign_dir, n)
        acc_rows = []
        for part in chunks(np.flatnonzero(acc).tolist()):
            acc_rows += s.execute(select(Mask.image_id, Mask.rle).where(Mask.id.in_(part))
                                  .order_by(Mask.id)).all()
    acc_rles = []
    for _, t in acc_rows:
        d = json.loads(t)
        acc_rles.append({"size": d["size"], "counts": d["counts"].encode("ascii")})
    new_rles = []
    for i, res in enumerate(results):
        seg = res.get("segmentation") if isinstance(res, dict) else None
        if not isinstance(seg, dict) or not isinstance(seg.get("counts"), str):
            raise LabelpropError(f"{dets / 'results.json'}: result {i}: expected an RLE segmentation")
        new_rles.append({"size": seg["size"], "counts": seg["counts"].encode("ascii")})
    drop, best_iou, best_in = overlapping(
        new_rles, np.asarray([res["image_id"] for res in results], np.int64), acc_rles,
        np.asarray([iid for iid, _ in acc_rows], np.int64), rule)
    keep = np.flatnonzero(~drop)
    kept = [results[i] for i in keep.tolist()]
    if plan.gt:
        from orchestrator.search.triplets import match_ious

        ious = match_ious(_read_json(Path(plan.gt), "--gt ground truth"), kept, plan.gt,
                          str(dets / "results.json"))
        for res, q in zip(kept, ious.tolist()):
            res["iou"] = float(q)
    if not kept:
        raise LabelpropError(f"iterate: round {r}: the retrained model found no new masks "
                             f"({len(results)} detections, {int(drop.sum())} of them overlapping "
                             f"accepted masks); raise overlap_iou / overlap_inside in the iterate "
                             f"section of {campaign_dir / 'campaign.toml'} and rerun, or give "
                             f"the round more images")
    new = rdir / "new"
    new.mkdir(exist_ok=True)
    atomic_write_text(new / "results.json", json.dumps(kept))
    atomic_save_npy(new / "features.npy", np.asarray(feats, np.float32)[keep])
    p = read_predictions(new / "results.json", new / "features.npy", dets / "images.json",
                         plan.image_root or Path(plan.images))
    with transaction(engine) as s:
        info = append_round_masks(s, campaign_dir, r, p)
    info.update(detections=len(results), dropped_overlapping=int(drop.sum()))
    say(f"round {r}: {len(results)} detections, {int(drop.sum())} dropped as overlapping an "
        f"accepted mask (IoU >= {rule.iou} or >= {rule.inside:.0%} inside one), "
        f"{info['masks']} new masks")
    return info


def iterate_campaign(campaign_dir, *, db: str | None = None, train_data: list | None = None,
                     train_roots: list | None = None, images: str | None = None,
                     image_root: str | None = None, weights: str | None = None,
                     iters: int | None = None, batch: int | None = None, preset: str | None = None,
                     gt: str | None = None, threads: int | None = None, device: str | None = None,
                     quiet: bool = False, capture: bool = False,
                     say: Callable[[str], None] = lambda m: None) -> dict:
    """Prepare the next round of the campaign (or finish the one being prepared)."""
    from orchestrator.campaign.config import load_config
    from orchestrator.campaign.export import ACCEPTED, masks_with_state
    from orchestrator.campaign.rounds import current_round, freeze_and_start, round_dir, round_row, set_step
    from sqlalchemy import select

    from orchestrator.campaign.store import ArrayFile, CampaignRound, Mask, Question, count_rows, get_meta, \
        open_store, read_session, transaction

    d = Path(campaign_dir)
    cfg = load_config(d)
    rule = OverlapRule(iou=cfg.iterate.overlap_iou, inside=cfg.iterate.overlap_inside)
    if iters is not None and iters < 1:
        raise ParamError("iters", f"must be at least 1, got {iters}")
    engine = open_store(d, db)
    opts = {"train_data": train_data, "train_roots": train_roots, "images": images,
            "image_root": image_root, "weights": weights, "iters": iters, "batch": batch,
            "preset": preset, "gt": gt, "threads": threads, "device": device}
    with read_session(engine) as s:
        r = current_round(s)
        row = round_row(s, r)
        resuming = row is not None and row.step in PREP_STEPS
        if resuming:
            plan = RoundPlan.from_dict(json.loads(row.plan))
            step = row.step
        else:
            if count_rows(s, Mask) == 0:
                raise LabelpropError(f"{d}: nothing ingested yet; ingest detections first")
            if get_meta(s, "campaign.kind") != "coco":
                raise LabelpropError(f"{d}: the campaign was not started from detections (it "
                                     f"holds simulation triplets); iterate needs masks from "
                                     f"`labelprop detect`")
            if s.get(ArrayFile, "forest") is None:
                raise LabelpropError(f"{d}: round {r} has no trees yet; run `labelprop cluster "
                                     f"{d}` and search it before iterating")
            from orchestrator.campaign.arrays import load_forest

            n_acc = int(masks_with_state(s, load_forest(s, d), [ACCEPTED]).sum())
            if n_acc == 0:
                raise LabelpropError(f"{d}: round {r} has no accepted masks yet; search it first "
                                     f"(`labelprop run {d}`) and iterate once it has accepted masks")
            pending = count_rows(s, Question, Question.status == "pending")
            if pending:
                raise LabelpropError(f"{d}: round {r} still has {pending} questions out; let "
                                     f"`labelprop run {d}` finish them (or expire its HITs) first")
            plan, first = _plan_next(s, d, r, opts)
    if not resuming:
        from orchestrator.crowd.poll import crowd_summary

        if crowd_summary(engine, cfg)["hits_in_flight"]:
            raise LabelpropError(f"{d}: round {r} has HITs in flight; let `labelprop run {d}` "
                                 f"finish them first")
        with transaction(engine) as s:
            if current_round(s) != r:          # another iterate started it meanwhile
                raise LabelpropError(f"{d}: round {r + 1} was started meanwhile; rerun iterate")
            plan.out = str(round_dir(d, r + 1).resolve())
            info = freeze_and_start(s, d, r, plan.to_dict(), first)
        (d / "forest.npz").unlink(missing_ok=True)     # archived as rounds/round-N/forest.npz
        say(f"round {r} frozen: {info['accepted']} accepted and {info['rejected']} rejected of "
            f"{info['masks']} masks; preparing round {r + 1}")
        r, step = r + 1, "train"
    else:
        say(f"resuming round {r} at step {step} (with the inputs it was started with)")
    rdir = round_dir(d, r)
    rdir.mkdir(parents=True, exist_ok=True)
    out: dict = {"round": r, "resumed": resuming}
    if step == "train":
        acc_files = _accepted_files(engine, d, r, rdir)
        say(f"round {r}: training {rdir / 'model'} on {len(plan.train)} initial file(s) + "
            f"{len(acc_files)} file(s) of accepted masks, from {plan.weights}")
        _labelprop(train_argv(plan, acc_files, str(rdir / "model"), quiet), "train", r, d, capture)
        with transaction(engine) as s:
            set_step(s, r, "detect")
        step = "detect"
    if step == "detect":
        say(f"round {r}: detecting on {plan.images}")
        _labelprop(detect_argv(plan, str(rdir / "model"), str(rdir / "dets"), quiet), "detect", r,
                   d, capture)
        with transaction(engine) as s:
            set_step(s, r, "ingest")
        step = "ingest"
    if step == "ingest":
        out.update(_ingest_step(engine, d, r, plan, rdir, rule, say))
        step = "cluster"
    if step == "cluster":
        from orchestrator.actions.campaign import cluster_campaign

        with read_session(engine) as s:
            built = s.get(ArrayFile, "forest") is not None
        if not built:
            say(f"round {r}: clustering its masks")
            c = cluster_campaign(d, db)
            out.update(trees=c["trees"], nodes=c["nodes"])
        with transaction(engine) as s:
            set_step(s, r, "open")
    with read_session(engine) as s:
        out["masks"] = count_rows(s, Mask, Mask.round == r)
        out["accepted_earlier_rounds"] = int(sum(x.accepted for x in
                                                 s.execute(select(CampaignRound)).scalars()))
    engine.dispose()
    return out
