"""The new user's path (README, "Real crowd campaigns"), end to end in headless Chromium.

A fresh campaign on the bundled crowd server with the default settings of `labelprop init --backend
server`, set up with the README's commands in the README's order; one new worker, added with
`crowd-server add-worker`, signs in, sees which requirement the HITs need, takes the qualification
test, passes, and answers HITs with the keyboard until `labelprop run` says the campaign is finished.
Then a second campaign posts to the same server, and its HIT's images load in the worker's browser.
Screenshots: tests/artifacts/new_user_*.png.
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from crowd_campaign_helpers import LABELPROP, ROOT, TruthPolicy, coco_with_iou, lp  # noqa: E402

try:
    from conftest_crowd import chromium_path, worker_page  # noqa: F401
    from test_crowd_server_browser import browser  # noqa: F401  (the shared Playwright browser fixture)
except ImportError:
    from tests.conftest_crowd import chromium_path, worker_page  # noqa: F401
    from tests.test_crowd_server_browser import browser  # noqa: F401

from orchestrator.crowd_server.testing import start_server  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def _campaign(base: Path, name: str, endpoint: str, env: dict, seed: int) -> Path:
    """The README's commands, in its order (data: small synthetic COCO sets with known IoUs)."""
    preds = coco_with_iou(base / f"{name}-preds", n_images=10, n_categories=2, objects_per_image=(1, 2),
                          preds_per_object=3, seed=seed)
    gold = coco_with_iou(base / f"{name}-gold", n_images=12, n_categories=2, objects_per_image=(1, 3),
                         preds_per_object=3, seed=seed + 100)
    camp = base / name
    lp("init", camp, "--backend", "server", "--endpoint-url", endpoint, env=env)
    lp("ingest", camp, "--results", preds.results_json, "--features", preds.features_npy, "--images",
       preds.images_json, "--image-root", preds.image_root, env=env)
    lp("cluster", camp, env=env)
    lp("gold", camp, "--results", gold.results_json, "--images", gold.images_json, "--image-root", gold.image_root,
       env=env)
    est = lp("estimate", camp, env=env).stdout
    assert "questions" in est and "HITs" in est and "$" in est
    return camp


def _answer_hit(page, truth: TruthPolicy) -> int:
    """Answer every question of the open HIT with y / n (the true answer) and submit with Enter."""
    frame = page.frame_locator("#task-frame")
    frame.locator(".lp-q").first.wait_for()
    n = frame.locator(".lp-q").count()
    for _ in range(n):
        ident = frame.locator(".lp-q:not([hidden])").get_attribute("data-qid")
        page.keyboard.press("y" if truth._truth(ident) == "yes" else "n")
    frame.locator("#lp-done").wait_for()
    assert frame.locator("#submitButton").is_enabled()
    page.keyboard.press("Enter")
    page.wait_for_url("**/?submitted=*")
    return n


