"""The method measured against its rivals and against itself without each part, over several seeds.

    .venv/bin/python -m benchmarks.method --quick|--full --bench B1[,B1-hard,B1-crawl,B2] [--seed 0,1,2] [--rows full,previous]
    .venv/bin/python -m benchmarks.method --quick|--full --development --bench B3 [--seed ...] [--rows ...]

Every distillation row runs the product: `edgedistill.compress` (select and distill stages) on a recipe derived from
recipes/demo.yaml, in its own run directory under runs/bench/; rows whose select section is the same share one
scoring pass of the pool (its time is counted in each). The accuracy of a row is that of the student the run keeps
(the last epoch's, or by hold-out teacher agreement: never by labels), on the bench's evaluation set. Only the labeled
upper bound (cross-entropy on the teacher's own data) and the generator baseline (benchmarks/dafl.py) are written here.

Development and reporting are kept apart (docs/method.md). Defaults are chosen on development sets: mnist-train and a
Fashion-MNIST training subset through benchmarks/develop.py (seeds 0, 100 and 101), and B3, a development bench since
issue #27. The reporting benches (B1, B1-hard, B1-crawl, B2) are scored on mnist-heldout and fashion-mnist-test.
That separation was not always kept, and docs/method.md lists where it broke: the demo's first settings were chosen on
mnist-heldout (2026-11-29), B3 was run as a reporting bench after every default change and its results chose which
knob the development runs searched next, and B2's pool held mnist-heldout's images (unlabeled) until issue #27. So a
reporting bench now runs only as pre-registered (benchmarks/preregister.py): a committed file names the bench, its
definition, the commit of the method and the command, and every reporting run is listed in
benchmarks/results/reporting-runs.json and docs/method.md, good or bad. Development benches run with --development.

Raw results go to benchmarks/results/method-<mode>/<bench>.seed<k>.json, which is committed: the rendered page is only
as durable as they are (docs/results-until-2026-12-02.md was rendered from files kept under runs/, since lost). Every
invocation renders all benches found there into docs/results.md and the docs/<bench>_time_to_accuracy.png plots, and
the runs list into docs/method.md's "Reporting runs" table.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import shlex
import shutil
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from filelock import FileLock
from rich.console import Console

from edgedistill.atomic import atomic_write_text
from edgedistill.config.schema import Recipe
from edgedistill.inputs.builtin import FASHION_CLASSES, load_builtin
from edgedistill.inputs.images import convert_array, standardize
from edgedistill.inputs.labeled import load_labeled, read_class_folders
from edgedistill.pipeline import build_student, compress, load_teacher
from edgedistill.recipe import recipe_from_dict
from edgedistill.results.rundir import RunDir, package_versions
from edgedistill.scale.compute import resolve_compute
from edgedistill.stages.augment import augment_batch
from edgedistill.stages.distill import recalibrate_batchnorm
from edgedistill.stages.validate import predict_torch

from . import preregister
from .dafl import run_dafl

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "results.md"
RECIPES = ROOT / "recipes"
OUT = ROOT / "runs" / "bench"  # run directories: checkpoints, selections, logs
RESULTS = ROOT / "benchmarks" / "results"  # raw results, one file per bench and seed
B1_POOL = [{"builtin": "fashion-mnist"}, {"builtin": "natural-patches", "count": 60000}, {"builtin": "sklearn-digits"}]
# B2's pool until issue #27: it held mnist-heldout, B1's reporting set (unlabeled, but read by every B2 development run
# and every B2 row). Its stored results (benchmarks/results/method-full/B2.seed*.json) and its development runs logged
# before 2026-12-07 used it; `benchmarks.develop --list` lays it over those runs' edits to repeat them.
B2_POOL_UNTIL_ISSUE_27 = [
    {"builtin": "mnist-train"},
    {"builtin": "mnist-heldout"},
    {"builtin": "sklearn-digits"},
    {"builtin": "natural-patches", "count": 60000},
]
# Today's: opencv-digits (5,000 handwritten digits of OpenCV's sheet, framed to 28x28 as MNIST's) in place of
# mnist-heldout (5,000 MNIST digits), so the pool keeps 10,000 handwritten digits of the same framing. opencv-digits is
# no reporting set: it is B3's evaluation set, and B3 is a development bench.
B2_POOL = [
    {"builtin": "mnist-train"},
    {"builtin": "opencv-digits"},
    {"builtin": "sklearn-digits"},
    {"builtin": "natural-patches", "count": 60000},
]

# The symbol benches of issue #27 (docs/method.md, "New RGB benches (issue #27): not yet run"). An RGB teacher with
# BatchNorm, trained by scripts/train_symbols_teacher.py on letters and signs that scripts/render_symbols.py draws on cuts
# of photos, is distilled into a student of another family from a pool of built-in sources only: natural-patches (RGB)
# and grayscale sets, nothing of the generator. Each reporting bench (S32, S96) has a development twin (S32-dev, S96-dev)
# built by the same function, so the two differ only in the evaluation set (and role and description): the twin scores
# on the `dev` split (the train split's DejaVu fonts and pictures, other images), the reporting bench on the `report`
# split (Liberation fonts and pictures that neither the teacher's train split, the dev split nor natural-patches reads).
# S32 and S96 have never been run (2026-12-07): they run once each, pre-registered, for the final report.
SYMBOL_CLASSES = ["A", "B", "D", "E", "F", "G", "H", "K", "M", "P", "R", "T", "amp", "at", "hash", "question"]  # render_symbols.CLASS_NAMES
SYMBOL_MEAN, SYMBOL_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # train_symbols_teacher's (ImageNet's), fixed
SYMBOL_SETS = "runs/symbols"  # the rendered splits, under the repository root (runs/ is not committed: render them)
SYMBOL_BENCHES = {  # image side -> the bench's teacher, student, pool and sizes
    # S32: B3's family (a BatchNorm teacher and student) with a held-out set again, 500 selected per class as B3 and
    # B1-bn. The teacher, a CIFAR ResNet-20 of width 16 (41 MMAC, 0.27 M parameters), costs about B3's ResNet-18 at
    # 32 px (35 MMAC), so B3's epoch profile applies (docs/throughput.md: 4.4-6.5 ms an image-step, 1 thread): 80
    # epochs of 7,500 images take 44-65 min; timing the two networks alone at batch 128 (1 thread, load 2.4,
    # 2026-12-07) gave 2.3 ms an image-step, so about 30 min. Scoring the 131,797-image pool: 1.1 ms an image.
    32: {
        "teacher": ("resnet20_w16", "teachers/symbols_resnet20_w16.safetensors"),
        "student": "mobilenetv3_small_w0.5",  # 1.8 MMAC with the zoo's stride-1 stem below 64 px (0.6 with
        # the ImageNet stem, which S32-dev's first run had): 23x fewer multiply-adds than the teacher
        "pool": [
            {"builtin": "natural-patches", "count": 60000},
            {"builtin": "fashion-mnist"},
            {"builtin": "mnist-train"},
            {"builtin": "opencv-digits"},
        ],
        "per_class": 500,
        "render": {"train": 1000, "dev": 300, "report": 300},  # images per class of each split
    },
    # S96: a real input size, sized for under an hour a seed on 2 cores (the wd_005 row). B3's epoch profile
    # (docs/throughput.md: teacher forward 28%, student forward 18%, backward 46% of a 0.687 s step at 32 px, 1 thread),
    # each part scaled by its multiply-adds (teacher 333 vs 35 MMAC, student 11 vs 2.2) and by channels_last's measured
    # gains, gives 23 ms an image-step on 1 loaded thread; timing the two networks alone at batch 128 (1 thread, load
    # 2.4, 2026-12-07) gave 8.5 ms teacher forward + 4.4 ms student forward and backward, about 13.5 with the losses.
    # At 100 per class (1,520 training images) 80 epochs take 27-47 min, scoring the 30,000-image pool 4 min (8.5 ms an
    # image), evaluating 2,400 images after each epoch and recalibrating BatchNorm about 5: 36-56 min a seed.
    96: {
        "teacher": ("torchvision:resnet18", "teachers/symbols_resnet18_96.safetensors"),
        "student": "torchvision:mobilenet_v3_small",  # 11 MMAC at 96 px, 1.5 M parameters (the teacher: 333, 11.2 M)
        "pool": [
            {"builtin": "natural-patches", "count": 20000},  # 32x32 patches, upsampled to 96 px by the pool
            {"builtin": "fashion-mnist", "count": 5000},
            {"builtin": "mnist-train"},
        ],
        "per_class": 100,
        "render": {"train": 500, "dev": 150, "report": 150},
    },
}


def render_command(split: str, size: int) -> str:
    """The command that renders one split of the symbol benches' data."""
    per_class = SYMBOL_BENCHES[size]["render"][split]
    out = f"{SYMBOL_SETS}/{split}-{size}"
    return f".venv/bin/python scripts/render_symbols.py --split {split} --size {size} --per-class {per_class} --out {out}"


