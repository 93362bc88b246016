"""Where the clustering units run: in this process, in worker processes (``--jobs``) or on a
Ray cluster (``--ray ADDRESS``); and the memory check made before anything starts.

:func:`clustering.build.cluster_classes` decides the units (an exact class, or the part trees
of about sixteen parts of a two-level class) and hands each to an executor's ``submit``;
the executors here only put the units on an existing engine:

* :class:`InlineExecutor` runs each unit at once, in this process;
* :class:`ProcessExecutor` is a ``concurrent.futures.ProcessPoolExecutor``; workers are
  forked with the features (an ``np.memmap`` of ``features.npy`` in a campaign) and scores
  already in memory, so units carry only row indices, and each uses ``cpus // jobs`` BLAS
  threads;
* :class:`RayExecutor` submits the same functions as Ray tasks (``num_cpus=1`` and a
  ``memory`` request each, so Ray's scheduler never over-commits a node), with the
  features and scores put in Ray's object store once; ``ObjectRef.future()`` turns each
  task into a ``concurrent.futures.Future``.
"""
from __future__ import annotations

import multiprocessing
import os
import re
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Callable

import numpy as np

from orchestrator.errors import LabelpropError

__all__ = ["InlineExecutor", "ProcessExecutor", "RayExecutor", "open_executor",
           "available_memory", "total_memory", "parse_size", "check_memory", "run_classes",
           "RAY_LOOPBACK_ENV"]

#: With this set to 0 in the environment Ray binds every server to 127.0.0.1 (a local
#: instance for tests and single-machine use); ``ray start`` needs it too.
RAY_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


# ------------------------------------------------------------------------------ memory
def _meminfo() -> dict[str, int]:
    out = {}
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                k, v = line.split(":", 1)
                parts = v.split()
                out[k] = int(parts[0]) * (1024 if len(parts) > 1 and parts[1] == "kB" else 1)
    except OSError:
        pass
    return out


def _cgroup_limit() -> tuple[int | None, int | None]:
    """(limit, usage) of this process's cgroup v2, when it has a limit."""
    try:
        with open("/sys/fs/cgroup/memory.max") as fh:
            raw = fh.read().strip()
        if raw == "max":
            return None, None
        with open("/sys/fs/cgroup/memory.current") as fh:
            return int(raw), int(fh.read().strip())
    except (OSError, ValueError):
        return None, None


def total_memory() -> int:
    """The machine's memory (or this process's cgroup limit, if lower), in bytes."""
    total = _meminfo().get("MemTotal")
    if total is None:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    limit, _ = _cgroup_limit()
    return int(min(total, limit) if limit else total)


def available_memory() -> int:
    """Memory that can be used now without swapping (MemAvailable, cgroup headroom), bytes."""
    info = _meminfo()
    avail = info.get("MemAvailable")
    if avail is None:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    limit, used = _cgroup_limit()
    if limit:
        avail = min(avail, limit - used)
    return int(avail)


_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1000, "kib": 1 << 10, "m": 1 << 20, "mb": 10**6,
          "mib": 1 << 20, "g": 1 << 30, "gb": 10**9, "gib": 1 << 30, "t": 1 << 40, "tb": 10**12,
          "tib": 1 << 40}


