"""Verification HIT and qualification test rendering (hit_templates/render.py), checked against the
bundled crowd server: HITs are created with boto3, answered by simulated workers through the
worker endpoints, and the Answer XML the server stores is parsed back."""
from __future__ import annotations

import html.parser
import json
import xml.etree.ElementTree as ET

import pytest

from tests.crowd_server_support import wait_until

from hit_templates.render import (ANSWER_KEY_NS, DEFAULT_INSTRUCTIONS, HTML_QUESTION_NS, QUESTION_FORM_NS,
                                  HitQuestion, InstructionExample, InstructionSet, max_questions_per_hit,
                                  parse_verification_answer, parse_verification_seconds,
                                  qualification_pass_value, render_qualification_test,
                                  render_verification_question)
from orchestrator.crowd_server.simulated_workers import describe_html
from orchestrator.crowd_server.xml_formats import parse_answer_key, parse_question, parse_test, score_test
from orchestrator.errors import LabelpropError

URL = "https://assets.example.org/labelprop/{}.jpg"


def _qs(n: int, prefix: str = "q") -> list[HitQuestion]:
    return [HitQuestion(f"{prefix}{i:04x}", URL.format(i), ["chair", "person", "table"][i % 3]) for i in range(n)]


class _Tags(html.parser.HTMLParser):
    """Start tags (with attributes) and the text inside <b> of the question prompts."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.prompts: list[str] = []
        self._in_prompt = 0
        self._buf = ""

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "div" and dict(attrs).get("class") == "lp-prompt":
            self._in_prompt, self._buf = 1, ""
        elif tag == "b" and self._in_prompt == 1:
            self._in_prompt = 2

    def handle_endtag(self, tag):
        if tag == "b" and self._in_prompt == 2:
            self.prompts.append(self._buf)
            self._in_prompt = 0

    def handle_data(self, data):
        if self._in_prompt == 2:
            self._buf += data


def _html_of(xml: str) -> str:
    root = ET.fromstring(xml.encode("utf-8"))
    return root.find(f"{{{HTML_QUESTION_NS}}}HTMLContent").text


# ---------------------------------------------------------------- rendering

@pytest.mark.parametrize("form", ["crowd-form", "classic"])
@pytest.mark.parametrize("allow_unsure", [False, True])
def test_html_question_is_well_formed_and_answerable(form, allow_unsure):
    qs = _qs(12)
    xml = render_verification_question(qs, form=form, allow_unsure=allow_unsure, frame_height=720)
    assert len(xml.encode("utf-8")) <= 65535
    root = ET.fromstring(xml.encode("utf-8"))
    assert root.tag == f"{{{HTML_QUESTION_NS}}}HTMLQuestion"
    assert [c.tag.split("}")[1] for c in root] == ["HTMLContent", "FrameHeight"]
    assert root[1].text == "720"
    q = parse_question(xml)                     # the crowd server's own reader
    assert q.kind == "HTMLQuestion" and q.frame_height == 720
    page = q.html
    assert page.lstrip().startswith("<!DOCTYPE html>")
    # What a simulated worker sees: one radio group per question, named by its identifier.
    fields, uses_crowd_form = describe_html(page)
    assert uses_crowd_form == (form == "crowd-form")
    options = ["yes", "no", "unsure"] if allow_unsure else ["yes", "no"]
    assert [(f.name, f.kind, f.options) for f in fields] == [(x.identifier, "radio", options) for x in qs]
    if form == "crowd-form":
        assert '<script src="https://assets.crowd.aws/crowd-html-elements.js"></script>' in page
        assert "<crowd-form>" in page and "externalSubmit" not in page
    else:
        assert 'action="https://www.mturk.com/mturk/externalSubmit"' in page and 'method="post"' in page
        assert 'name="assignmentId"' in page and "ASSIGNMENT_ID_NOT_AVAILABLE" in page
        assert "crowd-html-elements" not in page
    t = _Tags()
    t.feed(page)
    assert [a["src"] for tag, a in t.tags if tag == "img"] == [x.image_url for x in qs]
    assert t.prompts == [x.class_name for x in qs]
    assert "data:image" not in page            # examples are drawings, not inline JPEGs
    assert sum(1 for tag, a in t.tags if tag == "svg" and a.get("role") == "img") == len(DEFAULT_INSTRUCTIONS.examples)


def test_hostile_class_names_and_identifiers_are_escaped():
    nasty = ["]]></HTMLContent><FrameHeight>1</FrameHeight></HTMLQuestion>",
             "</script><script>alert(1)</script>",
             '<img src=x onerror="alert(2)">',
             "chair & \"table\" 'lamp' ]]>",
             "{{ 7*7 }} {% raw %}",
             "ch\x00a\x1bir\ufffe \u00e9l\u00e8ve \U0001F4BA"]
    ids = ['q"><script>alert(3)</script>', "q]]>x", "q&amp;", "q'\"<>&", "q{{x}}", "q\u00e9"]
    qs = [HitQuestion(i, URL.format(n), c) for n, (i, c) in enumerate(zip(ids, nasty))]
    for form in ("crowd-form", "classic"):
        xml = render_verification_question(qs, form=form)
        ET.fromstring(xml.encode("utf-8"))                     # still well-formed
        assert "]]]]><![CDATA[>" in xml or "]]>" not in _html_of(xml)
        page = parse_question(xml).html
        t = _Tags()
        t.feed(page)
        scripts = [a for tag, a in t.tags if tag == "script"]
        assert len(scripts) == (2 if form == "crowd-form" else 1)   # the library + ours, nothing injected
        assert [a["src"] for tag, a in t.tags if tag == "img"] == [q.image_url for q in qs]
        assert not any("onerror" in a for _, a in t.tags)
        assert t.prompts[:5] == [c.strip() for c in nasty[:5]]     # shown literally, not interpreted
        assert t.prompts[5] == "chair\ufffe \u00e9l\u00e8ve \U0001F4BA".replace("\ufffe", "")  # control chars dropped
        fields, _ = describe_html(page)
        assert [f.name for f in fields] == ids                  # identifiers round-trip exactly
        assert "49" not in " ".join(t.prompts)                  # no template evaluation of data


def test_too_many_questions_raise_with_the_limit():
    n = max_questions_per_hit(image_url_length=len(URL.format(0)), class_name_length=6, identifier_length=5)
    assert 40 <= n <= 200
    qs = [HitQuestion(f"q{i:04x}", URL.format(i), "chairs") for i in range(n + 1)]
    xml = render_verification_question(qs[:n])
    assert 65535 - 700 < len(xml.encode("utf-8")) <= 65535
    with pytest.raises(LabelpropError, match=rf"65,535-byte limit; at most {n} of these questions fit"):
        render_verification_question(qs)
    # long presigned URLs leave room for fewer questions
    assert max_questions_per_hit(image_url_length=600) < max_questions_per_hit(image_url_length=80)


@pytest.mark.parametrize("bad, match", [
    ([], "at least one question"),
    ([HitQuestion("a", URL.format(1), "x"), HitQuestion("a", URL.format(2), "y")], "duplicate identifier"),
    ([HitQuestion("lp_seconds", URL.format(1), "x")], "reserved"),
    ([HitQuestion("taskAnswers", URL.format(1), "x")], "reserved"),
    ([HitQuestion("", URL.format(1), "x")], "non-empty"),
    ([HitQuestion(" a", URL.format(1), "x")], "whitespace"),
    ([HitQuestion("a\x01", URL.format(1), "x")], "control characters"),
    ([HitQuestion("a", "javascript:alert(1)", "x")], "http"),
    ([HitQuestion("a", "data:image/jpeg;base64,AAAA", "x")], "http"),
    ([HitQuestion("a", "https://x/a b.jpg", "x")], "http"),
])
def test_invalid_questions_raise(bad, match):
    with pytest.raises(LabelpropError, match=match):
        render_verification_question(bad)


def test_invalid_options_raise():
    with pytest.raises(LabelpropError, match="form must be"):
        render_verification_question(_qs(1), form="external")
    with pytest.raises(LabelpropError, match="frame_height"):
        render_verification_question(_qs(1), frame_height=-1)
    with pytest.raises(LabelpropError, match="drawing must be one of"):
        render_verification_question(_qs(1), instructions=InstructionSet(examples=(InstructionExample("no", "?", "nope"),)))
    with pytest.raises(LabelpropError, match="not inline data"):
        render_verification_question(_qs(1), instructions=InstructionSet(
            examples=(InstructionExample("yes", "?", image_url="data:image/jpeg;base64,AA"),)))


def test_custom_instructions_with_published_example_images():
    ins = InstructionSet(heading="Is the <chair> outlined?", summary="Look & decide.", rules=("One <b>rule</b>",),
                         examples=(InstructionExample("yes", "good one", image_url=URL.format("good")),
                                   InstructionExample("no", "bad one", drawing="loose")))
    page = _html_of(render_verification_question(_qs(2), instructions=ins))
    assert "Is the &lt;chair&gt; outlined?" in page and "One &lt;b&gt;rule&lt;/b&gt;" in page
    t = _Tags()
    t.feed(page)
    assert URL.format("good") in [a.get("src") for tag, a in t.tags if tag == "img"]


# ---------------------------------------------------------------- answers: real XML from the crowd server

def _truth_policy(truth: dict):
    def policy(task):
        if task.kind == "qualification_test":
            return {q.identifier: truth[q.identifier] for q in task.form.questions if q.identifier in truth}
        return {f.name: truth[f.name] for f in task.fields if f.name in truth}
    return policy


def _answer_via_simulated_worker(crowd, xml: str, truth: dict, name: str) -> str:
    hit = crowd.hit(crowd.hit_type(Title=f"verify {name}"), xml)
    pool = crowd.srv.simulate([_profile(name)], _truth_policy(truth), poll_interval=0.05)
    try:
        asg = wait_until(lambda: crowd.mturk.list_assignments_for_hit(HITId=hit["HITId"])["Assignments"],
                         what="the simulated worker's submission")
    finally:
        pool.stop()
    assert pool.stats()[name]["errors"] == 0, pool.stats()
    return asg[0]["Answer"]


def _profile(name: str, **kw):
    from orchestrator.crowd_server.simulated_workers import WorkerProfile
    return WorkerProfile(name, **kw)


@pytest.mark.parametrize("form", ["crowd-form", "classic"])
def test_parse_round_trip_through_the_crowd_server(crowd, form):
    qs = _qs(7, prefix=f"{form[0]}") + [HitQuestion('h"<&>]]>', URL.format(99), "sofa")]
    values = ["yes", "no", "unsure", "yes", "no", "no", "yes", "unsure"]
    truth = {q.identifier: v for q, v in zip(qs, values)}
    xml = render_verification_question(qs, form=form, allow_unsure=True)
    answer = _answer_via_simulated_worker(crowd, xml, truth, f"sim-{form}")
    assert answer.startswith("<?xml") and "QuestionFormAnswers" in answer
    assert ("taskAnswers" in answer) == (form == "crowd-form")
    assert parse_verification_answer(answer) == truth
    assert parse_verification_seconds(answer) == {}   # simulated workers do not run the page's script


ANS = ('<?xml version="1.0" encoding="ASCII"?><QuestionFormAnswers xmlns="http://mechanicalturk.amazonaws.com/'
       'AWSMechanicalTurkDataSchemas/2005-10-01/QuestionFormAnswers.xsd">{}</QuestionFormAnswers>')


def _a(qid: str, text: str) -> str:
    from xml.sax.saxutils import escape
    return f"<Answer><QuestionIdentifier>{escape(qid)}</QuestionIdentifier><FreeText>{escape(text)}</FreeText></Answer>"


def test_parse_accepts_selection_answers_seconds_and_radio_objects():
    sel = ANS.format("<Answer><QuestionIdentifier>q1</QuestionIdentifier><SelectionIdentifier>no</SelectionIdentifier>"
                     "</Answer>" + _a("q2", " YES ") + _a("lp_seconds", '{"q1": 1.5, "q2": 0.7}'))
    assert parse_verification_answer(sel) == {"q1": "no", "q2": "yes"}
    assert parse_verification_seconds(sel) == {"q1": 1.5, "q2": 0.7}
    ta = ANS.format(_a("taskAnswers", json.dumps([{"a": {"yes": True, "no": False}, "b": "unsure",
                                                   "lp_seconds": '{"a": 2}'}])))
    assert parse_verification_answer(ta) == {"a": "yes", "b": "unsure"}
    assert parse_verification_seconds(ta) == {"a": 2.0}


@pytest.mark.parametrize("bad", [
    "",
    "not xml at all",
    "<QuestionFormAnswers><Answer>",                                              # truncated
    "<Other/>",
    ANS.format(""),                                                               # no answers
    ANS.format(_a("q1", "maybe")),
    ANS.format(_a("q1", "")),
    ANS.format(_a("q1", "yes") + _a("q1", "no")),                                 # answered twice
    ANS.format(_a("taskAnswers", "{not json")),
    ANS.format(_a("taskAnswers", json.dumps({"q1": "yes"}))),                     # not an array
    ANS.format(_a("taskAnswers", json.dumps([{"q1": "yes"}, {"q2": "no"}]))),     # two objects
    ANS.format(_a("taskAnswers", json.dumps([{"q1": 1}]))),
    ANS.format(_a("taskAnswers", json.dumps([{"q1": {"yes": True, "no": True}}]))),
    ANS.format(_a("taskAnswers", json.dumps([{"q1": "yes"}])) + _a("q2", "no")),
    ANS.format("<Answer><QuestionIdentifier>q1</QuestionIdentifier><SelectionIdentifier>yes</SelectionIdentifier>"
               "<SelectionIdentifier>no</SelectionIdentifier></Answer>"),
    ANS.format("<Answer><FreeText>yes</FreeText></Answer>"),
])
def test_malformed_answers_raise_value_error(bad):
    with pytest.raises(ValueError):
        parse_verification_answer(bad)


def test_malformed_seconds_raise_value_error():
    with pytest.raises(ValueError):
        parse_verification_seconds(ANS.format(_a("q1", "yes") + _a("lp_seconds", "[1, 2")))


# ---------------------------------------------------------------- qualification test

def _qual_items(n: int = 10) -> list[tuple[HitQuestion, bool]]:
    return [(HitQuestion(f"t{i:02d}", URL.format(f"t{i}"), ["chair", "lamp"][i % 2]), i % 2 == 0) for i in range(n)]


def test_qualification_test_documents_score_percent_correct():
    items = _qual_items(10)
    test, key = render_qualification_test(items, pass_fraction=0.8)
    root = ET.fromstring(test.encode())
    assert root.tag == f"{{{QUESTION_FORM_NS}}}QuestionForm"
    assert ET.fromstring(key.encode()).tag == f"{{{ANSWER_KEY_NS}}}AnswerKey"
    form = parse_test(test)
    assert [q.identifier for q in form.questions] == [q.identifier for q, _ in items]
    assert all(q.required and q.kind == "Selection" and [s.identifier for s in q.selections] == ["yes", "no"]
               for q in form.questions)
    assert ("Image", f"{URL.format('t0')}\nchair, outlined") in form.questions[0].content
    assert "you need 8 of 10 correct" in test
    ak = parse_answer_key(key)
    truth = {q.identifier: "yes" if t else "no" for q, t in items}
    assert score_test(ak, [(k, "SelectionIdentifier", [v]) for k, v in truth.items()]) == 100
    assert score_test(ak, [(k, "SelectionIdentifier", ["yes"]) for k in truth]) == 50
    wrong2 = dict(truth, t00="no", t01="yes")
    assert score_test(ak, [(k, "SelectionIdentifier", [v]) for k, v in wrong2.items()]) == 80
    assert qualification_pass_value(0.8) == 80 and qualification_pass_value(0.75) == 75
    assert qualification_pass_value(0.333) == 34


def test_qualification_test_rejects_one_sided_or_bad_input():
    with pytest.raises(LabelpropError, match="both correct and incorrect"):
        render_qualification_test([(q, True) for q, _ in _qual_items(4)], pass_fraction=0.8)
    with pytest.raises(LabelpropError, match="pass_fraction"):
        render_qualification_test(_qual_items(4), pass_fraction=0)
    with pytest.raises(LabelpropError, match="65,535"):
        render_qualification_test([(HitQuestion(f"t{i}", URL.format("x" * 300), "c"), i % 2 == 0)
                                   for i in range(200)], pass_fraction=0.8)
    test, _ = render_qualification_test([(HitQuestion("t&<1>", URL.format(1), "</Text>]]>&"), True),
                                         (HitQuestion("t2", URL.format(2), "c"), False)], pass_fraction=0.5)
    assert parse_test(test).questions[0].identifier == "t&<1>"


def test_qualification_test_gates_workers_on_the_crowd_server(crowd):
    items = _qual_items(10)
    test, key = render_qualification_test(items, pass_fraction=0.8)
    m = crowd.mturk
    qt = m.create_qualification_type(Name="labelprop outline test", Description="10 yes/no outline questions",
                                     QualificationTypeStatus="Active", Test=test, AnswerKey=key,
                                     TestDurationInSeconds=600, RetryDelayInSeconds=86400)["QualificationType"]
    qtid = qt["QualificationTypeId"]
    need = qualification_pass_value(0.8)
    tid = crowd.hit_type(Title="gated outlines", QualificationRequirements=[
        {"QualificationTypeId": qtid, "Comparator": "GreaterThanOrEqualTo", "IntegerValues": [need],
         "ActionsGuarded": "Accept"}])
    qs = _qs(3, prefix="g")
    hit_truth = {q.identifier: "yes" for q in qs}
    hit = crowd.hit(tid, render_verification_question(qs))
    truth = {q.identifier: "yes" if t else "no" for q, t in items} | hit_truth
    pool = crowd.srv.simulate([_profile("qual-good", seed=1), _profile("qual-spam", spammer=True, spam_answer="yes")],
                              _truth_policy(truth), poll_interval=0.05)
    try:
        def scores():
            quals = m.list_workers_with_qualification_type(QualificationTypeId=qtid)["Qualifications"]
            return {q["WorkerId"]: q["IntegerValue"] for q in quals} if len(quals) == 2 else None
        got = wait_until(scores, what="both workers' test scores")
        asg = wait_until(lambda: m.list_assignments_for_hit(HITId=hit["HITId"])["Assignments"],
                         what="the qualified worker's submission")
    finally:
        pool.stop()
    ids = pool.worker_ids
    assert got == {ids["qual-good"]: 100, ids["qual-spam"]: 50}
    assert got[ids["qual-spam"]] < need <= got[ids["qual-good"]]
    assert [a["WorkerId"] for a in asg] == [ids["qual-good"]]
    assert parse_verification_answer(asg[0]["Answer"]) == hit_truth
