"""Simulated workers: programmatic workers that use the worker-side HTTP endpoints like a browser.

Each worker signs in with its personal link, lists the HIT groups it qualifies
for (``GET /``), takes qualification tests it needs (``/qualifications/...``),
accepts a HIT (``POST /groups/<HITTypeId>/accept``), answers, and submits with
the classic form post to ``/mturk/externalSubmit`` (a ``crowd-form`` HIT is
submitted as ``taskAnswers`` JSON, exactly what the browser drop-in sends).

The answers come from a *policy*:

- a Python callable ``policy(task: SimTask) -> dict | None`` (or ``"module:function"``),
  given the HIT's question content (``task.question``, ``task.html``, ``task.fields``)
  and returning the *true* answers as ``{field name or QuestionIdentifier: value}``;
  returning ``None`` returns the HIT unanswered;
- or a JSON file of true answers ``{QuestionIdentifier: answer}`` (``answers_policy(path)``):
  every field of the HIT (or QuestionForm question) found in the file is answered.

Per-worker noise is applied on top: with probability ``1 - accuracy`` an answer
is replaced by a wrong one (another option of the field, yes<->no, true<->false);
a ``spammer`` ignores the policy and answers every field at random (or always
``spam_answer``).  ``seconds`` is the mean working time per HIT.

Spec strings (CLI ``--simulate-workers``): entries separated by ``;``, each
``NAME[:key=value,...]`` with keys ``accuracy``, ``seconds``, ``spammer`` (flag or
true/false), ``spam_answer``, ``max_hits``, ``seed``, ``tests`` (take qualification
tests, default true).  Example: ``"ann:accuracy=0.95,seconds=1;bob:spammer;cy:accuracy=0.6"``.
"""
from __future__ import annotations

import html.parser
import importlib
import json
import random
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import quote, urlencode

from orchestrator.crowd_server.errors import LabelpropError

from .xml_formats import QuestionForm, parse_question, parse_test

YES_NO = {"yes": "no", "no": "yes", "y": "n", "n": "y", "true": "false", "false": "true", "1": "0", "0": "1",
          "Yes": "No", "No": "Yes"}


# ---------------------------------------------------------------- profiles and specs

@dataclass
class WorkerProfile:
    name: str
    accuracy: float = 1.0
    seconds: float = 0.0
    spammer: bool = False
    spam_answer: str | None = None
    max_hits: int | None = None
    seed: int | None = None
    tests: bool = True


# ---------------------------------------------------------------- the answer policy
# One policy for every simulated crowd: the in-process ``simulated`` backend
# (orchestrator/crowd/backends/simulated.py), these HTTP workers and the tests' truth policies.
# Each caller brings its own random draws (seeded its own way); the rules are here.

def true_answer(iou: float | None, kiou: float, gold_label: int | None = None) -> str:
    """The true answer to "does this mask outline the object?": a gold item's known label,
    else yes iff the mask's IoU >= ``kiou``."""
    if gold_label is not None:
        return "yes" if gold_label else "no"
    return "yes" if iou >= kiou else "no"


def answers_wrongly(profile: WorkerProfile, draw: float) -> bool:
    """Whether a worker with ``profile`` gets an answer wrong, given a uniform draw in [0, 1)."""
    return draw >= profile.accuracy


def spam_answer(profile: WorkerProfile, draw: float, choices=("yes", "no")) -> str:
    """A spammer's answer: its fixed ``spam_answer``, else one of ``choices`` by a uniform draw."""
    if profile.spam_answer:
        return profile.spam_answer
    return choices[min(int(draw * len(choices)), len(choices) - 1)]


