"""Crash safety: SIGKILL the server during a burst of CreateHIT calls; after restart nothing is lost or duplicated."""
from __future__ import annotations

import re
import sqlite3
import threading
import time

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from tests.crowd_server_support import crowd_form_page, html_question, start_crowd, wait_until

N_TOKENS = 400
N_THREADS = 4


def test_sigkill_during_create_burst_loses_and_duplicates_nothing(tmp_path):
    c = start_crowd(tmp_path, extra_args=["--quiet"])
    m = c.mturk
    tid = c.hit_type(Title="burst")
    question = html_question(crowd_form_page(["q"]))
    acked: dict[str, str] = {}          # token -> HITId answered 200 before the crash
    lock = threading.Lock()
    tokens = [f"burst-{i:04d}" for i in range(N_TOKENS)]

    def burst(k: int) -> None:
        client = c.srv.client(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5)
        for tok in tokens[k::N_THREADS]:
            try:
                resp = client.create_hit_with_hit_type(HITTypeId=tid, LifetimeInSeconds=3600, MaxAssignments=1,
                                                       Question=question, UniqueRequestToken=tok,
                                                       RequesterAnnotation=tok)
            except (BotoCoreError, ClientError):
                return  # the server is gone
            if "HIT" not in resp:
                # killed after its headers went out: the client read an empty body, so the HIT
                # was not acknowledged (the retry below finds out whether it exists)
                return
            with lock:
                acked[tok] = resp["HIT"]["HITId"]

    threads = [threading.Thread(target=burst, args=(k,)) for k in range(N_THREADS)]
    for t in threads:
        t.start()
    wait_until(lambda: len(acked) >= 60, timeout=30, what="part of the burst")
    c.srv.kill()                                   # SIGKILL mid-burst
    for t in threads:
        t.join(20)
    assert 60 <= len(acked) < N_TOKENS, len(acked)

    # The database is intact after the crash.
    db = sqlite3.connect(c.srv.data_dir / "crowd.sqlite3")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()

    srv2 = c.srv.restart()
    try:
        assert srv2.endpoint_url == c.srv.endpoint_url
        m2 = srv2.client(retries={"max_attempts": 1})
        # What a poller does after a crash: retry every token; the server says which already exist.
        final: dict[str, str] = {}
        existed = 0
        for tok in tokens:
            try:
                final[tok] = m2.create_hit_with_hit_type(HITTypeId=tid, LifetimeInSeconds=3600, MaxAssignments=1,
                                                         Question=question, UniqueRequestToken=tok,
                                                         RequesterAnnotation=tok)["HIT"]["HITId"]
            except m2.exceptions.RequestError as exc:
                assert exc.response["TurkErrorCode"] == "AWS.MechanicalTurk.HitAlreadyExists"
                final[tok] = re.search(r'"([A-Z0-9]+)"', exc.response["Error"]["Message"]).group(1)
                existed += 1
        assert existed >= len(acked)
        for tok, hit_id in acked.items():           # nothing acknowledged was lost
            assert final[tok] == hit_id
        hits = [h for h in m2.get_paginator("list_hits").paginate(PaginationConfig={"PageSize": 100})
                .build_full_result()["HITs"] if h["HITTypeId"] == tid]
        assert len(hits) == N_TOKENS                 # nothing duplicated
        assert sorted(h["RequesterAnnotation"] for h in hits) == sorted(tokens)
        assert {h["HITId"] for h in hits} == set(final.values())
        for h in hits[:5]:
            assert m2.get_hit(HITId=h["HITId"])["HIT"]["Question"] == question
    finally:
        assert srv2.stop() == 0
