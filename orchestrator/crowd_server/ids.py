"""MTurk-style identifiers: 30 upper-case alphanumerics for HITs/assignments/types, 'A...' for workers."""
from __future__ import annotations

import hashlib
import secrets

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def _random(n: int) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(n))


def _from_digest(digest: bytes, n: int) -> str:
    num = int.from_bytes(digest, "big")
    out = []
    for _ in range(n):
        num, r = divmod(num, len(ALPHABET))
        out.append(ALPHABET[r])
    return "".join(out)


def hit_id() -> str:
    return "3" + _random(29)


def assignment_id() -> str:
    return "3" + _random(29)


def qualification_type_id() -> str:
    return "3" + _random(29)


def worker_id() -> str:
    # CustomerId pattern ^A[A-Z0-9]+$, MTurk worker ids are 12-14 characters.
    return "A" + _random(13)


def hit_type_id_for(canonical: str) -> str:
    """Deterministic HIT type id: the same properties always give the same id."""
    return "3" + _from_digest(hashlib.sha256(canonical.encode("utf-8")).digest(), 29)


def access_key_id() -> str:
    return "AKIA" + _random(16)


def secret_access_key() -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    return "".join(secrets.choice(alphabet) for _ in range(40))


def worker_token() -> str:
    return secrets.token_urlsafe(24)


def session_id() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()
