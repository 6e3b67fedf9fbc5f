"""The selection as a run stores it: pool keys, teacher probabilities and the holdout size in selected.npz, the
images beside it as one .npy that training memory-maps."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_npy, atomic_write_npz


@dataclass
class Selection:
    images: np.ndarray  # uint8 (N, C, H, W), at the teacher's input size
    pool_index: np.ndarray  # int64 (N,), pool key: source part << 40 | position (edgedistill.inputs.pool)
    probs: np.ndarray  # float32 (N, K), the teacher's softmax
    stats: dict = field(default_factory=dict)

    def split(self) -> tuple[np.ndarray, np.ndarray]:
        """(train, holdout) images: the select stage puts a seeded holdout last (stages.select.holdout_last), so
        training reads a slice, never a copy, of the memory-mapped images."""
        cut = len(self.images) - self.stats.get("holdout", 0)
        return self.images[:cut], self.images[cut:]


def images_path(npz: Path) -> Path:
    return npz.with_name(npz.stem + "_images.npy")


def save_selection(selection: Selection, path: Path) -> None:
    """Keys, teacher probabilities and the holdout size in `path` (.npz); the images beside it as one .npy
    that training memory-maps."""
    path = Path(path)
    atomic_write_npy(images_path(path), selection.images)
    atomic_write_npz(path, pool_index=selection.pool_index, probs=selection.probs, holdout=np.int64(selection.stats.get("holdout", 0)))


def load_selection(path: Path) -> Selection:
    path = Path(path)
    with np.load(path) as data:
        index, probs, holdout = data["pool_index"], data["probs"], int(data["holdout"])
    images = np.load(images_path(path), mmap_mode="c")  # copy-on-write: writable for torch.from_numpy, never written
    return Selection(images, index, probs, {"holdout": holdout})
