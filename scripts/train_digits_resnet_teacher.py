"""Train the B3 benchmark teacher: torchvision's ResNet-18 (BatchNorm, 1 channel, 32x32) on the built-in `mnist-train`.

B3 is a bench of another family than B1 (a torchvision teacher with BatchNorm, a torchvision student, 32-px input).
It was meant for reporting only, on `opencv-digits`, and is a development bench since issue #27 (docs/method.md says
why). This script validates on a seeded 10% of mnist-train and reads no other set: not mnist-heldout (B1's reporting
set), not opencv-digits. The committed teacher was trained by an earlier version on all 5,000 digits, printing
mnist-heldout's accuracy every 5 epochs; its .json says so. Writes teachers/digits_resnet18.safetensors and
teachers/digits_resnet18.json.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_demo_teacher import MEAN, ROOT, STD, accuracy, fit, save_teacher, training_arguments, validation_facts, validation_split

from edgedistill.config.schema import InputSpec
from edgedistill.inputs.builtin import load_builtin
from edgedistill.inputs.images import convert_array, normalize

ARCH, SIZE = "torchvision:resnet18", 32


def main() -> None:
    parser = training_arguments(__doc__.splitlines()[0], 30, ROOT / "teachers" / "digits_resnet18.safetensors")
    parser.set_defaults(lr=3e-3, batch_size=128)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    spec = InputSpec(channels=1, size=SIZE, mean=[MEAN], std=[STD])
    train = load_builtin("mnist-train")
    keep, held = validation_split(len(train.images), args.val_fraction, args.seed)
    all_images = normalize(torch.from_numpy(convert_array(train.images, spec)), spec)
    all_labels = torch.from_numpy(train.labels)
    images, labels = all_images[keep], all_labels[keep]
    val_images, val_labels = all_images[held], all_labels[held]
    val_name = f"validation ({len(held)} mnist-train digits)"

    def report(epoch: int, loss: float, model: torch.nn.Module) -> None:
        print(f"epoch {epoch:3d}  loss {loss:.4f}  {val_name} accuracy {accuracy(model, val_images, val_labels):.4f}", flush=True)

    augment = dict(degrees=12.0, scale=0.1, shift=2.5, shear=8.0)
    model = fit(images, labels, args, augment, hflip=False, report=report, report_every=5, arch=ARCH)
    model = model.half().float()  # stored in float16 (22 MB instead of 45); reported as stored
    val_accuracy = accuracy(model, val_images, val_labels)
    seconds = time.perf_counter() - started
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
        },
        arch=ARCH,
        size=SIZE,
    )


if __name__ == "__main__":
    main()
