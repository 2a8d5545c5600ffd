"""The suite's report from its results.json: passes aggregated, the goals checked, RESULTS.md and chart.png.

Each job timed --steps steps and reported their median; the tables show the mean over passes of those
medians, and every ratio is computed within a pass first. How to read the columns, and why a goal is not
met, is in benchmarks/NOTES.md: the report links there rather than repeating it.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.jobs import CACHE_GOALS, FASTEST_PEER, PEER_GROUPS, STEP_GOALS, STEP_KINDS, Goal

HOW_TO_READ = "[NOTES.md 6](NOTES.md#6-how-the-suite-measures)"
VERSIONS_SHOWN = ("jax", "jaxlib", "flax", "optax", "numpy", "keras", "tensorflow", "torch")
COPIED = ("backbone_unchanged", "opt_state_bytes", "trainable_params", "jit_compile", "torch_threads")
CACHE_LINK = ("Cached epochs per cut and the recipe end to end against Keras: [CACHE_RESULTS.md](CACHE_RESULTS.md) "
              "(benchmarks/bench_cache.py, through the trainer).")  # fmt: skip
CHART_COLORS = {"ours": "tab:blue", "ours-default": "lightsteelblue", "ours-bf16": "tab:cyan",
                "keras-jax": "tab:orange", "keras-tensorflow": "tab:red", "torch": "tab:green"}  # fmt: skip


def write(doc: dict, out_dir: Path) -> list[Path]:
    """RESULTS.md and chart.png of one run into `out_dir`; returns their paths."""
    run, md, chart = Run.of(doc), out_dir / "RESULTS.md", out_dir / "chart.png"
    md.write_text(markdown(run, out_dir / "gpu.json"))
    write_chart(run, chart)
    return [md, chart]


# ---- aggregation --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """A results.json with its rows aggregated over passes and its ceilings: what the goal metrics read."""

    doc: dict
    rows: list[dict]
    ceil: dict

    @classmethod
    def of(cls, doc: dict) -> Run:
        return cls(doc, *aggregate(doc))

    def row(self, name: str, batch: int) -> dict | None:
        """The aggregated row of job `name` at `batch`, if any of its passes succeeded."""
        return next((r for r in self.rows if r["name"] == name and r["batch"] == batch and "img_per_s" in r), None)

    def pass_ratio(self, num: str, den: str, batch: int) -> float | None:
        """Mean over passes of img/s(num) / img/s(den), both from the same pass."""
        got = []
        for n in range(1, self.doc["passes"] + 1):
            a, b = (self._result(name, batch, n) for name in (num, den))
            if a and b:
                got.append(b["median_s"] / a["median_s"])
        return statistics.fmean(got) if got else None

    def _result(self, name: str, batch: int, n: int) -> dict | None:
        """The result of job `name` at `batch` in pass `n`, if it succeeded."""
        for j in self.doc["jobs"]:
            if (j["pass"], j["name"], j["batch"]) == (n, name, batch) and _ok(j["result"]):
                return j["result"]
        return None


def _ok(r: dict) -> bool:
    return "error" not in r and "skipped" not in r


def gflop_basis(quick: bool) -> dict:
    """GFLOP per image for forward-only and head-only-training rows (peers and ours alike)."""
    from benchmarks import throughput as bench
    from vgg_jax.models import arch

    shape = (
        (bench.TINY_NET["depths"], bench.TINY_NET["widths"], bench.TINY_NET["fc_units"], 32)
        if quick
        else (arch.DEPTHS["vgg16"], arch.WIDTHS, arch.FC_UNITS, 224)
    )
    return {"infer": bench.gflop_per_image("infer", *shape), "train": bench.gflop_per_image("frozen", *shape)}


def ceilings(doc: dict) -> dict:
    """Per op (conv, matmul): the best framework's GFLOP/s, mean over passes, and every framework's (op_all)."""
    ceil = {}
    measured = [(j, k, v) for j in doc["jobs"] if j["kind"] == "ceiling" and _ok(j["result"])
                for k, v in j["result"].items() if isinstance(v, dict)]  # fmt: skip
    for op in ("conv", "matmul"):
        per_pass = []
        for n in range(1, doc["passes"] + 1):
            vals = [(v["gflop_per_s"], j["label"], k) for j, k, v in measured if j["pass"] == n and k.startswith(op)]
            if vals:
                per_pass.append(max(vals))
        if per_pass:
            best = max(per_pass)
            ceil[op] = {"gflop_per_s": statistics.fmean(v[0] for v in per_pass), "by": f"{best[1]} {best[2]}",
                        "per_pass": [round(v[0], 1) for v in per_pass]}  # fmt: skip
        ceil[op + "_all"] = {f"{j['label']} {k}": round(v["gflop_per_s"], 1) for j, k, v in measured
                             if k.startswith(op)}  # fmt: skip
    return ceil


def aggregate(doc: dict) -> tuple[list[dict], dict]:
    """One row per (job, batch) with pass means, and the conv/matmul ceilings (best framework, pass mean)."""
    ceil = ceilings(doc)
    rows, seen = [], {}
    for j in doc["jobs"]:
        if j["kind"] not in STEP_KINDS:
            continue
        key = (j["name"], j["batch"])
        if key not in seen:
            seen[key] = {**{k: j[k] for k in ("name", "group", "label", "batch", "kind", "variant")}, "passes": []}
            rows.append(seen[key])
        seen[key]["passes"].append(j)
    basis = gflop_basis(doc["quick"])
    infer_median = {(j["pass"], j["batch"]): j["result"]["median_s"] for j in doc["jobs"]
                    if j["name"] == "ours-infer" and _ok(j["result"])}  # fmt: skip
    for row in rows:
        _fill(row, basis, ceil, infer_median)
    return rows, ceil


def _fill(row: dict, basis: dict, ceil: dict, infer_median: dict) -> None:
    """Adds a row's pass means, GFLOP/s, share of the conv ceiling, ratio to our inference and process facts."""
    good = [j for j in row["passes"] if _ok(j["result"])]
    row["skipped"] = next((j["result"]["skipped"] for j in row["passes"] if "skipped" in j["result"]), None)
    row["error"] = next((j["result"]["error"] for j in row["passes"] if "error" in j["result"]), None)
    if not good:
        return
    res = [j["result"] for j in good]
    med = [r["median_s"] for r in res]
    row["median_s"] = statistics.fmean(med)
    row["img_per_s"] = row["batch"] / row["median_s"]
    row["img_per_s_passes"] = [round(row["batch"] / m, 2) for m in med]
    row["gflop_per_image"] = res[0].get("gflop_per_image") or basis[row["kind"]]
    row["gflop_per_s"] = row["gflop_per_image"] * row["img_per_s"]
    if "conv" in ceil:
        row["pct_ceiling"] = 100 * row["gflop_per_s"] / ceil["conv"]["gflop_per_s"]
    ratios = [infer_median[(j["pass"], j["batch"])] / j["result"]["median_s"] for j in good
              if (j["pass"], j["batch"]) in infer_median]  # fmt: skip
    row["x_our_infer"] = statistics.fmean(ratios) if ratios else None
    row["steps_peak_rss_mb"] = max(r.get("steps_peak_rss_mb", 0) for r in res)
    row["process_peak_rss_mb"] = max(r.get("process_peak_rss_mb", 0) for r in res)
    row["compile_s"] = statistics.fmean(r.get("trace_s", 0) + r.get("compile_s", 0) for r in res)
    row["first_step_s"] = statistics.fmean(r["first_step_s"] for r in res)
    row["other_cores_busy"] = [r.get("other_cores_busy") for r in res]
    row["loadavg"] = [r.get("loadavg_before", [None])[0] for r in res] + [res[-1].get("loadavg_after", [None])[0]]
    row["version"] = _version_tag(row["group"], res[0])
    row.update({k: res[0][k] for k in COPIED if k in res[0]})


