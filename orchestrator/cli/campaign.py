"""Campaign commands: ``init``, ``ingest``, ``cluster``, ``export``, ``status``.

Each command reads and writes the campaign directory (``campaign.toml``, the store,
the arrays beside it), so a run can stop after any step and go on later.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

from orchestrator.actions.campaign import campaign_status, check_clustering, cluster_campaign, init_campaign
from orchestrator.cli.options import flag_names
from orchestrator.errors import LabelpropError

__all__ = ["register"]

DB_HELP = ("SQLAlchemy URL of the store, overriding the store url in campaign.toml "
           "(e.g. postgresql+psycopg://user@host/labelprop); relative sqlite paths are "
           "relative to DIR.")


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
    from orchestrator.campaign.config import load_config
    from orchestrator.campaign.ingest import read_predictions, read_triplet_predictions, write_predictions
    from orchestrator.campaign.store import open_store

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
    def ratio(v, f):
        return "-" if v is None else f.format(v)

    for name, label in (("two_level", "two-level"), ("jittered_exact", "jittered exact (yardstick)")):
        c = srch[f"{name}_vs_exact"]
        o = c["oracle"]
        con.print(f"{label} / exact: sampled: accepted masks {ratio(c['accepted_masks_ratio'], 'x{:.3f}')}, "
                  f"questions {ratio(c['questions_ratio'], 'x{:.3f}')}, "
                  f"precision {ratio(c['precision_difference'], '{:+.3f}')}; "
                  f"oracle: accepted masks {ratio(o['accepted_masks_ratio'], 'x{:.3f}')}, "
                  f"clusters annotated {ratio(o['clusters_annotated_ratio'], 'x{:.3f}')}, "
                  f"precision {ratio(o['precision_difference'], '{:+.3f}')}")


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

        with flag_names():
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

        with flag_names():
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
    from orchestrator.campaign.config import load_config
    from orchestrator.campaign.export import export_coco, export_indices
    from orchestrator.campaign.store import open_store

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
