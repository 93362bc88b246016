"""The campaign store: transactions, SQLite settings, search persistence helpers, arrays."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from orchestrator.campaign.arrays import (atomic_save_npy, load_array, load_npz, save_array,
                                 save_arrays_npz, sha256_file)
from orchestrator.errors import LabelpropError
from orchestrator.campaign.store import (Answer, ArrayFile, Category, Event, Image, Mask, Meta, Node,
                                Question, bulk_insert, clear_search_state, count_rows, get_meta,
                                insert_questions, record_answers,
                                load_mask_answers, load_node_arrays, log_event, open_store,
                                read_session, save_node_arrays, set_meta, store_url_for,
                                transaction)


@pytest.fixture
def engine(tmp_path):
    eng = open_store(tmp_path)
    yield eng
    eng.dispose()


def _seed_masks(s, n=10):
    bulk_insert(s, Category, [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}])
    bulk_insert(s, Image, [{"id": 7, "file_name": "x.png", "width": 4, "height": 3}])
    bulk_insert(s, Mask, [{"id": i, "image_id": 7, "category_id": 1 + i % 2, "score": 0.5,
                           "bbox": None, "rle": None, "iou": None} for i in range(n)])


def test_sqlite_settings_and_schema_version(tmp_path, engine):
    assert store_url_for(tmp_path) == f"sqlite:///{(tmp_path / 'campaign.db').resolve()}"
    with read_session(engine) as s:
        conn = s.connection()
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        assert get_meta(s, "schema_version") == "1"


def test_foreign_keys_are_enforced(engine):
    with pytest.raises(IntegrityError):
        with transaction(engine) as s:
            bulk_insert(s, Mask, [{"id": 0, "image_id": None, "category_id": 99, "score": 0.5}])


def test_rollback_leaves_nothing_half_written(engine):
    with pytest.raises(IntegrityError):
        with transaction(engine) as s:
            _seed_masks(s)
            log_event(s, "ingest", masks=10)
            set_meta(s, "search.seq", 5)
            # duplicate primary key: fails after many rows were already sent
            bulk_insert(s, Mask, [{"id": 3, "image_id": 7, "category_id": 1, "score": 0.1}])
    with pytest.raises(RuntimeError):
        with transaction(engine) as s:
            _seed_masks(s)
            raise RuntimeError("crash in the middle")
    with read_session(engine) as s:
        for model in (Category, Image, Mask, Event):
            assert count_rows(s, model) == 0, model
        assert get_meta(s, "search.seq") is None
    with transaction(engine) as s:           # and a good transaction commits everything
        _seed_masks(s)
        log_event(s, "ingest", kind="coco", masks=np.int64(10))
    with read_session(engine) as s:
        assert count_rows(s, Mask) == 10
        ev = s.execute(select(Event)).scalars().one()
        assert ev.kind == "ingest" and json.loads(ev.payload) == {"kind": "coco", "masks": 10}


def test_node_arrays_round_trip_sparse(engine):
    m = 12
    state = np.zeros(m, np.int8)
    seq = np.full(m, -1, np.int64)
    q = np.full(m, np.nan)
    rounds = np.zeros(m, np.int64)
    node_class = np.arange(m) % 3
    state[[11, 5, 4]] = [5, 3, 1]
    seq[[11, 5, 4]] = [0, 1, 2]
    q[[11, 5]] = [0.5, 0.9]
    rounds[[11, 5]] = [1, 2]
    n_yes = np.zeros(m, np.int64)
    n_yes[5] = 14
    with transaction(engine) as s:
        assert save_node_arrays(s, np.flatnonzero(state), node_class, state, seq, q, rounds,
                                n_yes=n_yes) == 3
    with read_session(engine) as s:
        assert count_rows(s, Node) == 3
        got = load_node_arrays(s, m)
    np.testing.assert_array_equal(got["state"], state)
    np.testing.assert_array_equal(got["seq"], seq)
    np.testing.assert_array_equal(got["q"], q)   # nan where null
    np.testing.assert_array_equal(got["rounds"], rounds)
    np.testing.assert_array_equal(got["n_yes"], n_yes)
    # update one node in place (upsert), add another
    state[4], q[4], state[3] = 3, 1.0, 1
    with transaction(engine) as s:
        save_node_arrays(s, [4, 3], node_class, state, seq, q, rounds)
    with read_session(engine) as s:
        got = load_node_arrays(s, m)
        assert count_rows(s, Node) == 4
        assert s.get(Node, 4).class_id == 1
        with pytest.raises(LabelpropError, match="forest has 5 nodes"):
            load_node_arrays(s, 5)
    np.testing.assert_array_equal(got["state"], state)


def test_mask_answers_ignore_discarded_latest_wins(engine):
    with transaction(engine) as s:
        _seed_masks(s, 6)
        bulk_insert(s, Question, [
            {"mask_id": 0, "node_id": 9, "round": 0, "status": "answered"},   # id 1
            {"mask_id": 1, "node_id": 9, "round": 0, "status": "discarded"},  # id 2
            {"mask_id": 2, "node_id": 9, "round": 0, "status": "pending"},    # id 3
            {"mask_id": 0, "node_id": 9, "round": 1, "status": "answered"},   # id 4
            {"mask_id": 3, "node_id": 9, "round": 1, "status": "answered"},   # id 5
        ])
        bulk_insert(s, Answer, [
            {"question_id": 1, "mask_id": 0, "label": 1, "source": "simulated"},
            {"question_id": 2, "mask_id": 1, "label": 1, "source": "simulated"},
            {"question_id": 4, "mask_id": 0, "label": 0, "source": "simulated"},
            {"question_id": 5, "mask_id": 3, "label": 1, "source": "simulated",
             "worker_id": "W1", "seconds": 1.4},
        ])
    with read_session(engine) as s:
        answer, pending = load_mask_answers(s, 6)
    assert answer.tolist() == [0, -1, -1, 1, -1, -1]
    assert pending.tolist() == [False, False, True, False, False, False]
    with transaction(engine) as s:
        bulk_insert(s, Node, [{"node_id": 9, "class_id": 1, "state": 2, "seq": 0}])
        set_meta(s, "search.seq", 1)
        assert clear_search_state(s) == {"nodes_deleted": 1, "questions_discarded": 1}
    with read_session(engine) as s:
        assert count_rows(s, Node) == 0 and count_rows(s, Answer) == 4
        assert s.get(Meta, "search.seq") is None
        assert count_rows(s, Question, Question.status == "pending") == 0


def test_arrays_atomic_checksummed(tmp_path, engine):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    digest = atomic_save_npy(tmp_path / "x.npy", a)
    assert digest == sha256_file(tmp_path / "x.npy")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    with transaction(engine) as s:
        save_array(s, tmp_path, "features", a)
        save_arrays_npz(s, tmp_path, "forest", {"left": np.arange(3), "right": np.arange(3)})
    with read_session(engine) as s:
        row = s.get(ArrayFile, "features")
        assert row.path == "features.npy" and json.loads(row.shape) == [3, 4]
        assert row.dtype == "float32" and row.sha256 == sha256_file(tmp_path / "features.npy")
        np.testing.assert_array_equal(load_array(s, tmp_path, "features"), a)
        assert sorted(load_npz(s, tmp_path, "forest")) == ["left", "right"]
        with pytest.raises(LabelpropError, match="no 'scores' array"):
            load_array(s, tmp_path, "scores")
    np.save(tmp_path / "features.npy", a + 1)       # changed behind the store's back
    with read_session(engine) as s:
        with pytest.raises(LabelpropError, match=r"features\.npy: sha256 .* differs"):
            load_array(s, tmp_path, "features")
        np.testing.assert_array_equal(load_array(s, tmp_path, "features", verify=False), a + 1)
    (tmp_path / "features.npy").unlink()
    with read_session(engine) as s:
        with pytest.raises(LabelpropError, match=r"features\.npy: missing"):
            load_array(s, tmp_path, "features")


def test_replacing_an_array_is_journaled_rollback_keeps_the_old_version(tmp_path, engine):
    a = np.arange(6, dtype=np.int64)
    with transaction(engine) as s:
        save_array(s, tmp_path, "features", a)
    assert sorted(p.name for p in tmp_path.iterdir() if "features" in p.name) == ["features.npy"]
    with pytest.raises(RuntimeError):
        with transaction(engine) as s:
            save_array(s, tmp_path, "features", a * 10)
            save_arrays_npz(s, tmp_path, "forest", {"x": a})
            raise RuntimeError("killed before the commit")
    # the file the store references was never touched, and the staged files are gone
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".npy", ".npz", ".new")) == ["features.npy"]
    with read_session(engine) as s:
        np.testing.assert_array_equal(load_array(s, tmp_path, "features"), a)
        assert s.get(ArrayFile, "forest") is None


_KILL_AFTER_COMMIT = """
import os, signal, sys
import numpy as np
from sqlalchemy import event
from orchestrator.campaign.arrays import save_array
from orchestrator.campaign.store import open_store, transaction
d = sys.argv[1]
with transaction(open_store(d)) as s:
    # runs before the rename listener save_array adds: SIGKILL between the commit and the rename
    event.listen(s, "after_commit", lambda _s: os.kill(os.getpid(), signal.SIGKILL))
    save_array(s, d, "features", np.arange(6, dtype=np.int64) * 10)