def symbol_bench(size: int, split: str) -> dict:
    """S<size>-dev (split "dev", a development bench) or S<size> (split "report", a reporting bench)."""
    s = SYMBOL_BENCHES[size]
    arch, weights = s["teacher"]
    labeled = f"{SYMBOL_SETS}/{split}-{size}"
    n = s["render"][split] * len(SYMBOL_CLASSES)
    twin = split == "dev"
    pool = ", ".join(p["builtin"] + (f" {p['count']:,}" if "count" in p else "") for p in s["pool"])
    held = "the train split's fonts and pictures" if twin else "fonts and pictures held out from the teacher, the dev split and the pool"
    return {
        "what": (f"development twin of S{size}: " if twin else "reporting bench, never run before the final report: ")
        + f"{arch} teacher with BatchNorm ({weights}, trained on the symbols train split at {size}x{size} RGB) -> "
        f"{s['student']}; pool {pool} (nothing rendered), {s['per_class']} selected per class; accuracy on the symbols "
        f"{split} split ({n:,} images, {held})",
        "role": "development" if twin else "reporting",
        "changes": {
            "name": f"symbols{size}-{arch.split(':')[-1]}-{s['student'].split(':')[-1]}",
            "teacher": {
                "arch": arch,
                "weights": f"../{weights}",
                "input": {"channels": 3, "size": size, "mean": SYMBOL_MEAN, "std": SYMBOL_STD},
                "num_classes": len(SYMBOL_CLASSES),
                "class_names": SYMBOL_CLASSES,
            },
            "student": {"arch": s["student"]},
            "pool": s["pool"],
            "select": {"per_class": s["per_class"]},
            "eval": {"labeled": f"../{labeled}"},
        },
        "upper": (f"{SYMBOL_SETS}/train-{size}", None),  # the teacher's own training images
        "rows": ["teacher", "ce_upper", "kd_random", "wd_005"],
        # what must be here before the bench runs, and the command that makes it (make_recipe checks, in this order)
        "needs": [
            {
                "path": weights,
                "make": f"{render_command('train', size)} && .venv/bin/python scripts/train_symbols_teacher.py --size {size}",
            },
            {
                "path": labeled,
                "make": render_command(split, size),
                "render": {"split": split, "size": size, "per_class": s["render"][split], "seed": 0},
            },
            {  # the labeled upper bound's training images
                "path": f"{SYMBOL_SETS}/train-{size}",
                "make": render_command("train", size),
                "render": {"split": "train", "size": size, "per_class": s["render"]["train"], "seed": 0},
            },
        ],
    }


