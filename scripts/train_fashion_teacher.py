"""Train the B2 benchmark teacher: LeNet-5 on the built-in `fashion-mnist` (60k train), scored on `fashion-mnist-test`.

Reuses the demo teacher's recipe (scripts/train_demo_teacher.py: same normalization 0.1307/0.3081, affine
augmentation, AdamW + one-cycle, label smoothing) plus horizontal flips, which suit clothes.
Writes teachers/fashion_lenet5.safetensors and teachers/fashion_lenet5.json.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_demo_teacher import ROOT, accuracy, fit, save_teacher, to_tensor, training_arguments

from edgedistill.inputs.builtin import load_builtin


def main() -> None:
    args = training_arguments(__doc__.splitlines()[0], 12, ROOT / "teachers" / "fashion_lenet5.safetensors").parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    train, test = load_builtin("fashion-mnist"), load_builtin("fashion-mnist-test")
    images, labels = to_tensor(train.images), torch.from_numpy(train.labels).long()
    test_images, test_labels = to_tensor(test.images), torch.from_numpy(test.labels).long()

    def report(epoch: int, loss: float, model: torch.nn.Module) -> None:
        print(f"epoch {epoch:3d}  loss {loss:.4f}  fashion-mnist-test accuracy {accuracy(model, test_images, test_labels):.4f}", flush=True)

    augment = {"degrees": 6.0, "scale": 0.08, "shift": 2.0, "shear": 4.0}
    model = fit(images, labels, args, augment, hflip=True, report=report, report_every=1)
    test_accuracy = accuracy(model, test_images, test_labels)
    seconds = time.perf_counter() - started
    print(f"fashion-mnist-test accuracy: {test_accuracy:.4f} ({len(test_images)} images), trained in {seconds:.0f} s")
    save_teacher(
        model,
        args,
        {
            "class_names": train.class_names,
            "train_source": "fashion-mnist",
            "train_size": len(images),
            "heldout_source": "fashion-mnist-test",
            "heldout_size": len(test_images),
            "heldout_accuracy": round(test_accuracy, 4),
            "augmentation": {"random_affine": augment, "hflip": 0.5},
            "train_seconds": round(seconds, 1),
        },
    )


if __name__ == "__main__":
    main()
