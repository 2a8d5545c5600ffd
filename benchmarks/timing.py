"""The one timing harness of the benchmarks: the timed-steps loop, CPU shares from /proc/stat, RSS, load, threads.

Standard library only: `vgg-jax bench`, the suite's children (ours.py, peers_*.py), bench_*.py and gpu_bench.py
(which runs on a GPU machine with jax, flax, optax and numpy only) all measure with it.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Self

TICK_RESOLUTION_S = 0.5  # /proc/stat counts in 10 ms ticks: shorter windows give no CPU share


def process_cpu_s() -> float:
    """CPU seconds of this process and of its finished children (user + system)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def machine_busy_s() -> float | None:
    """Busy CPU seconds of the whole machine since boot (all but idle and iowait), from /proc/stat; None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [float(x) for x in f.readline().split()[1:]]
    except OSError:
        return None
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


class CpuShare:
    """CPU time other processes took while active, in cores (0 = the machine was ours); None when not measurable."""

    def __enter__(self) -> Self:
        self.other_cores: float | None = None
        self._t, self._busy, self._own = time.perf_counter(), machine_busy_s(), process_cpu_s()
        return self

    def __exit__(self, *exc) -> None:
        busy, wall = machine_busy_s(), time.perf_counter() - self._t
        if busy is None or self._busy is None or wall < TICK_RESOLUTION_S:
            return
        others = (busy - self._busy) - (process_cpu_s() - self._own)
        self.other_cores = round(max(0.0, others) / wall, 3)


def rss_bytes() -> int:
    """This process's resident set size now (VmRSS); 0 where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def peak_rss_mb() -> float | None:
    """This process's peak RSS since it started, in MiB (getrusage's high-water mark); None off Unix."""
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class RssPoller:
    """Peak VmRSS of this process, sampled every 10 ms while active (the 'during steps' peak)."""

    def __init__(self, interval: float = 0.01):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def peak_mb(self) -> float:
        return round(self.peak / 2**20, 1)


def load_1m() -> float:
    """The 1-minute load average."""
    return round(os.getloadavg()[0], 2)


def timed_steps(
    step: Callable[[], object],
    steps: int,
    warmup: int,
    around: Callable[[], AbstractContextManager] = contextlib.nullcontext,
) -> dict:
    """Runs `step()` once (first call: compile or trace), `warmup` more times, then `steps` timed times.

    `around()` wraps the timed steps only (e.g. `jax.transfer_guard("disallow")`); `step` must wait for its work.
    """
    load0 = load_1m()
    with RssPoller() as rss:
        t = time.perf_counter()
        step()
        first = time.perf_counter() - t
        for _ in range(warmup):
            step()
        times = []
        with CpuShare() as share, around():
            for _ in range(steps):
                t = time.perf_counter()
                step()
                times.append(time.perf_counter() - t)
    return {
        "first_step_s": round(first, 3),
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "times_s": [round(x, 4) for x in times],
        "steps": steps,
        "steps_peak_rss_mb": rss.peak_mb,
        "other_cores_busy": share.other_cores,
        "loadavg_steps": [load0, load_1m()],
    }


def repeat_ops(ops: dict[str, tuple[Callable[[], object], float]], repeats: int) -> dict:
    """Median and best GFLOP/s of each op (name -> (call, FLOP)) over `repeats` timed calls after one warm-up call."""
    out = {}
    for name, (fn, flops) in ops.items():
        fn()
        times = []
        with CpuShare() as share:
            for _ in range(repeats):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
        out[name] = {
            "gflop_per_s": flops / statistics.median(times) / 1e9,
            "best_gflop_per_s": flops / min(times) / 1e9,
            "gflop": flops / 1e9,
            "repeats": repeats,
            "other_cores_busy": share.other_cores,
        }
    return out


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def threads_info() -> dict:
    """CPUs this process may use, its Python threads and its OS threads (None off Linux)."""
    try:
        os_threads = len(os.listdir("/proc/self/task"))
    except OSError:
        os_threads = None
    return {"cpus": cpu_count(), "os_threads": threading.active_count(), "os_threads_total": os_threads}
