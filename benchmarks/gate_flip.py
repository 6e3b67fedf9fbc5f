"""How often the latency gate flips: the same model and budget, judged again and again, on an idle and a loaded CPU.

    .venv/bin/python -m benchmarks.gate_flip              # 20 gate runs per cell, about 6 minutes on 2 busy cores
    .venv/bin/python -m benchmarks.gate_flip --runs 5     # a quick look

One real model (torchvision ResNet-18 at 64 px, untrained weights, exported with edgedistill's exporter) on ONNX
Runtime's CPU provider with 1 intra-op thread. Its reference p99 is measured first, on the idle CPU, over many calls;
the budgets are 0.3x and 3x of it (far: a right gate always fails / passes them) and 0.9x and 1.1x (near: the
measurement decides). Each gate run opens a fresh session, as `edgedistill validate` does, and measures twice:
the old judgement (20 warm-up calls, one p99 over 200 calls, pass when it is within the limit) and the new one
(edgedistill.backends.base.time_rounds: 5 rounds of 40 calls, each after 10 warm-up calls, judged by
stages.validate.latency_verdict on the median of the rounds' p99 and its interval, a fail turned inconclusive
when other processes left the model less than a core). Both are judged against all four budgets. The loaded CPU
has one busy process per core, started and stopped by this script.

A wrong verdict is a far budget judged the wrong way: 3x failing or 0.3x passing. An inconclusive verdict is not
wrong, it says "retry on a quieter machine" (exit 5). Prints one markdown table.

    .venv/bin/python -m benchmarks.gate_flip --aim --runs 10   # the aim on a runner with two CPU-bound processes

`--aim` measures the gate's promise on a busy runner: with two other CPU-bound processes running (started and stopped
by this script), a model 5x over its p99 budget fails (exit 3) in 10 of 10 runs and a model 5x under passes (exit 0)
in 10 of 10. Each run is a real `edgedistill validate MODEL.onnx --budget p99_ms=LIMIT` in its own process, with the
default on_inconclusive (retry 1); the table gives the exit codes, the verdicts' reasons, the measured p99 and the
load average (os.getloadavg) before and after each case.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from edgedistill.backends.base import time_rounds
from edgedistill.backends.onnxruntime import OnnxRuntimeRunner
from edgedistill.stages.validate import latency_verdict

FACTORS = (0.3, 0.9, 1.1, 3.0)
FAR_EXPECTED = {0.3: "fail", 3.0: "pass"}
SIZE = 64


def export_model(folder: Path) -> Path:
    import torch
    import torchvision

    from edgedistill.config.schema import InputSpec
    from edgedistill.stages.export import export_onnx

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    spec = InputSpec(channels=3, size=SIZE, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    return export_onnx(model, spec, folder / "resnet18_96.onnx")


def _spin(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


class BusyCpu:
    """`processes` busy processes (default: one per core) for the duration of a `with` block."""

    def __init__(self, processes: int | None = None):
        self.count = processes or os.cpu_count() or 1

    def __enter__(self) -> BusyCpu:
        ctx = multiprocessing.get_context("spawn")
        self.stop = ctx.Event()
        self.procs = [ctx.Process(target=_spin, args=(self.stop,), daemon=True) for _ in range(self.count)]
        for p in self.procs:
            p.start()
        time.sleep(1.0)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for p in self.procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()


def old_verdict(limit: float, p99: float) -> str:
    """Before rounds: pass when one p99 over 200 calls is within the limit."""
    return "pass" if p99 <= limit else "fail"


def gate_runs(model: Path, limits: dict[float, float], runs: int) -> tuple[dict, dict]:
    """Verdicts per (method, factor), the measured p99s per method and the new gate's noisy flags, over `runs` fresh sessions."""
    verdicts: dict[tuple[str, float], Counter] = {(m, f): Counter() for m in ("old", "new") for f in limits}
    measured: dict[str, list] = {"old": [], "new": [], "noisy": [], "elsewhere": []}
    for i in range(runs):
        with OnnxRuntimeRunner(model, threads=1) as runner:
            order = ("old", "new") if i % 2 == 0 else ("new", "old")
            for method in order:
                if method == "old":
                    p99 = float(np.percentile(runner.time(1, 20, 200).samples_ms, 99))
                    measured["old"].append(p99)
                    for f, limit in limits.items():
                        verdicts[("old", f)][old_verdict(limit, p99)] += 1
                else:
                    stats = time_rounds(runner, 1, 10, 200, 5)
                    measured["new"].append(stats.gate_figure("p99_ms")[0])
                    measured["noisy"].append(stats.noisy)
                    measured["elsewhere"].append(stats.busy_elsewhere_cores)
                    for f, limit in limits.items():
                        verdicts[("new", f)][latency_verdict("p99_ms", limit, stats)["verdict"]] += 1
    return verdicts, measured


