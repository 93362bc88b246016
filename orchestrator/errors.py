"""The one exception type for problems a user can fix (bad files, bad options, bad state).

The CLI prints ``labelprop: error: <message>`` on one line and exits with status 2.
Messages name the file (or option) and what is wrong with it.
"""


class LabelpropError(Exception):
    """A user-facing error: bad input file, invalid option, or inconsistent campaign state."""


def check_unit_interval(name: str, value: float) -> float:
    """Validate a threshold/probability option in [0, 1]; return it as float."""
    v = float(value)
    if not (0.0 <= v <= 1.0) or v != v:
        raise LabelpropError(f"{name} must be in [0, 1], got {value!r}")
    return v
