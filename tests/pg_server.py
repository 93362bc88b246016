"""A throwaway PostgreSQL server for the tests: ``initdb`` into a temporary directory, started on
a free loopback port with trust authentication, stopped (``-m immediate``) and removed after.

PostgreSQL refuses to run as root; as root the server runs as the ``postgres`` system user
(Debian's ``postgresql`` package creates it).  When the PostgreSQL binaries or the ``psycopg``
driver are missing, the tests that need the server are skipped with the reason on a developer's
machine, and *fail* under CI (``CI`` set, as `.ci/run` runs): there the PostgreSQL tests must run.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest


def _pg_bindir() -> Path | None:
    found = shutil.which("initdb")
    cands = [Path(found).resolve().parent] if found else []
    cands += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for d in cands:
        if all((d / b).exists() for b in ("initdb", "pg_ctl", "postgres")):
            return d
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PgServer:
    bindir: Path
    root: Path
    port: int
    prefix: list[str]

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, db: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{db}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        subprocess.run(self.prefix + [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                                      "stop"], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


def _unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: CI must run the PostgreSQL tests")
    pytest.skip(reason)


def start_postgres() -> PgServer:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg is not installed (pip install 'labelprop[postgres]')")
    bindir = _pg_bindir()
    if bindir is None:
        _unavailable("PostgreSQL binaries (initdb, pg_ctl, postgres) not found")
    prefix: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="labelprop-pg-"))   # not under pytest's 0700 root-only tmp
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("running as root and there is no 'postgres' user to run PostgreSQL as")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    srv = PgServer(bindir, root, port, prefix)
    env = {**os.environ, "LC_ALL": "C"}
    r = subprocess.run(prefix + [str(bindir / "initdb"), "-D", str(srv.data), "-U", "postgres", "--auth=trust",
                                 "-E", "UTF8", "--no-sync"], capture_output=True, text=True, env=env, cwd=root)
    if r.returncode:
        raise RuntimeError(f"initdb failed: {r.stderr}")
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
    r = subprocess.run(prefix + [str(bindir / "pg_ctl"), "-D", str(srv.data), "-o", opts, "-l",
                                 str(root / "server.log"), "-w", "-t", "60", "start"],
                       capture_output=True, text=True, env=env, cwd=root)
    if r.returncode:
        log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
        srv.stop()
        raise RuntimeError(f"PostgreSQL did not start: {r.stderr}\n{log}")
    return srv