BENCHES = {
    "B1": {
        "what": "MNIST LeNet-5 teacher -> LeNet-5-half; pool Fashion-MNIST 60k + natural patches 60k + sklearn digits 1,797; "
        "accuracy on mnist-heldout (5,000)",
        "role": "reporting",
        "changes": {},
        "upper": ("mnist-train", None),
        "rows": "all",
        "dafl": True,
    },
    "B1-hard": {
        "what": "as B1 without the sklearn digits slice (no digit at all in the pool)",
        "role": "reporting",
        "changes": {"pool": B1_POOL[:2]},
        "upper": None,
        "rows": ["teacher", "kd_random", "previous", "full", "epochs_80", "batch_128", "lr_008", "wd_005"],
    },
    "B1-crawl": {
        "what": "reporting only, never run while tuning, for selection: as B1 with 300,000 natural patches instead of 60,000, "
        "so that 0.5% of the pool are digits, as in a web crawl",
        "role": "reporting",
        "changes": {"pool": [B1_POOL[0], {"builtin": "natural-patches", "count": 300000}, B1_POOL[2]]},
        "upper": None,
        "rows": ["teacher", "full", "no_selection", "no_selection_same_size"],
    },
    "B2": {
        "what": "Fashion-MNIST LeNet-5 teacher (teachers/fashion_lenet5) -> LeNet-5-half; pool handwritten digits "
        "(mnist-train 5k + opencv-digits 5k) + sklearn digits (upsampled) + natural patches 60k; accuracy on fashion-mnist-test "
        "(10,000)",
        "role": "reporting",
        "changes": {
            "name": "fashion-lenet5-half",
            "teacher": {"weights": "../teachers/fashion_lenet5.safetensors", "class_names": FASHION_CLASSES},
            "pool": B2_POOL,
            "eval": {"labeled": "builtin:fashion-mnist-test"},
        },
        "upper": ("fashion-mnist", 10000),
        "rows": "all",
        "dafl": True,
    },
    # B3 is a development bench since issue #27. It was meant for reporting only, but it was run on opencv-digits after
    # every default change (40, 80 and 160 epochs, batch 128, lr 0.008, weight decay 0.05: six passes over 3 seeds,
    # after a first run that sat at 10%), and when lr 0.008 lost there, the B1-bn development bench was built as
    # "B3's family" and weight decay searched until B3 recovered. No default read a label, but B3's results chose which
    # knob to search, so opencv-digits is a development set now; docs/method.md lists the passes. B3 runs with
    # --development and needs no pre-registration; benchmarks.develop --bench B3 runs single edits on it.
    "B3": {
        "what": "development bench (a reporting bench until issue #27, whose results steered tuning): torchvision ResNet-18 "
        "teacher with BatchNorm (teachers/digits_resnet18, "
        "trained on mnist-train at 32x32) -> torchvision MobileNetV3-Small; the B1 pool at 32x32, 500 selected per class; "
        "accuracy on opencv-digits (5,000 digits of OpenCV's sheet, handwriting from another source)",
        "role": "development",
        "set_note": "a development set: the bench was run as a reporting bench until issue #27 and its results steered which "
        "defaults were searched (docs/method.md, Reporting runs)",
        "changes": {
            "name": "digits-resnet18-mobilenetv3",
            "teacher": {
                "arch": "torchvision:resnet18",
                "weights": "../teachers/digits_resnet18.safetensors",
                "input": {"channels": 1, "size": 32, "mean": [0.1307], "std": [0.3081]},
            },
            "student": {"arch": "torchvision:mobilenet_v3_small"},
            "select": {"per_class": 500},  # a MobileNetV3 step took 1.15 s in the epochs_160 rows (3 processes, 2 cores)
            "eval": {"labeled": "builtin:opencv-digits"},
        },
        "upper": ("mnist-train", None),
        "rows": ["teacher", "ce_upper", "kd_random", "previous", "full", "epochs_80", "epochs_160", "batch_128", "lr_008", "wd_005"],
    },
    # The symbol benches (issue #27): S32 and S96 report, never run before the final report (none has run as of
    # 2026-12-07); S32-dev and S96-dev are their development twins. Their teachers and data are not committed yet:
    # make_recipe says in one line which command makes what is missing.
    "S32-dev": symbol_bench(32, "dev"),
    "S32": symbol_bench(32, "report"),
    "S96-dev": symbol_bench(96, "dev"),
    "S96": symbol_bench(96, "report"),
}

# The method before this round of work, as recipes/demo.yaml set it: balanced selection, class-drop top-3 on every
# label, KD + feature + relation, affine augmentation only, 20 epochs, the last epoch kept.
PREVIOUS = {
    "class_drop": {"mode": "top_k", "top_k": 3, "only_below": None},
    "distill": {"epochs": 20, "augment": {"cutmix": 0.0, "mosaic": 0.0}, "refine": None, "resample": None, "balance": 0.0, "keep": "last"},
    "select": {"reservoir": 1},
}
PLAIN_KD = {
    "select": {"strategy": "random", "reservoir": 1},
    "class_drop": {"mode": "none"},
    "distill": {
        "loss": {"kd": 1.0, "feature": 0.0, "relation": 0.0},
        "augment": {"cutmix": 0.0, "mosaic": 0.0},
        "refine": None,
        "resample": None,
        "balance": 0.0,
        "keep": "last",
    },
}

# The two optional refinements that are measured at two epoch budgets each (EQUAL_TIME below).
REFINE_ONCE = {"distill": {"refine": {"when": "once", "steps": 10, "step_size": 0.02, "radius": 0.1, "target": "argmax"}}}
DISAGREEMENT = {"distill": {"refine": {"steps": 1, "step_size": 0.1, "radius": 0.1, "target": "disagreement"}}}

