"""Select: one no-grad teacher pass over the pool keeps a class-balanced subset close to the teacher's domain."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_write_json
from ..config.schema import SelectSpec
from ..errors import BadInput
from ..inputs.images import normalize
from ..inputs.pool import Pool, build_pool, default_workers, part_of
from ..models.features import FeatureTap
from ..registry import Registry
from ..results import report
from ..results.report import teacher_class_share, teacher_collapse_warning
from ..results.selection import Selection, save_selection
from ..scale.compute import Compute, usable_cpus
from ..scale.distributed import all_gather_objects
from ..scale.throughput import bare_forward_rate
from .stage import Progress, RunContext, Stage, log


def _random_keys(indices: np.ndarray, seed: int) -> np.ndarray:
    """A per-index random score (splitmix64): the same item gets the same key whatever the batch order."""
    with np.errstate(over="ignore"):
        z = indices.astype(np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


class StreamingTopK:
    """Keeps the k best-scoring items of each group seen so far: memory is bounded by the selection, not the pool.

    Ties go to the lower index, so the result does not depend on the order items arrive in. New items wait in a
    buffer that is merged once it holds k of them: each item is copied a bounded number of times.
    With `dedup_threshold`, an item whose `features` (L2-normalized) have a cosine similarity above the
    threshold with a better-scoring kept item does not take a place. Greedy: an item dropped as a
    near-duplicate stays dropped even if the item it duplicated is later displaced.
    """

    def __init__(self, groups: int, k: int, dedup_threshold: float | None = None):
        self.k, self.dedup_threshold = k, dedup_threshold
        self.kept: list[dict[str, np.ndarray] | None] = [None] * groups
        self.pending: list[list[dict[str, np.ndarray]]] = [[] for _ in range(groups)]
        self.pending_count = [0] * groups

    def add(self, group: np.ndarray, score: np.ndarray, index: np.ndarray, **payload: np.ndarray) -> None:
        for g in np.unique(group):
            m = group == g
            old = self.kept[g]
            if old is not None and len(old["index"]) == self.k and self.dedup_threshold is None:
                last_score, last_index = old["score"][-1], old["index"][-1]  # the k-th kept: only what beats it can enter
                m &= (score > last_score) | ((score == last_score) & (index < last_index))
                if not m.any():
                    continue
            self.pending[g].append({"score": score[m], "index": index[m], **{k: v[m] for k, v in payload.items()}})
            self.pending_count[g] += int(m.sum())
            if self.pending_count[g] >= self.k:
                self._merge(g)

    def _merge(self, g: int) -> None:
        chunks = ([self.kept[g]] if self.kept[g] is not None else []) + self.pending[g]
        self.pending[g], self.pending_count[g] = [], 0
        if not chunks:
            return
        both = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
        order = np.lexsort((both["index"], -both["score"]))
        if self.dedup_threshold is not None:
            order = self._distinct(both["features"][order], order)
        self.kept[g] = {k: v[order[: self.k]] for k, v in both.items()}

    def _distinct(self, features: np.ndarray, order: np.ndarray) -> np.ndarray:
        chosen: list[int] = []
        for i in range(len(order)):
            if len(chosen) == self.k:
                break
            if not chosen or (features[chosen] @ features[i]).max() <= self.dedup_threshold:
                chosen.append(i)
        return order[chosen]

    def groups(self) -> list[dict[str, np.ndarray] | None]:
        for g in range(len(self.kept)):
            self._merge(g)
        return self.kept


class Strategy:
    """How pool images compete for the selection: the highest scores win, per teacher class or overall."""

    per_class = False  # a quota of select.per_class for each predicted class; else one quota of select.total

    def score(self, probs: np.ndarray, index: np.ndarray, seed: int) -> np.ndarray:
        raise NotImplementedError


STRATEGIES: Registry[type[Strategy]] = Registry("select.strategy")


@STRATEGIES.register("balanced")
class Balanced(Strategy):
    """The method: the per_class most confident images of each predicted class."""

    per_class = True

    def score(self, probs: np.ndarray, index: np.ndarray, seed: int) -> np.ndarray:
        return probs.max(1)


@STRATEGIES.register("dfnd")
class LowestCrossEntropy(Strategy):
    """DFND-style: the lowest teacher cross-entropy against its own argmax, overall."""

    def score(self, probs: np.ndarray, index: np.ndarray, seed: int) -> np.ndarray:
        return np.log(probs.max(1).clip(1e-12))


@STRATEGIES.register("entropy")
class HighestEntropy(Strategy):
    """MosaicKD's rule: the highest-entropy predictions, overall."""

    def score(self, probs: np.ndarray, index: np.ndarray, seed: int) -> np.ndarray:
        return -(probs * np.log(probs.clip(1e-12))).sum(1)