def validate_exit(model: Path, limit: float, out: Path) -> tuple[int, dict]:
    """One real `edgedistill validate` in its own process: (exit code, its p99 verdict from report.json)."""
    command = [sys.executable, "-m", "edgedistill", "validate", str(model), "--budget", f"p99_ms={limit:.6g}", "--out", str(out), "--quiet"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    try:
        verdict = json.loads((out / "report.json").read_text())["targets"][0]["verdicts"][0]
    except (OSError, KeyError, IndexError, json.JSONDecodeError):
        verdict = {"reason": f"no report ({done.stderr.strip().splitlines()[-1:]})"}
    return done.returncode, verdict


def aim(runs: int, burners: int) -> None:
    """A model 5x over its budget and one 5x under, `runs` gate runs each, with `burners` CPU-bound processes running."""
    started = time.time()
    load_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = export_model(Path(tmp))
        with OnnxRuntimeRunner(model, threads=1) as runner:
            reference = time_rounds(runner, 1, 20, 400, 5)  # idle: the gate's own figure, median of rounds
        ref_p99 = reference.p99_ms
        with BusyCpu(burners):
            # over: the fastest reference call / 5, so the model is 5x over even if the "idle" reference ran on a busy box
            cases = (("5x over its budget", reference.min_ms / 5, 3), ("5x under its budget", ref_p99 * 5, 0))
            for case, limit, expected in cases:
                load = os.getloadavg()[0]
                codes, reasons, measured = Counter(), Counter(), []
                for i in range(runs):
                    code, verdict = validate_exit(model, limit, Path(tmp) / f"{expected}-{i}")
                    print(
                        f"{case} run {i + 1}: exit {code}, {verdict.get('reason')}, load {os.getloadavg()[0]:.2f}",
                        file=sys.stderr,
                        flush=True,
                    )
                    codes[code] += 1
                    reasons[verdict.get("reason", "-")] += 1
                    if verdict.get("measured") is not None:
                        measured.append(verdict["measured"])
                rows.append((case, limit, expected, codes, reasons, measured, load, os.getloadavg()[0]))
    print(f"command: {shlex.join([Path(sys.executable).name, '-m', 'benchmarks.gate_flip', *sys.argv[1:]])}")
    print(f"uptime before: {load_before}")
    print(f"uptime after:  {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    print(
        f"model: torchvision resnet18 at {SIZE} px, untrained, ONNX Runtime CPU, 1 thread, batch 1, idle p99 {ref_p99:.3f} ms "
        f"(median of 5 rounds); {os.cpu_count()} cores, {burners} CPU-bound processes started by this script; {runs} runs per "
        f"case; {time.time() - started:.0f} s in all\n"
    )
    print("| case | p99 limit ms | expected exit | exits | reasons | measured p99 ms (min / median / max) | load avg before / after |")
    print("|---|--:|--:|---|---|---|---|")
    for case, limit, expected, codes, reasons, measured, before, after in rows:
        m = np.asarray(measured) if measured else np.asarray([np.nan])
        print(
            f"| {case} | {limit:.3f} | {expected} | {', '.join(f'{c}: {n}/{runs}' for c, n in sorted(codes.items()))} | "
            f"{', '.join(f'{r} {n}' for r, n in reasons.most_common())} | {m.min():.3f} / {np.median(m):.3f} / {m.max():.3f} | "
            f"{before:.2f} / {after:.2f} |"
        )
    met = all(codes[expected] == runs for _, _, expected, codes, *_ in rows)
    print(f"\naim {'met' if met else 'NOT met'}: {runs}/{runs} runs with the expected exit code in each case")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="gate runs per cell")
    parser.add_argument("--aim", action="store_true", help="5x over / 5x under a p99 budget with --burners CPU-bound processes running")
    parser.add_argument("--burners", type=int, default=2, help="CPU-bound processes for --aim")
    args = parser.parse_args()
    if args.aim:
        aim(args.runs, args.burners)
        return
    started = time.time()
    load_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        model = export_model(Path(tmp))
        with OnnxRuntimeRunner(model, threads=1) as runner:
            reference = runner.time(1, 50, 1000)
        ref_p99 = reference.p99_ms
        limits = {f: f * ref_p99 for f in FACTORS}
        results = {}
        for load in ("idle", "loaded"):
            if load == "loaded":
                with BusyCpu():
                    results[load] = gate_runs(model, limits, args.runs)
            else:
                results[load] = gate_runs(model, limits, args.runs)
    print(f"command: {shlex.join([Path(sys.executable).name, '-m', 'benchmarks.gate_flip', *sys.argv[1:]])}")
    print(f"uptime before: {load_before}")
    print(f"uptime after:  {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    print(
        f"model: torchvision resnet18 at {SIZE} px, untrained, ONNX Runtime CPU, 1 thread, batch 1; reference on the idle CPU "
        f"(1000 calls): p50 {reference.p50_ms:.2f} ms, p99 {ref_p99:.2f} ms; {os.cpu_count()} cores; {args.runs} gate runs per cell; "
        f"{time.time() - started:.0f} s in all\n"
    )
    print("| CPU | gate | p99 over the runs: min / median / max (ms) | runs flagged noisy | cores busy elsewhere (median) |")
    print("|---|---|---|--:|--:|")
    for load, (_, measured) in results.items():
        for method in ("old", "new"):
            v = np.asarray(measured[method])
            noisy = f"{sum(measured['noisy'])}/{len(v)}" if method == "new" else "-"
            elsewhere = [e for e in measured["elsewhere"] if e is not None]
            busy = f"{np.median(elsewhere):.1f}" if method == "new" and elsewhere else "-"
            print(f"| {load} | {method} | {v.min():.2f} / {np.median(v):.2f} / {v.max():.2f} | {noisy} | {busy} |")
    print()
    print("| CPU | budget (x ref p99) | limit ms | old: pass / fail | old: wrong | new: pass / fail / inconclusive | new: wrong |")
    print("|---|---|--:|---|--:|---|--:|")
    totals = Counter()
    for load, (verdicts, _) in results.items():
        for f in FACTORS:
            old, new = verdicts[("old", f)], verdicts[("new", f)]
            expected = FAR_EXPECTED.get(f)
            wrong_old = sum(n for v, n in old.items() if expected and v not in (expected, "inconclusive"))
            wrong_new = sum(n for v, n in new.items() if expected and v not in (expected, "inconclusive"))
            totals["old"] += wrong_old
            totals["new"] += wrong_new
            far = "far" if expected else "near"
            print(
                f"| {load} | {f:g}x ({far}) | {limits[f]:.2f} | {old['pass']} / {old['fail']} | {wrong_old if expected else '-'} | "
                f"{new['pass']} / {new['fail']} / {new['inconclusive']} | {wrong_new if expected else '-'} |"
            )
    print(f"\nwrong verdicts far from the budget: old {totals['old']}, new {totals['new']}")


if __name__ == "__main__":
    main()
