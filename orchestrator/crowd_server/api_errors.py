"""Errors of the Requester API, in the wire shapes AWS uses.

MTurk's modeled errors are ``RequestError`` (client's fault, HTTP 400) and
``ServiceFault`` (server's fault, HTTP 500); both carry ``Message`` and
``TurkErrorCode``.  botocore's JSON parser takes the error code from ``__type``
(the part after ``#``), so ``{"__type": "RequestError", ...}`` surfaces as
``client.exceptions.RequestError`` with ``e.response["TurkErrorCode"]``.

Authentication failures use the AWS coral shapes (``__type`` ending in
``MissingAuthenticationTokenException``, ``IncompleteSignatureException``,
``InvalidSignatureException``, ``UnrecognizedClientException``) with a lower-case
``message`` key, which botocore surfaces as ``ClientError`` with that code.
"""
from __future__ import annotations

import json
import time

# TurkErrorCodes used by this server (the names MTurk uses where known).
HIT_ALREADY_EXISTS = "AWS.MechanicalTurk.HitAlreadyExists"
HIT_DOES_NOT_EXIST = "AWS.MechanicalTurk.HITDoesNotExist"
HIT_TYPE_DOES_NOT_EXIST = "AWS.MechanicalTurk.HITTypeDoesNotExist"
ASSIGNMENT_DOES_NOT_EXIST = "AWS.MechanicalTurk.AssignmentDoesNotExist"
INVALID_ASSIGNMENT_STATE = "AWS.MechanicalTurk.InvalidAssignmentState"
INVALID_HIT_STATE = "AWS.MechanicalTurk.InvalidHITState"
INSUFFICIENT_FUNDS = "AWS.MechanicalTurk.InsufficientFunds"
INVALID_MAX_ASSIGNMENTS_INCREASE = "AWS.MechanicalTurk.InvalidMaximumAssignmentsIncrease"
EXTEND_ALREADY_DONE = "AWS.MechanicalTurk.ExtendHITAlreadyExists"
QUAL_TYPE_DOES_NOT_EXIST = "AWS.MechanicalTurk.QualificationTypeDoesNotExist"
QUAL_TYPE_ALREADY_EXISTS = "AWS.MechanicalTurk.QualificationTypeAlreadyExists"
QUAL_DOES_NOT_EXIST = "AWS.MechanicalTurk.QualificationDoesNotExist"
WORKER_DOES_NOT_EXIST = "AWS.MechanicalTurk.WorkerDoesNotExist"
INVALID_EXPIRATION = "AWS.MechanicalTurk.InvalidExpirationIncrement"
XML_PARSE_ERROR = "AWS.MechanicalTurk.XMLParseError"
PARAMETER_OUT_OF_RANGE = "AWS.ParameterOutOfRange"
MISSING_PARAMETER = "AWS.MissingParameters"
INVALID_PARAMETER = "AWS.MechanicalTurk.InvalidParameterValue"
UNSUPPORTED = "AWS.MechanicalTurk.UnsupportedOperation"
INTERNAL = "AWS.MechanicalTurk.InternalError"


class ApiError(Exception):
    """An error answered to the requester as JSON."""

    status = 400
    type_name = "RequestError"

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.code = code

    def body(self) -> dict:
        # MTurk appends the server time in milliseconds to its messages, e.g.
        # 'Hit 3ABC... does not exist. (1544136427766)'.
        return {
            "__type": self.type_name,
            "Message": f"{self.message} ({int(time.time() * 1000)})",
            "TurkErrorCode": self.code or INVALID_PARAMETER,
        }


class RequestError(ApiError):
    status = 400
    type_name = "RequestError"


class ServiceFault(ApiError):
    status = 500
    type_name = "ServiceFault"


class AuthError(ApiError):
    """Signature problems: coral exception shapes, lower-case 'message'."""

    def __init__(self, type_name: str, message: str, status: int = 400):
        super().__init__(message, None)
        self.type_name = type_name
        self.status = status

    def body(self) -> dict:
        return {"__type": f"com.amazon.coral.service#{self.type_name}", "message": self.message}


class UnknownOperation(ApiError):
    def __init__(self, target: str):
        super().__init__(f"Operation {target!r} is not supported by the labelprop crowd server", None)
        self.type_name = "UnknownOperationException"

    def body(self) -> dict:
        return {"__type": f"com.amazon.coral.service#{self.type_name}", "message": self.message}


def _reject_constant(name: str):
    raise ValueError(f"{name} is not allowed in JSON")


def _check_text(value, depth: int = 0) -> None:
    """Every string (keys too) must be valid Unicode (no lone surrogates from \\ud800-style escapes)."""
    if depth > 64:
        raise ValueError("nested too deeply")
    if isinstance(value, str):
        value.encode("utf-8")
    elif isinstance(value, dict):
        for k, v in value.items():
            k.encode("utf-8")
            _check_text(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _check_text(v, depth + 1)


def parse_json_body(body: bytes):
    """The request body as JSON: UTF-8, no NaN/Infinity, valid Unicode, bounded nesting; RequestError if not."""
    if not body:
        return {}
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
        _check_text(value)
    except (ValueError, RecursionError, UnicodeError):
        raise RequestError("The request body is not valid JSON (UTF-8, no NaN or Infinity)",
                           INVALID_PARAMETER) from None
    return value
