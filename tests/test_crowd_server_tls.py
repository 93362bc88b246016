"""TLS (issue 11, item 3), and sign-ins that expire and can be revoked.

``--tls self-signed`` makes a local CA and a server certificate; boto3 verifies it with ``verify=`` (or with
nothing more than the data directory's AWS config file), Chromium signs a worker in over HTTPS, cookies are
Secure/HttpOnly/SameSite.  ``--tls-cert/--tls-key`` serve the operator's own certificate.  Sign-in links and
sessions expire on the server's clock and end at once on ``revoke-worker``; ``rotate-credentials`` replaces the
requester key of a running server."""
from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

try:
    from conftest_crowd import CHROMIUM_ARGS, chromium_path, run_cli, start_crowd, worker_page  # noqa: F401
    from test_crowd_server_browser import browser  # noqa: F401
except ImportError:
    from tests.conftest_crowd import CHROMIUM_ARGS, chromium_path, run_cli, start_crowd, worker_page  # noqa: F401
    from tests.test_crowd_server_browser import browser  # noqa: F401


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **k):
        return None


def get(srv, path_or_url: str, cookie: str | None = None, method: str = "GET"):
    url = path_or_url if "://" in path_or_url else srv.endpoint_url + path_or_url
    handlers = [NoRedirect()]
    if url.startswith("https:"):
        handlers.append(urllib.request.HTTPSHandler(context=srv.ssl_context()))
    opener = urllib.request.build_opener(*handlers)
    req = urllib.request.Request(url, headers={"Cookie": cookie} if cookie else {}, method=method,
                                 data=b"" if method == "POST" else None)
    try:
        with opener.open(req, timeout=10) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def sign_in(srv, url: str) -> tuple[str, str]:
    """Follow a sign-in link; returns (Cookie header value, the raw Set-Cookie)."""
    status, headers, _ = get(srv, url)
    assert status == 303, (status, url)
    raw = headers["Set-Cookie"]
    return raw.split(";")[0], raw


@pytest.fixture(scope="module")
def tls_crowd(tmp_path_factory):
    c = start_crowd(tmp_path_factory.mktemp("tls"), extra_args=["--tls", "self-signed", "--tls-hostname", "annot.lab"])
    yield c
    assert c.srv.stop() == 0


