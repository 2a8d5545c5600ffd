"""Runs the suite's jobs and collects their JSON: interleaved passes, the extras, the compilation-cache check.

Every job (one variant at one batch size) runs in its own process under benchmarks/child.py's wrapper, so
its peak RSS is its own. Jobs are interleaved: each pass runs them all, the second pass in reverse order,
so a slow phase of the machine does not land on one variant. A peer that is not installed comes back as
skipped, a job that fails as an error: the run goes on either way.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from benchmarks.child import REPO, run_child
from benchmarks.jobs import STEP_KINDS, Job
from benchmarks.jobs import extras as extra_jobs

JOB_TIMEOUT_S = 1800
VERSIONED = ("jax", "jaxlib", "flax", "optax", "numpy", "keras", "tensorflow", "torch")
CACHE_SETTINGS = (("cli", None), ("min_compile_time_0", 0.0))  # (name, jax's min compile time to cache, or the CLI's)


def run_passes(selected: list[Job], passes: int, steps: int) -> list[dict]:
    """Every job once per pass, every second pass in reverse order; one record per job and pass."""
    records = []
    for n in range(1, passes + 1):
        order = selected if n % 2 else selected[::-1]
        for i, job in enumerate(order, 1):
            argv = list(job.argv) + (["--steps", str(steps)] if job.kind in STEP_KINDS else [])
            result = run_child(argv, job.env, timeout=JOB_TIMEOUT_S)
            record = {"name": job.name, "group": job.group, "label": job.label, "batch": job.batch, "kind": job.kind,
                      "variant": job.variant, "pass": n, "result": result}  # fmt: skip
            records.append(record)
            print(progress(i, len(order), record), flush=True)
    return records


def run_extras(quick: bool, workdir: str) -> dict:
    """Decode and convert (full runs only), then the compilation-cache check; name -> {label, result}."""
    out = {}
    for job in extra_jobs(quick, workdir):
        out[job.name] = {"label": job.label, "result": run_child(list(job.argv), job.env, timeout=JOB_TIMEOUT_S)}
        print(f"extra {job.name}: {json.dumps(out[job.name]['result'])[:200]}", flush=True)
    out["compilation_cache"] = {"label": "persistent compilation cache", "result": compilation_cache(quick)}
    print(f"extra compilation_cache: {json.dumps(out['compilation_cache'])[:300]}", flush=True)
    return out


def compilation_cache(quick: bool) -> dict:
    """`vgg-jax bench` twice in fresh processes on one empty cache folder: compile and first-step times.

    Also run with jax's minimum compile time for caching lowered to 0 (the CLI uses 0.1 s), to show
    what that would change for steps that compile faster than the threshold.
    """
    bench = ["bench", "--variants", "infer,frozen,full", "--batch-sizes", "4" if quick else "8", "--steps", "1",
             "--warmup", "0", *(["--tiny"] if quick else [])]  # fmt: skip
    out = {}
    for setting, min_s in CACHE_SETTINGS:
        with tempfile.TemporaryDirectory(prefix="vgg-jax-cache-") as cache:
            runs = []
            for _ in range(2):
                run = _bench_process(bench, Path(cache), min_s)
                if "error" in run:
                    return run
                runs.append(run)
            folder = Path(cache) / "jax"
            out[setting] = {"runs": runs, "cache_entries": sum(1 for _ in folder.glob("*")) if folder.exists() else 0}
    return out


def _bench_process(bench: list[str], cache: Path, min_compile_s: float | None) -> dict:
    """One `vgg-jax bench` process on `cache`: its wall time and per-variant compile rows, or {"error": ...}."""
    code = "import sys; from vgg_jax import cli\n"
    if min_compile_s is not None:
        code += (
            "enable = cli.enable_compilation_cache\n"
            "def patched():\n    enable()\n    import jax\n"
            f"    jax.config.update('jax_persistent_cache_min_compile_time_secs', {min_compile_s})\n"
            "cli.enable_compilation_cache = patched\n"
        )
    code += "sys.exit(cli.main(sys.argv[1:]))"
    json_path = cache / "rows.jsonl"
    json_path.unlink(missing_ok=True)
    env = {**os.environ, "VGG_JAX_CACHE": str(cache), "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code, *bench, "--json", str(json_path)],
                       env=env, capture_output=True, text=True, cwd=REPO, check=False)  # fmt: skip
    wall = time.perf_counter() - t
    if r.returncode:
        return {"error": r.stderr[-1500:]}
    rows = [json.loads(line) for line in json_path.read_text().splitlines()]
    keys = ("trace_s", "compile_s", "first_step_s", "median_s")
    return {"process_wall_s": wall, "rows": {x["variant"]: {k: round(x[k], 3) for k in keys} for x in rows}}


def versions() -> dict:
    """Python, the machine, its CPU model and the installed frameworks' versions (None if missing)."""
    out = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()}
    for mod in VERSIONED:
        try:
            out[mod] = metadata.version(mod)
        except metadata.PackageNotFoundError:
            out[mod] = None
    try:
        pairs = (line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().splitlines() if ":" in line)
        info = {k.strip(): v for k, v in pairs}
        out["cpu"] = f"{info['model name'].strip()} (family {info['cpu family'].strip()})"
    except (OSError, KeyError):
        out["cpu"] = platform.processor()
    return out


def progress(i: int, total: int, record: dict) -> str:
    """One line per finished job: img/s, first step, RSS and load for step jobs; GFLOP/s for ceilings."""
    r, batch = record["result"], record["batch"]
    head = f"[pass {record['pass']} {i}/{total}] {record['name']} b{batch or '-'}"
    if "error" in r:
        return f"{head}: ERROR {r['error'][-300:]}"
    if "skipped" in r:
        return f"{head}: skipped ({r['skipped']})"
    if "median_s" in r and batch:
        return (
            f"{head}: {batch / r['median_s']:.2f} img/s, first {r.get('first_step_s')} s, "
            f"rss {r.get('steps_peak_rss_mb')} MB, other cores {r.get('other_cores_busy')}"
        )
    return f"{head}: " + ", ".join(f"{k} {v['gflop_per_s']:.0f} GF/s" for k, v in r.items() if isinstance(v, dict))
