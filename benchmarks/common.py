"""Shared by the benchmark runner and its child scripts: process isolation, memory and load sampling, versions.

Every measurement runs in a child process started by a small wrapper process, so the child's peak RSS
(`ru_maxrss` of the wrapper's children) is its own, not the runner's high-water mark inherited by a fork.
A child prints exactly one line `RESULT {json}`; a peer whose framework is missing prints
`RESULT {"skipped": "..."}` and exits 0.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Self

REPO = Path(__file__).resolve().parents[1]
# The wrapper starts the child, waits, and reports the child's (not its own) peak RSS.
WRAPPER = r"""
import json, resource, subprocess, sys, time
t = time.perf_counter()
r = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({"rc": r.returncode, "wall_s": time.perf_counter() - t,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                  "stdout": r.stdout[-20000:], "stderr": r.stderr[-4000:]}))
"""
QUIET = {"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore", "JAX_PLATFORMS": "cpu"}


def run_child(argv: list[str], env: dict[str, str] | None = None, timeout: float = 1800) -> dict:
    """Runs `python argv...` under the wrapper; returns the child's RESULT dict plus process facts."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    full_env = {**os.environ, **QUIET, "PYTHONPATH": path, **(env or {})}
    load0 = os.getloadavg()
    try:
        r = subprocess.run(
            [sys.executable, "-c", WRAPPER, sys.executable, *argv],
            check=False,
            capture_output=True,
            text=True,
            env=full_env,
            timeout=timeout,
            cwd=REPO,
        )
        outer = json.loads(r.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "loadavg_before": load0}
    except (json.JSONDecodeError, IndexError):
        return {"error": f"wrapper failed: {r.stderr[-2000:]}", "loadavg_before": load0}
    lines = [line for line in outer["stdout"].splitlines() if line.startswith("RESULT ")]
    facts = {
        "process_peak_rss_mb": round(outer["peak_rss_mb"], 1),
        "process_wall_s": round(outer["wall_s"], 2),
        "loadavg_before": [round(x, 2) for x in load0],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    if outer["rc"] != 0 or not lines:
        return {"error": f"rc={outer['rc']}: {outer['stderr'][-1500:]}", **facts}
    return {**json.loads(lines[-1][len("RESULT ") :]), **facts}


def emit(result: dict) -> None:
    """The child's one result line."""
    print("RESULT " + json.dumps(result), flush=True)


def skip(reason: str) -> None:
    emit({"skipped": reason})
    sys.exit(0)


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


def rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class CpuShare:
    """CPU time other processes took while active, in cores (0 = the machine was ours), from /proc/stat."""

    def __enter__(self) -> Self:
        self._t, self._busy, self._own = time.perf_counter(), *self._read()
        self.other_cores = None
        return self

    def __exit__(self, *exc) -> None:
        busy, own = self._read()
        if busy is not None and self._busy is not None:
            wall = time.perf_counter() - self._t
            if wall < 0.5:  # /proc/stat counts in 10 ms ticks: too coarse for shorter windows
                return
            self.other_cores = round(max(0.0, (busy - self._busy) - (own - self._own)) / wall, 3)

    @staticmethod
    def _read() -> tuple[float | None, float]:
        own = os.times()
        mine = own.user + own.system + own.children_user + own.children_system
        try:
            with open("/proc/stat") as f:
                v = [float(x) for x in f.readline().split()[1:]]
        except OSError:
            return None, mine
        return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK"), mine


def timed_steps(step, steps: int, warmup: int) -> dict:
    """Runs `step()` once (first call: compile or trace), `warmup` more times, then `steps` timed times."""
    import statistics

    load0 = os.getloadavg()[0]
    with RssPoller() as rss:
        t = time.perf_counter()
        step()
        first = time.perf_counter() - t
        for _ in range(warmup):
            step()
        times = []
        with CpuShare() as share:
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
        "loadavg_steps": [round(load0, 2), round(os.getloadavg()[0], 2)],
    }


def threads_info() -> dict:
    return {
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "os_threads": threading.active_count(),
        "os_threads_total": _os_threads(),
    }


def _os_threads() -> int | None:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


def add_step_arguments(p) -> None:
    """The options every benchmark child shares: batch, timed and warm-up steps, ceiling repeats, tiny VGG."""
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5, help="ceiling/convert repeats")
    p.add_argument("--tiny", action="store_true")
