"""The unlabeled open-world pool: built-in sets and image folders, converted to the teacher's input."""
from __future__ import annotations

import csv
import io
import os
import random
import re
import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import BadInput
from .recipe import BuiltinSource, FolderSource, InputSpec, ManifestSource, Recipe, ShardsSource
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


def decode_image(path: Path | BinaryIO, spec: InputSpec) -> np.ndarray:
    """Any image file (a path or an open binary file) as uint8 (C, size, size): orientation fixed, shorter side resized, centre-cropped."""
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


def iter_images(folder: Path) -> Iterator[Path]:
    """Image files under `folder`, depth-first in name order, listed one directory at a time: a tree of
    millions of files is never held as one list."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from iter_images(Path(entry.path))
        elif Path(entry.name).suffix.lower() in IMAGE_SUFFIXES and entry.is_file():
            yield Path(entry.path)


def list_images(folder: Path) -> list[Path]:
    return list(iter_images(folder))


def expand_shards(pattern: str, base_dir: Path) -> list[Path]:
    """WebDataset's brace notation: `pool-{000..099}.tar` (zero padding kept) and `{a,b}` alternatives."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        path = Path(pattern).expanduser()
        return [path if path.is_absolute() else (base_dir / path).resolve()]
    body, head, tail = match.group(1), pattern[: match.start()], pattern[match.end():]
    numeric = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numeric:
        lo, hi = numeric.groups()
        items = [str(n).zfill(len(lo)) for n in range(int(lo), int(hi) + 1)]
    else:
        items = body.split(",")
    return [p for item in items for p in expand_shards(head + item + tail, base_dir)]


PART_BITS = 40  # a pool key is part << PART_BITS | position within the part
SHARD_BITS = 20  # within a shard part: shard << SHARD_BITS | sample within the shard


def part_of(key: int | np.ndarray) -> int | np.ndarray:
    return key >> PART_BITS


Batch = tuple[torch.Tensor, torch.Tensor, list[str]]  # (keys int64, uint8 NCHW images, reasons for unreadable items)


def _batch(keys: list[int], images: list[np.ndarray], bad: list[str], spec: InputSpec) -> Batch:
    if not images:
        return torch.tensor(keys, dtype=torch.long), torch.empty(0, spec.channels, spec.size, spec.size, dtype=torch.uint8), bad
    return torch.tensor(keys, dtype=torch.long), torch.from_numpy(np.stack(images)), bad


@dataclass
class ArrayPart:
    """A built-in source, already decoded and converted to the teacher's input."""

    name: str
    array: np.ndarray

    @property
    def size(self) -> int | None:
        return len(self.array)

    def units(self, batch: int) -> Iterator[object]:
        yield from ((start, min(start + batch, len(self.array))) for start in range(0, len(self.array), batch))

    def read(self, unit: tuple[int, int], base: int, spec: InputSpec, batch: int) -> Iterator[Batch]:
        start, stop = unit
        yield torch.arange(base + start, base + stop, dtype=torch.long), torch.from_numpy(np.ascontiguousarray(self.array[start:stop])), []


def _decode_files(files: list[tuple[int, Path]], base: int, spec: InputSpec) -> Batch:
    keys, images, bad = [], [], []
    for position, path in files:
        try:
            images.append(decode_image(path, spec))
            keys.append(base + position)
        except UnreadableImage as exc:
            bad.append(f"{path}: {exc}")
    return _batch(keys, images, bad, spec)


@dataclass
class FolderPart:
    """Image files under a folder, listed lazily; with `count`, a seeded sample of them (which lists the folder once)."""

    name: str
    folder: Path
    sample: list[Path] | None = None

    @property
    def size(self) -> int | None:
        return len(self.sample) if self.sample is not None else None

    def units(self, batch: int) -> Iterator[object]:
        paths = iter(self.sample) if self.sample is not None else iter_images(self.folder)
        yield from _chunks(enumerate(paths), batch)

    def read(self, unit: list[tuple[int, Path]], base: int, spec: InputSpec, batch: int) -> Iterator[Batch]:
        yield _decode_files(unit, base, spec)


@dataclass
class ManifestPart:
    """Paths listed in a CSV or Parquet file, read a block at a time."""

    name: str
    manifest: Path
    column: str

    size = None

    def _paths(self) -> Iterator[str]:
        if self.manifest.suffix.lower() in (".parquet", ".pq"):
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise BadInput(f"{self.manifest}: reading Parquet manifests needs pyarrow: pip install 'edgedistill[parquet]'") from None
            reader = pq.ParquetFile(self.manifest)
            if self.column not in reader.schema_arrow.names:
                raise BadInput(f"{self.manifest}: no column {self.column!r} (columns: {', '.join(reader.schema_arrow.names)}); set pool.N.column")
            for block in reader.iter_batches(columns=[self.column], batch_size=65536):
                yield from (str(p) for p in block.column(0).to_pylist() if p is not None)
            return
        with self.manifest.open(newline="", encoding="utf-8") as f:
            rows = csv.DictReader(f)
            if rows.fieldnames is None or self.column not in rows.fieldnames:
                raise BadInput(f"{self.manifest}: no column {self.column!r} in the CSV header {rows.fieldnames}; "
                               "add a header line or set pool.N.column")
            yield from (row[self.column] for row in rows if row[self.column])

    def units(self, batch: int) -> Iterator[object]:
        root = self.manifest.parent
        yield from _chunks(enumerate((root / p).resolve() if not os.path.isabs(p) else Path(p) for p in self._paths()), batch)

    def read(self, unit: list[tuple[int, Path]], base: int, spec: InputSpec, batch: int) -> Iterator[Batch]:
        yield _decode_files(unit, base, spec)


