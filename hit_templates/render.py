"""Render labelprop's HITs as MTurk XML, and read the answers back.

The campaign loop calls three functions:

- :func:`render_verification_question` -> an ``HTMLQuestion`` XML string for ``CreateHITWithHITType``:
  one yes/no question per mask ("Is the **chair** outlined correctly?"), answered with the
  keyboard (``y`` / ``n``, ``u`` for unsure when allowed; Backspace or the left arrow goes back
  to revise; Enter submits once every question is answered), one question at a time with
  auto-advance and a progress counter, beside an instructions panel with good and bad
  examples (inline SVG drawings, or small published overlays).  ``form="crowd-form"`` uses
  Crowd HTML Elements (the answers then arrive as one ``taskAnswers`` JSON answer);
  ``form="classic"`` posts a plain form to ``/mturk/externalSubmit`` (one answer per question).
- :func:`parse_verification_answer` -> ``{identifier: "yes" | "no" | "unsure"}`` from
  ``Assignment.Answer``, for either form style.
- :func:`render_qualification_test` -> ``(QuestionForm XML, AnswerKey XML)`` for
  ``CreateQualificationType``: the qualification value is the percentage of correct answers
  (use :func:`qualification_pass_value` as the ``GreaterThanOrEqualTo`` threshold).

Every question is a radio group named by its identifier with the values ``yes`` / ``no``
(/ ``unsure``), so the crowd server's simulated workers can answer the page too.  A hidden
field ``lp_seconds`` carries the seconds spent on each question (JSON; read it with
:func:`parse_verification_seconds`).  Every embedded string goes through Jinja2's
autoescaping, no data is ever placed inside ``<script>``, and ``]]>`` cannot end the CDATA
section early (it is split across two sections), so hostile class names or identifiers cannot
break the document.  Question XML is checked before it is returned: well-formed, the right
namespace and children, at most 65,535 bytes (images go by URL, never inline).
"""
from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import lru_cache

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from orchestrator.errors import LabelpropError

__all__ = ["HitQuestion", "InstructionExample", "InstructionSet", "DEFAULT_INSTRUCTIONS",
           "render_verification_question", "parse_verification_answer", "parse_verification_seconds",
           "parse_question_form_answers", "render_qualification_test", "qualification_pass_value",
           "max_questions_per_hit", "HTML_QUESTION_NS", "QUESTION_FORM_NS", "ANSWER_KEY_NS",
           "MAX_QUESTION_BYTES", "ANSWER_VALUES", "SECONDS_FIELD", "BROKEN_FIELD"]

HTML_QUESTION_NS = "http://mechanicalturk.amazonaws.com/AWSMechanicalTurkDataSchemas/2011-11-11/HTMLQuestion.xsd"
QUESTION_FORM_NS = "http://mechanicalturk.amazonaws.com/AWSMechanicalTurkDataSchemas/2017-11-06/QuestionForm.xsd"
ANSWER_KEY_NS = "http://mechanicalturk.amazonaws.com/AWSMechanicalTurkDataSchemas/2005-10-01/AnswerKey.xsd"
ANSWERS_NS = "http://mechanicalturk.amazonaws.com/AWSMechanicalTurkDataSchemas/2005-10-01/QuestionFormAnswers.xsd"
MAX_QUESTION_BYTES = 65535
FORMS = ("crowd-form", "classic")
ANSWER_VALUES = ("yes", "no", "unsure")
SECONDS_FIELD = "lp_seconds"
BROKEN_FIELD = "lp_broken"
RESERVED_NAMES = frozenset({SECONDS_FIELD, BROKEN_FIELD, "assignmentId", "taskAnswers", "hitId", "workerId",
                            "turkSubmitTo"})
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")
MAX_IDENTIFIER_LEN = 256


@dataclass(frozen=True)
class HitQuestion:
    """One yes/no question.

    ``identifier``: opaque QuestionIdentifier (gold and real questions must look alike, e.g. "q7f3a9c");
    unique within a HIT.  ``image_url``: the overlay JPEG (``orchestrator.crowd.assets.publish_overlays``),
    http(s).  ``class_name``: untrusted text, always escaped.
    """
    identifier: str
    image_url: str
    class_name: str


