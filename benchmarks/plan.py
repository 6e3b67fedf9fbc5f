"""Benchmark of the plan stage (issue #28, docs/plan.md).

    python -m benchmarks.plan --budgets 0.05 0.15 0.4 --epochs 20 --out bench-plan

For each p99 budget (ms, ONNX Runtime CPU, 1 thread) on the digit bench (the demo recipe, `student: {arch: auto}`):
1. `plan` (timed: its cost), then every fitting candidate fully distilled and scored on the labeled MNIST hold-out: the
   regret is the best fitting candidate's accuracy minus the chosen one's (labels used here only, to judge the choice);
2. the planned p99 of each fitting candidate against the gated p99 of the distilled student (validate's figure);
3. the cost of `plan` as a share of `compress` (plan + distill + export + validate of the chosen one).
Prints one table per budget and writes OUT/plan-bench.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _recipe(out: Path, budget: float, epochs: int, extra: dict | None = None) -> Path:
    data = yaml.safe_load((ROOT / "recipes" / "demo.yaml").read_text())
    data["teacher"]["weights"] = str(ROOT / "teachers" / "mnist_lenet5.safetensors")
    data["distill"]["epochs"] = epochs
    data["student"] = {"arch": "auto", "plan": {"cache": str(out / "latency-cache.json")}} | (extra or {})
    data["targets"] = [{"name": "cpu", "runtime": "onnxruntime", "threads": 1, "also_time": [], "budget": {"p99_ms": budget}}]
    path = out / f"budget-{budget:g}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _uptime() -> str:
    return Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"


def main() -> None:
    import edgedistill
    from edgedistill.backends.base import machine_facts
    from edgedistill.errors import EdgeDistillError

    parser = argparse.ArgumentParser()
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.05, 0.15, 0.4])
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--out", type=Path, default=Path("bench-plan"))
    parser.add_argument("--max-candidates", type=int, default=4, help="fully distil at most this many fitting candidates")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cpu = machine_facts()["cpu_model"]
    results = []
    for budget in args.budgets:
        recipe = _recipe(args.out, budget, args.epochs)
        run = args.out / f"run-{budget:g}"
        load0, t0 = _uptime(), time.perf_counter()
        cmd = [str(ROOT / ".venv" / "bin" / "edgedistill"), "plan", str(recipe), "--run-dir", str(run), "--quiet"]
        code = subprocess.run(cmd, check=False).returncode
        plan_s = time.perf_counter() - t0
        if code != 0:
            results.append({"budget": budget, "plan_exit": code, "plan_s": plan_s})
            print(f"budget {budget:g} ms: plan exit {code} (no fit)")
            continue
        plan = json.loads((run / "plan.json").read_text())
        fitting = [r for r in plan["candidates"] if r["fits"] == "fit"]
        fitting = sorted(fitting, key=lambda r: -r["parameters"])[: args.max_candidates]
        t1 = time.perf_counter()
        try:
            chosen_report = edgedistill.compress(recipe, run_dir=run)
        except EdgeDistillError as exc:
            chosen_report = exc.report
        compress_s = time.perf_counter() - t1 + plan_s
        accuracy = {}
        gated = {}
        for row in fitting:
            single = _recipe(args.out, budget, args.epochs)
            data = yaml.safe_load(single.read_text())
            data["student"] = {"arch": row["arch"]}
            single = args.out / f"budget-{budget:g}-{row['arch']}.yaml"
            single.write_text(yaml.safe_dump(data, sort_keys=False))
            try:
                report = edgedistill.compress(single, run_dir=args.out / f"run-{budget:g}-{row['arch']}")
            except EdgeDistillError as exc:
                report = exc.report
            accuracy[row["arch"]] = report["student"]["accuracy"]
            gated[row["arch"]] = report["targets"][0]["latency"]["p99_ms"]
        chosen = plan["chosen"]["arch"]
        best = max(accuracy, key=accuracy.get)
        entry = {
            "budget": budget,
            "cpu": cpu,
            "load_at_start": load0,
            "load_at_end": _uptime(),
            "plan_s": plan_s,
            "compress_s": compress_s,
            "plan_share": plan_s / compress_s,
            "chosen": chosen,
            "chosen_accuracy": chosen_report["student"]["accuracy"] if chosen_report else None,
            "best": best,
            "best_accuracy": accuracy[best],
            "regret_points": 100 * (accuracy[best] - accuracy.get(chosen, chosen_report["student"]["accuracy"])),
            "planned_vs_gated_p99": {r["arch"]: [r["targets"][0]["latency"]["p99_ms"], gated.get(r["arch"])] for r in fitting},
            "accuracy": accuracy,
        }
        results.append(entry)
        print(json.dumps(entry, indent=1))
    (args.out / "plan-bench.json").write_text(json.dumps({"machine": platform.node(), "cpu": cpu, "results": results}, indent=1))


if __name__ == "__main__":
    main()
