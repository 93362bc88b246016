"""The command line and ops: help texts, one-line errors, sign-in links, health, logs, shutdown, credentials."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

try:
    from conftest_crowd import REPO, run_cli, start_crowd, wait_until
except ImportError:
    from tests.conftest_crowd import REPO, run_cli, start_crowd, wait_until


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **k):
        return None


def get(url: str, cookie: str | None = None):
    opener = urllib.request.build_opener(NoRedirect)
    req = urllib.request.Request(url, headers={"Cookie": cookie} if cookie else {})
    try:
        with opener.open(req, timeout=5) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


@pytest.fixture(scope="module")
def crowd(tmp_path_factory):
    c = start_crowd(tmp_path_factory.mktemp("cli"))
    yield c
    c.srv.stop()


@pytest.mark.parametrize("cmd", [[], ["add-worker"], ["list-workers"], ["credentials"], ["simulate"], ["add-funds"],
                                 ["revoke-worker"], ["rotate-credentials"]])
def test_help_teaches_with_examples(cmd):
    r = run_cli(*cmd, "--help")
    assert r.returncode == 0, r.stderr
    assert "Example" in r.stdout and "labelprop crowd-server" in r.stdout


def test_register_adds_the_command_group():
    import typer
    from typer.testing import CliRunner

    from orchestrator.crowd_server.cli import register
    app = typer.Typer()

    @app.command()
    def other():  # a second command so the group is addressed by name
        pass

    register(app)
    r = CliRunner().invoke(app, ["crowd-server", "--help"])
    assert r.exit_code == 0 and "add-worker" in r.output


@pytest.mark.parametrize("args, message", [
    (["--port", "70000"], "--port must be between 0 and 65535"),
    (["--simulate-workers", "ann:accuracy=2", "--answers", "x.json"], "accuracy='2': must be in [0, 1]"),
    (["--simulate-workers", "ann:speed=2", "--answers", "x.json"], "unknown option"),
    (["--simulate-workers", "ann"], "needs --policy MODULE:FUNCTION or --answers"),
    (["--simulate-workers", "ann", "--policy", "nosuchmodule_xyz:f"], "cannot import 'nosuchmodule_xyz'"),
    (["--policy", "a:b"], "only make sense with --simulate-workers"),
    (["--balance", "lots"], "--balance must be an amount"),
])
def test_bad_server_options_are_one_line_errors(tmp_path, args, message):
    r = run_cli("--data-dir", str(tmp_path / "d"), "--port", "0", *args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("labelprop: error: ") and message in lines[0], r.stderr


def test_port_taken_and_data_dir_in_use(crowd, tmp_path):
    r = run_cli("--data-dir", str(tmp_path / "other"), "--port", str(crowd.srv.port))
    assert r.returncode == 2
    assert r.stderr.strip() == (f"labelprop: error: port {crowd.srv.port} on 127.0.0.1 is already in use "
                                f"(another crowd server?); pick a free one with --port, or --port 0 for any free port")
    r = run_cli("--data-dir", str(crowd.srv.data_dir), "--port", "0")
    assert r.returncode == 2 and "is already using the data directory" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_add_worker_link_signs_in_and_others_are_refused(crowd):
    dd = str(crowd.srv.data_dir)
    r = run_cli("add-worker", "alice", "--data-dir", dd, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["signin_url"].startswith(crowd.srv.endpoint_url + "/signin/")
    assert info["worker_id"].startswith("A") and len(info["worker_id"]) == 14
    status, headers, _ = get(info["signin_url"])
    assert status == 303 and headers["Location"] == "/"
    cookie = headers["Set-Cookie"].split(";")[0]
    assert "HttpOnly" in headers["Set-Cookie"]
    status, _, body = get(crowd.srv.endpoint_url + "/", cookie)
    assert status == 200 and info["worker_id"] in body and "HITs available to you" in body
    # no link, a wrong link, a replaced link: refused
    assert get(crowd.srv.endpoint_url + "/")[0] == 401
    assert get(crowd.srv.endpoint_url + "/work", "lp_worker=forged")[0] == 401
    assert get(crowd.srv.endpoint_url + "/signin/forged")[0] == 401
    dup = run_cli("add-worker", "alice", "--data-dir", dd)
    assert dup.returncode == 2 and "already exists" in dup.stderr
    r2 = run_cli("add-worker", "alice", "--data-dir", dd, "--new-link", "--json")
    assert json.loads(r2.stdout)["worker_id"] == info["worker_id"]
    assert get(crowd.srv.endpoint_url + "/", cookie)[0] == 401
    assert run_cli("add-worker", "bad name!", "--data-dir", dd).returncode == 2
    listed = run_cli("list-workers", "--data-dir", dd)
    assert info["worker_id"] in listed.stdout and "alice" in listed.stdout


def test_health_and_structured_logs(crowd):
    h = crowd.srv.health()
    assert h["status"] == "ok" and h["pid"] == crowd.srv.process.pid
    crowd.mturk.get_account_balance()
    time.sleep(0.2)
    lines = [json.loads(l) for l in crowd.srv.log_path.read_text().splitlines() if l.startswith("{")]
    reqs = [l for l in lines if l["event"] == "request"]
    api = [l for l in reqs if l.get("op") == "GetAccountBalance"]
    assert api and api[-1]["status"] == 200 and api[-1]["method"] == "POST" and "ms" in api[-1]
    assert "request_id" in api[-1] and "ts" in api[-1]
    assert not any("/signin/" in l["path"] and l["path"] != "/signin/***" for l in reqs)  # secrets not logged


def test_credentials_files_work_with_plain_boto3(crowd):
    dd = crowd.srv.data_dir
    assert stat.S_IMODE(os.stat(dd / "credentials").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(dd).st_mode) == 0o700
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({k: v for k, v in crowd.srv.env().items() if k != "AWS_ENDPOINT_URL_MTURK"})
    code = "import boto3; print(boto3.client('mturk').get_account_balance()['AvailableBalance'])"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == crowd.mturk.get_account_balance()["AvailableBalance"]
    out = json.loads(run_cli("credentials", "--data-dir", str(dd)).stdout)
    assert out["aws_access_key_id"] == crowd.srv.access_key_id and out["endpoint_url"] == crowd.srv.endpoint_url


def test_graceful_shutdown_on_sigterm(tmp_path):
    c = start_crowd(tmp_path)
    info = c.srv.data_dir / "server.json"
    assert info.exists()
    assert c.srv.stop() == 0
    assert not info.exists()
    events = [json.loads(l)["event"] for l in c.srv.log_path.read_text().splitlines() if l.startswith("{")]
    assert events[-2:] == ["shutdown", "stopped"]
    # and it comes back with its data
    srv = c.srv.restart()
    try:
        assert srv.client().get_account_balance()["AvailableBalance"] == "10000.00"
    finally:
        srv.stop()


def _events(srv) -> list[dict]:
    return [json.loads(line) for line in srv.log_path.read_text().splitlines() if line.startswith("{")]


def _signed_api_request(srv, op: str, body: bytes) -> bytes:
    """The bytes of a SigV4-signed API request, signed by botocore exactly as boto3 would."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    req = AWSRequest(method="POST", url=srv.endpoint_url + "/", data=body,
                     headers={"Content-Type": "application/x-amz-json-1.1",
                              "X-Amz-Target": f"MTurkRequesterServiceV20170117.{op}"})
    SigV4Auth(Credentials(srv.access_key_id, srv.secret_access_key), "mturk-requester", srv.region).add_auth(req)
    head = "".join(f"{k}: {v}\r\n" for k, v in req.headers.items())
    return (f"POST / HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n{head}Content-Length: {len(body)}\r\n\r\n"
            .encode() + body)


