"""The unlabeled open-world pool: every source kind (SOURCES) read as one stream of (pool key, uint8 image) batches.

A source kind is one class below, registered under the recipe key that names it (`- builtin: NAME`,
`- folder: PATH`, ...): its fields are the recipe's, `check` finds bad input before any work starts, and
`part` makes the reader that the Pool deals out over ranks and DataLoader workers."""

from __future__ import annotations

import csv
import io
import os
import random
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from pydantic import ConfigDict, Field

from ..config.schema import InputSpec, PoolEntry, Recipe
from ..errors import BadInput
from ..registry import Registry
from .builtin import BUILTINS, check_available, load_builtin
from .fingerprint import Fingerprint, file_fingerprint, paths_fingerprint, tree_fingerprint
from .images import IMAGE_SUFFIXES, Skipped, UnreadableImage, convert_array, decode_image, iter_images


def expand_shards(pattern: str, base_dir: Path) -> list[Path]:
    """WebDataset's brace notation: `pool-{000..099}.tar` (zero padding kept) and `{a,b}` alternatives."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        path = Path(pattern).expanduser()
        return [path if path.is_absolute() else (base_dir / path).resolve()]
    body, head, tail = match.group(1), pattern[: match.start()], pattern[match.end() :]
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
        if isinstance(path, Skipped):
            bad.append(str(path))
            continue
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

    def paths(self) -> Iterator[str]:
        if self.manifest.suffix.lower() in (".parquet", ".pq"):
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise BadInput(f"{self.manifest}: reading Parquet manifests needs pyarrow: pip install 'edgedistill[parquet]'") from None
            reader = pq.ParquetFile(self.manifest)
            if self.column not in reader.schema_arrow.names:
                raise BadInput(
                    f"{self.manifest}: no column {self.column!r} (columns: {', '.join(reader.schema_arrow.names)}); set pool.N.column"
                )
            for block in reader.iter_batches(columns=[self.column], batch_size=65536):
                yield from (str(p) for p in block.column(0).to_pylist() if p is not None)
            return
        with self.manifest.open(newline="", encoding="utf-8") as f:
            rows = csv.DictReader(f)
            if rows.fieldnames is None or self.column not in rows.fieldnames:
                raise BadInput(
                    f"{self.manifest}: no column {self.column!r} in the CSV header {rows.fieldnames}; "
                    "add a header line or set pool.N.column"
                )
            yield from (row[self.column] for row in rows if row[self.column])

    def units(self, batch: int) -> Iterator[object]:
        root = self.manifest.parent
        yield from _chunks(enumerate((root / p).resolve() if not os.path.isabs(p) else Path(p) for p in self.paths()), batch)

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
                if _plain(path) and path.stat().st_size < tar.offset + 2 * tarfile.BLOCKSIZE:
                    bad.append(
                        f"{path}: truncated after {position + 1} samples (no end-of-archive marker; "
                        "the shard was cut short, e.g. by an interrupted copy)"
                    )
        except (tarfile.TarError, OSError, EOFError) as exc:
            bad.append(f"{path}: {type(exc).__name__} after {position + 1} samples (damaged shard; the rest of it is skipped)")
        if keys or bad:
            yield _batch(keys, images, bad, spec)


SHARD_IMAGE_EXTENSIONS = {s.lstrip(".") for s in IMAGE_SUFFIXES}
COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ")  # gzip, bzip2, xz: their streams detect truncation themselves


def _plain(path: Path) -> bool:
    """An uncompressed tar, whose end can be checked against the file size."""
    with open(path, "rb") as f:
        return not f.read(6).startswith(COMPRESSED_MAGIC)


PoolPart = ArrayPart | FolderPart | ManifestPart | ShardsPart


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
        return torch.utils.data.DataLoader(
            self,
            batch_size=None,
            num_workers=workers,
            pin_memory=pin_memory,
            prefetch_factor=4 if workers else None,
            persistent_workers=False,
        )


SOURCES: Registry[type[PoolSource]] = Registry("pool source")


class PoolSource(PoolEntry):
    """A kind of pool source; subclasses are registered under the key that names them in the recipe."""

    model_config = ConfigDict(extra="forbid")

    def check(self, recipe: Recipe, where: str) -> None:
        """Raises BadInput for what can be found wrong without reading the images."""

    def part(self, recipe: Recipe, index: int) -> PoolPart:
        raise NotImplementedError

    def fingerprint(self, recipe: Recipe) -> Fingerprint | None:
        """What the source's images are, beyond the recipe's text, so a re-run sees a changed file under the same
        path; None where the recipe's text says it all (a built-in set is fixed by its name)."""
        return None


@SOURCES.register("builtin")
class BuiltinSource(PoolSource):
    builtin: str = Field(description="a built-in set (edgedistill.inputs.builtin.BUILTINS)")
    count: Annotated[int, Field(gt=0)] | None = None

    def check(self, recipe: Recipe, where: str) -> None:
        if self.builtin not in BUILTINS:
            raise BadInput(f"{where}.builtin: unknown built-in source {self.builtin!r}; available: {', '.join(sorted(BUILTINS))}")
        try:  # a missing package is found now, not after the sources before it were scored
            check_available(self.builtin)
        except BadInput as exc:
            raise BadInput(f"{where}.builtin: {exc}") from None

    def part(self, recipe: Recipe, index: int) -> PoolPart:
        data = load_builtin(self.builtin, count=self.count, seed=recipe.seed + index)
        return ArrayPart(self.builtin, convert_array(data.images, recipe.teacher.input))


