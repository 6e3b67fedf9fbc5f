"""The run directory: claimed, locked and recorded (a run only ever touches its own files), with stage records that
let a re-run skip what is already done, and the versions a run used."""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import platform
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write_json, atomic_write_npz
from ..errors import BadInput
from ..inputs.fingerprint import Fingerprint, file_sha256
from ..version import __version__


def fingerprint(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class StageInputs:
    """A stage's inputs: `recipe` (section name -> digest of its text), `upstream` (earlier stage -> digest of its
    outputs) and `files` (what the recipe names and the stage reads -> Fingerprint of their contents)."""

    recipe: dict[str, str]
    upstream: dict[str, str | None]
    files: dict[str, Fingerprint]

    def as_json(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "upstream": self.upstream, "files": {n: f.digest for n, f in self.files.items()}}

    @property
    def key(self) -> str:
        """One digest of all of it: names the scratch files of a run with these inputs."""
        return fingerprint(self.as_json())


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
        if (self.path / MARKER).is_file():
            self._read_manifest()  # a corrupt marker is refused before anything is written here
        try:
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
                self._manifest = self._read_manifest()
            else:
                self._manifest = []
                self._write_marker()
            for stale in [*self.path.glob(f".*{TEMPORARY_SUFFIX}"), *self.path.glob(f"stages/.*{TEMPORARY_SUFFIX}")]:
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink(missing_ok=True)
            (self.path / "stages").mkdir(exist_ok=True)
        except OSError as exc:  # a read-only file system, a folder the user may not write, a full disk
            if self._lock is not None:
                with contextlib.suppress(OSError):
                    (self.path / OWNER).unlink(missing_ok=True)
                self._lock.release()
                self._lock = None
            self._manifest = None
            raise BadInput(
                f"--run-dir {self.path}: cannot write there ({exc.filename or self.path}: {exc.strerror or exc}); "
                "give a directory you can write to with --run-dir"
            ) from None

    def _read_manifest(self) -> list[str]:
        """The files the marker lists; a marker that is not what edgedistill writes is refused with the way out."""
        marker = self.path / MARKER
        try:
            data = json.loads(marker.read_text())
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            problem = f"not JSON: {exc}"
        else:
            files = data.get("files", []) if isinstance(data, dict) else None
            if isinstance(files, list) and all(isinstance(f, str) for f in files):
                return files
            problem = "it does not hold the list of files runs wrote"
        raise BadInput(
            f"--run-dir {self.path}: its run marker {marker} is corrupt ({problem}); give another --run-dir, or, if the "
            "directory is yours, delete the marker and move its files out (an empty directory is claimed again)"
        )

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
        """The path of a file the run is about to write, recorded in the manifest first; the first name's path.
        A file already there that no run wrote (the manifest does not list it) is the user's: refused, never replaced."""
        if self._manifest is not None:
            self.refuse_foreign(names)
            new = [name for name in names if name not in self._manifest]
            if new:
                self._manifest = sorted(set(self._manifest) | set(new))
                self._write_marker()
        return self.path / names[0]

    def refuse_foreign(self, names) -> None:
        """Raises BadInput when one of `names` is there but no run wrote it (the manifest does not list it): the
        user's file, never replaced; the pipeline checks every name its stages write before the first one runs."""
        theirs = [name for name in names if name not in (self._manifest or []) and os.path.lexists(self.path / name)]
        if theirs:
            raise BadInput(
                f"{self.path / theirs[0]}: not written by an edgedistill run ({MARKER} does not list it) and this run "
                f"would overwrite it; move it out of {self.path}, or give another --run-dir"
            )

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

    def stage_inputs(self, recipe_parts: dict[str, Any], upstream: list[str], files: dict[str, Fingerprint] | None = None) -> StageInputs:
        """What a stage depends on: its recipe sections, the output digests of the stages before it, and the
        fingerprints of the files the recipe names that it reads (StageInputs)."""
        return StageInputs(
            {name: fingerprint(part) for name, part in recipe_parts.items()},
            {s: self.output_digest(s) for s in upstream},
            files or {},
        )

    def output_digest(self, stage: str) -> str | None:
        record = self.read_record(stage)
        return fingerprint(record["outputs"]) if record else None

    def read_record(self, stage: str) -> dict[str, Any] | None:
        try:
            record = json.loads(self._record(stage).read_text())
        except (OSError, ValueError):  # missing, or left corrupt by something else: the stage is simply redone
            return None
        return record if isinstance(record, dict) and isinstance(record.get("outputs"), dict) else None

    def why_stale(self, stage: str, inputs: StageInputs, ignore: tuple[str, ...] = ()) -> str | None:
        """None when the stage's record names these inputs and its outputs are intact; else why it must be redone,
        in words (`eval.labeled changed: 500 files modified`)."""
        record = self.read_record(stage)
        if record is None:
            return "not done yet"
        old = record.get("inputs") or {}
        if not isinstance(old.get("recipe"), dict):
            return "its record was written by an earlier edgedistill"
        keys = (inputs.recipe.keys() | old["recipe"].keys()) - set(ignore)
        changed = sorted(k for k in keys if inputs.recipe.get(k) != old["recipe"].get(k))
        if changed:
            return f"the recipe's {', '.join(changed)} changed"
        redone = [s for s, digest in inputs.upstream.items() if (old.get("upstream") or {}).get(s) != digest]
        if redone:
            return f"{', '.join(redone)} made new outputs"
        old_files = old.get("files") or {}
        for name in sorted(inputs.files.keys() | old_files.keys()):
            now = inputs.files.get(name)
            if now is None or old_files.get(name) != now.digest:
                if now is None or name not in old_files:
                    return f"{name} is {'no longer' if now is None else 'now'} an input"
                return f"{name} changed: {now.describe_change(self._old_table(stage, name))}"
        for name, digest in record["outputs"].items():
            if not (self.path / name).is_file():
                return f"its output {name} is missing"
            if file_sha256(self.path / name) != digest:
                return f"its output {name} was changed after it was written"
        return None

    def is_done(self, stage: str, inputs: StageInputs) -> bool:
        """Up to date (why_stale) and final: a result measured under conditions that may not hold next time (an
        inconclusive latency verdict, a contended machine) is reported but redone by the next run."""
        return self.why_stale(stage, inputs) is None and (self.read_record(stage) or {}).get("final", True)

    def _tables(self, stage: str) -> Path:
        return self.path / "stages" / f"{stage}.files.npz"

    def _old_table(self, stage: str, name: str) -> np.ndarray | None:
        try:
            with np.load(self._tables(stage)) as tables:
                return tables[name] if name in tables.files else None
        except (OSError, ValueError):
            return None

    def mark_done(
        self, stage: str, inputs: StageInputs, outputs: list[str], info: dict[str, Any] | None = None, final: bool = True
    ) -> None:
        """Records a finished stage; `final` False: redo it next time even though its inputs are the same."""
        if inputs.files:
            atomic_write_npz(self.artifact(f"stages/{stage}.files.npz"), **{n: f.table for n, f in inputs.files.items()})
        atomic_write_json(
            self.artifact(f"stages/{stage}.json"),
            {
                "inputs": inputs.as_json(),
                "outputs": {name: file_sha256(self.path / name) for name in outputs},
                "info": info or {},
                "final": final,
            },
        )

    def clear(self) -> None:
        """Forgets which stages are done (--fresh): the stage records this folder's runs wrote, nothing else."""
        self.remove(*self.written("stages/*.json"), *self.written("stages/*.files.npz"))


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
