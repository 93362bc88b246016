"""The server's clock: wall time, optionally shifted for tests.

If ``LABELPROP_CROWD_CLOCK_OFFSET_FILE`` names a file, its content (seconds, a
float) is added to the wall clock.  Tests use it to let lifetimes, assignment
durations and auto-approval delays run out without waiting; nothing else does.
SigV4 freshness is always checked against the real clock.
"""
from __future__ import annotations

import os
import time

_ENV = "LABELPROP_CROWD_CLOCK_OFFSET_FILE"
_path = os.environ.get(_ENV)
_cache: tuple[float, float] = (-1.0, 0.0)  # (mtime, offset)


def offset() -> float:
    global _cache
    if not _path:
        return 0.0
    try:
        mtime = os.stat(_path).st_mtime_ns
    except OSError:
        return 0.0
    if mtime != _cache[0]:
        try:
            with open(_path) as fh:
                _cache = (mtime, float(fh.read().strip() or 0))
        except (OSError, ValueError):
            return _cache[1]
    return _cache[1]


def now() -> float:
    return time.time() + offset()
