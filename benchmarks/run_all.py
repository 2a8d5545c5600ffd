"""The benchmark suite: ours and the peers side by side, interleaved in one run; writes JSON, markdown, PNG.

    .venv/bin/python benchmarks/run_all.py                   # full run (about 35 min on 2 cores), -> benchmarks/
    .venv/bin/python benchmarks/run_all.py --quick --out DIR # tiny VGG, 32x32, batch 4, 2 steps (the test)

Every job (one variant at one batch size) runs in its own process, started by a wrapper so its peak RSS
is its own. Jobs are interleaved: each pass runs them all, the second pass in reverse order, so a
slow phase of the machine does not land on one variant. Each job compiles or warms up, then times
--steps steps and reports their median; the tables show the mean over passes of those medians, and
every ratio is computed within a pass first. A peer that is not installed is reported as skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.child import REPO, run_child

OURS = "benchmarks/ours.py"
KERAS = "benchmarks/peers_keras.py"
TORCH = "benchmarks/peers_torch.py"
PEER_ENV = {"XLA_FLAGS": ""}  # peers run with their frameworks' defaults


def job(name: str, group: str, label: str, argv: list[str], batch: int | None, kind: str, env=None, **extra) -> dict:
    """kind: 'infer' or 'train' (rows with img/s), 'ceiling', or 'extra' (decode/convert)."""
    return {
        "name": name,
        "group": group,
        "label": label,
        "argv": argv,
        "batch": batch,
        "kind": kind,
        "env": env or {},
        **extra,
    }


def jobs_for(batches: list[int], quick: bool) -> list[dict]:
    tiny = ["--tiny"] if quick else []
    out = [
        job("ceiling-jax", "ceiling", "JAX (XLA, our options)", [OURS, "--variant", "ceiling", *tiny], None, "ceiling"),
        job(
            "ceiling-jax-default",
            "ceiling",
            "JAX (XLA defaults)",
            [OURS, "--variant", "ceiling", "--xla", "default", *tiny],
            None,
            "ceiling",
        ),
        job(
            "ceiling-tf",
            "ceiling",
            "TensorFlow (oneDNN)",
            [KERAS, "--backend", "tensorflow", "--mode", "ceiling", *tiny],
            None,
            "ceiling",
            PEER_ENV,
        ),
        job("ceiling-torch", "ceiling", "PyTorch", [TORCH, "--mode", "ceiling", *tiny], None, "ceiling"),
    ]
    ours = {
        "infer": "ours: inference (eval_step)",
        "frozen": "ours: frozen-head train step (recipe)",
        "block5": "ours: fine-tune block5+fc (train step)",
        "full": "ours: full fine-tune (train step)",
        "naive": "ours, reference: full gradient + masked(set_to_zero)",
    }
    for b in batches:
        for variant, label in ours.items():
            kind = "infer" if variant == "infer" else "train"
            out.append(
                job(
                    f"ours-{variant}",
                    "ours",
                    label,
                    [OURS, "--variant", variant, "--batch", str(b), *tiny],
                    b,
                    kind,
                    variant=variant,
                )
            )
        alternatives = (
            ("xla-default", "ours-default", "ours, XLA default options", ["--xla", "default"]),
            ("bf16", "ours-bf16", "ours, bfloat16 compute", ["--dtype", "bfloat16"]),
        )
        for variant in ("infer", "frozen"):
            for suffix, group, label, options in alternatives:
                argv = [OURS, "--variant", variant, *options, "--batch", str(b), *tiny]
                kind = "infer" if variant == "infer" else "train"
                out.append(job(f"ours-{variant}-{suffix}", group, f"{label}: {variant}", argv, b, kind, variant=variant))
        for backend, short in (("jax", "Keras 3 / JAX"), ("tensorflow", "Keras 3 / TF")):
            for mode in ("train", "predict"):
                out.append(
                    job(
                        f"keras-{backend}-{mode}",
                        f"keras-{backend}",
                        f"{short} {mode}_on_batch",
                        [KERAS, "--backend", backend, "--mode", mode, "--batch", str(b), *tiny],
                        b,
                        "train" if mode == "train" else "infer",
                        PEER_ENV,
                    )
                )
        torch_variants = [("nchw", False), ("channels_last", False)] + ([] if quick else [("channels_last", True)])
        for layout, compiled in torch_variants:
            tag = "torch.compile" if compiled else f"eager {layout}"
            for mode in ("train", "infer"):
                argv = [TORCH, "--mode", mode, "--layout", layout, "--batch", str(b), *tiny]
                name = f"torch-{'compile' if compiled else layout}-{mode}"
                out.append(
                    job(
                        name,
                        "torch",
                        f"PyTorch {tag} {'train step' if mode == 'train' else 'inference'}",
                        argv + (["--compile"] if compiled else []),
                        b,
                        mode,
                    )
                )
    return out


def extras(quick: bool, workdir: str) -> list[dict]:
    """Decode and convert (full size only: a 553 MB file is no quick check)."""
    if quick:
        return []
    return [
        job(
            "decode",
            "pipeline",
            "input pipeline: grain decode + resize to 224",
            [OURS, "--variant", "decode", "--workdir", workdir],
            None,
            "extra",
        ),
        job(
            "convert",
            "pipeline",
            "vgg-jax convert (Keras 1 VGG16 file, 553 MB)",
            [OURS, "--variant", "convert", "--repeats", "2", "--workdir", workdir],
            None,
            "extra",
        ),
    ]


def compilation_cache(quick: bool) -> dict:
    """`vgg-jax bench` twice in fresh processes on one empty cache folder: compile and first-step times.

    Also run with jax's minimum compile time for caching lowered to 0 (the CLI uses 0.1 s), to show
    what that would change for steps that compile faster than the threshold.
    """
    variants = "infer,frozen,full"
    bench = ["bench", "--variants", variants, "--batch-sizes", "4" if quick else "8", "--steps", "1", "--warmup", "0"]
    bench += ["--tiny"] if quick else []
    out = {}
    for setting, min_s in (("cli", None), ("min_compile_time_0", 0.0)):
        with tempfile.TemporaryDirectory(prefix="vgg-jax-cache-") as cache:
            runs = []
            for _ in range(2):
                code = "import sys; from vgg_jax import cli\n"
                if min_s is not None:
                    code += (
                        "enable = cli.enable_compilation_cache\n"
                        "def patched():\n    enable()\n    import jax\n"
                        f"    jax.config.update('jax_persistent_cache_min_compile_time_secs', {min_s})\n"
                        "cli.enable_compilation_cache = patched\n"
                    )
                code += "sys.exit(cli.main(sys.argv[1:]))"
                json_path = Path(cache) / "rows.jsonl"
                json_path.unlink(missing_ok=True)
                env = {**os.environ, "VGG_JAX_CACHE": cache, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
                t = time.perf_counter()
                r = subprocess.run(
                    [sys.executable, "-c", code, *bench, "--json", str(json_path)],
                    env=env,
                    capture_output=True,
                    text=True,
                    cwd=REPO,
                    check=False,
                )
                wall = time.perf_counter() - t
                if r.returncode:
                    return {"error": r.stderr[-1500:]}
                rows = [json.loads(line) for line in json_path.read_text().splitlines()]
                runs.append({"process_wall_s": wall, "rows": {x["variant"]: _cache_row(x) for x in rows}})
            files = sum(1 for _ in (Path(cache) / "jax").glob("*")) if (Path(cache) / "jax").exists() else 0
            out[setting] = {"runs": runs, "cache_entries": files}
    return out


def _cache_row(r: dict) -> dict:
    return {k: round(r[k], 3) for k in ("trace_s", "compile_s", "first_step_s", "median_s")}


def versions() -> dict:
    out = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()}
    for mod in ("jax", "jaxlib", "flax", "optax", "numpy", "keras", "tensorflow", "torch"):
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


# ---- report: aggregate the passes, the goal checklist, markdown and chart ------------------------------


def _ok(r: dict) -> bool:
    return "error" not in r and "skipped" not in r


def gflop_basis(quick: bool) -> dict:
    """GFLOP per image for forward-only and head-only-training rows (peers and ours alike)."""
    from vgg_jax.models import arch
    from benchmarks import throughput as bench

    shape = (
        (bench.TINY["depths"], bench.TINY["widths"], bench.TINY["fc_units"], 32)
        if quick
        else (arch.DEPTHS["vgg16"], arch.WIDTHS, arch.FC_UNITS, 224)
    )
    return {"infer": bench.gflop_per_image("infer", *shape), "train": bench.gflop_per_image("frozen", *shape)}


def aggregate(doc: dict) -> tuple[list[dict], dict]:
    """One row per (job, batch) with pass means, and the conv/matmul ceilings (best framework, pass mean)."""
    jobs = doc["jobs"]
    ceil = {}
    for op in ("conv", "matmul"):
        per_pass = []
        for n in range(1, doc["passes"] + 1):
            vals = [
                (v["gflop_per_s"], j["label"], k)
                for j in jobs
                if j["pass"] == n and j["kind"] == "ceiling" and _ok(j["result"])
                for k, v in j["result"].items()
                if isinstance(v, dict) and k.startswith(op)
            ]
            if vals:
                per_pass.append(max(vals))
        if per_pass:
            best = max(per_pass)
            ceil[op] = {
                "gflop_per_s": statistics.fmean(v[0] for v in per_pass),
                "by": f"{best[1]} {best[2]}",
                "per_pass": [round(v[0], 1) for v in per_pass],
            }
        ceil[op + "_all"] = {
            f"{j['label']} {k}": round(v["gflop_per_s"], 1)
            for j in jobs
            if j["kind"] == "ceiling" and _ok(j["result"])
            for k, v in j["result"].items()
            if isinstance(v, dict) and k.startswith(op)
        }
    basis = gflop_basis(doc["quick"])
    infer_median = {
        (j["pass"], j["batch"]): j["result"]["median_s"] for j in jobs if j["name"] == "ours-infer" and _ok(j["result"])
    }
    rows, seen = [], {}
    for j in jobs:
        if j["kind"] not in ("infer", "train"):
            continue
        key = (j["name"], j["batch"])
        if key not in seen:
            seen[key] = {**{k: j[k] for k in ("name", "group", "label", "batch", "kind", "variant")}, "passes": []}
            rows.append(seen[key])
        seen[key]["passes"].append(j)
    for row in rows:
        good = [j for j in row["passes"] if _ok(j["result"])]
        row["skipped"] = next((j["result"]["skipped"] for j in row["passes"] if "skipped" in j["result"]), None)
        row["error"] = next((j["result"]["error"] for j in row["passes"] if "error" in j["result"]), None)
        if not good:
            continue
        res = [j["result"] for j in good]
        med = [r["median_s"] for r in res]
        row["median_s"] = statistics.fmean(med)
        row["img_per_s"] = row["batch"] / row["median_s"]
        row["img_per_s_passes"] = [round(row["batch"] / m, 2) for m in med]
        row["gflop_per_image"] = res[0].get("gflop_per_image") or basis[row["kind"]]
        row["gflop_per_s"] = row["gflop_per_image"] * row["img_per_s"]
        if "conv" in ceil:
            row["pct_ceiling"] = 100 * row["gflop_per_s"] / ceil["conv"]["gflop_per_s"]
        ratios = [
            infer_median[(j["pass"], j["batch"])] / j["result"]["median_s"]
            for j in good
            if (j["pass"], j["batch"]) in infer_median
        ]
        row["x_our_infer"] = statistics.fmean(ratios) if ratios else None
        row["steps_peak_rss_mb"] = max(r.get("steps_peak_rss_mb", 0) for r in res)
        row["process_peak_rss_mb"] = max(r.get("process_peak_rss_mb", 0) for r in res)
        row["compile_s"] = statistics.fmean(r.get("trace_s", 0) + r.get("compile_s", 0) for r in res)
        row["first_step_s"] = statistics.fmean(r["first_step_s"] for r in res)
        row["other_cores_busy"] = [r.get("other_cores_busy") for r in res]
        row["loadavg"] = [r.get("loadavg_before", [None])[0] for r in res] + [res[-1].get("loadavg_after", [None])[0]]
        row["version"] = _version_tag(row["group"], res[0])
        for k in ("backbone_unchanged", "opt_state_bytes", "trainable_params", "jit_compile", "torch_threads"):
            if k in res[0]:
                row[k] = res[0][k]
    return rows, ceil


def _version_tag(group: str, r: dict) -> str:
    if group.startswith("ours"):
        return f"jax {r.get('jax')}"
    if group.startswith("keras"):
        return f"keras {r.get('keras')} / {r.get('backend_version')}"
    if group == "torch":
        return f"torch {r.get('torch')}"
    return ""


def _row(rows: list[dict], name: str, batch: int) -> dict | None:
    return next((r for r in rows if r["name"] == name and r["batch"] == batch and "img_per_s" in r), None)


def _pass_ratio(doc: dict, num: str, den: str, batch: int, inverse: bool = False) -> float | None:
    """Mean over passes of img/s(num) / img/s(den), both from the same pass."""
    got = []
    for n in range(1, doc["passes"] + 1):
        a = next(
            (
                j["result"]
                for j in doc["jobs"]
                if j["pass"] == n and j["name"] == num and j["batch"] == batch and _ok(j["result"])
            ),
            None,
        )
        b = next(
            (
                j["result"]
                for j in doc["jobs"]
                if j["pass"] == n and j["name"] == den and j["batch"] == batch and _ok(j["result"])
            ),
            None,
        )
        if a and b:
            got.append(b["median_s"] / a["median_s"])
    return statistics.fmean(got) if got else None


def goals(doc: dict, rows: list[dict], ceil: dict) -> list[dict]:
    """The issue's goals, each with its measured value, threshold and verdict."""
    out = []

    def add(goal, value, threshold, detail, higher=True, why=""):
        met = None if value is None else (value >= threshold if higher else value <= threshold)
        out.append({"goal": goal, "value": value, "threshold": threshold, "met": met, "detail": detail, "why": why})

    xla_conv = max((v for k, v in ceil.get("conv_all", {}).items() if k.startswith("JAX")), default=None)

    for b in doc["batches"]:
        add(
            f"frozen-head step >= 0.95x our inference, batch {b}",
            _pass_ratio(doc, "ours-frozen", "ours-infer", b),
            0.95,
            "img/s ratio, same pass",
        )
        peers = [
            r
            for r in rows
            if r["batch"] == b
            and r["kind"] == "train"
            and r["group"] in ("keras-jax", "keras-tensorflow", "torch")
            and "img_per_s" in r
        ]
        if peers:
            best = max(peers, key=lambda r: r["img_per_s"])
            add(
                f"frozen-head step >= 1.0x the fastest peer train step, batch {b}",
                _pass_ratio(doc, "ours-frozen", best["name"], b),
                1.0,
                f"fastest peer: {best['label']} ({best['img_per_s']:.2f} img/s)",
                why="the peer runs oneDNN convolutions, 1.1-1.6x faster per layer than XLA:CPU's; jaxlib "
                "0.10.2 has no oneDNN convolution path and no native bfloat16 convolution (NOTES.md 2, 3)",
            )
        if _row(rows, "keras-jax-train", b):
            add(
                f"frozen-head step >= 1.5x Keras 3 / JAX train_on_batch, batch {b}",
                _pass_ratio(doc, "ours-frozen", "keras-jax-train", b),
                1.5,
                "img/s ratio, same pass",
                why=_keras_jax_why(rows, b),
            )
        infer = _row(rows, "ours-infer", b)
        if infer and "conv" in ceil:
            add(
                f"inference >= 90% of the best single-conv ceiling, batch {b}",
                infer["pct_ceiling"] / 100,
                0.9,
                f"ceiling {ceil['conv']['gflop_per_s']:.0f} GFLOP/s ({ceil['conv']['by']})",
                why="the ceiling is a oneDNN convolution; "
                + (
                    f"against XLA's own best single conv in this run ({xla_conv:.0f} GFLOP/s) ours reaches "
                    f"{infer['gflop_per_s'] / xla_conv:.0%} (NOTES.md 3)"
                    if xla_conv
                    else "see NOTES.md 3"
                ),
            )
        frozen, naive = _row(rows, "ours-frozen", b), _row(rows, "ours-naive", b)
        if naive and frozen:
            add(
                f"frozen-head step >= 6x the naive full-gradient variant, batch {b}",
                _pass_ratio(doc, "ours-frozen", "ours-naive", b),
                6.0,
                "img/s ratio, same pass",
                why=f"compute-bound here: the naive step does {naive['gflop_per_image'] / frozen['gflop_per_image']:.2f}x "
                f"the FLOPs at {naive['gflop_per_s'] / frozen['gflop_per_s']:.2f}x the GFLOP/s; its cost shows in "
                "memory instead (next line; NOTES.md 4)",
            )
            add(
                f"its peak memory <= 1/3 of the naive variant's, batch {b}",
                frozen["steps_peak_rss_mb"] / naive["steps_peak_rss_mb"],
                1 / 3,
                f"{frozen['steps_peak_rss_mb']:.0f} vs {naive['steps_peak_rss_mb']:.0f} MB RSS during steps",
                higher=False,
            )
    cache = doc.get("extras", {}).get("compilation_cache", {}).get("result", {})
    for setting in ("cli", "min_compile_time_0"):
        runs = cache.get(setting, {}).get("runs")
        if not runs:
            continue
        for variant, first in runs[0]["rows"].items():
            second = runs[1]["rows"].get(variant)
            if second and first["compile_s"] > 0:
                label = "as the CLI sets it (min compile time 0.1 s)" if setting == "cli" else "min compile time 0"
                add(
                    f"second run's compile <= 25% of the first's: {variant}, cache {label}",
                    second["compile_s"] / first["compile_s"],
                    0.25,
                    f"compile {first['compile_s']:.2f} s -> {second['compile_s']:.2f} s; first step "
                    f"{first['first_step_s']:.2f} s -> {second['first_step_s']:.2f} s",
                    higher=False,
                    why="compiles faster than the CLI's caching threshold, so it is never cached (NOTES.md 4)",
                )
    return out


