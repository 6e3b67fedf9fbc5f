"""Train the B2 benchmark teacher: LeNet-5 on the built-in `fashion-mnist` (60k train), scored on `fashion-mnist-test`.

Reuses the demo teacher's recipe (scripts/train_demo_teacher.py: same normalization 0.1307/0.3081, affine
augmentation, AdamW + one-cycle, label smoothing) plus horizontal flips, which suit clothes.
Writes teachers/fashion_lenet5.safetensors and teachers/fashion_lenet5.json.
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

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_demo_teacher import MEAN, ROOT, STD, accuracy, random_affine, to_tensor

from edgedistill.models import count_parameters, create_model
from edgedistill.sources import load_builtin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "teachers" / "fashion_lenet5.safetensors")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    train, test = load_builtin("fashion-mnist"), load_builtin("fashion-mnist-test")
    images, labels = to_tensor(train.images), torch.from_numpy(train.labels).long()
    test_images, test_labels = to_tensor(test.images), torch.from_numpy(test.labels).long()

    model = create_model("lenet5", num_classes=10, in_channels=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps = math.ceil(len(images) / args.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, epochs=args.epochs, steps_per_epoch=steps)
    augment = {"degrees": 6.0, "scale": 0.08, "shift": 2.0, "shear": 4.0}
    generator = torch.Generator().manual_seed(args.seed)
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(images), generator=generator)
        total = 0.0
        for batch in order.split(args.batch_size):
            inputs = random_affine(images[batch], generator, **augment)
            flip = torch.rand(len(batch), generator=generator) < 0.5
            inputs = torch.where(flip.view(-1, 1, 1, 1), inputs.flip(-1), inputs)
            loss = F.cross_entropy(model(inputs), labels[batch], label_smoothing=0.05)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(batch)
        print(f"epoch {epoch + 1:3d}  loss {total / len(images):.4f}  fashion-mnist-test accuracy "
              f"{accuracy(model, test_images, test_labels):.4f}", flush=True)

    test_accuracy = accuracy(model, test_images, test_labels)
    seconds = time.perf_counter() - started
    print(f"fashion-mnist-test accuracy: {test_accuracy:.4f} ({len(test_images)} images), trained in {seconds:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(args.out))
    facts = {
        "architecture": "lenet5", "num_classes": 10, "in_channels": 1, "input_size": [28, 28],
        "normalization": {"scale": "pixels / 255", "mean": MEAN, "std": STD},
        "class_names": train.class_names, "parameters": count_parameters(model),
        "train_source": "fashion-mnist", "train_size": len(images),
        "heldout_source": "fashion-mnist-test", "heldout_size": len(test_images),
        "heldout_accuracy": round(test_accuracy, 4), "seed": args.seed, "epochs": args.epochs,
        "batch_size": args.batch_size,
        "optimizer": f"AdamW(lr={args.lr}, weight_decay={args.weight_decay}), OneCycleLR, label smoothing 0.05",
        "augmentation": {"random_affine": augment, "hflip": 0.5},
        "command": " ".join(shlex.quote(a) for a in [os.path.relpath(sys.executable, ROOT), *sys.argv]),
        "train_seconds": round(seconds, 1), "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(), "python_version": platform.python_version(),
        "machine": platform.machine(),
    }
    args.out.with_suffix(".json").write_text(json.dumps(facts, indent=2) + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
