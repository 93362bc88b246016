"""The worker web: sign-in links, HIT groups, preview / accept / work / submit, qualification tests.

Every page answers HTML to browsers and JSON to programmatic clients (``Accept:
application/json``, used by the simulated workers), through the same URLs.

A HIT's question runs in a sandboxed iframe, as on MTurk: HTMLQuestion content is
served from ``/task/<HITId>`` with the MTurk query parameters ``assignmentId``,
``hitId``, ``turkSubmitTo`` and ``workerId`` (``ASSIGNMENT_ID_NOT_AVAILABLE`` in
preview); ExternalQuestion URLs get the same parameters; QuestionForm is
rendered to an HTML form.  The submission is the classic form post to
``<turkSubmitTo>/mturk/externalSubmit``.  The only change made to HTMLContent is
pointing MTurk's public script and submit URLs at this server, so tasks work
offline: ``https://assets.crowd.aws/crowd-html-elements.js`` ->
``/static/crowd-html-elements.js``, ``.../mturk-public/externalHIT_v1.js`` ->
``/static/externalHIT_v1.js``, ``https://www.mturk.com/mturk/externalSubmit`` ->
``/mturk/externalSubmit``.

Assets (the mask overlays HITs show) are public, like objects of a public S3 bucket:
``GET /assets/<name>`` serves a file uploaded by a requester (``POST /assets/<name>``, the
body being the file, signed with the requester's key exactly like a Requester API call;
files live in ``DATA_DIR/assets`` and never change once written), or a file under the
``--assets DIR`` directory.  Every campaign that posts to this server uploads its overlays
(``orchestrator.crowd.assets.LocalAssetStore`` with the server as its mirror), so the images of
every campaign load, whatever machine the campaign runs on.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from jinja2 import Environment, PackageLoader, select_autoescape

from .worker_actions import WorkerActions, WorkerError
from .xml_formats import ASSIGNMENT_ID_NOT_AVAILABLE, parse_question

COOKIE = "lp_worker"
SECURE_COOKIE = "__Host-lp_worker"  # under TLS: Secure, host-only, Path=/ (the browser enforces the prefix)
STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                ".png": "image/png", ".svg": "image/svg+xml"}
REWRITES = [
    (re.compile(r"https?://assets\.crowd\.aws/crowd-html-elements\.js"), "/static/crowd-html-elements.js"),
    (re.compile(r"https?://s3\.amazonaws\.com/mturk-public/externalHIT_v1\.js"), "/static/externalHIT_v1.js"),
    (re.compile(r"https?://(www|workersandbox)\.mturk\.com/mturk/externalSubmit"), "/mturk/externalSubmit"),
]
ASSET_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
               ".gif": "image/gif", ".svg": "image/svg+xml", ".json": "application/json", ".css": "text/css"}
_ASSET_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
# HIT content runs in an opaque origin (no allow-same-origin), so it never has the worker's authority;
# it may open popups (sandboxed too) and navigate the top window only on the worker's own click.  The
# same flags go out as a Content-Security-Policy sandbox header with every HIT-content response, so the
# content is sandboxed even when it is opened on its own (see http_server).
SANDBOX = ("allow-scripts allow-forms allow-popups allow-modals "
           "allow-top-navigation-by-user-activation")


@dataclass
class Response:
    status: int
    headers: list = field(default_factory=list)
    body: bytes = b""


def _html(status: int, text: str, extra: list | None = None) -> Response:
    return Response(status, [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store")]
                    + (extra or []), text.encode("utf-8"))


def _json(status: int, data) -> Response:
    return Response(status, [("Content-Type", "application/json"), ("Cache-Control", "no-store")],
                    json.dumps(data).encode("utf-8"))


def _redirect(location: str, extra: list | None = None) -> Response:
    return Response(303, [("Location", location), ("Content-Type", "text/plain")] + (extra or []),
                    f"See {location}\n".encode())


def rewrite_html_content(html: str) -> str:
    for pattern, repl in REWRITES:
        html = pattern.sub(repl, html)
    return html


def task_src(question_kind: str, external_url: str, hit_id: str, assignment_id: str, origin: str,
             worker_id: str | None) -> str:
    params = {"assignmentId": assignment_id, "hitId": hit_id, "turkSubmitTo": origin}
    if worker_id and assignment_id != ASSIGNMENT_ID_NOT_AVAILABLE:
        params["workerId"] = worker_id
    if question_kind == "ExternalQuestion":
        sep = "&" if "?" in external_url else "?"
        return external_url + sep + urlencode(params)
    return f"/task/{quote(hit_id)}?" + urlencode(params)


class WorkerWeb:
    def __init__(self, actions: WorkerActions, assets_dir: "str | os.PathLike | None" = None,
                 scheme: str = "http"):
        self.actions = actions
        self.scheme = scheme  # "https" under TLS: Secure cookies, https origins in task URLs
        self.assets_dir = Path(assets_dir).resolve() if assets_dir is not None else None
        self.env = Environment(loader=PackageLoader("orchestrator.crowd_server", "templates"),
                               autoescape=select_autoescape(["html"]))
        self.env.filters["money"] = lambda v: f"${v}"

    # ------------------------------------------------------------ plumbing

    def render(self, name: str, **ctx) -> str:
        return self.env.get_template(name).render(**ctx)

    def handle(self, method: str, raw_path: str, headers, body: bytes, log: dict) -> Response:
        split = urlsplit(raw_path)
        path, query = split.path, dict(parse_qsl(split.query))
        wants_json = "application/json" in (headers.get("Accept") or "") or query.get("format") == "json"
        origin = f"{self.scheme}://{headers.get('Host') or 'localhost'}"
        try:
            if path.startswith("/static/"):
                return self.static(path[len("/static/"):])
            if path.startswith("/assets/") and method in ("GET", "HEAD"):
                return self.asset(path[len("/assets/"):])
            if path.startswith("/assets/") and method == "POST":
                return self.upload_asset(raw_path, path[len("/assets/"):], headers, body, log)
            if path.startswith("/signin/"):
                return self.signin(path[len("/signin/"):], wants_json)
            if path == "/signout":
                self.actions.sign_out(self._token(headers))
                return _redirect("/", [("Set-Cookie", self._cookie("", 0))])
            if path == "/favicon.ico":
                return Response(204, [], b"")
            if path.startswith("/prolific/"):
                r = self.prolific_route(method, raw_path, path, query, headers, body, wants_json)
                if r is not None:
                    return r
            fields = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True) if method == "POST" else []
            if method == "POST" and path == "/mturk/externalSubmit":
                return self.external_submit(fields, query, headers, wants_json, log)
            credential, bearer = self._credential(headers)
            worker = self.actions.authenticate(credential, bearer=bearer)
            log["worker"] = worker.worker_id
            return self.route(method, path, query, fields, worker, wants_json, origin)
        except WorkerError as exc:
            if wants_json:
                return _json(exc.status, {"error": exc.message, "status": exc.status})
            return self.error_page(exc, headers)

    def error_page(self, exc: "WorkerError", headers) -> Response:
        """An error as a page with the navigation bar (when the worker is signed in)."""
        w = None
        if exc.status != 401:
            credential, bearer = self._credential(headers)
            try:
                w = self.actions.authenticate(credential, bearer=bearer)
            except WorkerError:
                w = None
        titles = {403: "Not available to you yet", 404: "Not found", 409: "Not possible now", 400: "Not possible"}
        ctx = {"w": w} if w is not None else {}
        return _html(exc.status, self.render("message.html", title=titles.get(exc.status, "Not possible"),
                                             message=exc.message, signed_in=w is not None, **ctx))

    @property
    def cookie_name(self) -> str:
        return SECURE_COOKIE if self.scheme == "https" else COOKIE

    def _cookie(self, value: str, max_age: int) -> str:
        secure = "; Secure" if self.scheme == "https" else ""
        return f"{self.cookie_name}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}"

    def _credential(self, headers) -> tuple[str | None, bool]:
        """(credential, is_bearer): a bearer credential (programmatic clients), else the cookie's session id."""
        auth = headers.get("Authorization") or ""
        if auth.startswith("Bearer "):
            return auth[7:].strip(), True
        raw = headers.get("Cookie")
        if not raw:
            return None, False
        c = SimpleCookie()
        try:
            c.load(raw)
        except Exception:
            return None, False
        return (c[self.cookie_name].value if self.cookie_name in c else None), False

    def _token(self, headers) -> str | None:
        return self._credential(headers)[0]

    def static(self, name: str) -> Response:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name.startswith("."):
            return Response(404, [("Content-Type", "text/plain")], b"not found\n")
        try:
            data = resources.files("orchestrator.crowd_server").joinpath("static", name).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            return Response(404, [("Content-Type", "text/plain")], b"not found\n")
        ext = name[name.rfind("."):]
        return Response(200, [("Content-Type", STATIC_TYPES.get(ext, "application/octet-stream")),
                              ("Cache-Control", "max-age=300")], data)

    @property
    def uploads_dir(self) -> Path:
        return Path(self.actions.store.data_dir) / "assets"

    def _asset_path(self, rel: str) -> "Path | None":
        parts = rel.split("/")
        if not all(_ASSET_SEGMENT.fullmatch(p) for p in parts) or len(rel) > 512:
            return None
        for root in (self.uploads_dir, self.assets_dir):
            if root is None:
                continue
            path = root.joinpath(*parts)
            try:
                if path.resolve().is_relative_to(root.resolve()) and path.is_file():
                    return path
            except OSError:
                continue
        return None

    def asset(self, rel: str) -> Response:
        """An uploaded file or a file under the assets directory (public, like an S3 object); 404 otherwise."""
        not_found = Response(404, [("Content-Type", "text/plain"), ("Access-Control-Allow-Origin", "*")],
                             b"not found\n")
        path = self._asset_path(rel)
        if path is None:
            return not_found
        try:
            data = path.read_bytes()
        except OSError:
            return not_found
        ctype = ASSET_TYPES.get(path.suffix.lower(), "application/octet-stream")
        return Response(200, [("Content-Type", ctype), ("Cache-Control", "public, max-age=86400"),
                              ("Access-Control-Allow-Origin", "*")], data)

    def upload_asset(self, raw_path: str, rel: str, headers, body: bytes, log: dict) -> Response:
        """``POST /assets/<name>``: store a requester's file (SigV4-signed with the requester key, like
        the Requester API).  Idempotent: the same bytes again answer 200; other bytes under a taken
        name answer 409 (names are content hashes, so a file never changes)."""
        from . import credentials as cm
        from .api_errors import ApiError
        from .sigv4 import verify

        def answer(status: int, message: str) -> Response:
            return _json(status, {"status": status, "message": message})

        creds = cm.load(Path(self.actions.store.data_dir))
        try:
            verify("POST", raw_path, list(headers.items()), body,
                   lambda akid: creds.secret_access_key if creds and akid == creds.access_key_id else None)
        except ApiError as exc:
            return answer(403, f"not signed with the requester key: {exc.message}")
        parts = rel.split("/")
        if not all(_ASSET_SEGMENT.fullmatch(p) for p in parts) or len(rel) > 512:
            return answer(400, "bad asset name (letters, digits, '_', '.', '-' and '/' between parts)")
        if Path(rel).suffix.lower() not in ASSET_TYPES:
            return answer(400, f"unsupported file type; allowed: {', '.join(sorted(ASSET_TYPES))}")
        if not body:
            return answer(400, "empty file")
        path = self.uploads_dir.joinpath(*parts)
        log["asset"] = rel
        if path.is_file():
            if path.read_bytes() == body:
                return answer(200, "already stored")
            return answer(409, "another file is stored under this name")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
        tmp.write_bytes(body)
        os.replace(tmp, path)
        return answer(201, "stored")

    def signin(self, token: str, wants_json: bool) -> Response:
        w, session_id, seconds = self.actions.sign_in(token)
        cookie = self._cookie(session_id, int(seconds))
        if wants_json:
            r = _json(200, {"workerId": w.worker_id, "name": w.name})
            r.headers.append(("Set-Cookie", cookie))
            return r
        return _redirect("/", [("Set-Cookie", cookie)])

    # ------------------------------------------------------------ routes

    def route(self, method, path, query, fields, w, wants_json, origin) -> Response:
        parts = [p for p in path.split("/") if p]
        if method in ("GET", "HEAD"):
            if not parts:
                return self.dashboard(w, wants_json, query)
            if parts[0] == "groups" and len(parts) == 2:
                return self.preview(w, wants_json, origin, hit_type_id=parts[1])
            if parts[0] == "hits" and len(parts) == 2:
                return self.preview(w, wants_json, origin, hit_id=parts[1])
            if parts[0] == "assignments" and len(parts) == 2:
                return self.work_page(w, parts[1], wants_json, origin)
            if parts[0] == "task" and len(parts) == 2:
                return self.task_content(w, parts[1], query)
            if parts == ["prolific", "next"]:
                return self.prolific.next(w, wants_json)
            if parts == ["work"]:
                data = self.actions.work(w)
                return _json(200, data) if wants_json else _html(200, self.render("work.html", w=w, **data))
            if parts == ["qualifications"]:
                quals = self.actions.qualifications(w)
                return _json(200, {"qualifications": quals}) if wants_json else _html(
                    200, self.render("qualifications.html", w=w, quals=quals))
            if parts[0] == "qualifications" and len(parts) == 3 and parts[2] == "test":
                return self.test_page(w, parts[1], wants_json)
        if method == "POST":
            if parts[0:1] == ["groups"] and len(parts) == 3 and parts[2] == "accept":
                return self.accepted(self.actions.accept(w, hit_type_id=parts[1]), w, wants_json, origin)
            if parts[0:1] == ["hits"] and len(parts) == 3 and parts[2] == "accept":
                return self.accepted(self.actions.accept(w, hit_id=parts[1]), w, wants_json, origin)
            if parts[0:1] == ["assignments"] and len(parts) == 3 and parts[2] == "return":
                self.actions.return_assignment(w, parts[1])
                return _json(200, {"status": "Returned"}) if wants_json else _redirect("/")
            if parts == ["prolific", "finish"]:
                return self.prolific.finish(w, wants_json)
            if parts[0:1] == ["qualifications"] and len(parts) == 3 and parts[2] == "request":
                qt, att = self.actions.start_test(w, parts[1])
                if att is None:
                    return _json(200, {"status": "granted"}) if wants_json else _redirect("/qualifications")
                return self.test_page(w, parts[1], wants_json)
            if parts[0:1] == ["qualifications"] and len(parts) == 3 and parts[2] == "test":
                result = self.actions.submit_test(w, parts[1], fields)
                if wants_json:
                    return _json(200, result)
                groups = [g for g in self.actions.groups(w) if g.can_accept] if result.get("passed") else []
                return _html(200, self.render("test_result.html", w=w, r=result, groups=groups))
        raise WorkerError(404, "There is no such page.")

    def prolific_route(self, method, raw_path, path, query, headers, body, wants_json) -> "Response | None":
        """Prolific's entry and the requester's signed configuration routes (prolific_entry.py);
        None: a signed-in route (``/prolific/next``, ``/prolific/finish``) handled by :meth:`route`."""
        if path == "/prolific/start" and method in ("GET", "HEAD"):
            return self.prolific.start(query, wants_json)
        if path == "/prolific/config" and method == "POST":
            return self.prolific.put_config(raw_path, headers, body)
        if path == "/prolific/participants" and method == "GET":
            return self.prolific.participants(raw_path, headers)
        return None

    @property
    def prolific(self):
        from .prolific_entry import ProlificEntry

        return ProlificEntry(self)

    def dashboard(self, w, wants_json, query) -> Response:
        if not wants_json and w.name.startswith("prolific-"):
            return _redirect("/prolific/next")      # a Prolific participant's next step (prolific_entry.py)
        groups = self.actions.groups(w)
        work = self.actions.work(w)
        if wants_json:
            return _json(200, {"workerId": w.worker_id, "name": w.name,
                               "groups": [g.as_json() for g in groups], "messages": work["messages"]})
        return _html(200, self.render("dashboard.html", w=w, groups=groups, messages=work["messages"][:5],
                                      submitted=query.get("submitted")))

    def _question_payload(self, h, ht, assignment_id: str, w, origin: str) -> dict:
        q = parse_question(h.question)
        return {"hitId": h.hit_id, "hitTypeId": h.hit_type_id, "title": ht.title, "description": ht.description,
                "reward": f"{ht.reward_cents // 100}.{ht.reward_cents % 100:02d}", "questionKind": q.kind,
                "question": h.question, "assignmentId": assignment_id,
                "taskUrl": task_src(q.kind, q.external_url, h.hit_id, assignment_id, origin, w.worker_id),
                "frameHeight": q.frame_height}

    def preview(self, w, wants_json, origin, hit_type_id=None, hit_id=None) -> Response:
        h, ht = self.actions.preview(w, hit_type_id=hit_type_id, hit_id=hit_id)
        payload = self._question_payload(h, ht, ASSIGNMENT_ID_NOT_AVAILABLE, w, origin)
        if wants_json:
            return _json(200, payload)
        return _html(200, self.render("task.html", w=w, mode="preview", p=payload, sandbox=SANDBOX,
                                      duration=ht.assignment_duration))

    def accepted(self, a, w, wants_json, origin) -> Response:
        if not wants_json:
            return _redirect(f"/assignments/{a.assignment_id}")
        a2, h, ht = self.actions.assignment(w, a.assignment_id)
        payload = self._question_payload(h, ht, a.assignment_id, w, origin)
        payload["deadline"] = a.deadline
        payload["submitUrl"] = f"{origin}/mturk/externalSubmit"
        return _json(200, payload)

    def work_page(self, w, assignment_id, wants_json, origin) -> Response:
        a, h, ht = self.actions.assignment(w, assignment_id)
        payload = self._question_payload(h, ht, a.assignment_id, w, origin)
        payload.update(status=a.status, deadline=a.deadline)
        if wants_json:
            return _json(200, payload)
        if a.status != "Accepted":
            return _html(200, self.render("message.html", title=ht.title, signed_in=True,
                                          message=f"This assignment is {a.status}.", back="/work"))
        return _html(200, self.render("task.html", w=w, mode="work", p=payload, sandbox=SANDBOX,
                                      deadline=a.deadline, duration=ht.assignment_duration))

    def task_content(self, w, hit_id, query) -> Response:
        assignment_id = query.get("assignmentId", ASSIGNMENT_ID_NOT_AVAILABLE)
        if assignment_id != ASSIGNMENT_ID_NOT_AVAILABLE:
            a, h, ht = self.actions.assignment(w, assignment_id)
            if a.hit_id != hit_id:
                raise WorkerError(404, "This assignment belongs to another HIT.")
        else:
            h, ht = self.actions.preview(w, hit_id=hit_id)
        q = parse_question(h.question)
        if q.kind == "HTMLQuestion":
            return _html(200, rewrite_html_content(q.html))
        if q.kind == "QuestionForm":
            return _html(200, self.render("questionform.html", form=q.form, assignment_id=assignment_id,
                                          preview=assignment_id == ASSIGNMENT_ID_NOT_AVAILABLE,
                                          action=query.get("turkSubmitTo", "") + "/mturk/externalSubmit"))
        raise WorkerError(404, "ExternalQuestion content is served by its own site.")

    def external_submit(self, fields, query, headers, wants_json, log) -> Response:
        assignment_id = dict(fields).get("assignmentId") or query.get("assignmentId") or ""
        if not assignment_id or assignment_id == ASSIGNMENT_ID_NOT_AVAILABLE:
            raise WorkerError(400, "You must ACCEPT the HIT before you can submit the results.")
        credential, bearer = self._credential(headers)
        w = self.actions.authenticate(credential, bearer=bearer) if credential else None
        a = self.actions.submit(assignment_id, fields, w)
        log["worker"] = a.worker_id
        if wants_json:
            return _json(200, {"status": "Submitted", "assignmentId": a.assignment_id, "hitId": a.hit_id})
        return _html(200, self.render("submitted.html", assignment_id=a.assignment_id))

    def test_page(self, w, qtid, wants_json) -> Response:
        qt, att = self.actions.start_test(w, qtid)
        if att is None:
            return _json(200, {"status": "granted"}) if wants_json else _redirect("/qualifications")
        if wants_json:
            return _json(200, {"qualificationTypeId": qtid, "name": qt.name, "test": qt.test,
                               "started": att.started, "durationSeconds": qt.test_duration})
        form = self.actions.test_form(qt)
        return _html(200, self.render("test.html", w=w, qt=qt, form=form, started=att.started))