def test_self_signed_tls_with_boto3_verify(tls_crowd):
    srv = tls_crowd.srv
    assert srv.endpoint_url.startswith("https://127.0.0.1:") and srv.ca_file.endswith("tls/ca.pem")
    import boto3
    from botocore.exceptions import SSLError
    verified = boto3.client("mturk", endpoint_url=srv.endpoint_url, region_name=srv.region, verify=srv.ca_file,
                            aws_access_key_id=srv.access_key_id, aws_secret_access_key=srv.secret_access_key)
    assert verified.get_account_balance()["AvailableBalance"] == "10000.00"
    unverified = boto3.client("mturk", endpoint_url=srv.endpoint_url, region_name=srv.region,
                              aws_access_key_id=srv.access_key_id, aws_secret_access_key=srv.secret_access_key)
    with pytest.raises(SSLError):
        unverified.get_account_balance()  # the system's CAs do not know our CA
    # The certificate names the LAN host name and loopback; plain HTTP on the port gets nowhere.
    from cryptography import x509
    cert = x509.load_pem_x509_certificate(open(srv.data_dir / "tls" / "cert.pem", "rb").read())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"annot.lab", "localhost"} <= set(san.get_values_for_type(x509.DNSName))
    assert "127.0.0.1" in {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    with pytest.raises(OSError):
        urllib.request.urlopen(srv.endpoint_url.replace("https:", "http:") + "/health", timeout=5).read()
    # The server speaks TLS 1.2 at least.
    import socket
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as raw_sock:
        with ssl.create_default_context(cafile=srv.ca_file).wrap_socket(raw_sock, server_hostname="127.0.0.1") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_aws_config_file_alone_reaches_the_tls_server(tls_crowd):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({k: v for k, v in tls_crowd.srv.env().items() if k != "AWS_ENDPOINT_URL_MTURK"})
    code = "import boto3; print(boto3.client('mturk').get_account_balance()['AvailableBalance'])"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "10000.00"


def test_cookies_are_secure_host_only_under_tls(tls_crowd):
    srv = tls_crowd.srv
    w = srv.add_worker("tls-cookie")
    cookie, raw = sign_in(srv, w["signin_url"])
    attrs = [a.strip() for a in raw.split(";")]
    assert cookie.startswith("__Host-lp_worker=") and {"Secure", "HttpOnly", "SameSite=Lax", "Path=/"} <= set(attrs)
    assert not any(a.lower().startswith("domain") for a in attrs)
    status, headers, body = get(srv, "/", cookie)
    assert status == 200 and w["worker_id"] in body
    assert headers["Strict-Transport-Security"].startswith("max-age=")


def test_chromium_signs_in_over_https(tls_crowd, browser):
    srv = tls_crowd.srv
    w = srv.add_worker("tls-browser")
    ctx = browser.new_context(ignore_https_errors=True)  # the workers' browsers would import ca.pem instead
    page = ctx.new_page()
    try:
        page.goto(w["signin_url"])
        assert page.url == srv.endpoint_url + "/"
        assert w["worker_id"] in page.inner_text("#worker-id")
        (c,) = [c for c in ctx.cookies() if c["name"].endswith("lp_worker")]
        assert c["secure"] and c["httpOnly"] and c["sameSite"] == "Lax"
    finally:
        ctx.close()


def test_restart_keeps_the_ca_and_adds_names(tmp_path):
    c = start_crowd(tmp_path, extra_args=["--tls", "self-signed"])
    ca = (c.srv.data_dir / "tls" / "ca.pem").read_bytes()
    c.srv.stop()
    c.srv.extra_args = ("--tls", "self-signed", "--tls-hostname", "labeling.example")
    srv = c.srv.restart()
    try:
        assert (srv.data_dir / "tls" / "ca.pem").read_bytes() == ca  # clients keep trusting it
        assert "labeling.example" in json.loads((srv.data_dir / "server.json").read_text())["tls"]["names"]
        assert srv.client().get_account_balance()["AvailableBalance"] == "10000.00"
    finally:
        srv.stop()


def test_operator_certificate_files(tls_crowd, tmp_path):
    tls_dir = tls_crowd.srv.data_dir / "tls"
    from orchestrator.crowd_server.testing import start_server
    srv = start_server(tmp_path / "own", extra_args=["--tls-cert", str(tls_dir / "cert.pem"),
                                                     "--tls-key", str(tls_dir / "key.pem")], ca_file=tls_dir / "ca.pem")
    try:
        import boto3
        assert srv.endpoint_url.startswith("https://")
        m = boto3.client("mturk", endpoint_url=srv.endpoint_url, region_name=srv.region,
                         verify=str(tls_dir / "ca.pem"), aws_access_key_id=srv.access_key_id,
                         aws_secret_access_key=srv.secret_access_key)
        assert m.get_account_balance()["AvailableBalance"] == "10000.00"
        assert srv.health()["status"] == "ok"
    finally:
        srv.stop()
    fresh = tmp_path / "never"
    r = run_cli("--data-dir", str(fresh), "--port", "0", "--tls-cert", str(tls_dir / "cert.pem"),
                "--tls-key", str(tls_dir / "ca-key.pem"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "cannot be used together" in r.stderr
    assert not fresh.exists()
    r = run_cli("--data-dir", str(fresh), "--port", "0", "--tls-cert", str(tls_dir / "cert.pem"))
    assert r.returncode == 2 and "go together" in r.stderr


# ---------------------------------------------------------------- sessions and links

@pytest.fixture(scope="module")
def crowd_s(tmp_path_factory):
    c = start_crowd(tmp_path_factory.mktemp("sessions"), extra_args=["--session-days", "2"])
    yield c
    assert c.srv.stop() == 0


def test_sessions_expire_and_links_expire(crowd_s):
    srv = crowd_s.srv
    dd = str(srv.data_dir)
    info = json.loads(run_cli("add-worker", "eve", "--data-dir", dd, "--valid-days", "1", "--json").stdout)
    assert info["link_expires"] is not None
    cookie, raw = sign_in(srv, info["signin_url"])
    assert "Max-Age=172800" in raw and "Secure" not in raw  # two days; plain HTTP here
    assert get(srv, "/work", cookie)[0] == 200
    crowd_s.advance(1.5 * 86400)
    assert get(srv, "/work", cookie)[0] == 200            # the session outlives the link...
    status, _, body = get(srv, info["signin_url"])
    assert status == 401 and "expired" in body            # ...which no longer signs anyone in
    crowd_s.advance(86400)
    assert get(srv, "/work", cookie)[0] == 401            # and then the session is over too
    r2 = json.loads(run_cli("add-worker", "eve", "--data-dir", dd, "--new-link", "--json").stdout)
    assert get(srv, "/work", sign_in(srv, r2["signin_url"])[0])[0] == 200


def test_revoke_worker_ends_link_and_sessions_of_a_running_server(crowd_s):
    from orchestrator.crowd_server.store import Store
    srv = crowd_s.srv
    dd = str(srv.data_dir)
    info = srv.add_worker("mallory")
    phone, _ = sign_in(srv, info["signin_url"])
    laptop, _ = sign_in(srv, info["signin_url"])
    r = run_cli("revoke-worker", "mallory", "--data-dir", dd)
    assert r.returncode == 0 and "2 session(s) ended" in r.stdout
    assert get(srv, "/", phone)[0] == 401 and get(srv, "/", laptop)[0] == 401
    assert get(srv, info["signin_url"])[0] == 401
    listed = [json.loads(x) for x in run_cli("list-workers", "--data-dir", dd, "--json").stdout.splitlines()]
    row = next(x for x in listed if x["name"] == "mallory")
    assert row["revoked"] and row["sessions"] == 0
    assert run_cli("revoke-worker", "nobody", "--data-dir", dd).returncode == 2
    store = Store(srv.data_dir)
    try:
        _, token = store.add_worker("mallory", rotate_if_exists=True)  # what add-worker --new-link does
    finally:
        store.close()
    assert get(srv, "/", sign_in(srv, f"{srv.endpoint_url}/signin/{token}")[0])[0] == 200


def test_sign_out_ends_the_session_on_the_server(crowd_s):
    srv = crowd_s.srv
    w = srv.add_worker("leaves")
    cookie, _ = sign_in(srv, w["signin_url"])
    assert get(srv, "/", cookie)[0] == 200
    assert get(srv, "/signout", cookie)[0] == 303
    assert get(srv, "/", cookie)[0] == 401  # a copied cookie is worth nothing after sign-out


def test_rotate_credentials_on_a_running_server(crowd_s):
    srv = crowd_s.srv
    old = srv.client()
    assert old.get_account_balance()
    r = run_cli("rotate-credentials", "--data-dir", str(srv.data_dir))
    assert r.returncode == 0, r.stderr
    from botocore.exceptions import ClientError
    with pytest.raises(ClientError) as e:
        old.get_account_balance()
    assert e.value.response["Error"]["Code"] == "UnrecognizedClientException"
    from orchestrator.crowd_server import credentials as cm
    new = cm.load(srv.data_dir)
    assert new.access_key_id != srv.access_key_id and new.access_key_id in r.stdout
    srv.access_key_id, srv.secret_access_key = new.access_key_id, new.secret_access_key
    assert srv.client().get_account_balance()["AvailableBalance"] == "10000.00"


def test_cookies_carry_sessions_only_and_bearer_tokens_follow_the_link(crowd_s):
    """A sign-in token is a password: it opens sessions (and authenticates programmatic clients as a
    bearer token while the link is valid), but a cookie holding it is no session."""
    srv = crowd_s.srv
    w = srv.add_worker("bearer")
    assert get(srv, "/", f"lp_worker={w['token']}")[0] == 401
    req = urllib.request.Request(srv.endpoint_url + "/?format=json", headers={"Authorization": f"Bearer {w['token']}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert json.loads(r.read())["workerId"] == w["worker_id"]
    from orchestrator.crowd_server.store import Store
    store = Store(srv.data_dir)
    try:
        store.revoke_worker("bearer")
    finally:
        store.close()
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 401