@dataclass
class ShardsPart:
    """WebDataset tar shards, streamed: a sample is the members sharing a key (path up to the first dot of the
    file name), and its first image member is the image. A shard is read whole by one worker, never seeked."""

    name: str
    shards: list[Path]

    size = None

    def units(self, batch: int) -> Iterator[object]:
        yield from enumerate(self.shards)

    def read(self, unit: tuple[int, Path], base: int, spec: InputSpec, batch: int) -> Iterator[Batch]:
        number, path = unit
        keys, images, bad = [], [], []
        seen: set[str] = set()
        position = -1
        try:
            with tarfile.open(path, mode="r|*") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    directory, _, filename = member.name.rpartition("/")
                    stem, dot, ext = filename.partition(".")
                    sample = f"{directory}/{stem}"
                    if not dot or ext.lower().rsplit(".", 1)[-1] not in SHARD_IMAGE_EXTENSIONS or sample in seen:
                        continue
                    seen.add(sample)
                    position += 1
                    try:
                        images.append(decode_image(io.BytesIO(tar.extractfile(member).read()), spec))
                        keys.append(base + (number << SHARD_BITS) + position)
                    except UnreadableImage as exc:
                        bad.append(f"{path}:{member.name}: {exc}")
                    if len(images) + len(bad) >= batch:
                        yield _batch(keys, images, bad, spec)
                        keys, images, bad = [], [], []
        except (tarfile.TarError, OSError, EOFError) as exc:
            bad.append(f"{path}: {type(exc).__name__} after {position + 1} samples (damaged shard; the rest of it is skipped)")
        if keys or bad:
            yield _batch(keys, images, bad, spec)


SHARD_IMAGE_EXTENSIONS = {s.lstrip(".") for s in IMAGE_SUFFIXES}
PoolPart = Union[ArrayPart, FolderPart, ManifestPart, ShardsPart]


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@dataclass
class Pool(torch.utils.data.IterableDataset):
    """Every source of the pool as a stream of batches of (pool key, uint8 CHW image).

    The pool is cut into units (a batch of array rows or files, or one tar shard), numbered across all parts;
    unit u goes to reader u mod R of the R = ranks x DataLoader workers. Batches never straddle units, so a
    single process and N ranks score exactly the same batches.
    """

    spec: InputSpec
    parts: list[PoolPart]
    batch_size: int = 512
    rank: int = 0
    world_size: int = 1

    @property
    def size(self) -> int | None:
        """Images in the pool when known without reading it (lazy folders, manifests and shards are not)."""
        sizes = [p.size for p in self.parts]
        return None if None in sizes else sum(sizes)

    def __iter__(self) -> Iterator[Batch]:
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        readers, reader = self.world_size * workers, self.rank * workers + worker
        unit_number = 0
        for part_number, part in enumerate(self.parts):
            base = part_number << PART_BITS
            for unit in part.units(self.batch_size):
                if unit_number % readers == reader:
                    yield from part.read(unit, base, self.spec, self.batch_size)
                unit_number += 1

    def source_name(self, key: int) -> str:
        return self.parts[int(part_of(key))].name

    def loader(self, workers: int, pin_memory: bool = False) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(self, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                                           prefetch_factor=4 if workers else None, persistent_workers=False)


def build_pool(recipe: Recipe, rank: int = 0, world_size: int = 1) -> Pool:
    spec = recipe.teacher.input
    parts: list[PoolPart] = []
    for i, source in enumerate(recipe.pool):
        if isinstance(source, BuiltinSource):
            data = load_builtin(source.builtin, count=source.count, seed=recipe.seed + i)
            parts.append(ArrayPart(source.builtin, convert_array(data.images, spec)))
        elif isinstance(source, FolderSource):
            folder = recipe.resolve(source.folder)
            if next(iter_images(folder), None) is None:
                raise BadInput(f"pool.{i}.folder: no images found under {folder} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
            sample = None
            if source.count is not None:
                paths = list_images(folder)
                sample = sorted(random.Random(recipe.seed + i).sample(paths, source.count)) if source.count < len(paths) else paths
            parts.append(FolderPart(str(folder), folder, sample))
        elif isinstance(source, ManifestSource):
            parts.append(ManifestPart(str(recipe.resolve(source.manifest)), recipe.resolve(source.manifest), source.column))
        elif isinstance(source, ShardsSource):
            parts.append(ShardsPart(source.shards, expand_shards(source.shards, recipe.base_dir)))
    return Pool(spec, parts, recipe.select.batch_size, rank, world_size)


def default_workers(pool: Pool, local_world_size: int = 1) -> int:
    """Decoding workers per rank: none when every part is already in memory, else the CPUs shared among local ranks."""
    if all(isinstance(p, ArrayPart) for p in pool.parts):
        return 0
    return max(1, min(8, (os.cpu_count() or 1) // max(1, local_world_size) - 1))


def standardize(x: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """Float images in [0, 1] to the input the models were trained on."""
    mean = torch.tensor(spec.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def normalize(x: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """uint8 (N,C,H,W) to the float input the models were trained on."""
    return standardize(x.float() / 255.0, spec)
