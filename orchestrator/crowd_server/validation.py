"""Request parameters checked against botocore's own service model (``mturk/2017-01-17/service-2.json``).

Every member of an operation's input shape is checked for what the model says: its type
(JSON string, 32- or 64-bit integer, boolean, epoch-seconds number, list, object), required
members, enums, string lengths and patterns (matched against the whole value), integer
ranges.  Members the model does not have are refused, as botocore's client refuses them.
The first violation is answered as MTurk answers: ``RequestError`` with a TurkErrorCode
and a message in AWS's "failed to satisfy constraint" wording.  What the model leaves to
MTurk's documentation (ranges of durations, how many IntegerValues a comparator takes, ...)
is checked by the operations themselves (``api.py``, ``qualification_checks.py``).
"""
from __future__ import annotations

import functools
import math
import re
from typing import Any

from . import api_errors as E

INT32 = (-2**31, 2**31 - 1)
INT64 = (-2**63, 2**63 - 1)
MAX_TIMESTAMP = 253402300799.0  # 9999-12-31T23:59:59Z


@functools.lru_cache(maxsize=1)
def service_model():
    import botocore.session
    return botocore.session.get_session().get_service_model("mturk")


@functools.lru_cache(maxsize=None)
def _pattern(p: str) -> re.Pattern:
    # AWS patterns are anchored with ^...$; we fullmatch the unanchored body, so "0.05\n" does not
    # slip past a '$' that matches before a final newline.
    body = p[1:] if p.startswith("^") else p
    if body.endswith("$") and not body.endswith("\\$"):
        body = body[:-1]
    return re.compile(body)


def _shown(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 64 else text[:61] + "..."


def _fail(path: str, value: Any, constraint: str, code: str = E.INVALID_PARAMETER):
    raise E.RequestError(f"1 validation error detected: Value '{_shown(value)}' at '{path}' failed to satisfy "
                         f"constraint: {constraint}", code)


def _check(shape, value: Any, path: str) -> None:
    t = shape.type_name
    meta = shape.metadata
    if t == "structure":
        if not isinstance(value, dict):
            _fail(path, value, "Member must be an object")
        for k in value:
            if k not in shape.members:
                raise E.RequestError(f"1 validation error detected: '{_shown(k)}' at '{path}' is not a member of "
                                     f"{shape.name}", E.INVALID_PARAMETER)
        for r in shape.required_members:
            if value.get(r) is None:
                raise E.RequestError(f"1 validation error detected: Value null at '{_join(path, r)}' failed to "
                                     f"satisfy constraint: Member must not be null", E.MISSING_PARAMETER)
        for k, v in value.items():
            if v is not None:
                _check(shape.members[k], v, _join(path, k))
    elif t == "list":
        if not isinstance(value, list):
            _fail(path, value, "Member must be a list")
        _length(path, value, meta)
        for i, v in enumerate(value, 1):
            if v is None:
                _fail(f"{path}.{i}", "null", "Member must not be null", E.MISSING_PARAMETER)
            _check(shape.member, v, f"{path}.{i}")
    elif t == "map":
        if not isinstance(value, dict):
            _fail(path, value, "Member must be an object")
        for k, v in value.items():
            _check(shape.key, k, f"{path}.{k}")
            _check(shape.value, v, f"{path}.{k}")
    elif t == "string":
        if not isinstance(value, str):
            _fail(path, value, "Member must be a string")
        _length(path, value, meta)
        if shape.enum and value not in shape.enum:
            _fail(path, value, f"Member must satisfy enum value set: [{', '.join(shape.enum)}]")
        if "pattern" in meta and not _pattern(meta["pattern"]).fullmatch(value):
            _fail(path, value, f"Member must satisfy regular expression pattern: {meta['pattern']}")
    elif t in ("integer", "long"):
        lo, hi = INT32 if t == "integer" else INT64
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(path, value, "Member must be an integer")
        if not lo <= value <= hi:
            _fail(path, value, f"Member must be between {lo} and {hi}", E.PARAMETER_OUT_OF_RANGE)
        if "min" in meta and value < meta["min"]:
            _fail(path, value, f"Member must have value greater than or equal to {meta['min']}",
                  E.PARAMETER_OUT_OF_RANGE)
        if "max" in meta and value > meta["max"]:
            _fail(path, value, f"Member must have value less than or equal to {meta['max']}",
                  E.PARAMETER_OUT_OF_RANGE)
    elif t == "boolean":
        if not isinstance(value, bool):
            _fail(path, value, "Member must be a boolean")
    elif t == "timestamp":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(path, value, "Member must be a timestamp in epoch seconds")
        if not (math.isfinite(value) and 0 <= value <= MAX_TIMESTAMP):
            _fail(path, value, "Member must be a time between 1970 and 9999", E.PARAMETER_OUT_OF_RANGE)
    elif t in ("double", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            _fail(path, value, "Member must be a number")
    else:  # blob and others: not in this API's inputs
        _fail(path, value, f"Member of type {t} is not accepted")


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _length(path: str, value, meta: dict) -> None:
    n = len(value)
    if "min" in meta and n < meta["min"]:
        _fail(path, value, f"Member must have length greater than or equal to {meta['min']}")
    if "max" in meta and n > meta["max"]:
        _fail(path, value, f"Member must have length less than or equal to {meta['max']}")


def validate_input(operation: str, params: Any) -> None:
    """Raise RequestError unless ``params`` is a valid input of ``operation`` by the service model."""
    model = service_model()
    if operation not in model.operation_names:
        raise E.UnknownOperation(operation)
    shape = model.operation_model(operation).input_shape
    if not isinstance(params, dict):
        raise E.RequestError("The request body must be a JSON object", E.INVALID_PARAMETER)
    if shape is None:
        if params:
            raise E.RequestError(f"{operation} takes no parameters", E.INVALID_PARAMETER)
        return
    _check(shape, params, "")
