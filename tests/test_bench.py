"""`vgg-jax bench`, the GPU script and the benchmark runner, on a tiny VGG at 32x32 (seconds, CPU)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import jobs, report, timing
from benchmarks import throughput as bench
from vgg_jax.models import arch

REPO = Path(__file__).resolve().parents[1]


def run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "VGG_JAX_CACHE": str(tmp_path / "cache"), **env}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=full_env, cwd=REPO, timeout=300, check=False
    )


def test_flop_basis_is_vgg16s():
    """30.93 GFLOP per image forward (15.47 G multiply-adds), as the VGG paper and Keras count it."""
    shape = (arch.DEPTHS["vgg16"], arch.WIDTHS, arch.FC_UNITS, 224)
    assert bench.gflop_per_image("infer", *shape) == pytest.approx(30.93, abs=0.01)
    assert bench.gflop_per_image("frozen", *shape) == pytest.approx(30.93, abs=0.01)
    # Everything trained: forward + weight gradients + input gradients above block1_conv1, about 3x.
    full = bench.gflop_per_image("full", *shape)
    assert full == bench.gflop_per_image("naive", *shape)
    assert 2.9 * 30.93 < full < 3 * 30.93
    assert 30.93 < bench.gflop_per_image("block5", *shape) < full


def test_vgg_jax_bench_prints_a_table(tmp_path):
    out, variants = tmp_path / "rows.jsonl", ("infer", "frozen", "naive")
    r = run(
        ["-m", "vgg_jax", "bench", "--tiny", "--variants", ",".join(variants), "--batch-sizes", "4",
         "--dtype", "float32,bfloat16", "--steps", "2", "--json", str(out)],
        tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    table = [line for line in r.stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| variant | dtype | batch | img/s")
    assert len(table) == 1 + 2 * len(variants)  # header + one row per variant and dtype
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {(x["variant"], x["dtype"]) for x in rows} == {(v, d) for v in variants for d in ("float32", "bfloat16")}
    assert all(x["img_per_s"] > 0 and x["batch"] == 4 for x in rows)


def test_vgg_jax_bench_refuses_unknown_variant(tmp_path):
    r = run(["-m", "vgg_jax", "bench", "--tiny", "--variants", "infer,warp"], tmp_path)
    assert r.returncode == 2
    assert "warp" in r.stderr


def test_tuned_options_keep_convolutions_out_of_ynnpack():
    """Our CPU compiler options leave convolutions to XLA (the measured speed-up); XLA's default fuses them."""
    import jax
    import jax.numpy as jnp

    def conv(x, w):
        return jax.nn.relu(
            jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        )

    lowered = jax.jit(conv).lower(jnp.ones((1, 32, 32, 32)), jnp.ones((3, 3, 32, 32)))
    tuned = lowered.compile(bench.compiler_options("tuned")).as_text()
    default = lowered.compile(bench.compiler_options("default")).as_text()
    entry = tuned[tuned.index("ENTRY") :]
    assert "convolution(" in entry and "ynn_fusion" not in entry
    assert "ynn_fusion" in default
    # The trainer's jits carry the same options (parallel.jit_options), so users get the measured speed.
    from vgg_jax.train import parallel

    trainer = jax.jit(conv, **parallel.jit_options()).lower(jnp.ones((1, 32, 32, 32)), jnp.ones((3, 3, 32, 32)))
    entry = trainer.compile().as_text()
    assert "ynn_fusion" not in entry[entry.index("ENTRY") :]


def test_gpu_script_runs_on_cpu_tiny(tmp_path):
    # benchmarks/gpu.sh needs jax, flax, optax and numpy only: frameworks that fail to import stand in for absent ones.
    fake = tmp_path / "fake"
    fake.mkdir()
    for name in ("tensorflow", "keras", "torch"):
        (fake / f"{name}.py").write_text(f"raise ImportError('{name} is hidden for this test')\n")
    out = tmp_path / "gpu.json"
    r = run(["benchmarks/gpu_bench.py", "--tiny", "--steps", "2", "--json", str(out)], tmp_path,
            PYTHONPATH=f"{fake}{os.pathsep}{REPO}")  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "| variant | dtype | batch | img/s" in r.stdout
    assert "correctness (ok)" in r.stdout
    result = json.loads(out.read_text())
    assert result["correctness"]["bf16_vs_f32"]["features"] < 0.05
    assert [x["status"] for x in result["rows"]] == ["ok"] * 12
    assert {x["variant"] for x in result["rows"]} == {"infer", "frozen", "full"}