def _version_tag(group: str, r: dict) -> str:
    if group.startswith("ours"):
        return f"jax {r.get('jax')}"
    if group.startswith("keras"):
        return f"keras {r.get('keras')} / {r.get('backend_version')}"
    if group == "torch":
        return f"torch {r.get('torch')}"
    return ""


# ---- goals: each metric measures a jobs.Goal row at one batch size (or cache variant) --------------------

Measured = tuple[float | None, str]  # (value, detail); a metric returns None when the goal's jobs did not run


def pass_ratio(run: Run, goal: Goal, batch: int) -> Measured | None:
    """img/s of `of` over img/s of `against` (or of the fastest peer train step), within each pass."""
    against, detail = goal.against, "img/s ratio, same pass"
    if against == FASTEST_PEER:
        peers = [r for r in run.rows if r["batch"] == batch and r["kind"] == "train" and r["group"] in PEER_GROUPS
                 and "img_per_s" in r]  # fmt: skip
        if not peers:
            return None
        best = max(peers, key=lambda r: r["img_per_s"])
        against, detail = best["name"], f"fastest peer: {best['label']} ({best['img_per_s']:.2f} img/s)"
    if not (run.row(goal.of, batch) and run.row(against, batch)):
        return None
    return run.pass_ratio(goal.of, against, batch), detail


