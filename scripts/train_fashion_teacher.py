"""Train the B2 benchmark teacher: LeNet-5 on the built-in `fashion-mnist` (60k train), validated on a seeded 10% of it.

Reuses the demo teacher's recipe (scripts/train_demo_teacher.py: same normalization 0.1307/0.3081, affine
augmentation, AdamW + one-cycle, label smoothing) plus horizontal flips, which suit clothes.
Writes teachers/fashion_lenet5.safetensors and teachers/fashion_lenet5.json.

It never reads fashion-mnist-test, B2's reporting set (issue #27): benchmarks.method scores the teacher there. The
committed teacher was trained by an earlier version on all 60,000 images, printing fashion-mnist-test's accuracy
every epoch; its .json says so.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_demo_teacher import ROOT, accuracy, fit, save_teacher, to_tensor, training_arguments, validation_facts, validation_split

from edgedistill.inputs.builtin import load_builtin


def main() -> None:
    args = training_arguments(__doc__.splitlines()[0], 12, ROOT / "teachers" / "fashion_lenet5.safetensors").parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    train = load_builtin("fashion-mnist")
    keep, held = validation_split(len(train.images), args.val_fraction, args.seed)
    all_images, all_labels = to_tensor(train.images), torch.from_numpy(train.labels).long()
    images, labels = all_images[keep], all_labels[keep]
    val_images, val_labels = all_images[held], all_labels[held]
    val_name = f"validation ({len(held)} fashion-mnist training images)"

    def report(epoch: int, loss: float, model: torch.nn.Module) -> None:
        print(f"epoch {epoch:3d}  loss {loss:.4f}  {val_name} accuracy {accuracy(model, val_images, val_labels):.4f}", flush=True)

    augment = {"degrees": 6.0, "scale": 0.08, "shift": 2.0, "shear": 4.0}
    model = fit(images, labels, args, augment, hflip=True, report=report, report_every=1)
    val_accuracy = accuracy(model, val_images, val_labels)
    seconds = time.perf_counter() - started
    print(f"{val_name} accuracy: {val_accuracy:.4f}, trained on {len(images)} images in {seconds:.0f} s")
    if args.no_save:
        return
    save_teacher(
        model,
        args,
        {
            "class_names": train.class_names,
            **validation_facts("fashion-mnist", args, len(images), len(held), val_accuracy),
            "augmentation": {"random_affine": augment, "hflip": 0.5},
            "train_seconds": round(seconds, 1),
        },
    )


if __name__ == "__main__":
    main()
