"""Where one epoch of B3-like distillation spends its time on this CPU, and what cheaper variants of the step gain.

    .venv/bin/python -m benchmarks.profile_distill --out benchmarks/results/profile_distill-YYYY-MM-DD.txt

Issue #27 item 4. The setup is B3's (benchmarks/method.py): the torchvision ResNet-18 teacher with BatchNorm
(teachers/digits_resnet18) at 1x32x32 into torchvision MobileNetV3-Small, with recipes/demo.yaml's distill section as it
ships (batch 128, lr 0.008, weight decay 0.05, kd + feature + relation, CutMix 0.5 + mosaic 0.3 on the random affine,
balance 1.0, class-drop top-3). The selection is random uint8 images of that shape; the labeled evaluation set
(opencv-digits, 5,000 images) and the selection's hold-out (254 of B3's 5,000) are random images of the same shape.
Throughput does not depend on what the pixels show.

Five parts, each printed as a table:

1. The library's own `distill()` (edgedistill.stages.distill.distill), 2 epochs with the pipeline's per-epoch `evaluate`
   and `monitor` callbacks (what DistillStage passes). Timers: the loop's own `train_seconds` from the history, and
   wrappers around `augment_batch`, `Distiller.teacher_outputs`, `recalibrate_batchnorm` and the two callbacks
   (patched in this process only). fp32 contiguous (the CPU default until 2026-12-08), channels_last (the default
   since) and, where the CPU has native bf16, bf16 with channels_last alternate (A B C C B A), each next to the bare
   steps below.
2. The split of one training step: the body of distill()'s loop rewritten here step by step with the library's own
   objects (SelectedBatches + EpochOrder loader, augment_batch, Distiller, AdamW + one-cycle, gradient clipping), with
   `time.perf_counter()` around each phase (the CPU runs every op synchronously, so no synchronisation is needed).
3. Variants of that step, interleaved in blocks of a few steps with the order reversed every round (A B C .. C B A ..)
   to cancel machine-load drift; each as images/s and as the median of its per-round ratio to the baseline's block.
   Beside them, in parts 1 and 3, the bare steps: the SAME losses (teacher forward, student forward, kd + feature +
   relation on the same taps, backward, AdamW; a normalized batch already in memory, no augmentation, no clipping, no
   scheduler) hand-written here (BareSame), and bare KD (edgedistill.scale.throughput.bare_step_rate, the library's
   own ceiling).
4. torch.profiler over two steps of the baseline: the ops with the most self CPU time.
5. The relation loss on one real batch's features: its cost per step, its angle term alone, and the same angles from the
   Gram matrix (`gram_angles`, a candidate for losses._angles), with how far they are from the library's.

torch threads are set as `edgedistill compress` sets them (edgedistill.scale.compute.cpu_threads) unless --threads.
torch.compile is timed from a fresh inductor cache (cold, as a first run on a machine compiles) unless --warm-compile.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

import edgedistill.stages.distill as distill_module
from edgedistill.backends.base import cpu_flags, machine_facts
from edgedistill.config.schema import ClassDropSpec, DistillSpec, InputSpec
from edgedistill.inputs.images import normalize, standardize
from edgedistill.models.features import FeatureTap
from edgedistill.pipeline import build_student, load_teacher
from edgedistill.recipe import recipe_from_dict
from edgedistill.scale.compute import Compute, cpu_threads
from edgedistill.scale.throughput import bare_step_rate
from edgedistill.stages.augment import augment_batch
from edgedistill.stages.class_drop import class_drop
from edgedistill.stages.distill import (
    GRAD_CLIP,
    Distiller,
    EpochOrder,
    SelectedBatches,
    balancing_weights,
    distill,
    logits_of,
    store_teacher_outputs,
)
from edgedistill.stages.losses import LOSSES, RelationLoss, _angles
from edgedistill.stages.validate import predict_torch

from .method import BENCHES, merge

ROOT = Path(__file__).resolve().parent.parent
B3_TRAIN, B3_HOLDOUT, B3_EVAL = 4746, 254, 5000  # B3's selection split and opencv-digits
CPU = torch.device("cpu")
now = time.perf_counter


class Tee:
    """print() to stdout and, with --out, to a file."""

    def __init__(self, path: Path | None):
        self.file = path.open("w") if path else None

    def __call__(self, *parts: object) -> None:
        line = " ".join(str(p) for p in parts)
        print(line, flush=True)
        if self.file:
            self.file.write(line + "\n")
            self.file.flush()


def machine(out: Tee, when: str) -> None:
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    flags, model = cpu_flags() or set(), machine_facts()["cpu_model"] or "?"
    wanted = ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile", "avx_vnni"]
    have = [f for f in wanted if f in flags]
    lacks = [f for f in wanted if f not in flags]
    out(f"[{when}] {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}  uptime: {uptime}")
    out(f"[{when}] Model name: {model}; {os.cpu_count()} CPUs; flags present: {', '.join(have) or 'none'}; absent: {', '.join(lacks)}")


def load() -> str:
    return "load " + " ".join(Path("/proc/loadavg").read_text().split()[:3])


# ---------------------------------------------------------------------------------------------------------------- setup


def b3_recipe(batch: int | None):
    """B3's recipe with recipes/demo.yaml's distill section as it ships (benchmarks.method's make_recipe would put its
    --full rows' 40 epochs of batch 256 on it; the defaults row wd_005 runs the shipped section)."""
    data = merge(yaml.safe_load((ROOT / "recipes" / "demo.yaml").read_text()), BENCHES["B3"]["changes"])
    data.update(seed=0, targets=[])
    if batch:
        data["distill"]["batch_size"] = batch
    return recipe_from_dict(data, base_dir=ROOT / "recipes", source="benchmarks.profile_distill:B3")


def random_images(n: int, spec: InputSpec, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, spec.channels, spec.size, spec.size), dtype=np.uint8)