def ceiling_share(run: Run, goal: Goal, batch: int) -> Measured | None:
    """GFLOP/s of `of` as a share of the best single-op ceiling named by `against` (conv or matmul)."""
    row, ceil = run.row(goal.of, batch), run.ceil.get(goal.against)
    if not (row and ceil):
        return None
    return row["gflop_per_s"] / ceil["gflop_per_s"], f"ceiling {ceil['gflop_per_s']:.0f} GFLOP/s ({ceil['by']})"


def rss_ratio(run: Run, goal: Goal, batch: int) -> Measured | None:
    """Peak RSS during the steps of `of` over that of `against`."""
    a, b = run.row(goal.of, batch), run.row(goal.against, batch)
    if not (a and b):
        return None
    mine, theirs = a["steps_peak_rss_mb"], b["steps_peak_rss_mb"]
    return mine / theirs, f"{mine:.0f} vs {theirs:.0f} MB RSS during steps"


def cache_compile_ratio(run: Run, goal: Goal, variant: str) -> Measured | None:
    """Second over first process's compile time of `variant` on one cache folder (setting `of`)."""
    first, second = (r["rows"].get(variant) for r in cache_runs(run.doc, goal.of))
    if not (first and second and first["compile_s"] > 0):
        return None
    detail = (f"compile {first['compile_s']:.2f} s -> {second['compile_s']:.2f} s; first step "
              f"{first['first_step_s']:.2f} s -> {second['first_step_s']:.2f} s")  # fmt: skip
    return second["compile_s"] / first["compile_s"], detail


METRICS: dict[str, Callable[[Run, Goal, int | str], Measured | None]] = {
    "pass_ratio": pass_ratio,
    "ceiling_share": ceiling_share,
    "rss_ratio": rss_ratio,
    "cache_compile_ratio": cache_compile_ratio,
}


def cache_runs(doc: dict, setting: str) -> list[dict]:
    """The two `vgg-jax bench` runs of the compilation-cache extra under `setting` ([] if it did not run)."""
    return doc.get("extras", {}).get("compilation_cache", {}).get("result", {}).get(setting, {}).get("runs") or []


def goals(run: Run) -> list[dict]:
    """Every goal of jobs.STEP_GOALS at each batch size, then of jobs.CACHE_GOALS for each cached variant."""
    checks = [(g, {"batch": b}, b) for b in run.doc["batches"] for g in STEP_GOALS]
    for g in CACHE_GOALS:
        runs = cache_runs(run.doc, g.of)
        checks += [(g, {"variant": v}, v) for v in (runs[0]["rows"] if runs else ())]
    out = []
    for goal, fields, at in checks:
        measured = METRICS[goal.metric](run, goal, at)
        if measured is None:
            continue
        value, detail = measured
        met = None if value is None else (value <= goal.target if goal.at_most else value >= goal.target)
        out.append({"goal": goal.text.format(**fields), "value": value, "target": goal.target, "met": met,
                    "detail": detail, "notes": goal.notes})  # fmt: skip
    return out


# ---- markdown and chart -------------------------------------------------------------------------------------


def _fmt(x: float | None, spec: str = ",.2f", none: str = "-") -> str:
    return none if x is None else format(x, spec)


def markdown(run: Run, gpu_json: Path) -> str:
    """RESULTS.md: the run's facts, the ceilings, a throughput table per batch, the extras, the goals, the GPU."""
    lines = [*header(run), *ceilings_section(run.ceil), "## Throughput", ""]
    for b in run.doc["batches"]:
        lines += throughput_table(run.rows, b)
    lines += [*extras_section(run.doc.get("extras", {})), *goals_section(goals(run))]
    lines += ["", CACHE_LINK, "", *gpu_section(gpu_json), ""]
    return "\n".join(lines)


