"""What the suite runs and what it checks: the job table (ours, the peers, the ceilings, the extras) and the goals.

Both are data. A `Job` is one child process (benchmarks/runner.py runs it); a `Goal` names a metric that
benchmarks/report.py knows how to compute, the jobs it compares, the comparison and the target, and the
section of benchmarks/NOTES.md that explains a miss.
"""

from __future__ import annotations

from dataclasses import dataclass, field

OURS = "benchmarks/ours.py"
KERAS = "benchmarks/peers_keras.py"
TORCH = "benchmarks/peers_torch.py"
PEER_ENV = {"XLA_FLAGS": ""}  # peers run with their frameworks' defaults
STEP_KINDS = ("infer", "train")  # the kinds with img/s rows; the others are "ceiling" and "extra"


@dataclass(frozen=True)
class Job:
    """One measurement in its own process: `python argv...`, one `RESULT` line back."""

    name: str
    group: str
    label: str
    argv: tuple[str, ...]
    batch: int | None
    kind: str  # "infer" or "train" (img/s rows), "ceiling" (GFLOP/s of single ops) or "extra"
    env: dict[str, str] = field(default_factory=dict)
    variant: str | None = None


OUR_VARIANTS = {
    "infer": "ours: inference (eval_step)",
    "frozen": "ours: frozen-head train step (recipe)",
    "block5": "ours: fine-tune block5+fc (train step)",
    "full": "ours: full fine-tune (train step)",
    "naive": "ours, reference: full gradient + masked(set_to_zero)",
}
# (name suffix, group, label, options): ours with one setting changed, for inference and the frozen-head step.
OUR_ALTERNATIVES = (
    ("xla-default", "ours-default", "ours, XLA default options", ("--xla", "default")),
    ("bf16", "ours-bf16", "ours, bfloat16 compute", ("--dtype", "bfloat16")),
)
KERAS_BACKENDS = {"jax": "Keras 3 / JAX", "tensorflow": "Keras 3 / TF"}
# (name part, label part, options); torch.compile only in full runs: its cold compile takes minutes.
TORCH_VARIANTS = (
    ("nchw", "eager nchw", ("--layout", "nchw")),
    ("channels_last", "eager channels_last", ("--layout", "channels_last")),
)
TORCH_COMPILE = ("compile", "torch.compile", ("--layout", "channels_last", "--compile"))


def ceilings(tiny: tuple[str, ...]) -> list[Job]:
    """A single 3x3 conv and a matmul in every framework: the GFLOP/s the step rows are measured against."""
    return [
        Job("ceiling-jax", "ceiling", "JAX (XLA, our options)", (OURS, "--variant", "ceiling", *tiny), None, "ceiling"),
        Job("ceiling-jax-default", "ceiling", "JAX (XLA defaults)",
            (OURS, "--variant", "ceiling", "--xla", "default", *tiny), None, "ceiling"),
        Job("ceiling-tf", "ceiling", "TensorFlow (oneDNN)",
            (KERAS, "--backend", "tensorflow", "--mode", "ceiling", *tiny), None, "ceiling", PEER_ENV),
        Job("ceiling-torch", "ceiling", "PyTorch", (TORCH, "--mode", "ceiling", *tiny), None, "ceiling"),
    ]  # fmt: skip


def ours_at(b: int, tiny: tuple[str, ...]) -> list[Job]:
    """Our step variants at batch `b`, then inference and the frozen-head step with XLA defaults and in bfloat16."""
    out = []
    for variant, label in OUR_VARIANTS.items():
        argv = (OURS, "--variant", variant, "--batch", str(b), *tiny)
        out.append(Job(f"ours-{variant}", "ours", label, argv, b, _kind(variant), variant=variant))
    for variant in ("infer", "frozen"):
        for suffix, group, label, options in OUR_ALTERNATIVES:
            argv = (OURS, "--variant", variant, *options, "--batch", str(b), *tiny)
            name = f"ours-{variant}-{suffix}"
            out.append(Job(name, group, f"{label}: {variant}", argv, b, _kind(variant), variant=variant))
    return out