@dataclass(frozen=True)
class InstructionExample:
    """One example in the instructions panel: ``answer`` "yes" or "no", a short caption, and either a
    built-in drawing (``drawing``: one of :data:`DRAWINGS`) or a published image (``image_url``)."""
    answer: str
    caption: str
    drawing: str = ""
    image_url: str = ""


@dataclass(frozen=True)
class InstructionSet:
    heading: str = "Is the object outlined correctly?"
    summary: str = ("Each picture shows an object with an outline drawn on it (yellow line, blue tint). "
                    "Decide whether the outline covers that one object well.")
    rules: tuple[str, ...] = (
        "Yes: the outline follows the object's edges closely. Small slips of a few pixels are fine.",
        "No: the outline is much larger or smaller than the object, misses a big part of it, covers "
        "two or more objects, or surrounds something that is not the named object.",
        "Parts hidden behind other things do not need to be outlined.",
        "Some questions have known answers and are checked. Most take 1-2 seconds: trust your first look.",
    )
    examples: tuple[InstructionExample, ...] = (
        InstructionExample("yes", "Follows the mug's edges", drawing="good"),
        InstructionExample("no", "Far too loose", drawing="loose"),
        InstructionExample("no", "Misses half the mug", drawing="partial"),
        InstructionExample("no", "Two objects in one outline", drawing="merged"),
    )


DEFAULT_INSTRUCTIONS = InstructionSet()

# Built-in example drawings (fixed markup: a mug, sometimes a plant, and an outline in the overlay style).
_SVG = ('<svg viewBox="0 0 120 90" role="img" aria-label="{label}"><rect width="120" height="90" fill="#e4e9ee"/>'
        '<use href="#lp-plant"/><use href="#lp-mug"/>'
        '<path d="{d}" fill="rgba(0,170,255,.33)" stroke="#111" stroke-width="4" stroke-linejoin="round"/>'
        '<path d="{d}" fill="none" stroke="#ffe800" stroke-width="1.6" stroke-linejoin="round"/></svg>')
_OUTLINES = {
    "good": ("outline that follows the mug", "M37 25h42v10h6a10 10 0 0 1 0 24h-6v13a7 7 0 0 1-7 7H44a7 7 0 0 1-7-7z"),
    "loose": ("outline far larger than the mug", "M26 10h76v76H26z"),
    "partial": ("outline covering the top half of the mug", "M37 25h42v26H37z"),
    "merged": ("one outline around the plant and the mug",
               "M6 38h28l3-13h42v10h6a10 10 0 0 1 0 24h-6v20H6z"),
}
DRAWINGS: dict[str, Markup] = {k: Markup(_SVG.format(label=v[0], d=v[1])) for k, v in _OUTLINES.items()}


@lru_cache(maxsize=1)
def _env() -> Environment:
    env = Environment(loader=PackageLoader("hit_templates", "."), autoescape=True, trim_blocks=True,
                      lstrip_blocks=True, undefined=StrictUndefined, keep_trailing_newline=False)
    return env


# ---------------------------------------------------------------- checks

def _clean_text(text: str, what: str) -> str:
    if not isinstance(text, str):
        raise LabelpropError(f"{what} must be a string, got {type(text).__name__}")
    return _XML_INVALID.sub("", text)


def _check_url(url: str, what: str) -> str:
    if not isinstance(url, str) or not re.match(r"^https?://[^\s]+$", url):
        raise LabelpropError(f"{what} must be an http(s) URL without spaces (images go by URL, never inline), "
                             f"got {str(url)[:80]!r}")
    if _XML_INVALID.search(url):
        raise LabelpropError(f"{what} contains control characters")
    return url


