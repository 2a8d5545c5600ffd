"""The child-process protocol of the benchmark runner: isolation, one RESULT line, the options children share.

Every measurement runs in a child process started by a small wrapper process, so the child's peak RSS
(`ru_maxrss` of the wrapper's children) is its own, not the runner's high-water mark inherited by a fork.
A child prints exactly one line `RESULT {json}`; a peer whose framework is missing prints
`RESULT {"skipped": "..."}` and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

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
# The smoke-test network of every benchmark's --tiny (ours and the peers'): VGG11's depths, narrow layers, 32 px.
TINY_VGG = {"depths": (1, 1, 2, 2, 2), "widths": (8, 8, 16, 16, 16), "fc_units": 32, "size": 32}
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
    """The result line of a peer whose framework is missing; exits 0."""
    emit({"skipped": reason})
    sys.exit(0)


def add_step_arguments(p: argparse.ArgumentParser) -> None:
    """The options every benchmark child shares: batch, timed and warm-up steps, ceiling repeats, tiny VGG."""
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5, help="ceiling/convert repeats")
    p.add_argument("--tiny", action="store_true")
