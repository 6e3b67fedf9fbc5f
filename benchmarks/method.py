"""The method measured against its rivals: selection strategies, ablations and a generator baseline (DAFL).

    .venv/bin/python -m benchmarks.method --quick|--full [--bench B1,B1-hard,B2] [--seeds N]

Every distillation row runs the library itself (edgedistill.select.select_pool, edgedistill.distill.distill,
edgedistill.pipeline.load_teacher/build_student) on a recipe derived from recipes/demo.yaml; only the
upper bound (cross-entropy on labeled data) and DAFL (benchmarks/dafl.py) are written here.
Each bench's raw results go to runs/bench/method-<mode>/<bench>.json; every invocation then renders all
benches found there into docs/results.md and the docs/<bench>_time_to_accuracy.png plots, so two benches can
run in two processes and the last one to finish writes the complete page.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from edgedistill.config.load import recipe_from_dict
from edgedistill.config.schema import Recipe
from edgedistill.inputs.builtin import FASHION_CLASSES, load_builtin
from edgedistill.inputs.images import standardize
from edgedistill.inputs.labeled import load_labeled
from edgedistill.inputs.pool import build_pool
from edgedistill.pipeline import build_student, load_teacher, package_versions
from edgedistill.results.selection import Selection
from edgedistill.stages.augment import augment_batch
from edgedistill.stages.distill import distill
from edgedistill.stages.select import holdout_last, select_pool, split_selection
from edgedistill.stages.validate import predict_torch

from .dafl import run_dafl

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "results.md"
RECIPES = ROOT / "recipes"
OUT = ROOT / "runs" / "bench"

BENCHES = {
    "B1": {
        "what": "MNIST LeNet-5 teacher -> LeNet-5-half; pool Fashion-MNIST 60k + natural patches 60k + sklearn digits 1,797; "
        "accuracy on mnist-heldout (5,000)",
        "changes": {},
        "labeled": ("mnist-train", None),
        "rows": "all",
    },
    "B1-hard": {
        "what": "as B1 without the sklearn digits slice (no digit at all in the pool)",
        "changes": {"pool": [{"builtin": "fashion-mnist"}, {"builtin": "natural-patches", "count": 60000}]},
        "labeled": None,
        "rows": ["teacher", "kd_random", "full"],
    },
    "B2": {
        "what": "Fashion-MNIST LeNet-5 teacher (teachers/fashion_lenet5) -> LeNet-5-half; pool MNIST digits "
        "(mnist-train + mnist-heldout, 10k) + sklearn digits (upsampled) + natural patches 60k; accuracy on fashion-mnist-test (10,000)",
        "changes": {
            "name": "fashion-lenet5-half",
            "teacher": {"weights": "../teachers/fashion_lenet5.safetensors", "class_names": FASHION_CLASSES},
            "pool": [
                {"builtin": "mnist-train"},
                {"builtin": "mnist-heldout"},
                {"builtin": "sklearn-digits"},
                {"builtin": "natural-patches", "count": 60000},
            ],
            "eval": {"labeled": "builtin:fashion-mnist-test"},
        },
        "labeled": ("fashion-mnist", {"quick": 10000, "full": None}),
        "rows": "all",
    },
}

# row key -> (label, edits to the recipe); selection "same size" rows get select.total = size of the balanced selection
PLAIN_KD = {"class_drop": {"mode": "none"}, "loss": {"feature": 0.0, "relation": 0.0}}
ROWS = {
    "teacher": ("teacher", None),
    "ce_upper": ("student, cross-entropy on labeled data (upper bound)", None),
    "kd_random": ("KD on a random pool subset", {"strategy": "random", **PLAIN_KD}),
    "kd_dfnd": ("KD, `dfnd` selection", {"strategy": "dfnd", **PLAIN_KD}),
    "kd_entropy": ("KD, `entropy` selection", {"strategy": "entropy", **PLAIN_KD}),
    "full": ("**full method** (balanced selection + class-drop + KD + feature + relation)", {}),
    "no_select": ("full method, selection -> random", {"strategy": "random"}),
    "no_class_drop": ("full method, class-drop -> none", {"class_drop": {"mode": "none"}}),
    "no_feature": ("full method, feature loss -> 0", {"loss": {"feature": 0.0}}),
    "no_relation": ("full method, relation loss -> 0", {"loss": {"relation": 0.0}}),
    "dafl": ("DAFL generator baseline (benchmarks/dafl.py)", None),
}
MODES = {  # epochs of every distillation row; DAFL's budget as a multiple of the full method's wall time
    "quick": {"epochs": 10, "seeds": 1, "dafl_factor": 3.0},
    "full": {"epochs": None, "seeds": 3, "dafl_factor": 10.0},  # None: the recipe's 20 epochs
}


def make_recipe(bench: str, epochs: int | None, edits: dict | None = None) -> Recipe:
    data = yaml.safe_load((RECIPES / "demo.yaml").read_text())
    for key, value in BENCHES[bench]["changes"].items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
    data["targets"] = []
    if epochs:
        data["distill"]["epochs"] = epochs
    edits = edits or {}
    if "strategy" in edits:
        data["select"] = {
            "strategy": edits["strategy"],
            **({"per_class": data["select"]["per_class"]} if edits["strategy"] == "balanced" else {}),
        }
    if "class_drop" in edits:
        data["class_drop"] = edits["class_drop"]
    if "loss" in edits:
        data["distill"]["loss"] = {**data["distill"]["loss"], **edits["loss"]}
    return recipe_from_dict(data, base_dir=RECIPES, source=f"benchmarks.method:{bench}")


def split(selection: Selection, seed: int) -> np.ndarray:
    """The training part of a selection, as the pipeline splits it."""
    return split_selection(holdout_last(selection, seed))[0]


class Clock:
    """Wall time of a row without the time spent evaluating it."""

    def __init__(self, offset: float = 0.0):
        self.start, self.excluded, self.offset = time.perf_counter(), 0.0, offset

    def now(self) -> float:
        return time.perf_counter() - self.start - self.excluded + self.offset


def make_evaluate(eval_images: np.ndarray, labels: np.ndarray, spec, clock: Clock, curve: list):
    def evaluate(student: torch.nn.Module) -> dict:
        t = clock.now()
        tick = time.perf_counter()
        acc = float((predict_torch(student, eval_images, spec).argmax(1) == labels).mean())
        clock.excluded += time.perf_counter() - tick
        curve.append((round(t, 2), acc))
        return {"accuracy": acc}

    return evaluate


def train_ce(recipe: Recipe, images: np.ndarray, labels: np.ndarray, epochs: int, seed: int, evaluate) -> torch.nn.Module:
    """The upper bound: the same student, optimizer, schedule and augmentation, cross-entropy on true labels."""
    torch.manual_seed(seed)
    student = build_student(recipe)
    spec, d = recipe.teacher.input, recipe.distill
    optimizer = torch.optim.AdamW(student.parameters(), lr=d.lr, weight_decay=d.weight_decay)
    steps = max(1, len(images) // d.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=d.lr, total_steps=epochs * steps, pct_start=0.15, anneal_strategy="cos"
    )
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    for epoch in range(epochs):
        g = torch.Generator().manual_seed(seed * 1000 + epoch)
        order = torch.randperm(len(x), generator=g)
        student.train()
        for s in range(steps):
            idx = order[s * d.batch_size : (s + 1) * d.batch_size]
            batch = x[idx].float() / 255.0
            if d.augment is not None:
                batch = augment_batch(batch, d.augment, g)
            loss = F.cross_entropy(student(standardize(batch, spec)), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        student.eval()
        evaluate(student)
    return student


def time_to(curve: list, target: float) -> float | None:
    return next((t for t, a in curve if a >= target), None)


def run_bench(bench: str, mode: str, seeds: int, log) -> dict:
    cfg, m = BENCHES[bench], MODES[mode]
    epochs = m["epochs"]
    base = make_recipe(bench, epochs)
    epochs = base.distill.epochs
    spec = base.teacher.input
    teacher = load_teacher(base)
    ev = load_labeled(base.eval.labeled.removeprefix(""), base)
    teacher_acc = float((predict_torch(teacher, ev.images, spec).argmax(1) == ev.labels).mean())
    log(f"[{bench}] teacher {teacher_acc:.4f} on {base.eval.labeled}")
    t0 = time.perf_counter()
    pool = build_pool(base)
    log(f"[{bench}] pool {pool.size} images from {[(p.name, p.size) for p in pool.parts]} in {time.perf_counter() - t0:.0f} s")
    keys = list(ROWS) if cfg["rows"] == "all" else cfg["rows"]
    if cfg["labeled"] is None:
        keys = [k for k in keys if k != "ce_upper"]
    results: dict = {
        "bench": bench,
        "what": cfg["what"],
        "mode": mode,
        "epochs": epochs,
        "seeds": seeds,
        "teacher_accuracy": teacher_acc,
        "eval": base.eval.labeled,
        "pool_size": pool.size,
        "rows": {},
    }
    for k in keys:
        results["rows"][k] = {"label": ROWS[k][0], "runs": []}
    results["rows"]["teacher"]["runs"] = [{"seed": 0, "accuracy": teacher_acc, "wall_s": None, "curve": []}]

    for seed in range(seeds):
        selections: dict = {}

        def selection(strategy: str, total: int | None, selections: dict = selections, seed: int = seed):
            if strategy not in selections:
                r = make_recipe(bench, epochs, {"strategy": strategy})
                sel_spec = r.select.model_copy(update={"total": total}) if total else r.select
                tick = time.perf_counter()
                sel = select_pool(teacher, pool, sel_spec, r.teacher.num_classes, seed)
                selections[strategy] = (sel, time.perf_counter() - tick)
                log(
                    f"[{bench} seed {seed}] select {strategy}: {len(sel.images)} images in {selections[strategy][1]:.1f} s, "
                    f"from {sel.stats['selected_from_source']}, per class {sel.stats['selected_per_class']}"
                )
            return selections[strategy]

        balanced, _ = selection("balanced", None)
        size = len(balanced.images)
        for k in keys:
            if k in ("teacher", "dafl"):
                continue
            curve: list = []
            if k == "ce_upper":
                name, count = cfg["labeled"]
                count = count.get(mode) if isinstance(count, dict) else count
                data = load_builtin(name, count=count, seed=seed)
                from edgedistill.inputs.images import convert_array

                images, labels = convert_array(data.images, spec), data.labels.astype(np.int64)
                ce_epochs = max(epochs, math.ceil(epochs * 24000 / len(images)))  # about the distillation rows' step count
                clock = Clock()
                train_ce(base, images, labels, ce_epochs, seed, make_evaluate(ev.images, ev.labels, spec, clock, curve))
                run = {
                    "seed": seed,
                    "accuracy": curve[-1][1],
                    "wall_s": clock.now(),
                    "curve": curve,
                    "note": f"{len(images)} labeled {name} images, {ce_epochs} epochs",
                }
            else:
                edits = ROWS[k][1]
                recipe = make_recipe(bench, epochs, edits)
                strategy = recipe.select.strategy
                sel, sel_s = selection(strategy, None if strategy == "balanced" else size)
                train = split(sel, seed)
                clock = Clock(offset=sel_s)  # the row's time includes scoring the pool
                torch.manual_seed(seed)  # every row starts from the same student weights, as Pipeline.stage_distill does
                student = build_student(recipe)
                distill(
                    teacher,
                    student,
                    train,
                    recipe.distill,
                    recipe.class_drop,
                    spec,
                    seed,
                    evaluate=make_evaluate(ev.images, ev.labels, spec, clock, curve),
                )
                run = {
                    "seed": seed,
                    "accuracy": curve[-1][1],
                    "wall_s": clock.now(),
                    "curve": curve,
                    "select_s": sel_s,
                    "train_size": len(train),
                }
            results["rows"][k]["runs"].append(run)
            log(f"[{bench} seed {seed}] {k}: {run['accuracy']:.4f} in {run['wall_s']:.0f} s")
        results.setdefault("selection", {})[str(seed)] = {s: v[0].stats for s, v in selections.items()}
        if "dafl" in keys:
            full_run = results["rows"]["full"]["runs"][-1]
            budget = m["dafl_factor"] * full_run["wall_s"]
            curve = []
            clock = Clock()
            evaluate = make_evaluate(ev.images, ev.labels, spec, clock, curve)
            torch.manual_seed(seed)
            out = run_dafl(
                teacher,
                build_student(base),
                budget,
                lambda s, evaluate=evaluate: evaluate(s)["accuracy"],
                seed,
                eval_every_s=max(5.0, budget / 60),
            )
            curve = [(round(t, 2), a) for t, a in out["curve"]]
            reach = time_to(curve, full_run["accuracy"])
            run = {
                "seed": seed,
                "accuracy": curve[-1][1],
                "best_accuracy": max(a for _, a in curve),
                "wall_s": curve[-1][0],
                "curve": curve,
                "budget_s": budget,
                "steps": out["steps"],
                "images_seen": out["images_seen"],
                "reaches_full_method_at_s": reach,
            }
            results["rows"]["dafl"]["runs"].append(run)
            log(
                f"[{bench} seed {seed}] dafl: {run['accuracy']:.4f} (best {run['best_accuracy']:.4f}) after {budget:.0f} s budget, "
                f"{out['steps']} steps; reaches full method's {full_run['accuracy']:.4f}: {reach}"
            )
    return results


# ---------------------------------------------------------------------------------------------- report


def fmt_s(x: float | None) -> str:
    return "—" if x is None else f"{x:.0f}"


def summarize(results: dict) -> list[list[str]]:
    teacher = results["teacher_accuracy"]
    rows = []
    for k, row in results["rows"].items():
        runs = row["runs"]
        if not runs:
            continue
        accs = np.array([r["accuracy"] for r in runs])
        mean = accs.mean()
        acc = f"{100 * mean:.2f}" + (f" ± {100 * accs.std(ddof=1):.2f}" if len(accs) > 1 else "")
        walls = [r["wall_s"] for r in runs if r["wall_s"] is not None]
        wall = fmt_s(np.mean(walls)) if walls else "—"
        t95 = [time_to(r["curve"], 0.95 * r["accuracy"]) for r in runs if r["curve"]]
        t95s = "—" if not t95 or any(t is None for t in t95) else fmt_s(np.mean(t95))
        note = runs[0].get("note", "")
        if k == "dafl":
            reach = [r["reaches_full_method_at_s"] for r in runs]
            best = np.mean([r["best_accuracy"] for r in runs])
            note = (
                f"budget {np.mean([r['budget_s'] for r in runs]):.0f} s ({results.get('dafl_factor', '')}x full method), "
                f"best {100 * best:.2f}%, {np.mean([r['steps'] for r in runs]):.0f} steps; reaches the full method's accuracy: "
                + ("never within budget" if any(r is None for r in reach) else f"at {np.mean(reach):.0f} s")
            )
        elif k not in ("teacher", "ce_upper"):
            note = f"{runs[0]['train_size']} training images, pool scoring {runs[0]['select_s']:.0f} s included"
        rows.append([row["label"], acc, "100.0" if k == "teacher" else f"{100 * mean / teacher:.1f}", wall, t95s, note])
    return rows


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for k, style in (("full", "-o"), ("kd_random", "-s"), ("dafl", "-")):
        row = results["rows"].get(k)
        if not row or not row["runs"]:
            continue
        c = row["runs"][0]["curve"]
        ax.plot([t for t, _ in c], [100 * a for _, a in c], style, ms=3, label=row["label"].replace("**", ""))
    ax.axhline(100 * results["teacher_accuracy"], color="gray", ls="--", lw=1, label="teacher")
    ax.set_xlim(left=0)
    ax.set_xlabel("wall-clock seconds (1 CPU thread, seed 0; pool scoring included)")
    ax.set_ylabel(f"accuracy on {results['eval'].removeprefix('builtin:')} (%)")
    ax.set_title(f"{results['bench']}: accuracy against wall-clock time ({results['mode']})")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(mode: str) -> str:
    files = sorted((OUT / f"method-{mode}").glob("*.json"))
    order = {b: i for i, b in enumerate(BENCHES)}
    all_results = sorted((json.loads(f.read_text()) for f in files), key=lambda r: order.get(r["bench"], 99))
    m = MODES[mode]
    lines = [
        "# Results: the method against its rivals",
        "",
        "Written by `benchmarks/method.py`; do not edit by hand. See docs/method.md for the method and how to read this.",
        "",
    ]
    for r in all_results:
        r["dafl_factor"] = m["dafl_factor"]
        lines += [f"## {r['bench']} — `--{mode}`: {r['epochs']} epochs per distillation row, {r['seeds']} seed(s)", "", r["what"] + ".", ""]
        if mode == "quick":
            lines += [
                (
                    "`--quick` trains 10 epochs, half of recipes/demo.yaml's 20 (the one-cycle schedule is compressed to fit)"
                    + (
                        ", with one seed: single-seed differences of a few points are within run-to-run noise."
                        if r["seeds"] == 1
                        else f"; ± is the standard deviation over {r['seeds']} seeds (selection, split, initial weights and batch order "
                        "all change with the seed)."
                    )
                ),
                "",
            ]
        lines += [
            "| row | accuracy % (mean ± std) | % of teacher | wall time (s) | time to 95% of final (s) | notes |",
            "|---|---|---|---|---|---|",
        ]
        lines += ["| " + " | ".join(cells) + " |" for cells in summarize(r)]
        lines += ["", f"Command: `{r['command']}` (bench wall time {r['bench_wall_s']:.0f} s, {r['finished']}).", ""]
        plot(r, ROOT / "docs" / f"{r['bench'].lower().replace('-', '_')}_time_to_accuracy.png")
        png = ROOT / "docs" / f"{r['bench'].lower().replace('-', '_')}_time_to_accuracy.png"
        if png.exists():
            lines += [f"![{r['bench']} accuracy against time]({png.name})", ""]
        sel = r.get("selection", {}).get("0", {})
        if sel:
            lines += ["Selection (seed 0), images taken from each pool source:", ""]
            lines += [f"- {s}: {st['selected']} selected, {st['selected_from_source']}" for s, st in sel.items()]
            lines += [""]
    if all_results:
        v = all_results[-1]["versions"]
        lines += [
            "## Environment",
            "",
            "- " + ", ".join(f"{k} {val}" for k, val in v.items()),
            f"- {all_results[-1]['machine']}",
            (
                "- `torch.set_num_threads(1)` per process; the benches ran as separate processes side by side (up to three, "
                "with other jobs) on the 2 cores, so wall times carry noise and compare best within one bench."
            ),
            (
                "- Wall time of a distillation row = scoring the pool with the teacher (`select_pool`) + training, "
                "without evaluation time. "
                "Time to 95%: the first per-epoch evaluation at or above 95% of the row's final accuracy."
            ),
            "",
        ]
    text = "\n".join(lines)
    DOC.write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="10 epochs, 1 seed, DAFL budget 3x the full method")
    g.add_argument("--full", action="store_true", help="the recipe's 20 epochs, 3 seeds, DAFL budget 10x the full method")
    parser.add_argument("--bench", default="B1,B1-hard,B2")
    parser.add_argument("--seeds", type=int)
    parser.add_argument("--render-only", action="store_true", help="rewrite docs/results.md from the stored results")
    args = parser.parse_args()
    mode = "full" if args.full else "quick"
    torch.set_num_threads(1)
    if not args.render_only:
        seeds = args.seeds or MODES[mode]["seeds"]
        out_dir = OUT / f"method-{mode}"
        out_dir.mkdir(parents=True, exist_ok=True)
        for bench in args.bench.split(","):
            if bench not in BENCHES:
                sys.exit(f"unknown bench {bench!r}; choose from {', '.join(BENCHES)}")
            started = time.perf_counter()
            log_file = (out_dir / f"{bench}.log").open("w")

            def log(msg: str, log_file=log_file) -> None:
                print(msg, flush=True)
                log_file.write(msg + "\n")
                log_file.flush()

            results = run_bench(bench, mode, seeds, log)
            results.update(
                {
                    "command": " ".join(
                        shlex.quote(a) for a in [os.path.relpath(sys.executable, ROOT), "-m", "benchmarks.method", *sys.argv[1:]]
                    ),
                    "bench_wall_s": time.perf_counter() - started,
                    "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "versions": package_versions(),
                    "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
                }
            )
            (out_dir / f"{bench}.json").write_text(json.dumps(results, indent=1))
            plot(results, ROOT / "docs" / f"{bench.lower().replace('-', '_')}_time_to_accuracy.png")
    print(render(mode))


if __name__ == "__main__":
    main()