def _check_questions(questions: list[HitQuestion]) -> list[HitQuestion]:
    if not questions:
        raise LabelpropError("a verification HIT needs at least one question")
    seen: set[str] = set()
    out = []
    for i, q in enumerate(questions):
        if not isinstance(q, HitQuestion):
            raise LabelpropError(f"question {i}: expected a HitQuestion, got {type(q).__name__}")
        ident = q.identifier
        if not isinstance(ident, str) or not ident.strip() or ident != ident.strip():
            raise LabelpropError(f"question {i}: identifier must be a non-empty string without surrounding "
                                 f"whitespace, got {ident!r}")
        if _XML_INVALID.search(ident) or len(ident) > MAX_IDENTIFIER_LEN:
            raise LabelpropError(f"question {i}: identifier {ident[:40]!r} has control characters or is longer "
                                 f"than {MAX_IDENTIFIER_LEN}")
        if ident in RESERVED_NAMES:
            raise LabelpropError(f"question {i}: identifier {ident!r} is reserved ({', '.join(sorted(RESERVED_NAMES))})")
        if ident in seen:
            raise LabelpropError(f"question {i}: duplicate identifier {ident!r}")
        seen.add(ident)
        out.append(HitQuestion(ident, _check_url(q.image_url, f"question {ident!r}: image_url"),
                               _clean_text(q.class_name, f"question {ident!r}: class_name").strip() or "object"))
    return out


def _check_instructions(ins: InstructionSet) -> InstructionSet:
    for ex in ins.examples:
        if ex.answer not in ("yes", "no"):
            raise LabelpropError(f"instruction example {ex.caption!r}: answer must be 'yes' or 'no'")
        if ex.image_url:
            if ex.image_url.startswith("data:"):
                raise LabelpropError("instruction examples must link published images, not inline data: URLs")
            _check_url(ex.image_url, f"instruction example {ex.caption!r}: image_url")
        elif ex.drawing not in DRAWINGS:
            raise LabelpropError(f"instruction example {ex.caption!r}: drawing must be one of "
                                 f"{', '.join(DRAWINGS)} (or give image_url), got {ex.drawing!r}")
    return ins


def _cdata(text: str) -> str:
    """A CDATA section holding ``text`` exactly; ``]]>`` inside is split across two sections."""
    return "<![CDATA[" + text.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def validate_html_question(xml: str) -> str:
    """Check an HTMLQuestion document: size, well-formedness, namespace, children; returns the HTML."""
    size = len(xml.encode("utf-8"))
    if size > MAX_QUESTION_BYTES:
        raise LabelpropError(f"the HTMLQuestion is {size:,} bytes, over MTurk's {MAX_QUESTION_BYTES:,}-byte limit")
    try:
        root = ET.fromstring(xml.encode("utf-8"))
    except ET.ParseError as exc:
        raise LabelpropError(f"the HTMLQuestion XML is not well-formed: {exc}") from None
    if root.tag != f"{{{HTML_QUESTION_NS}}}HTMLQuestion":
        raise LabelpropError(f"the root element must be HTMLQuestion in namespace {HTML_QUESTION_NS}, got {root.tag}")
    kids = [c.tag for c in root]
    want = [f"{{{HTML_QUESTION_NS}}}HTMLContent", f"{{{HTML_QUESTION_NS}}}FrameHeight"]
    if kids != want:
        raise LabelpropError(f"HTMLQuestion must hold HTMLContent then FrameHeight, got {[_local(k) for k in kids]}")
    if not re.fullmatch(r"\d+", (root[1].text or "").strip()):
        raise LabelpropError("HTMLQuestion FrameHeight must be a non-negative integer")
    html = root[0].text or ""
    if not html.strip():
        raise LabelpropError("HTMLQuestion HTMLContent is empty")
    return html


# ---------------------------------------------------------------- verification HIT

def _render_html(questions: list[HitQuestion], form: str, allow_unsure: bool, ins: InstructionSet) -> str:
    return _env().get_template("verification.html.j2").render(
        questions=questions, form=form, allow_unsure=allow_unsure, ins=ins, drawings=DRAWINGS)


def _wrap(html: str, frame_height: int) -> str:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<HTMLQuestion xmlns="{HTML_QUESTION_NS}">'
            f"<HTMLContent>{_cdata(html)}</HTMLContent><FrameHeight>{int(frame_height)}</FrameHeight></HTMLQuestion>")


