"""Crowd backends: one protocol (:mod:`.base`), a registry, and the implementations.

``crowd.backend`` in ``campaign.toml`` names a registered backend:

- ``mturk``      Amazon Mechanical Turk through boto3: production, the sandbox, or any
                 ``endpoint_url`` (:mod:`.mturk`);
- ``server``     the same backend talking to the bundled crowd server
                 (``labelprop crowd-server``), with in-house defaults;
- ``simulated``  an in-process crowd answering from ground truth (:mod:`.simulated`);
- ``prolific``   a Prolific study whose participants work on the bundled crowd server
                 (:mod:`.prolific`; Prolific's API in :mod:`.prolific_api`).

A new platform registers a factory with :func:`register_backend`; the poll pass needs no
change.  Factories are called as ``factory(campaign_dir, cfg, engine, options)``.
"""
from __future__ import annotations

import importlib
from typing import Callable

from orchestrator.errors import LabelpropError

from .base import *  # noqa: F401,F403
from .base import BackendOptions, CrowdBackend

__all__ = ["register_backend", "make_backend", "backend_names", "backend_fees", "BackendOptions", "CrowdBackend"]

_REGISTRY: dict[str, Callable] = {}
_LAZY = {"mturk": "orchestrator.crowd.backends.mturk", "server": "orchestrator.crowd.backends.mturk",
         "simulated": "orchestrator.crowd.backends.simulated", "prolific": "orchestrator.crowd.backends.prolific"}


def register_backend(name: str):
    """Decorator: register ``factory(campaign_dir, cfg, engine, options) -> CrowdBackend`` as ``name``."""
    def deco(factory: Callable) -> Callable:
        _REGISTRY[name] = factory
        return factory
    return deco


def backend_names() -> list[str]:
    return sorted(set(_REGISTRY) | set(_LAZY))


def backend_fees(name: str):
    """The fee rules of a backend without connecting to it (a factory may carry ``fees``)."""
    from orchestrator.crowd.ledger import MTURK_FEES

    if name not in _REGISTRY and name in _LAZY:
        importlib.import_module(_LAZY[name])
    return getattr(_REGISTRY.get(name), "fees", MTURK_FEES)


def make_backend(campaign_dir, cfg, engine, options: BackendOptions | None = None) -> CrowdBackend:
    """The backend named by ``cfg.crowd.backend`` for a campaign."""
    name = cfg.crowd.backend
    if name not in _REGISTRY and name in _LAZY:
        importlib.import_module(_LAZY[name])
    factory = _REGISTRY.get(name)
    if factory is None:
        raise LabelpropError(f"crowd.backend {name!r} is not a registered backend "
                             f"(known: {', '.join(backend_names())})")
    return factory(campaign_dir, cfg, engine, options or BackendOptions())