# row -> (label, edits to the bench's recipe; None: not a distillation row)
# fmt: off
ROWS = {
    "teacher": ("teacher", None),
    "ce_upper": ("student, cross-entropy on the teacher's labeled data (upper bound)", None),
    "kd_random": ("plain KD on a random pool subset (affine augmentation only)", PLAIN_KD),
    "previous": ("previous default (class-drop top-3, no mixing or balancing, 20 epochs, last epoch)", PREVIOUS),
    "epochs_80": ("full method at 80 epochs (the defaults before batch 128)", {"distill": {"epochs": 80}}),
    "batch_128": ("full method at 80 epochs, batch 128 (the defaults before lr 0.008)", {"distill": {"epochs": 80, "batch_size": 128}}),
    "lr_008": ("full method at 80 epochs, batch 128, lr 0.008 (the defaults before weight decay 0.05)",
               {"distill": {"epochs": 80, "batch_size": 128, "lr": 0.008}}),
    "wd_005": ("**full method at 80 epochs, batch 128, lr 0.008, weight decay 0.05 (the defaults)**",
               {"distill": {"epochs": 80, "batch_size": 128, "lr": 0.008, "weight_decay": 0.05}}),
    "epochs_160": ("full method at 160 epochs (docs/method.md's advice where the selection is small)",
                   {"distill": {"epochs": 160}}),
    "full": ("**full method at 40 epochs** (the defaults until 2026-12-02; the ablations' reference)", {}),
    "no_cutmix": ("full method, CutMix off", {"distill": {"augment": {"cutmix": 0.0}}}),
    "no_mosaic": ("full method, mosaics off", {"distill": {"augment": {"mosaic": 0.0}}}),
    "no_balance": ("full method, class-balanced sampling off", {"distill": {"balance": 0.0}}),
    "no_class_drop": ("full method, class-drop off", {"class_drop": {"mode": "none"}}),
    "adaptive_drop": ("full method, class-drop only on labels whose top probability is under 0.5",
                      {"class_drop": {"only_below": 0.5}}),
    "no_feature": ("full method, feature loss off", {"distill": {"loss": {"feature": 0.0}}}),
    "no_relation": ("full method, relation loss off", {"distill": {"loss": {"relation": 0.0}}}),
    "no_selection": ("full method, selection -> random", {"select": {"strategy": "random", "reservoir": 1}}),
    "no_selection_same_size": ("full method, selection -> a random sample as large as the balanced selection (same steps)",
                               {"select": {"strategy": "random", "reservoir": 1}}),
    "agreement_choice": ("full method, the epoch of best hold-out teacher agreement kept instead of the last", None),
    "plus_resample": ("full method + student-in-the-loop sampling (reservoir 4x, redrawn every 2 epochs)",
                      {"select": {"reservoir": 4}, "distill": {"resample": {"every": 2}}}),
    "plus_refine": ("full method + refinement of every batch toward random classes (1 step of 0.2, radius 0.2), equal time",
                    {"distill": {"refine": {"steps": 1, "step_size": 0.2, "radius": 0.2, "target": "random"}}}),
    "plus_refine_once": ("full method + 10 steps of refinement toward the teacher's class, once, before training; 30 epochs "
                         "of the doubled set (refined copies beside the originals): 1.5x the time", REFINE_ONCE),
    "plus_refine_once_equal_time": ("the same refinement once, 16 epochs of the doubled set: equal time", REFINE_ONCE),
    "plus_disagreement": ("full method + teacher-student disagreement search within radius 0.1 (1 step per batch), "
                          "13 epochs: 0.7x the time", DISAGREEMENT),
    "plus_disagreement_equal_time": ("the same disagreement search, 18 epochs: meant as equal time, measured 1.2x",
                                     DISAGREEMENT),
    "dafl": ("DAFL generator baseline (benchmarks/dafl.py)", None),
}
# fmt: on
# Rows whose part costs training time get fewer epochs, to run in about the full method's wall time: refining every
# batch doubles a step; the disagreement search costs 2.2-2.8x a step (0.46; the 0.33 row assumed 3x); refining once
# costs ~13 epochs' worth and then trains on twice the images (0.4; the 0.75 row forgot the doubling).
EQUAL_TIME = {
    "plus_refine": 0.5,
    "plus_disagreement": 0.33,
    "plus_refine_once": 0.75,
    "plus_refine_once_equal_time": 0.4,
    "plus_disagreement_equal_time": 0.46,
}
# Every row trains 40 epochs of batch 256 at lr 0.003 and weight decay 1e-4 unless it says otherwise: the budget the
# ablations were measured at. The library's defaults are 80 epochs of batch 128 at lr 0.008 and weight decay 0.05 since
# the development runs chose them; `wd_005` is the method as it ships.
BENCH_EPOCHS, BENCH_BATCH, BENCH_LR, BENCH_WD = 40, 256, 0.003, 1e-4
MODES = {  # epochs of every distillation row (None: BENCH_EPOCHS); DAFL's budget as a multiple of the full method's wall time
    "quick": {"epochs": 10, "seeds": 1, "dafl_factor": 3.0, "dafl_seeds": 1},
    "full": {"epochs": None, "seeds": 3, "dafl_factor": 10.0, "dafl_seeds": 1},
}


def merge(base: dict, edits: dict) -> dict:
    """`edits` laid over `base`, mapping by mapping; None removes a key, so the schema's default applies."""
    out = copy.deepcopy(base)
    for key, value in edits.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class MissingBenchFile(SystemExit):
    """A file a bench needs (its teacher, its rendered evaluation set) is not here, or was rendered otherwise than the
    bench says: one line, naming the command that makes it (a SystemExit, so a command prints just that line)."""


