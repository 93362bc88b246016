"""A campaign run through the store: CLI end to end, and SIGKILL at random points."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clustering.build import build_forest
from orchestrator.crowd.annotators import SimulatedAnnotators
from orchestrator.search.search import SearchParams
from orchestrator.search.simulate import run_tree_search
from orchestrator.search.synth import make_triplets
from orchestrator.search.triplets import save_triplets

LABELPROP = [sys.executable, "-m", "orchestrator.cli"]
ROOT = Path(__file__).resolve().parents[1]


def lp(*args, check=True, **kw):
    p = subprocess.run(LABELPROP + [str(a) for a in args], capture_output=True, text=True, cwd=ROOT, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"labelprop {' '.join(map(str, args))} failed ({p.returncode}):\n{p.stderr}")
    return p


@pytest.fixture(scope="module")
def triplets(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    t = make_triplets(3000, classes=3, dim=8, seed=5)
    path = d / "t.npz"
    save_triplets(path, t)
    return path, t


def make_campaign(tmp_path, triplets_path, name="camp", chunk=0, **search):
    camp = tmp_path / name
    lp("init", camp)
    if chunk or search:
        from orchestrator.campaign.config import load_config, save_config
        cfg = load_config(camp)
        cfg.search.chunk = chunk
        for k, v in search.items():
            setattr(cfg.search, k, v)
        save_config(camp, cfg)
    lp("ingest", camp, "--triplets", triplets_path)
    lp("cluster", camp)
    return camp


def test_campaign_equals_in_memory_simulation(tmp_path, triplets):
    path, t = triplets
    camp = make_campaign(tmp_path, path)
    out = json.loads(lp("run", camp, "--json").stdout)
    assert out["done"] and out["pending_questions"] == 0
    lp("export", camp, "--indices", tmp_path / "acc.npy")
    acc = np.load(tmp_path / "acc.npy")
    # the same search in memory, one node at a time, gives the same accepted masks
    forest = build_forest(t.features, t.scores, t.classes)
    ref = run_tree_search(forest, SearchParams(), SimulatedAnnotators(t.ious, 0.75), t.ious)
    assert sorted(acc.tolist()) == np.flatnonzero(ref.accepted).tolist()
    assert out["questions"] == ref.questions
    assert out["accepted_masks"] == len(acc) > 0
    status = json.loads(lp("status", camp, "--json").stdout)
    assert status["accepted_masks"] == len(acc)
    # a finished campaign stays finished: rerunning asks nothing more
    again = json.loads(lp("run", camp, "--json").stdout)
    assert again["questions"] == out["questions"] and again["steps"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("search,max_kills", [({"strategy": "heuristic"}, 30),
                                              ({"strategy": "value", "acceptance": "size-aware", "risk_masks": 5.0}, 10)],
                         ids=["heuristic", "value-size-aware"])
def test_run_killed_at_random_points_gives_the_uninterrupted_result(tmp_path, triplets, search, max_kills):
    path, t = triplets
    args = ["--json", "--questions-per-step", "2", "--error-rate", "0.1"]
    ref_camp = make_campaign(tmp_path, path, "ref", chunk=3, **search)
    t0 = time.monotonic()
    ref = json.loads(lp("run", ref_camp, *args).stdout)
    ref_wall = time.monotonic() - t0
    lp("export", ref_camp, "--indices", tmp_path / "ref.npy")
    t0 = time.monotonic()
    lp("--help")
    startup = time.monotonic() - t0

    camp = make_campaign(tmp_path, path, "crash", chunk=3, **search)
    rng = random.Random(7)
    kills = 0
    for attempt in range(60):
        if kills >= max_kills:      # the rest in one uninterrupted run below
            break
        p = subprocess.Popen(LABELPROP + ["run", str(camp), *args],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # kill after the imports, within the first third of the work: about a tenth of the
        # campaign gets done between two kills, some runs die before committing anything
        work = max(ref_wall - startup, 0.5)
        time.sleep(startup * 0.8 + rng.uniform(0, work / 3))
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
            kills += 1
        else:
            out, err = p.communicate()
            assert p.returncode == 0, err
            if json.loads(out)["done"]:
                break
    assert kills >= 5, f"the run finished too fast to be interrupted ({ref_wall:.1f} s)"
    final = json.loads(lp("run", camp, *args).stdout)
    assert final["done"]
    lp("export", camp, "--indices", tmp_path / "crash.npy")
    assert np.array_equal(np.sort(np.load(tmp_path / "crash.npy")), np.sort(np.load(tmp_path / "ref.npy")))
    assert final["questions"] == ref["questions"]
    assert final["clusters_annotated"] == ref["clusters_annotated"]
    # every question answered exactly once, no mask asked twice
    import sqlite3
    con = sqlite3.connect(camp / "campaign.db")
    n_q, = con.execute("select count(*) from question").fetchone()
    n_a, = con.execute("select count(*) from answer").fetchone()
    dup, = con.execute("select count(*) from (select question_id from answer group by question_id "
                       "having count(*) > 1)").fetchone()
    twice, = con.execute("select count(*) from (select mask_id from question group by mask_id "
                         "having count(*) > 1)").fetchone()
    con.close()
    assert n_q == n_a == final["questions"] and dup == 0 and twice == 0


def test_bad_inputs_exit_nonzero_with_one_line(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, features=np.zeros((3, 2), np.float32), scores=np.array([0.1, np.nan, 0.3], np.float32),
             ious=np.zeros(3, np.float32), classes=np.zeros(3, np.int64))
    p = lp("simulate", bad, check=False)
    assert p.returncode != 0
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and "bad.npz" in err[0] and "nan" in err[0].lower(), p.stderr
    good = tmp_path / "good.npz"
    save_triplets(good, make_triplets(300, classes=1, dim=4, seed=1))
    for args, needle in [(["--ka", "1.5"], "--ka"), (["--kpa", "-0.2"], "--kpa"), (["-s", "astar"], "astar"),
                         (["--kiou", "2"], "--kiou")]:
        p = lp("simulate", good, *args, check=False)
        assert p.returncode != 0, args
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], (args, p.stderr)
    missing = tmp_path / "missing.npz"
    np.savez(missing, features=np.zeros((3, 2), np.float32), scores=np.zeros(3, np.float32))
    p = lp("simulate", missing, check=False)
    assert p.returncode != 0 and "missing.npz" in p.stderr and "classes" in p.stderr
    mism = tmp_path / "mismatch.npz"
    np.savez(mism, features=np.zeros((3, 2), np.float32), scores=np.zeros(4, np.float32),
             ious=np.zeros(3, np.float32), classes=np.zeros(3, np.int64))
    p = lp("simulate", mism, check=False)
    assert p.returncode != 0 and "mismatch.npz" in p.stderr