@SOURCES.register("folder")
class FolderSource(PoolSource):
    folder: Path = Field(description="any images, searched recursively")
    count: Annotated[int, Field(gt=0)] | None = None

    def check(self, recipe: Recipe, where: str) -> None:
        folder = recipe.resolve(self.folder)
        if not folder.is_dir():
            raise BadInput(f"{where}.folder: directory {folder} does not exist")
        try:  # a folder that cannot be listed would otherwise look empty ("no images found")
            with os.scandir(folder):
                pass
        except OSError as exc:
            raise BadInput(
                f"{where}.folder: cannot read {folder} ({exc.strerror or type(exc).__name__}); give the user running "
                "edgedistill read and search permission on it (chmod/ACL), or copy the images somewhere readable"
            ) from None

    def part(self, recipe: Recipe, index: int) -> PoolPart:
        folder = recipe.resolve(self.folder)
        found = next((p for p in iter_images(folder) if isinstance(p, Path)), None)
        if found is None:
            unlisted = next((p for p in iter_images(folder) if isinstance(p, Skipped) and "cannot list" in p.reason), None)
            why = f"; {unlisted} (check its permissions)" if unlisted is not None else ""
            raise BadInput(f"pool.{index}.folder: no images found under {folder} (looked for {', '.join(sorted(IMAGE_SUFFIXES))}){why}")
        sample = None
        if self.count is not None:
            paths = [p for p in iter_images(folder) if isinstance(p, Path)]
            sample = sorted(random.Random(recipe.seed + index).sample(paths, self.count)) if self.count < len(paths) else paths
        return FolderPart(str(folder), folder, sample)

    def fingerprint(self, recipe: Recipe) -> Fingerprint | None:
        return tree_fingerprint(recipe.resolve(self.folder))


@SOURCES.register("shards")
class ShardsSource(PoolSource):
    shards: str = Field(description="WebDataset tar shards, brace-expanded: data/pool-{000000..000999}.tar; one image per sample key")

    def check(self, recipe: Recipe, where: str) -> None:
        missing = [p for p in expand_shards(self.shards, recipe.base_dir) if not p.is_file()]
        if missing:
            raise BadInput(f"{where}.shards: {len(missing)} shard file(s) missing, e.g. {missing[0]}")

    def part(self, recipe: Recipe, index: int) -> PoolPart:
        return ShardsPart(self.shards, expand_shards(self.shards, recipe.base_dir))

    def fingerprint(self, recipe: Recipe) -> Fingerprint | None:
        return paths_fingerprint(expand_shards(self.shards, recipe.base_dir), root=recipe.base_dir)


@SOURCES.register("manifest")
class ManifestSource(PoolSource):
    manifest: Path = Field(description="CSV (with a header) or Parquet file listing image paths, relative to the manifest's folder")
    column: str = Field("path", description="the column that holds the paths")

    def check(self, recipe: Recipe, where: str) -> None:
        path = recipe.resolve(self.manifest)
        if not path.is_file():
            raise BadInput(f"{where}.manifest: file {path} does not exist")
        try:  # the header (CSV) or the schema (Parquet) says whether the column is there
            next(ManifestPart(str(path), path, self.column).paths(), None)
        except BadInput as exc:
            raise BadInput(f"{where}.column: {exc}") from None
        except (OSError, UnicodeDecodeError, ValueError) as exc:  # pyarrow's errors derive from these
            raise BadInput(f"{where}.manifest: {path} cannot be read as CSV or Parquet ({type(exc).__name__}: {exc})") from None

    def part(self, recipe: Recipe, index: int) -> PoolPart:
        path = recipe.resolve(self.manifest)
        return ManifestPart(str(path), path, self.column)

    def fingerprint(self, recipe: Recipe) -> Fingerprint | None:
        """The manifest file's contents and each listed image's size and mtime."""
        path = recipe.resolve(self.manifest)
        listed = (image for chunk in ManifestPart(str(path), path, self.column).units(65536) for _, image in chunk)
        images, own = paths_fingerprint(listed, root=path.parent), file_fingerprint(path)
        table = np.concatenate([own.table, images.table])
        return Fingerprint(f"{own.digest[:16]}{images.digest[:16]}", len(table), table)


def build_pool(recipe: Recipe, rank: int = 0, world_size: int = 1) -> Pool:
    """The recipe's pool, its entries already turned into registered source kinds by edgedistill.recipe."""
    parts = [entry.part(recipe, i) for i, entry in enumerate(recipe.pool)]
    return Pool(recipe.teacher.input, parts, recipe.select.batch_size, rank, world_size)


def default_workers(pool: Pool, local_world_size: int = 1, cpus: int | None = None) -> int:
    """Decoding workers per rank: none when every part is already in memory, else the CPUs (`cpus`: those this process
    may use, default all) shared among local ranks, less one for the rank itself."""
    if all(isinstance(p, ArrayPart) for p in pool.parts):
        return 0
    return max(1, min(8, (cpus or os.cpu_count() or 1) // max(1, local_world_size) - 1))
