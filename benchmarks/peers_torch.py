"""One PyTorch peer measurement, as a child of run_all.py; prints one `RESULT` line (skipped without torch).

    python benchmarks/peers_torch.py --mode train --layout channels_last [--compile] --batch 8

VGG16 written out by hand (torchvision is not a dependency): 13 conv3x3+ReLU, 5 max-pools, fc1, fc2 with
ReLU, and a new 1-unit head. The backbone has requires_grad=False; Adam(1e-3) on the head; BCE with
logits. `--mode ceiling` times a conv (NCHW and channels_last) and a matmul.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.child import TINY_VGG, add_step_arguments, emit, skip
from benchmarks.timing import repeat_ops, threads_info, timed_steps

VGG16 = {"depths": (2, 2, 3, 3, 3), "widths": (64, 128, 256, 512, 512), "fc_units": 4096, "size": 224}
TINY = TINY_VGG  # the smoke-test VGG11 every benchmark shares


def build(torch, cfg: dict):
    nn = torch.nn
    layers, channels = [], 3
    for n, width in zip(cfg["depths"], cfg["widths"]):
        for _ in range(n):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
            channels = width
        layers.append(nn.MaxPool2d(2))
    side = cfg["size"] // 32
    backbone = nn.Sequential(
        *layers,
        nn.Flatten(),
        nn.Linear(channels * side * side, cfg["fc_units"]),
        nn.ReLU(inplace=True),
        nn.Linear(cfg["fc_units"], cfg["fc_units"]),
        nn.ReLU(inplace=True),
    )
    for p in backbone.parameters():
        p.requires_grad_(False)
    return nn.Sequential(backbone, nn.Linear(cfg["fc_units"], 1))


def ceiling(torch, repeats: int, tiny: bool) -> dict:
    b, s, c, n = (2, 28, 64, 512) if tiny else (8, 56, 256, 4096)
    x = torch.randn(b, c, s, s)
    w = torch.randn(c, c, 3, 3) * 0.02
    xcl, wcl = x.to(memory_format=torch.channels_last), w.to(memory_format=torch.channels_last)
    a = torch.randn(n, n)
    flops = 2 * b * s * s * c * c * 9
    with torch.inference_mode():
        return repeat_ops(
            {
                "conv": (lambda: torch.nn.functional.conv2d(x, w, padding=1), flops),
                "conv_channels_last": (lambda: torch.nn.functional.conv2d(xcl, wcl, padding=1), flops),
                "matmul": (lambda: a @ a, 2 * n**3),
            },
            repeats,
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=["train", "infer", "ceiling"], required=True)
    p.add_argument("--layout", choices=["nchw", "channels_last"], default="nchw")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (cold inductor cache)")
    add_step_arguments(p)
    args = p.parse_args()
    try:
        import torch
    except ImportError as e:
        skip(f"torch not installed: {e}")
    if args.mode == "ceiling":
        emit({**ceiling(torch, args.repeats, args.tiny), "torch": torch.__version__, **threads_info()})
        return
    if args.compile:  # a cold cache, so the compile time is what a first run pays
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")
    cfg = TINY if args.tiny else VGG16
    torch.manual_seed(0)
    t = time.perf_counter()
    model = build(torch, cfg)
    x = torch.randn(args.batch, 3, cfg["size"], cfg["size"])
    y = torch.randint(0, 2, (args.batch, 1)).float()
    if args.layout == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    run = torch.compile(model) if args.compile else model
    build_s = time.perf_counter() - t
    head = model[1]
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    conv1 = model[0][0].weight[..., :1].clone()

    def train():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(run(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    def infer():
        with torch.inference_mode():
            return run(x).sum().item()

    timing = timed_steps(train if args.mode == "train" else infer, args.steps, args.warmup)
    emit(
        {
            **timing,
            "compile_s": round(max(0.0, timing["first_step_s"] - timing["median_s"]), 3),
            "build_s": round(build_s, 2),
            "backbone_unchanged": bool(torch.equal(conv1, model[0][0].weight[..., :1])),
            "opt_state_bytes": sum(
                v.numel() * v.element_size() for s in opt.state.values() for v in s.values() if torch.is_tensor(v)
            ),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            **threads_info(),
        }
    )


if __name__ == "__main__":
    main()
