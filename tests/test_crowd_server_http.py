"""The crowd server's HTTP layer under attack, from raw sockets: what a client without credentials can make
it read, hold or misparse.  Each test is one of the audit's attack scripts (issue 11) and asserts the refusal,
never a timing: deadlines are set short on the server's command line and the tests wait for outcomes."""
from __future__ import annotations

import http.client
import json
import re
import socket
import threading
import time

import pytest

try:
    from conftest_crowd import start_crowd, wait_until
except ImportError:
    from tests.conftest_crowd import start_crowd, wait_until

MAX_CONNECTIONS = 70


@pytest.fixture(scope="module")
def crowd(tmp_path_factory):
    c = start_crowd(tmp_path_factory.mktemp("http"),
                    extra_args=["--header-timeout", "2", "--body-timeout", "3",
                                "--max-connections", str(MAX_CONNECTIONS)])
    yield c
    assert c.srv.stop() == 0


def addr(crowd) -> tuple[str, int]:
    return "127.0.0.1", crowd.srv.port


def connect(crowd, timeout: float = 30.0) -> socket.socket:
    s = socket.create_connection(addr(crowd), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_all(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as closed)."""
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return out
        if not chunk:
            return out
        out += chunk


def send_quietly(s: socket.socket, data: bytes) -> int:
    """Send as much of ``data`` as the server takes before it closes; returns the bytes sent."""
    sent = 0
    try:
        while sent < len(data):
            sent += s.send(data[sent:sent + 65536])
    except (BrokenPipeError, ConnectionResetError, socket.timeout):
        pass
    return sent


def statuses(raw: bytes) -> list[int]:
    """The status of every response in a raw byte stream (a body may run straight into the next response)."""
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)]


def rss_kib(pid: int) -> int:
    """The server's peak resident memory so far (VmHWM), KiB."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def healthy(crowd) -> bool:
    return crowd.srv.health()["status"] == "ok" and crowd.mturk.get_account_balance()["AvailableBalance"] != ""


def test_negative_content_length_is_refused_before_any_body_is_read(crowd):
    pid = crowd.srv.process.pid
    before = rss_kib(pid)
    s = connect(crowd)
    s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: MTurkRequesterServiceV20170117.GetAccountBalance\r\n"
              b"Content-Length: -1\r\n\r\n")
    sent = send_quietly(s, b"x" * (50 * 1024 * 1024))  # the audit's 50 MB body
    raw = read_all(s)
    s.close()
    assert raw == b"" or statuses(raw) == [400]
    assert sent < 50 * 1024 * 1024, "the server kept reading a body it had refused"
    assert rss_kib(pid) - before < 20 * 1024
    assert healthy(crowd)


@pytest.mark.parametrize("value", [b"abc", b"1e3", b"0x10", b"5, 6", b" ", b"+5", b"18446744073709551617x"])
def test_invalid_content_length_is_400_not_500(crowd, value):
    s = connect(crowd)
    s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: " + value + b"\r\n\r\n{}")
    raw = read_all(s)
    s.close()
    assert statuses(raw) == [400], raw[:300]
    assert healthy(crowd)


def test_declared_oversized_body_is_refused_before_reading_it(crowd):
    s = connect(crowd)
    s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: MTurkRequesterServiceV20170117.GetAccountBalance\r\n"
              b"Content-Length: 52428800\r\n\r\n")
    # Not one byte of the body is sent: the answer can only come from the header.
    raw = read_all(s)
    s.close()
    assert statuses(raw) == [413] and b"too large" in raw


