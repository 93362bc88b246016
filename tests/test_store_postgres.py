"""Campaigns whose store is PostgreSQL (``labelprop init --db postgresql+psycopg://...``).

A real PostgreSQL server (tests/pg_server.py) is started for the module.  A simulated campaign
on PostgreSQL decides exactly what the same campaign on SQLite decides, also when its `run` is
SIGKILLed at random points; a crowd campaign polled against the bundled crowd server finishes
with the SQLite campaign's accepted set; and two poll passes on one PostgreSQL store, even from
two campaign directories (two machines sharing the store), exclude each other through the
advisory lock.
"""
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, text

from tests.crowd_campaign_helpers import (LABELPROP, ROOT, TruthPolicy, crowd_server_in, lp,  # noqa: E402
                                    make_crowd_campaign)
from tests.pg_server import start_postgres  # noqa: E402

from orchestrator.campaign.config import load_config  # noqa: E402
from orchestrator.crowd.poll import campaign_lock  # noqa: E402
from orchestrator.search.synth import make_triplets  # noqa: E402
from orchestrator.search.triplets import save_triplets  # noqa: E402


@pytest.fixture(scope="module")
def pg():
    srv = start_postgres()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def triplets(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "t.npz"
    save_triplets(path, make_triplets(1200, classes=3, dim=8, seed=11))
    return path


def _sim_campaign(base: Path, name: str, triplets: Path, db: str | None = None) -> Path:
    camp = base / name
    lp("init", camp, "--seed", 3, *(["--db", db] if db else []))
    cfg = (camp / "campaign.toml").read_text().replace("chunk = 0", "chunk = 3")
    (camp / "campaign.toml").write_text(cfg)
    lp("ingest", camp, "--triplets", triplets)
    lp("cluster", camp)
    return camp


def _accepted(camp: Path) -> list[int]:
    out = camp.parent / f"{camp.name}-accepted.npy"
    lp("export", camp, "--indices", out)
    return sorted(np.load(out).tolist())


RUN = ["--json", "--questions-per-step", "4", "--error-rate", "0.1"]


def test_init_writes_the_url_and_tables_live_in_postgres(tmp_path, pg):
    url = pg.create_database("lp_init")
    camp = tmp_path / "c"
    lp("init", camp, "--db", url)
    assert load_config(camp).store.url == url
    assert not (camp / "campaign.db").exists()
    with create_engine(url).connect() as con:
        tables = set(con.execute(text("select tablename from pg_tables where schemaname = 'public'")).scalars())
        assert {"mask", "node", "question", "answer", "event", "meta"} <= tables
        assert con.execute(text("select value from meta where key = 'schema_version'")).scalar()


def test_simulated_campaign_on_postgres_equals_sqlite(tmp_path, pg, triplets):
    ref = _sim_campaign(tmp_path, "sqlite", triplets)
    r = json.loads(lp("run", ref, *RUN).stdout)
    url = pg.create_database("lp_sim")
    camp = _sim_campaign(tmp_path, "pg", triplets, db=url)
    out = json.loads(lp("run", camp, *RUN).stdout)
    assert out["done"] and r["done"]
    for k in ("questions", "accepted_masks", "clusters_annotated"):
        assert out[k] == r[k], k
    assert _accepted(camp) == _accepted(ref)
    status = json.loads(lp("status", camp, "--json").stdout)
    assert status["accepted_masks"] == out["accepted_masks"]


@pytest.mark.slow
def test_run_on_postgres_killed_at_random_points_gives_the_uninterrupted_result(tmp_path, pg, triplets):
    ref = _sim_campaign(tmp_path, "ref", triplets)
    t0 = time.monotonic()
    r = json.loads(lp("run", ref, *RUN).stdout)
    ref_wall = time.monotonic() - t0
    url = pg.create_database("lp_kill")
    camp = _sim_campaign(tmp_path, "crash", triplets, db=url)
    startup = float("inf")                    # imports + connecting: kills land after it
    for _ in range(3):                        # the fastest of three: a load spike must not inflate it
        t0 = time.monotonic()
        lp("status", camp, "--json")
        startup = min(startup, time.monotonic() - t0)
    work = max(ref_wall - startup, 0.5) * 1.5     # PostgreSQL round trips are slower than SQLite's
    rng = random.Random(5)
    kills = 0
    while kills < 10:
        p = subprocess.Popen(LABELPROP + ["run", str(camp), *RUN], cwd=ROOT, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            # about a tenth of the campaign between two kills; some die before committing anything
            p.wait(timeout=startup * 0.9 + rng.uniform(0, work / 5))
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
            kills += 1
            continue
        out, err = p.communicate()
        assert p.returncode == 0, err
        assert json.loads(out)["done"]
        break
    assert kills >= 5, "the run finished too fast to be interrupted"
    final = json.loads(lp("run", camp, *RUN).stdout)
    assert final["done"]
    assert final["questions"] == r["questions"]
    assert _accepted(camp) == _accepted(ref)
    with create_engine(url).connect() as con:
        dup = con.execute(text("select count(*) from (select question_id from answer group by question_id "
                               "having count(*) > 1) d")).scalar()
        twice = con.execute(text("select count(*) from (select mask_id from question group by mask_id "
                                 "having count(*) > 1) d")).scalar()
    assert dup == 0 and twice == 0


def test_poll_lock_excludes_a_second_directory_sharing_the_store(tmp_path, pg):
    """The flock guards one directory; the advisory lock guards the store itself."""
    url = pg.create_database("lp_lock")
    eng = create_engine(url)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    with campaign_lock(a, eng, key="campaign-uid-1") as got_a:
        assert got_a
        with campaign_lock(b, eng, key="campaign-uid-1") as got_b:
            assert not got_b                       # same store and campaign: refused at once
        with campaign_lock(b, eng, key="campaign-uid-2") as got_c:
            assert got_c                           # another campaign in the same database
    with campaign_lock(b, eng, key="campaign-uid-1") as got_again:
        assert got_again                           # released when the first pass ended
    eng.dispose()


@pytest.mark.slow
def test_crowd_campaign_polled_on_postgres_matches_sqlite(tmp_path, pg):
    srv, assets = crowd_server_in(tmp_path)
    small = dict(n_images=30, gold_images=8, data_seed=5,
                 crowd={"questions_per_hit": 6, "gold_per_hit": 2, "max_hits_in_flight": 4},
                 qualification={"enabled": False, "min_gold_answers": 2, "min_percent_approved": 0},
                 search={"kpa": 0.3, "ns": 6})
    try:
        ref = make_crowd_campaign(tmp_path, "ref", endpoint_url=srv.endpoint_url, assets_dir=assets, seed=7,
                                  **small)
        url = pg.create_database("lp_crowd")
        camp = make_crowd_campaign(tmp_path, "pg", endpoint_url=srv.endpoint_url, assets_dir=assets, seed=7,
                                   db=url, **small)
        pool = srv.simulate("w1:accuracy=1,seconds=0.2;w2:accuracy=1,seconds=0.2", TruthPolicy(ref, camp),
                            poll_interval=0.03)
        try:
            r = json.loads(lp("run", ref, "--interval", "0.1", "--json", env=srv.env(), timeout=300).stdout)
            c = json.loads(lp("run", camp, "--interval", "0.1", "--json", env=srv.env(), timeout=300).stdout)
        finally:
            pool.stop()
        assert r["finished"] and c["finished"]
        assert c["hits_posted"] == r["hits_posted"] and c["questions"] == r["questions"]
        assert c["spent_usd"] == pytest.approx(r["spent_usd"])
        assert _accepted(camp) == _accepted(ref)
        # both polls ran under the store's advisory lock: nothing is left held
        with create_engine(url).connect() as con:
            held = con.execute(text("select count(*) from pg_locks where locktype = 'advisory'")).scalar()
        assert held == 0
    finally:
        srv.stop()
