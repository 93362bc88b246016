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


def build_forest_parallel(features, scores, classes, params, jobs: int = 1,
                          progress: Callable[[int, int, int], None] | None = None,
                          exclude: np.ndarray | None = None, ray_address: str | None = None):
    """:func:`clustering.build.build_forest` with the units in ``jobs`` processes or on Ray.

    Gives the same forest as ``build_forest`` (same units, same stitching, same class order).
    ``progress(done, total, class_id)`` is called as each class finishes; masks in ``exclude``
    are in no tree.
    """
    from clustering.build import class_members, forest_from_linkages
    from orchestrator.clusterrun import run_classes

    members = class_members(classes, exclude)
    scores64 = np.asarray(scores, np.float64)
    links: dict[int, np.ndarray] = {}

    def done(c: int, z: np.ndarray) -> None:
        links[c] = z
        if progress:
            progress(len(links), len(members), c)

    run_classes(features, scores64, members, params, done, jobs=jobs, ray_address=ray_address)
    return forest_from_linkages(links, members, scores64)


def gold_mask_ids(s) -> np.ndarray:
    """Ids of the campaign masks that are gold questions (``labelprop gold --from-masks``): they
    are held out of the trees, so the search never asks or accepts them."""
    from sqlalchemy import select

    from orchestrator.crowd_store import Gold

    ids = s.execute(select(Gold.mask_id).where(Gold.mask_id.is_not(None)).distinct()).scalars().all()
    return np.array(sorted(int(i) for i in ids), np.int64)


TREES_DIR = "trees"
_TREES_VERSION = 2          # bump when the algorithm changes what a class tree is


def _tree_fingerprint(s, params, held_out: np.ndarray) -> str:
    """Identifies the per-class trees of one parameter set on one set of inputs."""
    import hashlib

    from orchestrator.store import ArrayFile

    src = {"v": _TREES_VERSION, "score_weight": params.score_weight,
           "exact_limit": params.exact_limit, "part_size": params.part_size,
           "reps": params.n_reps, "seed": params.seed,
           "held_out": hashlib.sha256(np.ascontiguousarray(held_out, np.int64).tobytes()).hexdigest()}
    for name in ("features", "scores", "classes"):
        src[name] = s.get(ArrayFile, name).sha256
    return hashlib.sha256(json.dumps(src, sort_keys=True).encode()).hexdigest()[:16]


def _tree_rows(s) -> list:
    from sqlalchemy import select

    from orchestrator.store import ArrayFile

    return list(s.execute(select(ArrayFile).where(ArrayFile.name.like("tree/%"))).scalars())


def _sweep_tree_files(campaign_dir: Path, keep: set[str]) -> None:
    """Remove files under DIR/trees that no ArrayFile row references (left by a killed run)."""
    root = campaign_dir / TREES_DIR
    if not root.is_dir():
        return
    for f in sorted(root.rglob("*"), reverse=True):
        rel = f.relative_to(campaign_dir).as_posix()
        if f.is_file() and rel not in keep and rel.removesuffix(".new") not in keep:
            f.unlink(missing_ok=True)
        elif f.is_dir() and not any(f.iterdir()):
            f.rmdir()
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()


def resolve_cluster_params(cfg, d: int, score_weight: float | None = None,
                           exact_limit: int | None = None, part_size: int | None = None,
                           reps: int | None = None):
    """The :class:`~clustering.build.ClusterParams` of a run: options over campaign.toml; an
    exact limit of 0 is derived from the machine's memory."""
    from clustering.build import ClusterParams
    from clustering.memory import default_exact_limit
    from orchestrator.clusterrun import total_memory

    sw = cfg.clustering.score_weight if score_weight is None else score_weight
    el = cfg.clustering.exact_limit if exact_limit is None else exact_limit
    ps = cfg.clustering.part_size if part_size is None else part_size
    nr = cfg.clustering.reps if reps is None else reps
    if sw < 0:
        raise LabelpropError(f"--score-weight must be >= 0, got {sw}")
    if el != 0 and el < 2:
        raise LabelpropError(f"--exact-limit must be at least 2 (or 0: from the machine's memory), got {el}")
    if ps < 2:
        raise LabelpropError(f"--part-size must be at least 2, got {ps}")
    if nr < 1:
        raise LabelpropError(f"--reps must be at least 1, got {nr}")
    if el == 0:
        el = default_exact_limit(total_memory(), d)
    return ClusterParams(score_weight=float(sw), exact_limit=int(el), seed=cfg.campaign.seed,
                         part_size=int(ps), n_reps=int(nr))


