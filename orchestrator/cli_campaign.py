"""Campaign commands: ``init``, ``ingest``, ``cluster``, ``export``, ``status``.

Each command reads and writes the campaign directory (``campaign.toml``, the store,
the arrays beside it), so a run can stop after any step and go on later.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import typer

from orchestrator.errors import LabelpropError

__all__ = ["register", "init_campaign", "cluster_campaign", "campaign_status",
           "build_forest_parallel"]

DB_HELP = ("SQLAlchemy URL of the store, overriding the store url in campaign.toml "
           "(e.g. postgresql+psycopg://user@host/labelprop); relative sqlite paths are "
           "relative to DIR.")


# ----------------------------------------------------------------------------------- logic
def _is_campaign(d: Path) -> bool:
    return (d / "campaign.toml").exists() or (d / "campaign.db").exists()


def init_campaign(campaign_dir: str | os.PathLike, name: str | None = None, seed: int = 0,
                  db: str | None = None, backend: str | None = None, force: bool = False,
                  budget_usd: float | None = None, endpoint_url: str | None = None) -> dict:
    """Create DIR, write every parameter to DIR/campaign.toml and create the store."""
    from orchestrator.config import (apply_backend_defaults, config_path, default_config, save_config,
                                     validate_config)
    from orchestrator.store import log_event, open_store, transaction

    d = Path(campaign_dir)
    if d.exists() and not d.is_dir():
        raise LabelpropError(f"{d}: exists and is not a directory")
    if _is_campaign(d) and not force:
        raise LabelpropError(f"{d}: already a campaign (campaign.toml or campaign.db exists); "
                             f"use --force to rewrite campaign.toml")
    created = not d.exists()
    d.mkdir(parents=True, exist_ok=True)
    cfg = default_config(name or d.resolve().name, seed)
    if db:
        cfg.store.url = db
    if backend:
        apply_backend_defaults(cfg, backend)
    if budget_usd is not None:
        cfg.crowd.budget_usd = budget_usd
    if endpoint_url:
        cfg.crowd.endpoint_url = endpoint_url
    try:
        validate_config(cfg, config_path(d))           # a bad option or --db writes nothing
        engine = open_store(d, url=cfg.store.url)
    except LabelpropError:
        if created and not any(d.iterdir()):
            d.rmdir()
        raise
    path = save_config(d, cfg)
    with transaction(engine) as s:
        log_event(s, "init", name=cfg.campaign.name, seed=seed, force=force)
    engine.dispose()
    return {"campaign": str(d), "config": str(path), "store": cfg.store.url}


def _linkage_job(features: np.ndarray, scores: np.ndarray, score_weight: float,
                 exact_limit: int, seed: int) -> np.ndarray:
    from clustering.build import class_linkage, embed

    return class_linkage(embed(features, scores, score_weight), exact_limit, seed)


def build_forest_parallel(features, scores, classes, params, jobs: int = 1,
                          progress: Callable[[int, int, int], None] | None = None,
                          exclude: np.ndarray | None = None):
    """:func:`clustering.build.build_forest` with classes clustered in ``jobs`` processes.

    Gives the same forest as ``build_forest`` (same per-class linkage, same class order).
    ``progress(done, total, class_id)`` is called as each class finishes; masks in ``exclude``
    are in no tree.
    """
    from clustering.build import build_forest, class_members
    from clustering.tree import Forest

    idx = class_members(classes, exclude)
    uniq = np.array(list(idx), np.int64)
    if jobs <= 1 or uniq.shape[0] <= 1:
        cb = (lambda i, t: progress(i, t, int(uniq[i - 1]))) if progress else None
        return build_forest(features, scores, classes, params, progress=cb, exclude=exclude)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    scores64 = np.asarray(scores, np.float64)
    Z: dict[int, np.ndarray] = {}
    # fork where available: workers only run numpy + fastcluster, and spawn would re-run an
    # unguarded __main__ script.  (`labelprop cluster` keeps its own process thread-free:
    # its progress bar refreshes without a background thread.)
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ProcessPoolExecutor(max_workers=min(jobs, uniq.shape[0]), mp_context=ctx) as ex:
        # largest classes first so the pool stays busy
        futs = {ex.submit(_linkage_job, np.asarray(features[idx[c]]), scores64[idx[c]],
                          params.score_weight, params.exact_limit, params.seed): c
                for c in sorted(idx, key=lambda c: -idx[c].shape[0])}
        for done, fut in enumerate(as_completed(futs), start=1):
            c = futs[fut]
            Z[c] = fut.result()
            if progress:
                progress(done, uniq.shape[0], c)
    trees = [Forest.from_linkage(Z[int(c)], scores64, mask_ids=idx[int(c)], class_id=int(c),
                                 n_masks=scores64.shape[0]) for c in uniq]
    return Forest.concat(trees)


def gold_mask_ids(s) -> np.ndarray:
    """Ids of the campaign masks that are gold questions (``labelprop gold --from-masks``): they
    are held out of the trees, so the search never asks or accepts them."""
    from sqlalchemy import select

    from orchestrator.crowd_store import Gold

    ids = s.execute(select(Gold.mask_id).where(Gold.mask_id.is_not(None)).distinct()).scalars().all()
    return np.array(sorted(int(i) for i in ids), np.int64)


def cluster_campaign(campaign_dir, db: str | None = None, score_weight: float | None = None,
                     exact_limit: int | None = None, jobs: int = 1, force: bool = False,
                     progress: Callable[[int, int, int], None] | None = None) -> dict:
    """Build one tree per class from the ingested arrays and save ``forest.npz``."""
    from clustering.build import ClusterParams
    from orchestrator.arrays import load_array, save_arrays_npz
    from orchestrator.config import load_config
    from orchestrator.store import (Answer, Mask, Node, clear_search_state, count_rows,
                                    log_event, open_store, read_session, transaction)

    cfg = load_config(campaign_dir)
    sw = cfg.clustering.score_weight if score_weight is None else score_weight
    el = cfg.clustering.exact_limit if exact_limit is None else exact_limit
    if sw < 0:
        raise LabelpropError(f"--score-weight must be >= 0, got {sw}")
    if el < 2:
        raise LabelpropError(f"--exact-limit must be at least 2, got {el}")
    if jobs < 1:
        raise LabelpropError(f"--jobs must be at least 1, got {jobs}")
    engine = open_store(campaign_dir, db)
    with read_session(engine) as s:
        if count_rows(s, Mask) == 0:
            raise LabelpropError(f"{campaign_dir}: nothing ingested yet; run `labelprop ingest`")
        n_nodes = count_rows(s, Node)
        if n_nodes and not force:
            raise LabelpropError(f"{campaign_dir}: the search has started ({n_nodes} node rows); "
                                 f"--force rebuilds the trees and clears the search state "
                                 f"(answers are kept)")
        features = load_array(s, campaign_dir, "features")
        scores = load_array(s, campaign_dir, "scores")
        classes = load_array(s, campaign_dir, "classes")
        held_out = gold_mask_ids(s)
    if held_out.shape[0] >= scores.shape[0]:
        raise LabelpropError(f"{campaign_dir}: every mask is held out as gold (`labelprop gold "
                             f"--from-masks`); nothing is left to cluster")
    params = ClusterParams(score_weight=float(sw), exact_limit=int(el), seed=cfg.campaign.seed)
    t0 = time.perf_counter()
    forest = build_forest_parallel(features, scores, classes, params, jobs, progress, exclude=held_out)
    secs = time.perf_counter() - t0
    with transaction(engine) as s:
        n_nodes_now = count_rows(s, Node)
        if n_nodes_now and not force:   # a search started while we were clustering
            raise LabelpropError(f"{campaign_dir}: the search started while clustering; "
                                 f"re-run with --force")
        cleared = clear_search_state(s) if force else {}
        save_arrays_npz(s, campaign_dir, "forest", forest.to_npz_dict())
        summary = {"trees": int(forest.roots.shape[0]), "nodes": forest.n_nodes,
                   "masks": forest.n_masks, "held_out_gold": int(held_out.shape[0]),
                   "score_weight": float(sw), "exact_limit": int(el),
                   "jobs": jobs, "seconds": round(secs, 3),
                   "answers_kept": count_rows(s, Answer), **cleared}
        log_event(s, "cluster", **summary)
    engine.dispose()
    return summary




def campaign_status(campaign_dir, db: str | None = None) -> dict:
    """Counts describing the campaign (what `labelprop status --json` prints)."""
    from sqlalchemy import func, select

    from orchestrator.arrays import load_forest
    from orchestrator.config import load_config
    from orchestrator.export import ACCEPTED, REJECTED_STATES, masks_with_state
    from orchestrator.search import NodeState
    from orchestrator.store import (Answer, ArrayFile, Category, Image, Mask, Node, Question,
                                    count_rows, get_meta, open_store, read_session)

    cfg = load_config(campaign_dir)
    names = {int(v): v.name for v in NodeState}
    engine = open_store(campaign_dir, db)
    with read_session(engine) as s:
        n_masks = count_rows(s, Mask)
        out = {
            "campaign": str(campaign_dir), "name": cfg.campaign.name,
            "kind": get_meta(s, "campaign.kind"), "masks": n_masks,
            "classes": count_rows(s, Category), "images": count_rows(s, Image),
            "masks_with_iou": count_rows(s, Mask, Mask.iou.is_not(None)),
            "masks_held_out_as_gold": int(gold_mask_ids(s).shape[0]),
            "trees_built": s.get(ArrayFile, "forest") is not None,
        }
        by_state = dict(s.execute(select(Node.state, func.count()).group_by(Node.state)).all())
        out["nodes_by_state"] = {names.get(int(k), str(k)): int(v)
                                 for k, v in sorted(by_state.items())}
        by_status = dict(s.execute(select(Question.status, func.count())
                                   .group_by(Question.status)).all())
        out["questions"] = {k: int(by_status.get(k, 0))
                            for k in ("pending", "answered", "discarded")}
        out["answers"] = count_rows(s, Answer)
        out["answers_yes"] = count_rows(s, Answer, Answer.label == 1)
        if out["trees_built"]:
            forest = load_forest(s, campaign_dir, verify=False)
            out["trees"] = int(forest.roots.shape[0])
            out["nodes"] = forest.n_nodes
            acc = masks_with_state(s, forest, [ACCEPTED])
            rej = masks_with_state(s, forest, REJECTED_STATES)
            out["accepted_masks"] = int(acc.sum())
            out["rejected_masks"] = int(rej.sum())
            out["undecided_masks"] = int(n_masks - (acc | rej).sum())
        else:
            out.update(trees=0, nodes=0, accepted_masks=0, rejected_masks=0,
                       undecided_masks=n_masks)
        queued = out["nodes_by_state"]
        out["queue"] = {"queued": int(queued.get("QUEUED", 0)), "asking": int(queued.get("ASKING", 0))}
    from orchestrator.poll import crowd_summary       # every backend goes through the poll path

    out["crowd"] = {"backend": cfg.crowd.backend, **crowd_summary(engine, cfg)}
    q = out["questions"]
    if not out["trees_built"]:
        state = "not clustered yet"
    elif q["pending"] == 0 and q["answered"] + q["discarded"] == 0:
        state = "not started"
    elif out["undecided_masks"] == 0 or (out["queue"]["queued"] == 0 and out["queue"]["asking"] == 0
                                          and q["pending"] == 0):
        state = "finished" if out["crowd"]["hits_in_flight"] == 0 else "finishing (HITs in flight)"
    else:
        state = "running"
    out["state"] = state
    engine.dispose()
    return out


# ------------------------------------------------------------------------------ commands
def register(app: typer.Typer) -> None:
    app.command("init")(init_cmd)
    app.command("ingest")(ingest_cmd)
    app.command("cluster")(cluster_cmd)
    app.command("export")(export_cmd)
    app.command("status")(status_cmd)


def _echo_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, sort_keys=False))


def init_cmd(
    campaign_dir: Path = typer.Argument(..., metavar="DIR", help="Campaign directory to create."),
    name: Optional[str] = typer.Option(None, help="Campaign name (default: the directory name)."),
    seed: int = typer.Option(0, help="Seed for every random draw of the campaign."),
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
    backend: Optional[str] = typer.Option(None, help="Crowd backend: simulated (default), server (the "
                                          "bundled crowd server) or mturk. Sets defaults that suit it."),
    budget_usd: Optional[float] = typer.Option(None, "--budget-usd", help="Spending limit in USD, fees "
                                               "included (crowd.budget_usd; MTurk production needs one)."),
    endpoint_url: Optional[str] = typer.Option(None, "--endpoint-url", help="The crowd platform's URL "
                                               "(crowd.endpoint_url), e.g. the bundled crowd server's."),
    force: bool = typer.Option(False, "--force", help="Rewrite campaign.toml of an existing "
                               "campaign (the store is kept)."),
) -> None:
    """Create a campaign: DIR/campaign.toml with every parameter, and the store.

    Example: labelprop init runs/coco-person --seed 1

    Example (the bundled crowd server): labelprop init runs/c1 --backend server

    Example: labelprop init runs/c1 --backend mturk --budget-usd 50
    """
    if budget_usd is not None and budget_usd < 0:
        raise LabelpropError(f"--budget-usd must be >= 0, got {budget_usd}")
    info = init_campaign(campaign_dir, name, seed, db, backend, force, budget_usd, endpoint_url)
    typer.echo(f"campaign {info['campaign']}: wrote {info['config']}; store {info['store']}")


def ingest_cmd(
    campaign_dir: Path = typer.Argument(..., metavar="DIR", help="Campaign directory."),
    triplets: Optional[Path] = typer.Option(None, help="Simulation triplets .npz (features, "
                                            "scores, classes, optional ious)."),
    results: Optional[Path] = typer.Option(None, help="COCO results JSON with RLE masks."),
    features: Optional[Path] = typer.Option(None, help="features.npy, row i for result i."),
    images: Optional[Path] = typer.Option(None, help="COCO images JSON (dataset dict with "
                                          "images and categories, or a list of images)."),
    image_root: Optional[Path] = typer.Option(None, help="Directory holding the image files."),
    replace: bool = typer.Option(False, "--replace", help="Replace masks ingested before "
                                 "(drops the trees and search state; refused once answers exist)."),
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """Validate mask predictions and load them into the campaign (all or nothing).

    Example: labelprop ingest runs/c1 --results det.json --features feats.npy \\
        --images instances_val.json --image-root images/

    Example (simulation triplets): labelprop ingest runs/sim --triplets t.npz
    """
    from orchestrator.config import load_config
    from orchestrator.ingest import read_predictions, read_triplet_predictions, write_predictions
    from orchestrator.store import open_store

    coco = [results, features, images, image_root]
    if triplets is not None and any(x is not None for x in coco):
        raise LabelpropError("ingest: give either --triplets or the COCO inputs, not both")
    if triplets is None:
        missing = [n for n, v in zip(("--results", "--features", "--images", "--image-root"), coco)
                   if v is None]
        if missing:
            raise LabelpropError(f"ingest: missing {', '.join(missing)} (or give --triplets X.npz)")
    load_config(campaign_dir)
    t0 = time.perf_counter()
    p = (read_triplet_predictions(triplets) if triplets is not None
         else read_predictions(results, features, images, image_root))
    engine = open_store(campaign_dir, db)
    summary = write_predictions(engine, campaign_dir, p, replace=replace)
    engine.dispose()
    typer.echo(f"ingested {summary['masks']} masks, {summary['classes']} classes"
               + (f", {summary['images']} images" if summary["images"] else "")
               + f" into {campaign_dir} in {time.perf_counter() - t0:.1f} s")


def cluster_cmd(
    campaign_dir: Path = typer.Argument(..., metavar="DIR", help="Campaign directory."),
    score_weight: Optional[float] = typer.Option(None, help="Weight of the mask score next to "
                                                 "the features (default: campaign.toml)."),
    exact_limit: Optional[int] = typer.Option(None, help="Classes above this many masks are "
                                              "clustered in two levels (default: campaign.toml)."),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Classes clustered in parallel."),
    force: bool = typer.Option(False, "--force", help="Rebuild although the search has started; "
                               "clears the search state (answers are kept)."),
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """Cluster each class's masks into a binary tree (complete linkage); saves forest.npz.

    Example: labelprop cluster runs/c1 --jobs 2
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, \
        TimeElapsedColumn

    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=False,
                  auto_refresh=False) as bar:
        task = bar.add_task("clustering classes", total=None)
        bar.refresh()

        def progress(done: int, total: int, class_id: int) -> None:
            bar.update(task, completed=done, total=total,
                       description=f"clustered class {class_id}")
            bar.refresh()

        summary = cluster_campaign(campaign_dir, db, score_weight, exact_limit, jobs, force,
                                   progress)
    typer.echo(f"built {summary['trees']} trees ({summary['nodes']} nodes over "
               f"{summary['masks']} masks) in {summary['seconds']:.1f} s -> "
               f"{Path(campaign_dir) / 'forest.npz'}")


