"""Start a crowd server as a real subprocess on a free port: for tests, benches and the campaign loop.

    from orchestrator.crowd_server.testing import start_server

    with start_server(tmp_path / "crowd") as srv:          # SIGTERM on exit
        mturk = srv.client()                                # boto3 mturk client, signed with the server's key
        alice = srv.add_worker("alice")                     # {"worker_id", "name", "token", "signin_url"}
        pool = srv.simulate("ann:accuracy=0.95;bob:spammer", "tests.truth:answer")
        ...
        pool.stop()
        srv.kill()                                          # SIGKILL, for crash tests
        srv = srv.restart()                                 # same data dir and port

``srv.env()`` gives environment variables (AWS_SHARED_CREDENTIALS_FILE, AWS_CONFIG_FILE,
AWS_PROFILE) with which a child process's ``boto3.client("mturk")`` reaches the server
with no other configuration.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from . import credentials as cm
from .store import server_info_path


class ServerStartError(RuntimeError):
    pass


@dataclass
class CrowdServer:
    endpoint_url: str
    data_dir: Path
    access_key_id: str
    secret_access_key: str
    region: str
    process: subprocess.Popen
    log_path: Path
    host: str = "127.0.0.1"
    port: int = 0
    extra_args: tuple = ()
    ca_file: str | None = None          # under --tls self-signed: the CA to trust (boto3 verify=)
    public_url: str | None = None
    _pools: list = field(default_factory=list)

    # ------------------------------------------------------------ requester side

    def client(self, **config: Any):
        """A boto3 ``mturk`` client for this server.  ``config`` goes to botocore's Config."""
        import boto3
        from botocore.config import Config
        cfg = Config(**({"retries": {"max_attempts": 2, "mode": "standard"}, "connect_timeout": 5,
                         "read_timeout": 30} | config))
        return boto3.client("mturk", endpoint_url=self.endpoint_url, region_name=self.region,
                            aws_access_key_id=self.access_key_id, aws_secret_access_key=self.secret_access_key,
                            config=cfg, **({"verify": self.ca_file} if self.ca_file else {}))

    def env(self) -> dict[str, str]:
        return {"AWS_SHARED_CREDENTIALS_FILE": str(cm.credentials_path(self.data_dir)),
                "AWS_CONFIG_FILE": str(cm.config_path(self.data_dir)), "AWS_PROFILE": cm.PROFILE,
                "AWS_DEFAULT_REGION": self.region, "AWS_ENDPOINT_URL_MTURK": self.endpoint_url}

    def ssl_context(self):
        """For urllib and friends: trusts the server's own CA under --tls self-signed."""
        from .tls import client_context
        return client_context(self.ca_file) if self.endpoint_url.startswith("https:") else None

    def health(self) -> dict:
        with urllib.request.urlopen(self.endpoint_url + "/health", timeout=5, context=self.ssl_context()) as r:
            return json.loads(r.read())

    # ------------------------------------------------------------ worker side

    def add_worker(self, name: str, locale: str = "US") -> dict:
        """Create a worker directly in the server's database; returns id, token and sign-in link."""
        from .store import Store
        store = Store(self.data_dir)
        try:
            w, token = store.add_worker(name, locale=locale)
        finally:
            store.close()
        return {"worker_id": w.worker_id, "name": w.name, "token": token,
                "signin_url": f"{self.endpoint_url}/signin/{token}"}

    def simulate(self, workers, policy=None, poll_interval: float = 0.1):
        """Start simulated workers (spec string or WorkerProfile list; policy callable / 'mod:fn' / .json)."""
        from .simulated_workers import start_pool
        pool = start_pool(self.endpoint_url, workers, policy, data_dir=self.data_dir, poll_interval=poll_interval,
                          cafile=self.ca_file)
        self._pools.append(pool)
        return pool

    # ------------------------------------------------------------ lifecycle

    def alive(self) -> bool:
        return self.process.poll() is None

    def _stop_pools(self) -> None:
        for p in self._pools:
            p.stop()
        self._pools.clear()

    def stop(self, timeout: float = 15.0) -> int:
        """Graceful shutdown (SIGTERM); returns the exit status."""
        self._stop_pools()
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()

    def kill(self) -> None:
        """SIGKILL: what a crash looks like."""
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def restart(self, timeout: float = 30.0) -> "CrowdServer":
        """Start again on the same data dir and port (the endpoint URL stays the same)."""
        if self.alive():
            self.stop()
        return start_server(self.data_dir, host=self.host, port=self.port, extra_args=self.extra_args,
                            timeout=timeout, log_path=self.log_path)

    def __enter__(self) -> "CrowdServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_server(data_dir: str | Path, *, host: str = "127.0.0.1", port: int = 0,
                 extra_args: Sequence[str] = (), timeout: float = 30.0, log_path: str | Path | None = None,
                 env: dict | None = None, assets_dir: str | Path | None = None,
                 ca_file: str | Path | None = None, python: str | None = None,
                 repo: str | Path | None = None) -> CrowdServer:
    """Start ``python -m orchestrator.crowd_server`` and wait until it answers /health.

    ``ca_file``: the CA to trust for an HTTPS server started with ``--tls-cert`` (with ``--tls self-signed``
    the server's own CA is found by itself).

    ``assets_dir``: also serve that directory at ``{endpoint_url}/assets/...`` (``--assets DIR``).

    ``python``/``repo``: run the server of another checkout with its own interpreter (benchmarks compare
    two versions this way); default: this checkout, this interpreter.

    ``port=0`` picks a free port (race-free: the server binds it and reports it in server.json).
    Logs (stdout and the JSON request log on stderr) go to ``log_path`` (default DATA_DIR/server.log).
    """
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    if assets_dir is not None:
        extra_args = (*extra_args, "--assets", str(Path(assets_dir).resolve()))
    info_path = server_info_path(data_dir)
    log_path = Path(log_path) if log_path else data_dir / "server.log"
    cmd = [python or sys.executable, "-m", "orchestrator.crowd_server", "--host", host, "--port", str(port),
           "--data-dir", str(data_dir), *extra_args]
    penv = dict(os.environ if env is None else env)
    repo_root = str(Path(repo).resolve() if repo else Path(__file__).resolve().parents[2])
    penv["PYTHONPATH"] = repo_root + (os.pathsep + penv["PYTHONPATH"] if penv.get("PYTHONPATH") else "")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=penv, start_new_session=True, cwd=repo_root if repo else None)
    deadline = time.time() + timeout
    info = None
    while time.time() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise ServerStartError(f"crowd server exited with status {proc.returncode}:\n{tail}")
        try:
            data = json.loads(info_path.read_text())
            if data.get("pid") == proc.pid:
                info = data
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    if info is None:
        proc.kill()
        raise ServerStartError(f"crowd server did not start within {timeout} s; see {log_path}")
    creds = cm.load(data_dir)
    srv = CrowdServer(info["endpoint_url"], data_dir, creds.access_key_id, creds.secret_access_key, creds.region,
                      proc, log_path, host=host, port=info["port"], extra_args=tuple(extra_args),
                      ca_file=str(ca_file) if ca_file else info.get("ca_file"), public_url=info.get("public_url"))
    while time.time() < deadline:
        try:
            if srv.health()["status"] == "ok":
                return srv
        except OSError:
            time.sleep(0.05)
    srv.kill()
    raise ServerStartError(f"crowd server did not answer /health within {timeout} s; see {log_path}")