def cluster_campaign(campaign_dir, db: str | None = None, score_weight: float | None = None,
                     exact_limit: int | None = None, jobs: int = 1, force: bool = False,
                     progress: Callable[[str, int, int, int], None] | None = None,
                     part_size: int | None = None, reps: int | None = None,
                     ray: str | None = None, max_memory: str | int | None = None,
                     tick: Callable[[], None] | None = None,
                     plan: Callable[[dict], None] | None = None) -> dict:
    """Build one tree per class from the ingested arrays and save ``forest.npz``.

    Each class's tree is saved as it finishes (``DIR/trees/<fingerprint>/class-<id>.npy``,
    journaled like every array beside the store), so a run that is killed resumes with the
    classes not yet done when it is run again with the same parameters; the per-class files
    are removed once ``forest.npz`` is committed.  Before any work the peak memory is
    predicted and compared with the memory available (or ``max_memory``).  ``plan(info)``
    is called once with the classes to cluster, before the work starts.
    """
    from clustering.build import class_members, forest_from_linkages
    from orchestrator.arrays import load_array, save_array, save_arrays_npz
    from orchestrator.clusterrun import available_memory, check_memory, parse_size, run_classes
    from orchestrator.config import load_config
    from orchestrator.store import (Answer, Mask, Node, clear_search_state, count_rows,
                                    log_event, open_store, read_session, transaction)

    cfg = load_config(campaign_dir)
    d_ = Path(campaign_dir)
    if jobs < 1:
        raise LabelpropError(f"--jobs must be at least 1, got {jobs}")
    if ray is not None and not str(ray).strip():
        raise LabelpropError("--ray: give the address of a Ray cluster (host:port or ray://host:port)")
    limit = None
    if max_memory is not None:
        limit = parse_size(max_memory) if isinstance(max_memory, str) else int(max_memory)
    engine = open_store(campaign_dir, db)
    with read_session(engine) as s:
        if count_rows(s, Mask) == 0:
            raise LabelpropError(f"{campaign_dir}: nothing ingested yet; run `labelprop ingest`")
        n_nodes = count_rows(s, Node)
        if n_nodes and not force:
            raise LabelpropError(f"{campaign_dir}: the search has started ({n_nodes} node rows); "
                                 f"--force rebuilds the trees and clears the search state "
                                 f"(answers are kept)")
        from orchestrator.rounds import check_not_preparing, earlier_round_mask_ids

        check_not_preparing(s, campaign_dir, "clustering")
        features = load_array(s, campaign_dir, "features", mmap=True)
        scores = np.asarray(load_array(s, campaign_dir, "scores"), np.float64)
        classes = load_array(s, campaign_dir, "classes")
        # gold masks and the masks of earlier (frozen) rounds are in no tree of this round
        held_out = np.union1d(gold_mask_ids(s), earlier_round_mask_ids(s))
        params = resolve_cluster_params(cfg, int(features.shape[1]), score_weight, exact_limit,
                                        part_size, reps)
        fp = _tree_fingerprint(s, params, held_out)
        rows = {r.name: r.path for r in _tree_rows(s)}
    if held_out.shape[0] >= scores.shape[0]:
        raise LabelpropError(f"{campaign_dir}: every mask is held out as gold (`labelprop gold "
                             f"--from-masks`); nothing is left to cluster")
    members = class_members(classes, held_out)
    # ---- resume: trees of this parameter set that a killed run already saved
    mine = {name: path for name, path in rows.items() if name.startswith(f"tree/{fp}/")}
    stale = [name for name in rows if name not in mine]
    links: dict[int, np.ndarray] = {}
    with read_session(engine) as s:
        for name in mine:
            c = int(name.rsplit("/", 1)[1])
            if c in members:
                z = load_array(s, campaign_dir, name)
                if z.shape == (members[c].shape[0] - 1, 4):
                    links[c] = z
    if stale:
        from orchestrator.store import ArrayFile

        with transaction(engine) as s:
            for name in stale:
                s.delete(s.get(ArrayFile, name))
    _sweep_tree_files(d_, set(mine.values()))
    todo = {c: idx for c, idx in members.items() if c not in links}
    # ---- memory, before anything heavy starts
    n_clustered = int(sum(idx.shape[0] for idx in members.values()))
    predicted = check_memory({c: int(idx.shape[0]) for c, idx in todo.items()},
                             int(features.shape[1]), params.exact_limit, params.part_size,
                             params.n_reps, jobs, available_memory() if limit is None else limit,
                             remote=bool(ray), n_masks=int(scores.shape[0]), n_clustered=n_clustered)
    if plan:
        plan({"classes": {c: int(idx.shape[0]) for c, idx in todo.items()},
              "resumed": sorted(links), "exact_limit": params.exact_limit,
              "part_size": params.part_size, "predicted_peak_bytes": predicted})

    def save(c: int, z: np.ndarray) -> None:
        with transaction(engine) as s:
            save_array(s, campaign_dir, f"tree/{fp}/{c}", z, f"{TREES_DIR}/{fp}/class-{c}.npy")
        links[c] = z

    t0 = time.perf_counter()
    run_classes(features, scores, todo, params, save, jobs=jobs, ray_address=ray,
                progress=progress, tick=tick)
    n_two = sum(1 for idx in members.values() if idx.shape[0] > params.exact_limit)
    forest = forest_from_linkages(links, members, scores)
    secs = time.perf_counter() - t0
    with transaction(engine) as s:
        n_nodes_now = count_rows(s, Node)
        if n_nodes_now and not force:   # a search started while we were clustering
            raise LabelpropError(f"{campaign_dir}: the search started while clustering; "
                                 f"re-run with --force")
        cleared = clear_search_state(s) if force else {}
        save_arrays_npz(s, campaign_dir, "forest", forest.to_npz_dict())
        done_rows = [r for r in _tree_rows(s) if r.name.startswith(f"tree/{fp}/")]
        for r in done_rows:
            s.delete(r)
        summary = {"trees": int(forest.roots.shape[0]), "nodes": forest.n_nodes,
                   "masks": forest.n_masks, "held_out_gold": int(held_out.shape[0]),
                   "score_weight": params.score_weight, "exact_limit": params.exact_limit,
                   "part_size": params.part_size, "reps": params.n_reps,
                   "classes_exact": len(members) - n_two, "classes_two_level": n_two,
                   "resumed_classes": len(members) - len(todo),
                   "jobs": jobs, "ray": ray, "predicted_peak_gib": round(predicted / 2**30, 2),
                   "seconds": round(secs, 3), "answers_kept": count_rows(s, Answer), **cleared}
        log_event(s, "cluster", **summary)
    engine.dispose()
    _sweep_tree_files(d_, set())
    return summary


