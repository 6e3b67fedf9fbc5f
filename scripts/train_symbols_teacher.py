"""Train a symbols teacher for the S32/S96 benches (issue #27): an RGB classifier with BatchNorm on the `train` split.

    .venv/bin/python scripts/train_symbols_teacher.py --size 32   # resnet20_w16 on runs/symbols/train-32
    .venv/bin/python scripts/train_symbols_teacher.py --size 96   # torchvision resnet18 (untrained init) on runs/symbols/train-96
    .venv/bin/python scripts/train_symbols_teacher.py --smoke [--size 96]   # a tiny train split, 1 epoch, nothing kept

The data is rendered by scripts/render_symbols.py (`--split train`); this script refuses any other split. It validates
on a seeded 10% of that training data (`--val-fraction`, drawn with `--seed`) and reads nothing else: not the `dev`
split the development twins S32-dev/S96-dev are scored on, not the `report` split of the reporting benches S32/S96,
whose fonts and pictures the train split does not hold (scripts/render_symbols.py). Writes the weights (safetensors;
float16 for ResNet-18) and beside them a JSON card: classes, the input spec as a recipe's teacher.input says it,
validation accuracy, the rendering it trained on, the command and the seconds it took.

Inputs are pixels / 255 normalized with ImageNet's mean and std, a fixed convention (not statistics of the data), so
that benchmarks/method.py's bench definitions can state the teacher's input without reading its card.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from render_symbols import CLASS_NAMES, render
from train_demo_teacher import ROOT, accuracy, fit, training_arguments, validation_facts, validation_split

from edgedistill.config.schema import InputSpec
from edgedistill.inputs.labeled import read_class_folders
from edgedistill.models.factory import count_parameters, create_model

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
PRESETS = {  # --size: the teacher of that bench and how it trains
    32: {
        "arch": "resnet20_w16",
        "out": ROOT / "teachers" / "symbols_resnet20_w16.safetensors",
        "data": ROOT / "runs" / "symbols" / "train-32",
        "epochs": 30,
        "batch_size": 128,
        "lr": 3e-3,
        "float16": False,
    },
    96: {
        "arch": "torchvision:resnet18",
        "out": ROOT / "teachers" / "symbols_resnet18_96.safetensors",
        "data": ROOT / "runs" / "symbols" / "train-96",
        "epochs": 20,
        "batch_size": 64,
        "lr": 3e-3,
        "float16": True,  # 22 MB instead of 45, as teachers/digits_resnet18
    },
}
AUGMENT = {"degrees": 8.0, "scale": 0.1, "shear": 5.0, "reflect": True}  # and shifts of 1/16 of the side; no mirroring (glyphs are chiral)


def input_spec(size: int) -> InputSpec:
    return InputSpec(channels=3, size=size, mean=MEAN, std=STD)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, S, S) to the teacher's input."""
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


