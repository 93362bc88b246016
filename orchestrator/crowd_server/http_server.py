"""The HTTP server: one port for the Requester API (POST / with X-Amz-Target) and the worker web.

Stack: uvicorn's asyncio server with the h11 parser (a strict HTTP/1.1 implementation:
``Content-Length`` must be one non-negative integer, ``Transfer-Encoding: chunked`` bodies
are decoded as bodies, malformed request lines and headers are answered 400 and the
connection closed), running a small ASGI application.  Request handlers (SQLite
transactions, SigV4 checks, page rendering) run in a bounded thread pool, one
request each; the event loop only moves bytes.

What a client without credentials can make the server hold is bounded:

- connections: at most ``max_connections`` open at once; the next one gets 503 and is closed;
- request line and headers: at most ``max_header_bytes``, delivered within
  ``header_timeout`` seconds of the connection opening (or of the request's first byte
  on a kept-alive connection), else 408 and close;
- bodies: ``Content-Length`` above ``max_body`` is refused (413) before a byte of the body
  is read; a chunked body is counted as it arrives and refused once it passes
  ``max_body``; the whole body must arrive within ``body_timeout`` seconds (else 408);
  all request bodies buffered at one time share one budget (``body_budget``; past it, 503);
  a request with both ``Content-Length`` and ``Transfer-Encoding`` is refused (400), a
  request-smuggling shape;
- idle keep-alive connections are closed after ``keep_alive`` seconds.

Every refusal closes the connection.  Nothing here answers 5xx to bad input.

Shutdown (SIGTERM or SIGINT), the promise the tests check:

1. the listening socket is closed at once: new connections are refused;
2. connections with no request in progress (idle keep-alive, or headers not yet complete)
   are closed without a response;
3. every request whose headers the server had received is completed and answered (with
   ``Connection: close``), given at most ``shutdown_timeout`` seconds and its own body
   deadline; its ``request`` log line comes after ``shutdown``;
4. the log ends with ``stopped``, which counts the requests completed after the signal and
   any that had to be abandoned; the exit status is 0.

A request's log line is written before its response is sent, so a client that has its
response also has its log line on disk.

Ops: ``GET /health``, one JSON log line per request on stderr, a one-line error when the
port is taken (checked before the data directory is created), an exclusive lock on the
data directory so two servers never share one database, and optional TLS.
"""
from __future__ import annotations

import asyncio
import errno
import fcntl
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy import func
from sqlmodel import select

from orchestrator.crowd_server.errors import LabelpropError

from . import api_errors as E
from . import credentials as creds_mod
from .api import RequesterApi
from .models import HIT, Worker
from .sigv4 import verify
from .store import Store, server_info_path
from .worker_actions import WorkerActions
from .worker_web import SANDBOX, Response, WorkerWeb

API_TARGET_PREFIX = "MTurkRequesterServiceV20170117."
SERVER_HEADER = "labelprop-crowd-server/2"
MAX_BODY = 4 * 1024 * 1024
ALLOWED_METHODS = ("GET", "HEAD", "POST")

# HIT content (requester-written HTML) runs in an opaque origin wherever it is opened: in the worker's
# iframe (whose sandbox attribute says the same) or on its own in a tab.  No allow-same-origin, so it
# never runs with the worker's authority; top navigation only on a click of the worker's.
HIT_CONTENT_CSP = f"sandbox {SANDBOX}; frame-ancestors 'self'; base-uri 'none'; object-src 'none'"
# Worker pages: never framed by anything but the worker web itself (an opaque-origin HIT is not 'self').
WORKER_PAGE_CSP = "frame-ancestors 'self'; base-uri 'self'; object-src 'none'"
# Anything that is not one of our HTML pages (images, SVG, JSON, files from the assets directory) is
# sandboxed without scripts if a browser ever opens it as a document.
FILE_CSP = "sandbox; default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'"
HIT_CONTENT_PREFIXES = ("/task/",)

_log_lock = threading.Lock()
_timeout = getattr(asyncio, "timeout", None)  # Python 3.11+: one timer per body, no task per read


