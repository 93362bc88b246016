"""HIT content never runs with the worker's authority (issue 11, item 1), checked in headless Chromium with
the audit's own attack: an HTMLQuestion whose script navigates the top window to its own task URL, then reads
the worker's pages and accepts another HIT as that worker.  Also: the headers that make it so, cross-site
posts, and requester markup on the worker's own pages."""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

try:
    from conftest_crowd import (CHROMIUM_ARGS, answer_key, chromium_path, crowd, html_question,  # noqa: F401
                                question_form, wait_until, worker_page)
    from test_crowd_server_browser import browser  # noqa: F401
except ImportError:
    from tests.conftest_crowd import (CHROMIUM_ARGS, answer_key, chromium_path, crowd, html_question,  # noqa: F401
                                      question_form, wait_until, worker_page)
    from tests.test_crowd_server_browser import browser  # noqa: F401

ATTACK = """<!DOCTYPE html><html><head><meta charset="utf-8"></head><body><p>Please answer.</p>
<script>
function report(k, v) { document.documentElement.setAttribute('data-' + k, String(v).slice(0, 300)); }
var steps = 0;
function done() { if (++steps === 4) report('done', 'yes'); }
try {
  if (window.top !== window) { top.location = location.href; report('topnav', 'navigated'); }
  else { report('topnav', 'top-level'); }
} catch (e) { report('topnav', 'blocked ' + e.name); }
try { report('cookie', document.cookie || 'empty'); } catch (e) { report('cookie', 'blocked ' + e.name); }
fetch('/work', {credentials: 'include'}).then(function (r) { return r.text(); })
  .then(function (t) { report('work', 'READ ' + t); }, function (e) { report('work', 'failed ' + e); }).then(done);
fetch('/?format=json', {credentials: 'include'}).then(function (r) { return r.text(); })
  .then(function (t) { report('home', 'READ ' + t); }, function (e) { report('home', 'failed ' + e); }).then(done);
fetch('/hits/TARGET/accept', {method: 'POST', credentials: 'include'})
  .then(function (r) { report('accept', r.status); }, function (e) { report('accept', 'failed ' + e); }).then(done);
fetch('/hits/TARGET/accept', {method: 'POST', credentials: 'include', mode: 'no-cors',
  headers: {'Content-Type': 'application/x-www-form-urlencoded'}, body: 'x=1'})
  .then(function (r) { report('accept2', r.type); }, function (e) { report('accept2', 'failed ' + e); }).then(done);
var f = document.createElement('form'); f.method = 'POST'; f.action = '/groups/TARGET_GROUP/accept';
var sink = document.createElement('iframe'); sink.name = 'sink'; document.body.appendChild(sink);
f.target = 'sink'; document.body.appendChild(f); f.submit();
</script></body></html>"""


def _pending(crowd, hit_id: str) -> int:
    return crowd.mturk.get_hit(HITId=hit_id)["HIT"]["NumberOfAssignmentsPending"]


def _attrs(frame_or_page) -> dict:
    return frame_or_page.evaluate("() => Object.fromEntries([...document.documentElement.attributes]"
                                  ".map(a => [a.name, a.value]))")


def test_iframe_escape_attack_fails_in_chromium(crowd, browser):
    victim_type = crowd.hit_type(Title="victim group", Reward="0.07")
    victim = crowd.hit(victim_type)
    attack_html = ATTACK.replace("TARGET_GROUP", victim_type).replace("TARGET", victim["HITId"])
    attack_type = crowd.hit_type(Title="innocent looking HIT", Reward="0.01")
    attack = crowd.hit(attack_type, html_question(attack_html, frame_height=300))
    worker = crowd.srv.add_worker("attacked-worker")

    page, errors = worker_page(browser)
    try:
        page.goto(worker["signin_url"])
        page.locator(f'tr[data-hit-type-id="{attack_type}"]').get_by_text("Preview").click()
        page.wait_for_url(f"**/groups/{attack_type}")

        def settled():
            if "/task/" in page.url:
                return "escaped"  # the attack navigated the worker's window
            f = page.frame(url=lambda u: "/task/" in u)
            try:
                return f is not None and f.evaluate("() => document.documentElement.dataset.done") and "done"
            except Exception:  # navigating right now
                return False

        # The top window stayed on the worker's page: the script could not navigate it.
        assert wait_until(settled, timeout=30, what="the attack script to finish") == "done"
        assert page.url.endswith(f"/groups/{attack_type}")
        seen = _attrs(page.frame(url=lambda u: "/task/" in u))
        assert not seen["data-topnav"].startswith("navigated")
        assert seen["data-cookie"].startswith("blocked")
        assert seen["data-work"].startswith("failed") and seen["data-home"].startswith("failed")
        assert seen["data-accept"] in ("403", "401") or seen["data-accept"].startswith("failed")
        task_url = page.frame(url=lambda u: "/task/" in u).url

        # Opened on its own as the top page (what a successful escape would give), it is still sandboxed.
        top = page
        top.goto(task_url)
        top.locator("html[data-done]").wait_for()
        alone = _attrs(top)
        assert alone["data-topnav"] == "top-level"
        assert alone["data-cookie"].startswith("blocked")
        assert alone["data-work"].startswith("failed") and alone["data-home"].startswith("failed")
        assert alone["data-accept"] in ("403", "401") or alone["data-accept"].startswith("failed")
        assert top.evaluate("() => self.origin") == "null"
    finally:
        page.close()
    assert _pending(crowd, victim["HITId"]) == 0, "the HIT accepted a HIT as the worker"
    assert _pending(crowd, attack["HITId"]) == 0
    # ... and the worker's own pages still work for the worker.
    assert worker["worker_id"] in _get(crowd, "/", worker)[2]