def timed(fn, store: dict, key: str):
    def wrapper(*args, **kwargs):
        start = now()
        try:
            return fn(*args, **kwargs)
        finally:
            store[key] += now() - start

    return wrapper


class Deadline(Exception):
    pass


@contextlib.contextmanager
def alarm(seconds: int):
    """Raises Deadline in the main thread after `seconds` (a compile that takes too long is reported, not waited for)."""

    def handler(signum, frame):
        raise Deadline(f"took over {seconds} s")

    old = signal.signal(signal.SIGALRM, handler)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# -------------------------------------------------------------------------------------------- part 1: the library's epoch


@dataclass
class Bench:
    teacher: torch.nn.Module
    student: torch.nn.Module
    images: np.ndarray
    holdout: np.ndarray
    eval_images: np.ndarray
    spec: DistillSpec
    class_drop: ClassDropSpec
    input_spec: InputSpec
    seed: int = 0


def library_epochs(b: Bench, compute: Compute, epochs: int) -> dict:
    """distill() as DistillStage calls it (evaluate and monitor every epoch), with timers around its parts."""
    t: dict[str, float] = defaultdict(float)
    teacher_pred = predict_torch(b.teacher, b.eval_images, b.input_spec).argmax(1)
    holdout_pred = predict_torch(b.teacher, b.holdout, b.input_spec).argmax(1)

    def evaluate(student):
        return {"agreement": float((predict_torch(student, b.eval_images, b.input_spec).argmax(1) == teacher_pred).mean())}

    def monitor(student):
        return float((predict_torch(student, b.holdout, b.input_spec).argmax(1) == holdout_pred).mean())

    marks: list[float] = []
    patched = {
        "augment_batch": distill_module.augment_batch,
        "recalibrate_batchnorm": distill_module.recalibrate_batchnorm,
    }
    teacher_outputs = Distiller.teacher_outputs
    per_epoch: list[dict] = []
    snapshot = lambda: dict(t)
    before = {}

    def on_epoch(record):
        marks.append(now())
        nonlocal before
        per_epoch.append({k: t[k] - before.get(k, 0.0) for k in t})
        before = snapshot()

    distill_module.augment_batch = timed(patched["augment_batch"], t, "augment")
    distill_module.recalibrate_batchnorm = timed(patched["recalibrate_batchnorm"], t, "recalibrate_bn")
    Distiller.teacher_outputs = timed(teacher_outputs, t, "teacher_forward")
    try:
        torch.manual_seed(b.seed)
        start = now()
        result = distill(
            copy.deepcopy(b.teacher),
            copy.deepcopy(b.student),
            b.images,
            b.spec.model_copy(update={"epochs": epochs}),
            b.class_drop,
            b.input_spec,
            b.seed,
            evaluate=timed(evaluate, t, "evaluate"),
            monitor=timed(monitor, t, "monitor"),
            on_epoch=on_epoch,
            compute=compute,
        )
    finally:
        for name, fn in patched.items():
            setattr(distill_module, name, fn)
        Distiller.teacher_outputs = teacher_outputs
    seconds = [h["train_seconds"] for h in result.history]
    loops = [seconds[0]] + [b_ - a for a, b_ in zip(seconds, seconds[1:])]
    walls = [marks[0] - start] + [b_ - a for a, b_ in zip(marks, marks[1:])]
    steps = len(b.images) // b.spec.batch_size
    return {"loops": loops, "walls": walls, "parts": per_epoch, "steps": steps, "batch": b.spec.batch_size}


