"""A local fake of Prolific's documented researcher API (the real service is unreachable from here).

A real HTTP server on 127.0.0.1 (``ThreadingHTTPServer``) enforcing the documented contract:
``Authorization: Token <token>`` on every call (401 otherwise); study creation validates the
request shape (name, internal_name, description, an ``external_study_url`` carrying the
``{{%PROLIFIC_PID%}}``, ``{{%STUDY_ID%}}`` and ``{{%SESSION_ID%}}`` placeholders, completion
codes with known ``code_type`` and actions, integer reward in cents, places, estimated time,
the minimum hourly pay); study transitions; submissions listed by study; submission transitions
are idempotent (the same action again answers the same object) and a rejection needs a message
of at least 100 characters and a known ``rejection_category``; bonuses are set up with
``csv_bonuses`` then paid -- and **paying the same bulk bonus twice pays twice**, as the docs
warn, so a client bug shows in the ledger.  Every call is recorded (``calls``) and every charge
goes to ``ledger`` (rewards of approved submissions and bonuses, each with its fee).

The participant side (what app.prolific.com does for a participant) is :meth:`FakeProlific.take_place`
(a place is taken: a submission ACTIVE, the study URL with the placeholders filled in),
:meth:`complete` (the participant lands on ``/submissions/complete?cc=CODE``) and
:meth:`return_place`.  ``fail_next`` makes the next calls answer 503 (retries), and
``drop_after_pay`` makes pay calls take effect and then drop the connection without an answer
(a client killed or cut off between the call and its answer).
"""
from __future__ import annotations

import json
import re
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

CODE_TYPES = {"COMPLETED", "FAILED_ATTENTION_CHECK", "FOLLOW_UP_STUDY", "GIVE_BONUS", "INCOMPATIBLE_DEVICE",
              "NO_CONSENT", "OTHER", "FIXED_SCREEN_OUT"}
CODE_ACTIONS = {"AUTOMATICALLY_APPROVE", "MANUALLY_REVIEW", "REQUEST_RETURN", "ADD_TO_PARTICIPANT_GROUP",
                "REMOVE_FROM_PARTICIPANT_GROUP", "DYNAMIC_PAYMENT"}
REJECTION_CATEGORIES = {"TOO_QUICKLY", "TOO_SLOWLY", "FAILED_INSTRUCTIONS", "INCOMP_LONGITUDINAL", "FAILED_CHECK",
                        "LOW_EFFORT", "MALINGERING", "NO_CODE", "BAD_CODE", "NO_DATA", "UNSUPP_DEVICE", "OTHER"}
STUDY_ACTIONS = {"PUBLISH": ("UNPUBLISHED",), "PAUSE": ("ACTIVE",), "START": ("PAUSED",),
                 "STOP": ("ACTIVE", "PAUSED")}


def _id() -> str:
    return secrets.token_hex(12)


class Refusal(Exception):
    def __init__(self, status: int, detail):
        super().__init__(str(detail))
        self.status, self.detail = status, detail


