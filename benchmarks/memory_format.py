"""Which memory format and autocast precision a distillation step should use on this CPU, across model families and
input sizes: the evidence behind `compute.channels_last`'s default (issue #27 item 4).

    .venv/bin/python -m benchmarks.memory_format --out benchmarks/results/memory_format-YYYY-MM-DD.txt

For each teacher-student pair of the benches (random init: speed does not depend on the weights), the library's bare
distillation step (edgedistill.scale.throughput.bare_step_rate: teacher forward, student forward, KL, backward,
AdamW) under three computes: fp32 contiguous (the CPU default until 2026-12-08), fp32 channels_last, and bf16 autocast
with channels_last (timed only where the CPU has native bf16: AVX-512 BF16 or AMX). The computes alternate in
rounds, the order reversed every round, and each is reported as the median of its per-round ratio to fp32's block.
profile_distill.py splits B3's whole step (augmentation, feature and relation losses, evaluation); this script only
asks whether the memory format helps every pair, small LeNets included.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
from pathlib import Path

import torch

from edgedistill.backends.base import cpu_flags, machine_facts
from edgedistill.models.factory import create_model
from edgedistill.scale.compute import Compute
from edgedistill.scale.throughput import bare_step_rate

CPU = torch.device("cpu")
# (name, teacher arch, student arch, channels, size, classes, batch): the demo's pair, B3's, and the symbol benches'
PAIRS = [
    ("demo: LeNet-5 -> LeNet-5-half, 1x28", "lenet5", "lenet5_half", 1, 28, 10, 128),
    ("B3: ResNet-18 -> MobileNetV3-Small, 1x32", "torchvision:resnet18", "torchvision:mobilenet_v3_small", 1, 32, 10, 128),
    ("S32: ResNet-20 w16 -> MobileNetV3-Small x0.5, 3x32", "resnet20_w16", "mobilenetv3_small_w0.5", 3, 32, 16, 128),
    ("S96: ResNet-18 -> MobileNetV3-Small, 3x96", "torchvision:resnet18", "torchvision:mobilenet_v3_small", 3, 96, 16, 128),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=2.0, help="per block")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines: list[str] = []

    def out(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    native_bf16 = bool({"avx512_bf16", "amx_bf16"} & (cpu_flags() or set()))
    model = machine_facts()["cpu_model"] or "?"
    out(f"# .venv/bin/python -m benchmarks.memory_format --rounds {args.rounds} --seconds {args.seconds} --threads {args.threads}")
    out(
        f"CPU {model}, {os.cpu_count()} CPUs, native bf16 {native_bf16}; torch {torch.__version__} "
        f"({torch.backends.cpu.get_cpu_capability()}), Python {platform.python_version()}, {args.threads} thread(s); "
        f"load at start {os.getloadavg()[0]:.2f}"
    )
    computes = {"fp32": Compute(CPU, None, False, False), "channels_last": Compute(CPU, None, True, False)}
    if native_bf16:
        computes["bf16_channels_last"] = Compute(CPU, torch.bfloat16, True, False)
    out("\n| pair | batch | fp32 img/s | " + " | ".join(f"{n} x fp32 (range)" for n in list(computes)[1:]) + " |")
    out("|---|---|---|" + "---|" * (len(computes) - 1))
    for name, t_arch, s_arch, channels, size, classes, batch in PAIRS:
        torch.manual_seed(0)
        teacher = create_model(t_arch, classes, channels, size).eval().requires_grad_(False)
        student = create_model(s_arch, classes, channels, size)
        x = torch.randn(batch, channels, size, size)
        models = {n: (c.prepare(copy.deepcopy(teacher)), c.prepare(copy.deepcopy(student))) for n, c in computes.items()}
        rates: dict[str, list[float]] = {n: [] for n in computes}
        for r in range(args.rounds):
            for n in list(computes) if r % 2 == 0 else list(computes)[::-1]:
                t, s = models[n]
                rates[n].append(bare_step_rate(t, s, x, computes[n], seconds=args.seconds, warmup=1))
        cells = []
        for n in list(computes)[1:]:
            ratios = [a / b for a, b in zip(rates[n], rates["fp32"])]
            cells.append(f"**{statistics.median(ratios):.2f}** ({min(ratios):.2f}-{max(ratios):.2f})")
        out(f"| {name} | {batch} | {statistics.median(rates['fp32']):.0f} | " + " | ".join(cells) + " |")
    out(f"load at end {os.getloadavg()[0]:.2f}")
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
