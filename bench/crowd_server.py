#!/usr/bin/env python
"""Throughput and latency of the crowd server with 10,000 HITs stored.

Starts the server as a subprocess on a free port (as the tests do), stores
--hits HITs, lets simulated workers submit assignments on some of them, then
measures from --threads concurrent boto3 clients:

- CreateHITWithHITType (with UniqueRequestToken, as labelprop's poller calls it)
- ListAssignmentsForHIT (on random stored HITs, some with submitted assignments)

and from --workers concurrent workers using the worker routes as a browser does
(sign in, then accept a HIT of a group and submit its form, over and over):

- worker requests (accept + submit), and HITs answered per second

and prints one JSON object: requests per second and p50/p99 latency (ms, client side),
plus the server's peak resident memory.

``--compare DIR`` measures the server of another checkout first (e.g. the main branch,
run with ``--compare-python DIR/.venv/bin/python``), then this one, in the same run on
the same machine, and prints both ("before" and "after") with the ratios.

    .venv/bin/python bench/crowd_server.py                 # defaults: 10000 HITs, 2000 requests, 4 threads
    .venv/bin/python bench/crowd_server.py --hits 2000 --requests 500
    nice -n 10 .venv/bin/python bench/crowd_server.py --compare /work/main --compare-python /work/main/.venv/bin/python
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

from orchestrator.crowd_server.simulated_workers import WorkerProfile, WorkerSession  # noqa: E402
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


def summary(lat: list[float], wall: float) -> dict:
    return {"requests": len(lat), "seconds": round(wall, 3), "requests_per_second": round(len(lat) / wall, 1),
            "p50_ms": round(1000 * statistics.median(lat), 2), "p99_ms": round(1000 * percentile(lat, 0.99), 2)}


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
    return summary(lat, time.perf_counter() - t0)


def workers_answering(srv, tid: str, n_workers: int, hits_each: int) -> dict:
    """n_workers browser-like sessions at once: accept a HIT of the group, submit its form, repeat."""
    tokens = [srv.add_worker(f"bench-w{k}-{int(time.time() * 1000) % 10**7}")["token"] for k in range(n_workers)]
    answers = [("taskAnswers", json.dumps([{f"m{i}": "yes" for i in range(50)}]))]
    lat: list[float] = []
    lock = threading.Lock()
    errors = []
    start = threading.Barrier(n_workers + 1)

    def one(token: str) -> None:
        s = WorkerSession(srv.endpoint_url, token, cafile=srv.ca_file)
        mine, done = [], 0
        start.wait()
        while done < hits_each:
            t0 = time.perf_counter()
            p = s.request("POST", f"/groups/{tid}/accept")
            mine.append(time.perf_counter() - t0)
            if "assignmentId" not in p:
                errors.append(p.get("error"))
                break
            t0 = time.perf_counter()
            r = s.request("POST", "/mturk/externalSubmit", [("assignmentId", p["assignmentId"])] + answers)
            mine.append(time.perf_counter() - t0)
            if r.get("status") != "Submitted":
                errors.append(r.get("error"))
                break
            done += 1
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=one, args=(t,)) for t in tokens]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    out = summary(lat, wall)
    out.update(workers=n_workers, hits_answered=len(lat) // 2, hits_answered_per_second=round(len(lat) / 2 / wall, 1),
               errors=len(errors))
    return out


def peak_rss_mib(pid: int) -> float | None:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def measure(a, data_dir: Path, python: str | None = None, repo: str | None = None) -> dict:
    srv = start_server(data_dir, extra_args=["--quiet", "--sync", a.sync, "--balance", "1000000.00"],
                       python=python, repo=repo, timeout=120)
    try:
        clients = [srv.client(retries={"max_attempts": 1}) for _ in range(a.threads)]
        tid = clients[0].create_hit_type(Reward="0.01", Title="bench", Description="bench HITs",
                                         AssignmentDurationInSeconds=600, AutoApprovalDelayInSeconds=86400)["HITTypeId"]
        hit_ids: list[str] = []
        ids_lock = threading.Lock()

        def create(c, i, prefix="seed", type_id=tid):
            h = c.create_hit_with_hit_type(HITTypeId=type_id, LifetimeInSeconds=86400, MaxAssignments=3,
                                           Question=QUESTION, UniqueRequestToken=f"{prefix}-{i}",
                                           RequesterAnnotation=f"{prefix}-{i}")
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
        # A group only the browser-like workers answer.
        wtid = clients[0].create_hit_type(Reward="0.02", Title="bench workers", Description="answered by workers",
                                          AssignmentDurationInSeconds=600, AutoApprovalDelayInSeconds=86400)["HITTypeId"]
        run(clients, a.workers * a.hits_per_worker, lambda c, i: create(c, i, prefix="wk", type_id=wtid))
        answering = workers_answering(srv, wtid, a.workers, a.hits_per_worker)
        health = srv.health()
        return {
            "hits_stored_before_measuring": a.hits,
            "hits_stored_at_end": health["hits"],
            "assignments_submitted": submitted,
            "client_threads": a.threads,
            "server_repo": str(Path(repo).resolve()) if repo else str(Path(__file__).resolve().parents[1]),
            "seed_CreateHITWithHITType": seed,
            "CreateHITWithHITType": created,
            "ListAssignmentsForHIT": listed,
            "workers_answering_HITs": answering,
            "server_peak_rss_mib": peak_rss_mib(srv.process.pid),
        }
    finally:
        srv.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hits", type=int, default=10000, help="HITs stored before measuring (default 10000)")
    ap.add_argument("--requests", type=int, default=2000, help="requests per measured operation (default 2000)")
    ap.add_argument("--threads", type=int, default=4, help="concurrent boto3 clients (default 4)")
    ap.add_argument("--worked-hits", type=int, default=200, help="HITs that get submitted assignments (default 200)")
    ap.add_argument("--workers", type=int, default=50, help="concurrent browser-like workers (default 50)")
    ap.add_argument("--hits-per-worker", type=int, default=10, help="HITs each of them answers (default 10)")
    ap.add_argument("--sync", choices=["full", "normal"], default="full", help="server --sync mode (default full)")
    ap.add_argument("--data-dir", type=Path, default=None, help="server data dir (default: a temporary one)")
    ap.add_argument("--compare", metavar="DIR", default=None,
                    help="also measure the server of the checkout in DIR, first (\"before\")")
    ap.add_argument("--compare-python", metavar="PYTHON", default=None,
                    help="the interpreter for --compare (default: DIR/.venv/bin/python)")
    a = ap.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="crowd-bench-")
    base = a.data_dir or Path(tmp.name)
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(),
               "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
    try:
        if a.compare:
            py = a.compare_python or str(Path(a.compare) / ".venv" / "bin" / "python")
            before = measure(a, base / "before", python=py, repo=a.compare)
            after = measure(a, base / "after")

            def ratio(key: str, field: str = "requests_per_second") -> float:
                return round(after[key][field] / before[key][field], 2)

            result = {"machine": machine, "before": before, "after": after,
                      "after_over_before_requests_per_second": {
                          k: ratio(k) for k in ("CreateHITWithHITType", "ListAssignmentsForHIT",
                                                "workers_answering_HITs")}}
        else:
            result = {"machine": machine, **measure(a, base / "data")}
        result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        print(json.dumps(result, indent=2))
    finally:
        tmp.cleanup()


if __name__ == "__main__":
    main()
