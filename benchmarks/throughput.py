"""Pool scoring and training throughput against their ceilings, measured side by side in one run.

    .venv/bin/python -m benchmarks.throughput                         # the demo's LeNet-5 models on this machine
    .venv/bin/python -m benchmarks.throughput --make-frames runs/frames   # video frames as WebDataset shards (needs OpenCV)
    .venv/bin/python -m benchmarks.throughput --preset resnet50-mobilenetv3 --shards 'runs/frames/frames-{0000..0007}.tar'

Ours is the library itself (edgedistill.select.select_pool, edgedistill.distill.distill) with decoding in
DataLoader workers; the ceilings are edgedistill.throughput's bare teacher forward and bare distillation step
of the same models, same batch, device and precision, on a batch already in memory. Prints one markdown table
and writes it into docs/throughput.md under a heading for the preset and device.
"""

from __future__ import annotations

import argparse
import copy
import io
import platform
import shlex
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from edgedistill.config.schema import ComputeSpec, DistillSpec
from edgedistill.inputs.images import normalize
from edgedistill.inputs.pool import build_pool, default_workers
from edgedistill.models.factory import create_model
from edgedistill.pipeline import build_student, load_teacher
from edgedistill.recipe import recipe_from_dict
from edgedistill.scale.compute import resolve_compute
from edgedistill.scale.distributed import init_world
from edgedistill.scale.throughput import bare_forward_rate, bare_step_rate
from edgedistill.stages.distill import distill
from edgedistill.stages.select import select_pool

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "throughput.md"
VIDEOS = Path("/usr/share/doc/opencv-doc/examples/data")
IMAGENET = {"channels": 3, "size": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def make_frames(out: Path, shards: int, per_shard: int, seed: int = 0) -> None:
    """Random 224x224 crops of frames decoded from opencv-doc's street and film videos, as JPEG WebDataset shards."""
    try:
        import cv2
    except ImportError:
        sys.exit("--make-frames needs OpenCV: pip install opencv-python-headless")
    frames = []
    for name in ("vtest.avi", "Megamind.avi", "tree.avi"):
        capture = cv2.VideoCapture(str(VIDEOS / name))
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(frame[:, :, ::-1])
        capture.release()
    if not frames:
        sys.exit(f"no video frames found under {VIDEOS}: apt-get install opencv-doc")
    from PIL import Image

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    for shard in range(shards):
        with tarfile.open(out / f"frames-{shard:04d}.tar", "w") as tar:
            for i in range(per_shard):
                frame = frames[rng.integers(len(frames))]
                h, w = frame.shape[:2]
                side = int(rng.integers(min(h, w) // 2, min(h, w) + 1))
                top, left = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
                buf = io.BytesIO()
                Image.fromarray(np.ascontiguousarray(frame[top : top + side, left : left + side])).resize((256, 256)).save(
                    buf, "JPEG", quality=85
                )
                info = tarfile.TarInfo(f"{shard:04d}{i:06d}.jpg")
                info.size = buf.tell()
                buf.seek(0)
                tar.addfile(info, buf)
    print(f"{len(frames)} frames -> {shards} shards x {per_shard} crops in {out}")


def preset(name: str, shards: str | None, compute: dict):
    """(recipe, teacher, student): the demo's trained LeNet-5 pair, or random-weight ResNet-50 -> MobileNetV3-Large at 224."""
    if name == "demo":
        data = yaml.safe_load((ROOT / "recipes" / "demo.yaml").read_text())
        data.update(targets=[], compute=compute)
        recipe = recipe_from_dict(data, base_dir=ROOT / "recipes")
        return recipe, load_teacher(recipe), build_student(recipe)
    if not shards:
        sys.exit("--preset resnet50-mobilenetv3 needs --shards PATTERN (make them with --make-frames DIR)")
    weights = ROOT / "runs" / "bench" / "resnet50-random.safetensors"  # random weights: throughput does not care
    if not weights.exists():
        from safetensors.torch import save_file

        torch.manual_seed(0)
        weights.parent.mkdir(parents=True, exist_ok=True)
        save_file(create_model("torchvision:resnet50", 1000, 3, 224).state_dict(), str(weights))
    recipe = recipe_from_dict(
        {
            "name": "throughput",
            "teacher": {"arch": "torchvision:resnet50", "weights": str(weights), "input": IMAGENET, "num_classes": 1000},
            "pool": [{"shards": str(Path(shards).absolute())}],
            "select": {"strategy": "random", "total": 1024, "batch_size": 256},
            "student": {"arch": "torchvision:mobilenet_v3_large"},
            "distill": {"epochs": 2, "batch_size": 128, "lr": 0.001},
            "compute": compute,
        },
        base_dir=Path.cwd(),
    )
    return recipe, load_teacher(recipe), build_student(recipe)


def distill_specs(spec: DistillSpec, epochs: int | None) -> tuple[DistillSpec, DistillSpec]:
    """(the recipe's distill spec at `epochs`, the same loop doing only what the bare step does).

    The second measures what the loop itself costs: KD on logits (the recipe's `kd` entry, weight and
    temperature as given; weight 1 if the recipe has none) with every other loss part at weight 0 and no
    augmentation.
    """
    dspec = spec.model_copy(update={"epochs": epochs or spec.epochs})
    loss = {name: entry if name == "kd" else 0.0 for name, entry in dspec.loss.items()}
    loss.setdefault("kd", 1.0)
    return dspec, DistillSpec.model_validate({**dspec.model_dump(), "augment": None, "loss": loss})


def measure(recipe, teacher, student, epochs: int | None) -> list[dict]:
    world = init_world(recipe.compute.device)
    compute = resolve_compute(recipe.compute, world.device)
    pool = build_pool(recipe)
    workers = recipe.compute.workers if recipe.compute.workers is not None else default_workers(pool)
    spec = recipe.teacher.input
    teacher = compute.prepare(teacher.eval())
    bare = lambda batch: bare_forward_rate(teacher, batch, compute)
    start = time.perf_counter()
    selection = select_pool(teacher, pool, recipe.select, recipe.teacher.num_classes, recipe.seed, compute=compute, workers=workers)
    scored = selection.stats["pool_size"] / (time.perf_counter() - start)
    scoring_ceiling = bare(normalize(torch.from_numpy(selection.images[: recipe.select.batch_size]), spec).to(compute.device))
    dspec, plain = distill_specs(recipe.distill, epochs)
    torch.manual_seed(0)
    result = distill(teacher, copy.deepcopy(student), selection.images, dspec, recipe.class_drop, spec, recipe.seed, compute=compute)
    torch.manual_seed(0)
    plain_result = distill(
        teacher,
        copy.deepcopy(student),
        selection.images,
        plain,
        recipe.class_drop.model_copy(update={"mode": "none"}),
        spec,
        recipe.seed,
        compute=compute,
    )
    batch = normalize(torch.from_numpy(np.array(selection.images[: dspec.batch_size])), spec).to(compute.device)
    training_ceiling = bare_step_rate(teacher, result.student, batch, compute, lr=dspec.lr)
    training = f"{len(selection.images):,} images x {dspec.epochs} epochs, batch {dspec.batch_size}"
    return [
        {
            "stage": f"pool scoring ({selection.stats['pool_size']:,} images, batch {recipe.select.batch_size}, {workers} workers)",
            "ours": scored,
            "ceiling": scoring_ceiling,
            "ceiling_name": "bare teacher forward",
        },
        {
            "stage": f"training, the recipe's method ({training})",
            "ours": result.images_per_s,
            "ceiling": training_ceiling,
            "ceiling_name": "bare distillation step",
        },
        {
            "stage": f"training loop doing the bare step's work: KD only, no augmentation ({training})",
            "ours": plain_result.images_per_s,
            "ceiling": training_ceiling,
            "ceiling_name": "bare distillation step",
        },
    ]


def device_name(device: str) -> str:
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        return torch.cuda.get_device_name()
    return f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"


def table(rows: list[dict]) -> str:
    lines = ["| stage | ours (images/s) | ceiling | ceiling (images/s) | ratio |", "|---|---|---|---|---|"]
    lines += [
        f"| {r['stage']} | {r['ours']:,.0f} | {r['ceiling_name']} | {r['ceiling']:,.0f} | **{r['ours'] / r['ceiling']:.2f}** |"
        for r in rows
    ]
    return "\n".join(lines)


def write_doc(heading: str, body: str) -> None:
    """Replaces this heading's section of docs/throughput.md, keeping the others."""
    text = (
        DOC.read_text()
        if DOC.exists()
        else "# Throughput against the ceilings\n\nWritten by `benchmarks/throughput.py`; see docs/scale.md.\n"
    )
    sections = text.split("\n## ")
    kept = [s for s in sections[1:] if not s.startswith(heading)]
    DOC.write_text("\n## ".join([sections[0].rstrip("\n") + "\n", *[s.rstrip("\n") + "\n" for s in kept], f"{heading}\n\n{body}\n"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=["demo", "resnet50-mobilenetv3"], default="demo")
    parser.add_argument("--shards", help="WebDataset shard pattern of the resnet50-mobilenetv3 pool")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto")
    parser.add_argument("--workers", type=int, help="decoding workers (default: edgedistill's)")
    parser.add_argument("--epochs", type=int, help="training epochs (default: 2)", default=2)
    parser.add_argument("--make-frames", type=Path, metavar="DIR", help="write video-frame shards to DIR and exit")
    parser.add_argument("--shard-count", type=int, default=8)
    parser.add_argument("--per-shard", type=int, default=384)
    parser.add_argument("--no-doc", action="store_true", help="print only, leave docs/throughput.md alone")
    args = parser.parse_args()
    if args.make_frames:
        make_frames(args.make_frames, args.shard_count, args.per_shard)
        return
    compute = ComputeSpec(device=args.device, precision=args.precision, workers=args.workers).model_dump()
    recipe, teacher, student = preset(args.preset, args.shards, compute)
    rows = measure(recipe, teacher, student, args.epochs)
    device = device_name(args.device)
    versions = f"torch {torch.__version__}, Python {platform.python_version()}"
    command = shlex.join(["python", "-m", "benchmarks.throughput", *sys.argv[1:]])
    body = (
        f"{table(rows)}\n\nCommand: `{command}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {device}; "
        f"precision {args.precision}; {versions})."
    )
    print(body)
    if not args.no_doc:
        write_doc(f"{args.preset} on {device}", body)


if __name__ == "__main__":
    main()
