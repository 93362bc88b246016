"""`labelprop cluster` at scale: per-class trees resumed after SIGKILL, the memory check,
Ray tasks on a local instance the test starts, and --check's fidelity figures."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from orchestrator.campaign.arrays import load_forest
from orchestrator.campaign.clusterrun import RAY_LOOPBACK_ENV, parse_size
from orchestrator.errors import LabelpropError
from orchestrator.campaign.store import ArrayFile, Event, open_store, read_session
from orchestrator.search.synth import make_triplets
from orchestrator.search.triplets import Triplets, save_triplets
from tests.cli_helpers import run_cli

LABELPROP = [sys.executable, "-m", "orchestrator.cli"]
ROOT = Path(__file__).resolve().parents[1]
# every class in two levels (parts of at most 600 masks), so resumption covers that path
TWO_LEVEL = ["--exact-limit", "2400", "--part-size", "600"]


def _triplets(n_classes: int, per_class: int, seed: int = 11) -> Triplets:
    t = make_triplets(n_classes * per_class, classes=1, dim=8, seed=seed)
    return Triplets(features=t.features, scores=t.scores, ious=t.ious,
                    classes=(np.arange(t.n) % n_classes).astype(np.int64))


def _campaign(tmp_path: Path, name: str, t: Triplets) -> Path:
    src = tmp_path / "t.npz"
    if not src.exists():
        save_triplets(src, t)
    d = tmp_path / name
    assert run_cli("init", d, "--seed", "3").code == 0
    assert run_cli("ingest", d, "--triplets", src).code == 0
    return d


def _forest(d: Path):
    eng = open_store(d)
    with read_session(eng) as s:
        f = load_forest(s, d)
        ev = [json.loads(p) for p in s.execute(select(Event.payload).where(Event.kind == "cluster")).scalars()]
        trees = s.execute(select(ArrayFile.name).where(ArrayFile.name.like("tree/%"))).scalars().all()
    eng.dispose()
    return f, ev, trees


def _same(a, b) -> None:
    for k, v in a.to_npz_dict().items():
        np.testing.assert_array_equal(getattr(b, k), v, err_msg=k)


def _tree_rows(d: Path) -> int:
    eng = open_store(d, create=False)
    try:
        with read_session(eng) as s:
            return len(s.execute(select(ArrayFile.name).where(ArrayFile.name.like("tree/%"))).scalars().all())
    finally:
        eng.dispose()


def test_cluster_killed_resumes_with_the_classes_not_done(tmp_path):
    t = _triplets(6, 2500)
    ref = _campaign(tmp_path, "ref", t)
    r = run_cli("cluster", ref, *TWO_LEVEL)
    assert r.code == 0, r.err
    want, ev, _ = _forest(ref)
    assert ev[-1]["classes_two_level"] == 6 and ev[-1]["resumed_classes"] == 0

    d = _campaign(tmp_path, "killed", t)
    p = subprocess.Popen(LABELPROP + ["cluster", str(d), *TWO_LEVEL], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while _tree_rows(d) == 0 and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.killpg(p.pid, signal.SIGKILL)                 # the run and anything it started
    finally:
        p.wait()
    done = _tree_rows(d)
    assert 1 <= done < 6, "the kill must land after the first class and before the last"
    assert not (d / "forest.npz").exists()
    r = run_cli("cluster", d, *TWO_LEVEL)
    assert r.code == 0, r.err
    got, ev, trees = _forest(d)
    _same(want, got)
    assert ev[-1]["resumed_classes"] >= done and trees == []
    assert not (d / "trees").exists()                   # per-class files removed after the commit


def test_changed_parameters_do_not_reuse_saved_trees(tmp_path):
    t = _triplets(3, 1500)
    d = _campaign(tmp_path, "c", t)
    assert run_cli("cluster", d, "--exact-limit", "1000", "--part-size", "400").code == 0
    a, _, _ = _forest(d)
    r = run_cli("cluster", d, "--exact-limit", "5000", "--json")
    assert r.code == 0, r.err
    s = json.loads(r.out)
    assert s["classes_exact"] == 3 and s["resumed_classes"] == 0 and s["exact_limit"] == 5000
    b, _, _ = _forest(d)
    assert not np.array_equal(a.height, b.height)


def test_memory_check_refuses_before_writing_anything(tmp_path):
    t = _triplets(2, 4000)
    d = _campaign(tmp_path, "c", t)
    r = run_cli("cluster", d, "--exact-limit", "5000", "--max-memory", "400MiB")
    assert r.code == 2
    line = r.err.strip()
    assert "\n" not in line and "more than the 400 MiB available" in line
    assert "exact complete linkage" in line and "--exact-limit" in line
    assert not (d / "forest.npz").exists() and not (d / "trees").exists()
    # two workers need twice the memory of one: the message says so
    r = run_cli("cluster", d, "--exact-limit", "5000", "--jobs", "2", "--max-memory", "800MiB")
    assert r.code == 2 and "--jobs 1" in r.err
    assert run_cli("cluster", d, "--exact-limit", "5000", "--max-memory", "2GiB").code == 0
    with pytest.raises(LabelpropError, match="--max-memory"):
        parse_size("lots")


def test_check_prints_fidelity_figures(tmp_path):
    t = _triplets(2, 1500)
    d = _campaign(tmp_path, "c", t)
    r = run_cli("cluster", d, "--check", "--check-masks", "1200", "--check-seeds", "2",
                "--part-size", "300", "--json")
    assert r.code == 0, r.err
    rep = json.loads(r.out)
    assert rep["masks"] == 1200 and rep["sampled"] and rep["class_masks"] == 1500
    assert rep["parts"] >= 4
    # the sample's two-level tree gets the atoms and representatives of the 1,500-mask class
    from clustering.build import ClusterParams
    from orchestrator.campaign.cluster_check import class_atoms

    assert rep["as_class_masks"] == 1500
    assert (rep["atom_size"], rep["reps_per_atom"]) == class_atoms(1500, ClusterParams(part_size=300)) \
        == (128, 125)                                   # 12 atoms of 125: exact distances
    cc = rep["cophenetic_correlation"]
    assert 0.0 < cc["two_level_vs_exact"] <= 1.0 and 0.0 < cc["jittered_exact_vs_exact"] <= 1.0
    assert set(rep["ari"]["two_level_vs_exact"]) == {"2", "8", "32", "128", "512"}
    srch = rep["search"]
    for tree in ("exact", "two_level", "jittered_exact"):
        assert srch[tree]["sampled"]["accepted_masks"] > 0 and srch[tree]["sampled"]["seeds"] == 2
        assert 0.0 < srch[tree]["oracle"]["precision"] <= 1.0
    for tree in ("two_level", "jittered_exact"):
        c = srch[f"{tree}_vs_exact"]
        assert c["accepted_masks_ratio"] > 0 and c["questions_ratio"] > 0
        assert c["oracle"]["accepted_masks_ratio"] > 0 and c["oracle"]["clusters_annotated_ratio"] > 0
        assert -1.0 <= c["oracle"]["precision_difference"] <= 1.0
    assert not (d / "forest.npz").exists()              # --check writes nothing
    r = run_cli("cluster", d, "--check", "--check-masks", "800", "--check-seeds", "1")
    assert r.code == 0 and "cophenetic correlation" in r.out and "simulated search" in r.out
    assert "two-level / exact: sampled: accepted masks x" in r.out and "oracle: accepted masks x" in r.out
    r = run_cli("cluster", d, "--check", "--check-class", "7")
    assert r.code == 2 and "--check-class 7" in r.err


# ------------------------------------------------------------------------------ Ray
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    """A local Ray instance (every server on 127.0.0.1), stopped by killing its process group."""
    ray_bin = Path(sys.executable).with_name("ray")
    tmp = tempfile.mkdtemp(prefix="lpray", dir="/tmp")   # short: Ray's socket paths must fit
    port = _free_port()
    # loopback only, so no token authentication (Ray's default for `ray start`, stated here)
    env = {**os.environ, RAY_LOOPBACK_ENV: "0", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "disabled"}
    log = open(Path(tmp) / "head.log", "w")
    p = subprocess.Popen([str(ray_bin), "start", "--head", "--block", f"--port={port}",
                          "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats",
                          f"--temp-dir={tmp}"], stdout=log, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while "Ray runtime started" not in (Path(tmp) / "head.log").read_text():
            assert p.poll() is None, (Path(tmp) / "head.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "ray start did not come up"
            time.sleep(0.2)
        yield f"127.0.0.1:{port}", env
    finally:
        try:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=30)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            pass
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def test_ray_tasks_give_the_same_forest_as_worker_processes(tmp_path, ray_head):
    address, env = ray_head
    t = _triplets(3, 1500, seed=5)
    a = _campaign(tmp_path, "jobs", t)
    r = run_cli("cluster", a, "--exact-limit", "1000", "--part-size", "300", "--jobs", "2")
    assert r.code == 0, r.err
    b = _campaign(tmp_path, "ray", t)
    p = subprocess.run(LABELPROP + ["cluster", str(b), "--exact-limit", "1000", "--part-size", "300",
                                    "--ray", address, "--json"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads(p.stdout)["ray"] == address
    _same(_forest(a)[0], _forest(b)[0])
    p = subprocess.run(LABELPROP + ["cluster", str(b), "--ray", "127.0.0.1:1", "--force"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "cannot connect to the Ray cluster" in p.stderr