def test_runner_quick_writes_results_and_reports_missing_peers_as_skipped(tmp_path):
    # A `torch` that fails to import stands in for an uninstalled PyTorch.
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "torch.py").write_text("raise ImportError('torch is hidden for this test')\n")
    out = tmp_path / "out"
    r = run(
        ["benchmarks/run_all.py", "--quick", "--out", str(out),
         "--only", "ceiling-jax,ours-infer,ours-frozen,ours-naive,torch-nchw-train"],
        tmp_path,
        PYTHONPATH=f"{fake}{os.pathsep}{REPO}",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads((out / "results.json").read_text())
    by_name = {j["name"]: j["result"] for j in doc["jobs"]}
    assert "skipped" in by_name["torch-nchw-train"] and "error" not in by_name["torch-nchw-train"]
    for name in ("ours-infer", "ours-frozen", "ours-naive"):
        assert by_name[name]["median_s"] > 0 and by_name[name]["process_peak_rss_mb"] > 0
        assert by_name[name]["loadavg_before"] and by_name[name]["loadavg_after"]
    md = (out / "RESULTS.md").read_text()
    assert "| PyTorch eager nchw train step | skipped: torch not installed" in md
    assert "frozen-head step >= 0.95x our inference, batch 4" in md
    assert "[CACHE_RESULTS.md](CACHE_RESULTS.md) (benchmarks/bench_cache.py, through the trainer)." in md
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_timed_steps_times_only_the_steps_and_wraps_only_them():
    inside: list[bool] = []
    calls: list[bool] = []

    @contextlib.contextmanager
    def around():
        inside.append(True)
        yield
        inside.append(False)

    def step():
        calls.append(bool(inside) and inside[-1])
        time.sleep(0.002)

    out = timing.timed_steps(step, steps=3, warmup=2, around=around)
    assert calls == [False, False, False, True, True, True]  # first call, 2 warm-up, then 3 timed inside `around`
    assert len(out["times_s"]) == out["steps"] == 3
    assert 0.002 <= out["min_s"] <= out["median_s"] <= out["max_s"]
    assert out["other_cores_busy"] is None  # 6 ms of steps: shorter than /proc/stat's ticks resolve
    assert out["steps_peak_rss_mb"] > 0 and len(out["loadavg_steps"]) == 2


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors of the headings of a markdown text."""
    headings = re.findall(r"^#+ (.+)$", markdown, re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_goals_are_rows_with_a_known_metric_and_a_notes_section():
    notes = anchors((REPO / "benchmarks" / "NOTES.md").read_text())
    assert report.HOW_TO_READ.split("#")[1].rstrip(")") in notes
    for goal in jobs.STEP_GOALS + jobs.CACHE_GOALS:
        assert goal.metric in report.METRICS, goal
        assert not goal.notes or goal.notes in notes, goal
    names = [j.name for j in jobs.jobs_for([4], quick=True)]
    assert len(names) == len(set(names))
    assert all((REPO / j.argv[0]).is_file() for j in jobs.jobs_for([8, 32], quick=False))


def test_report_only_rerenders_the_committed_run(tmp_path):
    """The goals computed from benchmarks/results.json are the committed RESULTS.md's; a miss links to NOTES.md."""
    (tmp_path / "results.json").write_bytes((REPO / "benchmarks" / "results.json").read_bytes())
    r = run(["benchmarks/run_all.py", "--report-only", str(tmp_path / "results.json")], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    goal_rows = [
        line for line in (tmp_path / "RESULTS.md").read_text().splitlines() if " >= " in line or " <= " in line
    ]
    committed = (REPO / "benchmarks" / "RESULTS.md").read_text().splitlines()
    assert len(goal_rows) == 18 and all(row in committed for row in goal_rows)
    missed = [row for row in goal_rows if "| not met |" in row]
    assert missed and all("Why: [NOTES.md 7" in row for row in missed)
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
