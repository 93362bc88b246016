"""Command-line options built from the core's parameters (:mod:`orchestrator.search.params`).

``option(SearchParams, "ka")`` is ``typer.Option(0.85, "--ka", help=...)`` with the default
and help text of ``SearchParams.ka``: the numbers and their explanations live in the core
dataclasses only.  :func:`flag_names` turns a core :class:`~orchestrator.search.params.ParamError`
(``ka must be in [0, 1]``) into the command line's words (``--ka must be in [0, 1]``).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import typer

from orchestrator.errors import LabelpropError
from orchestrator.search.params import ParamError, default_of, flag_name, help_of

__all__ = ["option", "flag_names"]

_KEEP = object()


def option(spec, name: str, *flags: str, default: Any = _KEEP, help: str | None = None, **kw) -> Any:
    """A Typer option for the field ``name`` of the dataclass ``spec``: its default and help
    unless given; the flag is ``--name`` (underscores as dashes) unless ``flags`` are given."""
    return typer.Option(default_of(spec, name) if default is _KEEP else default,
                        *(flags or (flag_name(name),)),
                        help=help_of(spec, name) if help is None else help, **kw)


@contextmanager
def flag_names(renames: dict[str, str] | None = None) -> Iterator[None]:
    """Re-raise a core :class:`ParamError` with option names (``renames``: field -> flag where
    they differ, e.g. ``{"reward_usd": "--reward"}``)."""
    renames = renames or {}
    try:
        yield
    except ParamError as exc:
        raise LabelpropError(exc.render(lambda n: renames.get(n) or flag_name(n))) from None
