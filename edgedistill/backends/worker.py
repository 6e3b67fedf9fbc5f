"""A runtime run by the device's own Python over ssh: a worker script (ort_worker.py, litert_worker.py) uploaded with
the model to the runner's work dir and called once per step, `PYTHON WORKER MODE MODEL [ARGS] [MODE ARGS]`, printing
one JSON line. WorkerRunner is what the ONNX Runtime and LiteRT runners over ssh share: the upload, the call and what
its exit codes mean, inference through .npy files, and all timing rounds in one call (which loads the model once).

Worker modes: `check` (its facts), `infer SOURCE.npy TARGET.npy`, `time BATCH WARMUP ITERATIONS [ROUNDS]`
(`samples_ms`, and `rounds_ms` per round). Exit codes: 3 a module is missing, 4 the model is rejected; a worker may
add its own (WorkerRunner.exit_hints).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from ..errors import TargetUnavailable
from .base import LatencyStats
from .hosts import HostRunner
from .hosts.base import Host, last_line

if TYPE_CHECKING:
    from ..config.schema import TargetSpec

MISSING_MODULE_EXIT = 3
MODEL_REJECTED_EXIT = 4


class WorkerRunner(HostRunner):
    """A runtime in the device's Python, driven by `worker` uploaded next to the model; `args` follow the model on
    every call (threads, and the providers for ONNX Runtime)."""

    worker: ClassVar[Path]  # the script uploaded
    remote_name: ClassVar[str]  # its name in the work dir
    model_name: ClassVar[str]  # the model's name in the work dir (the suffix the runtime reads it by)
    helper: ClassVar[str]  # how messages name the worker: "the {helper} helper"
    modules: ClassVar[str]  # what a Python without the runtime lacks (exit 3)
    install: ClassVar[str]  # the hint for that: what to install on the board
    exit_hints: ClassVar[dict[int, str]] = {}  # the worker's other exit codes: the hint after its last stderr line

    def __init__(self, host: Host, model: Path, target: TargetSpec, python: str, args: list[str]):
        super().__init__(host, target)
        self.python, self.args = python, args

        def setup() -> None:
            self.host.put(self.worker, self._path(self.remote_name), timeout_s=target.timeout_s)
            self.host.put(Path(model), self._path(self.model_name), timeout_s=target.timeout_s)
            self.runtime_facts = self._call("check")

        self._start(setup)

    def _call(self, mode: str, *args: object) -> dict:
        argv = [self.python, self._path(self.remote_name), mode, self._path(self.model_name), *self.args, *map(str, args)]
        result = self._run_tracked(argv, self.target.timeout_s)
        where, code, said = self.destination, result.returncode, last_line(result.stderr)
        if code == 127:
            raise TargetUnavailable(
                f"{where}: `{self.python}` not found on the target. "
                "Hint: install Python 3 there or set the target's remote_python to its path."
            )
        if code == MISSING_MODULE_EXIT:
            raise TargetUnavailable(
                f"{where}: {self.python} lacks {self.modules} or numpy ({said}). "
                f"Hint: {self.install}, or set remote_python to a Python that has it."
            )
        if code in self.exit_hints:
            raise TargetUnavailable(f"{where}: {said}. Hint: {self.exit_hints[code]}.")
        if code != 0:
            self._unavailable_if_full(result.stderr)
            raise TargetUnavailable(f"{where}: the {self.helper} helper exited with {code}: {said}")
        try:
            return json.loads(result.stdout.decode("utf-8", "replace").strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            said = last_line(result.stdout + result.stderr)
            raise TargetUnavailable(f"{where}: the {self.helper} helper printed no result ({said})") from None

    def infer(self, x: np.ndarray) -> np.ndarray:
        with tempfile.TemporaryDirectory() as tmp:
            np.save(Path(tmp) / "inputs.npy", np.ascontiguousarray(x, dtype=np.float32))
            self.host.put(Path(tmp) / "inputs.npy", self._path("inputs.npy"), timeout_s=self.target.timeout_s)
            self._call("infer", self._path("inputs.npy"), self._path("outputs.npy"))
            self.host.get(self._path("outputs.npy"), Path(tmp) / "outputs.npy", timeout_s=self.target.timeout_s)
            return np.load(Path(tmp) / "outputs.npy")

    def time(self, batch: int, warmup: int, iterations: int, duration_s: float | None = None) -> LatencyStats:
        return LatencyStats.from_samples(np.asarray(self._call("time", batch, warmup, iterations)["samples_ms"]), batch)

    def round_samples(self, batch: int, warmup: int, per_round: int, rounds: int, duration_s: float | None = None) -> list[np.ndarray]:
        """All rounds in one call of the worker: a call per round would load the model on the device again each time."""
        result = self._call("time", batch, warmup, per_round, rounds)
        return [np.asarray(r) for r in result.get("rounds_ms") or [result["samples_ms"]]]

    def facts(self) -> dict:
        return {"runtime": self.name, **self.runtime_facts, "ssh": self.target.ssh, **self.device_facts()}
