"""A real worker in headless Chromium (Debian's chromium, driven by Playwright): sign in, open a crowd-form
HTMLQuestion HIT, answer with the keyboard, submit; the requester reads the answer with boto3 + xmltodict."""
from __future__ import annotations

import json
from pathlib import Path


from tests.crowd_server_support import html_question, parse_answers, worker_page

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"

# A labelprop-style verification HIT: one yes/no question per mask, y / n on the keyboard, then a comment.
TASK = """<!DOCTYPE html>
<html><head><meta charset="utf-8">
<script src="https://assets.crowd.aws/crowd-html-elements.js"></script>
<style>.q{padding:6px;margin:4px;border:1px solid #ccc}.q.current{border:2px solid #ff9900}</style>
</head><body>
<h2>Is each mask a good outline of one object?</h2>
<p>Press <b>y</b> or <b>n</b> for each mask, then write a comment and press Enter.</p>
<crowd-form>
  <div class="q current" id="q-m11">Mask 11 (person)
    <label><input type="radio" name="m11" value="yes">yes</label><label><input type="radio" name="m11" value="no">no</label></div>
  <div class="q" id="q-m12">Mask 12 (dog)
    <label><input type="radio" name="m12" value="yes">yes</label><label><input type="radio" name="m12" value="no">no</label></div>
  <div class="q" id="q-m13">Mask 13 (car)
    <label><input type="radio" name="m13" value="yes">yes</label><label><input type="radio" name="m13" value="no">no</label></div>
  <crowd-input name="comment" label="Comment"></crowd-input>
</crowd-form>
<script>
  var order = ['m11', 'm12', 'm13'], cur = 0;
  document.addEventListener('keydown', function (e) {
    if (e.target && e.target.tagName === 'INPUT' && e.target.type === 'text') return;
    if ((e.key === 'y' || e.key === 'n') && cur < order.length) {
      e.preventDefault();
      document.querySelector('input[name="' + order[cur] + '"][value="' + (e.key === 'y' ? 'yes' : 'no') + '"]').checked = true;
      document.getElementById('q-' + order[cur]).classList.remove('current');
      cur++;
      if (cur < order.length) document.getElementById('q-' + order[cur]).classList.add('current');
      else document.querySelector('crowd-input input').focus();
    }
  });
</script>
</body></html>"""


def test_worker_answers_crowd_form_hit_with_keyboard(crowd, browser):
    m = crowd.mturk
    tid = crowd.hit_type(Title="Check 3 masks", Reward="0.03", Description="Keyboard: y / n")
    hit = crowd.hit(tid, html_question(TASK, frame_height=600), MaxAssignments=1)
    worker = crowd.srv.add_worker("browser-worker")
    ARTIFACTS.mkdir(exist_ok=True)

    page, errors = worker_page(browser)
    try:
        page.goto(worker["signin_url"])
        assert page.url == crowd.srv.endpoint_url + "/"
        assert worker["worker_id"] in page.inner_text("#worker-id")
        row = page.locator(f'tr[data-hit-type-id="{tid}"]')
        assert "Check 3 masks" in row.inner_text()

        # Preview: the task shows, submitting is disabled until the HIT is accepted.
        row.get_by_text("Preview").click()
        frame = page.frame_locator("#task-frame")
        assert frame.locator("button#submitButton").is_disabled()

        page.locator("button#accept").click()
        page.wait_for_url("**/assignments/*")
        frame = page.frame_locator("#task-frame")
        frame.locator("crowd-input input").wait_for()
        page.wait_for_function("document.activeElement && document.activeElement.id === 'task-frame'")

        page.keyboard.press("y")
        page.keyboard.press("n")
        page.keyboard.press("y")
        page.keyboard.type("mask 12 cuts the tail")
        page.screenshot(path=str(ARTIFACTS / "crowd_server_worker_page.png"), full_page=True)
        page.keyboard.press("Enter")
        page.wait_for_url("**/?submitted=*")
        assert "was submitted" in page.inner_text("#flash")
        page.screenshot(path=str(ARTIFACTS / "crowd_server_worker_submitted.png"))
    finally:
        page.close()
    assert errors == []
    assert (ARTIFACTS / "crowd_server_worker_page.png").stat().st_size > 10_000

    asg = m.list_assignments_for_hit(HITId=hit["HITId"])["Assignments"]
    assert len(asg) == 1 and asg[0]["WorkerId"] == worker["worker_id"]
    answers = parse_answers(asg[0]["Answer"])
    assert list(answers) == ["taskAnswers"]
    assert json.loads(answers["taskAnswers"]) == [
        {"m11": "yes", "m12": "no", "m13": "yes", "comment": "mask 12 cuts the tail"}]
    assert m.get_hit(HITId=hit["HITId"])["HIT"]["HITStatus"] == "Reviewable"
