"""Parameters defined once: defaults, help text and checks carried by the core dataclasses.

A parameter of the core (:class:`~orchestrator.search.search.SearchParams`,
:class:`~orchestrator.crowd.cost.CostModel`, :class:`~clustering.build.ClusterParams`) is a
dataclass field whose ``metadata`` holds its ``help`` text and, optionally, a ``check``
(a function of the value returning ``None`` or what is wrong).  Everything else is built
from them: the sections of ``campaign.toml`` (:mod:`orchestrator.campaign.config`), the comment
header written by ``labelprop init``, and the command-line options (:func:`option` in
:mod:`orchestrator.cli.options`).

Checks run in one place, :func:`validate`.  Their messages use neutral names: a
:class:`ParamError` says ``ka must be in [0, 1], got 1.5``, and whoever called the core
renders the names its user knows (``--ka`` on the command line, ``search.ka`` in a
campaign file) with :meth:`ParamError.render`.  Pure: no I/O.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterable

from orchestrator.errors import LabelpropError

__all__ = ["ParamError", "param", "validate", "help_of", "default_of", "unit_interval", "at_least",
           "non_negative", "positive", "one_of", "flag_name"]

Check = Callable[[Any], "str | None"]


class _Names(dict):
    def __init__(self, fmt: Callable[[str], str]) -> None:
        super().__init__()
        self.fmt = fmt

    def __missing__(self, key: str) -> str:
        return self.fmt(key)


class ParamError(LabelpropError):
    """A parameter out of range.  ``name`` is the field's name, ``problem`` what is wrong,
    with other parameters written ``{name}`` so that :meth:`render` can spell them as the
    caller's user knows them."""

    def __init__(self, name: str, problem: str) -> None:
        self.name = name
        self.problem = problem
        super().__init__(self.render(lambda n: n))

    def render(self, fmt: Callable[[str], str]) -> str:
        """The message with every parameter name passed through ``fmt``."""
        return f"{fmt(self.name)} {self.problem.format_map(_Names(fmt))}"


def flag_name(name: str) -> str:
    """A field's command-line option: ``risk_masks`` -> ``--risk-masks``."""
    return "--" + name.replace("_", "-")


def param(default=dataclasses.MISSING, help: str = "", *, check: Check | None = None,
          default_factory=dataclasses.MISSING, config: bool = True) -> Any:
    """A dataclass field carrying its ``help`` and ``check``; ``config=False``: not a
    ``campaign.toml`` key (set from elsewhere, e.g. the campaign's seed)."""
    md = {"help": help, "check": check, "config": config}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=md)
    return dataclasses.field(default=default, metadata=md)


def _field(cls, name: str) -> dataclasses.Field:
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f
    raise KeyError(f"{cls.__name__} has no parameter {name!r}")


def help_of(cls, name: str) -> str:
    return _field(cls, name).metadata.get("help", "")


def default_of(cls, name: str):
    f = _field(cls, name)
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def validate(spec, obj, names: Iterable[str] | None = None) -> None:
    """Run the checks of ``spec``'s fields (a dataclass type) on the same-named attributes of
    ``obj`` (an instance of ``spec`` or of a section built from it), then ``spec``'s
    cross-field rules (``spec.__param_rules__``: functions of ``obj`` returning ``None`` or
    ``(name, problem)``).  Raises the first :class:`ParamError`."""
    wanted = None if names is None else set(names)
    for f in dataclasses.fields(spec):
        check = f.metadata.get("check")
        if check is None or not hasattr(obj, f.name) or (wanted is not None and f.name not in wanted):
            continue
        problem = check(getattr(obj, f.name))
        if problem:
            raise ParamError(f.name, problem)
    for rule in getattr(spec, "__param_rules__", ()):
        bad = rule(obj)
        if bad:
            raise ParamError(*bad)


# ------------------------------------------------------------------ checks
def unit_interval(v) -> str | None:
    v = float(v)
    return None if 0.0 <= v <= 1.0 else f"must be in [0, 1], got {v!r}"


def at_least(low: int) -> Check:
    return lambda v: None if v >= low else f"must be at least {low}, got {v}"


def non_negative(what: str = "") -> Check:
    """``v >= 0``; ``what`` says what 0 means, e.g. ``"off"``."""
    text = f"must be 0 ({what}) or positive" if what else "must be >= 0"
    return lambda v: None if v >= 0 else f"{text}, got {v}"


def positive(v) -> str | None:
    return None if v > 0 and math.isfinite(v) else f"must be a positive number, got {v!r}"


def one_of(choices: Callable[[], Iterable[str]] | Iterable[str]) -> Check:
    """``v`` is one of ``choices`` (or of what calling it returns: a registry filled later)."""
    def check(v):
        names = tuple(choices() if callable(choices) else choices)
        return None if v in names else f"must be one of {', '.join(names)}, got {v!r}"
    return check