def worker_answer(truth: str, profile: WorkerProfile, *, wrong: bool, spam_draw: float) -> str:
    """A yes/no answer of a worker: a spammer's (:func:`spam_answer`), else ``truth``, flipped
    when ``wrong`` (drawn with :func:`answers_wrongly`, or fixed flips)."""
    if profile.spammer:
        return spam_answer(profile, spam_draw)
    return YES_NO[truth] if wrong else truth


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on", ""):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def parse_workers_spec(spec: str) -> list[WorkerProfile]:
    """'ann:accuracy=0.95,seconds=1;bob:spammer' -> profiles.  Raises LabelpropError on bad input."""
    out: list[WorkerProfile] = []
    for entry in [e.strip() for e in spec.replace("\n", ";").split(";") if e.strip()]:
        name, _, opts = entry.partition(":")
        name = name.strip()
        if not name or not all(c.isalnum() or c in "-_." for c in name):
            raise LabelpropError(f"--simulate-workers: bad worker name {name!r} in {entry!r} "
                                 f"(letters, digits, '-', '_', '.')")
        p = WorkerProfile(name)
        for opt in [o.strip() for o in opts.split(",") if o.strip()]:
            key, eq, val = opt.partition("=")
            key = key.strip().replace("-", "_")
            try:
                if key == "accuracy":
                    p.accuracy = float(val)
                    if not 0.0 <= p.accuracy <= 1.0:
                        raise ValueError("must be in [0, 1]")
                elif key == "seconds":
                    p.seconds = float(val)
                    if p.seconds < 0:
                        raise ValueError("must be >= 0")
                elif key == "spammer":
                    p.spammer = _bool(val) if eq else True
                elif key == "spam_answer":
                    p.spammer, p.spam_answer = True, val
                elif key == "max_hits":
                    p.max_hits = int(val)
                elif key == "seed":
                    p.seed = int(val)
                elif key == "tests":
                    p.tests = _bool(val) if eq else True
                else:
                    raise ValueError("unknown option (accuracy, seconds, spammer, spam_answer, max_hits, seed, tests)")
            except ValueError as exc:
                raise LabelpropError(f"--simulate-workers: {name}: {key}={val!r}: {exc}") from None
        out.append(p)
    if not out:
        raise LabelpropError("--simulate-workers: no workers given (example: 'ann:accuracy=0.9;bob:spammer')")
    names = [p.name for p in out]
    if len(set(names)) != len(names):
        raise LabelpropError("--simulate-workers: worker names must be unique")
    return out


# ---------------------------------------------------------------- what a worker sees

@dataclass
class FieldInfo:
    name: str
    kind: str                      # text | radio | checkbox | select | crowd | textarea
    options: list[str] = field(default_factory=list)


@dataclass
class SimTask:
    """What the policy sees: the HIT as the worker sees it (never the RequesterAnnotation)."""
    kind: str                      # "hit" | "qualification_test"
    worker: WorkerProfile
    worker_id: str
    hit_id: str = ""
    hit_type_id: str = ""
    assignment_id: str = ""
    title: str = ""
    description: str = ""
    question: str = ""             # the Question (or Test) XML
    question_kind: str = ""        # HTMLQuestion | ExternalQuestion | QuestionForm
    html: str = ""                 # HTMLContent for HTMLQuestion
    uses_crowd_form: bool = False
    fields: list[FieldInfo] = field(default_factory=list)
    form: QuestionForm | None = None
    qualification_type_id: str = ""


