"""Peak memory of pool scoring against pool size: a pool 8x larger, the same selection, about the same memory.

    .venv/bin/python -m benchmarks.pool_memory [--sizes 25000,200000] [--per-class 500]

Writes WebDataset shards of real Fashion-MNIST pictures (cycled, each copy shifted so no two are identical),
then scores each pool size with the demo teacher and edgedistill.select.select_pool in a fresh process and prints its peak RSS
side by side, with the ratio to the smallest pool. Prints one markdown table.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PER_SHARD = 5000


def write_shards(folder: Path, count: int) -> str:
    from edgedistill.inputs.builtin import load_builtin

    base = load_builtin("fashion-mnist").images
    folder.mkdir(parents=True, exist_ok=True)
    shards = (count + PER_SHARD - 1) // PER_SHARD
    for shard in range(shards):
        with tarfile.open(folder / f"pool-{shard:04d}.tar", "w") as tar:
            for i in range(shard * PER_SHARD, min(count, (shard + 1) * PER_SHARD)):
                image = np.roll(base[i % len(base)], i // len(base), axis=1)
                data = b"P5 28 28 255\n" + image.tobytes()  # binary PGM: decoded by Pillow like any image file
                info = tarfile.TarInfo(f"{i:08d}.pgm")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return str(folder / f"pool-{{0000..{shards - 1:04d}}}.tar")


def score(pattern: str, per_class: int) -> dict:
    """Runs in its own process: one select_pool pass over the shards; peak RSS from the kernel."""
    import torch

    from edgedistill.config.schema import InputSpec, SelectSpec
    from edgedistill.inputs.pool import Pool, ShardsPart, expand_shards
    from edgedistill.models.factory import create_model
    from edgedistill.stages.select import select_pool

    torch.set_num_threads(1)
    spec = InputSpec(channels=1, size=28, mean=[0.1307], std=[0.3081])
    from safetensors.torch import load_file

    teacher = create_model("lenet5", 10, 1).eval()
    teacher.load_state_dict(load_file(str(ROOT / "teachers" / "mnist_lenet5.safetensors")))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    selection = select_pool(
        teacher, Pool(spec, [ShardsPart("shards", expand_shards(pattern, Path("/")))], 512), SelectSpec(per_class=per_class), 10, seed=0
    )
    return {
        "scored": selection.stats["scored"],
        "selected": selection.stats["selected"],
        "seconds": time.perf_counter() - start,
        "rss_before_mb": before / 1024,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="25000,200000")
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--score", nargs=2, metavar=("PATTERN", "PER_CLASS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.score:
        print(json.dumps(score(args.score[0], int(args.score[1]))))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            pattern = write_shards(Path(tmp) / str(size), size)
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.pool_memory", "--score", pattern, str(args.per_class)],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            )
            rows.append({"pool": size, **json.loads(out.stdout.strip().splitlines()[-1])})
    first = rows[0]
    print("| pool images | scored | selected | peak RSS (MB) | RSS growth while scoring (MB) | peak RSS vs smallest pool | seconds |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['pool']:,} | {r['scored']:,} | {r['selected']:,} | {r['peak_rss_mb']:.0f} | "
            f"{r['peak_rss_mb'] - r['rss_before_mb']:.0f} | "
            f"**{r['peak_rss_mb'] / first['peak_rss_mb']:.2f}x** | {r['seconds']:.0f} |"
        )
    print(
        f"\nCommand: `python -m benchmarks.pool_memory --sizes {args.sizes} --per-class {args.per_class}` "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})."
    )


if __name__ == "__main__":
    main()
