"""Development runs: one recipe edit on one bench, scored on the bench's development set, never on a reporting set.

    .venv/bin/python -m benchmarks.develop --bench B1 --seed 0 --epochs 40 --name batch_128 --edits '{"distill": {"batch_size": 128}}'

Defaults are chosen from these runs only (docs/method.md): B1, B1-hard and B1-bn score on mnist-train, B2 on 10,000
Fashion-MNIST training images; benchmarks.method reports on mnist-heldout, fashion-mnist-test and opencv-digits.
B1-bn is B3's family (a torchvision student with BatchNorm, 500 images selected per class) without B3's teacher or
reporting set: B1's LeNet-5 teacher and pool, MobileNetV3-Small as the student.
The recipe is benchmarks.method's for the bench (40 epochs of batch 256 at lr 0.003, weight decay 1e-4, unless
`--epochs` or the edits say otherwise), run through the product like any row. Each run appends one line to
benchmarks/results/develop.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from filelock import FileLock

from .method import BENCH_EPOCHS, OUT, RESULTS, make_recipe, merge, run_row

MNIST_TRAIN = {"eval": {"labeled": "builtin:mnist-train"}}
DEVELOPMENT_BENCHES = {  # name: (benchmarks.method's bench, what is laid over it)
    "B1": ("B1", MNIST_TRAIN),
    "B1-hard": ("B1-hard", MNIST_TRAIN),
    "B1-bn": ("B1", {"student": {"arch": "torchvision:mobilenet_v3_small"}, "select": {"per_class": 500}, **MNIST_TRAIN}),
    "B2": ("B2", {"eval": {"labeled": "builtin:fashion-mnist", "limit": 10000}}),  # the training split, drawn by the seed
}
LOG = RESULTS / "develop.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", choices=list(DEVELOPMENT_BENCHES), required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, help=f"default: benchmarks.method's {BENCH_EPOCHS}")
    parser.add_argument("--name", required=True, help="what the edit is, for the log")
    parser.add_argument("--edits", default="{}", help="JSON laid over the bench's recipe, as benchmarks.method's rows")
    args = parser.parse_args()
    torch.set_num_threads(1)
    edits = json.loads(args.edits)
    bench, development = DEVELOPMENT_BENCHES[args.bench]
    recipe = make_recipe(bench, args.seed, args.epochs, merge(edits, development))
    load = os.getloadavg()[0]
    run = run_row(recipe, OUT / "develop" / args.bench / f"{args.name}.seed{args.seed}", {})
    line = {
        "name": args.name,
        "bench": args.bench,
        "seed": args.seed,
        "epochs": recipe.distill.epochs,
        "edits": edits,
        "eval": recipe.eval.labeled,
        "accuracy": run["accuracy"],
        "wall_s": round(run["wall_s"], 1),
        "load": [round(load, 2), round(os.getloadavg()[0], 2)],
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print(json.dumps(line))
    LOG.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(LOG) + ".lock"), LOG.open("a") as f:
        f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