def header(run: Run) -> list[str]:
    """The command, machine, versions, Keras' jit_compile and the threads; a link to how to read the rest."""
    doc, v, jit = run.doc, run.doc["versions"], keras_jit(run)
    return [
        "# vgg-jax benchmarks: ours and the peers, one interleaved run",
        "",
        (
            f"Command: `.venv/bin/python {doc['command']}` ({doc['started']}, {doc['duration_s'] / 60:.1f} min, "
            f"{doc['passes']} pass(es), {doc['steps']} timed steps per job, median per job, mean over passes)."
        ),
        "",
        f"Machine: {v.get('cpu')}, {v.get('cpus')} CPUs, Python {v.get('python')}. Versions: "
        + ", ".join(f"{k} {v[k]}" for k in VERSIONS_SHOWN if v.get(k))
        + "."
        + (f" Keras `jit_compile` left at 'auto': {jit}." if jit else ""),
        "",
        threads_line(doc),
        "",
        f"Inputs, weights, what each column counts and the threading defaults: {HOW_TO_READ}.",
        "",
    ]


def keras_jit(run: Run) -> str:
    """What Keras chose for `jit_compile` on each backend, from its train rows at the first batch size."""
    trains = [r for r in run.rows if r["group"].startswith("keras") and r["name"].endswith("-train")]
    first = run.doc["batches"][0]
    return ", ".join(f"{r['label'].split(' train')[0]} {r['jit_compile']}" for r in trains
                     if r["batch"] == first and "jit_compile" in r)  # fmt: skip


def threads_line(doc: dict) -> str:
    """CPUs each job saw, OS threads per process by framework, and torch's intra-op threads."""
    seen: dict[str, set] = {}
    cpus, torch_threads = set(), set()
    for j in doc["jobs"]:
        r = j["result"]
        if not _ok(r) or j["kind"] not in STEP_KINDS:
            continue
        cpus.add(r.get("cpus"))
        seen.setdefault(j["group"].split("-")[0], set()).add(r.get("os_threads_total"))
        if "torch_threads" in r:
            torch_threads.add(r["torch_threads"])
    parts = ", ".join(f"{g} {min(v)}-{max(v)}" for g, v in seen.items() if None not in v)
    return (
        f"Threads: every job saw {', '.join(str(c) for c in sorted(x for x in cpus if x))} CPU(s); "
        f"torch.get_num_threads() = {', '.join(map(str, sorted(torch_threads))) or '-'}; OS threads per process "
        f"after the steps: {parts}."
    )


def ceilings_section(ceil: dict) -> list[str]:
    """The best conv and matmul of any framework, and every framework's."""
    if not ceil:
        return []
    lines = ["## Ceilings (GFLOP/s, median of repeats; best framework, mean over passes)", ""]
    for op in ("conv", "matmul"):
        if op in ceil:
            lines.append(
                f"- **{op}: {ceil[op]['gflop_per_s']:.0f}** ({ceil[op]['by']}; per pass "
                f"{ceil[op]['per_pass']}). All: " + ", ".join(f"{k} {x:.0f}" for k, x in ceil[op + "_all"].items())
            )
    return [*lines, ""]