def render_verification_question(questions: list[HitQuestion], *, form: str = "crowd-form",
                                 allow_unsure: bool = False, instructions: "InstructionSet | None" = None,
                                 frame_height: int = 0) -> str:
    """HTMLQuestion XML for one verification HIT.

    ``form``: "crowd-form" (Crowd HTML Elements; answers arrive as one ``taskAnswers`` JSON answer) or
    "classic" (a form posted to ``https://www.mturk.com/mturk/externalSubmit``, or to ``turkSubmitTo``
    when the page gets it, with ``assignmentId`` from the query string; one answer per question).
    ``allow_unsure`` adds an "Unsure" choice (key ``u``).  ``instructions``: the panel beside the
    questions (default :data:`DEFAULT_INSTRUCTIONS`).  ``frame_height``: pixels, 0 lets the page size itself.

    The result is validated (at most 65,535 bytes, well-formed, HTMLQuestion namespace, HTMLContent then
    FrameHeight); raises LabelpropError with a clear message when the questions are invalid (empty,
    duplicate or reserved identifiers, non-http(s) image URLs) or when they do not fit.
    """
    if form not in FORMS:
        raise LabelpropError(f"form must be one of {', '.join(FORMS)}, got {form!r}")
    if not isinstance(frame_height, int) or frame_height < 0:
        raise LabelpropError(f"frame_height must be a non-negative integer, got {frame_height!r}")
    qs = _check_questions(list(questions))
    ins = _check_instructions(instructions or DEFAULT_INSTRUCTIONS)
    html = _render_html(qs, form, allow_unsure, ins)
    xml = _wrap(html, frame_height)
    size = len(xml.encode("utf-8"))
    if size > MAX_QUESTION_BYTES:
        fit = _max_fit(qs, form, allow_unsure, ins, frame_height)
        raise LabelpropError(
            f"a HIT with {len(qs)} questions is {size:,} bytes of Question XML, over MTurk's "
            f"{MAX_QUESTION_BYTES:,}-byte limit; at most {fit} of these questions fit in one HIT "
            f"(lower crowd.questions_per_hit, or use shorter image URLs)")
    if validate_html_question(xml) != html:
        raise LabelpropError("internal error: the HTMLContent does not round-trip through the XML")
    return xml


def _size(qs: list[HitQuestion], form: str, allow_unsure: bool, ins: InstructionSet, frame_height: int) -> int:
    return len(_wrap(_render_html(qs, form, allow_unsure, ins), frame_height).encode("utf-8"))


def _max_fit(qs: list[HitQuestion], form, allow_unsure, ins, frame_height) -> int:
    lo, hi = 0, len(qs)          # size(qs[:lo]) fits, size(qs[:hi]) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _size(qs[:mid], form, allow_unsure, ins, frame_height) <= MAX_QUESTION_BYTES:
            lo = mid
        else:
            hi = mid
    return lo


def max_questions_per_hit(*, form: str = "crowd-form", allow_unsure: bool = False,
                          instructions: "InstructionSet | None" = None, frame_height: int = 0,
                          image_url_length: int = 160, class_name_length: int = 32,
                          identifier_length: int = 16) -> int:
    """How many questions fit in one HTMLQuestion (65,535 bytes) when image URLs, class names and
    identifiers are (at most) this long (ASCII).  Presigned S3 URLs run to ~600 characters."""
    if form not in FORMS:
        raise LabelpropError(f"form must be one of {', '.join(FORMS)}, got {form!r}")
    ins = _check_instructions(instructions or DEFAULT_INSTRUCTIONS)
    base = "https://example.org/"
    url_pad = max(0, image_url_length - len(base) - 8)

    def sample(n: int) -> list[HitQuestion]:
        return [HitQuestion(f"q{i:0{max(1, identifier_length - 1)}d}"[:max(identifier_length, len(str(i)) + 1)],
                            f"{base}{'a' * url_pad}{i:08d}", "c" * class_name_length) for i in range(n)]

    hi = 64
    while _size(sample(hi), form, allow_unsure, ins, frame_height) <= MAX_QUESTION_BYTES:
        hi *= 2
        if hi > 1 << 16:
            break
    return _max_fit(sample(hi), form, allow_unsure, ins, frame_height)


# ---------------------------------------------------------------- answers

