"""What a stage's result depends on besides the recipe's text: the files the recipe names. A model or weights file is
hashed whole; a folder, a shard list or a manifest's images are listed as (path, size, mtime), which costs a stat per
file, so a pool of millions is fingerprinted in seconds; where a stage's result hangs on a few files' contents (the
labeled evaluation images) those are hashed too. A fingerprint keeps one 64-bit key and state per file, so a change is
explained ("500 files modified, 2 added") and not only detected."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .images import Skipped, iter_images


@dataclass(eq=False)
class Fingerprint:
    """`digest` is what a stage record compares; `table` ((N, 2) uint64: path key, state) explains a change."""

    digest: str
    files: int
    table: np.ndarray

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Fingerprint) and other.digest == self.digest

    __hash__ = None  # mutable, like the dataclass it is

    def describe_change(self, old_table: np.ndarray | None) -> str:
        """`500 files modified, 2 added, 1 removed`; without the earlier table, only that the contents changed."""
        if old_table is None:
            return "contents changed"
        old = dict(zip(old_table[:, 0].tolist(), old_table[:, 1].tolist()))
        new = dict(zip(self.table[:, 0].tolist(), self.table[:, 1].tolist()))
        modified = sum(1 for k, v in new.items() if k in old and old[k] != v)
        added, removed = len(new.keys() - old.keys()), len(old.keys() - new.keys())
        counts = ((modified, "modified"), (added, "added"), (removed, "removed"))
        parts = [f"{n} file{'s' if n != 1 else ''} {word}" for n, word in counts if n]
        return ", ".join(parts) or "contents changed"


_KEY = np.uint64
_MASK = (1 << 64) - 1


def _h64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


_SHA_CACHE: dict[tuple, str] = {}


def file_sha256(path: Path) -> str:
    """The file's sha256, remembered for this process while its size, mtime and inode stay the same (a stage checks
    the teacher's weights several times per run)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def file_fingerprint(path: Path) -> Fingerprint:
    """A model or weights file: its contents."""
    digest = file_sha256(path)
    return Fingerprint(digest[:32], 1, np.array([[_h64(b"."), int(digest[:16], 16)]], dtype=_KEY))


def paths_fingerprint(paths: Iterable[Path | os.DirEntry | Skipped], root: Path | None = None, contents: bool = False) -> Fingerprint:
    """Files as (path relative to `root`, size, mtime), or their contents' hash with `contents`; entries that cannot be
    read (Skipped, a file gone meanwhile) count too, as their reason."""
    rows: list[tuple[int, int]] = []
    prefix = os.path.join(str(root), "") if root is not None else ""
    for entry in paths:
        if isinstance(entry, Skipped):
            name, state = str(entry.path), f"skipped {entry.reason}".encode()
        else:
            name = entry.path if isinstance(entry, os.DirEntry) else str(entry)
            name = name[len(prefix) :] if prefix and name.startswith(prefix) else name  # os.path.relpath costs 2x the stat
            try:
                if contents:
                    state = file_sha256(Path(name if root is None else os.path.join(root, name))).encode()
                else:
                    st = entry.stat() if isinstance(entry, os.DirEntry) else os.stat(entry)
                    # a tuple of ints hashes the same in every process (only str and bytes hashes are salted), and
                    # costs a tenth of a blake2b of its text: this is most of a million-file pool's fingerprint time
                    rows.append((_h64(name.encode("utf-8", "surrogateescape")), hash((st.st_size, st.st_mtime_ns)) & _MASK))
                    continue
            except OSError as exc:
                state = f"unreadable {exc.strerror}".encode()
        rows.append((_h64(name.encode("utf-8", "surrogateescape")), _h64(state)))
    table = np.array(rows, dtype=_KEY).reshape(-1, 2)
    return Fingerprint(hashlib.blake2b(table.tobytes(), digest_size=16).hexdigest(), len(table), table)


def tree_fingerprint(folder: Path, contents: bool = False) -> Fingerprint:
    """Every image under `folder`, as the one folder walker lists them (edgedistill.inputs.images.iter_images)."""
    return paths_fingerprint(iter_images(folder, entries=True), root=folder, contents=contents)
