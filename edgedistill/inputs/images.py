"""The one image decoder, suffix set and folder walker: the pool, labeled folders and INT8 calibration all read
files through here, so every stage sees a file as the same array."""

from __future__ import annotations

import errno
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".jfif", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm"})


class ImageShape(Protocol):
    """What decoding needs of an input spec (edgedistill.config.schema.InputSpec has it)."""

    channels: int
    size: int


class UnreadableImage(Exception):
    """A file that cannot be decoded; it is skipped and counted, never fatal."""


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


def decode_image(path: Path | BinaryIO, spec: ImageShape) -> np.ndarray:
    """Any image file (a path or an open binary file) as uint8 (C, size, size): orientation fixed, shorter side resized, centre-cropped."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                img = ImageOps.exif_transpose(img)
                img = _to_8bit(img)
                img = img.convert("L" if spec.channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UnreadableImage(type(exc).__name__) from None
    img = ImageOps.fit(img, (spec.size, spec.size), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1).copy()


def convert_array(images: np.ndarray, spec: ImageShape, batch: int = 4096) -> np.ndarray:
    """(N,H,W) or (N,H,W,3) uint8 to (N,C,size,size) uint8: channel conversion, then an antialiased resize."""
    out = np.empty((len(images), spec.channels, spec.size, spec.size), dtype=np.uint8)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    for start in range(0, len(images), batch):
        x = torch.from_numpy(np.array(images[start : start + batch], dtype=np.float32))
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
        if spec.channels == 1 and x.shape[1] == 3:
            x = (x * luma).sum(1, keepdim=True)
        elif spec.channels == 3 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        h, w = x.shape[-2:]
        if (h, w) != (spec.size, spec.size):
            side = min(h, w)
            top, left = (h - side) // 2, (w - side) // 2
            x = F.interpolate(
                x[..., top : top + side, left : left + side],
                size=(spec.size, spec.size),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
        out[start : start + len(x)] = x.round().clamp(0, 255).to(torch.uint8).numpy()
    return out


@dataclass(frozen=True)
class Skipped:
    """An entry of a folder that is not an image to read: a symlink loop, a dangling link, an unreadable folder."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def iter_images(folder: Path, entries: bool = False) -> Iterator[Path | Skipped]:
    """Image files under `folder`, depth-first in name order, listed one directory at a time (a tree of millions of
    files is never held as one list). Symlinked folders and files are followed; a folder reached a second time
    (two links to one folder, or a loop back to `folder` or a folder that holds it) is not listed again but yielded
    as Skipped, as are dangling links and folders that cannot be read. `entries`: yield the os.DirEntry of each file
    instead of a Path (its `.path` and `.stat()` cost no path parsing: the fingerprint of a million-file pool)."""
    root = Path(folder)
    entered: set[tuple[int, int]] = set()
    try:  # a link back to a folder that holds the root would list the root again: a loop
        above = {(p.stat().st_dev, p.stat().st_ino) for p in root.resolve().parents}
    except OSError:
        above = set()

    def walk(directory: Path) -> Iterator[Path | Skipped]:
        try:
            stat = directory.stat()
            if (stat.st_dev, stat.st_ino) in entered or (stat.st_dev, stat.st_ino) in above:
                yield Skipped(directory, "symlink loop (a folder already listed)")
                return
            entered.add((stat.st_dev, stat.st_ino))
            listed = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            yield Skipped(directory, f"cannot list it ({exc.strerror or type(exc).__name__})")
            return
        for entry in listed:
            try:
                if entry.is_dir():
                    yield from walk(Path(entry.path))
                elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
                    if not entry.is_file():
                        yield Skipped(Path(entry.path), "dangling link" if entry.is_symlink() else "not a file")
                    else:
                        yield entry if entries else Path(entry.path)
            except OSError as exc:  # ELOOP from a link to itself, permissions
                yield Skipped(
                    Path(entry.path),
                    "symlink loop (a link that leads back to itself)" if exc.errno == errno.ELOOP else exc.strerror or type(exc).__name__,
                )

    yield from walk(root)


def sample_folder(folder: Path, spec: ImageShape, limit: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Up to `limit` decoded images from anywhere under `folder`, visited in a seeded shuffle (so a limit does
    not take only the first class folder); also the unreadable files met on the way, as 'path: reason'."""
    found = list(iter_images(folder))
    files = [f for f in found if isinstance(f, Path)]
    images: list[np.ndarray] = []
    bad: list[str] = [str(f) for f in found if isinstance(f, Skipped)]
    for i in np.random.default_rng(seed).permutation(len(files)):
        if len(images) >= limit:
            break
        try:
            images.append(decode_image(files[i], spec))
        except UnreadableImage as exc:
            bad.append(f"{files[i]}: {exc}")
    stacked = np.stack(images) if images else np.zeros((0, spec.channels, spec.size, spec.size), np.uint8)
    return stacked, bad


def standardize(x: torch.Tensor, spec) -> torch.Tensor:
    """Float images in [0, 1] to the input the models were trained on (spec: an InputSpec)."""
    mean = torch.tensor(spec.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def normalize(x: torch.Tensor, spec) -> torch.Tensor:
    """uint8 (N,C,H,W) to the float input the models were trained on."""
    return standardize(x.float() / 255.0, spec)