"""


def test_a_writer_killed_between_commit_and_rename_is_rolled_forward_by_the_next_reader(tmp_path, engine):
    import subprocess
    import sys

    a = np.arange(6, dtype=np.int64)
    with transaction(engine) as s:
        save_array(s, tmp_path, "features", a)
    p = subprocess.run([sys.executable, "-c", _KILL_AFTER_COMMIT, str(tmp_path)], capture_output=True, text=True)
    assert p.returncode == -9, p.stderr
    assert (tmp_path / "features.npy.new").is_file()              # committed, not yet in place
    np.testing.assert_array_equal(np.load(tmp_path / "features.npy"), a)
    with read_session(engine) as s:
        # even a reader that skips the checksum gets the committed version
        np.testing.assert_array_equal(load_array(s, tmp_path, "features", verify=False), a * 10)
        assert s.get(ArrayFile, "features").sha256 == sha256_file(tmp_path / "features.npy")
    assert not (tmp_path / "features.npy.new").exists()


def test_bad_url_is_one_line_error(tmp_path):
    with pytest.raises(LabelpropError, match="cannot open store") as e:
        open_store(tmp_path, "nosuchdialect://x/y")
    assert "\n" not in str(e.value)


def test_insert_questions_and_record_answers(engine):
    with transaction(engine) as s:
        _seed_masks(s, 8)
        ids = insert_questions(s, [{"mask_id": m, "node_id": 20 + m % 2, "round": 0}
                                   for m in (5, 2, 7, 0)])
        assert ids.tolist() == sorted(ids.tolist()) and len(set(ids.tolist())) == 4
    with transaction(engine) as s:
        q = {r.mask_id: r for r in s.execute(select(Question)).scalars()}
        assert [q[m].id for m in (5, 2, 7, 0)] == ids.tolist()
        assert all(r.status == "pending" for r in q.values())
        n = record_answers(s, [{"question_id": int(ids[0]), "mask_id": 5, "label": 1,
                                "worker_id": "W7", "seconds": 1.2, "source": "simulated"},
                               {"question_id": int(ids[3]), "mask_id": 0, "label": 0}])
        assert n == 2
    with read_session(engine) as s:
        answer, pending = load_mask_answers(s, 8)
        assert answer.tolist() == [0, -1, -1, -1, -1, 1, -1, -1]
        assert np.flatnonzero(pending).tolist() == [2, 7]
        assert count_rows(s, Question, Question.status == "answered") == 2


def test_store_holds_only_campaign_tables(tmp_path):
    from sqlalchemy import inspect
    import orchestrator.crowd_server.models  # noqa: F401  (shares SQLModel.metadata: must not leak in)
    engine = open_store(tmp_path, "sqlite:///only.db")
    from orchestrator.crowd.crowd_store import CROWD_MODELS   # the crowd campaign's own tables
    assert sorted(inspect(engine).get_table_names()) == sorted(
        ["category", "image", "mask", "array_file", "node", "question", "answer", "event",
         "meta", "campaign_round"] + [m.__tablename__ for m in CROWD_MODELS])
    engine.dispose()