def read_train_split(folder: Path, size: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The rendered train split (uint8 images, labels) and its render.json; any other split is refused."""
    card = folder / "render.json"
    if not card.is_file():
        sys.exit(
            f"train_symbols_teacher: {card} is missing; render the train split first: .venv/bin/python scripts/render_symbols.py "
            f"--split train --size {size} --per-class 1000 --out {os.path.relpath(folder, ROOT)}"
        )
    facts = json.loads(card.read_text())
    if facts.get("split") != "train":
        sys.exit(f"train_symbols_teacher: {folder} is the {facts.get('split')!r} split; a teacher trains on the train split only")
    if facts.get("size") != size:
        sys.exit(f"train_symbols_teacher: {folder} holds {facts.get('size')} px images; --size is {size}")
    if [c["name"] for c in facts.get("classes", [])] != CLASS_NAMES:
        sys.exit(f"train_symbols_teacher: {folder} was rendered with other classes than scripts/render_symbols.py's")
    data = read_class_folders(folder, input_spec(size), CLASS_NAMES, len(CLASS_NAMES), what="train_symbols_teacher")
    if data.unreadable:
        sys.exit(f"train_symbols_teacher: {len(data.unreadable)} unreadable files under {folder}, e.g. {data.unreadable[0]}")
    return torch.from_numpy(data.images), torch.from_numpy(data.labels), facts


def main() -> None:
    parser = training_arguments(__doc__.splitlines()[0], 0, Path())
    parser.add_argument("--size", type=int, choices=sorted(PRESETS), default=32, help="32: the S32 teacher; 96: the S96 teacher")
    parser.add_argument("--data", type=Path, help="the rendered train split (default runs/symbols/train-SIZE)")
    parser.add_argument("--smoke", action="store_true", help="render 12 images a class to a temporary folder, train 1 epoch, keep nothing")
    parser.set_defaults(epochs=None, out=None, lr=None, batch_size=None)
    args = parser.parse_args()
    preset = PRESETS[args.size]
    args.epochs = args.epochs or (1 if args.smoke else preset["epochs"])
    args.lr = args.lr or preset["lr"]
    args.batch_size = args.batch_size or (32 if args.smoke else preset["batch_size"])

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="symbols-smoke-") as scratch:
        if args.smoke:
            args.data = Path(scratch) / f"train-{args.size}"
            render(args.data, "train", args.size, 12, seed=args.seed)
            args.out = args.out or Path(scratch) / "teacher.safetensors"
        args.data = args.data or preset["data"]
        args.out = args.out or preset["out"]
        train(args, preset, started)


def train(args, preset: dict, started: float) -> None:
    all_images, all_labels, rendering = read_train_split(args.data, args.size)
    keep, held = validation_split(len(all_images), args.val_fraction, args.seed)
    images, labels = all_images[keep], all_labels[keep]
    val_images, val_labels = normalize(all_images[held]), all_labels[held]
    val_name = f"validation ({len(held)} images of the train split)"
    print(f"{preset['arch']} at {args.size}x{args.size}: {len(images)} training images, {val_name}, {args.epochs} epochs", flush=True)

    def report(epoch: int, loss: float, model: torch.nn.Module) -> None:
        elapsed = time.perf_counter() - started
        print(
            f"epoch {epoch:3d}  loss {loss:.4f}  {val_name} accuracy {accuracy(model, val_images, val_labels):.4f}  {elapsed:.0f} s",
            flush=True,
        )

    augment = {**AUGMENT, "shift": args.size / 16}  # in pixels
    model = fit(images, labels, args, augment, False, report, 1, preset["arch"], len(CLASS_NAMES), normalize)
    if preset["float16"]:
        model = model.half().float()  # stored in float16; validated as stored
    val_accuracy = accuracy(model, val_images, val_labels)
    seconds = time.perf_counter() - started
    print(f"{val_name} accuracy: {val_accuracy:.4f}, trained on {len(images)} images in {seconds:.0f} s")
    if args.no_save:
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if preset["float16"] and v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(args.out))
    source = f"{os.path.relpath(args.data, ROOT)} (scripts/render_symbols.py, split train, seed {rendering['seed']})"
    card = {
        "architecture": preset["arch"],
        "num_classes": len(CLASS_NAMES),
        "class_names": CLASS_NAMES,
        "in_channels": 3,
        "input_size": [args.size, args.size],
        "input": input_spec(args.size).model_dump(mode="json", exclude_none=True),  # as a recipe's teacher.input
        "normalization": {"scale": "pixels / 255", "mean": MEAN, "std": STD, "why": "ImageNet's, a fixed convention"},
        "parameters": count_parameters(model),
        "stored_dtype": "float16" if preset["float16"] else "float32",
        **validation_facts(source, args, len(images), len(held), val_accuracy),
        "train_rendering": {
            k: rendering.get(k) for k in ("generator", "split", "size", "per_class", "seed", "fonts", "backgrounds", "images_sha256")
        },
        "augmentation": {"random_affine": AUGMENT, "padding": "reflection"},
        "seed": args.seed,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "optimizer": f"AdamW(lr={args.lr}, weight_decay={args.weight_decay}), OneCycleLR, label smoothing 0.05",
        "smoke": args.smoke,
        "command": " ".join(shlex.quote(a) for a in [os.path.relpath(sys.executable, ROOT), *sys.argv]),
        "train_seconds": round(seconds, 1),
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python_version": platform.python_version(),
        "machine": platform.machine(),
    }
    args.out.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    if args.smoke:  # the file as edgedistill loads a teacher: the same answers
        from edgedistill.models.checkpoint import load_weights

        loaded = load_weights(create_model(preset["arch"], len(CLASS_NAMES), 3, args.size), args.out)
        reloaded = accuracy(loaded, val_images, val_labels)
        print(f"reloaded through edgedistill.models.checkpoint.load_weights: validation accuracy {reloaded:.4f}")
        print(
            json.dumps(
                {k: card[k] for k in ("architecture", "input", "train_size", "validation_size", "validation_accuracy", "train_seconds")}
            )
        )


if __name__ == "__main__":
    main()