def require_files(bench: str) -> None:
    """Each of the bench's `needs` (in order) is here, and a rendered set's render.json says what the bench expects."""
    for need in BENCHES[bench].get("needs", []):
        path = ROOT / need["path"]
        if not path.exists():
            raise MissingBenchFile(f"{bench}: {need['path']} is missing; make it with: {need['make']}")
        expected = need.get("render")
        if expected:
            card = path / "render.json"
            found = json.loads(card.read_text()) if card.is_file() else {}
            if any(found.get(k) != v for k, v in expected.items()):
                got = ", ".join(f"{k} {found.get(k)}" for k in expected) if found else "no render.json"
                raise MissingBenchFile(f"{bench}: {need['path']} holds another rendering ({got}); make it with: {need['make']} --overwrite")


def make_recipe(bench: str, seed: int, epochs: int | None, edits: dict | None = None) -> Recipe:
    require_files(bench)
    data = merge(yaml.safe_load((RECIPES / "demo.yaml").read_text()), BENCHES[bench]["changes"])
    data.update(seed=seed, targets=[])
    data["distill"].update(epochs=epochs or BENCH_EPOCHS, batch_size=BENCH_BATCH, lr=BENCH_LR, weight_decay=BENCH_WD)
    return recipe_from_dict(merge(data, edits or {}), base_dir=RECIPES, source=f"benchmarks.method:{bench}")


def select_key(recipe: Recipe) -> str:
    return json.dumps(recipe.section("seed", "teacher", "pool", "select"), sort_keys=True)


def row_dir(mode: str, bench: str, seed: int, row: str) -> Path:
    """The run directory of one row of one bench and seed."""
    return OUT / f"method-{mode}" / bench / f"seed{seed}" / row


def balanced_size(bench: str, seed: int, mode: str) -> int:
    """How many images the full method's balanced selection kept for this seed (holdout included): a random sample of
    this size trains as many steps per epoch. Short classes make it smaller than per_class x classes."""
    selection = row_dir(mode, bench, seed, "full") / "selection.json"
    if not selection.exists():
        sys.exit(f"no_selection_same_size needs the full row of {bench} seed {seed} first ({selection} is missing)")
    return json.loads(selection.read_text())["selected"]


def run_row(recipe: Recipe, run: Path, selections: dict[str, Path]) -> dict:
    """One row through the product, its selection copied from an earlier row that scored the same pool the same way."""
    if run.exists():
        shutil.rmtree(run)
    key = select_key(recipe)
    if key in selections:  # claimed and recorded as the run's own, as a select stage would have written them
        claimed = RunDir(run)
        claimed.open()
        for name in ("selected.npz", "selected_images.npy", "selection.json", "stages/select.json"):
            shutil.copyfile(selections[key] / name, claimed.artifact(name))
        claimed.close()
    compress(recipe, run_dir=run, stages=("select", "distill"), console=Console(quiet=True))
    selections.setdefault(key, run)
    history = json.loads((run / "history.json").read_text())
    info = json.loads((run / "stages" / "distill.json").read_text())["info"]
    selection = json.loads((run / "selection.json").read_text())
    select_s = selection["throughput"]["seconds"]
    kept = info.get("kept_epoch") or len(history)
    return {
        "accuracy": history[kept - 1]["accuracy"],
        "kept_epoch": kept,
        "epochs": len(history),
        "wall_s": select_s + history[-1]["train_seconds"],
        "select_s": select_s,
        "curve": [(round(select_s + h["train_seconds"], 2), h["accuracy"]) for h in history],
        "holdout_agreement": [h.get("holdout_agreement") for h in history],
        "train_size": selection["selected"] - selection["holdout"],
        "selected_from_source": selection["selected_from_source"],
    }