def log_event(event: str, **fields) -> None:
    rec = {"ts": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "event": event, **fields}
    line = json.dumps(rec, separators=(",", ":"), default=str)
    with _log_lock:
        try:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass


@dataclass(frozen=True)
class Limits:
    """What one server lets clients hold; see the module docstring."""
    max_body: int = MAX_BODY
    max_header_bytes: int = 16 * 1024
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keep_alive: float = 75.0
    max_connections: int = 256
    body_budget: int = 64 * 1024 * 1024
    threads: int = 16
    shutdown_timeout: float = 60.0


class Headers:
    """Request headers: case-insensitive ``get`` like ``http.client.HTTPMessage``, ``items`` as received."""

    def __init__(self, raw: list[tuple[bytes, bytes]]):
        self._items = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in raw]

    def get(self, name: str, default=None):
        name = name.lower()
        for k, v in self._items:
            if k == name:
                return v
        return default

    def get_all(self, name: str, failobj=None):
        name = name.lower()
        found = [v for k, v in self._items if k == name]
        return found or failobj

    def __getitem__(self, name: str):
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def keys(self) -> list[str]:
        return [k for k, _ in self._items]

    def __iter__(self):
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self._items)


def _plain(status: int, text: str, extra: list | None = None) -> Response:
    return Response(status, [("Content-Type", "text/plain; charset=utf-8")] + (extra or []), text.encode())