def test_sigterm_finishes_the_request_in_flight_and_refuses_new_connections(tmp_path):
    """The shutdown promise, with no timing in it: a request whose headers the server has received when
    SIGTERM comes is answered in full (Connection: close) even though its body arrives after the signal;
    a new connection after the signal is refused; the log ends shutdown, that request, stopped; status 0."""
    c = start_crowd(tmp_path)
    srv = c.srv
    raw = _signed_api_request(srv, "GetAccountBalance", b"{}")
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
    s.sendall(raw[:-1])  # all but the last byte of the body: in flight until we send it
    wait_until(lambda: srv.health()["requests_in_flight"] == 1, what="the request to be in flight")
    srv.process.send_signal(signal.SIGTERM)
    wait_until(lambda: any(e["event"] == "shutdown" for e in _events(srv)), what="the shutdown log line")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    s.sendall(raw[-1:])
    resp = http.client.HTTPResponse(s)
    resp.begin()
    assert resp.status == 200 and resp.getheader("Connection") == "close"
    assert json.loads(resp.read())["AvailableBalance"] == "10000.00"
    s.close()
    assert srv.process.wait(60) == 0
    ev = _events(srv)
    names = [e["event"] for e in ev]
    i = names.index("shutdown")
    after = [e for e in ev[i + 1:] if e["event"] == "request"]
    assert [(e.get("op"), e["status"]) for e in after] == [("GetAccountBalance", 200)]
    assert names[-1] == "stopped" and ev[-1]["completed_after_signal"] == 1 and ev[-1]["abandoned"] == 0


def test_a_server_that_cannot_bind_leaves_no_data_directory(crowd, tmp_path):
    fresh = tmp_path / "never-created"
    r = run_cli("--data-dir", str(fresh), "--port", str(crowd.srv.port))
    assert r.returncode == 2 and "already in use" in r.stderr
    assert not fresh.exists()