def parse_size(text: str) -> int:
    """``"8GiB"``, ``"512M"``, ``"2.5 GB"`` or a number of bytes -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise LabelpropError(f"--max-memory: cannot read {text!r} as a size (e.g. 8GiB, 512MiB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def check_memory(sizes: dict[int, int], d: int, exact_limit: int, part_size: int, n_reps: int,
                 jobs: int, limit: int, remote: bool = False, n_masks: int | None = None,
                 n_clustered: int | None = None) -> int:
    """Predicted peak (bytes); raises a one-line LabelpropError with what to change when it
    exceeds ``limit``.  ``remote``: the units run elsewhere (Ray), only this process counts."""
    from clustering.memory import (BASE_BYTES, fmt_bytes, max_exact_n, plan_memory,
                                   two_level_bytes)

    plan = plan_memory(sizes, d, exact_limit, part_size, n_reps, 0 if remote else jobs, n_masks,
                       n_clustered)
    if plan.peak <= limit:
        return plan.peak
    if plan.worst_class is None:
        raise LabelpropError(f"building the forest needs about {fmt_bytes(plan.peak)}, more than "
                             f"the {fmt_bytes(limit)} available; free memory or raise --max-memory")
    c = plan.worst_class
    n = sizes[c] if c is not None else 0
    head = (f"clustering needs about {fmt_bytes(plan.peak)}, more than the {fmt_bytes(limit)} "
            f"available")
    what = (f"class {c} ({n:,} masks, exact complete linkage: its distance matrix alone is "
            f"{fmt_bytes(8 * n * (n - 1) / 2)})" if plan.worst_exact
            else f"class {c} ({n:,} masks in two levels, parts of at most {part_size:,})")
    tips = []
    if jobs > 1 and not remote:
        one = plan_memory(sizes, d, exact_limit, part_size, n_reps, 1, n_masks, n_clustered).peak
        if one <= limit:
            tips.append("--jobs 1")
    if plan.worst_exact:
        fit = max_exact_n(limit // max(1, 1 if remote else min(jobs, len(sizes))), d)
        new = min(fit, n - 1) // 1000 * 1000
        if new >= 2:
            tips.append(f"--exact-limit {new} (larger classes are clustered in two levels)")
    else:
        best = None
        for p in (250, 500, 1000, 2000, 4000, 8000):
            if BASE_BYTES + two_level_bytes(n, d, p, n_reps) <= limit:
                best = p if best is None or abs(np.log(p / part_size)) < abs(np.log(best / part_size)) else best
        if best is not None and best != part_size:
            tips.append(f"--part-size {best}")
    use = ("use " + " or ".join(tips) + ", or ") if tips else ""
    raise LabelpropError(f"{head}: {what} ({plan.detail}); {use}free memory or raise --max-memory")


# ------------------------------------------------------------------------------ executors
class InlineExecutor:
    """Runs every unit at once in this process."""

    def __init__(self, features, scores):
        self.features, self.scores = features, scores

    def submit(self, fn, *args, memory: int = 0) -> Future:
        from clustering.build import _inline

        return _inline(fn, self.features, self.scores, *args)

    def close(self, cancel: bool = False) -> None:
        pass


_WORKER: dict = {}


def _init_worker(features, scores, threads: int) -> None:
    """Worker start-up: keep the arrays (inherited through fork) and cap BLAS threads."""
    _WORKER["features"] = features
    _WORKER["scores"] = scores
    try:
        from threadpoolctl import threadpool_limits

        _WORKER["limits"] = threadpool_limits(limits=threads)
    except ImportError:                                   # pragma: no cover
        pass


def _in_worker(fn, *args):
    return fn(_WORKER["features"], _WORKER["scores"], *args)


class ProcessExecutor:
    """``jobs`` worker processes (fork where available: the arrays are inherited, not copied)."""

    def __init__(self, features, scores, jobs: int):
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        threads = max(1, (os.cpu_count() or 1) // jobs)
        self.ex = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init_worker,
                                      initargs=(features, scores, threads))

    def submit(self, fn, *args, memory: int = 0) -> Future:
        return self.ex.submit(_in_worker, fn, *args)

    def close(self, cancel: bool = False) -> None:
        self.ex.shutdown(wait=True, cancel_futures=cancel)


def _reachable(address: str, timeout: float = 10.0) -> None:
    """Fail fast (Ray itself retries for minutes) when nothing listens at ``address``."""
    import socket

    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise LabelpropError(f"--ray {address}: give host:port of the Ray head (or ray://host:port)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise LabelpropError(f"--ray {address}: cannot connect to the Ray cluster: "
                             f"{exc.strerror or exc}") from None


class RayExecutor:
    """Ray tasks on the cluster at ``address`` (``ray://host:port`` for Ray Client, or the
    GCS ``host:port`` of a running ``ray start --head``)."""

    def __init__(self, features, scores, address: str):
        try:
            import ray
        except ImportError:
            raise LabelpropError("--ray needs Ray: pip install 'labelprop[ray]'") from None
        self.ray = ray
        self._own = not ray.is_initialized()
        if self._own and address not in ("auto", "local"):
            _reachable(address)
        if self._own:
            try:
                ray.init(address=address, log_to_driver=False, logging_level="ERROR",
                         configure_logging=False)
            except Exception as exc:       # ConnectionError and Ray's own errors
                raise LabelpropError(f"--ray {address}: cannot connect to the Ray cluster: "
                                     f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        self.features = ray.put(np.asarray(features))
        self.scores = ray.put(np.asarray(scores))
        self._remote: dict = {}
        self._node_memory = max((float(nd.get("Resources", {}).get("memory", 0))
                                 for nd in ray.nodes() if nd.get("Alive")), default=0.0)

    def submit(self, fn, *args, memory: int = 0) -> Future:
        from clustering.memory import fmt_bytes

        if memory and self._node_memory and memory > self._node_memory:
            raise LabelpropError(f"a clustering unit needs about {fmt_bytes(memory)}, more than any "
                                 f"Ray node offers ({fmt_bytes(self._node_memory)}); lower "
                                 f"--exact-limit (larger classes are clustered in two levels)")
        r = self._remote.get(fn)
        if r is None:
            r = self._remote[fn] = self.ray.remote(fn)
        opts = {"num_cpus": 1, "max_retries": 2}
        if memory:
            opts["memory"] = int(memory)
        return r.options(**opts).remote(self.features, self.scores, *args).future()

    def close(self, cancel: bool = False) -> None:
        if self._own:
            self.ray.shutdown()


def open_executor(features, scores, jobs: int = 1, ray_address: str | None = None):
    if ray_address:
        return RayExecutor(features, scores, ray_address)
    if jobs > 1:
        return ProcessExecutor(features, scores, jobs)
    return InlineExecutor(features, scores)


def run_classes(features, scores, members: dict[int, np.ndarray], params, on_done,
                jobs: int = 1, ray_address: str | None = None,
                progress: Callable[[str, int, int, int], None] | None = None,
                tick: Callable[[], None] | None = None) -> None:
    """:func:`clustering.build.cluster_classes` on the chosen executor."""
    from clustering.build import cluster_classes

    if not members:
        return
    ex = open_executor(features, scores, jobs, ray_address)
    ok = False
    try:
        cluster_classes(features, scores, members, params, on_done, submit=ex.submit,
                        max_pending=4 * max(jobs, 2) if not ray_address else 256,
                        progress=progress, tick=tick)
        ok = True
    finally:
        ex.close(cancel=not ok)
