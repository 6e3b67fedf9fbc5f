"""What fingerprinting a folder pool costs against scoring it: the stat of every file that lets a rerun see a pool
changed under the same path, side by side with the teacher's pass over the same folder.

    .venv/bin/python -m benchmarks.fingerprint [--files 1000000] [--score 100000]

Builds a folder of `--files` image files (1,000 class-like subfolders; 1,000 distinct Fashion-MNIST pictures saved
as PNG, the rest hard links to them, so a million files need a few MB of disk but a million directory entries and
inodes to stat, as a real pool has), fingerprints it as the select stage does (edgedistill.inputs.fingerprint,
after a cold `ls -R` so the directory entries are cached as they are for the scorer), then scores a `--score`-file
subfolder sample with the demo teacher through the select stage's own reader (Pool + select_pool, its default
workers) and extrapolates scoring per file (it is linear in the files read). Prints one markdown table with the
machine's load and CPU.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def build_folder(folder: Path, files: int, distinct: int = 1000, per_folder: int = 1000) -> None:
    from PIL import Image

    from edgedistill.inputs.builtin import load_builtin

    marker = folder / f".built-{files}"
    if marker.exists():
        return
    base = load_builtin("fashion-mnist").images[:distinct]
    sources = folder / "_sources"
    sources.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(base):
        Image.fromarray(np.asarray(image).squeeze()).save(sources / f"{i:04d}.png")
    for i in range(files):
        sub = folder / "pool" / f"{i // per_folder:05d}"
        if i % per_folder == 0:
            sub.mkdir(parents=True, exist_ok=True)
        dest = sub / f"{i:08d}.png"
        if not dest.exists():
            os.link(sources / f"{i % distinct:04d}.png", dest)
    marker.touch()


def score_rate(folder: Path, limit_folders: int) -> tuple[float, int]:
    """Files scored per second by the select stage's reader and teacher over the first `limit_folders` subfolders."""
    import torch

    from edgedistill.inputs.pool import build_pool, default_workers
    from edgedistill.pipeline import load_teacher
    from edgedistill.recipe import recipe_from_dict
    from edgedistill.stages.select import select_pool

    sample = folder / "sample"
    sample.mkdir(exist_ok=True)
    for sub in sorted((folder / "pool").iterdir())[:limit_folders]:
        link = sample / sub.name
        if not link.exists():
            link.symlink_to(sub)
    recipe = recipe_from_dict(
        {
            "name": "fingerprint-bench",
            "teacher": {
                "arch": "lenet5",
                "weights": str(ROOT / "teachers" / "mnist_lenet5.safetensors"),
                "num_classes": 10,
                "input": {"channels": 1, "size": 28, "mean": [0.1307], "std": [0.3081]},
            },
            "pool": [{"folder": str(sample)}],
            "select": {"per_class": 100},
            "student": {"arch": "lenet5_half"},
        }
    )
    torch.set_num_threads(1)
    pool = build_pool(recipe)
    teacher = load_teacher(recipe)
    started = time.perf_counter()
    selection = select_pool(teacher, pool, recipe.select, 10, 0, workers=default_workers(pool))
    seconds = time.perf_counter() - started
    scored = selection.stats["pool_size"]
    return scored / seconds, scored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--score", type=int, default=100_000, help="files actually scored (a prefix of the subfolders)")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/edgedistill-fingerprint-bench"))
    args = parser.parse_args()

    from edgedistill.inputs.fingerprint import tree_fingerprint

    started = time.perf_counter()
    build_folder(args.dir, args.files)
    print(f"built {args.files:,} files in {time.perf_counter() - started:.0f} s", flush=True)
    os.system(f"ls -R {args.dir / 'pool'} > /dev/null")
    started = time.perf_counter()
    fp = tree_fingerprint(args.dir / "pool")
    fingerprint_s = time.perf_counter() - started
    assert fp.files == args.files, fp.files
    rate, scored = score_rate(args.dir, max(1, args.score // 1000))
    scoring_s = args.files / rate
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}; {cpu}, {os.cpu_count()} CPUs")
    print("| files | fingerprint s | files/s | scoring s (from rate) | scored files | scoring files/s | fingerprint share |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {args.files:,} | {fingerprint_s:.1f} | {args.files / fingerprint_s:,.0f} | {scoring_s:.0f} | {scored:,} | "
        f"{rate:,.0f} | {fingerprint_s / scoring_s:.1%} |"
    )


if __name__ == "__main__":
    main()