def export_cmd(
    campaign_dir: Path = typer.Argument(..., metavar="DIR", help="Campaign directory."),
    coco: Optional[Path] = typer.Option(None, help="Write accepted masks as COCO instances JSON."),
    indices: Optional[Path] = typer.Option(None, help="Write accepted mask ids (.npy or .txt)."),
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """Export the accepted masks (every mask under an accepted node).

    Example: labelprop export runs/c1 --coco accepted.json

    Example (triplet campaign): labelprop export runs/sim --indices accepted.npy
    """
    from orchestrator.config import load_config
    from orchestrator.export import export_coco, export_indices
    from orchestrator.store import open_store

    if coco is None and indices is None:
        raise LabelpropError("export: give --coco OUT.json and/or --indices OUT.npy|.txt")
    load_config(campaign_dir)
    engine = open_store(campaign_dir, db)
    for out, fn in ((coco, export_coco), (indices, export_indices)):
        if out is not None:
            info = fn(engine, campaign_dir, out)
            typer.echo(f"wrote {info['accepted_masks']} accepted masks to {info['out']}")
    engine.dispose()


def status_cmd(
    campaign_dir: Path = typer.Argument(..., metavar="DIR", help="Campaign directory."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """Show masks, classes, trees, nodes by state, questions and accepted masks.

    Example: labelprop status runs/c1 --json
    """
    st = campaign_status(campaign_dir, db)
    if as_json:
        _echo_json(st)
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"campaign {st['name']} ({st['campaign']})", show_header=False)
    t.add_column("what", style="bold")
    t.add_column("value", justify="right")
    cr = st.get("crowd")
    work = "" if not cr else (f"{cr['work_hours']:.1f} h" if cr["work_hours"] >= 1 else
                              f"{cr['work_hours'] * 60:.0f} min")
    t.add_row("state", st["state"] + (f": ${cr['spent_usd']:.2f} spent, {work} of work"
                                      if cr and st["state"] == "finished" else ""))
    t.add_row("kind", str(st["kind"] or "-"))
    t.add_row("masks (accepted + rejected + undecided)", f"{st['masks']:,}")
    t.add_row("  accepted masks", f"{st['accepted_masks']:,}")
    t.add_row("  rejected masks", f"{st['rejected_masks']:,}")
    t.add_row("  undecided masks", f"{st['undecided_masks']:,}")
    if st["masks_held_out_as_gold"]:
        t.add_row("  held out as gold", str(st["masks_held_out_as_gold"]))
    t.add_row("classes", str(st["classes"]))
    t.add_row("images", str(st["images"]))
    t.add_row("trees built", f"yes ({st['trees']} trees, {st['nodes']} nodes)"
              if st["trees_built"] else "no")
    for k, v in st["nodes_by_state"].items():
        t.add_row(f"nodes {k.lower()}", str(v))
    q = st["questions"]
    t.add_row("questions pending / answered / re-asked", f"{q['pending']} / {q['answered']} / {q['discarded']}")
    t.add_row("answers (yes)", f"{st['answers']} ({st['answers_yes']})")
    t.add_row("queue (queued / asking nodes)", f"{st['queue']['queued']} / {st['queue']['asking']}")
    console = Console()
    if cr is not None:
        t.add_row("crowd backend", cr["backend"])
        t.add_row("HITs in flight / posted", f"{cr['hits_in_flight']} / {cr['hits_posted']}")
        t.add_row("assignments approved / rejected",
                  f"{cr['assignments_approved']} / {cr['assignments_rejected']}")
        if cr["answers_held"]:
            t.add_row("answers held (workers on probation)",
                      f"{cr['answers_held']} ({cr['workers_on_probation_with_held_answers']} workers)")
        b = f" of ${cr['budget_usd']:.2f}" if cr["budget_usd"] else " (no budget)"
        t.add_row("spent", f"${cr['spent_usd']:.2f}{b} (${cr['committed_usd']:.2f} committed)")
        t.add_row("work", work)
        t.add_row("gold questions", str(cr["gold_questions"]))
    console.print(t)
    if cr is not None and cr["workers"]:
        w = Table(title="workers, best first", caption="score: gold accuracy and agreement with the other "
                  "answers of their clusters; s/q: median seconds per question; fast: HITs flagged too fast")
        for col in ("#", "worker", "score", "HITs", "ok/rej", "gold", "agree", "s/q", "fast", "state"):
            w.add_column(col, justify="left" if col in ("worker", "state") else "right",
                         no_wrap=col in ("worker", "gold", "state"))
        for r in cr["workers"]:
            acc = "-" if r["gold_accuracy"] is None else f"{r['gold_accuracy']:.2f}"
            ag = "-" if r["mean_agreement"] is None else f"{r['mean_agreement']:.2f}"
            sec = "-" if r["median_seconds_per_question"] is None else f"{r['median_seconds_per_question']:.1f}"
            w.add_row(str(r["rank"]), r["worker_id"], f"{r['score']:.2f}", str(r["assignments"]),
                      f"{r['approved']}/{r['rejected']}", acc, ag, sec, str(r["flagged"]), r["state"])
        console.print(w)