def check_clustering(campaign_dir, db: str | None = None, class_id: int | None = None,
                     masks: int = 20_000, seeds: int = 5, score_weight: float | None = None,
                     part_size: int | None = None, reps: int | None = None,
                     max_memory: str | int | None = None,
                     say: Callable[[str], None] | None = None) -> dict:
    """``labelprop cluster --check``: the two-level tree against the exact one on one class
    (the largest by default), or on ``masks`` of its masks drawn at random when it is
    larger (:func:`orchestrator.cluster_check.fidelity_report`).  Writes nothing."""
    from clustering.build import class_members, class_stats, embed_rows
    from clustering.memory import BASE_BYTES, exact_bytes, fmt_bytes, max_exact_n
    from orchestrator.arrays import load_array
    from orchestrator.cluster_check import fidelity_report
    from orchestrator.clusterrun import available_memory, parse_size
    from orchestrator.config import load_config
    from orchestrator.search import TREE_STRATEGIES, SearchParams
    from orchestrator.store import ArrayFile, Mask, count_rows, open_store, read_session

    cfg = load_config(campaign_dir)
    if masks < 2:
        raise LabelpropError(f"--check-masks must be at least 2, got {masks}")
    if seeds < 1:
        raise LabelpropError(f"--check-seeds must be at least 1, got {seeds}")
    engine = open_store(campaign_dir, db)
    with read_session(engine) as s:
        if count_rows(s, Mask) == 0:
            raise LabelpropError(f"{campaign_dir}: nothing ingested yet; run `labelprop ingest`")
        features = load_array(s, campaign_dir, "features", mmap=True)
        scores = np.asarray(load_array(s, campaign_dir, "scores"), np.float64)
        classes = load_array(s, campaign_dir, "classes")
        ious = load_array(s, campaign_dir, "ious") if s.get(ArrayFile, "ious") is not None else None
        from orchestrator.rounds import earlier_round_mask_ids

        held_out = np.union1d(gold_mask_ids(s), earlier_round_mask_ids(s))
    engine.dispose()
    params = resolve_cluster_params(cfg, int(features.shape[1]), score_weight, None, part_size, reps)
    members = class_members(classes, held_out)
    if class_id is None:
        class_id = max(members, key=lambda c: (members[c].shape[0], -c))
    elif class_id not in members:
        raise LabelpropError(f"--check-class {class_id}: no such class with masks in "
                             f"{campaign_dir} (classes: {', '.join(map(str, sorted(members)))})")
    idx = members[class_id]
    sample = idx
    if idx.shape[0] > masks:
        rng = np.random.default_rng([abs(cfg.campaign.seed), 3571, class_id])
        sample = np.sort(rng.choice(idx, masks, replace=False))
    m = int(sample.shape[0])
    d = int(features.shape[1])
    limit = available_memory() if max_memory is None else (
        parse_size(max_memory) if isinstance(max_memory, str) else int(max_memory))
    need = BASE_BYTES + exact_bytes(m, d) + 6 * 8 * m * (d + 1)
    if need > limit:
        fit = max(2, max_exact_n(limit - 6 * 8 * m * (d + 1), d) // 1000 * 1000)
        raise LabelpropError(f"--check on {m:,} masks needs about {fmt_bytes(need)} (exact complete "
                             f"linkage), more than the {fmt_bytes(limit)} available; use "
                             f"--check-masks {fit} or free memory or raise --max-memory")
    x = embed_rows(features, scores, sample, class_stats(features, scores, idx), params.score_weight)
    sc = cfg.search
    search = None
    if ious is not None:
        search = SearchParams(ns=sc.ns, ka=sc.ka, kiou=sc.kiou, kpa=sc.kpa, kpr=sc.kpr, chunk=sc.chunk,
                              strategy=sc.strategy if sc.strategy in TREE_STRATEGIES else "heuristic",
                              seed=cfg.campaign.seed)
    # the sample gets the atoms the whole class would get (coarser for a larger class)
    from clustering.twolevel import atoms_target

    n_full = int(idx.shape[0])
    atom_size = max(params.atom_size, -(-n_full // atoms_target(n_full, params.atom_size)))
    rep = fidelity_report(x, scores[sample], None if ious is None else np.asarray(ious)[sample],
                          params, search, seeds=[cfg.campaign.seed + i for i in range(seeds)], say=say,
                          atom_size=atom_size, class_masks=n_full if m < n_full else None)
    return {"campaign": str(campaign_dir), "class": int(class_id), "class_masks": int(idx.shape[0]),
            "sampled": m < idx.shape[0], "score_weight": params.score_weight,
            "search_strategy": None if search is None else search.strategy, **rep}


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
        from orchestrator.rounds import current_round, decisions, preparing_round, rounds_summary

        if out["trees_built"]:
            forest = load_forest(s, campaign_dir, verify=False)
            out["trees"] = int(forest.roots.shape[0])
            out["nodes"] = forest.n_nodes
        else:
            out.update(trees=0, nodes=0)
        acc, rej = decisions(s, campaign_dir, n_masks)      # every round, frozen ones included
        out["accepted_masks"] = int(acc.sum())
        out["rejected_masks"] = int(rej.sum())
        out["undecided_masks"] = int(n_masks - (acc | rej).sum())
        out["round"] = current_round(s)
        out["rounds"] = rounds_summary(s, campaign_dir, acc, rej)
        prep = preparing_round(s)
        queued = out["nodes_by_state"]
        out["queue"] = {"queued": int(queued.get("QUEUED", 0)), "asking": int(queued.get("ASKING", 0))}
    from orchestrator.poll import crowd_summary       # every backend goes through the poll path

    out["crowd"] = {"backend": cfg.crowd.backend, **crowd_summary(engine, cfg)}
    q = out["questions"]
    cur = out["rounds"][-1]
    if prep is not None:
        state = f"round {prep.round} being prepared by `labelprop iterate` (step: {prep.step})"
    elif not out["trees_built"]:
        state = "not clustered yet"
    elif q["pending"] == 0 and q["answered"] + q["discarded"] == 0:
        state = "not started"
    elif cur["undecided_masks"] == 0 or (out["queue"]["queued"] == 0 and out["queue"]["asking"] == 0
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
    app.command("cluster", help=CLUSTER_HELP)(cluster_cmd)
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
                                          "bundled crowd server), prolific (paid Prolific participants on "
                                          "the bundled server) or mturk. Sets defaults that suit it."),
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


CLUSTER_HELP = """Cluster each class's masks into a binary tree; saves forest.npz.

A class of at most --exact-limit masks gets exact complete linkage (one condensed distance matrix of 8 n(n-1)/2 bytes; the default limit comes from the machine's memory: about 70,000 masks on 24 GiB). A larger class is clustered in two levels: k-means parts of at most --part-size masks, exact trees inside, cut into small clusters (atoms), complete linkage over the atoms (largest distance between their --reps farthest-first representatives, never centroids), stitched into one tree.

Peak memory is predicted and checked before anything starts (against what is available, or --max-memory). Each class's tree is saved as it finishes: a killed run resumes with the classes not yet done. --jobs runs classes and parts in worker processes, --ray as Ray tasks.

--check compares the two-level tree with the exact one on a class (a random sample of --check-masks masks of the largest class by default) and writes nothing: cophenetic correlation, adjusted Rand index of flat cuts and, when the masks have IoUs, the search simulated on both trees.

Example: labelprop cluster runs/c1 --jobs 2

Example: labelprop cluster runs/c1 --check

Example: labelprop cluster runs/c1 --ray head-node:6379
"""


def _print_check(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    whose = (f"{r['masks']:,} of its {r['class_masks']:,} masks, drawn at random" if r["sampled"]
             else f"all {r['masks']:,} masks")
    con.print(f"two-level tree against the exact tree: class {r['class']} ({whose}); "
              f"{r['parts']} parts of at most {r['part_size']:,} masks; atoms of about {r['atom_size']} "
              f"masks, {r['reps']} representatives each")
    t = Table(show_header=True)
    t.add_column("tree figure")
    t.add_column("two-level", justify="right")
    t.add_column(f"jittered exact ({r['jitter']:.0%}, yardstick)", justify="right")
    cc, dc, ari = r["cophenetic_correlation"], r["distance_correlation"], r["ari"]
    t.add_row("cophenetic correlation with the exact tree", f"{cc['two_level_vs_exact']:.3f}",
              f"{cc['jittered_exact_vs_exact']:.3f}")
    t.add_row(f"correlation with feature distances (exact tree: {dc['exact']:.3f})",
              f"{dc['two_level']:.3f}", f"{dc['jittered_exact']:.3f}")
    for k, v in ari["two_level_vs_exact"].items():
        t.add_row(f"adjusted Rand index with the exact tree, {k} clusters", f"{v:.3f}",
                  f"{ari['jittered_exact_vs_exact'][k]:.3f}")
    con.print(t)
    srch = r.get("search")
    if not srch:
        con.print("no IoUs in this campaign: the simulated search needs ground truth (tree figures only)")
        return
    t = Table(title=f"simulated search ({r['search_strategy']}; sampled: mean of "
                    f"{srch['exact']['sampled']['seeds']} runs)")
    t.add_column("")
    for name in ("exact", "two-level", "jittered exact"):
        t.add_column(name, justify="right")
    keys = ("exact", "two_level", "jittered_exact")
    fmt = {"accepted_masks": "{:,.0f}", "questions": "{:,.0f}", "clusters_annotated": "{:,.0f}",
           "precision": "{:.3f}", "mean_iou": "{:.3f}"}
    for mode in ("sampled", "oracle"):
        for k, f in fmt.items():
            if mode == "oracle" and k == "questions":
                continue
            vals = [srch[n][mode][k] for n in keys]
            t.add_row(f"{mode}: {k.replace('_', ' ')}", *["-" if v is None else f.format(v) for v in vals])
    con.print(t)
    c = srch["two_level_vs_exact"]
    con.print(f"two-level / exact (sampled): accepted masks x{c['accepted_masks_ratio']:.3f}, "
              f"questions x{c['questions_ratio']:.3f}, precision {c['precision_difference']:+.3f}")


def cluster_cmd(
    campaign_dir: Path = typer.Argument(..., metavar="DIR", help="Campaign directory."),
    score_weight: Optional[float] = typer.Option(None, help="Weight of the mask score next to "
                                                 "the features (default: campaign.toml)."),
    exact_limit: Optional[int] = typer.Option(None, help="Classes above this many masks are "
                                              "clustered in two levels (default: campaign.toml; "
                                              "0 there: derived from the machine's memory)."),
    part_size: Optional[int] = typer.Option(None, "--part-size", help="Largest part of the "
                                            "two-level path (default: campaign.toml, 2000)."),
    reps: Optional[int] = typer.Option(None, "--reps", help="Representatives per part for the "
                                       "distance between parts (default: campaign.toml, 32)."),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Worker processes for classes and parts."),
    ray: Optional[str] = typer.Option(None, "--ray", metavar="ADDRESS",
                                      help="Run classes and parts as tasks on this Ray cluster "
                                           "(host:port of the head's GCS, or ray://host:port)."),
    max_memory: Optional[str] = typer.Option(None, "--max-memory", metavar="SIZE",
                                             help="Memory clustering may use, e.g. 8GiB "
                                                  "(default: what is available now)."),
    force: bool = typer.Option(False, "--force", help="Rebuild although the search has started; "
                               "clears the search state (answers are kept)."),
    check: bool = typer.Option(False, "--check", help="Compare the two-level tree with the exact "
                               "one on a class instead of clustering (writes nothing)."),
    check_class: Optional[int] = typer.Option(None, "--check-class", help="Class to check "
                                              "(default: the largest)."),
    check_masks: int = typer.Option(20_000, "--check-masks", help="Check on at most this many "
                                    "masks of the class (drawn at random)."),
    check_seeds: int = typer.Option(5, "--check-seeds", help="Sampled search runs per tree."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary (or --check's report) as JSON."),
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    from rich.console import Console

    console = Console(stderr=True)
    if check:
        def say(msg: str) -> None:
            console.print(f"[bright_black]labelprop: {msg}[/]")

        rep = check_clustering(campaign_dir, db, check_class, check_masks, check_seeds,
                               score_weight, part_size, reps, max_memory, say=say)
        if as_json:
            from orchestrator.atomic import json_safe

            _echo_json(json_safe(rep))
        else:
            _print_check(rep)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, \
        TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=False,
                  auto_refresh=False) as bar:
        overall = bar.add_task("classes", total=None)
        tasks: dict[int, int] = {}
        info: dict = {}
        bar.refresh()

        def plan(p: dict) -> None:
            info.update(p)
            done = len(p["resumed"])
            bar.update(overall, total=done + len(p["classes"]), completed=done,
                       description=f"classes ({done} resumed)" if done else "classes")
            bar.refresh()

        def progress(event: str, c: int, done: int, total: int) -> None:
            n = info["classes"][c]
            if event == "start":
                how = "exact" if n <= info["exact_limit"] else f"two levels, {total:,} parts"
                tasks[c] = bar.add_task(f"  class {c}: {n:,} masks, {how}", total=total)
            elif event == "advance":
                bar.update(tasks[c], completed=done)
            else:
                bar.update(tasks[c], completed=total)
                bar.advance(overall)
                if len(info["classes"]) > 20:
                    bar.remove_task(tasks[c])
            bar.refresh()

        summary = cluster_campaign(campaign_dir, db, score_weight, exact_limit, jobs, force,
                                   progress, part_size, reps, ray, max_memory,
                                   tick=bar.refresh, plan=plan)
    if as_json:
        _echo_json(summary)
        return
    extra = f"; {summary['resumed_classes']} resumed" if summary["resumed_classes"] else ""
    typer.echo(f"built {summary['trees']} trees ({summary['nodes']} nodes over "
               f"{summary['masks']} masks; {summary['classes_exact']} exact, "
               f"{summary['classes_two_level']} in two levels{extra}) in "
               f"{summary['seconds']:.1f} s -> {Path(campaign_dir) / 'forest.npz'}")


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
    from orchestrator.crowd.estimate import work_text

    work = "" if not cr else work_text(cr["work_hours"])
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
    if len(st["rounds"]) > 1:
        for r in st["rounds"]:
            t.add_row(f"round {r['round']} ({r['step']})",
                      f"{r['masks']:,} masks: {r['accepted_masks']:,} accepted, "
                      f"{r['rejected_masks']:,} rejected, {r['undecided_masks']:,} undecided")
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
