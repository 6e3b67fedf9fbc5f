"""Development runs: one recipe edit on one bench, scored on the bench's development set, never on a reporting set.

    .venv/bin/python -m benchmarks.develop --bench B1 --seed 0 --epochs 40 --name batch_128 --edits '{"distill": {"batch_size": 128}}'
    .venv/bin/python -m benchmarks.develop --list      # the command that repeats each logged run

Defaults are chosen from these runs only (docs/method.md): B1, B1-hard and B1-bn score on mnist-train, B2 on 10,000
Fashion-MNIST training images, B3 on opencv-digits, S32-dev and S96-dev on the symbols `dev` split
(scripts/render_symbols.py); benchmarks.method reports on mnist-heldout (B1, B1-hard, B1-crawl)
and fashion-mnist-test (B2), each run pre-registered. B3 is a development bench since issue #27: it was run as a
reporting bench after every default change and its results chose what was searched next, so its set is a development
set now. B1-bn is B3's family (a torchvision student with BatchNorm, 500 images selected per class) without B3's
teacher or set: B1's LeNet-5 teacher and pool, MobileNetV3-Small as the student.
The recipe is benchmarks.method's for the bench (40 epochs of batch 256 at lr 0.003, weight decay 1e-4, unless
`--epochs` or the edits say otherwise), run through the product like any row. Each run appends one line to
benchmarks/results/develop.jsonl, with the command that repeats it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

LOG = Path(__file__).resolve().parent / "results" / "develop.jsonl"
MNIST_TRAIN = {"eval": {"labeled": "builtin:mnist-train"}}
DEVELOPMENT_BENCHES = {  # name: (benchmarks.method's bench, what is laid over it)
    "B1": ("B1", MNIST_TRAIN),
    "B1-hard": ("B1-hard", MNIST_TRAIN),
    "B1-bn": ("B1", {"student": {"arch": "torchvision:mobilenet_v3_small"}, "select": {"per_class": 500}, **MNIST_TRAIN}),
    "B2": ("B2", {"eval": {"labeled": "builtin:fashion-mnist", "limit": 10000}}),  # the training split, drawn by the seed
    "B3": ("B3", {}),  # opencv-digits, its own set: a development set since issue #27
    # The twins of the symbol reporting benches S32 and S96 (issue #27): the same entry, scored on the rendered `dev`
    # split; the `report` split of S32/S96 holds fonts and pictures that nothing here reads.
    "S32-dev": ("S32-dev", {}),
    "S96-dev": ("S96-dev", {}),
}
# Logged runs that no command of this repository repeats, and why.
NOT_REPEATABLE = {
    ("b128_ema999", "B2", 0, 40): "distill.ema was a trial patch, never committed (docs/method.md, Learning rate 0.008)",
}


def command_of(line: dict, old_b2_pool: list[dict]) -> tuple[str, str | None]:
    """The command that repeats a logged run, and why it cannot (None when it can). Lines since commands were logged
    carry theirs; older lines are rebuilt from their fields, B2's with the pool of the time."""
    why = NOT_REPEATABLE.get((line["name"], line["bench"], line["seed"], line["epochs"]))
    if line.get("command"):
        return line["command"], why
    edits = dict(line["edits"])
    if line["bench"] == "B2" and "pool" not in line:
        edits["pool"] = old_b2_pool
    args = ["--bench", line["bench"], "--seed", str(line["seed"]), "--epochs", str(line["epochs"]), "--name", line["name"]]
    if edits:
        args += ["--edits", json.dumps(edits)]
    return shlex.join([".venv/bin/python", "-m", "benchmarks.develop", *args]), why


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", choices=list(DEVELOPMENT_BENCHES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, help="default: benchmarks.method's BENCH_EPOCHS (40)")
    parser.add_argument("--name", help="what the edit is, for the log")
    parser.add_argument("--edits", default="{}", help="JSON laid over the bench's recipe, as benchmarks.method's rows")
    parser.add_argument("--list", action="store_true", help="print the command that repeats each logged run, and run nothing")
    args = parser.parse_args()

    from .method import B2_POOL_UNTIL_ISSUE_27, OUT, make_recipe, merge, run_row

    if args.list:
        for n, text in enumerate(LOG.read_text().splitlines(), 1):
            line = json.loads(text)
            command, why = command_of(line, B2_POOL_UNTIL_ISSUE_27)
            result = f"{100 * line['accuracy']:.2f} on {line['eval'].removeprefix('builtin:')}"
            print(f"# line {n}: {line['name']}, {line['bench']} seed {line['seed']}, {line['epochs']} epochs: {result}")
            print(f"# not repeatable: {why}" if why else command)
        return
    if not args.bench or not args.name:
        parser.error("--bench and --name are required (or --list)")

    import torch
    from filelock import FileLock

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
        "pool": recipe.model_dump(mode="json")["pool"],
        "accuracy": run["accuracy"],
        "wall_s": round(run["wall_s"], 1),
        "load": [round(load, 2), round(os.getloadavg()[0], 2)],
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": shlex.join([os.path.relpath(sys.executable, LOG.parent.parent.parent), "-m", "benchmarks.develop", *sys.argv[1:]]),
    }
    print(json.dumps(line))
    LOG.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(LOG) + ".lock"), LOG.open("a") as f:
        f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
