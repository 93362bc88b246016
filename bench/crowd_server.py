#!/usr/bin/env python
"""Throughput and latency of the crowd server with 10,000 HITs stored.

Starts the server as a subprocess on a free port (as the tests do), stores
--hits HITs, lets simulated workers submit assignments on some of them, then
measures from --threads concurrent boto3 clients:

- CreateHITWithHITType (with UniqueRequestToken, as labelprop's poller calls it)
- ListAssignmentsForHIT (on random stored HITs, some with submitted assignments)

and prints one JSON object: requests per second and p50/p99 latency (ms, client side).

    .venv/bin/python bench/crowd_server.py                 # defaults: 10000 HITs, 2000 requests, 4 threads
    .venv/bin/python bench/crowd_server.py --hits 2000 --requests 500
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.crowd_server.simulated_workers import WorkerProfile  # noqa: E402
from orchestrator.crowd_server.testing import start_server  # noqa: E402

QUESTION = ('<HTMLQuestion xmlns="http://mechanicalturk.amazonaws.com/AWSMechanicalTurkDataSchemas/2011-11-11/'
            'HTMLQuestion.xsd"><HTMLContent><![CDATA[<!DOCTYPE html><html><head><script src="https://assets.crowd.aws/'
            'crowd-html-elements.js"></script></head><body><crowd-form>' +
            "".join(f'<p>mask {i}<input type="radio" name="m{i}" value="yes"><input type="radio" name="m{i}" '
                    f'value="no"></p>' for i in range(50)) +
            "</crowd-form></body></html>]]></HTMLContent><FrameHeight>0</FrameHeight></HTMLQuestion>")


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def run(clients, n: int, call) -> dict:
    lat: list[float] = []
    lock = threading.Lock()
    counter = iter(range(n))
    clock = threading.Lock()

    def worker(k: int) -> None:
        c = clients[k]
        mine = []
        while True:
            with clock:
                i = next(counter, None)
            if i is None:
                break
            t0 = time.perf_counter()
            call(c, i)
            mine.append(time.perf_counter() - t0)
        with lock:
            lat.extend(mine)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(clients)) as ex:
        list(ex.map(worker, range(len(clients))))
    wall = time.perf_counter() - t0
    return {"requests": len(lat), "seconds": round(wall, 3), "requests_per_second": round(len(lat) / wall, 1),
            "p50_ms": round(1000 * statistics.median(lat), 2), "p99_ms": round(1000 * percentile(lat, 0.99), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hits", type=int, default=10000, help="HITs stored before measuring (default 10000)")
    ap.add_argument("--requests", type=int, default=2000, help="requests per measured operation (default 2000)")
    ap.add_argument("--threads", type=int, default=4, help="concurrent boto3 clients (default 4)")
    ap.add_argument("--worked-hits", type=int, default=200, help="HITs that get submitted assignments (default 200)")
    ap.add_argument("--sync", choices=["full", "normal"], default="full", help="server --sync mode (default full)")
    ap.add_argument("--data-dir", type=Path, default=None, help="server data dir (default: a temporary one)")
    a = ap.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="crowd-bench-")
    data_dir = a.data_dir or Path(tmp.name) / "data"
    srv = start_server(data_dir, extra_args=["--quiet", "--sync", a.sync, "--balance", "1000000.00"])
    try:
        clients = [srv.client(retries={"max_attempts": 1}) for _ in range(a.threads)]
        tid = clients[0].create_hit_type(Reward="0.01", Title="bench", Description="bench HITs",
                                         AssignmentDurationInSeconds=600, AutoApprovalDelayInSeconds=86400)["HITTypeId"]
        hit_ids: list[str] = []
        ids_lock = threading.Lock()

        def create(c, i, prefix="seed"):
            h = c.create_hit_with_hit_type(HITTypeId=tid, LifetimeInSeconds=86400, MaxAssignments=3, Question=QUESTION,
                                           UniqueRequestToken=f"{prefix}-{i}", RequesterAnnotation=f"{prefix}-{i}")
            with ids_lock:
                hit_ids.append(h["HIT"]["HITId"])

        seed = run(clients, a.hits, create)
        # Submitted assignments on some HITs, through the worker-side HTTP endpoints.
        pool = srv.simulate([WorkerProfile(f"bench-{k}", spammer=True, spam_answer="yes",
                                           max_hits=a.worked_hits) for k in range(3)])
        deadline = time.time() + 300
        while any(w.stats.submitted < a.worked_hits for w in pool.workers) and time.time() < deadline:
            time.sleep(0.2)
        pool.stop()
        submitted = sum(w.stats.submitted for w in pool.workers)

        created = run(clients, a.requests, lambda c, i: create(c, i, prefix="measure"))
        rng = random.Random(0)
        stored = list(hit_ids)
        listed = run(clients, a.requests,
                     lambda c, i: c.list_assignments_for_hit(HITId=rng.choice(stored), MaxResults=100))
        health = srv.health()
        result = {
            "hits_stored_before_measuring": a.hits,
            "hits_stored_at_end": health["hits"],
            "assignments_submitted": submitted,
            "client_threads": a.threads,
            "server": "stdlib ThreadingHTTPServer, SQLite (WAL, synchronous=%s) via sqlmodel" % a.sync.upper(),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "seed_CreateHITWithHITType": seed,
            "CreateHITWithHITType": created,
            "ListAssignmentsForHIT": listed,
        }
        print(json.dumps(result, indent=2))
    finally:
        srv.stop()
        tmp.cleanup()


if __name__ == "__main__":
    main()
