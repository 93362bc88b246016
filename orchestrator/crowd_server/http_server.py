"""The HTTP server: one port for the Requester API (POST / with X-Amz-Target) and the worker web.

Stack: the standard library's ``ThreadingHTTPServer`` with HTTP/1.1 keep-alive.
It needs no dependency, its per-request overhead (~0.1 ms) is small next to
the SQLite transaction and SigV4 check of each call (see ``bench/crowd_server.py``),
and each connection gets its own thread, which suits SQLite's one-writer model.

Ops: ``GET /health``, one JSON log line per request on stderr, graceful
shutdown on SIGTERM/SIGINT (stop accepting, finish in-flight requests, close
the database), a one-line error when the port is taken, and an exclusive lock
on the data directory so two servers never share one database.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy import func
from sqlmodel import select

from orchestrator.errors import LabelpropError

from . import api_errors as E
from . import credentials as creds_mod
from .api import RequesterApi
from .models import HIT, Worker
from .sigv4 import verify
from .store import Store, server_info_path
from .worker_actions import WorkerActions
from .worker_web import Response, WorkerWeb

API_TARGET_PREFIX = "MTurkRequesterServiceV20170117."
MAX_BODY = 4 * 1024 * 1024
_log_lock = threading.Lock()


def log_event(event: str, **fields) -> None:
    rec = {"ts": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "event": event, **fields}
    line = json.dumps(rec, separators=(",", ":"), default=str)
    with _log_lock:
        try:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass


class App:
    """Everything a request needs; shared by all handler threads."""

    def __init__(self, data_dir: Path, *, quiet: bool = False, synchronous: str = "FULL",
                 initial_balance: str = "10000.00", assets_dir: Path | None = None):
        self.store = Store(data_dir, synchronous=synchronous, initial_balance=initial_balance)
        self.creds = creds_mod.load_or_create(self.store.data_dir)
        self.api = RequesterApi(self.store)
        self.actions = WorkerActions(self.store)
        self.web = WorkerWeb(self.actions, assets_dir=assets_dir)
        self.quiet = quiet
        self.started = time.time()
        self.in_flight = 0
        self._flight_lock = threading.Lock()

    def lookup_secret(self, akid: str) -> str | None:
        return self.creds.secret_access_key if akid == self.creds.access_key_id else None

    # ------------------------------------------------------------ API

    def handle_api(self, h: "Handler", target: str, body: bytes, log: dict) -> Response:
        rid = str(uuid.uuid4())
        headers = [("Content-Type", "application/x-amz-json-1.1"), ("x-amzn-RequestId", rid)]
        op = target[len(API_TARGET_PREFIX):] if target.startswith(API_TARGET_PREFIX) else target
        log["op"], log["request_id"] = op, rid
        try:
            verify(h.command, h.path, list(h.headers.items()), body, self.lookup_secret)
            if not target.startswith(API_TARGET_PREFIX):
                raise E.UnknownOperation(target)
            try:
                params = json.loads(body or b"{}")
            except ValueError:
                raise E.RequestError("The request body is not valid JSON", E.INVALID_PARAMETER) from None
            result = self.api.dispatch(op, params)
            return Response(200, headers, json.dumps(result, separators=(",", ":")).encode())
        except E.ApiError as exc:
            body_out = exc.body()
            log["error"] = body_out.get("TurkErrorCode") or body_out.get("__type")
            return Response(exc.status, headers, json.dumps(body_out).encode())
        except Exception as exc:  # a bug: answer ServiceFault, keep serving
            log["error"] = "ServiceFault"
            log_event("exception", op=op, request_id=rid, error=repr(exc), traceback=traceback.format_exc())
            fault = E.ServiceFault("The server encountered an internal error; try again.", E.INTERNAL)
            return Response(500, headers, json.dumps(fault.body()).encode())

    # ------------------------------------------------------------ health

    def health(self) -> Response:
        with self.store.read() as s:
            hits = s.exec(select(func.count()).select_from(HIT)).one()
            workers = s.exec(select(func.count()).select_from(Worker)).one()
        body = {"status": "ok", "service": "labelprop-crowd-server", "api_version": "2017-01-17",
                "uptime_s": round(time.time() - self.started, 3), "hits": hits, "workers": workers,
                "pid": os.getpid()}
        return Response(200, [("Content-Type", "application/json")], json.dumps(body).encode())


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "labelprop-crowd-server/1"
    timeout = 120  # idle keep-alive connections are closed after this
    disable_nagle_algorithm = True  # small responses must not wait for delayed ACKs

    def log_message(self, fmt, *args):  # replaced by structured logs
        pass

    @property
    def app(self) -> App:
        return self.server.app  # type: ignore[attr-defined]

    def do_GET(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def do_HEAD(self):
        self._dispatch()

    def _dispatch(self) -> None:
        app = self.app
        t0 = time.perf_counter()
        with app._flight_lock:
            app.in_flight += 1
        path = urlsplit(self.path).path
        shown = "/signin/***" if path.startswith("/signin/") else path
        log: dict = {"method": self.command, "path": shown, "remote": self.client_address[0]}
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                resp = Response(413, [("Content-Type", "text/plain")], b"Request body too large\n")
                self.close_connection = True
            else:
                body = self.rfile.read(length) if length else b""
                target = self.headers.get("X-Amz-Target")
                if self.command == "POST" and (target or path == "/"):
                    resp = app.handle_api(self, target or "", body, log)
                elif path == "/health":
                    resp = app.health()
                else:
                    resp = app.web.handle(self.command, self.path, self.headers, body, log)
            self._send(resp)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            log["status"] = 499
        except Exception as exc:
            log_event("exception", path=shown, error=repr(exc), traceback=traceback.format_exc())
            try:
                self._send(Response(500, [("Content-Type", "text/plain")], b"Internal server error\n"))
            except OSError:
                self.close_connection = True
        finally:
            with app._flight_lock:
                app.in_flight -= 1
            if not app.quiet:
                log.setdefault("status", getattr(self, "_status", None))
                log["ms"] = round((time.perf_counter() - t0) * 1000, 2)
                log_event("request", **log)

    def _send(self, resp: Response) -> None:
        self._status = resp.status
        self.send_response(resp.status)
        for k, v in resp.headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(resp.body)))
        if self.server.stopping:  # type: ignore[attr-defined]
            self.send_header("Connection", "close")
            self.close_connection = True
        # One write for headers and body (end_headers() would flush the headers on their own).
        self._headers_buffer.append(b"\r\n")
        payload = b"".join(self._headers_buffer) + (resp.body if self.command != "HEAD" else b"")
        self._headers_buffer = []
        self.wfile.write(payload)


class CrowdHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, addr, app: App):
        self.app = app
        self.stopping = False
        super().__init__(addr, Handler)


# ---------------------------------------------------------------- lifecycle

class DataDirLock:
    def __init__(self, data_dir: Path):
        self.path = Path(data_dir) / "server.lock"
        self.fh = None

    def acquire(self) -> None:
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.seek(0)
            other = self.fh.read().strip() or "?"
            self.fh.close()
            self.fh = None
            raise LabelpropError(f"another crowd server (pid {other}) is already using the data directory "
                                 f"{self.path.parent}; stop it or pass another --data-dir") from None
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(str(os.getpid()))
        self.fh.flush()

    def release(self) -> None:
        if self.fh is not None:
            fcntl.flock(self.fh, fcntl.LOCK_UN)
            self.fh.close()
            self.fh = None


def bind(host: str, port: int, app: App) -> CrowdHTTPServer:
    try:
        if ":" in host:
            CrowdHTTPServer.address_family = socket.AF_INET6
        return CrowdHTTPServer((host, port), app)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise LabelpropError(f"port {port} on {host} is already in use (another crowd server?); "
                                 f"pick a free one with --port, or --port 0 for any free port") from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise LabelpropError(f"not allowed to listen on {host}:{port}; use a port above 1023") from None
        if exc.errno == errno.EADDRNOTAVAIL or isinstance(exc, socket.gaierror):
            raise LabelpropError(f"cannot listen on host {host!r}: {exc.strerror or exc}") from None
        raise


def endpoint_for(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)


def serve(data_dir: Path, host: str = "127.0.0.1", port: int = 8765, *, quiet: bool = False,
          synchronous: str = "FULL", initial_balance: str = "10000.00", simulate=None,
          on_ready=None, assets_dir: Path | None = None) -> None:
    """Run the server until SIGTERM/SIGINT.  ``simulate``: callable(endpoint_url, store) -> pool with .stop().

    ``assets_dir``: serve the files under it at ``/assets/...`` (public, no sign-in).
    """
    from .store import prepare_data_dir
    data_dir = prepare_data_dir(data_dir)
    lock = DataDirLock(data_dir)
    lock.acquire()
    app = None
    httpd = None
    pool = None
    try:
        if assets_dir is not None and not Path(assets_dir).is_dir():
            raise LabelpropError(f"--assets {assets_dir}: no such directory")
        app = App(data_dir, quiet=quiet, synchronous=synchronous, initial_balance=initial_balance,
                  assets_dir=assets_dir)
        httpd = bind(host, port, app)
        real_port = httpd.server_address[1]
        url = endpoint_for(host, real_port)
        creds_mod.write_config(data_dir, url)
        info = {"endpoint_url": url, "host": host, "port": real_port, "pid": os.getpid(), "started": time.time(),
                "data_dir": str(data_dir), "credentials_file": str(creds_mod.credentials_path(data_dir)),
                "config_file": str(creds_mod.config_path(data_dir)), "profile": creds_mod.PROFILE,
                "region": creds_mod.REGION,
                "assets_dir": str(Path(assets_dir).resolve()) if assets_dir is not None else None}
        _write_json_atomic(server_info_path(data_dir), info)

        stop = threading.Event()

        def _on_signal(signum, _frame):
            if not stop.is_set():
                stop.set()
                log_event("shutdown", signal=signal.Signals(signum).name)

                def _shutdown():
                    # Stop in-process simulated workers while the server still answers, so none is left
                    # waiting on a request that a stopped server would never serve.
                    if pool is not None:
                        pool.stop()
                    httpd.shutdown()

                threading.Thread(target=_shutdown, daemon=True).start()

        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)
        print(f"labelprop crowd-server: listening on {url}  (data dir {data_dir}; "
              f"requester key {app.creds.access_key_id}; credentials in {creds_mod.credentials_path(data_dir)})",
              flush=True)
        log_event("listening", endpoint_url=url, pid=os.getpid(), data_dir=str(data_dir))
        if simulate is not None:
            pool = simulate(url, app.store)
        if on_ready is not None:
            on_ready(url)
        httpd.serve_forever(poll_interval=0.2)
        httpd.stopping = True
        if pool is not None:
            pool.stop()
        deadline = time.time() + 10
        while app.in_flight > 0 and time.time() < deadline:
            time.sleep(0.02)
        log_event("stopped", in_flight_left=app.in_flight)
    finally:
        if pool is not None:
            pool.stop()
        if httpd is not None:
            httpd.server_close()
        if app is not None:
            app.store.close()
        try:
            info_now = json.loads(server_info_path(data_dir).read_text())
            if info_now.get("pid") == os.getpid():
                server_info_path(data_dir).unlink()
        except (OSError, ValueError):
            pass
        lock.release()
