"""The boto3 ``mturk`` client of a campaign, and calls with MTurk's error handling.

Endpoint, in order: ``--endpoint-url``; ``[crowd] endpoint_url``; the
``AWS_ENDPOINT_URL_MTURK`` environment variable (boto3's own service-specific endpoint
variable, which ``labelprop crowd-server`` credentials files set); the MTurk sandbox
(``--sandbox`` or ``[crowd] sandbox = true``); production.  Credentials come from the
standard AWS chain (environment, ``AWS_PROFILE`` / ``--profile``, shared credentials and
config files, instance roles); nothing here reads or stores keys.

Reliability:

* throttling (``ThrottlingException`` "Rate exceeded", e.g. bursts of 100+ CreateHIT
  calls) and transport errors are retried by botocore itself with the ``adaptive`` retry
  mode, which also rate-limits the client after throttling;
* ``ServiceFault`` (MTurk's "try again later") is retried by :func:`call` with
  exponential backoff and jitter;
* a platform that cannot be reached (after botocore's retries) raises
  :class:`~orchestrator.crowd.backends.base.PlatformUnavailable`, which ``labelprop run``
  waits out with backoff;
* ``RequestError`` is never retried: it is raised as :class:`TurkError` carrying its
  ``TurkErrorCode`` so callers decide by code (e.g. ``AWS.MechanicalTurk.HitAlreadyExists``
  after a crash: the message names the HIT that the same UniqueRequestToken created).
"""
from __future__ import annotations

import os
import random
import re
import time

from orchestrator.crowd.backends.base import PlatformUnavailable
from orchestrator.errors import LabelpropError

__all__ = ["PRODUCTION_URL", "SANDBOX_URL", "make_client", "resolve_endpoint", "call",
           "TurkError", "paginate", "existing_hit_id", "MASTERS_PRODUCTION", "MASTERS_SANDBOX",
           "PERCENT_APPROVED", "NUMBER_APPROVED", "LOCALE"]

PRODUCTION_URL = "https://mturk-requester.us-east-1.amazonaws.com"
SANDBOX_URL = "https://mturk-requester-sandbox.us-east-1.amazonaws.com"
PERCENT_APPROVED = "000000000000000000L0"
NUMBER_APPROVED = "00000000000000000040"
LOCALE = "00000000000000000071"
MASTERS_PRODUCTION = "2F1QJWKUDD8XADTFD2Q0G6UTO95ALH"
MASTERS_SANDBOX = "2ARFPLSP75KLA8M8DH1HTEQVJT3SY6"

HIT_ALREADY_EXISTS = "AWS.MechanicalTurk.HitAlreadyExists"
_HIT_ID_IN_MESSAGE = re.compile(r'"([A-Z0-9]{10,})"')


class TurkError(Exception):
    """A RequestError (or an exhausted ServiceFault) from the Requester API."""

    def __init__(self, operation: str, kind: str, turk_code: str, message: str):
        super().__init__(f"{operation}: {kind} {turk_code or ''}: {message}".replace("  ", " "))
        self.operation, self.kind, self.turk_code, self.message = operation, kind, turk_code or "", message


def resolve_endpoint(crowd_cfg, endpoint_url: str | None = None, sandbox: bool | None = None) -> str:
    if endpoint_url:
        return endpoint_url
    if crowd_cfg.endpoint_url:
        return crowd_cfg.endpoint_url
    env = os.environ.get("AWS_ENDPOINT_URL_MTURK")
    if env:
        return env
    if crowd_cfg.backend == "server":
        raise LabelpropError("crowd backend 'server' needs the crowd server's URL: set [crowd] "
                             "endpoint_url, pass --endpoint-url, or export AWS_ENDPOINT_URL_MTURK")
    use_sandbox = crowd_cfg.sandbox if sandbox is None else sandbox
    return SANDBOX_URL if use_sandbox else PRODUCTION_URL


def make_client(crowd_cfg, *, endpoint_url: str | None = None, sandbox: bool | None = None,
                profile: str | None = None, max_attempts: int = 8, read_timeout: float = 60.0):
    """A boto3 ``mturk`` client for a campaign's ``[crowd]`` section (see the module docstring)."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ProfileNotFound

    endpoint = resolve_endpoint(crowd_cfg, endpoint_url, sandbox)
    cfg = Config(retries={"mode": "adaptive", "max_attempts": max_attempts}, connect_timeout=10,
                 read_timeout=read_timeout, max_pool_connections=max(10, 2 * crowd_cfg.concurrency))
    try:
        session = boto3.Session(profile_name=profile) if profile else boto3.Session()
    except ProfileNotFound:
        raise LabelpropError(f"--profile: AWS profile {profile!r} not found in the shared "
                             f"credentials/config files") from None
    client = session.client("mturk", region_name="us-east-1", endpoint_url=endpoint, config=cfg)
    if session.get_credentials() is None:
        raise LabelpropError("no AWS credentials found (environment, AWS_PROFILE/--profile, "
                             "~/.aws/credentials); for the bundled crowd server use the "
                             "credentials file in its data directory")
    return client


def call(client, operation: str, /, *, fault_retries: int = 5, base_delay: float = 0.5,
         **params) -> dict:
    """``client.<operation>(**params)``: ServiceFault retried with backoff, RequestError raised
    as :class:`TurkError`; network failures after botocore's retries become LabelpropError."""
    from botocore.exceptions import BotoCoreError, ClientError

    fn = getattr(client, _snake(operation))
    for attempt in range(fault_retries + 1):
        try:
            return fn(**params)
        except ClientError as exc:
            resp = exc.response or {}
            err = resp.get("Error", {})
            kind = err.get("Code", "")
            turk = resp.get("TurkErrorCode") or err.get("TurkErrorCode") or ""
            msg = err.get("Message") or resp.get("Message") or str(exc)
            if kind == "ServiceFault" and attempt < fault_retries:
                time.sleep(base_delay * (2 ** attempt) * (0.5 + random.random()))
                continue
            raise TurkError(operation, kind, turk, msg) from None
        except BotoCoreError as exc:
            raise PlatformUnavailable(f"{operation}: cannot reach the crowd platform at "
                                      f"{client.meta.endpoint_url}: {exc}") from None
    raise AssertionError("unreachable")


def paginate(client, operation: str, key: str, **params):
    """Every item of a paged list operation (boto3 paginators, NextToken paging)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        for page in client.get_paginator(_snake(operation)).paginate(
                **params, PaginationConfig={"PageSize": 100}):
            yield from page.get(key, [])
    except ClientError as exc:
        err = (exc.response or {}).get("Error", {})
        raise TurkError(operation, err.get("Code", ""), (exc.response or {}).get("TurkErrorCode", ""),
                        err.get("Message", str(exc))) from None
    except BotoCoreError as exc:
        raise PlatformUnavailable(f"{operation}: cannot reach the crowd platform at "
                                  f"{client.meta.endpoint_url}: {exc}") from None


def existing_hit_id(err: TurkError) -> str | None:
    """The HITId named by a HitAlreadyExists error (the HIT an earlier try created)."""
    if err.turk_code != HIT_ALREADY_EXISTS:
        return None
    m = _HIT_ID_IN_MESSAGE.search(err.message)
    return m.group(1) if m else None


def _snake(op: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", op).lower().replace("h_i_t", "hit")


def _check_snake() -> None:  # pragma: no cover - documentation of the mapping
    assert _snake("CreateHITWithHITType") == "create_hit_with_hit_type"
    assert _snake("ListReviewableHITs") == "list_reviewable_hits"