def _keras_jax_why(rows: list[dict], b: int) -> str:
    default = _row(rows, "ours-frozen-xla-default", b)
    keras = _row(rows, "keras-jax-train", b)
    if not (default and keras):
        return "see NOTES.md 4"
    return (
        f"Keras 3 / JAX runs XLA's default options ({keras['img_per_s']:.2f} img/s), as fast as ours with them "
        f"({default['img_per_s']:.2f}); our margin is the YNNPACK option alone; more needs faster convolution "
        "kernels (NOTES.md 1a, 3)"
    )


def _fmt(x, spec=",.2f", none="-") -> str:
    return none if x is None else format(x, spec)


def write_markdown(doc: dict, path: Path) -> None:
    rows, ceil = aggregate(doc)
    v = doc["versions"]
    lines = [
        "# vgg-jax benchmarks: ours and the peers, one interleaved run",
        "",
        (
            f"Command: `.venv/bin/python {doc['command']}` ({doc['started']}, {doc['duration_s'] / 60:.1f} min, "
            f"{doc['passes']} pass(es), {doc['steps']} timed steps per job, median per job, mean over passes)."
        ),
        "",
        f"Machine: {v.get('cpu')}, {v.get('cpus')} CPUs, Python {v.get('python')}. Versions: "
        + ", ".join(
            f"{k} {v[k]}"
            for k in ("jax", "jaxlib", "flax", "optax", "numpy", "keras", "tensorflow", "torch")
            if v.get(k)
        )
        + ". Float32 unless marked; weights random (He-scaled); ours take uint8 images and preprocess in the "
        "step, peers take random normal float32. Keras `jit_compile` left at 'auto': "
        + ", ".join(
            f"{r['label'].split(' train')[0]} {r['jit_compile']}"
            for r in rows
            if r["name"].endswith("-train")
            and r["group"].startswith("keras")
            and r["batch"] == doc["batches"][0]
            and "jit_compile" in r
        )
        + ".",
        "",
        (
            "GFLOP/s: 2 FLOP per multiply-add; inference and head-only training count the forward pass "
            "(30.93 GFLOP/img for VGG16), fine-tuning rows add the weight and input gradients of the trained "
            "layers. % of ceiling: against the best single 3x3 conv (8x56x56x256->256) of any framework in the "
            "same run. x our infer: img/s ratio to our inference at the same batch, within each pass. RSS: "
            "peak during the steps / whole process (MiB). Compile: ours = trace + XLA compile; peers = first "
            "call minus a steady step."
        ),
        "",
    ]
    lines += [threads_line(doc), ""]
    if ceil:
        lines += ["## Ceilings (GFLOP/s, median of repeats; best framework, mean over passes)", ""]
        for op in ("conv", "matmul"):
            if op in ceil:
                lines.append(
                    f"- **{op}: {ceil[op]['gflop_per_s']:.0f}** ({ceil[op]['by']}; per pass "
                    f"{ceil[op]['per_pass']}). All: " + ", ".join(f"{k} {x:.0f}" for k, x in ceil[op + "_all"].items())
                )
        lines.append("")
    lines += ["## Throughput", ""]
    for b in doc["batches"]:
        lines += [
            f"### Batch {b}",
            "",
            (
                "| variant | img/s | per pass | GFLOP/s | % of ceiling | x our infer | RSS MiB steps / process "
                "| compile s | first step s | other cores busy | versions |"
            ),
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            if r["batch"] != b:
                continue
            if "img_per_s" not in r:
                why = f"skipped: {r['skipped']}" if r["skipped"] else f"failed: {(r['error'] or '')[-120:]}"
                lines.append(f"| {r['label']} | {why.replace('|', '/').replace(chr(10), ' ')} |" + " |" * 9)
                continue
            busy = [x for x in r["other_cores_busy"] if x is not None]
            lines.append(
                f"| {r['label']} | {_fmt(r['img_per_s'])} | {' / '.join(_fmt(x) for x in r['img_per_s_passes'])} "
                f"| {_fmt(r['gflop_per_s'], ',.1f')} | {_fmt(r.get('pct_ceiling'), '.0f')} "
                f"| {_fmt(r['x_our_infer'])} | {r['steps_peak_rss_mb']:,.0f} / {r['process_peak_rss_mb']:,.0f} "
                f"| {r['compile_s']:.2f} | {r['first_step_s']:.2f} | {', '.join(f'{x:.2f}' for x in busy) or '-'} "
                f"| {r['version']} |"
            )
        lines.append("")
    extras = doc.get("extras", {})
    if extras:
        lines += ["## Input pipeline, convert, compilation cache", ""]
        dec = extras.get("decode", {}).get("result", {})
        if _ok(dec):
            lines.append(
                f"- Input pipeline (grain decode of 500x375 JPEGs + resize to 224, {dec.get('threads')} "
                f"threads): **{dec['img_per_s']:,.0f} img/s**, {dec['cpu_ms_per_img']} CPU ms/img."
            )
        conv = extras.get("convert", {}).get("result", {})
        if _ok(conv):
            lines.append(
                f"- `vgg-jax convert` of a {conv['file_mb']:.0f} MB Keras 1 VGG16 file: "
                f"**{conv['median_s']:.2f} s**, peak RSS {conv['convert_peak_rss_mb']:.0f} MiB."
            )
        cache = extras.get("compilation_cache", {}).get("result", {})
        for setting, d in cache.items():
            if not isinstance(d, dict) or "runs" not in d:
                continue
            first, second = d["runs"]
            lines.append(
                f"- Compilation cache ({setting}; {d['cache_entries']} entries after two runs), "
                "compile s / first step s, run 1 -> run 2: "
                + "; ".join(
                    f"{k} {first['rows'][k]['compile_s']:.2f} / {first['rows'][k]['first_step_s']:.2f} -> "
                    f"{second['rows'][k]['compile_s']:.2f} / {second['rows'][k]['first_step_s']:.2f}"
                    for k in first["rows"]
                )
            )
        lines.append("")
    lines += ["## Goals", "", "| goal | measured | target | verdict | detail |", "|---|---|---|---|---|"]
    for g in goals(doc, rows, ceil):
        verdict = "n/a" if g["met"] is None else ("**met**" if g["met"] else "not met")
        detail = g["detail"] + (f". Why: {g['why']}" if g["met"] is False and g["why"] else "")
        lines.append(f"| {g['goal']} | {_fmt(g['value'], ',.3g')} | {g['threshold']:.3g} | {verdict} | {detail} |")
    lines += ["", "Cached epochs per cut and the recipe end to end against Keras: [CACHE_RESULTS.md](CACHE_RESULTS.md) "
              "(benchmarks/bench_cache.py, through the trainer)."]  # fmt: skip
    lines += ["", *gpu_section(path.parent / "gpu.json"), ""]
    path.write_text("\n".join(lines))


def threads_line(doc: dict) -> str:
    """CPUs each job saw, OS threads per process by framework, and torch's intra-op threads."""
    seen: dict[str, set] = {}
    cpus, torch_threads = set(), set()
    for j in doc["jobs"]:
        r = j["result"]
        if not _ok(r) or j["kind"] not in ("infer", "train"):
            continue
        cpus.add(r.get("cpus"))
        seen.setdefault(j["group"].split("-")[0], set()).add(r.get("os_threads_total"))
        if "torch_threads" in r:
            torch_threads.add(r["torch_threads"])
    parts = ", ".join(f"{g} {min(v)}-{max(v)}" for g, v in seen.items() if None not in v)
    return (
        f"Threads: every job saw {', '.join(str(c) for c in sorted(x for x in cpus if x))} CPU(s) and ran with its "
        f"framework's default threading (XLA: one intra-op thread per core; TF: intra/inter-op 0 = automatic; "
        f"torch.get_num_threads() = {', '.join(map(str, sorted(torch_threads))) or '-'}). OS threads per process "
        f"after the steps: {parts}."
    )


def gpu_section(gpu_json: Path) -> list[str]:
    """The GPU script's table when its JSON sits next to RESULTS.md, else how to produce it."""
    out = ["## GPU (benchmarks/gpu.sh)", ""]
    if not gpu_json.exists():
        return [
            *out,
            (
                "Not run: no accelerator was lent to the session that produced this file. `bash benchmarks/gpu.sh` "
                "(jax, flax, optax, numpy only; under 5 minutes) checks bfloat16 against float32 and the device "
                "against the host, then sweeps batch sizes for inference, the frozen-head step and full "
                "fine-tuning; with `OUT=benchmarks` it writes `gpu.json` here. tests/test_bench.py runs it on CPU "
                "with `--tiny`."
            ),
        ]
    from benchmarks.gpu_bench import table

    doc = json.loads(gpu_json.read_text())
    kind = doc["correctness"].get("device", "")
    errs = "; ".join(
        f"{k}: " + ", ".join(f"{n} {v:.1e}" for n, v in doc["correctness"][k].items())
        for k in ("bf16_vs_f32", "device_f32_vs_cpu_f32")
        if k in doc["correctness"]
    )
    return out + [f"{kind}. Correctness (normwise relative error): {errs}.", "", table(doc["rows"], kind)]


def write_chart(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, _ = aggregate(doc)
    colors = {
        "ours": "tab:blue",
        "ours-default": "lightsteelblue",
        "ours-bf16": "tab:cyan",
        "keras-jax": "tab:orange",
        "keras-tensorflow": "tab:red",
        "torch": "tab:green",
    }
    batches = doc["batches"]
    shown = [[r for r in rows if r["batch"] == b and "img_per_s" in r] for b in batches]
    height = max(len(s) for s in shown) * 0.32 + 1.2
    fig, axes = plt.subplots(1, len(batches), figsize=(7 * len(batches), height), squeeze=False)
    for ax, b, sel in zip(axes[0], batches, shown):
        sel = sorted(sel, key=lambda r: r["img_per_s"])
        ax.barh(
            [r["label"] for r in sel],
            [r["img_per_s"] for r in sel],
            color=[colors.get(r["group"], "grey") for r in sel],
        )
        for i, r in enumerate(sel):
            ax.text(r["img_per_s"], i, f" {r['img_per_s']:.2f}", va="center", fontsize=7)
        ax.set_title(f"batch {b}: images/s (higher is better)", fontsize=10)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_xlim(0, max(r["img_per_s"] for r in sel) * 1.15)
    fig.suptitle(
        f"VGG16 on {doc['versions'].get('cpu')} ({doc['versions'].get('cpus')} CPUs), float32 unless "
        "marked; cached epochs: benchmarks/bench_cache.py (through the trainer)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
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
    args = p.parse_args()
    if args.report_only:
        doc = json.loads(Path(args.report_only).read_text())
        out_dir = Path(args.out or Path(args.report_only).parent)
        write_markdown(doc, out_dir / "RESULTS.md")
        write_chart(doc, out_dir / "chart.png")
        print(f"wrote {out_dir / 'RESULTS.md'}, {out_dir / 'chart.png'}")
        return
    passes = args.passes or (1 if args.quick else 2)
    batches = [int(b) for b in (args.batches or ("4" if args.quick else "8,32")).split(",")]
    steps = args.steps or (2 if args.quick else 5)
    out_dir = Path(args.out or (tempfile.mkdtemp(prefix="vgg-jax-bench-") if args.quick else REPO / "benchmarks"))
    out_dir.mkdir(parents=True, exist_ok=True)
    only = [s for s in (args.only or "").split(",") if s]
    selected = [j for j in jobs_for(batches, args.quick) if not only or any(j["name"].startswith(s) for s in only)]
    for j in selected:
        if j["kind"] in ("infer", "train") and "--steps" not in j["argv"]:
            j["argv"] += ["--steps", str(steps)]
    started = time.time()
    results = []
    for n in range(passes):
        order = selected if n % 2 == 0 else selected[::-1]
        for i, j in enumerate(order):
            r = run_child(j["argv"], j["env"], timeout=1800)
            rec = {k: j[k] for k in ("name", "group", "label", "batch", "kind")} | {"variant": j.get("variant")}
            results.append({**rec, "pass": n + 1, "result": r})
            print(_progress(n + 1, i + 1, len(order), rec, r), flush=True)
    extra = {}
    if not args.no_extras and not only:
        for j in extras(args.quick, args.workdir):
            extra[j["name"]] = {"label": j["label"], "result": run_child(j["argv"], j["env"], timeout=1800)}
            print(f"extra {j['name']}: {json.dumps(extra[j['name']]['result'])[:200]}", flush=True)
        extra["compilation_cache"] = {"label": "persistent compilation cache", "result": compilation_cache(args.quick)}
        print(f"extra compilation_cache: {json.dumps(extra['compilation_cache'])[:300]}", flush=True)
    command = "benchmarks/run_all.py " + " ".join(sys.argv[1:])
    doc = {
        "command": command.strip(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "quick": args.quick,
        "passes": passes,
        "batches": batches,
        "steps": steps,
        "versions": versions(),
        "jobs": results,
        "extras": extra,
    }
    (out_dir / "results.json").write_text(json.dumps(doc, indent=1))
    write_markdown(doc, out_dir / "RESULTS.md")
    write_chart(doc, out_dir / "chart.png")
    print(f"wrote {out_dir / 'results.json'}, {out_dir / 'RESULTS.md'}, {out_dir / 'chart.png'}")


def _progress(n: int, i: int, total: int, rec: dict, r: dict) -> str:
    head = f"[pass {n} {i}/{total}] {rec['name']} b{rec['batch'] or '-'}"
    if "error" in r:
        return f"{head}: ERROR {r['error'][-300:]}"
    if "skipped" in r:
        return f"{head}: skipped ({r['skipped']})"
    if "median_s" in r and rec["batch"]:
        return (
            f"{head}: {rec['batch'] / r['median_s']:.2f} img/s, first {r.get('first_step_s')} s, "
            f"rss {r.get('steps_peak_rss_mb')} MB, other cores {r.get('other_cores_busy')}"
        )
    return f"{head}: " + ", ".join(f"{k} {v['gflop_per_s']:.0f} GF/s" for k, v in r.items() if isinstance(v, dict))


if __name__ == "__main__":
    main()
