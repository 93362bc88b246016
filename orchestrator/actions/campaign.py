"""Campaign actions: create a campaign, build its trees, describe it.

Plain functions over a campaign directory (``campaign.toml``, the store, the arrays beside
it) with their inputs as arguments; the ``init``, ``cluster`` and ``status`` commands
(:mod:`orchestrator.cli.campaign`) parse options, call these and print.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np

from orchestrator.errors import LabelpropError
from orchestrator.search.params import ParamError

__all__ = ["init_campaign", "cluster_campaign", "check_clustering", "campaign_status",
           "build_forest_parallel", "resolve_cluster_params", "gold_mask_ids"]


def _is_campaign(d: Path) -> bool:
    return (d / "campaign.toml").exists() or (d / "campaign.db").exists()


def init_campaign(campaign_dir: str | os.PathLike, name: str | None = None, seed: int = 0,
                  db: str | None = None, backend: str | None = None, force: bool = False,
                  budget_usd: float | None = None, endpoint_url: str | None = None) -> dict:
    """Create DIR, write every parameter to DIR/campaign.toml and create the store."""
    from orchestrator.campaign.config import (apply_backend_defaults, config_path, default_config, save_config,
                                     validate_config)
    from orchestrator.campaign.store import log_event, open_store, transaction

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
    from orchestrator.campaign.clusterrun import run_classes

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

    from orchestrator.crowd.crowd_store import Gold

    ids = s.execute(select(Gold.mask_id).where(Gold.mask_id.is_not(None)).distinct()).scalars().all()
    return np.array(sorted(int(i) for i in ids), np.int64)


TREES_DIR = "trees"
# bump when the algorithm changes what a class tree is (3: representatives per atom grow to
# 32,768 // atoms, so classes between the exact limit and ~1M masks get other trees than in 2)
_TREES_VERSION = 3


def _tree_fingerprint(s, params, held_out: np.ndarray) -> str:
    """Identifies the per-class trees of one parameter set on one set of inputs."""
    import hashlib

    from orchestrator.campaign.store import ArrayFile

    src = {"v": _TREES_VERSION, "score_weight": params.score_weight,
           "exact_limit": params.exact_limit, "part_size": params.part_size,
           "reps": params.n_reps, "atom_size": params.atom_size, "seed": params.seed,
           "held_out": hashlib.sha256(np.ascontiguousarray(held_out, np.int64).tobytes()).hexdigest()}
    for name in ("features", "scores", "classes"):
        src[name] = s.get(ArrayFile, name).sha256
    return hashlib.sha256(json.dumps(src, sort_keys=True).encode()).hexdigest()[:16]


def _tree_rows(s) -> list:
    from sqlalchemy import select

    from orchestrator.campaign.store import ArrayFile

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
    from orchestrator.campaign.clusterrun import total_memory

    sw = cfg.clustering.score_weight if score_weight is None else score_weight
    el = cfg.clustering.exact_limit if exact_limit is None else exact_limit
    ps = cfg.clustering.part_size if part_size is None else part_size
    nr = cfg.clustering.reps if reps is None else reps
    if sw < 0:
        raise ParamError("score_weight", f"must be >= 0, got {sw}")
    if el != 0 and el < 2:
        raise ParamError("exact_limit", f"must be at least 2 (or 0: from the machine's memory), got {el}")
    if ps < 2:
        raise ParamError("part_size", f"must be at least 2, got {ps}")
    if nr < 1:
        raise ParamError("reps", f"must be at least 1, got {nr}")
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
    from orchestrator.campaign.arrays import load_array, save_array, save_arrays_npz
    from orchestrator.campaign.clusterrun import available_memory, check_memory, parse_size, run_classes
    from orchestrator.campaign.config import load_config
    from orchestrator.campaign.store import (Answer, Mask, Node, clear_search_state, count_rows,
                                    log_event, open_store, read_session, transaction)

    cfg = load_config(campaign_dir)
    d_ = Path(campaign_dir)
    if jobs < 1:
        raise ParamError("jobs", f"must be at least 1, got {jobs}")
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
        from orchestrator.campaign.rounds import check_not_preparing, earlier_round_mask_ids

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
        from orchestrator.campaign.store import ArrayFile

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
    larger (:func:`orchestrator.campaign.cluster_check.fidelity_report`).  Writes nothing."""
    from clustering.build import class_members, class_stats, embed_rows
    from clustering.memory import BASE_BYTES, exact_bytes, fmt_bytes, max_exact_n
    from orchestrator.campaign.arrays import load_array
    from orchestrator.campaign.cluster_check import fidelity_report
    from orchestrator.campaign.clusterrun import available_memory, parse_size
    from orchestrator.campaign.config import load_config
    from orchestrator.search.search import SearchParams
    from orchestrator.campaign.store import ArrayFile, Mask, count_rows, open_store, read_session

    cfg = load_config(campaign_dir)
    if masks < 2:
        raise ParamError("check_masks", f"must be at least 2, got {masks}")
    if seeds < 1:
        raise ParamError("check_seeds", f"must be at least 1, got {seeds}")
    engine = open_store(campaign_dir, db)
    with read_session(engine) as s:
        if count_rows(s, Mask) == 0:
            raise LabelpropError(f"{campaign_dir}: nothing ingested yet; run `labelprop ingest`")
        features = load_array(s, campaign_dir, "features", mmap=True)
        scores = np.asarray(load_array(s, campaign_dir, "scores"), np.float64)
        classes = load_array(s, campaign_dir, "classes")
        ious = load_array(s, campaign_dir, "ious") if s.get(ArrayFile, "ious") is not None else None
        from orchestrator.campaign.rounds import earlier_round_mask_ids

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
                              strategy=sc.strategy,
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

    from orchestrator.campaign.arrays import load_forest
    from orchestrator.campaign.config import load_config
    from orchestrator.search.search import NodeState
    from orchestrator.campaign.store import (Answer, ArrayFile, Category, Image, Mask, Node, Question,
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
        from orchestrator.campaign.rounds import current_round, decisions, preparing_round, rounds_summary

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
    from orchestrator.crowd.poll import crowd_summary       # every backend goes through the poll path

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