# ------------------------------------------------------------------------------------ parts 2 and 3: the step, timed


@dataclass
class Variant:
    name: str
    what: str
    compute: Compute
    augment: bool = True
    cached: bool = False  # teacher outputs stored once (store_teacher_outputs), as distill() does without augmentation
    channels_last_teacher: bool = False  # on top of `compute`
    channels_last_student: bool = False
    compile_teacher: bool = False
    slow: bool = False  # one step a round, in the first two rounds only (bf16 without AMX/AVX-512 BF16 takes seconds a step)


class TimedCall:
    """Passed to Distiller.forward as the student: times the student's forward inside the library's forward."""

    def __init__(self, fn):
        self.fn, self.seconds = fn, 0.0

    def __call__(self, x):
        start = now()
        try:
            return self.fn(x)
        finally:
            self.seconds += now() - start


class LibraryStep:
    """One iteration of distill()'s training loop, the same calls in the same order, with a timer per phase."""

    def __init__(self, v: Variant, b: Bench, image_classes: np.ndarray, scratch: Path, out: Tee, compile_timeout: int):
        self.v, self.b, self.compute = v, b, v.compute
        teacher, student = copy.deepcopy(b.teacher), copy.deepcopy(b.student)
        self.compute.prepare(teacher)
        self.compute.prepare(student)
        if v.channels_last_teacher:
            teacher.to(memory_format=torch.channels_last)
        if v.channels_last_student:
            student.to(memory_format=torch.channels_last)
        self.spec = b.spec if v.augment else b.spec.model_copy(update={"augment": None})
        torch.manual_seed(b.seed)
        self.distiller = Distiller(teacher, student, self.spec, b.class_drop, b.input_spec)
        self.params = [p for p in self.distiller.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=self.spec.lr, weight_decay=self.spec.weight_decay)
        steps_per_epoch = max(1, B3_TRAIN // self.spec.batch_size)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=self.spec.lr, total_steps=self.spec.epochs * steps_per_epoch, pct_start=0.15, anneal_strategy="cos"
        )
        self.scaler = torch.amp.GradScaler("cpu", enabled=False)
        stored, self.logit_width = None, None
        self.setup: dict[str, float] = {}
        if v.cached:
            path = scratch / f"teacher_outputs-{v.name}.npy"
            start = now()
            store_teacher_outputs(self.distiller, b.images, b.input_spec, path, self.compute)
            self.setup["store teacher outputs"] = now() - start
            stored = np.load(path, mmap_mode="c")
            self.logit_width = stored.shape[1] - self.distiller.teacher_tap.features.flatten(1).shape[1]
        self.step_student = torch.compile(student) if self.compute.compile else student
        if v.compile_teacher:
            self.distiller.teacher = torch.compile(self.distiller.teacher)
        self.sampler = EpochOrder(len(b.images), 0, 1, b.seed)
        self.sampler.weights = balancing_weights(image_classes, self.spec.balance)
        self.loader = torch.utils.data.DataLoader(
            SelectedBatches(b.images, stored, np.arange(len(b.images))),
            batch_size=None,
            sampler=torch.utils.data.BatchSampler(self.sampler, self.spec.batch_size, drop_last=True),
        )
        self.it = iter(self.loader)
        self.generator = torch.Generator().manual_seed(b.seed * 1000 + 7919)
        self.times: dict[str, float] = defaultdict(float)
        self.steps = 0
        self.error: str | None = None
        self.distiller.train()
        # first steps: allocations, oneDNN primitive caches, AdamW state; the compile when asked
        start = now()
        try:
            with alarm(compile_timeout) if (self.compute.compile or v.compile_teacher) else contextlib.nullcontext():
                self.step({})
            self.setup["first step"] = now() - start
            if not v.slow:
                self.step({})
        except Exception as exc:  # a compile that fails or runs out of time is reported, not fatal
            self.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:300]
            self.setup["first step (failed)"] = now() - start

    def batch(self):
        try:
            return next(self.it)
        except StopIteration:
            self.sampler.epoch += 1
            self.it = iter(self.loader)
            return next(self.it)

    def step(self, times: dict) -> None:
        c, spec = self.compute, self.spec
        t0 = now()
        batch, teacher_out = self.batch()
        batch = batch.to(c.device, non_blocking=True).float() / 255.0
        t1 = now()
        if spec.augment is not None:
            batch = augment_batch(batch, spec.augment, self.generator)
        t2 = now()
        x = c.input(standardize(batch, self.b.input_spec))
        if teacher_out is not None:
            teacher_out = (teacher_out[:, : self.logit_width], teacher_out[:, self.logit_width :])
        else:
            with c.autocast():
                teacher_out = self.distiller.teacher_outputs(x)
        t3 = now()
        student = TimedCall(self.step_student)
        parts = self.distiller(x, teacher_out, student, c.autocast)
        t4 = now()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(parts["loss"]).backward()
        t5 = now()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.params, GRAD_CLIP)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        t6 = now()
        sums = {k: float(v.detach()) for k, v in parts.items() if k not in ("student_logits", "teacher_logits")}
        t7 = now()
        for key, seconds in (
            ("data (read, to float)", t1 - t0),
            ("augmentation (affine, CutMix, mosaic)", t2 - t1),
            ("teacher forward" if self.v.cached is False else "teacher outputs (stored)", t3 - t2),
            ("student forward", student.seconds),
            ("losses (class-drop, kd, feature, relation)", t4 - t3 - student.seconds),
            ("backward", t5 - t4),
            ("optimizer (clip, AdamW, one-cycle)", t6 - t5),
            ("loss bookkeeping", t7 - t6),
        ):
            times[key] = times.get(key, 0.0) + seconds
        del sums

    def block(self, steps: int) -> float:
        """Seconds for `steps` steps; the phases are added to self.times."""
        start = now()
        for _ in range(steps):
            self.step(self.times)
        self.steps += steps
        return now() - start


