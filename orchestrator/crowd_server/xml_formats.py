"""MTurk's XML data structures: Question (HTMLQuestion / ExternalQuestion / QuestionForm),
QuestionFormAnswers (what ``Assignment.Answer`` holds) and AnswerKey scoring.
"""
from __future__ import annotations

import html
import html.parser
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

MAX_XML_BYTES = 65535
ANSWERS_NS = "http://mechanicalturk.amazonaws.com/AWSMechanicalTurkDataSchemas/2005-10-01/QuestionFormAnswers.xsd"
ASSIGNMENT_ID_NOT_AVAILABLE = "ASSIGNMENT_ID_NOT_AVAILABLE"


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(el: ET.Element, name: str) -> ET.Element | None:
    for c in el:
        if _local(c.tag) == name:
            return c
    return None


def _children(el: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in el if _local(c.tag) == name]


def _text(el: ET.Element | None, default: str = "") -> str:
    return (el.text or "").strip() if el is not None else default


# ---------------------------------------------------------------- FormattedContent

_FC_TAGS = {"a", "b", "big", "blockquote", "br", "center", "cite", "code", "col", "colgroup", "dd", "del", "div",
            "dl", "dt", "em", "font", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "ins", "li", "ol", "p",
            "pre", "q", "s", "small", "span", "strike", "strong", "sub", "sup", "table", "tbody", "td", "tfoot",
            "th", "thead", "tr", "tt", "u", "ul"}
_FC_VOID = {"br", "col", "hr", "img"}
_FC_DROP_CONTENT = {"script", "style", "iframe", "object", "embed", "template", "noscript", "svg", "math",
                    "textarea", "select", "title", "head"}
_FC_ATTRS = {"a": {"href", "title"}, "img": {"src", "alt", "width", "height", "title"},
             "table": {"border", "cellpadding", "cellspacing", "width"}, "td": {"colspan", "rowspan", "align", "valign", "width"},
             "th": {"colspan", "rowspan", "align", "valign", "width"}, "font": {"color", "size", "face"},
             "col": {"span", "width"}, "colgroup": {"span", "width"}, "ol": {"start", "type"},
             "p": {"align"}, "div": {"align"}}
_FC_URL_ATTRS = {"href", "src"}
_FC_SAFE_URL = re.compile(r"(https?:|mailto:|/|#|[A-Za-z0-9._~-]+(/|$))", re.I)


