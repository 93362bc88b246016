"""A real worker in headless Chromium answers labelprop verification HITs with the keyboard.

The crowd server runs as a subprocess serving real overlays (published to a LocalAssetStore) at
/assets/; the HIT is built by ``render_verification_question``; the worker signs in, previews,
accepts, answers every question with y / n (u), revises one with Backspace, submits with Enter;
the requester reads the Answer with boto3 and ``parse_verification_answer``.
Screenshots go to tests/artifacts/verification_hit*.png.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from tests.cocodata import encode_rle, make_coco_dataset
from tests.crowd_server_support import start_crowd, worker_page

from hit_templates.render import HitQuestion, parse_verification_answer, parse_verification_seconds, \
    render_verification_question
from orchestrator.crowd.assets import LocalAssetStore, OverlayItem, publish_overlays

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
HOSTILE_ID = 'q"<&>'
HOSTILE_CLASS = "<i>sofa</i> ]]> </script>"


def _variant(mask: np.ndarray, i: int) -> np.ndarray:
    """Ground truth (a correct outline), shifted (wrong) or grown (too loose), by turns."""
    if i % 3 == 1:
        return np.roll(mask, (14, 18), axis=(0, 1))
    if i % 3 == 2:
        return ndimage.binary_dilation(mask, iterations=10)
    return mask


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hitbrowser")
    ds = make_coco_dataset(tmp / "coco", n_images=5, height=300, width=400, objects_per_image=(2, 3),
                           preds_per_object=1, seed=5)
    assets = tmp / "assets"
    assets.mkdir()
    crowd = start_crowd(tmp, extra_args=["--assets", str(assets)])
    try:
        store = LocalAssetStore(assets, crowd.srv.endpoint_url)
        files = {im["id"]: ds.image_root / im["file_name"] for im in ds.images}
        names = {c["id"]: c["name"] for c in ds.categories}
        items = [OverlayItem(f"mask-{i}", files[r["image_id"]], encode_rle(_variant(ds.gt_masks[i].astype(bool), i)))
                 for i, r in enumerate(ds.results)]
        urls = publish_overlays(store, items)
        classes = [names[r["category_id"]] for r in ds.results]
        yield crowd, urls, classes
    finally:
        assert crowd.srv.stop() == 0


def _open_hit(page, crowd, worker, hit_type_id):
    page.goto(worker["signin_url"])
    page.locator(f'tr[data-hit-type-id="{hit_type_id}"]').get_by_text("Preview").click()
    return page.frame_locator("#task-frame")


def _accept(page):
    page.locator("button#accept").click()
    page.wait_for_url("**/assignments/*")
    frame = page.frame_locator("#task-frame")
    frame.locator(".lp-q").first.wait_for()
    page.wait_for_function("document.activeElement && document.activeElement.id === 'task-frame'")
    return frame


def test_worker_answers_verification_hit_with_keyboard(env, browser):
    crowd, urls, classes = env
    keys = list(urls)[:6]
    questions = [HitQuestion(f"q{i}a{k[5:]}", urls[k], classes[i]) for i, k in enumerate(keys)]
    questions[3] = HitQuestion(HOSTILE_ID, urls[keys[3]], HOSTILE_CLASS)
    ids = [q.identifier for q in questions]
    xml = render_verification_question(questions)
    tid = crowd.hit_type(Title="Are these objects outlined correctly?", Reward="0.05",
                         Description="Keyboard: y / n")
    hit = crowd.hit(tid, xml, MaxAssignments=1)
    worker = crowd.srv.add_worker("hit-browser-worker")
    ARTIFACTS.mkdir(exist_ok=True)

    page, errors = worker_page(browser)
    try:
        frame = _open_hit(page, crowd, worker, tid)
        # Preview: the first question and the instructions show; submitting is impossible.
        frame.locator("#lp-preview").wait_for()
        assert frame.locator("#submitButton").is_disabled()
        frame.locator("#lp-help").screenshot(path=str(ARTIFACTS / "verification_hit_instructions.png"))
        assert frame.locator("#lp-help svg[role=img]").count() == 4

        frame = _accept(page)
        first = frame.locator(".lp-q").first
        assert first.locator(".lp-prompt").inner_text() == f"Is the {classes[0]} outlined correctly?"
        assert frame.locator("#lp-count").inner_text() == "1 / 6"
        assert frame.locator("#lp-preview").is_hidden()
        # The overlays really load from the crowd server's /assets/ route.
        frame.locator("img.lp-img").first.evaluate(
            "img => img.complete || new Promise(r => img.addEventListener('load', r))")
        widths = frame.locator("img.lp-img").evaluate_all("imgs => imgs.map(i => i.naturalWidth)")
        assert widths == [384] * 6
        page.screenshot(path=str(ARTIFACTS / "verification_hit.png"))

        for k in ["y", "n", "Backspace"]:          # q0 yes, q1 no, back to q1 ...
            page.keyboard.press(k)
        assert frame.locator("#lp-count").inner_text() == "2 / 6"
        assert frame.locator(".lp-q").nth(1).locator("input[value=no]").is_checked()
        page.keyboard.press("y")                  # ... revised to yes, on to q2
        assert frame.locator("#lp-count").inner_text() == "3 / 6"
        page.keyboard.press("n")                  # q2 no
        hostile = frame.locator(".lp-q").nth(3)
        assert hostile.is_visible()
        assert hostile.locator(".lp-prompt b").inner_text() == HOSTILE_CLASS.strip()
        assert hostile.get_attribute("data-qid") == HOSTILE_ID
        page.keyboard.press("y")                  # q3 yes
        page.keyboard.press("n")                  # q4 no
        assert frame.locator("#submitButton").is_disabled()
        page.keyboard.press("Enter")              # too early: stays, says why
        assert "answer every question" in frame.locator("#lp-msg").inner_text()
        page.keyboard.press("y")                  # q5 yes
        assert frame.locator("#lp-done").is_visible()
        assert frame.locator("#submitButton").is_enabled()
        assert frame.locator("#lp-answered").inner_text() == "6 answered"
        page.screenshot(path=str(ARTIFACTS / "verification_hit_done.png"))
        page.keyboard.press("Enter")
        page.wait_for_url("**/?submitted=*")
    finally:
        page.close()
    assert errors == []

    asg = crowd.mturk.list_assignments_for_hit(HITId=hit["HITId"])["Assignments"]
    assert len(asg) == 1 and asg[0]["WorkerId"] == worker["worker_id"]
    got = parse_verification_answer(asg[0]["Answer"])
    assert got == dict(zip(ids, ["yes", "yes", "no", "yes", "no", "yes"]))
    seconds = parse_verification_seconds(asg[0]["Answer"])
    assert set(seconds) == set(ids) and all(s >= 0 for s in seconds.values())


def test_worker_answers_classic_form_hit_with_unsure(env, browser):
    crowd, urls, classes = env
    keys = list(urls)[6:9]
    questions = [HitQuestion(f"c{i}", urls[k], classes[6 + i]) for i, k in enumerate(keys)]
    xml = render_verification_question(questions, form="classic", allow_unsure=True, frame_height=700)
    tid = crowd.hit_type(Title="Outlines, classic form", Reward="0.02", Description="Keyboard: y / n / u")
    hit = crowd.hit(tid, xml, MaxAssignments=1)
    worker = crowd.srv.add_worker("hit-browser-classic")
    page, errors = worker_page(browser)
    try:
        frame = _open_hit(page, crowd, worker, tid)
        assert frame.locator("#submitButton").is_disabled()
        assert frame.locator("#assignmentId").input_value() == "ASSIGNMENT_ID_NOT_AVAILABLE"
        frame = _accept(page)
        assert frame.locator("#assignmentId").input_value() not in ("", "ASSIGNMENT_ID_NOT_AVAILABLE")
        for k in ["u", "n", "ArrowLeft", "ArrowLeft", "y", "ArrowRight", "y"]:
            page.keyboard.press(k)              # c0 unsure -> revised to yes; c1 no; c2 yes
        assert frame.locator("#submitButton").is_enabled()
        page.keyboard.press("Enter")
        page.wait_for_url("**/?submitted=*")
    finally:
        page.close()
    assert errors == []
    asg = crowd.mturk.list_assignments_for_hit(HITId=hit["HITId"])["Assignments"]
    answer = asg[0]["Answer"]
    assert "taskAnswers" not in answer        # classic: one Answer per question
    assert parse_verification_answer(answer) == {"c0": "yes", "c1": "no", "c2": "yes"}


def test_a_question_whose_picture_did_not_load_takes_no_answer(env, browser):
    """A broken image (404): its question is skipped, refuses y/n with a message, and is sent as "broken"."""
    crowd, urls, classes = env
    keys = list(urls)[9:12]
    broken_url = urls[keys[1]].rsplit("/", 1)[0] + "/no-such-overlay.jpg"
    questions = [HitQuestion("b0", urls[keys[0]], classes[9]), HitQuestion("b1", broken_url, classes[10]),
                 HitQuestion("b2", urls[keys[2]], classes[11])]
    tid = crowd.hit_type(Title="Outlines, one picture missing", Reward="0.02", Description="Keyboard: y / n")
    hit = crowd.hit(tid, render_verification_question(questions), MaxAssignments=1)
    worker = crowd.srv.add_worker("hit-browser-broken")
    page, errors = worker_page(browser)
    try:
        _open_hit(page, crowd, worker, tid)
        frame = _accept(page)
        frame.locator(".lp-q.lp-broken").wait_for(state="attached")
        assert frame.locator(".lp-q").nth(1).get_attribute("class") == "lp-q lp-broken"
        assert frame.locator(".lp-q").nth(1).locator("input").evaluate_all("xs => xs.every(x => x.disabled)")
        page.keyboard.press("y")                  # b0 yes; the broken b1 is skipped
        assert frame.locator("#lp-count").inner_text() == "3 / 3"
        page.keyboard.press("Backspace")          # back to b1: it says why it takes no answer
        assert frame.locator("#lp-broken-msg").is_visible()
        page.keyboard.press("y")
        assert "did not load" in frame.locator("#lp-msg").inner_text()
        assert not frame.locator(".lp-q").nth(1).locator("input[value=yes]").is_checked()
        page.keyboard.press("ArrowRight")
        page.keyboard.press("n")                  # b2 no
        assert frame.locator("#submitButton").is_enabled()
        page.screenshot(path=str(ARTIFACTS / "verification_hit_broken_image.png"))
        page.keyboard.press("Enter")
        page.wait_for_url("**/?submitted=*")
    finally:
        page.close()
    assert errors == []
    asg = crowd.mturk.list_assignments_for_hit(HITId=hit["HITId"])["Assignments"]
    assert parse_verification_answer(asg[0]["Answer"]) == {"b0": "yes", "b1": "broken", "b2": "no"}