class _FieldParser(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.fields: dict[str, FieldInfo] = {}
        self.crowd_form = False
        self._select: FieldInfo | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "crowd-form":
            self.crowd_form = True
        name = a.get("name")
        if tag == "option" and self._select is not None and a.get("value") not in (None, ""):
            self._select.options.append(a["value"])
        if not name or name == "assignmentId":
            return
        if tag == "input":
            t = (a.get("type") or "text").lower()
            if t in ("submit", "button", "reset", "hidden", "file", "image"):
                return
            f = self.fields.setdefault(name, FieldInfo(name, t if t in ("radio", "checkbox") else "text"))
            if t in ("radio", "checkbox") and a.get("value") is not None and a["value"] not in f.options:
                f.options.append(a["value"])
        elif tag == "select":
            self._select = self.fields.setdefault(name, FieldInfo(name, "select"))
        elif tag == "textarea":
            self.fields.setdefault(name, FieldInfo(name, "textarea"))
        elif tag.startswith("crowd-") and tag not in ("crowd-form", "crowd-button"):
            self.fields.setdefault(name, FieldInfo(name, "crowd"))

    def handle_endtag(self, tag):
        if tag == "select":
            self._select = None


def describe_html(content: str) -> tuple[list[FieldInfo], bool]:
    p = _FieldParser()
    p.feed(content)
    return list(p.fields.values()), p.crowd_form


def _form_fields(form: QuestionForm) -> list[FieldInfo]:
    return [FieldInfo(q.identifier, "select" if q.kind == "Selection" else "text",
                      [s.identifier for s in q.selections]) for q in form.questions]


# ---------------------------------------------------------------- policies

Policy = Callable[[SimTask], "Mapping[str, Any] | None"]


def answers_policy(path: str | Path) -> Policy:
    """A policy answering from a JSON file of true answers {QuestionIdentifier: answer}."""
    try:
        truth = json.loads(Path(path).read_text())
    except OSError as exc:
        raise LabelpropError(f"--answers: cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise LabelpropError(f"--answers: {path} is not JSON: {exc}") from None
    if not isinstance(truth, dict):
        raise LabelpropError(f"--answers: {path} must hold a JSON object {{QuestionIdentifier: answer}}")

    def policy(task: SimTask):
        names = [f.name for f in task.fields]
        out = {n: truth[n] for n in names if n in truth}
        if not out:  # fields built by script: fall back to identifiers mentioned in the content
            out = {k: v for k, v in truth.items() if k in task.question}
        return out

    policy.__name__ = f"answers_from_{Path(path).name}"
    return policy


def load_policy(spec: "str | Policy | None") -> Policy | None:
    """A callable, 'package.module:function', or a path to a JSON answers file."""
    if spec is None or callable(spec):
        return spec  # type: ignore[return-value]
    if spec.endswith(".json") or Path(spec).is_file():
        return answers_policy(spec)
    mod, _, fn = spec.partition(":")
    if not mod or not fn:
        raise LabelpropError(f"--policy must be 'module:function' or a .json answers file, got {spec!r}")
    try:
        obj = getattr(importlib.import_module(mod), fn)
    except ImportError as exc:
        raise LabelpropError(f"--policy: cannot import {mod!r}: {exc}") from None
    except AttributeError:
        raise LabelpropError(f"--policy: module {mod!r} has no attribute {fn!r}") from None
    if not callable(obj):
        raise LabelpropError(f"--policy: {spec} is not callable")
    return obj


def _wrong(value: Any, f: FieldInfo | None, rng: random.Random) -> Any:
    if isinstance(value, bool):
        return not value
    if f is not None and len(f.options) >= 2:
        others = [o for o in f.options if o != str(value)]
        return rng.choice(others) if others else value
    if isinstance(value, str) and value in YES_NO:
        return YES_NO[value]
    if isinstance(value, dict) and "on" in value:
        return {**value, "on": not value["on"]}
    if isinstance(value, (int, float)):
        return value + 1
    return f"not-{value}"


def _random_answer(f: FieldInfo, rng: random.Random, fixed: str | None) -> Any:
    if fixed is not None:
        return fixed
    if f.options:
        return rng.choice(f.options)
    if f.kind == "checkbox":
        return rng.random() < 0.5
    return rng.choice(["yes", "no"])


def apply_profile(task: SimTask, answers: Mapping[str, Any] | None, rng: random.Random) -> dict | None:
    p = task.worker
    by_name = {f.name: f for f in task.fields}
    if p.spammer:
        names = list(by_name) or list(answers or {})
        return {n: _random_answer(by_name.get(n) or FieldInfo(n, "text"), rng, p.spam_answer) for n in names}
    if answers is None:
        return None
    out = {}
    for k, v in answers.items():
        out[k] = _wrong(v, by_name.get(k), rng) if answers_wrongly(p, rng.random()) else v
    return out


# ---------------------------------------------------------------- HTTP session

class WorkerSession:
    """A browser-like session of one worker (cookie from the sign-in link)."""

    def __init__(self, base_url: str, token: str, timeout: float = 30.0, cafile: str | None = None):
        self.base = base_url.rstrip("/")
        self.jar = CookieJar()
        handlers: list = [urllib.request.HTTPCookieProcessor(self.jar)]
        if self.base.startswith("https:"):
            from .tls import client_context
            handlers.append(urllib.request.HTTPSHandler(context=client_context(cafile)))
        self.opener = urllib.request.build_opener(*handlers)
        self.timeout = timeout
        me = self.request("GET", f"/signin/{quote(token)}")
        self.worker_id = me["workerId"]

    def request(self, method: str, path: str, fields: list[tuple[str, str]] | None = None) -> dict:
        data = urlencode(fields or []).encode() if method == "POST" else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Accept": "application/json"})
        if data is not None:
            req.add_header("Content-Type", "application/x-www-form-urlencoded")
        try:
            with self.opener.open(req, timeout=self.timeout) as r:
                return json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            try:
                body = json.loads(e.read() or b"{}")
            except ValueError:
                body = {}
            body.setdefault("error", f"HTTP {e.code}")
            body["status"] = e.code
            return body


def encode_submission(task: SimTask, answers: Mapping[str, Any]) -> list[tuple[str, str]]:
    fields = [("assignmentId", task.assignment_id)]
    if task.uses_crowd_form:
        fields.append(("taskAnswers", json.dumps([dict(answers)], separators=(",", ":"))))
        return fields
    for k, v in answers.items():
        for item in (v if isinstance(v, (list, tuple)) else [v]):
            fields.append((k, "true" if item is True else "false" if item is False else str(item)))
    return fields


# ---------------------------------------------------------------- the pool

@dataclass
class WorkerStats:
    accepted: int = 0
    submitted: int = 0
    returned: int = 0
    errors: int = 0
    tests_taken: int = 0
    last_error: str = ""


class SimulatedWorker(threading.Thread):
    def __init__(self, base_url: str, profile: WorkerProfile, token: str, policy: Policy | None,
                 stop: threading.Event, poll_interval: float = 0.2, cafile: str | None = None):
        super().__init__(name=f"sim-worker-{profile.name}", daemon=True)
        self.cafile = cafile
        self.base_url, self.profile, self.token, self.policy = base_url, profile, token, policy
        self.stop_event, self.poll = stop, poll_interval
        self.rng = random.Random(profile.seed)
        self.stats = WorkerStats()
        self.worker_id = ""
        self._tried_tests: set[str] = set()

    def run(self) -> None:
        try:
            s = WorkerSession(self.base_url, self.token, cafile=self.cafile)
        except Exception as exc:  # server gone or bad token
            self.stats.errors += 1
            self.stats.last_error = f"sign-in failed: {exc}"
            return
        self.worker_id = s.worker_id
        while not self.stop_event.is_set():
            if self.profile.max_hits is not None and self.stats.submitted >= self.profile.max_hits:
                return
            try:
                worked = self.step(s)
            except Exception as exc:  # keep going: a simulated worker must not die on one bad HIT
                self.stats.errors += 1
                self.stats.last_error = repr(exc)
                worked = False
            if not worked:
                self.stop_event.wait(self.poll)

    def _task(self, payload: dict, kind: str) -> SimTask:
        t = SimTask(kind=kind, worker=self.profile, worker_id=self.worker_id, hit_id=payload.get("hitId", ""),
                    hit_type_id=payload.get("hitTypeId", ""), assignment_id=payload.get("assignmentId", ""),
                    title=payload.get("title", ""), description=payload.get("description", ""),
                    question=payload.get("question", ""), question_kind=payload.get("questionKind", ""))
        q = parse_question(t.question)
        if q.kind == "HTMLQuestion":
            t.html = q.html
            t.fields, t.uses_crowd_form = describe_html(q.html)
        elif q.kind == "QuestionForm":
            t.form = q.form
            t.fields = _form_fields(q.form)
        return t

    def step(self, s: WorkerSession) -> bool:
        home = s.request("GET", "/")
        if "groups" not in home:
            raise RuntimeError(home.get("error", "cannot list HITs"))
        groups = [g for g in home["groups"] if g["can_accept"]]
        if not groups:
            return self.take_tests(s, home["groups"])
        g = groups[self.rng.randrange(len(groups))] if len(groups) > 1 else groups[0]
        payload = s.request("POST", f"/groups/{g['hit_type_id']}/accept")
        if "assignmentId" not in payload:
            return False  # someone else took the last one
        self.stats.accepted += 1
        task = self._task(payload, "hit")
        truth = self.policy(task) if (self.policy is not None and not self.profile.spammer) else None
        answers = apply_profile(task, truth, self.rng)
        if answers is None:
            s.request("POST", f"/assignments/{task.assignment_id}/return")
            self.stats.returned += 1
            return True
        if self.profile.seconds > 0:
            if self.stop_event.wait(self.profile.seconds * self.rng.uniform(0.5, 1.5)):
                return False
        r = s.request("POST", "/mturk/externalSubmit", encode_submission(task, answers))
        if r.get("status") == "Submitted":
            self.stats.submitted += 1
        else:
            self.stats.errors += 1
            self.stats.last_error = str(r.get("error"))
        return True

    def take_tests(self, s: WorkerSession, groups: list[dict]) -> bool:
        if not self.profile.tests:
            return False
        wanted = {r["QualificationTypeId"] for g in groups for r in g.get("unmet", [])}
        if not wanted:
            return False
        quals = s.request("GET", "/qualifications").get("qualifications", [])
        for q in quals:
            if q["id"] in wanted and q["canRequest"] and q["id"] not in self._tried_tests:
                self._tried_tests.add(q["id"])
                r = s.request("POST", f"/qualifications/{q['id']}/request")
                if "test" not in r:
                    return True  # auto-granted
                form = parse_test(r["test"])
                task = SimTask(kind="qualification_test", worker=self.profile, worker_id=self.worker_id,
                               question=r["test"], question_kind="QuestionForm", form=form,
                               fields=_form_fields(form), qualification_type_id=q["id"], title=q["name"])
                truth = self.policy(task) if (self.policy is not None and not self.profile.spammer) else None
                answers = apply_profile(task, truth, self.rng) or {}
                s.request("POST", f"/qualifications/{q['id']}/test", encode_submission(task, answers)[1:])
                self.stats.tests_taken += 1
                return True
        return False


class SimulatedWorkerPool:
    """Threads of simulated workers against one crowd server.  Use ``start_pool`` to build one."""

    def __init__(self, base_url: str, workers: list[tuple[WorkerProfile, str]], policy: Policy | None,
                 poll_interval: float = 0.2, cafile: str | None = None):
        self.stop_event = threading.Event()
        self.workers = [SimulatedWorker(base_url, p, tok, policy, self.stop_event, poll_interval, cafile)
                        for p, tok in workers]

    def start(self) -> "SimulatedWorkerPool":
        for w in self.workers:
            w.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        for w in self.workers:
            if w.is_alive():
                w.join(timeout)

    @property
    def worker_ids(self) -> dict[str, str]:
        return {w.profile.name: w.worker_id for w in self.workers}

    def stats(self) -> dict[str, dict]:
        return {w.profile.name: {"worker_id": w.worker_id, **w.stats.__dict__} for w in self.workers}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def provision(store, profiles: list[WorkerProfile]) -> list[tuple[WorkerProfile, str]]:
    """Create the simulated workers in the store (or give existing simulated ones a fresh token)."""
    out = []
    existing = {w.name: w for w in store.list_workers()}
    for p in profiles:
        if p.name in existing and not existing[p.name].simulated:
            raise LabelpropError(f"worker {p.name!r} is a real (non-simulated) worker; pick another name")
        _w, token = store.add_worker(p.name, simulated=True, rotate_if_exists=True)
        out.append((p, token))
    return out


def start_pool(endpoint_url: str, workers: "str | list[WorkerProfile]", policy: "str | Policy | None" = None,
               *, data_dir: str | Path | None = None, store=None, poll_interval: float = 0.2,
               cafile: str | None = None) -> SimulatedWorkerPool:
    """Start simulated workers against a running server.

    ``workers``: a spec string or profiles; ``policy``: callable, 'module:function' or answers .json;
    the workers are created in the server's database (``data_dir`` or an open ``store``).
    ``cafile``: the CA that signed an HTTPS server's certificate (default: the running server's, from
    ``data_dir``'s server.json, when it made its own).
    """
    from .store import Store, read_server_info
    if cafile is None and data_dir is not None:
        cafile = (read_server_info(Path(data_dir)) or {}).get("ca_file")
    profiles = parse_workers_spec(workers) if isinstance(workers, str) else list(workers)
    pol = load_policy(policy)
    if pol is None and not all(p.spammer for p in profiles):
        raise LabelpropError("simulated workers need a policy (--policy module:function or --answers FILE.json) "
                             "unless every worker is a spammer")
    own = store is None
    if own:
        if data_dir is None:
            raise LabelpropError("start_pool needs the server's data_dir (or an open store)")
        store = Store(Path(data_dir))
    try:
        creds = provision(store, profiles)
    finally:
        if own:
            store.close()
    return SimulatedWorkerPool(endpoint_url, creds, pol, poll_interval, cafile).start()
