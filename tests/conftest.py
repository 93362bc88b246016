"""Shared fixtures of the test suite (pytest finds them here; tests never import them).

* ``crowd``: the bundled crowd server as a real subprocess on a free port (one per test
  module), driven through boto3 with every response checked against botocore's model;
* ``no_botocore_warnings``: fails a test during which botocore warns;
* ``server``: the crowd server serving a campaign asset directory (one per test module),
  ``(server, base directory, assets directory)``, for the crowd campaign tests;
* ``chromium_path`` and ``browser``: Debian's chromium driven by Playwright.

``make test`` runs two pytest-xdist workers (``-n 2 --dist loadgroup``): every test module
stays on one worker, so its module fixtures are built once (:func:`pytest_collection_modifyitems`).

Helpers that tests call (question builders, campaign builders, truth policies) are plain
modules of this package: ``from tests.crowd_server_support import ...``.
"""
from __future__ import annotations

import subprocess
import warnings

import pytest

from tests.crowd_server_support import CHROMIUM_ARGS, REPO, start_crowd


# Modules that share one worker: the loops that SIGKILL a campaign dozens of times (each is
# a few minutes of subprocesses; two at once would only slow each other), and the two that
# start a Ray cluster.
XDIST_GROUPS = {"test_poll_crash": "sigkill", "test_campaign_run": "sigkill", "test_store_postgres": "sigkill",
                "test_cluster_cli": "ray", "test_detection": "ray"}


@pytest.hookimpl(tryfirst=True)     # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(XDIST_GROUPS.get(module, module)))


@pytest.fixture(scope="module")
def crowd(tmp_path_factory):
    c = start_crowd(tmp_path_factory.mktemp("crowd"))
    try:
        yield c
    finally:
        status = c.srv.stop()
        assert status == 0, f"server did not shut down cleanly (status {status}); log {c.srv.log_path}"
    assert c.all_wire_errors() == [], c.all_wire_errors()


@pytest.fixture
def no_botocore_warnings(caplog):
    """Fail if botocore warns (Python warnings or WARNING log records) during the test."""
    import logging
    caplog.set_level(logging.WARNING, logger="botocore")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    botocore_warnings = [w for w in caught if "botocore" in str(w.filename) or "boto3" in str(w.filename)]
    assert botocore_warnings == [], [str(w.message) for w in botocore_warnings]
    assert [r for r in caplog.records if r.name.startswith("botocore")] == []


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The crowd server (data in BASE/crowd) serving BASE/assets, where campaigns publish
    their overlays: ``(server, BASE, assets directory)``."""
    from tests.crowd_campaign_helpers import crowd_server_in

    base = tmp_path_factory.mktemp("server")
    srv, assets = crowd_server_in(base)
    yield srv, base, assets
    srv.stop()


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Debian's chromium, installed by scripts/ensure_chromium.sh when missing (never Playwright's)."""
    r = subprocess.run(["bash", str(REPO / "scripts" / "ensure_chromium.sh")], capture_output=True, text=True,
                       timeout=900, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        pytest.fail(f"chromium is not available: {r.stderr.strip()}")
    return r.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def browser(chromium_path):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()
