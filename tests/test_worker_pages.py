"""The worker's pages on the bundled crowd server: a qualification test ends on a clear pass/fail page
with the pass mark and the retake policy (no dead end), a failed test can be retaken after its retry
delay, and every page -- error pages included -- carries the navigation bar."""
from __future__ import annotations

import urllib.error
import urllib.request
from urllib.parse import urlencode

import pytest

try:
    from conftest_crowd import answer_key, crowd_form_page, html_question, question_form, start_crowd
except ImportError:
    from tests.conftest_crowd import answer_key, crowd_form_page, html_question, question_form, start_crowd

NAV = ('href="/work"', 'href="/qualifications"', 'href="/signout"')


@pytest.fixture(scope="module")
def crowd(tmp_path_factory):
    c = start_crowd(tmp_path_factory.mktemp("pages"))
    yield c
    c.srv.stop()


class Browser:
    """A cookie-keeping HTML client (what a browser does, minus JavaScript)."""

    def __init__(self, base: str, signin_url: str):
        self.base = base
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        self.opener.open(signin_url, timeout=10).read()

    def get(self, path: str) -> tuple[int, str]:
        try:
            with self.opener.open(self.base + path, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def post(self, path: str, fields: dict | None = None) -> tuple[int, str]:
        req = urllib.request.Request(self.base + path, data=urlencode(fields or {}).encode(), method="POST")
        try:
            with self.opener.open(req, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()


def test_failed_test_says_so_and_can_be_retaken_after_the_delay(crowd):
    m = crowd.mturk
    qt = m.create_qualification_type(
        Name="outline test", Description="two questions", QualificationTypeStatus="Active",
        Test=question_form([("t1", ["yes", "no"]), ("t2", ["yes", "no"])]), TestDurationInSeconds=300,
        RetryDelayInSeconds=600, AnswerKey=answer_key({"t1": "yes", "t2": "no"}, percentage_of=2)
    )["QualificationType"]["QualificationTypeId"]
    tid = crowd.hit_type(Title="Outlines after the test", QualificationRequirements=[
        {"QualificationTypeId": qt, "Comparator": "GreaterThanOrEqualTo", "IntegerValues": [100]}])
    crowd.hit(tid, html_question(crowd_form_page(["m1"])))
    info = crowd.srv.add_worker("retaker")
    b = Browser(crowd.srv.endpoint_url, info["signin_url"])

    status, home = b.get("/")
    assert "Not open to you yet" in home and "passing the test &#39;outline test&#39; (at least 100 of 100)" in home
    assert f"/qualifications#{qt}" in home and all(n in home for n in NAV)
    status, form = b.post(f"/qualifications/{qt}/request")
    assert 'id="qualification-test"' in form
    status, page = b.post(f"/qualifications/{qt}/test", {"t1": "yes", "t2": "yes"})       # one wrong
    assert status == 200 and "Not passed this time" in page
    assert "your score is 50, and 100 is needed" in page and "retake it in 10 minutes" in page
    assert all(n in page for n in NAV)
    _, quals = b.get("/qualifications")
    assert "Not passed" in quals and "You can retake the test in 10 minutes." in quals
    assert f"/qualifications/{qt}/request" not in quals
    _, home = b.get("/")
    assert "your score is 50, 100 needed" in home and "Retake the test" in home

    crowd.advance(601)
    _, quals = b.get("/qualifications")
    assert f"/qualifications/{qt}/request" in quals and "Retake the test" in quals
    b.post(f"/qualifications/{qt}/request")
    status, page = b.post(f"/qualifications/{qt}/test", {"t1": "yes", "t2": "no"})
    assert "You passed the test" in page and "score of 100 (100 needed)" in page
    assert f'href="/groups/{tid}"' in page                 # straight on to the work it opens
    _, home = b.get("/")
    assert f'action="/groups/{tid}/accept"' in home


def test_error_pages_keep_the_navigation_bar(crowd):
    info = crowd.srv.add_worker("lost")
    b = Browser(crowd.srv.endpoint_url, info["signin_url"])
    status, page = b.get("/hits/NOSUCHHIT")
    assert status == 404 and "This HIT does not exist." in page and all(n in page for n in NAV)
    status, page = b.get("/no/such/page")
    assert status == 404 and all(n in page for n in NAV)
    anonymous = urllib.request.build_opener()
    try:
        anonymous.open(crowd.srv.endpoint_url + "/work", timeout=10)
        raise AssertionError("a page without sign-in was served")
    except urllib.error.HTTPError as e:
        assert e.code == 401 and "personal link" in e.read().decode()