class BareSame:
    """The least a step of the same losses can do, written out: teacher forward (no grad), student forward, the
    recipe's kd (class-dropped soft labels), feature and relation parts on the same taps, backward, AdamW. A normalized
    batch already in memory; no data loading, augmentation, clipping, scheduler or loss bookkeeping."""

    def __init__(self, b: Bench, compute: Compute):
        self.compute = compute
        self.teacher, self.student = compute.prepare(copy.deepcopy(b.teacher)).eval(), compute.prepare(copy.deepcopy(b.student)).train()
        self.teacher.requires_grad_(False)
        self.ttap, self.stap = FeatureTap(self.teacher), FeatureTap(self.student)
        self.x = compute.input(normalize(torch.from_numpy(b.images[: b.spec.batch_size].copy()), b.input_spec))
        with torch.no_grad():
            self.teacher(self.x[:2])
            self.student.eval()
            self.student(self.x[:2])
            self.student.train()
        sdim, tdim = self.stap.features.shape[1], self.ttap.features.shape[1]
        self.parts, self.weights = {}, {}
        for name, entry in b.spec.loss.items():
            part = LOSSES.get(name, "distill.loss")
            params = part.params(entry, name)
            if params.weight:
                self.parts[name], self.weights[name] = part.build(params, sdim, tdim), params.weight
        self.cd = b.class_drop
        modules = [self.student, *self.parts.values()]
        self.optimizer = torch.optim.AdamW([p for m in modules for p in m.parameters()], lr=b.spec.lr, weight_decay=b.spec.weight_decay)
        self.temperature = getattr(self.parts.get("kd"), "temperature", 1.0)
        self.steps = 0

    def step(self) -> None:
        with torch.no_grad(), self.compute.autocast():
            tl = self.teacher(self.x).float()
            tf = self.ttap.features.float()
        with self.compute.autocast():
            sl = self.student(self.x).float()
        sf = self.stap.features.float()
        loss = 0.0
        for name, part in self.parts.items():
            if name == "kd":
                soft = class_drop(F.softmax(tl / self.temperature, dim=1), self.cd)
                loss = loss + self.weights[name] * part(sl, soft)
            else:
                loss = loss + self.weights[name] * part(sf, tf)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def block(self, steps: int) -> float:
        start = now()
        for _ in range(steps):
            self.step()
        self.steps += steps
        return now() - start