def test_new_user_runs_a_campaign_with_one_worker_in_a_browser(tmp_path, browser):
    ARTIFACTS.mkdir(exist_ok=True)
    srv = start_server(tmp_path / "crowd", extra_args=("--quiet",))
    env = {"AWS_SHARED_CREDENTIALS_FILE": str(srv.data_dir / "credentials"),
           "AWS_CONFIG_FILE": str(srv.data_dir / "config")}
    run = None
    try:
        alice = json.loads(subprocess.run([sys.executable, "-m", "orchestrator.crowd_server", "add-worker", "alice",
                                           "--data-dir", str(srv.data_dir), "--json"], capture_output=True,
                                          text=True, cwd=ROOT, check=True, timeout=60).stdout)
        camp = _campaign(tmp_path, "camp", srv.endpoint_url, env, seed=21)
        truth = TruthPolicy(camp)
        run = subprocess.Popen(LABELPROP + ["run", str(camp), "--interval", "1"], cwd=ROOT,
                               env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        page, errors = worker_page(browser)
        page.goto(alice["signin_url"])
        deadline = time.monotonic() + 120
        while not page.locator("#groups").count():        # the first pass posts the HITs
            assert time.monotonic() < deadline and run.poll() is None, run.communicate()
            time.sleep(1)
            page.reload()
        # the HIT list says what is missing, and where to get it
        row = page.locator("#groups tbody tr").first
        assert "Not open to you yet" in row.inner_text() and "passing the test" in row.inner_text()
        page.screenshot(path=str(ARTIFACTS / "new_user_hits_locked.png"))
        row.get_by_text("Take the test").click()
        page.locator("form[action$='/request'] button").first.click()
        page.locator("#qualification-test").wait_for()
        for fs in page.locator("fieldset.question").all():
            ident = fs.get_attribute("data-question-identifier")
            fs.locator(f"input[value='{truth._truth(ident)}']").check()
        page.screenshot(path=str(ARTIFACTS / "new_user_test.png"), full_page=True)
        page.locator("#submit-test").click()
        assert page.locator("#test-result").inner_text() == "You passed the test"
        page.screenshot(path=str(ARTIFACTS / "new_user_test_passed.png"))
        assert page.locator("header.top nav").count() == 1
        page.get_by_text("Go to the HITs").click()

        answered, hits = 0, 0
        deadline = time.monotonic() + 420
        while True:
            accept = page.locator("button.accept")
            if accept.count():
                accept.first.click()
                page.wait_for_url("**/assignments/*")
                if hits == 0:
                    page.frame_locator("#task-frame").locator("img.lp-img").first.evaluate(
                        "img => img.complete || new Promise(r => img.addEventListener('load', r))")
                    page.screenshot(path=str(ARTIFACTS / "new_user_hit.png"))
                answered += _answer_hit(page, truth)
                hits += 1
                continue
            if run.poll() is not None:
                break
            assert time.monotonic() < deadline, f"still running after {hits} HITs"
            time.sleep(1)
            page.goto(srv.endpoint_url + "/")
        out, err = run.communicate(timeout=60)
        assert run.returncode == 0, err
        assert "finished:" in out, (out, err[-1500:])
        assert errors == []
        page.screenshot(path=str(ARTIFACTS / "new_user_done.png"))
        st = json.loads(lp("status", camp, "--json", env=env).stdout)
        assert st["state"] == "finished" and st["accepted_masks"] > 0 and hits >= 1
        assert st["accepted_masks"] + st["rejected_masks"] + st["undecided_masks"] == st["masks"]
        con = sqlite3.connect(camp / "campaign.db")
        paid = con.execute("select count(*) from crowd_assignment where final_status = 'Approved'").fetchone()[0]
        held = con.execute("select count(*) from crowd_answer where status = 'held'").fetchone()[0]
        con.close()
        assert paid == hits and held == 0      # trusted from the first HIT (the test counts as gold)

        # a second campaign on the same server: its overlays are served there too
        camp2 = _campaign(tmp_path, "camp2", srv.endpoint_url, env, seed=33)
        first = json.loads(lp("poll", camp2, "--json", env=env).stdout)
        assert first["pass"]["hits_created"] >= 1, first
        page.goto(srv.endpoint_url + "/")
        groups = page.locator("#groups tbody tr")
        assert groups.count() == 1
        page.locator("#groups tbody tr a.button", has_text="Preview").first.click()
        frame = page.frame_locator("#task-frame")
        frame.locator("img.lp-img").first.wait_for()
        widths = frame.locator("img.lp-img").evaluate_all(
            "imgs => Promise.all(imgs.map(i => i.complete ? i.naturalWidth : "
            "new Promise(r => { i.onload = () => r(i.naturalWidth); i.onerror = () => r(0); })))")
        assert widths and all(w == 384 for w in widths), widths
        assert frame.locator(".lp-q.lp-broken").count() == 0
        page.screenshot(path=str(ARTIFACTS / "new_user_second_campaign.png"))
        page.close()
    finally:
        if run is not None and run.poll() is None:
            run.kill()
        srv.stop()
