"""The unlabeled open-world pool: built-in sets and image folders, converted to the teacher's input."""
from __future__ import annotations

import random
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import BadInput
from .recipe import BuiltinSource, FolderSource, InputSpec, Recipe
from .sources import load_builtin

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}


class UnreadableImage(Exception):
    """A pool file that cannot be decoded; it is skipped and counted, never fatal."""


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and float images are rescaled to 8 bits rather than clipped, as PIL's convert would."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        if img.mode == "F":
            top = max(float(arr.max()), 1e-12) if arr.max() > 1 else 1.0
        return Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img


def decode_image(path: Path, spec: InputSpec) -> np.ndarray:
    """Any image file as uint8 (C, size, size): orientation fixed, shorter side resized, centre-cropped."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                img = ImageOps.exif_transpose(img)
                img = _to_8bit(img)
                img = img.convert("L" if spec.channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
        raise UnreadableImage(type(exc).__name__) from None
    img = ImageOps.fit(img, (spec.size, spec.size), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1).copy()


def convert_array(images: np.ndarray, spec: InputSpec, batch: int = 4096) -> np.ndarray:
    """(N,H,W) or (N,H,W,3) uint8 to (N,C,size,size) uint8: channel conversion, then an antialiased resize."""
    out = np.empty((len(images), spec.channels, spec.size, spec.size), dtype=np.uint8)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    for start in range(0, len(images), batch):
        x = torch.from_numpy(np.array(images[start:start + batch], dtype=np.float32))
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
        if spec.channels == 1 and x.shape[1] == 3:
            x = (x * luma).sum(1, keepdim=True)
        elif spec.channels == 3 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        h, w = x.shape[-2:]
        if (h, w) != (spec.size, spec.size):
            side = min(h, w)
            top, left = (h - side) // 2, (w - side) // 2
            x = F.interpolate(x[..., top:top + side, left:left + side], size=(spec.size, spec.size),
                              mode="bilinear", antialias=True, align_corners=False)
        out[start:start + len(x)] = x.round().clamp(0, 255).to(torch.uint8).numpy()
    return out


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


@dataclass
class PoolPart:
    name: str
    size: int
    array: np.ndarray | None = None       # decoded in memory (built-in sources)
    paths: list[Path] | None = None       # decoded on access (folders)


@dataclass
class Pool(torch.utils.data.Dataset):
    """Every source of the pool behind one index; items are (index, uint8 CHW tensor or None)."""

    spec: InputSpec
    parts: list[PoolPart]
    skipped: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.offsets = np.cumsum([0] + [p.size for p in self.parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> tuple[PoolPart, int]:
        part = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return self.parts[part], index - int(self.offsets[part])

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        part, local = self.locate(index)
        if part.array is not None:
            return index, torch.from_numpy(part.array[local]), None
        try:
            return index, torch.from_numpy(decode_image(part.paths[local], self.spec)), None
        except UnreadableImage as exc:
            return index, None, f"{part.paths[local]}: {exc}"



def collate_pool(items: list[tuple[int, torch.Tensor | None, str | None]]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Drops unreadable files from the batch and passes their reasons on for counting."""
    good = [(i, x) for i, x, _ in items if x is not None]
    bad = [reason for _, x, reason in items if x is None]
    if not good:
        return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.uint8), bad
    return torch.tensor([i for i, _ in good]), torch.stack([x for _, x in good]), bad


def build_pool(recipe: Recipe) -> Pool:
    spec = recipe.teacher.input
    parts: list[PoolPart] = []
    for i, source in enumerate(recipe.pool):
        if isinstance(source, BuiltinSource):
            data = load_builtin(source.builtin, count=source.count, seed=recipe.seed + i)
            parts.append(PoolPart(source.builtin, len(data.images), array=convert_array(data.images, spec)))
        elif isinstance(source, FolderSource):
            folder = recipe.resolve(source.folder)
            paths = list_images(folder)
            if not paths:
                raise BadInput(f"pool.{i}.folder: no images found under {folder} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
            if source.count is not None and source.count < len(paths):
                paths = sorted(random.Random(recipe.seed + i).sample(paths, source.count))
            parts.append(PoolPart(str(folder), len(paths), paths=paths))
    return Pool(spec, parts)


def standardize(x: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """Float images in [0, 1] to the input the models were trained on."""
    mean = torch.tensor(spec.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def normalize(x: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """uint8 (N,C,H,W) to the float input the models were trained on."""
    return standardize(x.float() / 255.0, spec)
