"""Fixtures and helpers for the crowd server tests (imported by tests/test_crowd_server_*.py).

The server always runs as a real subprocess on a free port; the requester side is
driven only through boto3.  Every boto3 response is also checked, at the wire level,
against botocore's service model (no unknown keys, required members, enums,
patterns, lengths, epoch-number timestamps, error shapes).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from orchestrator.crowd_server.simulated_workers import WorkerSession
from orchestrator.crowd_server.testing import CrowdServer, start_server

REPO = Path(__file__).resolve().parents[1]
HTML_NS = "http://mechanicalturk.amazonaws.com/AWSMechanicalTurkDataSchemas/2011-11-11/HTMLQuestion.xsd"
QF_NS = "http://mechanicalturk.amazonaws.com/AWSMechanicalTurkDataSchemas/2017-11-06/QuestionForm.xsd"
AK_NS = "http://mechanicalturk.amazonaws.com/AWSMechanicalTurkDataSchemas/2005-10-01/AnswerKey.xsd"


# ---------------------------------------------------------------- wire-level response checking

def _check(shape, value, path: str, errors: list) -> None:
    t = shape.type_name
    meta = shape.metadata
    if t == "structure":
        if not isinstance(value, dict):
            errors.append(f"{path}: expected object, got {type(value).__name__}")
            return
        for k, v in value.items():
            if k not in shape.members:
                errors.append(f"{path}.{k}: not in the service model")
            else:
                _check(shape.members[k], v, f"{path}.{k}", errors)
        for r in shape.required_members:
            if r not in value:
                errors.append(f"{path}.{r}: required member missing")
    elif t == "list":
        if not isinstance(value, list):
            errors.append(f"{path}: expected list")
            return
        for i, v in enumerate(value):
            _check(shape.member, v, f"{path}[{i}]", errors)
    elif t == "string":
        if not isinstance(value, str):
            errors.append(f"{path}: expected string, got {value!r}")
            return
        if shape.enum and value not in shape.enum:
            errors.append(f"{path}: {value!r} not in enum {shape.enum}")
        if "pattern" in meta and not re.fullmatch(meta["pattern"].strip("^$"), value):
            errors.append(f"{path}: {value!r} does not match {meta['pattern']}")
        if "min" in meta and len(value) < meta["min"] or "max" in meta and len(value) > meta["max"]:
            errors.append(f"{path}: length {len(value)} outside [{meta.get('min')}, {meta.get('max')}]")
    elif t in ("integer", "long"):
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append(f"{path}: expected integer, got {value!r}")
    elif t == "boolean":
        if not isinstance(value, bool):
            errors.append(f"{path}: expected boolean, got {value!r}")
    elif t == "timestamp":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            errors.append(f"{path}: timestamps must be epoch seconds (JSON numbers), got {value!r}")
    elif t in ("double", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            errors.append(f"{path}: expected number")


def attach_wire_checker(client) -> list:
    """Validate every raw response body of ``client`` against the service model; returns the error list."""
    errors: list = []
    model = client.meta.service_model

    def before_parse(operation_model, response_dict, **_):
        try:
            body = json.loads(response_dict["body"] or b"{}")
        except ValueError:
            errors.append(f"{operation_model.name}: body is not JSON")
            return
        status = response_dict["status_code"]
        if status >= 300:
            t = body.get("__type", "")
            if t in ("RequestError", "ServiceFault"):
                extra = set(body) - {"__type", "Message", "TurkErrorCode"}
                if extra or not body.get("TurkErrorCode") or "Message" not in body:
                    errors.append(f"{operation_model.name}: bad error body {body}")
                if (t == "ServiceFault") != (status >= 500):
                    errors.append(f"{operation_model.name}: {t} with HTTP {status}")
            elif not t:
                errors.append(f"{operation_model.name}: error without __type: {body}")
            return
        _check(operation_model.output_shape, body, operation_model.name, errors)

    client.meta.events.register(f"before-parse.{model.service_id.hyphenize()}", before_parse)
    return errors


class Crowd:
    """A running server plus conveniences used across the tests."""

    def __init__(self, srv: CrowdServer, offset_file: Path):
        self.srv = srv
        self.offset_file = offset_file
        self.offset = 0.0
        self._all: list[list] = []
        self.mturk = self.client()
        self._n = 0

    def client(self, **cfg):
        c = self.srv.client(**cfg)
        self._all.append(attach_wire_checker(c))
        return c

    def all_wire_errors(self) -> list:
        return [e for errs in self._all for e in errs]

    def advance(self, seconds: float) -> None:
        """Move the server's clock forward (see orchestrator/crowd_server/clock.py)."""
        self.offset += seconds
        self.offset_file.write_text(str(self.offset))
        time.sleep(0.01)

    def worker(self, name: str | None = None, locale: str = "US") -> WorkerSession:
        self._n += 1
        info = self.srv.add_worker(name or f"w{self._n}-{int(time.time() * 1000) % 100000}", locale=locale)
        return WorkerSession(self.srv.endpoint_url, info["token"])

    def hit_type(self, **kw) -> str:
        args = dict(Reward="0.05", Title="Is this mask good?", Description="Answer yes or no for each mask.",
                    AssignmentDurationInSeconds=600, AutoApprovalDelayInSeconds=86400, Keywords="labelprop")
        args.update(kw)
        return self.mturk.create_hit_type(**args)["HITTypeId"]

    def hit(self, hit_type_id: str | None = None, question: str | None = None, **kw) -> dict:
        args = dict(HITTypeId=hit_type_id or self.hit_type(), LifetimeInSeconds=3600, MaxAssignments=1,
                    Question=question or html_question(crowd_form_page(["q1"])))
        args.update(kw)
        return self.mturk.create_hit_with_hit_type(**args)["HIT"]


