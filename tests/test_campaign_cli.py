"""campaign.toml, `labelprop init`, `cluster` and `status`."""
from __future__ import annotations

import json
import tomllib

import numpy as np
import pytest
from sqlalchemy import select

from tests.cli_helpers import run_cli
from clustering.build import ClusterParams, build_forest
from orchestrator.campaign.arrays import load_forest, sha256_file
from orchestrator.actions.campaign import build_forest_parallel
from orchestrator.campaign.config import (default_config, dumps_config, load_config, resolve_store_url,
                                 save_config)
from orchestrator.errors import LabelpropError
from orchestrator.campaign.store import (Answer, ArrayFile, Category, Event, Mask, Node, Question,
                                bulk_insert, count_rows, open_store, read_session, transaction)
from orchestrator.search.synth import make_triplets
from orchestrator.search.triplets import save_triplets


# --------------------------------------------------------------------------------- config
def test_config_round_trip(tmp_path):
    cfg = default_config("birds", seed=7)
    cfg.search.ka = 0.9
    cfg.search.class_quotas = {"person": 1000, "3": 50}
    cfg.crowd.backend = "mturk"
    cfg.crowd.qualification.locales = ["US", "GB"]
    save_config(tmp_path, cfg)
    text = (tmp_path / "campaign.toml").read_text()
    assert text.startswith("# labelprop campaign configuration")
    assert "[crowd.qualification]" in text and "ka = 0.9" in text
    assert load_config(tmp_path) == cfg
    assert dumps_config(load_config(tmp_path)) == text


def test_comment_header_documents_every_key_of_every_section(tmp_path):
    """The header `init` writes is built from the sections' help metadata: every table and
    every key of campaign.toml is explained there."""
    save_config(tmp_path, default_config("c"))
    text = (tmp_path / "campaign.toml").read_text()
    header = text[:text.index("\n[")]
    assert all(line.startswith("#") for line in header.splitlines() if line)
    data = tomllib.loads(text)

    def tables(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict) and k != "class_quotas":
                yield prefix + k, v
                yield from tables(v, prefix + k + ".")

    seen = 0
    for title, table in tables(data):
        block = header[header.index(f"# [{title}] "):]
        block = block[:block.index("\n# [")] if "\n# [" in block else block
        for key in (k for k, v in table.items() if not isinstance(v, dict) or k == "class_quotas"):
            assert f"{key}:" in block or f"{key}," in block, (title, key)
            seen += 1
    assert seen > 80


