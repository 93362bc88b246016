"""The prolific backend end to end, against a local fake of Prolific's documented API
(tests/prolific_fake.py; the real service is unreachable from here) and the real crowd server.

Simulated participants take places on the fake, arrive at the server's /prolific/start with the
Prolific URL parameters, work through browser-like HTTP (cookie session, JSON pages), and are
redirected to the completion URL with a code; `labelprop poll` runs as subprocesses, some of them
SIGKILLed at random points.  Outcomes: every participant got the right code, every submission is
approved or rejected exactly once, every bonus is paid exactly once, the campaign's spend equals
the fake's ledger and stays under the budget.
"""
import json
import os
import random
import signal
import subprocess
import threading
import time
import urllib.request
from http.cookiejar import CookieJar

import pytest

from orchestrator.campaign.config import ProlificSection
from orchestrator.crowd_server.simulated_workers import (SimulatedWorker, WorkerProfile, apply_profile,
                                                         encode_submission)
from orchestrator.crowd_server.xml_formats import parse_test
from tests.crowd_campaign_helpers import LABELPROP, ROOT, TruthPolicy, lp, make_crowd_campaign
from tests.prolific_fake import FakeProlific

TOKEN = "fake-prolific-token"


class Participant(threading.Thread):
    """One Prolific participant: takes a place, works on the server like a browser, finishes."""

    def __init__(self, fake, base, pid, policy, *, extra=True, wrong_test=False, returner=False, seed=0):
        super().__init__(daemon=True)
        self.fake, self.base, self.pid, self.policy = fake, base, pid, policy
        self.extra, self.wrong_test, self.returner = extra, wrong_test, returner
        self.stop = threading.Event()
        self.results: list[tuple[str, str, int]] = []      # (submission, code type, HITs done)
        self.errors: list[str] = []
        self.sim = SimulatedWorker(base, WorkerProfile(pid, accuracy=1.0, seed=seed), "", policy, self.stop)

    def _get(self, opener, path, fields=None):
        data = urllib.parse.urlencode(fields).encode() if fields is not None else None
        req = urllib.request.Request(path if path.startswith("http") else self.base + path, data=data,
                                     headers={"Accept": "application/json"}, method="POST" if data is not None else "GET")
        try:
            with opener.open(req, timeout=30) as r:
                return json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return {"error": e.read().decode("utf-8", "replace"), "status": e.code}

    def run(self):
        try:
            while not self.stop.is_set():
                study = next(iter(self.fake.studies), None)
                got = self.fake.take_place(study, self.pid) if study else None
                if got is None:                               # no free place yet: wait for one
                    time.sleep(0.05)
                    continue
                self.place(*got)                              # one place each
                return
        except Exception as exc:   # recorded and asserted on by the test
            self.errors.append(repr(exc))

    def place(self, sub, url):
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
        if self.returner:
            self.fake.return_place(sub)
            self.results.append((sub, "RETURNED", 0))
            return
        page = self._get(opener, url + "&format=json")
        done = 0
        for _ in range(200):
            act = page.get("action")
            if act == "complete":
                kind = self.fake.complete(sub, page["url"])
                self.results.append((sub, kind, done))
                return
            if act == "choose":
                page = self._get(opener, "/prolific/next?format=json") if self.extra and self._hit(opener, page) \
                    else self._get(opener, "/prolific/finish", [])
                continue
            if act == "wait":
                time.sleep(0.2)
            elif act == "hit":
                self._hit(opener, page)
            elif act == "test":
                self._test(opener, page["qualification_type_id"])
            else:
                raise AssertionError(f"{self.pid}: unexpected page {page}")
            page = self._get(opener, "/prolific/next?format=json")
            done = page.get("done", done)
        raise AssertionError(f"{self.pid}: no end")

    def _hit(self, opener, page):
        home = self._get(opener, "/")
        groups = [g for g in home.get("groups", []) if g["can_accept"]]
        if not groups:
            return False
        payload = self._get(opener, f"/groups/{groups[0]['hit_type_id']}/accept", [])
        if "assignmentId" not in payload:
            return False
        task = self.sim._task(payload, "hit")
        answers = apply_profile(task, self.policy(task), self.sim.rng)
        r = self._get(opener, "/mturk/externalSubmit", encode_submission(task, answers))
        return r.get("status") == "Submitted"

    def _test(self, opener, qid):
        from orchestrator.crowd_server.simulated_workers import SimTask, _form_fields

        r = self._get(opener, f"/qualifications/{qid}/request", [])
        form = parse_test(r["test"])
        task = SimTask(kind="qualification_test", worker=self.sim.profile, worker_id="", question=r["test"],
                       question_kind="QuestionForm", form=form, fields=_form_fields(form), qualification_type_id=qid)
        truth = self.policy(task)
        if self.wrong_test:
            truth = {k: ("no" if v == "yes" else "yes") for k, v in truth.items()}
        self._get(opener, f"/qualifications/{qid}/test", encode_submission(task, truth)[1:])


