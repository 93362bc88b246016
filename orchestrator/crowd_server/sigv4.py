"""AWS Signature Version 4 verification, a faithful server-side reimplementation.

The requester's boto3 client signs every request with botocore's SigV4 signer
(service ``mturk-requester``).  We rebuild the canonical request from what
arrived on the wire (method, path, query, the headers named in
``SignedHeaders``, the body hash), derive the signing key from the stored
secret and compare signatures in constant time.  ``tests/test_crowd_server_sigv4.py``
cross-checks this module against botocore's own ``SigV4Auth``.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Callable, Mapping
from urllib.parse import parse_qsl, quote, urlsplit

from .api_errors import AuthError

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "mturk-requester"
MAX_SKEW = _dt.timedelta(minutes=15)
REQUIRED_SIGNED = ("host", "x-amz-date")
AMZ_FMT = "%Y%m%dT%H%M%SZ"

_AUTH_RE = re.compile(r"^AWS4-HMAC-SHA256\s+(.*)$", re.S)


@dataclass(frozen=True)
class VerifiedRequest:
    access_key_id: str
    region: str
    amz_date: str


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


def signing_key(secret: str, date: str, region: str, service: str = SERVICE) -> bytes:
    k = _hmac(("AWS4" + secret).encode("utf-8"), date)
    k = _hmac(k, region)
    k = _hmac(k, service)
    return _hmac(k, "aws4_request")


def canonical_uri(path: str) -> str:
    if not path:
        return "/"
    # Normalise like botocore (remove dot segments), then RFC 3986-encode.
    segments: list[str] = []
    for seg in path.split("/"):
        if seg == "..":
            if segments:
                segments.pop()
        elif seg != ".":
            segments.append(seg)
    norm = "/".join(segments)
    if not norm.startswith("/"):
        norm = "/" + norm
    if path.endswith("/") and not norm.endswith("/"):
        norm += "/"
    return quote(norm, safe="/~")


def canonical_query(query: str) -> str:
    pairs = parse_qsl(query, keep_blank_values=True)
    enc = sorted((quote(k, safe="-_.~"), quote(v, safe="-_.~")) for k, v in pairs)
    return "&".join(f"{k}={v}" for k, v in enc)


def _canonical_header_value(values: list[str]) -> str:
    return ",".join(" ".join(v.split()) for v in values)


def canonical_request(method: str, raw_path: str, headers: list[tuple[str, str]],
                      signed_headers: list[str], payload_hash: str) -> str:
    split = urlsplit(raw_path)
    by_name: dict[str, list[str]] = {}
    for name, value in headers:
        by_name.setdefault(name.lower(), []).append(value)
    lines = []
    for name in signed_headers:
        lines.append(f"{name}:{_canonical_header_value(by_name.get(name, []))}")
    return "\n".join([
        method.upper(),
        canonical_uri(split.path),
        canonical_query(split.query),
        "\n".join(lines) + "\n",
        ";".join(signed_headers),
        payload_hash,
    ])


def string_to_sign(amz_date: str, scope: str, creq: str) -> str:
    return "\n".join([ALGORITHM, amz_date, scope, _sha256_hex(creq.encode("utf-8"))])


def _parse_authorization(value: str) -> dict[str, str]:
    m = _AUTH_RE.match(value.strip())
    if not m:
        raise AuthError("IncompleteSignatureException",
                        f"Authorization header requires the {ALGORITHM} algorithm.")
    parts: dict[str, str] = {}
    for item in m.group(1).split(","):
        item = item.strip()
        if "=" in item:
            k, v = item.split("=", 1)
            parts[k.strip()] = v.strip()
    for key in ("Credential", "SignedHeaders", "Signature"):
        if key not in parts:
            raise AuthError("IncompleteSignatureException",
                            f"Authorization header requires '{key}' parameter. "
                            f"Authorization={value.strip()}")
    return parts


def verify(method: str, raw_path: str, headers: list[tuple[str, str]], body: bytes,
           lookup_secret: Callable[[str], str | None],
           now: _dt.datetime | None = None) -> VerifiedRequest:
    """Verify a SigV4-signed request; raise AuthError in AWS's shapes when it is not valid."""
    hmap: Mapping[str, str] = {k.lower(): v for k, v in headers}
    auth = hmap.get("authorization")
    if not auth:
        raise AuthError("MissingAuthenticationTokenException", "Missing Authentication Token", 400)
    parts = _parse_authorization(auth)
    cred = parts["Credential"].split("/")
    if len(cred) != 5 or cred[4] != "aws4_request":
        raise AuthError("IncompleteSignatureException",
                        f"Credential should be scoped to a valid region, not '{parts['Credential']}'.")
    akid, date, region, service, _ = cred
    if service != SERVICE:
        raise AuthError("InvalidSignatureException",
                        f"Credential should be scoped to correct service: '{SERVICE}'.")
    secret = lookup_secret(akid)
    if secret is None:
        raise AuthError("UnrecognizedClientException",
                        "The security token included in the request is invalid.")
    signed = [h.strip().lower() for h in parts["SignedHeaders"].split(";") if h.strip()]
    if signed != sorted(signed):
        raise AuthError("IncompleteSignatureException", "SignedHeaders must be sorted.")
    for req in REQUIRED_SIGNED:
        if req not in signed:
            raise AuthError("IncompleteSignatureException",
                            f"'{req}' must be a 'SignedHeader' in the AWS Authorization.")
    if "x-amz-target" in hmap and "x-amz-target" not in signed:
        raise AuthError("IncompleteSignatureException",
                        "'x-amz-target' must be a 'SignedHeader' in the AWS Authorization.")
    amz_date = hmap.get("x-amz-date", "")
    try:
        when = _dt.datetime.strptime(amz_date, AMZ_FMT).replace(tzinfo=_dt.timezone.utc)
    except ValueError:
        raise AuthError("IncompleteSignatureException",
                        f"Date must be in ISO-8601 'basic format'. Got '{amz_date}'.") from None
    if amz_date[:8] != date:
        raise AuthError("InvalidSignatureException",
                        f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{date}' != '{amz_date[:8]}'.")
    now = now or _dt.datetime.now(_dt.timezone.utc)
    if when < now - MAX_SKEW:
        raise AuthError("InvalidSignatureException",
                        f"Signature expired: {amz_date} is now earlier than "
                        f"{(now - MAX_SKEW).strftime(AMZ_FMT)} ({now.strftime(AMZ_FMT)} - 15 min.)")
    if when > now + MAX_SKEW:
        raise AuthError("InvalidSignatureException",
                        f"Signature not yet current: {amz_date} is still later than "
                        f"{(now + MAX_SKEW).strftime(AMZ_FMT)} ({now.strftime(AMZ_FMT)} + 15 min.)")
    body_hash = _sha256_hex(body)
    declared = hmap.get("x-amz-content-sha256")
    if declared and declared != "UNSIGNED-PAYLOAD" and declared != body_hash:
        raise AuthError("InvalidSignatureException",
                        "The provided 'x-amz-content-sha256' header does not match what was computed.")
    payload_hash = declared if (declared and "x-amz-content-sha256" in signed) else body_hash
    creq = canonical_request(method, raw_path, headers, signed, payload_hash)
    scope = f"{date}/{region}/{service}/aws4_request"
    sts = string_to_sign(amz_date, scope, creq)
    expected = hmac.new(signing_key(secret, date, region, service), sts.encode("utf-8"),
                        hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, parts["Signature"].lower()):
        raise AuthError("InvalidSignatureException",
                        "The request signature we calculated does not match the signature you "
                        "provided. Check your AWS Secret Access Key and signing method. Consult "
                        "the service documentation for details.")
    return VerifiedRequest(akid, region, amz_date)
