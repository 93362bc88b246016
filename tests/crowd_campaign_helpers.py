"""Helpers for the crowd campaign tests (tests/test_poll_*.py) and bench/poll.py.

* :func:`make_crowd_campaign`: a campaign built from synthetic COCO images with
  ground-truth masks (tests/cocodata.py), backend "server", ingested with each
  prediction's true IoU, clustered, with gold questions from a second, disjoint
  synthetic set (``labelprop gold``), overlays published through the local asset store.
* :class:`TruthPolicy`: answers for the crowd server's simulated workers from ground
  truth: the HIT's fields are opaque identifiers, looked up in the campaign store
  (HitItem -> mask IoU >= K_iou, or the gold label; test identifiers -> gold label).
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

from orchestrator.campaign.config import load_config, save_config
from orchestrator.crowd_server.simulated_workers import true_answer

ROOT = Path(__file__).resolve().parents[1]
LABELPROP = [sys.executable, "-m", "orchestrator.cli"]


def lp(*args, check=True, env=None, timeout=600, **kw):
    full = dict(os.environ)
    full.update(env or {})
    p = subprocess.run(LABELPROP + [str(a) for a in args], capture_output=True, text=True, cwd=ROOT,
                       env=full, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"labelprop {' '.join(map(str, args))} failed ({p.returncode}):\n{p.stderr}")
    return p


class CliOut:
    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def cli(*args, check=True, env=None) -> CliOut:
    """A `labelprop` command run in this process (the same Typer app and error handling as the console
    script, without a new interpreter per call): returncode 2 and one stderr line on a LabelpropError."""
    from typer.testing import CliRunner

    from orchestrator.cli.app import app
    from orchestrator.errors import LabelpropError

    r = CliRunner().invoke(app, [str(a) for a in args], env=env, catch_exceptions=True)
    err = r.stderr if r.stderr_bytes is not None else ""
    code = r.exit_code
    if isinstance(r.exception, LabelpropError):
        code, err = 2, err + f"labelprop: error: {r.exception}\n"
    elif r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    if check and code != 0:
        raise AssertionError(f"labelprop {' '.join(map(str, args))} failed ({code}):\n{err}")
    return CliOut(code, r.stdout, err)


def crowd_server_in(base: Path, **kw):
    """The bundled crowd server (a subprocess, data in BASE/crowd) serving BASE/assets at
    /assets/, where campaigns publish their overlays: returns ``(server, assets_dir)``."""
    from orchestrator.crowd_server.testing import start_server

    assets = Path(base) / "assets"
    assets.mkdir(exist_ok=True)
    return start_server(Path(base) / "crowd", assets_dir=assets, **kw), assets


def coco_with_iou(root: Path, **kw):
    """A synthetic COCO set whose results JSON carries each prediction's true IoU."""
    from tests.cocodata import make_coco_dataset

    ds = make_coco_dataset(root, **kw)
    for r, q in zip(ds.results, ds.pred_iou.tolist()):
        r["iou"] = round(float(q), 6)
    ds.results_json.write_text(json.dumps(ds.results))
    return ds


def make_crowd_campaign(base: Path, name: str, *, endpoint_url: str = "", assets_dir: Path | None = None,
                        seed: int = 0, n_images: int = 30, gold_images: int = 12, crowd: dict | None = None,
                        qualification: dict | None = None, search: dict | None = None,
                        data_seed: int = 3, gold: bool = True, db: str | None = None, backend: str = "server",
                        simulated_workers: str = "") -> Path:
    """A campaign on the bundled crowd server (``backend="server"``) or on the simulated crowd
    (``backend="simulated"``, workers from ``simulated_workers``), with the same data and settings."""
    data = base / f"{name}-data"
    ds = coco_with_iou(data / "preds", n_images=n_images, n_categories=3, objects_per_image=(1, 3),
                       preds_per_object=3, seed=data_seed)
    camp = base / name
    from orchestrator.actions.campaign import cluster_campaign, init_campaign
    from orchestrator.actions.gold import add_gold
    from orchestrator.campaign.ingest import read_predictions, write_predictions
    from orchestrator.campaign.store import open_store

    # in process (the CLI commands' own functions): a campaign per test stays cheap on a loaded machine
    init_campaign(camp, seed=seed, db=db, backend=backend)
    cfg = load_config(camp)
    cfg.crowd.endpoint_url = endpoint_url
    if assets_dir is not None:
        cfg.crowd.assets.local_dir = str(assets_dir)
    cfg.crowd.qualification.min_hits_approved = 0
    cfg.crowd.reward_usd = 0.05
    cfg.crowd.simulated.workers = simulated_workers
    for k, v in (crowd or {}).items():
        setattr(cfg.crowd, k, v)
    for k, v in (qualification or {}).items():
        setattr(cfg.crowd.qualification, k, v)
    for k, v in (search or {}).items():
        setattr(cfg.search, k, v)
    save_config(camp, cfg)
    engine = open_store(camp, db)
    write_predictions(engine, camp, read_predictions(ds.results_json, ds.features_npy, ds.images_json, ds.image_root))
    engine.dispose()
    cluster_campaign(camp, db)
    if gold:
        g = coco_with_iou(data / "gold", n_images=gold_images, n_categories=3, objects_per_image=(1, 3),
                          preds_per_object=3, seed=data_seed + 100)
        add_gold(camp, results=g.results_json, images=g.images_json, image_root=g.image_root, db=db)
    return camp


class TruthPolicy:
    """Callable policy for ``srv.simulate``: the true answer of every field, from the stores of
    the campaigns in ``dirs`` (looked up by opaque identifier)."""

    def __init__(self, *dirs: Path):
        self.dirs = [Path(d) for d in dirs]
        self.lock = threading.Lock()
        self.calls = 0
        self._engines: dict = {}

    _ITEM = ("select m.iou, g.label from hit_item h left join mask m on m.id = h.mask_id "
             "left join gold g on g.id = h.gold_id where h.identifier = ?")
    _GOLD = "select label from gold where identifier = ?"

    def _query(self, d: Path, sql: str, ident: str):
        cfg = load_config(d)
        if cfg.store.url.startswith("sqlite"):
            con = sqlite3.connect(f"file:{d / 'campaign.db'}?mode=ro", uri=True, timeout=30)
            try:
                return con.execute(sql, (ident,)).fetchone()
            finally:
                con.close()
        from sqlalchemy import create_engine, text    # another SQLAlchemy store (PostgreSQL)

        if d not in self._engines:
            self._engines[d] = create_engine(cfg.store.url)
        with self._engines[d].connect() as con:
            return con.execute(text(sql.replace("?", ":i")), {"i": ident}).fetchone()

    def _truth(self, ident: str):
        for d in self.dirs:
            kiou = load_config(d).search.kiou
            row = self._query(d, self._ITEM, ident)
            if row is None:
                row2 = self._query(d, self._GOLD, ident)
                if row2 is not None:
                    return true_answer(None, kiou, row2[0])
                continue
            iou, label = row
            return true_answer(iou, kiou, label)      # the simulated crowds' own rule
        return None

    def __call__(self, task):
        with self.lock:
            self.calls += 1
        out = {}
        for f in task.fields:
            t = self._truth(f.name)
            if t is not None:
                out[f.name] = t
        return out