def parse_question_form_answers(answer_xml: str) -> list[tuple[str, str, "str | list[str]"]]:
    """``QuestionFormAnswers`` XML (``Assignment.Answer``) -> ``[(QuestionIdentifier, kind, value)]`` in order,
    kind ``FreeText`` (value str), ``SelectionIdentifier`` (value list of str) or ``UploadedFileKey``.
    Raises ValueError when the XML is malformed or not QuestionFormAnswers."""
    import xmltodict
    from xml.parsers.expat import ExpatError
    if not isinstance(answer_xml, str) or not answer_xml.strip():
        raise ValueError("the answer is empty")
    try:
        doc = xmltodict.parse(answer_xml, process_namespaces=True, namespaces={ANSWERS_NS: None},
                              force_list=("Answer", "SelectionIdentifier"))
    except ExpatError as exc:
        raise ValueError(f"the answer is not well-formed XML: {exc}") from None
    if list(doc) != ["QuestionFormAnswers"]:
        raise ValueError(f"the answer's root element must be QuestionFormAnswers, got {list(doc)[:1]}")
    body = doc["QuestionFormAnswers"] or {}
    if not isinstance(body, dict):
        raise ValueError("QuestionFormAnswers holds text, not Answer elements")
    out: list[tuple[str, str, "str | list[str]"]] = []
    for a in body.get("Answer") or []:
        if not isinstance(a, dict) or not isinstance(a.get("QuestionIdentifier"), str):
            raise ValueError("every Answer needs a QuestionIdentifier")
        qid = a["QuestionIdentifier"]
        if "SelectionIdentifier" in a:
            sel = a["SelectionIdentifier"]
            if not all(isinstance(s, str) for s in sel):
                raise ValueError(f"Answer {qid!r}: SelectionIdentifier must be text")
            out.append((qid, "SelectionIdentifier", list(sel)))
        elif "UploadedFileKey" in a:
            out.append((qid, "UploadedFileKey", str(a["UploadedFileKey"])))
        else:
            ft = a.get("FreeText")
            if ft is not None and not isinstance(ft, str):
                raise ValueError(f"Answer {qid!r}: FreeText must be text")
            out.append((qid, "FreeText", ft or ""))
    return out


def _fields(answer_xml: str) -> dict[str, object]:
    """Answer XML -> {field name: raw value}, unpacking crowd-form's single ``taskAnswers`` JSON answer."""
    answers = parse_question_form_answers(answer_xml)
    if any(q == "taskAnswers" for q, _, _ in answers):
        if len(answers) != 1:
            raise ValueError("taskAnswers must be the only Answer of a crowd-form submission")
        try:
            data = json.loads(answers[0][2])  # type: ignore[arg-type]
        except ValueError as exc:
            raise ValueError(f"taskAnswers is not JSON: {exc}") from None
        if not (isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict)):
            raise ValueError("taskAnswers must be a JSON array holding one object")
        return dict(data[0])
    out: dict[str, object] = {}
    for qid, kind, value in answers:
        if qid in out:
            raise ValueError(f"question {qid!r} is answered twice")
        if kind == "SelectionIdentifier":
            if len(value) != 1:
                raise ValueError(f"question {qid!r}: expected one selection, got {len(value)}")
            value = value[0]
        out[qid] = value
    return out


def _answer_value(qid: str, raw: object) -> str:
    if isinstance(raw, dict):  # {"yes": true, "no": false} (crowd radio-button style)
        chosen = [k for k, v in raw.items() if v is True]
        if len(chosen) != 1:
            raise ValueError(f"question {qid!r}: cannot tell the answer from {raw!r}")
        raw = chosen[0]
    if not isinstance(raw, str):
        raise ValueError(f"question {qid!r}: the answer must be text, got {raw!r}")
    v = raw.strip().lower()
    if v not in ANSWER_VALUES:
        raise ValueError(f"question {qid!r}: the answer must be yes, no or unsure, got {raw[:40]!r}")
    return v