def throughput_table(rows: list[dict], b: int) -> list[str]:
    """One line per job at batch `b`; a skipped or failed job says why."""
    lines = [
        f"### Batch {b}",
        "",
        (
            "| variant | img/s | per pass | GFLOP/s | % of ceiling | x our infer | RSS MiB steps / process "
            "| compile s | first step s | other cores busy | versions |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in (r for r in rows if r["batch"] == b):
        if "img_per_s" not in r:
            why = f"skipped: {r['skipped']}" if r["skipped"] else f"failed: {(r['error'] or '')[-120:]}"
            lines.append(f"| {r['label']} | {why.replace('|', '/').replace(chr(10), ' ')} |" + " |" * 9)
            continue
        busy = ", ".join(f"{x:.2f}" for x in r["other_cores_busy"] if x is not None) or "-"
        lines.append(
            f"| {r['label']} | {_fmt(r['img_per_s'])} | {' / '.join(_fmt(x) for x in r['img_per_s_passes'])} "
            f"| {_fmt(r['gflop_per_s'], ',.1f')} | {_fmt(r.get('pct_ceiling'), '.0f')} "
            f"| {_fmt(r['x_our_infer'])} | {r['steps_peak_rss_mb']:,.0f} / {r['process_peak_rss_mb']:,.0f} "
            f"| {r['compile_s']:.2f} | {r['first_step_s']:.2f} | {busy} | {r['version']} |"
        )
    return [*lines, ""]


def extras_section(extras: dict) -> list[str]:
    """The input pipeline's img/s, convert's time and memory, and the compilation cache's two runs."""
    if not extras:
        return []
    lines = ["## Input pipeline, convert, compilation cache", ""]
    decode = extras.get("decode", {})
    if _ok(dec := decode.get("result", {})):
        lines.append(f"- {decode['label']} (500x375 JPEGs, {dec.get('threads')} threads): "
                     f"**{dec['img_per_s']:,.0f} img/s**, {dec['cpu_ms_per_img']} CPU ms/img.")  # fmt: skip
    if _ok(conv := extras.get("convert", {}).get("result", {})):
        lines.append(f"- `vgg-jax convert` of a {conv['file_mb']:.0f} MB Keras 1 VGG16 file: "
                     f"**{conv['median_s']:.2f} s**, peak RSS {conv['convert_peak_rss_mb']:.0f} MiB.")  # fmt: skip
    for setting, d in extras.get("compilation_cache", {}).get("result", {}).items():
        if not isinstance(d, dict) or "runs" not in d:
            continue
        first, second = (r["rows"] for r in d["runs"])
        lines.append(
            f"- Compilation cache ({setting}; {d['cache_entries']} entries after two runs), "
            "compile s / first step s, run 1 -> run 2: "
            + "; ".join(
                f"{k} {first[k]['compile_s']:.2f} / {first[k]['first_step_s']:.2f} -> "
                f"{second[k]['compile_s']:.2f} / {second[k]['first_step_s']:.2f}"
                for k in first
            )
        )
    return [*lines, ""]


def goals_section(checked: list[dict]) -> list[str]:
    """The goals table; a goal not met links to the NOTES.md section that explains it."""
    lines = ["## Goals", "", "| goal | measured | target | verdict | detail |", "|---|---|---|---|---|"]
    for g in checked:
        verdict = "n/a" if g["met"] is None else ("**met**" if g["met"] else "not met")
        detail = g["detail"]
        if g["met"] is False and g["notes"]:
            detail += f". Why: [NOTES.md {g['notes'].split('-')[0]}](NOTES.md#{g['notes']})"
        lines.append(f"| {g['goal']} | {_fmt(g['value'], ',.3g')} | {g['target']:.3g} | {verdict} | {detail} |")
    return lines


def gpu_section(gpu_json: Path) -> list[str]:
    """The GPU script's table when its JSON sits next to RESULTS.md, else a pointer to how to produce it."""
    out = ["## GPU (benchmarks/gpu.sh)", ""]
    if not gpu_json.exists():
        return [*out, f"Not run: no `gpu.json` next to this file. How to produce it: {HOW_TO_READ}."]
    from benchmarks.gpu_bench import table

    doc = json.loads(gpu_json.read_text())
    kind = doc["correctness"].get("device", "")
    errs = "; ".join(
        f"{k}: " + ", ".join(f"{n} {v:.1e}" for n, v in doc["correctness"][k].items())
        for k in ("bf16_vs_f32", "device_f32_vs_cpu_f32")
        if k in doc["correctness"]
    )
    return out + [f"{kind}. Correctness (normwise relative error): {errs}.", "", table(doc["rows"], kind)]


def write_chart(run: Run, path: Path) -> None:
    """chart.png: one horizontal bar chart of img/s per batch size, coloured by framework."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    doc, batches = run.doc, run.doc["batches"]
    shown = [[r for r in run.rows if r["batch"] == b and "img_per_s" in r] for b in batches]
    height = max(len(s) for s in shown) * 0.32 + 1.2
    fig, axes = plt.subplots(1, len(batches), figsize=(7 * len(batches), height), squeeze=False)
    for ax, b, sel in zip(axes[0], batches, shown):
        sel = sorted(sel, key=lambda r: r["img_per_s"])
        ax.barh([r["label"] for r in sel], [r["img_per_s"] for r in sel],
                color=[CHART_COLORS.get(r["group"], "grey") for r in sel])  # fmt: skip
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