def _get(crowd, path: str, worker: dict | None = None, headers: dict | None = None, data: bytes | None = None):
    cookie = {}
    if worker is not None:
        cookie = {"Authorization": f"Bearer {worker['token']}"}
    req = urllib.request.Request(crowd.srv.endpoint_url + path, data=data, headers={**cookie, **(headers or {})},
                                 method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def test_hit_content_is_served_sandboxed_and_framed_without_authority(crowd):
    tid = crowd.hit_type(Title="headers")
    h = crowd.hit(tid)
    w = crowd.srv.add_worker("headers-worker")
    status, headers, body = _get(crowd, f"/groups/{tid}", w)
    assert status == 200
    sandbox = body.split('sandbox="', 1)[1].split('"', 1)[0].split()
    assert "allow-same-origin" not in sandbox and "allow-top-navigation" not in sandbox
    assert "allow-scripts" in sandbox and "allow-forms" in sandbox
    assert "frame-ancestors 'self'" in headers["Content-Security-Policy"]
    status, headers, _ = _get(crowd, f"/task/{h['HITId']}?assignmentId=ASSIGNMENT_ID_NOT_AVAILABLE", w)
    assert status == 200
    csp = [d.strip() for d in headers["Content-Security-Policy"].split(";")]
    flags = csp[0].split()
    assert flags[0] == "sandbox" and "allow-same-origin" not in flags and "allow-top-navigation" not in flags
    assert headers["X-Content-Type-Options"] == "nosniff"
    # Every other kind of response is sandboxed too if opened as a document (JSON here).
    status, headers, _ = _get(crowd, "/?format=json", w)
    assert status == 200 and headers["Content-Security-Policy"].startswith("sandbox")


def test_cross_site_posts_to_worker_actions_are_refused(crowd):
    tid = crowd.hit_type(Title="csrf target")
    h = crowd.hit(tid)
    w = crowd.srv.add_worker("csrf-worker")
    own = crowd.srv.endpoint_url
    for origin in ("null", "http://evil.example", own.replace("127.0.0.1", "localhost")):
        status, _, _ = _get(crowd, f"/hits/{h['HITId']}/accept", w, {"Origin": origin, "Accept": "application/json"},
                            b"")
        assert status == 403, origin
    status, _, _ = _get(crowd, f"/hits/{h['HITId']}/accept", w, {"Sec-Fetch-Site": "cross-site"}, b"")
    assert status == 403
    assert _pending(crowd, h["HITId"]) == 0
    status, _, body = _get(crowd, f"/hits/{h['HITId']}/accept", w,
                           {"Origin": own, "Sec-Fetch-Site": "same-origin", "Accept": "application/json"}, b"")
    assert status == 200 and json.loads(body)["hitId"] == h["HITId"]
    assert _pending(crowd, h["HITId"]) == 1


def test_formatted_content_on_the_workers_own_pages_is_sanitised(crowd):
    test = question_form([("q1", ["a", "b"])]).replace(
        "<Overview><Text>Test</Text></Overview>",
        "<Overview><FormattedContent><![CDATA[<p class='x'>Read <b>carefully</b></p><script>steal()</script>"
        "<img src='x' onerror='steal()'><a href='javascript:steal()'>here</a><iframe src='/work'></iframe>"
        "]]></FormattedContent></Overview>")
    qt = crowd.mturk.create_qualification_type(Name="sanitised test", Description="d", QualificationTypeStatus="Active",
                                               Test=test, TestDurationInSeconds=600)["QualificationType"]
    w = crowd.srv.add_worker("formatted-worker")
    status, _, body = _get(crowd, f"/qualifications/{qt['QualificationTypeId']}/request", w, {}, b"")
    assert status == 200
    assert "Read <b>carefully</b>" in body
    for bad in ("<script>steal", "onerror", "javascript:", "<iframe"):
        assert bad not in body