@STRATEGIES.register("random")
class Random(Strategy):
    """The baseline: a seeded random subset, the same whatever the order images arrive in."""

    def score(self, probs: np.ndarray, index: np.ndarray, seed: int) -> np.ndarray:
        return _random_keys(index, seed)


def score_samples(probs: np.ndarray, strategy: Strategy, index: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(group, score) per sample: the selection keeps the highest scores of each group."""
    group = probs.argmax(1) if strategy.per_class else np.zeros(len(probs), dtype=np.int64)
    return group, strategy.score(probs, index, seed)


def _one_line_errors(batches):
    """A DataLoader worker's BadInput arrives wrapped in its traceback: pass it on as the one line it was."""
    try:
        yield from batches
    except BadInput as exc:
        raise BadInput(str(exc).strip().splitlines()[-1].removeprefix("edgedistill.errors.BadInput: ")) from None


def select_pool(
    teacher: nn.Module,
    pool: Pool,
    spec: SelectSpec,
    num_classes: int,
    seed: int,
    on_batch: Callable[[int], None] | None = None,
    compute: Compute | None = None,
    workers: int = 0,
) -> Selection:
    """One teacher pass over this rank's share of the pool; the ranks' top-k are merged into the selection a
    single process would make (exactly, without dedup; dedup is greedy and order-dependent across ranks)."""
    compute = compute or Compute(torch.device("cpu"), None, False, False)
    teacher = compute.prepare(teacher.eval())
    strategy = STRATEGIES.get(spec.strategy)()
    balanced = strategy.per_class
    quota = spec.per_class * spec.reservoir if balanced else (spec.total or spec.per_class * num_classes)
    groups = num_classes if balanced else 1
    keeper = StreamingTopK(groups, quota, spec.dedup_threshold)
    tap = FeatureTap(teacher) if spec.dedup_threshold is not None else None
    predicted = np.zeros(num_classes, dtype=np.int64)
    skipped: Counter = Counter()
    examples: list[str] = []
    scored_from: Counter = Counter()
    try:
        with torch.inference_mode():
            for keys, images, bad in _one_line_errors(pool.loader(workers, compute.pin_memory)):
                for reason in bad:
                    skipped[reason.rsplit(": ", 1)[-1]] += 1
                    if len(examples) < 5:
                        examples.append(reason)
                if len(keys):
                    with compute.autocast():
                        logits = teacher(compute.input(normalize(images.to(compute.device, non_blocking=True), pool.spec)))
                    probs = torch.softmax(logits.float(), dim=1).cpu().numpy()
                    predicted += np.bincount(probs.argmax(1), minlength=num_classes)
                    idx = keys.numpy()
                    scored_from.update(part_of(idx).tolist())
                    group, score = score_samples(probs, strategy, idx, seed)
                    payload = {"images": images.numpy(), "probs": probs}
                    if tap is not None:
                        payload["features"] = torch.nn.functional.normalize(tap.features.flatten(1).float(), dim=1).cpu().numpy()
                    keeper.add(group, score, idx, **payload)
                if on_batch:
                    on_batch(len(keys) + len(bad))
    finally:
        if tap is not None:
            tap.remove()
    shares = all_gather_objects(
        {"kept": keeper.groups(), "predicted": predicted, "skipped": skipped, "examples": examples, "scored_from": scored_from}
    )
    if len(shares) > 1:
        keeper = StreamingTopK(groups, quota, spec.dedup_threshold)
        for share in shares:
            for kept in share["kept"]:
                if kept is not None:
                    group = kept["probs"].argmax(1) if balanced else np.zeros(len(kept["index"]), dtype=np.int64)
                    keeper.add(group, kept["score"], kept["index"], **{k: v for k, v in kept.items() if k not in ("score", "index")})
        predicted = sum(s["predicted"] for s in shares)
        skipped = sum((s["skipped"] for s in shares), Counter())
        examples = [e for s in shares for e in s["examples"]][:5]
        scored_from = sum((s["scored_from"] for s in shares), Counter())
    kept = [g for g in keeper.groups() if g is not None]
    if not kept:
        raise BadInput(f"the pool gave nothing to select ({sum(skipped.values())} unreadable images); add readable images to the pool")
    merged = {k: np.concatenate([g[k] for g in kept]) for k in kept[0]}
    order = np.argsort(merged["index"], kind="stable")
    per_class = np.bincount(merged["probs"].argmax(1), minlength=num_classes)
    scored = int(predicted.sum())
    stats = {
        "strategy": spec.strategy,
        "pool_size": scored + int(sum(skipped.values())),
        "pool_sources": {pool.parts[p].name: n for p, n in sorted(scored_from.items())},
        "scored": scored,
        "skipped": int(sum(skipped.values())),
        "skipped_reasons": dict(skipped),
        "skipped_examples": examples,
        "pool_predicted_per_class": predicted.tolist(),  # the teacher's top-1 histogram over the whole scored pool
        "teacher_class_share": teacher_class_share({"pool_predicted_per_class": predicted.tolist()}),
        "selected": int(len(order)),
        "selected_per_class": per_class.tolist(),
        "under_covered_classes": [c for c in range(num_classes) if balanced and per_class[c] < spec.per_class],
        "coverage": pool_coverage(merged["probs"], predicted, spec.per_class if balanced else -(-quota // num_classes)),
        "per_class": spec.per_class if balanced else None,
        "reservoir": spec.reservoir if balanced else 1,
        "selected_from_source": dict(Counter(pool.source_name(int(i)) for i in merged["index"])),
        "mean_confidence": float(merged["probs"].max(1).mean()),
    }
    return Selection(merged["images"][order], merged["index"][order].astype(np.int64), merged["probs"][order].astype(np.float32), stats)


WELL_COVERED_CONFIDENCE, POORLY_COVERED_CONFIDENCE = 0.9, 0.6
# A class whose quota is full gets advice only when the teacher gives its own class under this much of the mass on
# average: then most of what its images teach is other classes. Above it a full quota teaches the class (a mean of
# 0.47 on 3,000 images is a useful soft label, not a gap to fill), so saying "poorly covered" there is noise.
ADVISE_BELOW_CONFIDENCE = 0.3
COVERAGE_LINES = 20  # classes listed in the terminal; the rest are in selection.json and report.html


def pool_coverage(probs: np.ndarray, pool_predicted: np.ndarray, quota: int) -> list[dict]:
    """Per class: how well the pool covers it, judged by how much of its quota the selection filled and how sure
    the teacher is of the images that filled it; with advice where it falls short.

    `well`: the quota filled with images the teacher is sure of (mean confidence >= 0.9); `poorly`: under half the
    quota, or a mean confidence under 0.6 (the pool holds little the teacher reads as this class); `thinly` between.
    `advice` only where acting on it would help: a quota not filled, or a mean confidence under ADVISE_BELOW_CONFIDENCE.
    """
    top = probs.argmax(1)
    coverage = []
    for c in range(probs.shape[1]):
        mine = probs[top == c, c]
        confidence = float(mine.mean()) if len(mine) else 0.0
        filled = len(mine) / quota if quota else 1.0
        if filled >= 1 and confidence >= WELL_COVERED_CONFIDENCE:
            level, advice = "well", None
        elif filled < 0.5 or confidence < POORLY_COVERED_CONFIDENCE:
            level = "poorly"
            advice = (
                "add unlabeled images that look like this class to the pool (a `folder:` entry of in-domain photos; "
                "no labels needed) or a larger open-world pool; until then the student learns it from few, doubtful images"
            )
        else:
            level = "thinly"
            advice = "a larger pool or a folder of in-domain images would fill the quota with images the teacher is sure of"
        if filled >= 1 and confidence >= ADVISE_BELOW_CONFIDENCE:
            advice = None
        coverage.append(
            {
                "class": c,
                "level": level,
                "selected": int(len(mine)),
                "quota": int(quota),
                "pool_predicted": int(pool_predicted[c]),
                "mean_confidence": round(confidence, 4),
                "advice": advice,
            }
        )
    return coverage


def coverage_lines(stats: dict, names: list[str], limit: int = COVERAGE_LINES) -> list[str]:
    """What select prints about the pool: a collapsed teacher, then the classes with coverage advice, poorly covered
    first, at most `limit` of them (with 1,000 classes a full list is hundreds of lines nobody reads)."""
    lines = []
    if collapse := teacher_collapse_warning(stats, names):
        lines.append(f"select: warning: {collapse}")
    advised = [c for level in ("poorly", "thinly") for c in stats.get("coverage") or [] if c["level"] == level and c["advice"]]
    shown = 0
    for level in ("poorly", "thinly"):
        short = [c for c in advised[:limit] if c["level"] == level]
        if short:
            listed = ", ".join(f"{names[c['class']]} ({c['selected']}/{c['quota']}, conf {c['mean_confidence']:.2f})" for c in short)
            lines.append(f"select: the pool covers {level}: {listed}; {short[0]['advice']}")
            shown += len(short)
    if len(advised) > shown:
        lines.append(f"select: ... and {len(advised) - shown} more; the full table is in selection.json and report.html")
    return lines


HOLDOUT = 500


def holdout_last(selection: Selection, seed: int) -> Selection:
    """Reorders the selection so that a seeded random holdout (HOLDOUT images, 5% at most), kept from training
    to measure agreement, comes last: training then reads a slice, never a copy, of a memory-mapped selection."""
    n = len(selection.pool_index)
    holdout = min(HOLDOUT, n // 20)
    rest = np.random.default_rng(seed).permutation(n)
    order = np.concatenate([np.sort(rest[holdout:]), np.sort(rest[:holdout])])
    return Selection(
        selection.images[order], selection.pool_index[order], selection.probs[order], {**selection.stats, "holdout": int(holdout)}
    )


class SelectStage(Stage):
    """Scores the pool with the teacher and keeps the selection (selected.npz, its images, selection.json)."""

    name = "select"
    sections = ("seed", "teacher", "pool", "select")
    files = ("teacher", "pool")
    writes = ("selected.npz", "selected_images.npy", "selection.json")
    ranked = True

    def run(self, ctx: RunContext, progress: Progress) -> report.Selection | None:
        r, w = ctx.recipe, ctx.world
        pool = build_pool(r, w.rank, w.size)
        workers = r.compute.workers if r.compute.workers is not None else default_workers(pool, w.local_size, usable_cpus())
        task = progress.add_task("select: scoring pool", total=pool.size, info=f"{len(pool.parts)} sources, {w.size} rank(s)")
        started = time.perf_counter()
        selection = select_pool(
            ctx.teacher,
            pool,
            r.select,
            r.teacher.num_classes,
            r.seed,
            on_batch=lambda n: progress.advance(task, n * w.size),
            compute=ctx.compute,
            workers=workers,
        )
        seconds = time.perf_counter() - started
        selection = holdout_last(selection, r.seed)
        rate = selection.stats["pool_size"] / max(seconds, 1e-9)
        batch = normalize(torch.from_numpy(selection.images[: r.select.batch_size]), r.teacher.input)
        bare = bare_forward_rate(ctx.teacher, batch, ctx.compute) * w.size if w.main else float("nan")
        selection.stats["throughput"] = {
            "seconds": seconds,
            "images_per_s": rate,
            "bare_forward_images_per_s": bare,
            "ratio": rate / bare,
            "batch": r.select.batch_size,
            "ranks": w.size,
            "workers_per_rank": workers,
            "cpu_threads": ctx.cpu_threads,
        }
        ctx.use_selection(selection)
        if not w.main:
            return None
        save_selection(selection, ctx.run.artifact("selected.npz", "selected_images.npy"))
        atomic_write_json(ctx.run.artifact("selection.json"), selection.stats)
        s = selection.stats
        log.info("select: %d of %d pool images kept, %d unreadable", s["selected"], s["pool_size"], s["skipped"])
        if s["skipped"]:
            ctx.console.print(
                f"[yellow]select: skipped {s['skipped']} unreadable files {s['skipped_reasons']}, e.g. {s['skipped_examples'][0]}"
            )
        names = r.teacher.class_names or [str(c) for c in range(r.teacher.num_classes)]
        for line in coverage_lines(s, names):  # a collapsed teacher, then at most 20 classes that need more images
            ctx.console.print(f"[yellow]{line}", highlight=False, soft_wrap=True)
        ctx.run.mark_done("select", ctx.inputs("select"), list(self.writes), {"selected": s["selected"]})
        return report.Selection.model_validate(s)

    def read_result(self, ctx: RunContext) -> report.Selection:
        return report.Selection.model_validate(json.loads((ctx.run / "selection.json").read_text()))