@pytest.mark.parametrize("section,key,value,message", [
    ("search", "ka", 1.5, "search.ka must be in [0, 1], got 1.5"),
    ("search", "kiou", -0.1, "search.kiou must be in [0, 1]"),
    ("search", "ns", 0, "search.ns must be at least 1"),
    ("search", "ns", "15", "search.ns must be an integer"),
    ("search", "ka", True, "search.ka must be a number"),
    ("search", "strategy", "greedy", "search.strategy must be one of"),
    ("search", "kpr", 0.9, "search.kpr (0.9) must not exceed search.kpa"),
    ("search", "bogus", 1, "unknown key search.bogus"),
    ("crowd", "backend", "fiverr", "crowd.backend must be one of"),
    ("crowd", "gold_per_hit", 60, "crowd.gold_per_hit (60) must be below"),
    ("clustering", "exact_limit", 1, "clustering.exact_limit must be at least 2"),
])
def test_config_validation_names_file_and_key(tmp_path, section, key, value, message):
    save_config(tmp_path, default_config())
    path = tmp_path / "campaign.toml"
    data = tomllib.loads(path.read_text())
    data[section][key] = value
    import tomli_w
    path.write_text(tomli_w.dumps(data))
    with pytest.raises(LabelpropError) as e:
        load_config(tmp_path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_config_syntax_error_and_missing(tmp_path):
    with pytest.raises(LabelpropError, match="not found"):
        load_config(tmp_path)
    (tmp_path / "campaign.toml").write_text("[search\nka = 1")
    with pytest.raises(LabelpropError, match=r"campaign\.toml: invalid TOML"):
        load_config(tmp_path)


def test_relative_sqlite_url_resolves_against_campaign(tmp_path):
    assert resolve_store_url(tmp_path, "sqlite:///x.db") == f"sqlite:///{(tmp_path / 'x.db').resolve()}"
    assert resolve_store_url(tmp_path, "sqlite:////abs/x.db") == "sqlite:////abs/x.db"
    assert resolve_store_url(tmp_path, "postgresql://u@h/db") == "postgresql://u@h/db"


# ----------------------------------------------------------------------------------- init
def test_init_refuses_overwrite_unless_force(tmp_path):
    d = tmp_path / "c"
    r = run_cli("init", d, "--name", "first", "--seed", "3", "--db", "sqlite:///store.db")
    assert r.code == 0, r.err
    cfg = load_config(d)
    assert (cfg.campaign.name, cfg.campaign.seed, cfg.store.url) == ("first", 3,
                                                                     "sqlite:///store.db")
    assert (d / "store.db").exists() and not (d / "campaign.db").exists()
    before = (d / "campaign.toml").read_text()
    r = run_cli("init", d, "--name", "second")
    assert r.code == 2 and "already a campaign" in r.err and "--force" in r.err
    assert (d / "campaign.toml").read_text() == before
    r = run_cli("init", d, "--name", "second", "--force")
    assert r.code == 0 and load_config(d).campaign.name == "second"


@pytest.mark.parametrize("args, message", [
    (["--backend", "bogus"], "crowd.backend must be one of"),
    (["--db", "postgresql+nosuchdriver://u@127.0.0.1:1/x"], "cannot open store"),
    (["--db", "sqlite:////nonexistent-dir/x/store.db"], "cannot open store"),
])
def test_init_with_a_bad_option_writes_nothing(tmp_path, args, message):
    d = tmp_path / "new"
    r = run_cli("init", d, *args)
    assert r.code == 2 and message in r.err and "\n" not in r.err.strip()
    assert not d.exists()                  # not even an empty directory, nor a store without config
    e = tmp_path / "existing"
    e.mkdir()
    (e / "notes.txt").write_text("mine")
    assert run_cli("init", e, *args).code == 2
    assert sorted(p.name for p in e.iterdir()) == ["notes.txt"]


def test_help_has_examples():
    for cmd in ("init", "ingest", "cluster", "export", "status"):
        r = run_cli(cmd, "--help")
        assert r.code == 0 and "Example: labelprop " + cmd in r.out, cmd


# -------------------------------------------------------------------------------- cluster
@pytest.fixture
def sim(tmp_path):
    t = make_triplets(400, classes=4, dim=6, seed=4)
    save_triplets(tmp_path / "t.npz", t)
    d = tmp_path / "sim"
    assert run_cli("init", d).code == 0
    assert run_cli("ingest", d, "--triplets", tmp_path / "t.npz").code == 0
    return d, t


def test_cluster_roots_cover_each_class(sim):
    d, t = sim
    r = run_cli("cluster", d, "--score-weight", "0.5")
    assert r.code == 0, r.err
    eng = open_store(d)
    with read_session(eng) as s:
        row = s.get(ArrayFile, "forest")
        assert row.sha256 == sha256_file(d / "forest.npz")
        forest = load_forest(s, d)
        ev = [json.loads(p) for p in s.execute(
            select(Event.payload).where(Event.kind == "cluster")).scalars()]
    eng.dispose()
    assert ev[-1]["score_weight"] == 0.5 and ev[-1]["trees"] == 4
    assert sorted(forest.root_class.tolist()) == sorted(np.unique(t.classes).tolist())
    for root, c in zip(forest.roots, forest.root_class):
        np.testing.assert_array_equal(np.sort(forest.masks(root)), np.flatnonzero(t.classes == c))
        assert forest.parent[root] == -1
    assert forest.n_nodes == 2 * 400 - 4
    # same parameters as build_forest directly
    ref = build_forest(t.features, t.scores, t.classes, ClusterParams(score_weight=0.5))
    np.testing.assert_array_equal(forest.order, ref.order)


def test_cluster_parallel_equals_serial(sim):
    _, t = sim
    p = ClusterParams(score_weight=1.0, exact_limit=40_000)
    a = build_forest(t.features, t.scores, t.classes, p)
    seen = []
    b = build_forest_parallel(t.features, t.scores, t.classes, p, jobs=2,
                              progress=lambda i, n, c: seen.append((i, n, c)))
    for k, v in a.to_npz_dict().items():
        np.testing.assert_array_equal(getattr(b, k), v, err_msg=k)
    assert sorted(c for _, _, c in seen) == sorted(np.unique(t.classes).tolist())


def test_cluster_refuses_started_search_force_clears(sim):
    d, t = sim
    assert run_cli("cluster", d).code == 0
    eng = open_store(d)
    with transaction(eng) as s:
        bulk_insert(s, Node, [{"node_id": 5, "class_id": 0, "state": 2, "seq": 0}])
        bulk_insert(s, Question, [{"mask_id": 1, "node_id": 5, "status": "answered"},
                                  {"mask_id": 2, "node_id": 5, "status": "pending"}])
        bulk_insert(s, Answer, [{"question_id": 1, "mask_id": 1, "label": 1, "source": "test"}])
    sha = sha256_file(d / "forest.npz")
    r = run_cli("cluster", d)
    assert r.code == 2 and "search has started" in r.err and "--force" in r.err
    assert sha256_file(d / "forest.npz") == sha
    r = run_cli("cluster", d, "--force", "--score-weight", "0")
    assert r.code == 0, r.err
    with read_session(eng) as s:
        assert count_rows(s, Node) == 0 and count_rows(s, Answer) == 1
        assert count_rows(s, Question, Question.status == "pending") == 0
        assert s.get(ArrayFile, "forest").sha256 == sha256_file(d / "forest.npz") != sha
    eng.dispose()


def test_cluster_needs_ingest_and_valid_options(tmp_path):
    d = tmp_path / "empty"
    assert run_cli("init", d).code == 0
    r = run_cli("cluster", d)
    assert r.code == 2 and "nothing ingested" in r.err
    r = run_cli("cluster", tmp_path / "nope")
    assert r.code == 2 and "no such campaign directory" in r.err
    r = run_cli("cluster", d, "--jobs", "0")
    assert r.code == 2 and "--jobs" in r.err


# --------------------------------------------------------------------------------- status
def test_status_counts(sim):
    d, t = sim
    r = run_cli("status", d, "--json")
    st = json.loads(r.out)
    assert st["masks"] == 400 and st["classes"] == 4 and st["trees_built"] is False
    assert st["kind"] == "triplets" and st["masks_with_iou"] == 400
    assert run_cli("cluster", d).code == 0
    eng = open_store(d)
    with read_session(eng) as s:
        forest = load_forest(s, d)
    r0, r1 = (int(x) for x in forest.roots[:2])
    kids = [int(forest.left[r1]), int(forest.right[r1])]
    with transaction(eng) as s:
        bulk_insert(s, Node, [
            {"node_id": r0, "class_id": int(forest.node_class[r0]), "state": 3, "seq": 0},
            {"node_id": r1, "class_id": int(forest.node_class[r1]), "state": 5, "seq": 1},
            {"node_id": kids[0], "class_id": int(forest.node_class[r1]), "state": 4, "seq": 2},
            {"node_id": kids[1], "class_id": int(forest.node_class[r1]), "state": 1, "seq": 3}])
        bulk_insert(s, Question, [{"mask_id": int(m), "node_id": kids[1], "status": "pending"}
                                  for m in forest.masks(kids[1])[:3]])
    eng.dispose()
    st = json.loads(run_cli("status", d, "--json").out)
    assert st["trees_built"] and st["trees"] == 4
    assert st["nodes_by_state"] == {"QUEUED": 1, "ACCEPTED": 1, "REJECTED": 1, "SPLIT": 1}
    assert st["accepted_masks"] == forest.size(r0)
    assert st["rejected_masks"] == forest.size(kids[0])
    assert st["undecided_masks"] == 400 - forest.size(r0) - forest.size(kids[0])
    assert st["questions"] == {"pending": 3, "answered": 0, "discarded": 0}
    r = run_cli("status", d)
    assert r.code == 0 and "accepted masks" in r.out and str(forest.size(r0)) in r.out