def train_ce(recipe: Recipe, images: np.ndarray, labels: np.ndarray, epochs: int, seed: int, evaluate) -> list:
    """The upper bound: the same student, compute, optimizer, schedule and affine augmentation, cross-entropy on true
    labels; a BatchNorm student's statistics are recalibrated before each evaluation, as distill does."""
    torch.manual_seed(seed)
    compute = resolve_compute(recipe.compute, torch.device("cpu"))
    student = compute.prepare(build_student(recipe))
    spec, d = recipe.teacher.input, recipe.distill
    # affine only: mixing images without mixing their hard labels would teach wrong labels
    augment = d.augment and d.augment.model_copy(update={"cutmix": 0.0, "mosaic": 0.0, "mixup": 0.0})
    optimizer = torch.optim.AdamW(student.parameters(), lr=d.lr, weight_decay=d.weight_decay)
    steps = max(1, len(images) // d.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=d.lr, total_steps=epochs * steps, pct_start=0.15, anneal_strategy="cos"
    )
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    curve, started = [], time.perf_counter()
    for epoch in range(epochs):
        g = torch.Generator().manual_seed(seed * 1000 + epoch)
        order = torch.randperm(len(x), generator=g)
        student.train()
        for s in range(steps):
            idx = order[s * d.batch_size : (s + 1) * d.batch_size]
            batch = x[idx].float() / 255.0
            if augment is not None:
                batch = augment_batch(batch, augment, g)
            loss = F.cross_entropy(student(compute.input(standardize(batch, spec))), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        recalibrate_batchnorm(student, images, np.arange(len(images)), spec, compute, d.batch_size, seed)
        seconds = time.perf_counter() - started
        curve.append((round(seconds, 2), evaluate(student.eval())))
        started += time.perf_counter() - started - seconds  # evaluation does not count
    return curve


def time_to(curve: list, target: float) -> float | None:
    return next((t for t, a in curve if a >= target), None)


def run_bench(bench: str, mode: str, seed: int, only_rows: list[str] | None, log, save) -> dict:
    """Every row of one bench for one seed (one seed per call, so seeds can run as separate processes); `save` is
    called after each row, so a run that is stopped keeps the rows it finished."""
    cfg, m = BENCHES[bench], MODES[mode]
    keys = list(ROWS) if cfg["rows"] == "all" else list(cfg["rows"])
    keys = [k for k in keys if (k != "ce_upper" or cfg["upper"]) and (k != "dafl" or cfg.get("dafl"))]
    if only_rows:
        keys = [k for k in keys if k in only_rows]
    base = make_recipe(bench, 0, m["epochs"])
    spec = base.teacher.input
    teacher = load_teacher(base)
    evaluation = load_labeled(base.eval.labeled, base)
    teacher_acc = float((predict_torch(teacher, evaluation.images, spec).argmax(1) == evaluation.labels).mean())
    log(f"[{bench}] teacher {teacher_acc:.4f} on {base.eval.labeled}")

    def accuracy_of(student: torch.nn.Module) -> float:
        return float((predict_torch(student, evaluation.images, spec).argmax(1) == evaluation.labels).mean())

    results: dict = {
        "bench": bench,
        "what": cfg["what"],
        "mode": mode,
        "epochs": base.distill.epochs,
        "seeds": [seed],
        "teacher_accuracy": teacher_acc,
        "eval": base.eval.labeled,
        "rows": {k: {"label": ROWS[k][0], "runs": []} for k in keys},
    }
    if "teacher" in keys:
        results["rows"]["teacher"]["runs"] = [{"seed": seed, "accuracy": teacher_acc, "wall_s": None, "curve": []}]
    selections: dict[str, Path] = {}
    for k in keys:
        if k in ("teacher", "dafl", "agreement_choice"):  # not trained: the teacher, below, or read from `full`
            continue
        load = os.getloadavg()[0]
        if k == "ce_upper":
            name, count = cfg["upper"]
            if "/" in name:  # a class-folder set under the repository root (the symbol benches' train split)
                data = read_class_folders(ROOT / name, spec, base.teacher.class_names, base.teacher.num_classes, count, seed=seed)
                images = data.images
            else:
                data = load_builtin(name, count=count, seed=seed)
                images = convert_array(data.images, spec)
            labels = data.labels.astype(np.int64)
            about = 0.8 * base.select.per_class * base.teacher.num_classes  # what a distillation row trains on
            epochs = math.ceil(base.distill.epochs * about / len(images))  # so about the distillation rows' steps
            curve = train_ce(make_recipe(bench, seed, m["epochs"]), images, labels, epochs, seed, accuracy_of)
            run = {
                "accuracy": curve[-1][1],
                "wall_s": curve[-1][0],
                "curve": curve,
                "note": f"{len(images)} labeled {name} images, {epochs} epochs",
            }
        else:
            edits = ROWS[k][1]
            if k == "no_selection_same_size":
                edits = merge(edits, {"select": {"total": balanced_size(bench, seed, mode)}})
            recipe = make_recipe(bench, seed, m["epochs"], edits)
            if k in EQUAL_TIME:
                recipe = make_recipe(bench, seed, max(1, round(recipe.distill.epochs * EQUAL_TIME[k])), edits)
            run = run_row(recipe, row_dir(mode, bench, seed, k), selections)
        run.update(seed=seed, load_before=round(load, 2), load_after=round(os.getloadavg()[0], 2))
        results["rows"][k]["runs"].append(run)
        log(f"[{bench} seed {seed}] {k}: {run['accuracy']:.4f} in {run['wall_s']:.0f} s (load {run['load_before']}/{run['load_after']})")
        save(results)
    if "dafl" in keys and seed < m["dafl_seeds"] and results["rows"]["full"]["runs"]:
        full = results["rows"]["full"]["runs"][-1]
        budget = m["dafl_factor"] * full["wall_s"]
        torch.manual_seed(seed)
        out = run_dafl(teacher, build_student(base), budget, accuracy_of, seed, eval_every_s=max(5.0, budget / 60))
        curve = [(round(t, 2), a) for t, a in out["curve"]]
        reach = time_to(curve, full["accuracy"])
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
            "load_after": round(os.getloadavg()[0], 2),
        }
        results["rows"]["dafl"]["runs"].append(run)
        log(
            f"[{bench} seed {seed}] dafl: {run['accuracy']:.4f} (best {run['best_accuracy']:.4f}) in a {budget:.0f} s budget; "
            f"reaches the full method's {full['accuracy']:.4f}: {reach}"
        )
        save(results)
    return results


# ---------------------------------------------------------------------------------------------- report


def fmt_s(x: float | None) -> str:
    return "—" if x is None else f"{x:.0f}"


def summarize(results: dict) -> list[list[str]]:
    teacher = results["teacher_accuracy"]
    full = [r["accuracy"] for r in results["rows"].get("full", {}).get("runs", [])]
    rows = []
    for k, row in results["rows"].items():
        runs = row["runs"]
        if not runs:
            continue
        accs = np.array([r["accuracy"] for r in runs])
        acc = f"{100 * accs.mean():.2f}" + (f" ± {100 * accs.std(ddof=1):.2f}" if len(accs) > 1 else "")
        walls = [r["wall_s"] for r in runs if r["wall_s"] is not None]
        t95 = [time_to(r["curve"], 0.95 * r["accuracy"]) for r in runs if r["curve"]]
        note = runs[0].get("note", "")
        if k == "dafl":
            reach = [r["reaches_full_method_at_s"] for r in runs]
            note = (
                f"{len(runs)} seed(s); budget {np.mean([r['budget_s'] for r in runs]):.0f} s "
                f"({results.get('dafl_factor', '')}x the full method), best {100 * np.mean([r['best_accuracy'] for r in runs]):.2f}%; "
                "reaches the full method's accuracy: "
                + ("never within budget" if any(r is None for r in reach) else f"at {np.mean(reach):.0f} s")
            )
        elif k not in ("teacher", "ce_upper"):
            vs = ""
            if k != "full" and len(full) == len(accs) and len(accs) > 1:
                below = sum(a < f for a, f in zip(accs, full))
                vs = f"; below the full method in {below} of {len(accs)} seeds"
            kept = np.mean([r["kept_epoch"] for r in runs])
            note = f"{runs[0]['train_size']} training images, kept epoch {kept:.0f} of {runs[0]['epochs']}{vs}"
            patched = [r for r in runs if r.get("patched")]  # a stored run corrected afterwards says how
            if patched and k != "agreement_choice":
                note += f"; seeds {', '.join(str(r['seed']) for r in patched)}: {patched[0]['patched']}"
        loads = [r.get("load_before") for r in runs if r.get("load_before") is not None]
        rows.append(
            [
                row["label"],
                acc,
                "100.0" if k == "teacher" else f"{100 * accs.mean() / teacher:.2f}",
                fmt_s(np.mean(walls)) if walls else "—",
                "—" if not t95 or any(t is None for t in t95) else fmt_s(np.mean(t95)),
                f"{min(loads):.1f}-{max(loads):.1f}" if loads else "—",
                note,
            ]
        )
    return rows


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    styles = (
        ("full", "-o"),
        ("epochs_80", "-D"),
        ("batch_128", "-P"),
        ("lr_008", "-X"),
        ("wd_005", "-*"),
        ("epochs_160", "-v"),
        ("previous", "-^"),
        ("kd_random", "-s"),
        ("dafl", "-"),
    )
    for k, style in styles:
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


