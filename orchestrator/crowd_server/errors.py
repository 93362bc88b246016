"""The one exception type for problems a user can fix (bad files, bad options, bad state).

It lives in the crowd server package so that the server depends on nothing outside it;
the orchestrator uses the same class (:mod:`orchestrator.errors` re-exports it), so the
``labelprop`` command prints ``labelprop: error: <message>`` on one line and exits with
status 2 for the server's errors and the orchestrator's alike.  Messages name the file
(or option) and what is wrong with it.
"""

__all__ = ["LabelpropError"]


class LabelpropError(Exception):
    """A user-facing error: bad input file, invalid option, or inconsistent campaign state."""