def parse_verification_answer(answer_xml: str) -> dict[str, str]:
    """``Assignment.Answer`` of a verification HIT -> ``{identifier: "yes" | "no" | "unsure" | "broken"}``.

    Accepts QuestionFormAnswers XML as MTurk (and the crowd server) store it: a crowd-form submission
    (one ``taskAnswers`` Answer whose FreeText is a JSON array with one object) or a classic form
    post (one FreeText Answer per field).  The ``lp_seconds`` timing field is skipped (see
    :func:`parse_verification_seconds`); questions listed in ``lp_broken`` (their picture did not
    load, so the page took no answer) come back as ``"broken"``.  Raises ValueError on malformed
    XML/JSON, values other than yes / no / unsure, questions answered twice, or no answers at all.
    """
    fields = _fields(answer_xml)
    out = {k: _answer_value(k, v) for k, v in fields.items() if k not in RESERVED_NAMES}
    raw = fields.get(BROKEN_FIELD)
    if raw not in (None, ""):
        try:
            ids = json.loads(raw) if isinstance(raw, str) else raw
            if not isinstance(ids, list) or not all(isinstance(x, str) for x in ids):
                raise ValueError("not a list of identifiers")
        except ValueError as exc:
            raise ValueError(f"{BROKEN_FIELD} is not a JSON list of identifiers: {exc}") from None
        for ident in ids:
            out.setdefault(ident, "broken")
    if not out:
        raise ValueError("the submission holds no answers")
    return out


def parse_verification_seconds(answer_xml: str) -> dict[str, float]:
    """Seconds the worker spent on each question (the page's hidden ``lp_seconds`` field); {} if absent."""
    raw = _fields(answer_xml).get(SECONDS_FIELD)
    if raw in (None, ""):
        return {}
    try:
        data = json.loads(raw) if isinstance(raw, str) else raw
        return {str(k): float(v) for k, v in dict(data).items()}
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{SECONDS_FIELD} is not a JSON object of numbers: {exc}") from None


# ---------------------------------------------------------------- qualification test

def qualification_pass_value(pass_fraction: float) -> int:
    """The qualification value (percent correct) a worker needs: use it with ``GreaterThanOrEqualTo``."""
    if not 0.0 < pass_fraction <= 1.0:
        raise LabelpropError(f"pass_fraction must be in (0, 1], got {pass_fraction!r}")
    return int(math.ceil(round(pass_fraction * 100, 6)))


def render_qualification_test(items: list[tuple[HitQuestion, bool]], *, pass_fraction: float,
                              instructions: "InstructionSet | None" = None) -> tuple[str, str]:
    """(QuestionForm XML, AnswerKey XML) for ``CreateQualificationType`` (``Test``, ``AnswerKey``).

    ``items``: (question, is the mask correct).  Each becomes a required yes/no radio question showing
    the overlay image (``Binary``/``DataURL``, by URL).  The AnswerKey gives 1 point per correct
    answer and maps the sum to a percentage (``PercentageMapping``), so the qualification value is
    the percent correct; require it ``GreaterThanOrEqualTo`` :func:`qualification_pass_value`
    (``pass_fraction``, also stated in the test's overview).  Both kinds of answer must occur (else
    a worker who always says the same thing would pass).  Both documents are checked (well-formed,
    at most 65,535 bytes, parsed by the crowd server's QuestionForm/AnswerKey readers).
    """
    from orchestrator.crowd_server.xml_formats import parse_answer_key, parse_test
    qual = qualification_pass_value(pass_fraction)
    pairs = list(items)
    qs = _check_questions([q for q, _ in pairs])
    truths = [bool(t) for _, t in pairs]
    if all(truths) or not any(truths):
        raise LabelpropError("a qualification test needs both correct and incorrect masks "
                             "(else always answering the same passes)")
    ins = _check_instructions(instructions or DEFAULT_INSTRUCTIONS)
    items2 = list(zip(qs, truths))
    need = math.ceil(len(items2) * qual / 100 - 1e-9)
    env = _env()
    test = env.get_template("qualification_test.xml.j2").render(items=items2, ins=ins, need=need)
    key = env.get_template("answer_key.xml.j2").render(items=items2)
    for what, doc, check in (("Test", test, parse_test), ("AnswerKey", key, parse_answer_key)):
        size = len(doc.encode("utf-8"))
        if size > MAX_QUESTION_BYTES:
            raise LabelpropError(f"the qualification {what} is {size:,} bytes, over MTurk's {MAX_QUESTION_BYTES:,}-byte "
                                 f"limit: use fewer questions (crowd.qualification.questions)")
        try:
            check(doc)
        except ValueError as exc:
            raise LabelpropError(f"the qualification {what} is invalid: {exc}") from None
    return test, key
