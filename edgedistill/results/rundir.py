"""The run directory: claimed, locked and recorded (a run only ever touches its own files), with stage records that
let a re-run skip what is already done, and the versions a run used."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import platform
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_json
from ..errors import BadInput
from ..version import __version__


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


MARKER = ".edgedistill-run"  # JSON: the edgedistill that made this directory, and every file a run wrote into it
LOCK = ".edgedistill-run.lock"  # held (flock) while a run works here; the OS drops it when the process dies
OWNER = ".edgedistill-run.owner"  # who holds the lock: pid, host, start time
OURS = {MARKER, LOCK, OWNER}
TEMPORARY_SUFFIX = ".part"  # what the atomic writer and the stages' scratch folders end in


class RunDir:
    """One run's folder: ours or refused, one run at a time, a manifest of what runs wrote into it, and stage
    records that let a re-run skip what is already done (a stage is done when its record names the same inputs
    and its outputs are intact).

    `open` claims the folder; until then (and on torchrun ranks other than 0, which only read) nothing is written.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._manifest: list[str] | None = None
        self._lock = None

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def open(self) -> None:
        """Creates the folder (marked as edgedistill's) or checks that it is one; takes the lock; removes the
        temporary files a killed run left. Refuses, with one line, a folder of someone else's files or one another
        run is using."""
        from filelock import FileLock, Timeout

        if self.path.exists() and not self.path.is_dir():
            raise BadInput(f"--run-dir {self.path}: not a directory")
        if self.path.is_dir() and not (self.path / MARKER).is_file():
            foreign = sorted(p.name for p in self.path.iterdir() if p.name not in OURS)
            if foreign:
                shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
                raise BadInput(
                    f"--run-dir {self.path}: holds files edgedistill did not write ({shown}); give a new or empty "
                    "directory (edgedistill never deletes or overwrites files it did not write)"
                )
        self.path.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.path / LOCK), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise BadInput(
                f"--run-dir {self.path}: another edgedistill run is using it ({self._owner()}); wait for it to "
                "finish or give another --run-dir"
            ) from None
        self._lock = lock
        atomic_write_json(
            self.path / OWNER, {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        )
        if (self.path / MARKER).is_file():
            self._manifest = json.loads((self.path / MARKER).read_text()).get("files", [])
        else:
            self._manifest = []
            self._write_marker()
        for stale in [*self.path.glob(f".*{TEMPORARY_SUFFIX}"), *self.path.glob(f"stages/.*{TEMPORARY_SUFFIX}")]:
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink(missing_ok=True)
        (self.path / "stages").mkdir(exist_ok=True)

    def _owner(self) -> str:
        try:
            owner = json.loads((self.path / OWNER).read_text())
            return f"pid {owner['pid']} on {owner['host']}, since {owner['started']}"
        except (OSError, ValueError, KeyError):
            return "its owner did not say who it is"

    def close(self) -> None:
        if self._lock is not None:
            (self.path / OWNER).unlink(missing_ok=True)
            self._lock.release()
            self._lock = None

    def _write_marker(self) -> None:
        atomic_write_json(self.path / MARKER, {"edgedistill": __version__, "files": sorted(self._manifest)})

    def artifact(self, *names: str) -> Path:
        """The path of a file the run is about to write, recorded in the manifest first; the first name's path."""
        if self._manifest is not None and not set(names) <= set(self._manifest):
            self._manifest = sorted(set(self._manifest) | set(names))
            self._write_marker()
        return self.path / names[0]

    def remove(self, *names: str) -> None:
        """Deletes files a run wrote here; a name the manifest does not list is never touched."""
        for name in names:
            if self._manifest is not None and name in self._manifest:
                (self.path / name).unlink(missing_ok=True)
                self._manifest.remove(name)
        self._write_marker()

    def written(self, pattern: str) -> list[str]:
        """Manifest entries matching a glob pattern."""
        return [name for name in self._manifest or [] if fnmatch.fnmatch(name, pattern)]

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
        return all((self.path / name).is_file() and file_digest(self.path / name) == digest for name, digest in record["outputs"].items())

    def mark_done(self, stage: str, inputs: dict[str, Any], outputs: list[str], info: dict[str, Any] | None = None) -> None:
        atomic_write_json(
            self.artifact(f"stages/{stage}.json"),
            {"inputs": inputs, "outputs": {name: file_digest(self.path / name) for name in outputs}, "info": info or {}},
        )

    def clear(self) -> None:
        """Forgets which stages are done (--fresh): the stage records this folder's runs wrote, nothing else."""
        self.remove(*self.written("stages/*.json"))


def package_versions() -> dict:
    """What a run's figures depend on besides the recipe: written into run.json and every report."""
    import numpy
    import onnx
    import onnxruntime
    import torch
    import torchvision

    return {
        "edgedistill": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": numpy.__version__,
    }