def test_chunked_body_is_a_body_not_a_second_request(crowd):
    """The chunk data looks like a request; only the request after the body is one."""
    smuggled = b"GET /favicon.ico HTTP/1.1\r\nHost: x\r\n\r\n"
    s = connect(crowd)
    s.sendall(b"POST /mturk/externalSubmit HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
              b"Content-Type: application/x-www-form-urlencoded\r\n\r\n"
              + f"{len(smuggled):x}\r\n".encode() + smuggled + b"\r\n0\r\n\r\n"
              + b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    raw = read_all(s)
    s.close()
    # 400: no assignment id in the (decoded) body; then the health check; never the smuggled 204.
    assert statuses(raw) == [400, 200]


def test_content_length_with_transfer_encoding_is_refused_and_closed(crowd):
    smuggled = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    body = b"0\r\n\r\n" + smuggled
    s = connect(crowd)
    s.sendall(b"POST /mturk/externalSubmit HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
              + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    raw = read_all(s)
    s.close()
    assert statuses(raw) == [400] and b"both Content-Length and Transfer-Encoding" in raw


def test_oversized_chunked_body_is_cut_off(crowd):
    pid = crowd.srv.process.pid
    before = rss_kib(pid)
    s = connect(crowd)
    s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: MTurkRequesterServiceV20170117.GetAccountBalance\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"100000\r\n" + b"y" * 0x100000 + b"\r\n"  # 1 MiB chunks, 40 of them
    sent = send_quietly(s, chunk * 40)
    raw = read_all(s)
    s.close()
    assert raw == b"" or statuses(raw) == [413]
    assert sent < 40 * len(chunk)
    assert rss_kib(pid) - before < 20 * 1024


def test_headers_too_large_are_refused(crowd):
    s = connect(crowd)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"a" * 40000 + b"\r\n\r\n")
    raw = read_all(s)
    s.close()
    assert statuses(raw) == [431]
    s = connect(crowd)  # the same, dribbled in pieces: h11's buffer limit
    send_quietly(s, b"GET /health HTTP/1.1\r\nHost: x\r\n")
    for _ in range(40):
        if not send_quietly(s, b"X-Big: " + b"a" * 1000 + b"\r\n"):
            break
    raw = read_all(s)
    s.close()
    assert statuses(raw) in ([400], [431])


def test_fifty_slow_connections_are_cut_off_and_do_not_stop_service(crowd):
    """Slowloris: 50 connections dribble header lines forever.  The server keeps answering others and closes
    every one of the 50 once its header deadline (2 s here) has passed."""
    socks = [connect(crowd, timeout=60) for _ in range(50)]
    for s in socks:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
    closed = [False] * len(socks)
    stop = threading.Event()

    def dribble():
        while not stop.is_set():
            for i, s in enumerate(socks):
                if not closed[i]:
                    try:
                        s.send(b"X-Slow: 1\r\n")
                    except OSError:
                        closed[i] = True
            stop.wait(0.3)

    t = threading.Thread(target=dribble, daemon=True)
    t.start()
    try:
        assert healthy(crowd)  # served while 50 connections hang
        answers = []
        for s in socks:
            raw = read_all(s)  # returns when the server closes this connection
            answers.append(raw)
    finally:
        stop.set()
        t.join()
        for s in socks:
            s.close()
    assert all(a == b"" or statuses(a) == [408] for a in answers)
    assert sum(1 for a in answers if statuses(a) == [408]) >= 1
    assert healthy(crowd)


def test_silent_connection_is_closed_after_the_header_deadline(crowd):
    s = connect(crowd, timeout=60)
    raw = read_all(s)  # we never send a byte
    s.close()
    assert statuses(raw) == [408]


def test_slow_body_gets_408(crowd):
    s = connect(crowd, timeout=60)
    s.sendall(b"POST /mturk/externalSubmit HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
              b"Content-Type: application/x-www-form-urlencoded\r\n\r\nassignmentId=")
    raw = read_all(s)  # the other 87 bytes never come
    s.close()
    assert statuses(raw) == [408]


def test_connections_over_the_cap_get_503(tmp_path):
    c = start_crowd(tmp_path, extra_args=["--max-connections", "20", "--header-timeout", "60"])
    held = []
    try:
        for _ in range(30):
            held.append(connect(c))
        # Accepted in order: the first 20 are served, the next 10 were answered 503 and closed at once.
        for s in held[20:]:
            assert statuses(read_all(s)) == [503]
        for s in held[:20]:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 200 ")
    finally:
        for s in held:
            s.close()
    wait_until(lambda: healthy(c), what="service after the connections are gone")
    assert c.srv.stop() == 0


def test_keep_alive_serves_many_requests_on_one_connection(crowd):
    conn = http.client.HTTPConnection("127.0.0.1", crowd.srv.port, timeout=10)
    conn.connect()
    local = conn.sock.getsockname()
    for _ in range(5):
        conn.request("GET", "/health")
        r = conn.getresponse()
        assert r.status == 200 and json.loads(r.read())["status"] == "ok"
        assert conn.sock is not None and conn.sock.getsockname() == local
    conn.close()


def test_unknown_methods_get_405(crowd):
    for method in ("PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "BREW"):
        conn = http.client.HTTPConnection("127.0.0.1", crowd.srv.port, timeout=10)
        conn.request(method, "/")
        r = conn.getresponse()
        r.read()
        assert r.status == 405 and r.getheader("Allow") == "GET, HEAD, POST"
        conn.close()


def test_memory_stays_bounded_under_a_stream_of_bad_requests(crowd):
    """About 300 MB of oversized, smuggling-shaped and malformed requests from 8 clients at once: the server's
    peak resident memory grows by far less than that (the old server read each whole body first)."""
    pid = crowd.srv.process.pid
    healthy(crowd)
    before = rss_kib(pid)
    big, blob = b"w" * (25 * 1024 * 1024), b"z" * (5 * 1024 * 1024)
    heads = [
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n500000\r\n",
        b"POST /mturk/externalSubmit HTTP/1.1\r\nHost: x\r\nContent-Length: 5242880\r\n\r\n",
        b"GARBAGE\x00\xff /\r\n\r\n",
    ]

    def one(head: bytes, body: bytes) -> None:
        s = connect(crowd)
        s.sendall(head)
        send_quietly(s, body)
        try:
            s.shutdown(socket.SHUT_WR)  # end of body for a server that reads to EOF
        except OSError:
            pass
        read_all(s)
        s.close()

    def client(k: int) -> None:
        one(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", big)
        for i in range(4):
            one(heads[(k + i) % len(heads)], blob)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert healthy(crowd)
    grown_mib = (rss_kib(pid) - before) / 1024
    assert grown_mib < 48, f"peak resident memory grew by {grown_mib:.0f} MiB under ~360 MB of refused requests"
