"""The one exception type for problems a user can fix (bad files, bad options, bad state).

The CLI prints ``labelprop: error: <message>`` on one line and exits with status 2.
Messages name the file (or option) and what is wrong with it.  The class is defined in
:mod:`orchestrator.crowd_server.errors` (the crowd server imports nothing outside its
package) and is the same class here.
"""
from orchestrator.crowd_server.errors import LabelpropError

__all__ = ["LabelpropError", "check_unit_interval"]


def check_unit_interval(name: str, value: float) -> float:
    """Validate a threshold/probability option in [0, 1]; return it as float."""
    v = float(value)
    if not (0.0 <= v <= 1.0) or v != v:
        raise LabelpropError(f"{name} must be in [0, 1], got {value!r}")
    return v