def wall_sum(results: dict) -> float:
    return sum(run["wall_s"] or 0 for k, row in results["rows"].items() if k != "agreement_choice" for run in row["runs"])


def add_agreement_row(results: dict) -> None:
    """`keep: best` changes which epoch is saved, never the training, so its row is read from the full method's runs:
    the epoch of highest hold-out agreement (ties: the later), as distill would have kept it."""
    runs = []
    for run in results["rows"].get("full", {}).get("runs", []):
        scores = run["holdout_agreement"]
        best = max(e for e, s in enumerate(scores, 1) if s == max(scores))
        runs.append({**run, "accuracy": run["curve"][best - 1][1], "kept_epoch": best})
    if runs:
        results["rows"]["agreement_choice"] = {"label": ROWS["agreement_choice"][0], "runs": runs}
        results["rows"] = {k: results["rows"][k] for k in ROWS if k in results["rows"]}


def merge_seeds(files: list[Path]) -> dict:
    """One bench's per-seed result files as one result: runs concatenate; the teacher row is kept once."""
    parts = sorted((json.loads(f.read_text()) for f in files), key=lambda r: r["seeds"][0])
    merged = {**parts[-1], "rows": {}, "seeds": [s for p in parts for s in p["seeds"]]}
    merged["command"] = "; ".join(dict.fromkeys(c for p in parts for c in p["command"].split("; ")))
    for p in parts:
        for k, row in p["rows"].items():
            label = ROWS[k][0] if k in ROWS else row["label"]  # today's name for the row, as the stored runs were made
            runs = merged["rows"].setdefault(k, {"label": label, "runs": []})["runs"]
            if k != "teacher" or not runs:
                runs.extend(row["runs"])
    return merged


def evaluation_note(bench: str, stored_what: str) -> str:
    """What the rendered page says of a bench's evaluation set, from the bench's role today, and of a definition that
    changed after its stored runs."""
    cfg = BENCHES.get(bench)
    if cfg is None:
        return "a bench benchmarks.method no longer defines"
    if "set_note" in cfg:
        note = cfg["set_note"]
    elif cfg["role"] == "development":
        note = "a development set, where defaults may be tuned; its reporting twin's set is never read before its pre-registered run"
    else:
        note = (
            "the bench's reporting set, on which defaults are not chosen (docs/method.md says where that rule was broken); "
            "every run of the bench is listed in docs/method.md's Reporting runs"
        )
    if cfg["what"] != stored_what:
        note += f". The bench has changed since these runs; today it is: {cfg['what']}"
    return note


