"""Prolific's researcher API over plain HTTP (urllib), and Prolific's fee rules.

Names as documented at docs.prolific.com (API v1): ``Authorization: Token <token>``;
``POST /studies/``, ``GET /studies/``, ``GET|PATCH /studies/{id}/``,
``POST /studies/{id}/transition/`` (``PUBLISH``, ``PAUSE``, ``START``, ``STOP``),
``POST /studies/{id}/test-study``; ``GET /submissions/?study=``, ``GET /submissions/{id}/``,
``POST /submissions/{id}/transition/`` (``APPROVE``, ``REJECT`` with ``message`` of at least
100 characters and ``rejection_category``); ``POST /submissions/bonus-payments/`` (``study_id``,
``csv_bonuses`` = ``participant_id,amount`` lines, amounts in the study's currency) then
``POST /bulk-bonus-payments/{id}/pay/`` -- that pay call is **not** idempotent, so it is never
retried automatically here (:meth:`ProlificClient.request` with ``retry=False``).

Errors: connection failures and 5xx are retried with exponential backoff, then raised as
:class:`~orchestrator.crowd.backends.base.PlatformUnavailable`; 4xx become
:class:`~orchestrator.crowd.backends.base.BackendError` (404 ``not_found``, 409 and the
"already" refusals ``invalid_state``, 401/403 and the rest ``request``).
"""
from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from orchestrator.crowd.backends.base import INVALID_STATE, NOT_FOUND, REQUEST, BackendError, PlatformUnavailable
from orchestrator.crowd.ledger import FeeRules
from orchestrator.errors import LabelpropError

__all__ = ["ProlificClient", "ProlificFees", "PROLIFIC_ACADEMIC", "PROLIFIC_COMPANY", "prolific_fees",
           "DEFAULT_API_URL", "TOKEN_ENV"]

DEFAULT_API_URL = "https://api.prolific.com/api/v1"
TOKEN_ENV = "PROLIFIC_TOKEN"


@dataclass(frozen=True)
class ProlificFees(FeeRules):
    """Prolific's service fee: a share of every reward and bonus (33.3% for academic accounts,
    42.8% for companies; VAT where it applies is not modelled), in per mille so 33.3% is exact;
    no per-assignment minimum.  ``min_hourly_cents``: the minimum pay per hour Prolific enforces
    on a study's reward for its estimated completion time."""

    name: str = "prolific"
    percent: int = 0
    large_hit_percent: int = 0
    masters_percent: int = 0
    min_fee_cents: int = 0
    permille: int = 333
    min_hourly_cents: int = 800

    def _fee(self, amount_cents: int) -> int:
        return (int(amount_cents) * self.permille * 2 + 1000) // 2000     # half-up, integer arithmetic

    def fee_cents(self, reward_cents: int, assignments: int = 1, masters: bool = False) -> int:
        return self._fee(reward_cents)

    def bonus_cost_cents(self, bonus_cents: int) -> int:
        return int(bonus_cents) + self._fee(bonus_cents)

    def place_cost_cents(self, reward_cents: int) -> int:
        """What one approved place costs: the reward and its fee."""
        return int(reward_cents) + self._fee(reward_cents)


PROLIFIC_ACADEMIC = ProlificFees(name="prolific-academic", permille=333)
PROLIFIC_COMPANY = ProlificFees(name="prolific-company", permille=428)


def prolific_fees(account: str = "academic", min_hourly_usd: float = 8.0, permille: int = 0) -> ProlificFees:
    base = PROLIFIC_COMPANY if account == "company" else PROLIFIC_ACADEMIC
    return ProlificFees(name=base.name, permille=permille or base.permille,
                        min_hourly_cents=int(round(min_hourly_usd * 100)))


