"""Fuzzing every Requester API operation and every worker route (issue 11): random and malformed shapes (wrong
types, huge strings, negative and out-of-range numbers, unknown fields, bad JSON, bad headers) get 4xx (the API
in AWS's error shape), never 5xx; the server logs no internal error and keeps serving.

Inputs come from botocore's own service model (hypothesis draws members of each input shape, then breaks
them).  The run is bounded (a fixed number of examples, derandomised, no example database) so it adds a known,
small amount of time to the suite.
"""
from __future__ import annotations

import http.client
import json
from urllib.parse import quote, urlencode

import botocore.session
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

try:
    from conftest_crowd import html_question, signed_api_headers, start_crowd
except ImportError:
    from tests.conftest_crowd import html_question, signed_api_headers, start_crowd

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=list(HealthCheck))
MODEL = botocore.session.get_session().get_service_model("mturk")
OPERATIONS = sorted(MODEL.operation_names)


class Client:
    """One keep-alive connection, reopened when the server closes it (as it does after a refusal)."""

    def __init__(self, srv):
        self.srv = srv
        self.conn = None

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.srv.port, timeout=30)
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                r = self.conn.getresponse()
                data = r.read()
                if r.getheader("Connection", "").lower() == "close":
                    self.close()
                return r.status, dict(r.headers), data
            except (http.client.HTTPException, ConnectionError, BrokenPipeError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


@pytest.fixture(scope="module")
def fz(tmp_path_factory):
    c = start_crowd(tmp_path_factory.mktemp("fuzz"), extra_args=["--quiet"])
    tid = c.hit_type(Title="fuzz")
    hit = c.hit(tid, html_question("<p>fuzz <input name='a'></p>"))
    w = c.srv.add_worker("fuzzer")
    qt = c.mturk.create_qualification_type(Name="fuzz qual", Description="d",
                                           QualificationTypeStatus="Active")["QualificationType"]
    client = Client(c.srv)
    known = {"hit_type": tid, "hit": hit["HITId"], "worker": w["worker_id"], "qual": qt["QualificationTypeId"],
             "token": w["token"]}
    yield c, client, known
    client.close()
    assert c.srv.alive()
    events = [json.loads(line) for line in c.srv.log_path.read_text().splitlines() if line.startswith("{")]
    assert [e for e in events if e["event"] in ("exception", "http") and e.get("level") != "warning"] == []
    assert c.srv.stop() == 0


# ---------------------------------------------------------------- values from the model, then broken

ODD_STRINGS = ["", " ", "0", "-1", "1e2", "NaN", "null", "\x00", "\ud7ff\ue000", "é" * 3, "<Foo/>",
               "<HTMLQuestion><oops", "A" * 64, "A" * 65, "../../etc/passwd", "%00", "\\u0000", "x" * 70000,
               "ASSIGNMENT_ID_NOT_AVAILABLE", "Submitted", "Active", "EqualTo", "US"]
ODD_NUMBERS = [0, -1, 1, 29, 30, 100, 101, 2**31 - 1, 2**31, -2**31 - 1, 2**63 - 1, 2**63, -2**63 - 1, 10**30,
               0.5, -0.0, 1e308, 253402300800]


def _scalar(shape, known: dict):
    t = shape.type_name
    if t == "string":
        options = [st.sampled_from(ODD_STRINGS), st.text(max_size=40),
                   st.sampled_from([known["hit"], known["hit_type"], known["worker"], known["qual"]])]
        if shape.enum:
            options.append(st.sampled_from(shape.enum))
        if shape.name == "CurrencyAmount":
            options.append(st.from_regex(r"[0-9 .e+_-]{0,8}", fullmatch=True))
        return st.one_of(options)
    if t in ("integer", "long"):
        return st.one_of(st.sampled_from(ODD_NUMBERS), st.integers(min_value=-10**6, max_value=10**6))
    if t == "boolean":
        return st.booleans()
    if t == "timestamp":
        return st.one_of(st.sampled_from(ODD_NUMBERS), st.floats(allow_nan=False, allow_infinity=False))
    return st.none()


def _wrong():
    return st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                     st.text(max_size=10), st.lists(st.integers(), max_size=3),
                     st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))