def peers_at(b: int, tiny: tuple[str, ...], quick: bool) -> list[Job]:
    """Keras 3 on JAX and on TensorFlow, then PyTorch eager (and torch.compile in full runs), at batch `b`."""
    out = []
    for backend, short in KERAS_BACKENDS.items():
        for mode in ("train", "predict"):
            argv = (KERAS, "--backend", backend, "--mode", mode, "--batch", str(b), *tiny)
            kind = "train" if mode == "train" else "infer"
            out.append(Job(f"keras-{backend}-{mode}", f"keras-{backend}", f"{short} {mode}_on_batch", argv, b, kind,
                           PEER_ENV))  # fmt: skip
    for part, tag, options in TORCH_VARIANTS + (() if quick else (TORCH_COMPILE,)):
        for mode in ("train", "infer"):
            argv = (TORCH, "--mode", mode, *options, "--batch", str(b), *tiny)
            what = "train step" if mode == "train" else "inference"
            out.append(Job(f"torch-{part}-{mode}", "torch", f"PyTorch {tag} {what}", argv, b, mode))
    return out


def jobs_for(batches: list[int], quick: bool) -> list[Job]:
    """Every timed job of one pass: the ceilings, then ours and the peers at each batch size."""
    tiny = ("--tiny",) if quick else ()
    out = ceilings(tiny)
    for b in batches:
        out += ours_at(b, tiny) + peers_at(b, tiny, quick)
    return out


def extras(quick: bool, workdir: str) -> list[Job]:
    """Decode and convert (full size only: a 553 MB file is no quick check)."""
    if quick:
        return []
    return [
        Job("decode", "pipeline", "input pipeline: grain decode + resize to 224",
            (OURS, "--variant", "decode", "--workdir", workdir), None, "extra"),
        Job("convert", "pipeline", "vgg-jax convert (Keras 1 VGG16 file, 553 MB)",
            (OURS, "--variant", "convert", "--repeats", "2", "--workdir", workdir), None, "extra"),
    ]  # fmt: skip


def _kind(variant: str) -> str:
    return "infer" if variant == "infer" else "train"


FASTEST_PEER = "fastest peer train step"  # `against` of a goal: the fastest Keras or PyTorch train row of the batch
PEER_GROUPS = ("keras-jax", "keras-tensorflow", "torch")


@dataclass(frozen=True)
class Goal:
    """A target the report checks: `metric(of, against)` compared with `target` (>=, or <= when `at_most`).

    `text` may hold {batch} or {variant}; `notes` is the anchor of the NOTES.md section that explains a miss.
    """

    text: str
    metric: str  # a key of benchmarks.report.METRICS
    of: str
    against: str
    target: float
    at_most: bool = False
    notes: str = ""


# Checked at every batch size, in this order; a goal whose jobs did not run is left out.
STEP_GOALS = (
    Goal("frozen-head step >= 0.95x our inference, batch {batch}", "pass_ratio", "ours-frozen", "ours-infer", 0.95),
    Goal("frozen-head step >= 1.0x the fastest peer train step, batch {batch}", "pass_ratio", "ours-frozen",
         FASTEST_PEER, 1.0, notes="7a-the-fastest-peer"),
    Goal("frozen-head step >= 1.5x Keras 3 / JAX train_on_batch, batch {batch}", "pass_ratio", "ours-frozen",
         "keras-jax-train", 1.5, notes="7b-keras-3-on-jax"),
    Goal("inference >= 90% of the best single-conv ceiling, batch {batch}", "ceiling_share", "ours-infer", "conv",
         0.9, notes="7c-the-conv-ceiling"),
    Goal("frozen-head step >= 6x the naive full-gradient variant, batch {batch}", "pass_ratio", "ours-frozen",
         "ours-naive", 6.0, notes="7d-the-naive-variant"),
    Goal("its peak memory <= 1/3 of the naive variant's, batch {batch}", "rss_ratio", "ours-frozen", "ours-naive",
         1 / 3, at_most=True),
)  # fmt: skip
# Checked for every variant of the compilation-cache extra (`of` is its setting).
CACHE_GOALS = (
    Goal("second run's compile <= 25% of the first's: {variant}, cache as the CLI sets it (min compile time 0.1 s)",
         "cache_compile_ratio", "cli", "", 0.25, at_most=True, notes="7e-the-compilation-cache"),
    Goal("second run's compile <= 25% of the first's: {variant}, cache min compile time 0", "cache_compile_ratio",
         "min_compile_time_0", "", 0.25, at_most=True, notes="7e-the-compilation-cache"),
)  # fmt: skip