class BareKD:
    """edgedistill.scale.throughput.bare_step_rate, the library's ceiling (teacher forward, student forward, KL on
    logits, backward, AdamW), timed for about `seconds` a block."""

    def __init__(self, b: Bench, compute: Compute):
        self.b, self.compute = b, compute
        self.teacher = compute.prepare(copy.deepcopy(b.teacher)).eval()
        self.student = compute.prepare(copy.deepcopy(b.student))
        self.batch = normalize(torch.from_numpy(b.images[: b.spec.batch_size].copy()), b.input_spec)
        self.steps = 0

    def rate(self, seconds: float) -> float:
        return bare_step_rate(self.teacher, self.student, self.batch, self.compute, lr=self.b.spec.lr, seconds=seconds, warmup=1)


# ------------------------------------------------------------------------------------- part 5: the relation loss's angles


def difference_angles(x: torch.Tensor) -> torch.Tensor:
    """losses._angles as it was until 2026-12-08: RKD's cosines from explicit differences, a B x B x D tensor and an
    O(B^3 D) bmm. The library now takes them from the Gram matrix; this is the reference it is timed against."""
    e = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), p=2, dim=2)
    return torch.bmm(e, e.transpose(1, 2)).flatten()


def relation_part(out: Tee, stepper: LibraryStep, rounds: int, reps: int = 5) -> None:
    """The relation loss's cost on one real batch's features (forward + backward), its angle term alone (the library's
    Gram-matrix angles) and the explicit differences it replaced (difference_angles), interleaved; and how far apart
    they are."""
    b, d = stepper.b, stepper.distiller
    batch, _ = stepper.batch()
    x = standardize(augment_batch(batch.float() / 255.0, b.spec.augment, stepper.generator), b.input_spec)
    with torch.no_grad():
        _, teacher = d.teacher_outputs(x)
        d.student(x)
        student = d.student_tap.features.float().clone()
    part = d.parts["relation"] if "relation" in d.parts else RelationLoss()
    k = part.angle_samples

    def run(fn) -> float:
        start = now()
        for _ in range(reps):
            s = student.clone().requires_grad_()
            fn(s).backward()
        return (now() - start) / reps

    fns = {
        "relation loss (library, distance + angle)": lambda s: part(s, teacher),
        "angle term (library _angles, Gram matrix)": lambda s: F.smooth_l1_loss(_angles(s[:k]), _angles(teacher[:k])),
        "angle term (difference_angles, before)": lambda s: F.smooth_l1_loss(difference_angles(s[:k]), difference_angles(teacher[:k])),
    }
    times: dict[str, list[float]] = defaultdict(list)
    for r in range(rounds):
        for name in list(fns) if r % 2 == 0 else list(fns)[::-1]:
            times[name].append(run(fns[name]))
    step = sum(stepper.times.values()) / stepper.steps
    out(
        f"features: student {tuple(student.shape)}, teacher {tuple(teacher.shape)}; angles over the first {k} samples; "
        f"{rounds} interleaved rounds of {reps} forward+backward passes"
    )
    out("| computation | s per step (median) | share of the baseline step |")
    out("|---|---|---|")
    for name, ts in times.items():
        out(f"| {name} | {median(ts):.4f} | {median(ts) / step:.1%} |")
    with torch.no_grad():
        for who, f in (("student", student), ("teacher", teacher)):
            a, g = _angles(f[:k]), difference_angles(f[:k])
            gap = (a - g).abs().max().item()
            out(f"_angles vs difference_angles on the {who}'s features: max |difference| {gap:.2e} (cosines in [-1, 1])")
        lib = F.smooth_l1_loss(_angles(student[:k]), _angles(teacher[:k])).item()
        before = F.smooth_l1_loss(difference_angles(student[:k]), difference_angles(teacher[:k])).item()
        out(f"angle loss: library {lib:.6f}, explicit differences {before:.6f}")
    grads = []
    for fn in list(fns.values())[1:]:
        s = student.clone().requires_grad_()
        fn(s).backward()
        grads.append(s.grad)
    out(
        f"its gradient on the student's features: max |difference| {(grads[0] - grads[1]).abs().max().item():.2e}, "
        f"largest entry {grads[0].abs().max().item():.2e}"
    )


# ------------------------------------------------------------------------------------------------------------- report


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def spread(xs: list[float]) -> str:
    return f"{min(xs):.2f}-{max(xs):.2f}" if xs else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1280, help="random selected images (B3 trains on 4,746)")
    parser.add_argument("--batch", type=int, help="batch size (default: recipes/demo.yaml's, B3's)")
    parser.add_argument("--threads", type=int, help="torch threads (default: as edgedistill compress chooses)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the step variants")
    parser.add_argument("--block", type=int, default=3, help="steps per variant per round")
    parser.add_argument("--library-rounds", type=int, default=2, help="A B rounds of distill() itself")
    parser.add_argument("--compile-timeout", type=int, default=240, help="seconds a torch.compile variant may take to compile")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile variants")
    parser.add_argument("--warm-compile", action="store_true", help="use the default inductor cache instead of a fresh one")
    parser.add_argument("--variants", help="only these step variants (comma-separated; the baseline is always run)")
    parser.add_argument("--no-library", action="store_true", help="leave out part 1 (distill() itself)")
    parser.add_argument("--out", type=Path, help="also write the output to this file")
    args = parser.parse_args()
    out = Tee(args.out)
    began = now()
    scratch = Path(tempfile.mkdtemp(prefix="profile_distill-"))
    if not args.warm_compile:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(scratch / "inductor")
    command = " ".join([".venv/bin/python -m benchmarks.profile_distill", *sys.argv[1:]])
    out(f"# {command}")
    machine(out, "start")
    threads, why = cpu_threads(args.threads)
    torch.set_num_threads(threads)
    out(
        f"torch {torch.__version__} (CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"oneDNN {torch.backends.mkldnn.is_available()}), "
        f"Python {platform.python_version()}; torch threads {threads} ({why})"
    )

    recipe = b3_recipe(args.batch)
    spec, ins = recipe.distill, recipe.teacher.input
    teacher = load_teacher(recipe).eval()
    torch.manual_seed(recipe.seed)
    student = build_student(recipe)
    b = Bench(
        teacher,
        student,
        random_images(args.images, ins, 1),
        random_images(B3_HOLDOUT, ins, 2),
        random_images(B3_EVAL, ins, 3),
        spec,
        recipe.class_drop,
        ins,
        recipe.seed,
    )
    n_params = lambda m: sum(p.numel() for p in m.parameters())
    out(
        f"setup: teacher {recipe.teacher.arch} ({n_params(teacher) / 1e6:.1f} M parameters, {recipe.teacher.weights}), student "
        f"{recipe.student.arch} ({n_params(student) / 1e6:.2f} M), input {ins.channels}x{ins.size}x{ins.size}; batch {spec.batch_size}, "
        f"lr {spec.lr}, weight decay {spec.weight_decay}, loss {spec.loss}, augment {spec.augment}, balance {spec.balance}, "
        f"class-drop {recipe.class_drop.mode} {recipe.class_drop.top_k}; {args.images:,} random uint8 images as the selection "
        f"({args.images // spec.batch_size} steps an epoch), {B3_HOLDOUT} hold-out, {B3_EVAL:,} evaluation images"
    )
    base = Compute(CPU, None, False, False)
    cl = Compute(CPU, None, True, False)
    native_bf16 = bool({"avx512_bf16", "amx_bf16"} & (cpu_flags() or set()))
    library_computes = {"fp32": base, "channels_last": cl}
    if native_bf16:
        library_computes["bf16_channels_last"] = Compute(CPU, torch.bfloat16, True, False)

    # ------------------------------------------------------------------------------------------ part 1 (+ bare steps)
    out("\n## 1. The library's distill(): 2 epochs, with evaluate (5,000 images) and monitor (254) every epoch")
    bare_same = {name: BareSame(b, c) for name, c in library_computes.items()}
    bare_kd = {name: BareKD(b, c) for name, c in library_computes.items()}
    for bare in bare_same.values():
        bare.block(1)
    lib: dict[str, list[dict]] = {name: [] for name in library_computes}
    lib_bare: dict[str, dict[str, list[float]]] = {k: defaultdict(list) for k in lib}
    for r in range(0 if args.no_library else args.library_rounds):
        order = list(library_computes) if r % 2 == 0 else list(library_computes)[::-1]
        for name in order:
            compute = library_computes[name]
            res = library_epochs(b, compute, 2)
            lib[name].append(res)
            seconds = bare_same[name].block(args.block)
            lib_bare[name]["same"].append(args.block * spec.batch_size / seconds)
            lib_bare[name]["kd"].append(bare_kd[name].rate(1.5))
            e2 = res["parts"][1]
            out(
                f"  round {r + 1} {name} ({load()}): epoch walls {', '.join(f'{w:.1f}' for w in res['walls'])} s, loops "
                f"{', '.join(f'{x:.1f}' for x in res['loops'])} s; epoch 2: "
                + ", ".join(f"{k} {v:.2f} s" for k, v in sorted(e2.items()))
                + f"; bare same losses {lib_bare[name]['same'][-1]:.0f} img/s, bare KD {lib_bare[name]['kd'][-1]:.0f} img/s"
            )
    steps = args.images // spec.batch_size
    b3_steps = B3_TRAIN // spec.batch_size
    rows = []
    for name, runs in lib.items() if not args.no_library else ():
        loop = median([r["loops"][1] for r in runs])  # epoch 2: no setup, warm
        per_step = loop / steps
        parts = {k: median([r["parts"][1].get(k, 0.0) for r in runs]) for k in runs[0]["parts"][1]}
        rate = steps * spec.batch_size / loop
        rows.append((name, loop, per_step, parts, rate, median(lib_bare[name]["same"]), median(lib_bare[name]["kd"])))
    out("\nEpoch 2 (medians of the rounds), and B3's epoch projected from it (37 steps of the loop + the same per-epoch extras):")
    out(
        "| compute | loop s/step | teacher fwd s/step | augment s/step | recalibrate BN s | monitor s | evaluate s | "
        "B3 epoch s (projected) | of which evaluate+monitor+BN | library loop img/s | bare same losses img/s | ratio | "
        "bare KD img/s | ratio |"
    )
    out("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, _loop, per_step, parts, rate, same, kd in rows:
        extras = parts.get("recalibrate_bn", 0) + parts.get("monitor", 0) + parts.get("evaluate", 0)
        b3_epoch = per_step * b3_steps + extras
        out(
            f"| {name} | {per_step:.3f} | {parts.get('teacher_forward', 0) / steps:.3f} | {parts.get('augment', 0) / steps:.4f} | "
            f"{parts.get('recalibrate_bn', 0):.2f} | {parts.get('monitor', 0):.2f} | {parts.get('evaluate', 0):.2f} | {b3_epoch:.1f} | "
            f"{extras / b3_epoch:.0%} | {rate:.0f} | {same:.0f} | **{rate / same:.2f}** | {kd:.0f} | **{rate / kd:.2f}** |"
        )
    extras = ("recalibrate_bn", "monitor", "evaluate")
    projected = {row[0]: 80 * (row[2] * b3_steps + sum(row[3].get(k, 0) for k in extras)) for row in rows}
    for name in list(lib)[1:] if rows else ():
        paired = [a["loops"][1] / bb["loops"][1] for a, bb in zip(lib["fp32"], lib[name])]
        out(
            f"{name} against fp32, distill() epoch-2 loop: {median(paired):.2f}x faster "
            f"(per round: {', '.join(f'{p:.2f}' for p in paired)}); projected B3 80-epoch run "
            f"{projected['fp32'] / 60:.0f} min -> {projected[name] / 60:.0f} min ({projected['fp32'] / projected[name]:.2f}x) at this load"
        )
    out(f"[part 1 done at {now() - began:.0f} s; {load()}]")

    # ------------------------------------------------------------------------------------------ parts 2 and 3
    out("\n## 2-3. The step, phase by phase, and its variants (interleaved blocks)")
    image_classes = logits_of(b.teacher, b.images, ins, base).argmax(1)
    bf16 = Compute(CPU, torch.bfloat16, False, False)
    variants = [
        Variant("baseline", "fp32, contiguous, eager (the CPU default until 2026-12-08)", base),
        Variant("channels_last", "compute.channels_last: true (teacher, student and input)", cl),
        Variant("cl_teacher", "channels_last teacher only (student and input contiguous)", base, channels_last_teacher=True),
        Variant("cl_student", "channels_last student only (teacher and input contiguous)", base, channels_last_student=True),
        Variant("bf16", "compute.precision: bf16 (autocast; losses in fp32)", bf16, slow=not native_bf16),
        Variant("bf16_cl", "bf16 + channels_last", Compute(CPU, torch.bfloat16, True, False), slow=not native_bf16),
    ]
    if not args.no_compile:
        variants += [
            Variant("compile", "compute.compile: true (the student's step, as distill() compiles it)", Compute(CPU, None, False, True)),
            Variant("compile_all_cl", "channels_last, and the teacher compiled too", Compute(CPU, None, True, True), compile_teacher=True),
        ]
    variants += [
        Variant("no_aug_live", "augment: null, teacher run every step (what caching is measured against)", base, augment=False),
        Variant(
            "no_aug_cached", "augment: null, teacher outputs stored once (distill() with teacher_cache)", base, augment=False, cached=True
        ),
        Variant("no_aug_cached_cl", "augment: null, teacher outputs stored, channels_last", cl, augment=False, cached=True),
    ]
    if args.variants:
        keep = {"baseline", *args.variants.split(",")}
        variants = [v for v in variants if v.name in keep]
    steppers: dict[str, LibraryStep] = {}
    for v in variants:
        start = now()
        s = LibraryStep(v, b, image_classes, scratch, out, args.compile_timeout)
        steppers[v.name] = s
        setup = ", ".join(f"{k} {t:.1f} s" for k, t in s.setup.items())
        out(f"  set up {v.name}: {setup} ({load()})" + (f"; FAILED: {s.error}" if s.error else "") + f" [{now() - start:.0f} s]")
    live = [v for v in variants if steppers[v.name].error is None]
    blocks: dict[str, list[float]] = defaultdict(list)
    same_blocks: list[float] = []
    ratios: dict[str, list[float]] = defaultdict(list)
    for r in range(args.rounds):
        order = [v for v in live if not v.slow or r < 2]
        order = order if r % 2 == 0 else order[::-1]
        for v in order:
            steps = 1 if v.slow else args.block
            seconds = steppers[v.name].block(steps)
            blocks[v.name].append(steps * spec.batch_size / seconds)
        for v in order:
            ratios[v.name].append(blocks[v.name][-1] / blocks["baseline"][-1])
        same_blocks.append(args.block * spec.batch_size / bare_same["fp32"].block(args.block))
        shown = ", ".join(f"{v.name} {blocks[v.name][-1]:.0f}" for v in order)
        out(f"  round {r + 1} ({load()}): {shown}, bare same losses {same_blocks[-1]:.0f} img/s")
    base_rate = median(blocks["baseline"])
    out("\n### Where a step's time goes (seconds per step, all rounds; the baseline is distill()'s default step)")
    phases = list(steppers["baseline"].times)
    header = "| phase | " + " | ".join(v.name for v in live) + " |"
    out(header)
    out("|---" * (len(live) + 1) + "|")
    for phase in phases + ["teacher outputs (stored)"]:
        cells = []
        for v in live:
            s = steppers[v.name]
            cells.append(f"{s.times[phase] / s.steps:.4f}" if phase in s.times else "-")
        if any(c != "-" for c in cells):
            out(f"| {phase} | " + " | ".join(cells) + " |")
    out("| **total** | " + " | ".join(f"**{sum(steppers[v.name].times.values()) / steppers[v.name].steps:.3f}**" for v in live) + " |")
    out(
        "\nShares of the baseline step: "
        + ", ".join(f"{p} {steppers['baseline'].times[p] / sum(steppers['baseline'].times.values()):.0%}" for p in phases)
    )
    out("\n### Variants (images/s: median of the rounds' blocks; ratio: median of each round's ratio to the baseline's block)")
    out("| variant | what | images/s | x baseline | per-round ratios | set-up |")
    out("|---|---|---|---|---|---|")
    for v in variants:
        s = steppers[v.name]
        setup = "; ".join(f"{k} {t:.0f} s" for k, t in s.setup.items())
        if s.error:
            out(f"| {v.name} | {v.what} | failed | - | - | {setup}: {s.error} |")
            continue
        rs = ratios[v.name]
        what = v.what + (" (1 step a round, first 2 rounds: no native bf16 here)" if v.slow else "")
        out(f"| {v.name} | {what} | {median(blocks[v.name]):.0f} | **{median(rs):.2f}** | {spread(rs)} | {setup} |")
    same = median(same_blocks)
    out(
        f"\nThe library's step (the baseline above, loop body incl. data and augmentation) against the bare step of the same "
        f"losses in the same rounds: {base_rate:.0f} / {same:.0f} img/s = **{base_rate / same:.2f}**; "
        f"per round {', '.join(f'{x / y:.2f}' for x, y in zip(blocks['baseline'], same_blocks))}"
    )
    out(f"[parts 2-3 done at {now() - began:.0f} s; {load()}]")

    # ------------------------------------------------------------------------------------------ the ops (profiler)
    out("\n## 4. torch.profiler, 2 baseline steps: the ops with the most self CPU time")
    s = steppers["baseline"]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            s.step(defaultdict(float))
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=48)
    for line in table.splitlines():
        out(line)
    out("\n## 5. The relation loss on one real batch's features: its cost, the angles from the Gram matrix against explicit differences")
    relation_part(out, steppers["baseline"], args.rounds)
    out(f"[done at {now() - began:.0f} s]")
    machine(out, "end")
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