def value_for(shape, known: dict, depth: int = 0):
    t = shape.type_name
    if t == "structure":
        if depth > 4:
            return st.just({})
        members = {name: st.one_of(value_for(m, known, depth + 1), _wrong()) for name, m in shape.members.items()}
        return st.fixed_dictionaries({}, optional=members)
    if t == "list":
        return st.lists(st.one_of(value_for(shape.member, known, depth + 1), _wrong()), max_size=20)
    return _scalar(shape, known)


def params_for(op: str, known: dict):
    shape = MODEL.operation_model(op).input_shape
    base = value_for(shape, known) if shape is not None else st.just({})
    unknown = st.dictionaries(st.text(min_size=1, max_size=12), _wrong(), max_size=2)
    return st.tuples(base, unknown, st.booleans()).map(lambda t: {**t[0], **t[1]} if t[2] else t[0])


BAD_BODIES = [b"", b"{", b"[]", b"null", b"42", b'"s"', b"{'a': 1}", b'{"a": NaN}', b'{"a": -Infinity}',
              b"\xff\xfe\x00{", b'{"\\ud800": 1}', b"[" * 50000, b'{"a": 1' + b"0" * 5000 + b"}",
              b'{"HITId": "' + b"3" * 100000 + b'"}', b"{}" * 1000]


def check_api_answer(status: int, data: bytes, what: str) -> None:
    assert status < 500, f"{what}: HTTP {status} {data[:300]!r}"
    body = json.loads(data)
    if status >= 400:
        assert body.get("__type"), f"{what}: error without __type: {body}"
        if body["__type"] in ("RequestError", "ServiceFault"):
            assert set(body) == {"__type", "Message", "TurkErrorCode"}, body
        else:
            assert "message" in body or "Message" in body, body