@pytest.fixture(scope="module")
def world(server):
    srv, base, assets = server
    fake = FakeProlific(TOKEN).start()
    yield srv, fake, base, assets
    fake.stop()


def _campaign(base, srv, fake, assets, name, budget, **pr):
    section = ProlificSection(api_url=fake.url, hits_per_place=2, extra_hits=2, estimated_minutes=1,
                              places_per_step=3, bonus_settle_seconds=0, wait_seconds=8, **pr)
    return make_crowd_campaign(
        base, name, endpoint_url=srv.endpoint_url, assets_dir=assets, seed=5, backend="prolific",
        n_images=10, gold_images=10, data_seed=5,
        crowd={"questions_per_hit": 3, "gold_per_hit": 2, "max_hits_in_flight": 3, "reward_usd": 0.10,
               "budget_usd": budget, "prolific": section},
        qualification={"enabled": True, "questions": 4, "pass_fraction": 0.75, "min_gold_answers": 2,
                       "min_percent_approved": 0},
        search={"kpa": 0.3, "ns": 6})


def _env(srv):
    return {**srv.env(), "PROLIFIC_TOKEN": TOKEN}


def test_campaign_through_prolific_with_kills(world):
    srv, fake, base, assets = world
    budget = 20.0
    camp = _campaign(base, srv, fake, assets, "pro", budget)
    policy = TruthPolicy(camp)
    out = json.loads(lp("poll", camp, "--json", env=_env(srv)).stdout)
    assert out["backend"] == "prolific" and fake.studies, out
    study = next(iter(fake.studies.values()))
    assert study["status"] == "ACTIVE" and study["reward"] == 20
    people = [Participant(fake, srv.endpoint_url, f"{i:024x}", policy, extra=i % 2 == 0, seed=i) for i in range(1, 40)]
    # first in line (HITs are out: the first poll posted them): one fails the qualification test
    people.insert(0, Participant(fake, srv.endpoint_url, "b" * 24, policy, wrong_test=True))
    people.insert(1, Participant(fake, srv.endpoint_url, "c" * 24, policy, returner=True))
    started = []

    def feeder():          # participants arrive over time, two at once
        for p in people:
            if stop_feed.is_set():
                return
            p.start()
            started.append(p)
            if len(started) >= 2:
                started[-2].join(timeout=120)

    stop_feed = threading.Event()
    t_feed = threading.Thread(target=feeder, daemon=True)
    t_feed.start()
    rng = random.Random(3)
    kills, t0 = 0, time.monotonic()
    lp("poll", camp, "--json", env=_env(srv))
    t_pass = time.monotonic() - t0
    final = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if kills < 10:
            p = subprocess.Popen(LABELPROP + ["poll", str(camp), "--json"], cwd=ROOT, env={**os.environ, **_env(srv)},
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                p.wait(timeout=rng.uniform(0.2, 1.0) * t_pass)
                p.communicate()
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
                kills += 1
            continue
        out = json.loads(lp("poll", camp, "--json", env=_env(srv)).stdout)
        if out["finished"]:
            final = out
            break
        time.sleep(0.2)
    stop_feed.set()
    for p in list(started):
        p.stop.set()              # a participant still waiting for a place gives up; one in a place finishes it
    t_feed.join(timeout=120)
    for p in started:
        p.stop.set()
        p.join(timeout=60)
    # settle what the last participants handed in
    for _ in range(10):
        final = json.loads(lp("poll", camp, "--json", env=_env(srv)).stdout)
        subs = list(fake.submissions.values())
        if all(s["status"] in ("APPROVED", "REJECTED", "RETURNED") for s in subs) and \
                not final["messages"] and final.get("owed_usd", 0) == 0:
            break
        time.sleep(0.3)
    summary = {k: final.get(k) for k in ("done", "hits_in_flight", "hits_by_status", "messages", "pass", "spent_usd",
                                         "budget_exhausted", "stalled", "assignments")} if final else None
    assert final is not None and final["finished"], (summary, [(p.pid, p.results, p.errors) for p in started][:12],
                                                     [(x["status"], x["entered_code"]) for x in fake.submissions.values()])
    assert kills >= 8, kills
    errors = [e for p in started for e in p.errors]
    assert not errors, errors
    results = {sub: (kind, done, p) for p in started for sub, kind, done in p.results}
    assert results, "no participant took a place"
    subs = fake.submissions
    for sub, (kind, done, p) in results.items():
        s = subs[sub]
        if p.returner:
            assert kind == "RETURNED" and s["status"] == "RETURNED" and not s["transitions"]
        elif p.wrong_test:
            assert kind == "FAILED_ATTENTION_CHECK" and s["transitions"] == ["REJECT"], (kind, s)
        else:
            assert kind in ("COMPLETED", "OTHER"), (kind, s)
            assert s["transitions"] == ["APPROVE"], s
            assert done <= 4
    # every submission handed in was transitioned exactly once
    for s in subs.values():
        assert len(s["transitions"]) == (0 if s["status"] == "RETURNED" else 1), s
    # bonuses: each approved participant with extra HITs paid exactly once, for the extra HITs
    paid = [x for x in fake.ledger if x["kind"] == "bonus"]
    by_sub = {}
    for x in paid:
        by_sub.setdefault(x["ref"], []).append(x["amount"])
    assert all(len(v) == 1 for v in by_sub.values()), by_sub
    assert paid, "no participant did extra HITs: the test would not check bonuses"
    for ref, (amount,) in by_sub.items():
        assert amount in (10, 20)
    # the campaign's spend is the fake's ledger, under the budget
    assert final["spent_usd"] == pytest.approx(fake.charged_cents / 100), (final, fake.ledger)
    assert fake.charged_cents <= budget * 100
    assert fake.studies[study["id"]]["status"] == "COMPLETED"
    print(f"kills={kills} places={len(results)} bonuses={len(paid)} spent={final['spent_usd']}")


def test_bonus_pay_with_lost_answer_is_not_paid_twice(world):
    """The pay call takes effect but its answer never arrives (a cut connection, or a pass killed
    between the call and its record): the next pass finds the payment on the submission."""
    srv, fake, base, assets = world
    from orchestrator.campaign.config import load_config
    from orchestrator.crowd.backends.prolific import ProlificBackend
    from orchestrator.crowd.backends.prolific_api import ProlificClient
    from orchestrator.crowd.backends.base import BackendError
    from orchestrator.crowd.prolific_store import ProlificBonusPay, ProlificStudy
    from orchestrator.campaign.store import open_store, transaction

    fake2 = FakeProlific(TOKEN).start()
    try:
        camp = _campaign(base, srv, fake2, assets, "lost", 5.0)
        cfg = load_config(camp)
        st = fake2._create_study({"name": "n", "internal_name": "x", "description": "d",
                                  "external_study_url": "https://h/p?a={{%PROLIFIC_PID%}}&b={{%STUDY_ID%}}&c={{%SESSION_ID%}}",
                                  "prolific_id_option": "url_parameters",
                                  "completion_codes": [{"code": "C1", "code_type": "COMPLETED",
                                                        "actions": [{"action": "MANUALLY_REVIEW"}]}],
                                  "reward": 20, "total_available_places": 1, "estimated_completion_time": 1})
        fake2.studies[st["id"]]["status"] = "ACTIVE"
        sub, _url = fake2.take_place(st["id"], "d" * 24)
        engine = open_store(camp)
        with transaction(engine) as s:
            s.add(ProlificStudy(internal_name="x", study_id=st["id"], status="ACTIVE", reward_cents=20, places=1))
        be = ProlificBackend(type("Inner", (), {"token_window_seconds": 0, "concurrency": None,
                                                "close": lambda self: None})(),
                             ProlificClient(TOKEN, fake2.url, retries=0), cfg, engine)
        fake2.drop_after_pay = 1
        with pytest.raises(BackendError) as e:          # outcome unknown: left for the next pass
            be.pay_bonus("d" * 24, sub, 10, "extra", f"lpp-{sub}")
        assert e.value.code == "invalid_state"
        assert len(fake2.submissions[sub]["bonus_payments"]) == 1      # it did pay
        be.pay_bonus("d" * 24, sub, 10, "extra", f"lpp-{sub}")           # the rerun
        be.pay_bonus("d" * 24, sub, 10, "extra", f"lpp-{sub}")
        assert fake2.submissions[sub]["bonus_payments"] == [10]
        pays = [c for c in fake2.calls if c[1].endswith("/pay/")]
        assert len(pays) == 1, fake2.calls
        from sqlmodel import Session
        with Session(engine) as s:
            assert s.get(ProlificBonusPay, f"lpp-{sub}").done
        # killed after recording the pay call but before making it: nothing on the submission; within
        # bonus_settle_seconds the pass waits (the call might still land), after it pays exactly once
        import datetime as dt
        fake2.studies[st["id"]]["total_available_places"] = 2
        sub2, _ = fake2.take_place(st["id"], "f" * 24)
        with transaction(engine) as s:
            s.add(ProlificBonusPay(token=f"lpp-{sub2}", submission_id=sub2, before=0,
                                   pay_sent_at=dt.datetime.now(dt.timezone.utc)))
        be.cfg.crowd.prolific.bonus_settle_seconds = 3600
        with pytest.raises(BackendError) as e:
            be.pay_bonus("f" * 24, sub2, 20, "extra", f"lpp-{sub2}")
        assert "never paying twice" in str(e.value) and fake2.submissions[sub2]["bonus_payments"] == []
        be.cfg.crowd.prolific.bonus_settle_seconds = 0
        be.pay_bonus("f" * 24, sub2, 20, "extra", f"lpp-{sub2}")
        be.pay_bonus("f" * 24, sub2, 20, "extra", f"lpp-{sub2}")
        assert fake2.submissions[sub2]["bonus_payments"] == [20]
        engine.dispose()
    finally:
        fake2.stop()


def test_client_retries_5xx_and_maps_4xx(world):
    from orchestrator.crowd.backends.base import BackendError, PlatformUnavailable
    from orchestrator.crowd.backends.prolific_api import ProlificClient

    _srv, fake, _base, _assets = world
    c = ProlificClient(TOKEN, fake.url, retries=3, backoff=0.01)
    fake.fail_next = 2
    assert isinstance(c.list_studies(), list)                 # two 503s, then the answer
    fake.fail_next = 5
    with pytest.raises(PlatformUnavailable):
        c.list_studies()
    fake.fail_next = 0
    with pytest.raises(BackendError) as e:
        ProlificClient("wrong", fake.url, retries=0).list_studies()
    assert e.value.platform_code == "401"
    with pytest.raises(BackendError) as e:
        c.get_submission("0" * 24)
    assert e.value.code == "not_found"


def test_fees_estimate_and_minimum_hourly_pay(world, tmp_path):
    from orchestrator.campaign.config import load_config, save_config
    from orchestrator.crowd.backends.prolific_api import prolific_fees
    from orchestrator.errors import LabelpropError

    assert prolific_fees("academic").place_cost_cents(20) == 27          # 20 + 33.3% (6.66 -> 7)
    assert prolific_fees("company").place_cost_cents(20) == 29           # 20 + 42.8% (8.56 -> 9)
    assert prolific_fees("academic").bonus_cost_cents(10) == 13
    srv, fake, base, assets = world
    camp = _campaign(base, srv, fake, assets, "est", 0.0)
    from orchestrator.actions.estimate import estimate_data

    out = estimate_data(camp)
    pr = out["prolific"]
    assert pr["places"] == -(-out["hits"] // 2) and pr["place_reward_usd"] == 0.20
    assert out["cost_usd"] == pytest.approx(pr["places"] * 0.27)
    from tests.crowd_campaign_helpers import cli

    text = cli("estimate", camp, "--runs", "1").stdout
    assert "places at $0.20 + 33.3% fee" in text and "minimum" in text, text
    cfg = load_config(camp)
    cfg.crowd.prolific.estimated_minutes = 5                  # $0.20 for 5 minutes: $2.40 an hour
    with pytest.raises(LabelpropError, match="crowd.prolific.hits_per_place.*minimum"):
        save_config(camp, cfg)
        load_config(camp)


def test_server_entry_routes(world, tmp_path):
    """The server's Prolific routes: the configuration is signed with the requester key, and once
    a study id is set only that study's participants are let in (browser path: HTML redirects)."""
    import urllib.error

    from orchestrator.campaign.config import apply_backend_defaults, default_config
    from orchestrator.crowd.backends.mturk import MTurkBackend
    from orchestrator.crowd.backends.prolific import ProlificBackend
    from orchestrator.crowd.backends.prolific_api import ProlificClient

    srv, fake, base, assets = world
    cfg = apply_backend_defaults(default_config(), "prolific")
    be = ProlificBackend(MTurkBackend(srv.client(), bundled=True), ProlificClient(TOKEN, fake.url), cfg, None)
    codes = be.codes("5f0000000000000000000abc")
    assert set(codes) == {"COMPLETED", "FAILED_ATTENTION_CHECK", "OTHER"} and len(set(codes.values())) == 3
    assert be.codes("5f0000000000000000000abc") == codes                       # kept
    req = urllib.request.Request(srv.endpoint_url + "/prolific/config", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:                           # unsigned
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 403

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **k):
            return None

    opener = urllib.request.build_opener(NoRedirect, urllib.request.HTTPCookieProcessor(CookieJar()))
    start = srv.endpoint_url + "/prolific/start?PROLIFIC_PID=" + "e" * 24 + "&SESSION_ID=s1&STUDY_ID="
    with pytest.raises(urllib.error.HTTPError) as e:
        opener.open(start + "another", timeout=10)
    assert e.value.code == 403
    with pytest.raises(urllib.error.HTTPError) as e:                           # 303: signed in, sent on
        opener.open(start + "5f0000000000000000000abc", timeout=10)
    assert e.value.code == 303 and e.value.headers["Location"] == "/prolific/next"
    with pytest.raises(urllib.error.HTTPError) as e:                           # bad participant id
        opener.open(srv.endpoint_url + "/prolific/start?PROLIFIC_PID=a%20b&STUDY_ID=x", timeout=10)
    assert e.value.code == 400


def test_test_study_command(world):
    """`labelprop prolific-test-study` creates the study once (unpublished) and starts Prolific's test run."""
    from tests.crowd_campaign_helpers import cli

    srv, _fake, base, assets = world
    fake = FakeProlific(TOKEN).start()
    try:
        camp = _campaign(base, srv, fake, assets, "tstudy", 5.0)
        env = {**_env(srv)}
        out = json.loads(cli("prolific-test-study", camp, "--json", env=env).stdout)
        again = json.loads(cli("prolific-test-study", camp, "--json", env=env).stdout)
        assert out["study_id"] == again["study_id"] and out["status"] == "UNPUBLISHED"
        assert len(fake.studies) == 1
        assert "/prolific/start?PROLIFIC_PID={{%PROLIFIC_PID%}}" in out["external_study_url"]
        assert sum(1 for c in fake.calls if c[1].endswith("/test-study") and c[2] == 200) == 2
        assert not fake.ledger
        r = cli("prolific-test-study", camp, env={k: v for k, v in env.items() if k != "PROLIFIC_TOKEN"} |
                {"PROLIFIC_TOKEN": ""}, check=False)
        assert r.returncode == 2 and "PROLIFIC_TOKEN" in r.stderr
    finally:
        fake.stop()

