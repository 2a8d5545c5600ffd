"""The benchmark suite: ours and the peers side by side, interleaved in one run; writes JSON, markdown, PNG.

    .venv/bin/python benchmarks/run_all.py                   # full run (about 35 min on 2 cores), -> benchmarks/
    .venv/bin/python benchmarks/run_all.py --quick --out DIR # tiny VGG, 32x32, batch 4, 2 steps (the test)
    .venv/bin/python benchmarks/run_all.py --report-only benchmarks/results.json  # re-render RESULTS.md, chart

What runs: benchmarks/jobs.py (the job table and the goals); how: benchmarks/runner.py (one process per
job, interleaved passes); what it writes: benchmarks/report.py (results.json is this file's).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import jobs, report, runner
from benchmarks.child import REPO


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The suite's options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny VGG at 32x32, batch 4, 2 steps, 1 pass")
    p.add_argument("--passes", type=int, help="interleaved passes (default 2, quick 1)")
    p.add_argument("--batches", help="batch sizes (default 8,32; quick 4)")
    p.add_argument("--steps", type=int, help="timed steps per job (default 5; quick 2)")
    p.add_argument("--only", help="comma-separated job-name prefixes, e.g. ours-infer,ours-frozen,torch,ceiling")
    p.add_argument("--no-extras", action="store_true", help="skip decode, convert and the compilation-cache check")
    p.add_argument("--out", help="output folder (default benchmarks/; quick: a temp folder)")
    p.add_argument("--workdir", default="/tmp/vgg-jax-bench", help="generated JPEGs and Keras file")
    p.add_argument("--report-only", metavar="RESULTS_JSON", help="re-render RESULTS.md and chart.png from a run")
    return p.parse_args(argv)


def run(args: argparse.Namespace, argv: list[str]) -> dict:
    """Runs the selected jobs (and the extras unless excluded); the results document (`argv`: its command)."""
    passes = args.passes or (1 if args.quick else 2)
    batches = [int(b) for b in (args.batches or ("4" if args.quick else "8,32")).split(",")]
    steps = args.steps or (2 if args.quick else 5)
    only = [s for s in (args.only or "").split(",") if s]
    selected = [j for j in jobs.jobs_for(batches, args.quick) if not only or any(j.name.startswith(s) for s in only)]
    started = time.time()
    records = runner.run_passes(selected, passes, steps)
    extras = {} if args.no_extras or only else runner.run_extras(args.quick, args.workdir)
    return {
        "command": " ".join(["benchmarks/run_all.py", *argv]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "quick": args.quick,
        "passes": passes,
        "batches": batches,
        "steps": steps,
        "versions": runner.versions(),
        "jobs": records,
        "extras": extras,
    }


def main(argv: list[str] | None = None) -> None:
    """Runs the suite into --out (results.json, RESULTS.md, chart.png), or re-renders a run's report."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.report_only:
        doc = json.loads(Path(args.report_only).read_text())
        written = report.write(doc, Path(args.out or Path(args.report_only).parent))
    else:
        out_dir = Path(args.out or (tempfile.mkdtemp(prefix="vgg-jax-bench-") if args.quick else REPO / "benchmarks"))
        out_dir.mkdir(parents=True, exist_ok=True)
        doc = run(args, argv)
        (out_dir / "results.json").write_text(json.dumps(doc, indent=1))
        written = [out_dir / "results.json", *report.write(doc, out_dir)]
    print("wrote " + ", ".join(map(str, written)))


if __name__ == "__main__":
    main()