def _drop_nulls(value):
    """JSON null members count as absent (as AWS's JSON protocol reads them); null list items stay."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def botocore_refuses(op: str, params) -> bool:
    """What botocore's own client-side validator says of these parameters (unknown members, types,
    required members, minimum lengths and values).  The server must be at least as strict."""
    from botocore.validate import ParamValidator
    shape = MODEL.operation_model(op).input_shape
    if not isinstance(params, dict):
        return True
    if shape is None:
        return bool(params)
    return ParamValidator().validate(_drop_nulls(params), shape).has_errors()


@FUZZ
@given(data=st.data())
def test_every_api_operation_answers_bad_input_with_4xx(fz, data):
    c, client, known = fz
    op = data.draw(st.sampled_from(OPERATIONS + ["NoSuchOperation", ""]), label="operation")
    params = None
    if data.draw(st.integers(0, 9), label="raw body?") == 0:
        body = data.draw(st.sampled_from(BAD_BODIES), label="body")
    else:
        params = data.draw(params_for(op, known) if op in MODEL.operation_names else st.just({}), label="params")
        body = json.dumps(params).encode()
    headers = signed_api_headers(c.srv, op, body)
    status, _, out = client.request("POST", "/", body, headers)
    check_api_answer(status, out, op)
    if params is not None and op in MODEL.operation_names and botocore_refuses(op, params):
        assert 400 <= status < 500, f"{op}: botocore refuses {params!r:.300} but the server answered {status}"


HEADER_NOISE = st.dictionaries(
    st.sampled_from(["Authorization", "X-Amz-Date", "X-Amz-Target", "Content-Type", "X-Amz-Content-Sha256",
                     "X-Amz-Security-Token", "Accept"]),
    st.one_of(st.sampled_from(["", "AWS4-HMAC-SHA256", "AWS4-HMAC-SHA256 Credential=a/b/c/d/e, SignedHeaders=host, "
                               "Signature=00", "20990101T000000Z", "19700101T000000Z", "garbage",
                               "MTurkRequesterServiceV20170117.", "MTurkRequesterServiceV20170117.GetHIT",
                               "UNSIGNED-PAYLOAD", "x" * 5000]),
              st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60)),
    min_size=1, max_size=3)


@FUZZ
@given(noise=HEADER_NOISE, op=st.sampled_from(["GetAccountBalance", "CreateHITType", "GetHIT"]))
def test_bad_api_headers_get_4xx_in_aws_shape(fz, noise, op):
    c, client, _ = fz
    body = b"{}"
    headers = {**signed_api_headers(c.srv, op, body), **noise}
    if "X-Amz-Target" in noise and not noise["X-Amz-Target"]:
        headers["X-Amz-Target"] = "MTurkRequesterServiceV20170117."  # empty header values are not sent
    status, _, out = client.request("POST", "/", body, {k: v for k, v in headers.items() if v != ""})
    check_api_answer(status, out, f"{op} {noise}")


# ---------------------------------------------------------------- worker routes

ROUTES = ["/", "/work", "/qualifications", "/groups/{id}", "/hits/{id}", "/assignments/{id}", "/task/{id}",
          "/qualifications/{id}/test", "/groups/{id}/accept", "/hits/{id}/accept", "/assignments/{id}/return",
          "/qualifications/{id}/request", "/mturk/externalSubmit", "/signin/{id}", "/signout", "/static/{id}",
          "/assets/{id}", "/health", "/favicon.ico", "/{id}", "/{id}/{id}/{id}"]
SEGMENTS = ["", ".", "..", "%2e%2e", "%00", "%ff", "a" * 3000, "ASSIGNMENT_ID_NOT_AVAILABLE", "crowd-html-elements.js",
            "worker.css", "..%2f..%2fetc%2fpasswd", "%", "%zz", "<script>", "'", '"', " ", "%20", "é"]


@st.composite
def worker_request(draw, known):
    route = draw(st.sampled_from(ROUTES))
    ids = [known["hit"], known["hit_type"], known["qual"], known["token"], known["worker"]]
    path = route
    while "{id}" in path:
        seg = draw(st.one_of(st.sampled_from(SEGMENTS), st.sampled_from(ids),
                             st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FF), max_size=20)))
        path = path.replace("{id}", quote(seg, safe="%/.:"), 1)
    query = draw(st.lists(st.tuples(st.sampled_from(["assignmentId", "hitId", "turkSubmitTo", "workerId", "format",
                                                      "submitted", "x"]),
                                    st.one_of(st.sampled_from(["", "json", "ASSIGNMENT_ID_NOT_AVAILABLE"] + ids),
                                              st.text(max_size=20))), max_size=3))
    if query:
        path += "?" + urlencode(query)
    method = draw(st.sampled_from(["GET", "POST", "HEAD"]))
    fields = draw(st.lists(st.tuples(st.sampled_from(["assignmentId", "a", "q1", "taskAnswers", "", "x" * 300]),
                                     st.one_of(st.text(max_size=50), st.sampled_from(ids + ["[{}]", "{", "\x00"]))),
                           max_size=4))
    body = urlencode(fields).encode() if method == "POST" else None
    if method == "POST" and draw(st.booleans()):
        body = draw(st.binary(max_size=200))
    headers = {}
    auth = draw(st.sampled_from(["bearer", "cookie", "none", "junk-cookie", "junk-bearer"]))
    if auth == "bearer":
        headers["Authorization"] = f"Bearer {known['token']}"
    elif auth == "junk-bearer":
        headers["Authorization"] = draw(st.sampled_from(["Bearer ", "Bearer x", "Basic abc", "Bearer " + "x" * 4000]))
    elif auth == "cookie":
        headers["Cookie"] = f"lp_worker={known['session']}"
    elif auth == "junk-cookie":
        headers["Cookie"] = draw(st.sampled_from(['lp_worker="unterminated', "lp_worker=;;;;", "=", "a=b; lp_worker",
                                                  "lp_worker=" + "x" * 3000, "\x7f"]))
    if draw(st.booleans()):
        headers["Accept"] = draw(st.sampled_from(["application/json", "text/html", "*/*", ""]))
    if method == "POST" and draw(st.booleans()):
        headers["Content-Type"] = draw(st.sampled_from(["application/x-www-form-urlencoded", "multipart/form-data",
                                                        "application/json", "text/plain; charset=utf-16"]))
    return method, path, body, headers


@pytest.fixture(scope="module")
def fz_worker(fz):
    c, client, known = fz
    status, headers, _ = client.request("GET", f"/signin/{known['token']}")
    assert status == 303
    known = {**known, "session": headers["Set-Cookie"].split(";")[0].split("=", 1)[1]}
    return c, client, known


@FUZZ
@given(data=st.data())
def test_every_worker_route_answers_bad_input_without_5xx(fz_worker, data):
    c, client, known = fz_worker
    method, path, body, headers = data.draw(worker_request(known), label="request")
    headers = {k: v for k, v in headers.items() if v != ""}
    status, _, out = client.request(method, path, body, headers)
    assert status < 500, f"{method} {path}: HTTP {status} {out[:300]!r}"
    if path.split("?")[0] != "/signout":
        assert client.request("GET", "/health")[0] == 200