class App:
    """Everything a request needs; shared by all handler threads."""

    def __init__(self, data_dir: Path, *, quiet: bool = False, synchronous: str = "FULL",
                 initial_balance: str = "10000.00", assets_dir: Path | None = None, scheme: str = "http",
                 session_seconds: float | None = None):
        from .validation import service_model
        service_model()  # load botocore's model now, not during the first request
        self.store = Store(data_dir, synchronous=synchronous, initial_balance=initial_balance)
        self.creds = creds_mod.CredentialsFile(self.store.data_dir)
        self.api = RequesterApi(self.store)
        self.actions = WorkerActions(self.store)
        if session_seconds is not None:
            self.actions.session_seconds = session_seconds
        self.web = WorkerWeb(self.actions, assets_dir=assets_dir, scheme=scheme)
        self.scheme = scheme
        self.quiet = quiet
        self.started = time.time()
        self.in_flight = 0
        self.connections = 0
        self._flight_lock = threading.Lock()

    def lookup_secret(self, akid: str) -> str | None:
        return self.creds.secret_for(akid)

    # ------------------------------------------------------------ one request

    def handle(self, method: str, target: str, headers: Headers, body: bytes, log: dict) -> Response:
        """Answer one complete request (runs in a handler thread)."""
        path = urlsplit(target).path
        try:
            api_target = headers.get("X-Amz-Target")
            if method == "POST" and (api_target or path == "/"):
                return self.handle_api(method, target, headers, api_target or "", body, log)
            if path == "/health" and method in ("GET", "HEAD"):
                return self.health()
            refused = self.cross_site_refusal(method, path, headers)
            if refused is not None:
                log["error"] = "cross-site"
                return refused
            resp = self.web.handle(method, target, headers, body, log)
            resp.headers.extend(self.security_headers(path, resp))
            return resp
        except Exception as exc:  # a bug: answer 500 once, keep serving
            log_event("exception", path=log.get("path"), error=repr(exc), traceback=traceback.format_exc())
            return _plain(500, "Internal server error\n")

    def handle_api(self, method: str, target: str, headers: Headers, api_target: str, body: bytes,
                   log: dict) -> Response:
        rid = str(uuid.uuid4())
        out_headers = [("Content-Type", "application/x-amz-json-1.1"), ("x-amzn-RequestId", rid)]
        op = api_target[len(API_TARGET_PREFIX):] if api_target.startswith(API_TARGET_PREFIX) else api_target
        log["op"], log["request_id"] = op[:100], rid
        try:
            verify(method, target, headers.items(), body, self.lookup_secret)
            if not api_target.startswith(API_TARGET_PREFIX):
                raise E.UnknownOperation(api_target[:200])
            params = E.parse_json_body(body)
            result = self.api.dispatch(op, params)
            return Response(200, out_headers, json.dumps(result, separators=(",", ":")).encode())
        except E.ApiError as exc:
            body_out = exc.body()
            log["error"] = body_out.get("TurkErrorCode") or body_out.get("__type")
            return Response(exc.status, out_headers, json.dumps(body_out).encode())
        except Exception as exc:  # a bug: answer ServiceFault, keep serving
            log["error"] = "ServiceFault"
            log_event("exception", op=op[:100], request_id=rid, error=repr(exc), traceback=traceback.format_exc())
            fault = E.ServiceFault("The server encountered an internal error; try again.", E.INTERNAL)
            return Response(500, out_headers, json.dumps(fault.body()).encode())

    # ------------------------------------------------------------ worker-web security

    def cross_site_refusal(self, method: str, path: str, headers: Headers) -> Response | None:
        """Refuse state-changing worker requests that a browser sent from another origin (CSRF).

        Browsers name the page that made a POST in ``Origin`` (``null`` for an opaque origin such as a
        sandboxed HIT) and in ``Sec-Fetch-Site``; programmatic clients send neither.  Only
        ``/mturk/externalSubmit`` takes posts from HIT content, as on MTurk: the assignment id is the
        capability, and the worker must own it when a session comes along.
        """
        if method != "POST" or path == "/mturk/externalSubmit":
            return None
        origin = headers.get("Origin")
        site = headers.get("Sec-Fetch-Site")
        # Host and port, not the scheme: behind a TLS-terminating proxy the browser says https, we see http.
        foreign = origin is not None and urlsplit(origin).netloc.lower() != (headers.get("Host") or "").lower()
        if foreign or (site is not None and site not in ("same-origin", "none")):
            return _plain(403, "Cross-site request refused: this action can only be taken from the worker pages.\n",
                          [("Cache-Control", "no-store")])
        return None

    def security_headers(self, path: str, resp: Response) -> list[tuple[str, str]]:
        have = {k.lower() for k, _ in resp.headers}
        out = [("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "same-origin")]
        ctype = next((v for k, v in resp.headers if k.lower() == "content-type"), "")
        if path.startswith(HIT_CONTENT_PREFIXES):
            out.append(("Content-Security-Policy", HIT_CONTENT_CSP))
        elif ctype.startswith("text/html") or resp.status >= 300 or not ctype:
            out += [("Content-Security-Policy", WORKER_PAGE_CSP), ("X-Frame-Options", "SAMEORIGIN")]
        elif not ctype.startswith(("text/javascript", "text/css")):
            out.append(("Content-Security-Policy", FILE_CSP))
        if self.scheme == "https":
            out.append(("Strict-Transport-Security", "max-age=86400"))
        return [(k, v) for k, v in out if k.lower() not in have]

    # ------------------------------------------------------------ health

    def health(self) -> Response:
        with self.store.read() as s:
            hits = s.exec(select(func.count()).select_from(HIT)).one()
            workers = s.exec(select(func.count()).select_from(Worker)).one()
        body = {"status": "ok", "service": "labelprop-crowd-server", "api_version": "2017-01-17",
                "uptime_s": round(time.time() - self.started, 3), "hits": hits, "workers": workers,
                "pid": os.getpid(), "connections": self.connections,
                "requests_in_flight": max(0, self.in_flight - 1)}  # not counting this one
        return Response(200, [("Content-Type", "application/json"), ("Cache-Control", "no-store")],
                        json.dumps(body).encode())


# ---------------------------------------------------------------- ASGI application

class _Refused(Exception):
    def __init__(self, status: int, text: str):
        super().__init__(text)
        self.status, self.text = status, text


class AsgiApp:
    """Reads each request within the limits, runs ``App.handle`` in the thread pool, writes the answer."""

    def __init__(self, app: App, limits: Limits):
        self.app = app
        self.limits = limits
        self.executor = ThreadPoolExecutor(limits.threads, thread_name_prefix="crowd-req")
        self.budget_left = limits.body_budget
        self.stopping = False
        self.completed_after_signal = 0
        self.abandoned = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        await self.http(scope, receive, send)

    async def http(self, scope, receive, send) -> None:
        app = self.app
        t0 = time.perf_counter()
        method = scope["method"]
        raw_path = scope.get("raw_path") or scope["path"].encode("latin-1")
        target = raw_path.decode("latin-1")
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        path = urlsplit(target).path
        shown = "/signin/***" if path.startswith("/signin/") else path[:200]
        client = scope.get("client")
        log: dict = {"method": method[:16], "path": shown, "remote": client[0] if client else None}
        headers = Headers(scope["headers"])
        with app._flight_lock:
            app.in_flight += 1
        held = [0]  # bytes of the body budget this request holds
        try:
            try:
                if method not in ALLOWED_METHODS:
                    raise _Refused(405, "Method not allowed\n")
                # h11 limits headers that arrive in pieces; these arrived in one read: same limit.
                if len(target) + sum(len(k) + len(v) + 4 for k, v in scope["headers"]) > self.limits.max_header_bytes:
                    raise _Refused(431, "Request header fields too large\n")
                te = headers.get("Transfer-Encoding")
                cl = headers.get("Content-Length")
                if te is not None and cl is not None:
                    raise _Refused(400, "A request must not have both Content-Length and Transfer-Encoding\n")
                declared = int(cl) if cl is not None else 0  # h11 has checked it is digits
                if declared > self.limits.max_body:
                    raise _Refused(413, f"Request body too large (at most {self.limits.max_body} bytes)\n")
                if te is None:
                    if declared > self.budget_left:
                        raise _Refused(503, "Server busy; try again shortly\n")
                    self.budget_left -= declared
                    held[0] = declared
                if te is None and declared == 0:
                    body = b""  # nothing to read: h11 has already seen the end of this request
                else:
                    body = await self._read_body(receive, chunked=te is not None, held=held)
            except _Refused as r:
                resp = _plain(r.status, r.text, [("Connection", "close")]
                              + ([("Allow", ", ".join(ALLOWED_METHODS))] if r.status == 405 else [])
                              + ([("Retry-After", "1")] if r.status == 503 else []))
                log["error"] = r.text.strip()[:80]
            else:
                loop = asyncio.get_running_loop()
                resp = await loop.run_in_executor(self.executor, app.handle, method, target, headers, body, log)
                body = b""
        except asyncio.CancelledError:
            self.abandoned += 1
            log["status"] = 499
            self._log(log, t0)
            raise
        finally:
            self.budget_left += held[0]
            with app._flight_lock:
                app.in_flight -= 1
        log["status"] = resp.status
        if self.stopping:
            resp.headers.append(("Connection", "close"))
            self.completed_after_signal += 1
        self._log(log, t0)
        await self._send(send, resp, method)

    async def _read_body(self, receive, *, chunked: bool, held: list) -> bytes:
        """The whole body within the body deadline and size limit.  ``held[0]``: bytes of the body budget this
        request holds (the caller gives them back, whatever happens)."""
        if _timeout is None:  # Python 3.10
            try:
                return await asyncio.wait_for(self._receive_body(receive, chunked, held), self.limits.body_timeout)
            except asyncio.TimeoutError:
                raise _Refused(408, "Request body not received in time\n") from None
        try:
            async with _timeout(self.limits.body_timeout):
                return await self._receive_body(receive, chunked, held)
        except TimeoutError:
            raise _Refused(408, "Request body not received in time\n") from None

    async def _receive_body(self, receive, chunked: bool, held: list) -> bytes:
        parts: list[bytes] = []
        got = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                raise _Refused(400, "Client went away\n")
            chunk = msg.get("body", b"")
            if chunk:
                got += len(chunk)
                if got > self.limits.max_body:
                    raise _Refused(413, f"Request body too large (at most {self.limits.max_body} bytes)\n")
                if chunked:  # a chunked body takes its budget as it arrives
                    if len(chunk) > self.budget_left:
                        raise _Refused(503, "Server busy; try again shortly\n")
                    self.budget_left -= len(chunk)
                    held[0] += len(chunk)
                parts.append(chunk)
            if not msg.get("more_body", False):
                return b"".join(parts)

    def _log(self, log: dict, t0: float) -> None:
        if not self.app.quiet:
            log["ms"] = round((time.perf_counter() - t0) * 1000, 2)
            log_event("request", **log)

    @staticmethod
    async def _send(send, resp: Response, method: str) -> None:
        headers = [(k.encode("latin-1"), str(v).encode("latin-1")) for k, v in resp.headers]
        if resp.status not in (204, 304):
            headers.append((b"content-length", str(len(resp.body)).encode()))
        await send({"type": "http.response.start", "status": resp.status, "headers": headers})
        await send({"type": "http.response.body", "body": resp.body if method != "HEAD" else b"",
                    "more_body": False})


# ---------------------------------------------------------------- the HTTP/1.1 protocol, bounded

def _raw_response(status: int, reason: str, text: str) -> bytes:
    body = text.encode()
    return (f"HTTP/1.1 {status} {reason}\r\nServer: {SERVER_HEADER}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


def make_protocol(limits: Limits, app: App):
    """uvicorn's h11 protocol plus a connection cap and a deadline for each request's headers."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class BoundedH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None
        _refused = False

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            app.connections = len(self.connections)
            if len(self.connections) > limits.max_connections:
                self._refused = True
                transport.write(_raw_response(503, "Service Unavailable", "Too many connections; try again shortly\n"))
                transport.close()
                return
            self._arm_header_timer()

        def connection_lost(self, exc) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)
            app.connections = len(self.connections)

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            if self._header_timer is None and self._between_requests():
                self._arm_header_timer()
            super().data_received(data)
            if not self._between_requests():
                self._cancel_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self._between_requests() and not self.transport.is_closing():
                self._cancel_header_timer()  # idle now: the keep-alive timer runs until the next byte

        def _between_requests(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm_header_timer(self) -> None:
            self._cancel_header_timer()
            self._header_timer = self.loop.call_later(limits.header_timeout, self._header_timeout)

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            if self._between_requests() and not self.transport.is_closing():
                self.transport.write(_raw_response(408, "Request Timeout", "Request headers not received in time\n"))
                self.transport.close()

        def shutdown(self) -> None:
            self._cancel_header_timer()
            if self._between_requests() and not self.transport.is_closing():
                # Idle: nothing to finish or flush.  Abort rather than close, so a TLS connection does not
                # wait for a close_notify that an idle client in a connection pool never sends.
                self.transport.abort()
                return
            super().shutdown()

    return BoundedH11Protocol


class _UvicornLogBridge(logging.Handler):
    """uvicorn's own messages (bad requests, errors) as structured log lines."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a log record must never break serving
            msg = str(record.msg)
        fields = {"level": record.levelname.lower(), "message": msg[:500]}
        if record.exc_info:
            fields["traceback"] = "".join(traceback.format_exception(*record.exc_info))[-4000:]
        log_event("http", **fields)


def _install_log_bridge() -> None:
    lg = logging.getLogger("uvicorn")
    lg.handlers = [_UvicornLogBridge(level=logging.WARNING)]
    lg.setLevel(logging.WARNING)
    lg.propagate = False
    logging.getLogger("uvicorn.access").disabled = True


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


def bind_socket(host: str, port: int) -> socket.socket:
    """Listen on host:port (before anything is created on disk); one-line errors for the usual failures."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise LabelpropError(f"cannot listen on host {host!r}: {exc.strerror or exc}") from None
    family, _, _, _, addr = infos[0]
    # proto=IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say they are TCP,
    # and without it every response waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if host in ("::", "") else 1)
        sock.bind(addr)
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise LabelpropError(f"port {port} on {host} is already in use (another crowd server?); "
                                 f"pick a free one with --port, or --port 0 for any free port") from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise LabelpropError(f"not allowed to listen on {host}:{port}; use a port above 1023") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise LabelpropError(f"cannot listen on host {host!r}: {exc.strerror or exc}") from None
        raise
    return sock


def endpoint_for(host: str, port: int, scheme: str = "http", name: str | None = None) -> str:
    shown = name or ("127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host))
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"{scheme}://{shown}:{port}"


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)


def serve(data_dir: Path, host: str = "127.0.0.1", port: int = 8765, *, quiet: bool = False,
          synchronous: str = "FULL", initial_balance: str = "10000.00", simulate=None,
          on_ready=None, assets_dir: Path | None = None, limits: Limits | None = None, tls=None,
          session_seconds: float | None = None) -> None:
    """Run the server until SIGTERM/SIGINT.  ``simulate``: callable(endpoint_url, store, cafile) -> pool with .stop().

    ``assets_dir``: serve the files under it at ``/assets/...`` (public, no sign-in).
    ``tls``: a ``tls.TlsSetup`` (certificate and key, or how to make them), or None for plain HTTP.
    """
    import uvicorn

    from . import tls as tls_mod
    from .store import prepare_data_dir
    limits = limits or Limits()
    if assets_dir is not None and not Path(assets_dir).is_dir():
        raise LabelpropError(f"--assets {assets_dir}: no such directory")
    if tls is not None:
        tls.check_files()
    sock = bind_socket(host, port)  # first: a server that cannot listen leaves nothing behind
    lock = None
    app = None
    asgi = None
    pool = None
    try:
        data_dir = prepare_data_dir(data_dir)
        lock = DataDirLock(data_dir)
        lock.acquire()
        real_port = sock.getsockname()[1]
        scheme = "https" if tls is not None else "http"
        cert = tls.materialize(data_dir, host) if tls is not None else None
        url = endpoint_for(host, real_port, scheme, cert.endpoint_name if cert else None)
        public = (tls_mod.public_url(host, real_port, scheme, cert) if host in ("0.0.0.0", "::", "") else url)
        app = App(data_dir, quiet=quiet, synchronous=synchronous, initial_balance=initial_balance,
                  assets_dir=assets_dir, scheme=scheme, session_seconds=session_seconds)
        creds_mod.write_config(data_dir, url, ca_bundle=cert.ca_file if cert else None)
        info = {"endpoint_url": url, "public_url": public, "host": host, "port": real_port, "pid": os.getpid(),
                "started": time.time(), "data_dir": str(data_dir),
                "credentials_file": str(creds_mod.credentials_path(data_dir)),
                "config_file": str(creds_mod.config_path(data_dir)), "profile": creds_mod.PROFILE,
                "region": creds_mod.REGION,
                "assets_dir": str(Path(assets_dir).resolve()) if assets_dir is not None else None,
                "tls": cert.describe() if cert else None,
                "ca_file": cert.ca_file if cert else None}
        asgi = AsgiApp(app, limits)
        _install_log_bridge()
        config = uvicorn.Config(
            asgi, http=make_protocol(limits, app), ws="none", lifespan="off", log_config=None,
            access_log=False, proxy_headers=False, server_header=False, date_header=True,
            headers=[("Server", SERVER_HEADER)], timeout_keep_alive=limits.keep_alive,
            timeout_graceful_shutdown=limits.shutdown_timeout,
            h11_max_incomplete_event_size=limits.max_header_bytes, backlog=1024,
            ssl_certfile=cert.cert_file if cert else None, ssl_keyfile=cert.key_file if cert else None)
        config.load()
        if cert is not None:
            config.ssl = tls_mod.server_context(cert)  # TLS 1.2+, modern ciphers (not uvicorn's default list)
        server = _Server(config)
        server.limits = limits

        def begin_shutdown(sig: int) -> None:
            asgi.stopping = True
            log_event("shutdown", signal=signal.Signals(sig).name,
                      requests_in_flight=app.in_flight, connections=app.connections)

        server.on_shutdown = begin_shutdown
        server.before_close = (lambda: pool.stop()) if simulate is not None else None
        _write_json_atomic(server_info_path(data_dir), info)
        print(f"labelprop crowd-server: listening on {url}  (data dir {data_dir}; "
              f"requester key {app.creds.current().access_key_id}; credentials in "
              f"{creds_mod.credentials_path(data_dir)})", flush=True)
        if public != url:
            print(f"labelprop crowd-server: workers reach it at {public}", flush=True)
        if cert is not None:
            print(f"labelprop crowd-server: TLS {cert.describe_line()}", flush=True)
        log_event("listening", endpoint_url=url, public_url=public, pid=os.getpid(), data_dir=str(data_dir),
                  tls=scheme == "https", limits=limits.__dict__)

        def _started() -> None:
            nonlocal pool
            if simulate is not None:
                pool = simulate(url, app.store, cert.ca_file if cert else None)
                server.before_close = pool.stop
            if on_ready is not None:
                on_ready(url)

        server.on_started = _started
        server.run(sockets=[sock])
        log_event("stopped", completed_after_signal=asgi.completed_after_signal, abandoned=asgi.abandoned,
                  connections_left=app.connections)
    finally:
        if pool is not None:
            pool.stop()
        if asgi is not None:
            asgi.executor.shutdown(wait=True, cancel_futures=True)
        sock.close()
        if app is not None:
            app.store.close()
        if lock is not None and lock.fh is not None:
            try:
                info_now = json.loads(server_info_path(data_dir).read_text())
                if info_now.get("pid") == os.getpid():
                    server_info_path(data_dir).unlink()
            except (OSError, ValueError):
                pass
        if lock is not None:
            lock.release()


def _make_server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server with our shutdown hooks; exits with status 0 after a graceful stop."""
        on_shutdown = None
        on_started = None
        before_close = None
        limits = Limits()

        def handle_exit(self, sig, frame) -> None:
            # Runs in the signal handler: only set flags (no locks, no I/O).
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            self.should_exit = True
            if not getattr(self, "_signal", None):
                self._signal = sig

        @property
        def _captured_signals(self):  # uvicorn re-raises captured signals after shutdown: we exit 0 instead
            return []

        @_captured_signals.setter
        def _captured_signals(self, value):
            pass

        async def startup(self, sockets=None) -> None:
            loop = asyncio.get_running_loop()
            create_server = loop.create_server

            async def bounded_create_server(*args, **kwargs):
                if kwargs.get("ssl") is not None:
                    # A TLS handshake counts against the header deadline; a closing TLS connection waits at
                    # most a few seconds for the client's close_notify (asyncio's default is 30 s).
                    kwargs.setdefault("ssl_handshake_timeout", self.limits.header_timeout)
                    kwargs.setdefault("ssl_shutdown_timeout", 5.0)
                return await create_server(*args, **kwargs)

            loop.create_server = bounded_create_server  # uvicorn offers no way to pass these
            try:
                await super().startup(sockets=sockets)
            finally:
                del loop.create_server
            if self.on_started is not None and self.started:
                await asyncio.get_running_loop().run_in_executor(None, self.on_started)

        async def shutdown(self, sockets=None) -> None:
            # Stop accepting at once (then say so), and let in-process simulated workers stop while we
            # still answer the requests they have in flight.
            for s in getattr(self, "servers", []):
                s.close()
            if self.on_shutdown is not None:
                self.on_shutdown(getattr(self, "_signal", None) or signal.SIGTERM)
            if self.before_close is not None:
                await asyncio.get_running_loop().run_in_executor(None, self.before_close)
            await super().shutdown(sockets=sockets)

    return Server


class _Server:
    """Late import of uvicorn: ``import orchestrator.crowd_server.http_server`` stays light."""

    def __new__(cls, config):
        return _make_server_class()(config)