class ProlificClient:
    """A small JSON client; ``base_url`` ends with ``/api/v1`` (a local fake in tests)."""

    def __init__(self, token: str | None = None, base_url: str = DEFAULT_API_URL, *, retries: int = 4,
                 backoff: float = 0.5, timeout: float = 30.0):
        token = token if token is not None else os.environ.get(TOKEN_ENV, "")
        if not token:
            raise LabelpropError(f"the prolific backend needs an API token in the environment: "
                                 f"export {TOKEN_ENV}=... (Prolific: Settings > API tokens)")
        self.token, self.base = token, base_url.rstrip("/")
        self.retries, self.backoff, self.timeout = retries, backoff, timeout

    def request(self, method: str, path: str, body: dict | None = None, *, retry: bool = True) -> dict:
        url = self.base + path
        data = json.dumps(body).encode() if body is not None else None
        op = f"{method} {path.split('?')[0]}"
        tries = self.retries + 1 if retry else 1
        for i in range(tries):
            req = urllib.request.Request(url, data=data, method=method,
                                         headers={"Authorization": f"Token {self.token}",
                                                  "Accept": "application/json",
                                                  **({"Content-Type": "application/json"} if data else {})})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as r:
                    raw = r.read()
                    return json.loads(raw) if raw.strip() else {}
            except urllib.error.HTTPError as exc:
                text = exc.read().decode("utf-8", "replace")[:500]
                if exc.code >= 500:
                    err: Exception = PlatformUnavailable(f"Prolific {op}: HTTP {exc.code}: {text}")
                else:
                    code = NOT_FOUND if exc.code == 404 else INVALID_STATE if exc.code == 409 else REQUEST
                    raise BackendError(f"Prolific {op}", code, f"HTTP {exc.code}: {text}",
                                       platform_code=str(exc.code)) from None
            except (OSError, ValueError) as exc:
                err = PlatformUnavailable(f"Prolific {op}: cannot reach {self.base}: {exc}")
            if i + 1 < tries:
                time.sleep(self.backoff * (2 ** i))
        raise err

    # the documented operations
    def create_study(self, study: dict) -> dict:
        return self.request("POST", "/studies/", study)

    def list_studies(self) -> list[dict]:
        return self.request("GET", "/studies/").get("results", [])

    def get_study(self, study_id: str) -> dict:
        return self.request("GET", f"/studies/{study_id}/")

    def update_study(self, study_id: str, fields: dict) -> dict:
        return self.request("PATCH", f"/studies/{study_id}/", fields)

    def transition_study(self, study_id: str, action: str) -> dict:
        return self.request("POST", f"/studies/{study_id}/transition/", {"action": action})

    def test_study(self, study_id: str) -> dict:
        return self.request("POST", f"/studies/{study_id}/test-study", {})

    def list_submissions(self, study_id: str) -> list[dict]:
        return self.request("GET", f"/submissions/?study={study_id}").get("results", [])

    def get_submission(self, submission_id: str) -> dict:
        return self.request("GET", f"/submissions/{submission_id}/")

    def transition_submission(self, submission_id: str, action: str, message: str = "",
                              category: str = "") -> dict:
        body = {"action": action}
        if action == "REJECT":
            body.update(message=message, rejection_category=category)
        return self.request("POST", f"/submissions/{submission_id}/transition/", body)

    def create_bonus(self, study_id: str, participant_id: str, amount_cents: int) -> dict:
        csv = f"{participant_id},{amount_cents // 100}.{amount_cents % 100:02d}"
        return self.request("POST", "/submissions/bonus-payments/", {"study_id": study_id, "csv_bonuses": csv})

    def pay_bonus(self, bulk_id: str) -> dict:
        return self.request("POST", f"/bulk-bonus-payments/{bulk_id}/pay/", {}, retry=False)


def place_estimate(cfg, hits: int, seconds_per_question: float) -> dict:
    """What ``hits`` HITs cost on Prolific (pure): places of ``hits_per_place`` HITs, each paying its
    reward plus the fee (no extra HITs assumed), and the pay per hour a participant gets, checked
    against ``min_hourly_usd``."""
    cc, pc = cfg.crowd, cfg.crowd.prolific
    fees = prolific_fees(pc.account, pc.min_hourly_usd, pc.fee_permille)
    reward = int(round(cc.reward_usd * 100)) * pc.hits_per_place
    places = -(-int(hits) // pc.hits_per_place) if hits else 0
    per_place_seconds = pc.hits_per_place * (cc.questions_per_hit + cc.gold_per_hit) * seconds_per_question
    hourly = reward * 3600 / per_place_seconds / 100 if per_place_seconds > 0 else None
    return {"places": places, "place_reward_usd": reward / 100, "fee": fees.name,
            "fee_percent": fees.permille / 10, "cost_cents": places * fees.place_cost_cents(reward),
            "expected_hourly_usd": round(hourly, 2) if hourly is not None else None,
            "estimated_minutes_per_place": round(per_place_seconds / 60, 1),
            "min_hourly_usd": pc.min_hourly_usd,
            "meets_min_hourly": hourly is None or hourly >= pc.min_hourly_usd}
