"""Select: one no-grad teacher pass over the pool keeps a class-balanced subset close to the teacher's domain."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from .errors import BadInput
from .distill import FeatureTap
from .pool import Pool, collate_pool, normalize
from .recipe import SelectSpec


@dataclass
class Selection:
    images: np.ndarray        # uint8 (N, C, H, W), at the teacher's input size
    pool_index: np.ndarray    # int64 (N,), index into the pool
    probs: np.ndarray         # float32 (N, K), the teacher's softmax
    stats: dict = field(default_factory=dict)


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

    With `dedup_threshold`, an item whose `features` (L2-normalized) have a cosine similarity above the
    threshold with a better-scoring kept item does not take a place. Greedy and streaming: an item dropped
    as a near-duplicate stays dropped even if the item it duplicated is later displaced.
    """

    def __init__(self, groups: int, k: int, dedup_threshold: float | None = None):
        self.k, self.dedup_threshold = k, dedup_threshold
        self.kept: list[dict[str, np.ndarray] | None] = [None] * groups

    def add(self, group: np.ndarray, score: np.ndarray, index: np.ndarray, **payload: np.ndarray) -> None:
        for g in np.unique(group):
            m = group == g
            new = {"score": score[m], "index": index[m], **{k: v[m] for k, v in payload.items()}}
            old = self.kept[g]
            both = new if old is None else {k: np.concatenate([old[k], new[k]]) for k in new}
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
        return self.kept


def score_samples(probs: np.ndarray, strategy: str, index: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(group, score) per sample: the selection keeps the highest scores of each group."""
    top = probs.argmax(1)
    if strategy == "balanced":
        return top, probs.max(1)
    group = np.zeros_like(top)
    if strategy == "dfnd":
        return group, np.log(probs.max(1).clip(1e-12))  # minus the cross-entropy against its own argmax
    if strategy == "entropy":
        return group, -(probs * np.log(probs.clip(1e-12))).sum(1)
    return group, _random_keys(index, seed)


def select_pool(
    teacher: nn.Module,
    pool: Pool,
    spec: SelectSpec,
    num_classes: int,
    seed: int,
    on_batch: Callable[[int], None] | None = None,
) -> Selection:
    teacher.eval()
    loader = torch.utils.data.DataLoader(pool, batch_size=spec.batch_size, shuffle=False, collate_fn=collate_pool)
    balanced = spec.strategy == "balanced"
    quota = spec.per_class if balanced else (spec.total or spec.per_class * num_classes)
    keeper = StreamingTopK(num_classes if balanced else 1, quota, spec.dedup_threshold)
    tap = FeatureTap(teacher) if spec.dedup_threshold is not None else None
    predicted = np.zeros(num_classes, dtype=np.int64)
    skipped: Counter = Counter()
    examples: list[str] = []
    try:
        with torch.inference_mode():
            for index, images, bad in loader:
                for reason in bad:
                    skipped[reason.rsplit(": ", 1)[-1]] += 1
                    if len(examples) < 5:
                        examples.append(reason)
                if len(index):
                    probs = torch.softmax(teacher(normalize(images, pool.spec)).float(), dim=1).numpy()
                    predicted += np.bincount(probs.argmax(1), minlength=num_classes)
                    idx = index.numpy()
                    group, score = score_samples(probs, spec.strategy, idx, seed)
                    payload = {"images": images.numpy(), "probs": probs}
                    if tap is not None:
                        payload["features"] = torch.nn.functional.normalize(tap.features.flatten(1).float(), dim=1).numpy()
                    keeper.add(group, score, idx, **payload)
                if on_batch:
                    on_batch(len(index) + len(bad))
    finally:
        if tap is not None:
            tap.remove()
    kept = [g for g in keeper.groups() if g is not None]
    if not kept:
        raise BadInput(f"the pool of {len(pool)} images gave nothing to select ({sum(skipped.values())} unreadable); "
                       "add readable images to the pool")
    merged = {k: np.concatenate([g[k] for g in kept]) for k in kept[0]}
    order = np.argsort(merged["index"], kind="stable")
    per_class = np.bincount(merged["probs"].argmax(1), minlength=num_classes)
    stats = {
        "strategy": spec.strategy,
        "pool_size": len(pool),
        "pool_sources": {p.name: p.size for p in pool.parts},
        "scored": int(predicted.sum()),
        "skipped": int(sum(skipped.values())),
        "skipped_reasons": dict(skipped),
        "skipped_examples": examples,
        "pool_predicted_per_class": predicted.tolist(),
        "selected": int(len(order)),
        "selected_per_class": per_class.tolist(),
        "under_covered_classes": [c for c in range(num_classes) if balanced and per_class[c] < spec.per_class],
        "selected_from_source": dict(Counter(pool.locate(int(i))[0].name for i in merged["index"])),
        "mean_confidence": float(merged["probs"].max(1).mean()),
    }
    return Selection(merged["images"][order], merged["index"][order].astype(np.int64),
                     merged["probs"][order].astype(np.float32), stats)


def save_selection(selection: Selection, path) -> None:
    from .rundir import atomic_write_npz

    atomic_write_npz(path, images=selection.images, pool_index=selection.pool_index, probs=selection.probs)


def load_selection(path) -> Selection:
    with np.load(path) as data:
        return Selection(data["images"], data["pool_index"], data["probs"])