class _Sanitizer(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.open: list[str] = []
        self.dropping = 0

    def handle_starttag(self, tag, attrs):
        if tag in _FC_DROP_CONTENT:
            self.dropping += 1
            return
        if self.dropping or tag not in _FC_TAGS:
            return
        kept = []
        for k, v in attrs:
            if k not in _FC_ATTRS.get(tag, set()) or v is None:
                continue
            if k in _FC_URL_ATTRS and not _FC_SAFE_URL.match(v.strip()):
                continue
            kept.append(f' {k}="{html.escape(v, quote=True)}"')
        if tag == "a":
            kept.append(' target="_blank" rel="noopener noreferrer"')
        self.out.append(f"<{tag}{''.join(kept)}>")
        if tag not in _FC_VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag in _FC_DROP_CONTENT:
            self.dropping -= 1
        elif tag in self.open and tag not in _FC_VOID and self.open[-1] == tag:
            self.handle_endtag(tag)

    def handle_endtag(self, tag):
        if tag in _FC_DROP_CONTENT:
            self.dropping = max(0, self.dropping - 1)
            return
        if self.dropping or tag not in self.open:
            return
        while self.open:
            t = self.open.pop()
            self.out.append(f"</{t}>")
            if t == tag:
                break

    def handle_data(self, data):
        if not self.dropping:
            self.out.append(html.escape(data, quote=False))

    def result(self) -> str:
        self.close()
        return "".join(self.out) + "".join(f"</{t}>" for t in reversed(self.open))


def sanitize_formatted(markup: str) -> str:
    """FormattedContent as MTurk allows it: an XHTML subset with no scripts, styles, event handlers or
    javascript: URLs.  It is shown on the worker's own pages (qualification tests), so nothing else gets
    through."""
    p = _Sanitizer()
    p.feed(markup)
    return p.result()


# ---------------------------------------------------------------- QuestionForm

@dataclass
class Selection:
    identifier: str
    text: str


@dataclass
class FormQuestion:
    identifier: str
    display_name: str = ""
    required: bool = False
    content: list[tuple[str, str]] = field(default_factory=list)  # (kind, value): Text | FormattedContent | Image
    kind: str = "FreeText"  # FreeText | Selection
    style: str = "radiobutton"
    selections: list[Selection] = field(default_factory=list)
    min_selections: int = 1
    max_selections: int = 1
    default_text: str = ""


@dataclass
class QuestionForm:
    items: list[tuple[str, object]] = field(default_factory=list)  # ("overview", [(kind, value)]) | ("question", FormQuestion)

    @property
    def questions(self) -> list[FormQuestion]:
        return [q for k, q in self.items if k == "question"]  # type: ignore[misc]


def _content(el: ET.Element) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for c in el:
        name = _local(c.tag)
        if name in ("Title", "Text"):
            out.append((name, _text(c)))
        elif name == "FormattedContent":
            out.append(("FormattedContent", sanitize_formatted(c.text or "")))
        elif name == "Binary":
            url = _text(_child(c, "DataURL"))
            alt = _text(_child(c, "AltText"))
            out.append(("Image", f"{url}\n{alt}"))
        elif name == "List":
            for item in _children(c, "ListItem"):
                out.append(("ListItem", _text(item)))
    return out


def parse_question_form(root: ET.Element) -> QuestionForm:
    form = QuestionForm()
    for el in root:
        name = _local(el.tag)
        if name == "Overview":
            form.items.append(("overview", _content(el)))
        elif name == "Question":
            q = FormQuestion(identifier=_text(_child(el, "QuestionIdentifier")))
            if not q.identifier:
                raise ValueError("QuestionForm: every Question needs a QuestionIdentifier")
            q.display_name = _text(_child(el, "DisplayName"))
            q.required = _text(_child(el, "IsRequired")).lower() == "true"
            qc = _child(el, "QuestionContent")
            q.content = _content(qc) if qc is not None else []
            spec = _child(el, "AnswerSpecification")
            if spec is None:
                raise ValueError(f"QuestionForm: question {q.identifier!r} has no AnswerSpecification")
            sel = _child(spec, "SelectionAnswer")
            if sel is not None:
                q.kind = "Selection"
                q.style = _text(_child(sel, "StyleSuggestion"), "radiobutton") or "radiobutton"
                mn, mx = _child(sel, "MinSelectionCount"), _child(sel, "MaxSelectionCount")
                q.min_selections = int(_text(mn)) if mn is not None else 1
                q.max_selections = int(_text(mx)) if mx is not None else (
                    len(_children(_child(sel, "Selections") or ET.Element("x"), "Selection")) if q.style in ("checkbox", "multichooser", "list") else 1)
                sels = _child(sel, "Selections")
                for s_el in _children(sels, "Selection") if sels is not None else []:
                    text = _text(_child(s_el, "Text")) or (_child(s_el, "FormattedContent").text if _child(s_el, "FormattedContent") is not None else "")
                    q.selections.append(Selection(_text(_child(s_el, "SelectionIdentifier")), text or ""))
            else:
                q.kind = "FreeText"
                ft = _child(spec, "FreeTextAnswer")
                q.default_text = _text(_child(ft, "DefaultText")) if ft is not None else ""
            form.items.append(("question", q))
    if not form.questions:
        raise ValueError("QuestionForm has no Question")
    return form


# ---------------------------------------------------------------- Question

@dataclass
class Question:
    kind: str  # HTMLQuestion | ExternalQuestion | QuestionForm
    html: str = ""
    external_url: str = ""
    frame_height: int = 0
    form: QuestionForm | None = None


def parse_question(xml: str) -> Question:
    """Parse a HIT's Question; raise ValueError with a message fit for RequestError."""
    if len(xml.encode("utf-8")) > MAX_XML_BYTES:
        raise ValueError("The Question XML must not be larger than 65,535 bytes")
    try:
        root = ET.fromstring(xml.strip().encode("utf-8"))
    except ET.ParseError as exc:
        raise ValueError(f"There was an error parsing the XML question or answer data in your request: {exc}") from None
    kind = _local(root.tag)
    fh_el = _child(root, "FrameHeight")
    try:
        frame_height = int(_text(fh_el, "0") or 0)
    except ValueError:
        raise ValueError("FrameHeight must be an integer number of pixels") from None
    if kind == "HTMLQuestion":
        content = _child(root, "HTMLContent")
        if content is None or not (content.text or "").strip():
            raise ValueError("HTMLQuestion requires a non-empty HTMLContent element")
        return Question(kind, html=content.text or "", frame_height=frame_height)
    if kind == "ExternalQuestion":
        url = _text(_child(root, "ExternalURL"))
        if not re.match(r"^https?://", url):
            raise ValueError("ExternalQuestion requires an http(s) ExternalURL")
        return Question(kind, external_url=url, frame_height=frame_height)
    if kind == "QuestionForm":
        return Question(kind, form=parse_question_form(root))
    raise ValueError(f"Question must be a QuestionForm, ExternalQuestion or HTMLQuestion, not {kind!r}")


def parse_test(xml: str) -> QuestionForm:
    if len(xml.encode("utf-8")) > MAX_XML_BYTES:
        raise ValueError("Test must not be longer than 65535 bytes")
    q = parse_question(xml)
    if q.kind != "QuestionForm":
        raise ValueError("Test must be a QuestionForm data structure")
    return q.form  # type: ignore[return-value]


# ---------------------------------------------------------------- QuestionFormAnswers

_INVALID_XML_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _escape(text: str) -> str:
    text = _INVALID_XML_CHARS.sub("", text)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.encode("ascii", "xmlcharrefreplace").decode("ascii")


def answers_xml(answers: list[tuple[str, str, object]]) -> str:
    """Serialise answers as MTurk does: ASCII declaration, no whitespace between elements.

    ``answers`` is a list of (QuestionIdentifier, kind, value) with kind ``FreeText``
    (value: str) or ``SelectionIdentifier`` (value: list of identifiers).
    """
    parts = ['<?xml version="1.0" encoding="ASCII"?>', f'<QuestionFormAnswers xmlns="{ANSWERS_NS}">']
    for qid, kind, value in answers:
        parts.append(f"<Answer><QuestionIdentifier>{_escape(qid)}</QuestionIdentifier>")
        if kind == "SelectionIdentifier":
            for v in value:  # type: ignore[union-attr]
                parts.append(f"<SelectionIdentifier>{_escape(str(v))}</SelectionIdentifier>")
        else:
            parts.append(f"<FreeText>{_escape(str(value))}</FreeText>")
        parts.append("</Answer>")
    parts.append("</QuestionFormAnswers>")
    return "".join(parts)


def form_fields_to_answers(fields: list[tuple[str, str]]) -> list[tuple[str, str, object]]:
    """externalSubmit form fields -> answers: one Answer per field name (repeated values joined by '|')."""
    order: list[str] = []
    values: dict[str, list[str]] = {}
    for name, value in fields:
        if name == "assignmentId":
            continue
        if name not in values:
            order.append(name)
            values[name] = []
        values[name].append(value)
    return [(n, "FreeText", "|".join(values[n])) for n in order]


def question_form_answers(form: QuestionForm, fields: list[tuple[str, str]]) -> list[tuple[str, str, object]]:
    """Answers to a QuestionForm from posted fields (field name = QuestionIdentifier)."""
    got: dict[str, list[str]] = {}
    for name, value in fields:
        got.setdefault(name, []).append(value)
    out: list[tuple[str, str, object]] = []
    for q in form.questions:
        vals = [v for v in got.get(q.identifier, []) if v != ""]
        if q.required and not vals:
            raise ValueError(f"Question {q.display_name or q.identifier!r} requires an answer")
        if q.kind == "Selection":
            valid = {s.identifier for s in q.selections}
            bad = [v for v in vals if v not in valid]
            if bad:
                raise ValueError(f"Invalid selection for {q.identifier!r}: {bad[0]!r}")
            if vals:
                out.append((q.identifier, "SelectionIdentifier", vals))
        elif vals:
            out.append((q.identifier, "FreeText", vals[0]))
    return out


# ---------------------------------------------------------------- AnswerKey

@dataclass
class AnswerKey:
    scores: dict[str, dict[str, int]]          # question -> selection/free text -> score
    default_scores: dict[str, int]
    mapping: tuple[str, object] | None = None   # ("Percentage", max) | ("Scale", multiplier) | ("Range", (ranges, out_of_range))


def parse_answer_key(xml: str) -> AnswerKey:
    if len(xml.encode("utf-8")) > MAX_XML_BYTES:
        raise ValueError("AnswerKey must not be longer than 65535 bytes")
    try:
        root = ET.fromstring(xml.strip().encode("utf-8"))
    except ET.ParseError as exc:
        raise ValueError(f"There was an error parsing the AnswerKey XML: {exc}") from None
    if _local(root.tag) != "AnswerKey":
        raise ValueError("AnswerKey must have the root element AnswerKey")
    scores: dict[str, dict[str, int]] = {}
    defaults: dict[str, int] = {}
    for q in _children(root, "Question"):
        qid = _text(_child(q, "QuestionIdentifier"))
        opts: dict[str, int] = {}
        for opt in _children(q, "AnswerOption"):
            score = int(_text(_child(opt, "AnswerScore"), "0") or 0)
            for sid in _children(opt, "SelectionIdentifier"):
                opts[_text(sid)] = score
        scores[qid] = opts
        d = _child(q, "DefaultScore")
        if d is not None:
            defaults[qid] = int(_text(d))
    mapping = None
    qvm = _child(root, "QualificationValueMapping")
    if qvm is not None:
        pm, sm, rm = _child(qvm, "PercentageMapping"), _child(qvm, "ScaleMapping"), _child(qvm, "RangeByScore")
        if pm is not None:
            mapping = ("Percentage", int(_text(_child(pm, "MaximumSummedScore"))))
        elif sm is not None:
            mapping = ("Scale", float(_text(_child(sm, "SummedScoreMultiplier"))))
        elif rm is not None:
            ranges = [(int(_text(_child(r, "InclusiveLowerBound"))), int(_text(_child(r, "InclusiveUpperBound"))),
                       int(_text(_child(r, "QualificationValue")))) for r in _children(rm, "RangeByScore")]
            out = _child(rm, "OutOfRangeQualificationValue")
            mapping = ("Range", (ranges, int(_text(out)) if out is not None else 0))
    return AnswerKey(scores, defaults, mapping)


def score_test(key: AnswerKey, answers: list[tuple[str, str, object]]) -> int:
    """Sum the AnswerScores of the chosen selections, then apply QualificationValueMapping."""
    total = 0
    given = {qid: (kind, value) for qid, kind, value in answers}
    for qid, opts in key.scores.items():
        kind, value = given.get(qid, ("", []))
        chosen = list(value) if kind == "SelectionIdentifier" else ([str(value)] if value else [])
        matched = [opts[c] for c in chosen if c in opts]
        total += sum(matched) if matched else key.default_scores.get(qid, 0)
    if key.mapping is None:
        return total
    kind, arg = key.mapping
    if kind == "Percentage":
        return int(round(100.0 * total / arg)) if arg else 0  # type: ignore[operator]
    if kind == "Scale":
        return int(round(total * arg))  # type: ignore[operator]
    ranges, out_of_range = arg  # type: ignore[misc]
    for lo, hi, val in ranges:
        if lo <= total <= hi:
            return val
    return out_of_range
