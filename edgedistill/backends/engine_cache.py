"""Built TensorRT engines, cached on disk: an engine runs only on the TensorRT release and the GPU that built it,
and a build takes seconds to minutes, so plans are keyed by the ONNX file's digest, precision, TensorRT version
(or trtexec binary), GPU and batch profile."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from ..atomic import atomic_path, atomic_write_json


class EngineCache:
    """Serialized engines by key; a plan is only found once it and its facts are completely written."""

    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root is not None else default_engine_cache()

    @staticmethod
    def key(**parts: object) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]

    def _plan(self, key: str) -> Path:
        return self.root / f"{key}.engine"

    def _meta(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def lookup(self, key: str) -> Path | None:
        plan = self._plan(key)
        return plan if plan.is_file() and self._meta(key).is_file() else None

    def meta(self, key: str) -> dict:
        try:
            return json.loads(self._meta(key).read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def store(self, key: str, plan: bytes | Path, meta: dict) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        with atomic_path(self._plan(key)) as tmp:
            if isinstance(plan, Path):
                shutil.copyfile(plan, tmp)
            else:
                tmp.write_bytes(plan)
        atomic_write_json(self._meta(key), meta)
        return self._plan(key)


def default_engine_cache() -> Path:
    return Path(os.environ.get("EDGEDISTILL_ENGINE_CACHE") or Path.home() / ".cache" / "edgedistill" / "engines")
