"""What every runtime backend is: a Runner that opens a model on a target, runs batches, times itself and says
what it ran on; plus the latency statistics and the timing loop all local runners share."""

from __future__ import annotations

import os
import platform
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import ClassVar

import numpy as np

NOISY_CV = 0.1


@dataclass
class LatencyStats:
    """Milliseconds per call at one batch size; `cv` (std/mean) says how much to trust them, `noisy` when it is above NOISY_CV."""

    batch: int
    iterations: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    cv: float
    throughput_per_s: float
    noisy: bool = False
    samples_ms: np.ndarray | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_samples(cls, samples_ms: np.ndarray, batch: int, noisy_cv: float = NOISY_CV) -> LatencyStats:
        s = np.asarray(samples_ms, dtype=np.float64)
        mean = float(s.mean())
        p50, p90, p99 = (float(v) for v in np.percentile(s, [50, 90, 99]))
        cv = float(s.std() / mean) if mean > 0 else 0.0
        return cls(
            batch,
            len(s),
            mean,
            p50,
            p90,
            p99,
            float(s.min()),
            float(s.max()),
            cv,
            batch * 1000.0 / mean if mean > 0 else 0.0,
            noisy=cv > noisy_cv,
            samples_ms=s,
        )

    def as_dict(self) -> dict:
        """The summary only: the raw samples go to their own file (latency_samples.json)."""
        return {k: v for k, v in asdict(self).items() if k != "samples_ms"}


class Runner(ABC):
    """One model opened on one target (the constructor opens it); a context manager that closes it.

    `infer` takes normalized float32 NCHW batches and returns logits; `time` measures calls at one batch size;
    `facts` says what the figures depend on (runtime version, device, threads)."""

    name: ClassVar[str]
    infer_batch: int | None = 256  # validate hands over chunks of this many images; None: the whole set at once

    @abstractmethod
    def infer(self, x: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def time(self, batch: int, warmup: int, iterations: int, duration_s: float | None = None) -> LatencyStats: ...

    @abstractmethod
    def facts(self) -> dict: ...

    def close(self) -> None:  # noqa: B027 (a runner that holds nothing needs no close)
        """Releases what the runner holds; safe to call twice."""

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


MIN_TIMED_CALLS = 10


def time_calls(call: Callable[[], object], warmup: int, iterations: int, duration_s: float | None = None) -> np.ndarray:
    """Milliseconds of each call after `warmup` untimed ones: `iterations` calls, or as many as fit in
    `duration_s` seconds (at least MIN_TIMED_CALLS), so a slow model gets a bounded run and a fast one enough samples."""
    for _ in range(warmup):
        call()
    if duration_s is None:
        samples = np.empty(iterations)
        for i in range(iterations):
            start = time.perf_counter_ns()
            call()
            samples[i] = (time.perf_counter_ns() - start) / 1e6
        return samples
    timed: list[float] = []
    deadline = time.perf_counter_ns() + int(duration_s * 1e9)
    while len(timed) < MIN_TIMED_CALLS or time.perf_counter_ns() < deadline:
        start = time.perf_counter_ns()
        call()
        timed.append((time.perf_counter_ns() - start) / 1e6)
    return np.asarray(timed)


def _read_first(path: str, prefix: str = "") -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip() if prefix else line.strip()
    except OSError:
        return None
    return None


def machine_facts() -> dict:
    """What a latency figure depends on besides the model: CPU model, usable cores, frequency governor."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": _read_first("/proc/cpuinfo", "model name") or platform.processor() or None,
        "cpus": os.cpu_count(),
        "usable_cpus": usable,
        "cpu_governor": _read_first("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }
