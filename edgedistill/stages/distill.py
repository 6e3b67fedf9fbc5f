"""Distill: the student learns the teacher's logits, features and batch relations on the selected samples."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel
from safetensors.torch import save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..atomic import atomic_path, atomic_torch_save, atomic_write_json
from ..config.schema import ClassDropSpec, DistillSpec, InputSpec, Recipe, RefineSpec
from ..errors import BadInput
from ..inputs.images import normalize, standardize
from ..models.factory import model_structure
from ..models.features import FeatureTap, describe_feature_layer
from ..results import report
from ..results.rundir import RunDir
from ..scale.compute import Compute
from ..scale.distributed import all_reduce_grads, barrier, broadcast_object, world
from ..scale.throughput import bare_step_rate
from ..version import __version__
from .augment import augment_batch
from .class_drop import class_drop
from .losses import LOSSES, LossInputs
from .refine import refine, refine_target
from .resample import disagreement, training_subset
from .stage import STUDENT_WEIGHTS, Progress, RunContext, Stage, build_student, log
from .validate import predict_torch

BATCHNORM_SAMPLE = 1024  # training images whose statistics a BatchNorm student's running averages are reset to


def recalibrate_batchnorm(
    student: nn.Module, images: np.ndarray, active: np.ndarray, input_spec: InputSpec, compute: Compute, batch: int, seed: int
) -> None:
    """Reset a BatchNorm student's running statistics to those of a fixed sample of training images (torch's
    `update_bn`, as SWA does). Training uses batch statistics, so it is unchanged; but with a small momentum
    (MobileNetV3's 0.01) and weights that move every step, the running averages lag so far behind that the
    eval-mode student can answer one class for every image while it trains well."""
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats for m in student.modules()):
        return
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(active, min(BATCHNORM_SAMPLE, len(active)), replace=False))
    batches = (
        compute.input(normalize(torch.from_numpy(np.asarray(images[sample[i : i + batch]])).to(compute.device), input_spec))
        for i in range(0, len(sample), batch)
    )
    torch.optim.swa_utils.update_bn(batches, student)


class Distiller(nn.Module):
    """Teacher pinned to eval and frozen; `forward` returns the loss parts and the student's logits."""

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        spec: DistillSpec,
        class_drop: ClassDropSpec,
        input_spec: InputSpec,
        teacher_layer: str | None = None,
        student_layer: str | None = None,
    ):
        super().__init__()
        self.teacher = teacher.eval().requires_grad_(False)
        self.student = student
        self.class_drop = class_drop
        self.teacher_tap, self.student_tap = FeatureTap(teacher, teacher_layer), FeatureTap(student, student_layer)
        with torch.no_grad():
            probe = torch.zeros(2, input_spec.channels, input_spec.size, input_spec.size, device=next(student.parameters()).device)
            was_training = student.training
            student.eval()
            self.teacher(probe), self.student(probe)
            student.train(was_training)
        student_dim = self.student_tap.features.flatten(1).shape[1]
        teacher_dim = self.teacher_tap.features.flatten(1).shape[1]
        self.parts = nn.ModuleDict()  # in the recipe's order, which is the order their sum is taken in
        self.weights: dict[str, float] = {}
        for name, entry in spec.loss.items():
            part = LOSSES.get(name, "distill.loss")
            params = part.params(entry, f"distill.loss.{name}")
            if params.weight:
                self.parts[name] = part.build(params, student_dim, teacher_dim)
                self.weights[name] = params.weight

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        self.teacher.eval()
        return self

    def teacher_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, features) in float32."""
        with torch.no_grad():
            logits = self.teacher(x)
            return logits.float(), self.teacher_tap.features.flatten(1).float()

    def forward(
        self,
        x: torch.Tensor,
        teacher_out: tuple[torch.Tensor, torch.Tensor] | None = None,
        student: nn.Module | None = None,
        autocast: Callable[[], AbstractContextManager] = nullcontext,
    ) -> dict[str, torch.Tensor]:
        """`teacher_out`: the teacher's stored outputs for `x` (no augmentation); `student`: the student's
        DDP or compiled wrapper; the losses are computed in float32 outside `autocast`."""
        with autocast():
            teacher_logits, teacher_features = teacher_out if teacher_out is not None else self.teacher_outputs(x)
            student_logits = (student if student is not None else self.student)(x)
        student_logits, student_features = student_logits.float(), self.student_tap.features.float()
        soft: dict[float, torch.Tensor] = {}

        def soft_labels(temperature: float) -> torch.Tensor:
            if temperature not in soft:
                soft[temperature] = class_drop(F.softmax(teacher_logits / temperature, dim=1), self.class_drop)
            return soft[temperature]

        inputs = LossInputs(student_logits, teacher_logits, student_features, teacher_features, soft_labels)
        parts = {name: self.weights[name] * part.compute(inputs) for name, part in self.parts.items()}
        parts["loss"] = sum(parts.values())
        parts["student_logits"] = student_logits
        parts["teacher_logits"] = teacher_logits
        return parts


GRAD_CLIP = 5.0  # out-of-domain batches can carry extreme teacher features; clipping keeps one from derailing training


@dataclass
class DistillResult:
    student: nn.Module
    history: list[dict] = field(default_factory=list)
    start_epoch: int = 0  # > 0 when resumed from a checkpoint
    images_per_s: float | None = None  # training loop only (data, augmentation, step), all ranks together
    kept_epoch: int | None = None  # the epoch whose weights the student holds


class EpochOrder(torch.utils.data.Sampler):
    """Each epoch's order of positions into the active training set, of which a rank takes every `world`-th: a
    seeded shuffle (the same order torch's DistributedSampler gives), or, with class `weights`, a seeded draw with
    replacement that evens out the classes. Every rank computes the same global order."""

    def __init__(self, size: int, rank: int, world: int, seed: int):
        self.size, self.rank, self.world, self.seed, self.epoch = size, rank, world, seed, 0
        self.weights: torch.Tensor | None = None

    def __len__(self) -> int:
        return math.ceil(self.size / self.world)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.weights is None:
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = torch.multinomial(self.weights, self.size, replacement=True, generator=generator).tolist()
        order += order[: len(self) * self.world - len(order)]
        return iter(order[self.rank :: self.world])


def balancing_weights(classes: np.ndarray, balance: float) -> torch.Tensor | None:
    """Per image: (images of its class)^-balance, for EpochOrder; None when balance is 0."""
    if not balance:
        return None
    counts = np.bincount(classes)
    return torch.from_numpy(counts[classes].astype(np.float64) ** -balance)


class SelectedBatches(torch.utils.data.Dataset):
    """Indexed by a whole batch of positions (a BatchSampler's list) into the `active` training set: one fancy-index
    read per batch, from RAM or a memory map. Student-in-the-loop sampling swaps `active` between epochs."""

    def __init__(self, images: np.ndarray, teacher_outputs: np.ndarray | None, active: np.ndarray):
        self.images, self.teacher_outputs, self.active = images, teacher_outputs, active

    def __len__(self) -> int:
        return len(self.active)

    def __getitem__(self, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        order = np.sort(self.active[np.asarray(positions)])  # sorted reads are sequential on a memory map; a batch has no order
        images = torch.from_numpy(np.ascontiguousarray(self.images[order]))
        stored = None if self.teacher_outputs is None else torch.from_numpy(np.ascontiguousarray(self.teacher_outputs[order]))
        return images, stored


def logits_of(model: nn.Module, images: np.ndarray, input_spec: InputSpec, compute: Compute, batch: int = 1024) -> np.ndarray:
    with torch.no_grad(), compute.autocast():
        return np.concatenate(
            [
                model(compute.input(normalize(torch.from_numpy(np.asarray(images[i : i + batch])), input_spec))).float().cpu().numpy()
                for i in range(0, len(images), batch)
            ]
        )


def class_weights(teacher: nn.Module, images: np.ndarray, input_spec: InputSpec, compute: Compute) -> torch.Tensor:
    """Sampling weights of the classes, inversely proportional to how many training images the teacher puts in each."""
    top = logits_of(teacher, images, input_spec, compute).argmax(1)
    counts = np.bincount(top, minlength=int(top.max()) + 1).astype(np.float64) + 1.0
    return torch.from_numpy(1.0 / counts / (1.0 / counts).sum())


def refine_once(
    teacher: nn.Module, images: np.ndarray, input_spec: InputSpec, spec: RefineSpec, seed: int, compute: Compute, batch: int = 512
) -> np.ndarray:
    """Every training image refined once, as uint8 images to train on beside the originals."""
    generator = torch.Generator().manual_seed(seed + 104729)
    out = np.empty((len(images), *images.shape[1:]), dtype=np.uint8)
    for i in range(0, len(images), batch):
        x = torch.from_numpy(np.asarray(images[i : i + batch])).to(compute.device).float() / 255.0
        out[i : i + len(x)] = (refine(teacher, x, input_spec, spec, generator) * 255).round().to(torch.uint8).cpu().numpy()
    return out


def store_teacher_outputs(
    distiller: Distiller, images: np.ndarray, input_spec: InputSpec, path: Path, compute: Compute, batch: int = 512
) -> None:
    """The teacher's logits and features for every selected image, as one float32 (N, classes + features) array
    memory-mapped from `path`: without augmentation they never change, so training skips the teacher."""
    if not path.exists():
        logits, features = distiller.teacher_outputs(compute.input(normalize(torch.from_numpy(images[:2]).to(compute.device), input_spec)))
        width = logits.shape[1] + features.shape[1]
        with atomic_path(path) as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(images), width))
            for start in range(0, len(images), batch):
                x = compute.input(normalize(torch.from_numpy(images[start : start + batch]).to(compute.device), input_spec))
                with compute.autocast():
                    logits, features = distiller.teacher_outputs(x)
                out[start : start + len(x)] = torch.cat([logits, features], 1).cpu().numpy()
            out.flush()
            del out


def distill(
    teacher: nn.Module,
    student: nn.Module,
    images: np.ndarray,
    spec: DistillSpec,
    class_drop: ClassDropSpec,
    input_spec: InputSpec,
    seed: int,
    checkpoint: Path | None = None,
    evaluate: Callable[[nn.Module], dict] | None = None,
    monitor: Callable[[nn.Module], float] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    on_step: Callable[[], None] | None = None,
    compute: Compute | None = None,
    teacher_cache: Path | None = None,
    teacher_probs: np.ndarray | None = None,
    per_class: int | None = None,
) -> DistillResult:
    """Trains `student` in place; with `checkpoint`, resumes from the last finished epoch.

    `monitor` scores the student after every epoch without labels (the pipeline's: teacher agreement on the
    selection's held-out images); with `spec.keep == "best"` the best-scoring epoch's weights are returned (ties go
    to the later epoch). `evaluate` only adds figures to the history: it never chooses anything.

    With `per_class` and the teacher's probabilities on `images` (a selection with a reservoir), each epoch trains on
    at most `per_class` images per teacher class: the most confident, or, with `spec.resample`, drawn anew every few
    epochs by the student's disagreement with the teacher. With `spec.refine`, images are moved toward teacher
    classes before the teacher labels them (every batch), or once, before training, doubling the training set.

    Under torchrun, each rank trains on its DistributedSampler share of every global batch of `spec.batch_size`
    (the same optimization as one process; relation losses see each rank's part of the batch), only the student
    is wrapped in DDP, and rank 0 evaluates and writes the checkpoint. Without augmentation and with
    `teacher_cache`, the teacher's outputs are computed once and memory-mapped.
    """
    w = world()
    compute = compute or Compute(w.device, None, False, False)
    if spec.batch_size % w.size:
        raise BadInput(f"distill.batch_size {spec.batch_size} does not split evenly over {w.size} ranks; use a multiple of {w.size}")
    local_batch = spec.batch_size // w.size
    torch.manual_seed(seed)
    compute.prepare(teacher)
    compute.prepare(student)
    distiller = Distiller(teacher, student, spec, class_drop, input_spec).to(compute.device)
    refining, prepared = spec.refine, time.perf_counter()
    if refining is not None and refining.when == "once":
        images = np.concatenate([images, refine_once(distiller.teacher, images, input_spec, refining, seed, compute)])
        teacher_probs, refining = None, None  # the refined images have no stored probabilities: train on all
    needs_weights = refining is not None and refine_target(refining).needs_class_weights
    rare = class_weights(distiller.teacher, images, input_spec, compute) if needs_weights else None
    balanced = per_class is not None and teacher_probs is not None
    active = training_subset(teacher_probs, per_class) if balanced else np.arange(len(images))
    params = [p for p in distiller.parameters() if p.requires_grad]
    loss_params = list(distiller.parts.parameters())  # the feature adapter: trained beside the student, outside DDP
    optimizer = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    steps_per_epoch = max(1, len(active) // spec.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=spec.lr, total_steps=spec.epochs * steps_per_epoch, pct_start=0.15, anneal_strategy="cos"
    )
    scaler = torch.amp.GradScaler(compute.device.type, enabled=compute.dtype is torch.float16)
    history: list[dict] = []
    start_epoch = 0
    best: dict = {"score": -math.inf, "epoch": 0, "student": None}
    state = None
    if checkpoint is not None and w.main and checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = broadcast_object(state)
    if state is not None:
        student.load_state_dict(state["student"])
        distiller.parts.load_state_dict(state["losses"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, start_epoch, best, active = state["history"], state["epoch"], state["best"], state["active"].numpy()
    stored = None
    if spec.augment is None and spec.refine is None and teacher_cache is not None:
        if w.main:
            store_teacher_outputs(distiller, images, input_spec, teacher_cache, compute)
        barrier()
        stored = np.load(teacher_cache, mmap_mode="c")  # copy-on-write: writable for torch.from_numpy, never written
    logit_width = None if stored is None else stored.shape[1] - distiller.teacher_tap.features.flatten(1).shape[1]
    step_student: nn.Module = student
    if w.distributed:
        step_student = DistributedDataParallel(student, device_ids=[compute.device] if compute.device.type == "cuda" else None)
    if compute.compile:
        step_student = torch.compile(step_student)
    sampler = EpochOrder(len(active), w.rank, w.size, seed)
    image_classes = None  # the teacher's class of each training image, for balancing
    if spec.balance:
        image_classes = (
            teacher_probs.argmax(1) if teacher_probs is not None else logits_of(distiller.teacher, images, input_spec, compute).argmax(1)
        )
        sampler.weights = balancing_weights(image_classes[active], spec.balance)
    dataset = SelectedBatches(images, stored, active)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        pin_memory=compute.pin_memory,
        sampler=torch.utils.data.BatchSampler(sampler, local_batch, drop_last=True),
    )
    train_seconds, trained = (time.perf_counter() - prepared if start_epoch == 0 else 0.0), 0  # refining once counts as training
    seconds_before = history[-1].get("train_seconds", 0.0) if history else 0.0  # a resumed run's earlier epochs
    for epoch in range(start_epoch, spec.epochs):
        tick = time.perf_counter()
        sampler.epoch = epoch
        generator = torch.Generator().manual_seed(seed * 1000 + epoch + 7919 * w.rank)
        if balanced and spec.resample is not None and epoch and epoch % spec.resample.every == 0:
            student.eval()
            scores = disagreement(teacher_probs, logits_of(student, images, input_spec, compute), spec.resample.by)
            dataset.active = training_subset(teacher_probs, per_class, spec.resample, scores)
            if image_classes is not None:
                sampler.weights = balancing_weights(image_classes[dataset.active], spec.balance)
        distiller.train()
        sums: dict[str, float] = {}
        for step, (batch, teacher_out) in enumerate(loader):
            if step == steps_per_epoch:
                break
            batch = batch.to(compute.device, non_blocking=True).float() / 255.0
            if spec.augment is not None:
                batch = augment_batch(batch, spec.augment, generator)
            if refining is not None:
                batch = refine(distiller.teacher, batch, input_spec, refining, generator, student=student, class_weights=rare)
            if teacher_out is not None:
                teacher_out = teacher_out.to(compute.device, non_blocking=True)
                teacher_out = (teacher_out[:, :logit_width], teacher_out[:, logit_width:])
            parts = distiller(compute.input(standardize(batch, input_spec)), teacher_out, step_student, compute.autocast)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(parts["loss"]).backward()
            all_reduce_grads(loss_params)
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            for k, v in parts.items():
                if k not in ("student_logits", "teacher_logits"):
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
            if on_step and w.main:
                on_step()
        if compute.device.type == "cuda":
            torch.cuda.synchronize()
        train_seconds += time.perf_counter() - tick
        trained += steps_per_epoch * spec.batch_size
        if w.main:  # under DDP, rank 0's buffers reach the other ranks at the next forward
            recalibrate_batchnorm(student, images, active, input_spec, compute, local_batch, seed)
        record = {
            "epoch": epoch + 1,
            **{k: v / steps_per_epoch for k, v in sums.items()},
            "lr": scheduler.get_last_lr()[0],
            "train_seconds": round(seconds_before + train_seconds, 3),
        }
        if w.main and (monitor is not None or evaluate is not None):
            student.eval()
            if monitor is not None:
                record["holdout_agreement"] = score = monitor(student)
                if score >= best["score"]:
                    best = {
                        "score": score,
                        "epoch": epoch + 1,
                        "student": {k: v.detach().cpu().clone() for k, v in student.state_dict().items()},
                    }
            if evaluate is not None:
                record.update(evaluate(student))
        history.append(record)
        if checkpoint is not None and w.main:
            atomic_torch_save(
                {
                    "student": student.state_dict(),
                    "losses": distiller.parts.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "history": history,
                    "epoch": epoch + 1,
                    "best": best,
                    "active": torch.from_numpy(np.asarray(dataset.active)),
                },
                checkpoint,
            )
        barrier()
        if on_epoch and w.main:
            on_epoch(record)
    distiller.teacher_tap.remove()
    distiller.student_tap.remove()
    kept = spec.epochs
    if spec.keep == "best" and best["student"] is not None:
        student.load_state_dict(best["student"])
        kept = best["epoch"]
    student.eval()
    return DistillResult(student, history, start_epoch, trained / train_seconds if train_seconds else None, kept)


def save_student(student: nn.Module, recipe: Recipe, run: RunDir, feature_layers: dict[str, str] | None = None) -> None:
    """student.safetensors and student.json: what rebuilding and reporting the student needs, including the layers the
    feature loss matched (`feature_layers`: teacher's and student's, as describe_feature_layer names them)."""
    with atomic_path(run.artifact(STUDENT_WEIGHTS)) as tmp:
        save_file({k: v.contiguous() for k, v in student.state_dict().items()}, str(tmp))
    atomic_write_json(
        run.artifact("student.json"),
        {
            "arch": recipe.student.arch,
            "num_classes": recipe.teacher.num_classes,
            "class_names": recipe.teacher.class_names,
            "input": recipe.teacher.input.model_dump(),
            "teacher": recipe.teacher.arch,
            "feature_layers": feature_layers,
            "edgedistill_version": __version__,
        },
    )


class TrainedStudent(BaseModel):
    """What the distill stage leaves besides the weights: the per-epoch history, the layers the feature loss matched,
    the epoch kept, and the training throughput against the bare step."""

    history: list[dict] = []
    feature_layers: dict[str, str | None] = {}
    kept_epoch: int | None = None
    seconds: float | None = None
    throughput: report.StageThroughput | None = None


class DistillStage(Stage):
    """Trains the student (the recipe's, or the one the plan chose) on the selection's training split. It evaluates on
    `eval` after each epoch for the history but never chooses by it: `eval` is not among its inputs."""

    name = "distill"
    sections = ("seed", "teacher", "class_drop", "student", "distill")
    after = ("select", "plan")
    files = ("teacher",)
    writes = (STUDENT_WEIGHTS, "student.json", "history.json")
    ranked = True

    def extra_inputs(self, ctx: RunContext) -> dict:
        """The chosen student (not the candidates), and the network its name builds: an upgrade that changes what a
        name builds (the zoo's MobileNetV3 stems below 64 px, 2026-12-08) distills again."""
        plan = ctx.result("plan")
        if plan is None and ctx.applies("plan"):
            return {}  # not chosen yet: the stage cannot be up to date anyway
        parts = {"student": plan.student.model_dump(mode="json")} if plan is not None else {}
        return parts | {"student network": model_structure(build_student(ctx.student_recipe))}

    def run(self, ctx: RunContext, progress: Progress) -> TrainedStudent | None:
        r, w = ctx.student_recipe, ctx.world
        train, holdout = ctx.split()
        if len(train) < r.distill.batch_size:
            raise BadInput(
                f"distill.batch_size {r.distill.batch_size} exceeds the {len(train)} selected training samples; lower it or select more"
            )
        eval_set, spec = ctx.eval_set(), r.teacher.input
        teacher_pred = predict_torch(ctx.teacher, eval_set.images, spec).argmax(1) if w.main else None
        holdout_pred = predict_torch(ctx.teacher, holdout, spec).argmax(1) if w.main and len(holdout) else None

        def evaluate(student: nn.Module) -> dict:
            pred = predict_torch(student, eval_set.images, spec).argmax(1)
            out = {"agreement": float((pred == teacher_pred).mean())}
            if eval_set.labels is not None:
                out["accuracy"] = float((pred == eval_set.labels).mean())
            return out

        def monitor(student: nn.Module) -> float:
            """Label-free: how often the student agrees with the teacher on selected images it never trained on."""
            return float((predict_torch(student, holdout, spec).argmax(1) == holdout_pred).mean())

        steps = max(1, len(train) // r.distill.batch_size)
        task = progress.add_task("distill", total=r.distill.epochs * steps, info=f"{w.size} rank(s)")
        ckpt, cache = self._scratch(ctx)
        if ckpt.exists() and w.main:
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
            progress.update(task, completed=state["epoch"] * steps)
            ctx.console.print(f"distill: resumed at epoch {state['epoch']} from the checkpoint of an interrupted run")

        def on_epoch(rec: dict) -> None:
            shown = f"epoch {rec['epoch']} loss {rec['loss']:.3f} agree {rec['agreement']:.3f}"
            if "accuracy" in rec:
                shown += f" acc {rec['accuracy']:.3f}"
            progress.update(task, info=shown)
            log.info("distill: %s", json.dumps(rec))

        started = time.perf_counter()
        torch.manual_seed(r.seed)  # the student's initial weights must not depend on what ran before in this process
        student = build_student(r)
        layers = {"teacher": describe_feature_layer(ctx.teacher), "student": describe_feature_layer(student)}
        log.info("distill: feature loss matches teacher %s with student %s", layers["teacher"], layers["student"])
        reservoir = {"teacher_probs": ctx.selection.probs[: len(train)], "per_class": r.select.per_class} if r.select.reservoir > 1 else {}
        result = distill(
            ctx.teacher,
            student,
            train,
            r.distill,
            r.class_drop,
            spec,
            r.seed,
            checkpoint=ckpt,
            evaluate=evaluate,
            monitor=monitor if len(holdout) else None,
            on_epoch=on_epoch,
            on_step=lambda: progress.advance(task),
            compute=ctx.compute,
            teacher_cache=cache,
            **reservoir,
        )
        seconds = time.perf_counter() - started
        trained = None
        if w.main:
            throughput = self._throughput(ctx, result, train) if result.images_per_s else None
            save_student(result.student.cpu(), r, ctx.run, layers)
            atomic_write_json(ctx.run.artifact("history.json"), result.history)
            info = {"seconds": seconds, "throughput": throughput, "kept_epoch": result.kept_epoch}
            ctx.run.mark_done("distill", ctx.inputs("distill"), list(self.writes), info)
            self.remove_scratch(ctx)
            trained = TrainedStudent(history=result.history, feature_layers=layers, **info)
        barrier()
        return trained

    def read_result(self, ctx: RunContext) -> TrainedStudent:
        run = ctx.run
        info = (run.read_record("distill") or {}).get("info", {})
        layers = json.loads((run / "student.json").read_text()).get("feature_layers") or {}
        history = json.loads((run / "history.json").read_text())
        return TrainedStudent(history=history, feature_layers=layers, **{k: info.get(k) for k in ("seconds", "throughput", "kept_epoch")})

    def _scratch(self, ctx: RunContext) -> tuple[Path, Path]:
        """The epoch checkpoint and the stored teacher outputs, named by the distill stage's inputs: a resumed run
        never picks up what a run with another selection or recipe left behind. Earlier runs' leftovers are removed."""
        key = ctx.inputs("distill").key[:12]
        names = (f"distill-{key}.ckpt", f"teacher_outputs-{key}.npy")
        if ctx.world.main:
            self.remove_scratch(ctx, names)
            ctx.run.artifact(*names)
        return ctx.run / names[0], ctx.run / names[1]

    @staticmethod
    def remove_scratch(ctx: RunContext, keep: tuple[str, ...] = ()) -> None:
        """Scratch files of earlier distill runs, as this run directory's manifest lists them (never anyone else's)."""
        run = ctx.run
        run.remove(*[n for n in run.written("distill-*.ckpt") + run.written("teacher_outputs-*.npy") if n not in keep])

    @staticmethod
    def _throughput(ctx: RunContext, result: DistillResult, train: np.ndarray) -> dict:
        """Training images/s against the bare distillation step at this rank's batch (teacher skipped when its outputs
        are stored)."""
        r, w = ctx.recipe, ctx.world
        batch = normalize(torch.from_numpy(np.array(train[: r.distill.batch_size // w.size])), r.teacher.input)
        with_teacher = r.distill.augment is not None
        bare = bare_step_rate(ctx.teacher, result.student, batch, ctx.compute, lr=r.distill.lr, with_teacher=with_teacher) * w.size
        return {
            "images_per_s": result.images_per_s,
            "bare_step_images_per_s": bare,
            "ratio": result.images_per_s / bare,
            "batch": r.distill.batch_size,
            "ranks": w.size,
            "teacher_outputs_stored": r.distill.augment is None,
        }
