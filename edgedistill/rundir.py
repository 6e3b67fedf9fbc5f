"""The run directory: atomic artifacts, and stage records that let a re-run skip what is already done."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yields a temporary path beside `path`; it replaces `path` only if the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def atomic_write_npz(path: Path, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def atomic_torch_save(obj: Any, path: Path) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


class RunDir:
    """One run's folder. A stage is done when its record names the same inputs and its outputs are intact."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "stages").mkdir(exist_ok=True)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def _record(self, stage: str) -> Path:
        return self.path / "stages" / f"{stage}.json"

    def stage_inputs(self, stage: str, recipe_part: Any, upstream: list[str]) -> dict[str, Any]:
        """What a stage depends on: its recipe sections and the output digests of the stages before it."""
        return {"recipe": fingerprint(recipe_part), "upstream": {s: self.output_digest(s) for s in upstream}}

    def output_digest(self, stage: str) -> str | None:
        record = self.read_record(stage)
        return fingerprint(record["outputs"]) if record else None

    def read_record(self, stage: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._record(stage).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def is_done(self, stage: str, inputs: dict[str, Any]) -> bool:
        record = self.read_record(stage)
        if record is None or record.get("inputs") != inputs:
            return False
        return all((self.path / name).is_file() and file_digest(self.path / name) == digest
                   for name, digest in record["outputs"].items())

    def mark_done(self, stage: str, inputs: dict[str, Any], outputs: list[str], info: dict[str, Any] | None = None) -> None:
        atomic_write_json(self._record(stage), {
            "inputs": inputs,
            "outputs": {name: file_digest(self.path / name) for name in outputs},
            "info": info or {},
        })

    def clear(self) -> None:
        for record in (self.path / "stages").glob("*.json"):
            record.unlink()