def render(mode: str, plots: bool = True) -> str:
    """docs/results.md (and, with `plots`, its figures) from the stored results, and docs/method.md's runs table."""
    by_bench: dict[str, list[Path]] = {}
    for f in sorted((RESULTS / f"method-{mode}").glob("*.seed*.json")):
        by_bench.setdefault(f.name.split(".seed")[0], []).append(f)
    order = {b: i for i, b in enumerate(BENCHES)}
    all_results = sorted((merge_seeds(fs) for fs in by_bench.values()), key=lambda r: order.get(r["bench"], 99))
    m = MODES[mode]
    lines = [
        "# Results: the method against its rivals, and without each of its parts",
        "",
        "Written by `benchmarks/method.py`; do not edit by hand. docs/method.md describes the method, how the defaults "
        "were chosen and how to read these tables, and lists every reporting run, good or bad, in its Reporting runs table. "
        "Rows measured before 2026-12-02 10:16 UTC are in [results-until-2026-12-02.md](results-until-2026-12-02.md).",
        "",
    ]
    for r in all_results:
        r["dafl_factor"] = m["dafl_factor"]
        add_agreement_row(r)
        lines += [
            f"## {r['bench']} — `--{mode}`: {r['epochs']} epochs of batch {BENCH_BATCH} at lr {BENCH_LR}, weight decay "
            f"{BENCH_WD:g}, per distillation row "
            f"unless it says otherwise, seeds {', '.join(map(str, r['seeds']))}",
            "",
            r["what"] + ".",
            "",
            f"Accuracy is on {r['eval'].removeprefix('builtin:')}, {evaluation_note(r['bench'], r['what'])}. ± is the standard deviation "
            "over seeds (selection, holdout, initial weights and batch order change with the seed). Each row's student is "
            "the epoch its recipe keeps without reading labels: the last one by default, or (`keep: best`) the one with the "
            "best teacher agreement on held-out selected images.",
            "",
            "| row | accuracy % (mean ± std) | % of teacher | wall time (s) | time to 95% of final (s) | load (1-min) | notes |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += ["| " + " | ".join(cells) + " |" for cells in summarize(r)]
        lines += [
            "",
            f"Commands: `{r['command']}` (rows' wall times sum to {wall_sum(r):.0f} s; last finished {r['finished']}).",
            "",
        ]
        png = ROOT / "docs" / f"{r['bench'].lower().replace('-', '_')}_time_to_accuracy.png"
        if plots:
            plot(r, png)
        lines += [f"![{r['bench']} accuracy against time]({png.name})", ""]
    if all_results:
        v = all_results[-1]["versions"]
        lines += [
            "## Environment",
            "",
            "- " + ", ".join(f"{k} {val}" for k, val in v.items()),
            f"- {all_results[-1]['machine']}",
            "- `torch.set_num_threads(1)` per process; benches may run as separate processes side by side on the 2 cores "
            "(the load column is the 1-minute load average when each row started), so wall times carry noise and compare "
            "best within one bench.",
            "- Wall time of a distillation row = scoring the pool (`select`) + training, without evaluation time. "
            "Time to 95%: the first per-epoch evaluation at or above 95% of the row's final accuracy.",
            "",
        ]
    text = "\n".join(lines)
    DOC.write_text(text)
    preregister.write_doc_table(ROOT / "docs" / "method.md")
    return text


def invocation() -> str:
    """This process's command line, as the results and the runs list record it."""
    return " ".join(shlex.quote(a) for a in [os.path.relpath(sys.executable, ROOT), "-m", "benchmarks.method", *sys.argv[1:]])


def store(path: Path, merge_rows: bool, results: dict) -> None:
    """Write one bench and seed's results; with `merge_rows` (a --rows run), the rows run now replace only theirs in
    the stored file, read again under a lock, so several --rows processes can share one bench and seed."""
    command = invocation()
    with FileLock(str(path) + ".lock"):
        commands = [command]
        if merge_rows and path.is_file():
            earlier = json.loads(path.read_text())
            rows = {**earlier["rows"], **{k: v for k, v in results["rows"].items() if v["runs"]}}
            results = {**earlier, **{k: v for k, v in results.items() if k != "rows"}, "rows": rows}
            commands = list(dict.fromkeys([*earlier["command"].split("; "), command]))
        results = {
            **results,
            "command": "; ".join(commands),
            "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "versions": package_versions(),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        }
        atomic_write_text(path, json.dumps(results, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="10 epochs, 1 seed, generator budget 3x the full method")
    g.add_argument(
        "--full",
        action="store_true",
        help=f"{BENCH_EPOCHS} epochs of batch {BENCH_BATCH} at lr {BENCH_LR}, weight decay {BENCH_WD:g}, a row unless the "
        "row says otherwise, 3 seeds, "
        "generator budget 10x the full method",
    )
    reporting = [b for b, cfg in BENCHES.items() if cfg["role"] == "reporting"]
    development = [b for b, cfg in BENCHES.items() if cfg["role"] == "development"]
    parser.add_argument(
        "--bench",
        help=f"comma-separated; reporting benches: {', '.join(reporting)} (each run only as pre-registered: "
        f"benchmarks/preregister.py); development benches: {', '.join(development)} (with --development)",
    )
    parser.add_argument(
        "--development", action="store_true", help=f"run development benches ({', '.join(development)}): no pre-registration"
    )
    parser.add_argument(
        "--again",
        metavar="REASON",
        help="run a pre-registered reporting command a second time on the same method commit; REASON is listed with the run",
    )
    parser.add_argument("--seed", help="only these seeds (comma-separated); each seed is stored in its own file")
    parser.add_argument("--rows", help="only these rows (comma-separated); results of other rows are kept")
    parser.add_argument(
        "--render-only", action="store_true", help="rewrite docs/results.md and docs/method.md's runs table from the stored results"
    )
    args = parser.parse_args()
    mode = "full" if args.full else "quick"
    torch.set_num_threads(1)
    if not args.render_only:
        if not args.bench:
            parser.error("--bench is required (a reporting run runs only the benches its pre-registration names)")
        benches = args.bench.split(",")
        try:  # before any work: development benches only with --development, reporting benches only as pre-registered
            preregs = preregister.admit(benches, {b: c["role"] for b, c in BENCHES.items()}, sys.argv[1:], args.development, args.again)
        except preregister.Refused as e:
            sys.exit(f"refused: {e}")
        seeds = [int(k) for k in args.seed.split(",")] if args.seed else list(range(MODES[mode]["seeds"]))
        out_dir = RESULTS / f"method-{mode}"
        out_dir.mkdir(parents=True, exist_ok=True)
        OUT.mkdir(parents=True, exist_ok=True)
        only = args.rows.split(",") if args.rows else None
        for bench in benches:
            run_id = None
            if bench in preregs:  # listed when it starts, so a run that dies is listed too
                run_id = preregister.record_start(bench, preregs[bench], invocation(), mode, seeds, only, args.again)
            status, accuracies = "stopped", {}
            try:
                for seed in seeds:
                    with (OUT / f"method-{mode}-{bench}.log").open("a") as log_file:

                        def log(msg: str, log_file=log_file) -> None:
                            print(msg, flush=True)
                            log_file.write(msg + "\n")
                            log_file.flush()

                        save = partial(store, out_dir / f"{bench}.seed{seed}.json", bool(only))
                        results = run_bench(bench, mode, seed, only, log, save)
                    for k, row in results["rows"].items():
                        for run in row["runs"]:
                            if k != "teacher":
                                accuracies.setdefault(k, {})[str(run["seed"])] = run["accuracy"]
                status = "finished"
            finally:
                if run_id is not None:
                    files = [str((out_dir / f"{bench}.seed{seed}.json").relative_to(ROOT)) for seed in seeds]
                    preregister.record_end(run_id, status, accuracies, files)
    print(render(mode))


if __name__ == "__main__":
    main()
