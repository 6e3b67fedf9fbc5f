"""What every runtime backend is: a Runner that opens a model on a target, runs batches, times itself and says
what it ran on; plus the latency statistics and the timing loop all local runners share."""

from __future__ import annotations

import copy
import math
import os
import platform
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..scale.compute import cpu_busy_s, own_cpu_s, usable_cpus

DEFAULT_ROUNDS = 5
ROUND_FIGURES = ("mean_ms", "p50_ms", "p90_ms", "p99_ms")
INTERVAL_CONFIDENCE = 0.9
NOISY_SPREAD = 0.1


def median_interval(values: list[float] | np.ndarray, confidence: float = INTERVAL_CONFIDENCE) -> tuple[float, float, float, float]:
    """(median, low, high, coverage) of per-round figures: the interval is the k-th smallest to the k-th largest round,
    with k as large as still holds the true median with `confidence` (binomial order statistics, no assumption on how
    latency is distributed); under 5 rounds no interval reaches 90%, so it is the smallest to the largest round.
    One round gives a point: no interval, as a single measurement was judged before rounds existed."""
    from scipy.stats import binom  # imported here: 0.8 s that only a verdict pays

    v = np.sort(np.asarray(values, dtype=np.float64))
    n = len(v)
    tails = binom.cdf(np.arange((n + 1) // 2), n, 0.5)  # tails[j]: chance that at most j rounds are below the true median
    k = max(1, int((1 - 2 * tails >= confidence).sum()))  # the k-th smallest and k-th largest hold it with 1 - 2 * tails[k - 1]
    return float(np.median(v)), float(v[k - 1]), float(v[n - k]), float(1 - 2 * tails[k - 1])


@dataclass
class LatencyStats:
    """Milliseconds per call at one batch size, pooled over all rounds; `per_round` holds each round's own figures, the
    basis of budget verdicts (median_interval). `noisy`: the rounds' medians differ by more than NOISY_SPREAD of their
    median (`round_spread`), i.e. the machine's speed changed while it was measured; `cv` is the spread of single
    calls, which every real workload has and which says nothing about the measurement. `busy_elsewhere_cores`: CPU
    other processes used meanwhile (cores, from /proc/stat; None on a remote device or for a too short measurement);
    `contended` when that left this process less than one core: a slow figure may then be the machine's, not the model's.

    With several rounds, mean_ms/p50_ms/p90_ms/p99_ms are the median of the rounds' own figures, the figure a budget is
    judged on (gate_figure), so every table shows the one figure the gate used; the figures of all calls pooled are in
    `pooled`. `usable_cores`: the cores this process may run on, for best_case_ms."""

    batch: int
    iterations: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    cv: float = field(metadata={"description": "spread of single calls (std / mean)"})
    throughput_per_s: float
    noisy: bool = field(default=False, metadata={"description": "the rounds' medians differ by over 10%: the machine's speed changed"})
    rounds: int = 1
    round_spread: float | None = None
    per_round: dict[str, list[float]] | None = None
    busy_elsewhere_cores: float | None = None
    contended: bool = False
    usable_cores: int | None = None
    pooled: dict[str, float] | None = None
    samples_ms: np.ndarray | None = field(default=None, repr=False, compare=False)  # not in the summary: latency_samples.json

    @classmethod
    def summary_fields(cls) -> list[Field]:
        """The fields of the summary (as_dict), which report.json's `latency` holds (results.report.Latency)."""
        return [f for f in fields(cls) if f.name != "samples_ms"]

    @classmethod
    def from_samples(cls, samples_ms: np.ndarray, batch: int) -> LatencyStats:
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
            samples_ms=s,
        )

    @classmethod
    def from_rounds(cls, rounds: list[np.ndarray], batch: int) -> LatencyStats:
        """Pooled figures of all rounds, plus each round's own and how far the rounds' medians drift apart."""
        pooled = cls.from_samples(np.concatenate([np.asarray(r, dtype=np.float64) for r in rounds]), batch)
        each = [cls.from_samples(r, batch) for r in rounds]
        pooled.rounds = len(rounds)
        pooled.per_round = {name: [round(getattr(r, name), 5) for r in each] for name in ROUND_FIGURES}
        if len(rounds) > 1:
            medians = np.asarray([r.p50_ms for r in each])
            center = float(np.median(medians))
            pooled.round_spread = float((medians.max() - medians.min()) / center) if center > 0 else 0.0
            pooled.noisy = pooled.round_spread > NOISY_SPREAD
            pooled.pooled = {name: getattr(pooled, name) for name in ROUND_FIGURES}
            for name in ROUND_FIGURES:  # one figure per model everywhere: the one the gate judges (gate_figure)
                setattr(pooled, name, float(np.median(pooled.per_round[name])))
        return pooled

    def best_case_ms(self) -> float:
        """The fastest call (min_ms), divided by the most other processes can have slowed a call down: with B cores
        busy elsewhere on U usable cores, a model thread gets at least U / (B + 1) of a core, so a call takes at most
        (B + 1) / U times its unhindered time. Load only adds time, so no budget figure (mean, p50, p90, p99) of an
        unhindered run can be below this: a best case over a limit is a model over its budget, busy machine or not.
        (min_ms alone would do for calls shorter than a scheduler slice, which mostly run uninterrupted; the division
        keeps it true for long calls, which are slowed in every call.)"""
        if not self.busy_elsewhere_cores or not self.usable_cores:
            return self.min_ms
        return self.min_ms / max(1.0, (self.busy_elsewhere_cores + 1) / self.usable_cores)

    def gate_figure(self, name: str) -> tuple[float, float, float, float]:
        """(median, low, high, coverage) of a figure across rounds; with one round, the figure itself."""
        values = (self.per_round or {}).get(name) or [getattr(self, name)]
        return median_interval(values)

    def as_dict(self) -> dict:
        """The summary only: the raw samples go to their own file (latency_samples.json)."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in self.summary_fields()}


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

    def save_engine(self, dest: Path) -> bool:
        """Writes the engine plan the runtime built for this model to `dest` (for deployment without a rebuild);
        False when the runtime builds no plan."""
        return False

    def round_samples(self, batch: int, warmup: int, per_round: int, rounds: int, duration_s: float | None = None) -> list[np.ndarray]:
        """Milliseconds of each call, per round, each round after its own warmup; a runner whose every `time` costs a
        process start on a device overrides this to measure all rounds in one go."""
        timing = {"duration_s": duration_s} if duration_s else {}
        return [self.time(batch, warmup, per_round, **timing).samples_ms for _ in range(rounds)]

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


def time_rounds(
    runner: Runner, batch: int, warmup: int, iterations: int, rounds: int = DEFAULT_ROUNDS, duration_s: float | None = None
) -> LatencyStats:
    """`iterations` calls (or `duration_s` seconds) in all, split into `rounds` rounds, each after its own `warmup`:
    a burst of load then spoils a round or two, not the verdict (Runner.round_samples)."""
    rounds = max(1, rounds)
    per_round = max(1, math.ceil(iterations / rounds))
    remote = bool(getattr(getattr(runner, "target", None), "ssh", None))
    before = None if remote else (cpu_busy_s(), own_cpu_s(), time.perf_counter())
    stats = LatencyStats.from_rounds(
        runner.round_samples(batch, warmup, per_round, rounds, duration_s / rounds if duration_s else None), batch
    )
    if before is not None and before[0] is not None and (busy := cpu_busy_s()) is not None:
        wall = time.perf_counter() - before[2]
        if wall >= MIN_LOAD_WINDOW_S:
            stats.busy_elsewhere_cores = max(0.0, (busy - before[0]) - (own_cpu_s() - before[1])) / wall
            usable = usable_cpus()
            stats.usable_cores = usable
            stats.contended = stats.busy_elsewhere_cores > usable - 1
    return stats


MIN_LOAD_WINDOW_S = 0.5  # /proc/stat counts in 10 ms ticks: a shorter window cannot tell load from rounding


def _read_first(path: str, prefix: str = "") -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip() if prefix else line.strip()
    except OSError:
        return None
    return None


def cpu_flags() -> set[str] | None:
    """This CPU's feature flags from /proc/cpuinfo (Linux); None where they cannot be read."""
    flags = _read_first("/proc/cpuinfo", "flags")
    return None if flags is None else set(flags.split())


def machine_facts() -> dict:
    """What a latency figure depends on besides the model: CPU model, usable cores, frequency governor."""
    usable = usable_cpus()
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