def start_crowd(tmp: Path, extra_args=(), env_extra: dict | None = None) -> Crowd:
    import os
    offset_file = tmp / "clock-offset"
    offset_file.write_text("0")
    env = dict(os.environ, LABELPROP_CROWD_CLOCK_OFFSET_FILE=str(offset_file), **(env_extra or {}))
    srv = start_server(tmp / "data", extra_args=extra_args, env=env)
    return Crowd(srv, offset_file)


@pytest.fixture(scope="module")
def crowd(tmp_path_factory):
    c = start_crowd(tmp_path_factory.mktemp("crowd"))
    try:
        yield c
    finally:
        status = c.srv.stop()
        assert status == 0, f"server did not shut down cleanly (status {status}); log {c.srv.log_path}"
    assert c.all_wire_errors() == [], c.all_wire_errors()


@pytest.fixture
def no_botocore_warnings(caplog):
    """Fail if botocore warns (Python warnings or WARNING log records) during the test."""
    import logging
    caplog.set_level(logging.WARNING, logger="botocore")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    botocore_warnings = [w for w in caught if "botocore" in str(w.filename) or "boto3" in str(w.filename)]
    assert botocore_warnings == [], [str(w.message) for w in botocore_warnings]
    assert [r for r in caplog.records if r.name.startswith("botocore")] == []


# ---------------------------------------------------------------- question builders

def html_question(html: str, frame_height: int = 0) -> str:
    return (f'<HTMLQuestion xmlns="{HTML_NS}"><HTMLContent><![CDATA[{html}]]></HTMLContent>'
            f"<FrameHeight>{frame_height}</FrameHeight></HTMLQuestion>")


def crowd_form_page(questions: list[str]) -> str:
    items = "".join(
        f'<p>{q}: <label><input type="radio" name="{q}" value="yes"> yes</label>'
        f'<label><input type="radio" name="{q}" value="no"> no</label></p>' for q in questions)
    return ('<!DOCTYPE html><html><head><script src="https://assets.crowd.aws/crowd-html-elements.js"></script>'
            f"</head><body><crowd-form>{items}</crowd-form></body></html>")


def classic_form_page(questions: list[str]) -> str:
    items = "".join(f'<p>{q}: <input type="text" name="{q}"></p>' for q in questions)
    return ("<!DOCTYPE html><html><head>"
            '<script src="https://s3.amazonaws.com/mturk-public/externalHIT_v1.js"></script></head><body>'
            "<form name='mturk_form' method='post' id='mturk_form' action='https://www.mturk.com/mturk/externalSubmit'>"
            "<input type='hidden' value='' name='assignmentId' id='assignmentId'/>"
            f"{items}<p><input type='submit' id='submitButton' value='Submit'/></p></form>"
            "<script language='Javascript'>turkSetAssignmentID();</script></body></html>")


def question_form(questions: list[tuple[str, list[str]]]) -> str:
    qs = "".join(
        f"<Question><QuestionIdentifier>{qid}</QuestionIdentifier><IsRequired>true</IsRequired>"
        f"<QuestionContent><Text>Question {qid}?</Text></QuestionContent><AnswerSpecification><SelectionAnswer>"
        f"<StyleSuggestion>radiobutton</StyleSuggestion><Selections>"
        + "".join(f"<Selection><SelectionIdentifier>{o}</SelectionIdentifier><Text>{o}</Text></Selection>" for o in opts)
        + "</Selections></SelectionAnswer></AnswerSpecification></Question>" for qid, opts in questions)
    return f'<QuestionForm xmlns="{QF_NS}"><Overview><Text>Test</Text></Overview>{qs}</QuestionForm>'


def answer_key(correct: dict[str, str], percentage_of: int | None = None) -> str:
    qs = "".join(f"<Question><QuestionIdentifier>{q}</QuestionIdentifier><AnswerOption>"
                 f"<SelectionIdentifier>{a}</SelectionIdentifier><AnswerScore>1</AnswerScore></AnswerOption></Question>"
                 for q, a in correct.items())
    mapping = (f"<QualificationValueMapping><PercentageMapping><MaximumSummedScore>{percentage_of}"
               f"</MaximumSummedScore></PercentageMapping></QualificationValueMapping>" if percentage_of else "")
    return f'<AnswerKey xmlns="{AK_NS}">{qs}{mapping}</AnswerKey>'


def parse_answers(answer_xml: str) -> dict:
    """QuestionFormAnswers -> {QuestionIdentifier: FreeText or [SelectionIdentifier]} with xmltodict."""
    import xmltodict
    doc = xmltodict.parse(answer_xml)["QuestionFormAnswers"]
    answers = doc.get("Answer", [])
    if isinstance(answers, dict):
        answers = [answers]
    out = {}
    for a in answers:
        if "SelectionIdentifier" in a:
            sel = a["SelectionIdentifier"]
            out[a["QuestionIdentifier"]] = sel if isinstance(sel, list) else [sel]
        else:
            out[a["QuestionIdentifier"]] = a.get("FreeText") or ""
    return out


def wait_until(pred, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def run_cli(*args: str, timeout: float = 60, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.crowd_server", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, env=env, stdin=subprocess.DEVNULL)


# ---------------------------------------------------------------- browser

@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Debian's chromium, installed by scripts/ensure_chromium.sh when missing (never Playwright's)."""
    r = subprocess.run(["bash", str(REPO / "scripts" / "ensure_chromium.sh")], capture_output=True, text=True,
                       timeout=900, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        pytest.fail(f"chromium is not available: {r.stderr.strip()}")
    return r.stdout.strip().splitlines()[-1]


CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def worker_page(browser):
    """A 1200x900 page for a worker in ``browser``, with a 15 s default timeout and the page's
    uncaught JavaScript errors collected in the returned list."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.set_default_timeout(15000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return page, errors


# ---------------------------------------------------------------- raw signed requests

def signed_api_headers(srv: CrowdServer, op: str, body: bytes, target: str | None = None) -> dict:
    """SigV4 headers for a raw API request, signed by botocore exactly as boto3 signs (any body at all)."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    req = AWSRequest(method="POST", url=srv.endpoint_url + "/", data=body,
                     headers={"Content-Type": "application/x-amz-json-1.1",
                              "X-Amz-Target": target or f"MTurkRequesterServiceV20170117.{op}"})
    SigV4Auth(Credentials(srv.access_key_id, srv.secret_access_key), "mturk-requester", srv.region).add_auth(req)
    return dict(req.headers.items())


def api_call_raw(srv: CrowdServer, op: str, params, conn=None) -> tuple[int, dict]:
    """POST one signed API request whose body is ``params`` (bytes as they are, anything else as JSON)."""
    import http.client
    body = params if isinstance(params, bytes) else json.dumps(params).encode()
    own = conn is None
    if own:
        host, port = srv.endpoint_url.split("//")[1].rsplit(":", 1)
        conn = (http.client.HTTPSConnection(host.strip("[]"), int(port), timeout=30, context=srv.ssl_context())
                if srv.endpoint_url.startswith("https:") else http.client.HTTPConnection(host.strip("[]"), int(port),
                                                                                       timeout=30))
    try:
        conn.request("POST", "/", body=body, headers=signed_api_headers(srv, op, body))
        r = conn.getresponse()
        data = r.read()
        try:
            return r.status, json.loads(data)
        except ValueError:
            return r.status, {"__raw": data.decode("latin-1")}
    finally:
        if own:
            conn.close()