class FakeProlific:
    def __init__(self, token: str = "test-token", fee_permille: int = 333, min_hourly_cents: int = 800):
        self.token, self.fee_permille, self.min_hourly = token, fee_permille, min_hourly_cents
        self.lock = threading.RLock()
        self.studies: dict[str, dict] = {}
        self.submissions: dict[str, dict] = {}
        self.bulk: dict[str, dict] = {}
        self.calls: list[tuple[str, str, int]] = []
        self.ledger: list[dict] = []
        self.fail_next = 0
        self.drop_after_pay = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> "FakeProlific":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def fee(self, cents: int) -> int:
        return (cents * self.fee_permille * 2 + 1000) // 2000

    @property
    def charged_cents(self) -> int:
        with self.lock:
            return sum(x["amount"] + x["fee"] for x in self.ledger)

    # ------------------------------------------------------------ the participant's side
    def take_place(self, study_id: str, participant_id: str) -> tuple[str, str] | None:
        """A participant starts the study: (submission id, the study URL filled in), or None when no
        place is free or the study is not active."""
        with self.lock:
            st = self.studies[study_id]
            held = [x for x in self.submissions.values() if x["study_id"] == study_id
                    and x["status"] not in ("RETURNED", "TIMED-OUT")]
            if st["status"] != "ACTIVE" or len(held) >= st["total_available_places"]:
                return None
            if any(x["participant_id"] == participant_id for x in held):
                return None                                   # one place per participant
            sid = _id()
            self.submissions[sid] = {"id": sid, "study_id": study_id, "participant_id": participant_id,
                                     "status": "ACTIVE", "entered_code": "", "started_at": "", "reward": 0,
                                     "bonus_payments": [], "transitions": []}
            url = (st["external_study_url"].replace("{{%PROLIFIC_PID%}}", participant_id)
                   .replace("{{%STUDY_ID%}}", study_id).replace("{{%SESSION_ID%}}", sid))
            return sid, url

    def complete(self, submission_id: str, completion_url: str) -> str:
        """The participant lands on the completion URL: the code is entered; returns its code type."""
        parts = urlsplit(completion_url)
        assert parts.netloc == "app.prolific.com" and parts.path == "/submissions/complete", completion_url
        code = parse_qs(parts.query)["cc"][0]
        with self.lock:
            sub = self.submissions[submission_id]
            assert sub["status"] == "ACTIVE", sub
            st = self.studies[sub["study_id"]]
            kinds = {c["code"]: c["code_type"] for c in st["completion_codes"]}
            sub["entered_code"], sub["status"] = code, "AWAITING REVIEW"
            return kinds.get(code, "UNKNOWN")

    def return_place(self, submission_id: str) -> None:
        with self.lock:
            self.submissions[submission_id]["status"] = "RETURNED"

    # ------------------------------------------------------------ the API
    def _auth(self, headers) -> None:
        if headers.get("Authorization") != f"Token {self.token}":
            raise Refusal(401, {"error": "Authentication credentials were not provided or are invalid."})

    def handle(self, method: str, path: str, query: dict, body: dict, handler) -> dict:
        m = re.fullmatch(r"/api/v1(/.*)", path)
        if not m:
            raise Refusal(404, {"error": "not found"})
        p = m.group(1)
        if method == "POST" and p == "/studies/":
            return self._create_study(body)
        if method == "GET" and p == "/studies/":
            return {"results": [dict(s) for s in self.studies.values()]}
        if (mm := re.fullmatch(r"/studies/(\w+)/", p)) and method in ("GET", "PATCH"):
            st = self._study(mm.group(1))
            if method == "PATCH":
                n = body.get("total_available_places")
                if set(body) != {"total_available_places"} or not isinstance(n, int) or \
                        n < st["total_available_places"]:
                    raise Refusal(400, {"total_available_places": "may only be increased (an integer)"})
                st["total_available_places"] = n
            return dict(st)
        if (mm := re.fullmatch(r"/studies/(\w+)/transition/", p)) and method == "POST":
            st = self._study(mm.group(1))
            action = body.get("action")
            if action not in STUDY_ACTIONS:
                raise Refusal(400, {"action": f"must be one of {sorted(STUDY_ACTIONS)}"})
            target = {"PUBLISH": "ACTIVE", "PAUSE": "PAUSED", "START": "ACTIVE", "STOP": "COMPLETED"}[action]
            if st["status"] not in STUDY_ACTIONS[action] and st["status"] != target:
                raise Refusal(400, {"error": f"cannot {action} a study that is {st['status']}"})
            st["status"] = target
            return dict(st)
        if (mm := re.fullmatch(r"/studies/(\w+)/test-study", p)) and method == "POST":
            self._study(mm.group(1))
            return {"status": "test study started (no credits spent)"}
        if method == "GET" and p == "/submissions/":
            study = (query.get("study") or [""])[0]
            if not study:
                raise Refusal(400, {"study": "required"})
            self._study(study)
            return {"results": [self._public(x) for x in self.submissions.values() if x["study_id"] == study]}
        if (mm := re.fullmatch(r"/submissions/(\w+)/", p)) and method == "GET":
            return self._public(self._sub(mm.group(1)), detail=True)
        if (mm := re.fullmatch(r"/submissions/(\w+)/transition/", p)) and method == "POST":
            return self._transition(self._sub(mm.group(1)), body)
        if method == "POST" and p == "/submissions/bonus-payments/":
            return self._bonus(body)
        if (mm := re.fullmatch(r"/bulk-bonus-payments/(\w+)/pay/", p)) and method == "POST":
            b = self.bulk.get(mm.group(1))
            if b is None:
                raise Refusal(404, {"error": "no such bulk bonus payment"})
            # NOT idempotent: every call pays (as Prolific documents)
            for pid, amount in b["rows"]:
                sub = next(x for x in self.submissions.values()
                           if x["study_id"] == b["study"] and x["participant_id"] == pid)
                sub["bonus_payments"].append(amount)
                self.ledger.append({"kind": "bonus", "ref": sub["id"], "amount": amount, "fee": self.fee(amount)})
            if self.drop_after_pay:
                self.drop_after_pay -= 1
                handler.close_connection = True
                raise ConnectionAbortedError
            return {"status": "paid"}
        raise Refusal(404, {"error": f"no route {method} {p}"})

    def _study(self, sid: str) -> dict:
        if sid not in self.studies:
            raise Refusal(404, {"error": "study not found"})
        return self.studies[sid]

    def _sub(self, sid: str) -> dict:
        if sid not in self.submissions:
            raise Refusal(404, {"error": "submission not found"})
        return self.submissions[sid]

    @staticmethod
    def _public(x: dict, detail: bool = False) -> dict:
        out = {k: x[k] for k in ("id", "study_id", "participant_id", "status", "entered_code", "started_at")}
        if detail:
            out["bonus_payments"] = list(x["bonus_payments"])
        return out

    def _create_study(self, b: dict) -> dict:
        errors = {}
        for k in ("name", "internal_name", "description", "external_study_url"):
            if not isinstance(b.get(k), str) or not b.get(k):
                errors[k] = "required string"
        url = b.get("external_study_url") or ""
        for ph in ("{{%PROLIFIC_PID%}}", "{{%STUDY_ID%}}", "{{%SESSION_ID%}}"):
            if ph not in url:
                errors["external_study_url"] = f"must carry {ph} (prolific_id_option url_parameters)"
        if not url.startswith(("https://", "http://127.0.0.1", "http://localhost")):
            errors["external_study_url"] = "must be https"
        if b.get("prolific_id_option") != "url_parameters":
            errors["prolific_id_option"] = "url_parameters expected with URL placeholders"
        codes = b.get("completion_codes")
        if not isinstance(codes, list) or not codes:
            errors["completion_codes"] = "a non-empty list"
        else:
            for c in codes:
                if not (isinstance(c, dict) and isinstance(c.get("code"), str) and c.get("code_type") in CODE_TYPES
                        and isinstance(c.get("actions"), list)
                        and all(a.get("action") in CODE_ACTIONS for a in c["actions"])):
                    errors["completion_codes"] = f"bad entry {c!r}"
            if len({c.get("code") for c in codes}) != len(codes):
                errors["completion_codes"] = "codes must differ"
        for k in ("reward", "total_available_places", "estimated_completion_time"):
            if not isinstance(b.get(k), int) or isinstance(b.get(k), bool) or b[k] < 1:
                errors[k] = "a positive integer"
        if not errors and b["reward"] * 60 < self.min_hourly * b["estimated_completion_time"]:
            errors["reward"] = "below the minimum reward per hour"
        if errors:
            raise Refusal(400, errors)
        sid = _id()
        st = {**b, "id": sid, "status": "UNPUBLISHED"}
        self.studies[sid] = st
        return dict(st)

    def _transition(self, sub: dict, b: dict) -> dict:
        action = b.get("action")
        if action not in ("APPROVE", "REJECT"):
            raise Refusal(400, {"action": "APPROVE or REJECT"})
        target = "APPROVED" if action == "APPROVE" else "REJECTED"
        if action == "REJECT":
            if len(b.get("message") or "") < 100:
                raise Refusal(400, {"message": "a rejection needs a message of at least 100 characters"})
            if b.get("rejection_category") not in REJECTION_CATEGORIES:
                raise Refusal(400, {"rejection_category": f"one of {sorted(REJECTION_CATEGORIES)}"})
        if sub["status"] == target:
            return self._public(sub)                        # idempotent
        if sub["status"] != "AWAITING REVIEW":
            raise Refusal(400, {"error": f"cannot {action} a submission that is {sub['status']}"})
        sub["status"] = target
        sub["transitions"].append(action)
        if action == "APPROVE":
            reward = self.studies[sub["study_id"]]["reward"]
            sub["reward"] = reward
            self.ledger.append({"kind": "reward", "ref": sub["id"], "amount": reward, "fee": self.fee(reward)})
        return self._public(sub)

    def _bonus(self, b: dict) -> dict:
        study = b.get("study_id")
        if study not in self.studies:
            raise Refusal(400, {"study_id": "unknown study"})
        rows = []
        for line in (b.get("csv_bonuses") or "").strip().splitlines():
            m = re.fullmatch(r"(\w+),(\d+)\.(\d\d)", line.strip())
            if not m:
                raise Refusal(400, {"csv_bonuses": f"bad line {line!r} (participant_id,amount with 2 decimals)"})
            pid, amount = m.group(1), int(m.group(2)) * 100 + int(m.group(3))
            if not any(x["study_id"] == study and x["participant_id"] == pid for x in self.submissions.values()):
                raise Refusal(400, {"csv_bonuses": f"{pid} took no part in this study"})
            rows.append((pid, amount))
        if not rows:
            raise Refusal(400, {"csv_bonuses": "empty"})
        bid = _id()
        amount = sum(a for _, a in rows)
        self.bulk[bid] = {"id": bid, "study": study, "rows": rows}
        return {"id": bid, "study": study, "amount": amount, "fees": self.fee(amount), "vat": 0,
                "total_amount": amount + self.fee(amount)}

    def _handler(self):
        fake = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _do(self, method):
                parts = urlsplit(self.path)
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                status = 200
                try:
                    with fake.lock:
                        if fake.fail_next > 0:
                            fake.fail_next -= 1
                            raise Refusal(503, {"error": "service unavailable"})
                        fake._auth(self.headers)
                        try:
                            body = json.loads(raw) if raw else {}
                        except ValueError:
                            raise Refusal(400, {"error": "body is not JSON"}) from None
                        if method in ("POST", "PATCH") and raw and \
                                self.headers.get("Content-Type") != "application/json":
                            raise Refusal(415, {"error": "Content-Type must be application/json"})
                        out = fake.handle(method, parts.path, parse_qs(parts.query), body, self)
                except ConnectionAbortedError:
                    fake.calls.append((method, parts.path, -1))
                    return
                except Refusal as r:
                    status, out = r.status, r.detail
                fake.calls.append((method, parts.path, status))
                data = json.dumps(out).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._do("GET")

            def do_POST(self):
                self._do("POST")

            def do_PATCH(self):
                self._do("PATCH")

        return H
