"""The run directory: stage records that let a re-run skip what is already done, and the versions a run used."""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_json
from ..version import __version__


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
        return all((self.path / name).is_file() and file_digest(self.path / name) == digest for name, digest in record["outputs"].items())

    def mark_done(self, stage: str, inputs: dict[str, Any], outputs: list[str], info: dict[str, Any] | None = None) -> None:
        atomic_write_json(
            self._record(stage),
            {
                "inputs": inputs,
                "outputs": {name: file_digest(self.path / name) for name in outputs},
                "info": info or {},
            },
        )

    def clear(self) -> None:
        for record in (self.path / "stages").glob("*.json"):
            record.unlink()


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
