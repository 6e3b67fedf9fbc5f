"""Benchmark of the plan stage (issue #28, docs/plan.md "Benchmark"): regret, cost and latency honesty of the choice.

    python -m benchmarks.plan --budgets 0.05 0.15 0.4 --epochs 80 --seeds 0 1 2 --deadline 22:45 --out bench-plan

Digit bench: the demo recipe with `student: {arch: auto}` and one ONNX Runtime CPU target (1 thread, p99 budget B).
For each seed and each budget:
1. `edgedistill plan` in one run directory per seed (OUT/seed-S/plan; its plan.json copied to OUT/seed-S/plan-B.json):
   which candidates fit, which one is chosen, the plan stage's seconds (run.log "plan: done in") and the probe's
   (plan.json). A later budget re-plans there: the selection is up to date and probes already made are reused
   (plan_probe.json), so the first budget that probes pays the cold plan and later budgets only time and probe new ones;
2. every fitting candidate is fully distilled *once per seed*, in one run directory per (seed, arch) (OUT/seed-S/arch-A)
   whose recipe differs between budgets only in `targets`: on a later budget `compress` skips select, distill and
   export ("distill: up to date, skipped", checked) and only validates again, at the new budget. Each candidate is
   scored on mnist-train, B1's development set (labels used here only, to judge the choice; the seed-0 run
   of 2026-12-07 scored on mnist-heldout, B1's reporting set): oracle = best fitting candidate,
   regret = oracle accuracy minus the chosen one's, in points; the chosen student's accuracy and gate verdict are those
   of its own per-arch run (same recipe, same seed);
3. cost: the full `compress` of the chosen student = plan stage seconds + that per-arch run's select, distill and
   export seconds (its first run) + its validate seconds at this budget (run.log "done in" lines); plan share = plan / that;
4. honesty: each fitting candidate's planned p99 (untrained, during `plan`) against the gated p99 of the distilled
   student at the same budget (validate), and their ratio.
The chosen candidate is distilled first, then the others, cheapest (MFLOPs) first. `--deadline HH:MM` (local time):
no plan and no new distillation starts after it; what finished is written. OUT/plan-bench.json is rewritten after every
step, so an interrupted run is still a result; tables are printed at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

from edgedistill.backends.base import machine_facts
from edgedistill.errors import BadInput
from edgedistill.results.report import Report

ROOT = Path(__file__).resolve().parents[1]
EXE = str(ROOT / ".venv" / "bin" / "edgedistill")
DONE = re.compile(r"INFO (\w+): done in ([0-9.]+) s")
SKIPPED = re.compile(r"(\w+): up to date, skipped")


def _recipe(path: Path, out: Path, budget: float, epochs: int, seed: int, student: dict) -> Path:
    data = yaml.safe_load((ROOT / "recipes" / "demo.yaml").read_text())
    data["seed"] = seed
    data["teacher"]["weights"] = str(ROOT / "teachers" / "mnist_lenet5.safetensors")
    data["distill"]["epochs"] = epochs
    data["student"] = student
    data["eval"] = {"labeled": "builtin:mnist-train"}  # B1's development set: mnist-heldout reports, pre-registered
    data["targets"] = [{"name": "cpu", "runtime": "onnxruntime", "threads": 1, "also_time": [], "budget": {"p99_ms": budget}}]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _load() -> str:
    return Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return f"load {_load()}"


def _machine() -> dict:
    return {"time": time.strftime("%H:%M:%S"), "uptime": _uptime(), "load": _load(), "cpu": machine_facts()["cpu_model"] or "?"}


def _run(cmd: list[str], run_dir: Path, log: Path) -> dict:
    """Runs an edgedistill command, its output to `log`; returns exit code, wall seconds, the stage "done in" seconds
    this invocation logged to run_dir/run.log, and the stages it reported up to date."""
    run_log = run_dir / "run.log"
    before = run_log.stat().st_size if run_log.exists() else 0
    t0 = time.perf_counter()
    with log.open("w") as f:
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False).returncode
    wall = time.perf_counter() - t0
    new = run_log.read_text(errors="replace")[before:] if run_log.exists() else ""
    output = log.read_text(errors="replace")
    return {
        "exit": code,
        "wall_s": round(wall, 1),
        "stage_s": {m.group(1): float(m.group(2)) for m in DONE.finditer(new)},
        "skipped": SKIPPED.findall(output),
        "log": str(log),
    }


def _p99(report_target: dict | None) -> float | None:
    return ((report_target or {}).get("latency") or {}).get("p99_ms")


def _verdict(report_target: dict | None) -> str | None:
    for v in (report_target or {}).get("verdicts") or []:
        if v.get("budget") == "p99_ms":
            return v.get("verdict")
    return None


def _past(deadline: dt.datetime | None) -> bool:
    return deadline is not None and dt.datetime.now() >= deadline


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _f(x: float | None, spec: str = ".4f") -> str:
    return "-" if x is None else format(x, spec)


def summarize(entry: dict, archs: dict) -> None:
    """Fills the entry's oracle, regret, cost and planned-vs-gated from the per-arch runs finished so far."""
    budget = entry["budget"]
    fitting = entry["fitting"]
    rows = {}
    for name in fitting:
        run = archs.get(name, {})
        gate = run.get("budgets", {}).get(f"{budget:g}")
        rows[name] = {
            "accuracy": run.get("accuracy"),
            "planned_p99_ms": entry["planned_p99_ms"].get(name),
            "gated_p99_ms": gate and gate["gated_p99_ms"],
            "gate_verdict": gate and gate["verdict"],
        }
        p, g = rows[name]["planned_p99_ms"], rows[name]["gated_p99_ms"]
        rows[name]["gated_over_planned"] = None if not p or g is None else round(g / p, 3)
    entry["candidates"] = rows
    scored = {n: r["accuracy"] for n, r in rows.items() if r["accuracy"] is not None}
    entry["distilled"] = sorted(scored)
    entry["complete"] = len(scored) == len(fitting)
    chosen = entry.get("chosen")
    if chosen is None:
        return
    entry["chosen_accuracy"] = scored.get(chosen)
    entry["chosen_gate_verdict"] = rows[chosen]["gate_verdict"] if chosen in rows else None
    entry["chosen_passed_gate"] = None if entry["chosen_gate_verdict"] is None else entry["chosen_gate_verdict"] == "pass"
    if scored:
        oracle = max(scored, key=scored.get)
        entry["oracle"], entry["oracle_accuracy"] = oracle, scored[oracle]
        if entry["chosen_accuracy"] is not None:
            entry["regret_points"] = round(100 * (scored[oracle] - entry["chosen_accuracy"]), 2)
    run = archs.get(chosen, {})
    gate = run.get("budgets", {}).get(f"{budget:g}")
    if run.get("first_stage_s") and gate and entry.get("plan_s") is not None:
        first = run["first_stage_s"]
        parts = {
            "plan": entry["plan_s"],
            "select": first.get("select", 0.0),
            "distill": first.get("distill", 0.0),
            "export": first.get("export", 0.0),
            "validate": gate["stage_s"].get("validate", 0.0),
        }
        entry["compress_parts_s"] = parts
        entry["compress_s"] = round(sum(parts.values()), 1)
        entry["plan_share"] = round(parts["plan"] / entry["compress_s"], 4)


def print_tables(results: list[dict]) -> None:
    for e in results:
        print(f"\n## seed {e['seed']}, budget p99 {e['budget']:g} ms")
        print(f"start: {e['machine_start']['time']} {e['machine_start']['uptime']} | {e['machine_start']['cpu']}")
        end = e.get("machine_end") or {}
        print(f"end:   {end.get('time', '-')} {end.get('uptime', '-')}")
        if e.get("skipped"):
            print(f"not run: {e['skipped']}")
            continue
        if e.get("chosen") is None:
            print(f"plan exit {e.get('plan_exit')}: no fit ({len(e['fitting'])} fitting)")
            continue
        print(
            f"fitting ({len(e['fitting'])} of {e['candidates_total']}): {', '.join(e['fitting'])}; "
            f"inconclusive: {', '.join(e['inconclusive']) or 'none'}"
        )
        print(
            f"chosen {e['chosen']} {_pct(e.get('chosen_accuracy'))}, gate {e.get('chosen_gate_verdict') or '-'} | "
            f"oracle {e.get('oracle', '-')} {_pct(e.get('oracle_accuracy'))} over {len(e['distilled'])} of "
            f"{len(e['fitting'])} fitting{'' if e['complete'] else ' (INCOMPLETE)'} | regret {_f(e.get('regret_points'), '.2f')} points"
        )
        print(
            f"plan stage {_f(e.get('plan_s'), '.1f')} s (probe {_f(e.get('probe_s'), '.1f')} s; `edgedistill plan` wall "
            f"{_f(e.get('plan_wall_s'), '.1f')} s incl. start-up and select) | compress of the chosen "
            f"{_f(e.get('compress_s'), '.1f')} s {e.get('compress_parts_s', '')} | plan share {_pct(e.get('plan_share'))}"
        )
        print("| candidate | accuracy | planned p99 ms | gated p99 ms | gated/planned | gate |")
        print("|---|---|---|---|---|---|")
        for name, r in e["candidates"].items():
            mark = " (chosen)" if name == e["chosen"] else ""
            print(
                f"| {name}{mark} | {_pct(r['accuracy'])} | {_f(r['planned_p99_ms'])} | {_f(r['gated_p99_ms'])} | "
                f"{_f(r['gated_over_planned'], '.3f')} | {r['gate_verdict'] or '-'} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.05, 0.15, 0.4])
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="recipe `seed`; each seed distills every candidate again")
    parser.add_argument("--out", type=Path, default=Path("bench-plan"))
    parser.add_argument(
        "--max-candidates", type=int, default=None, help="fully distill at most this many fitting candidates per budget (default: all)"
    )
    parser.add_argument("--deadline", default=None, help="HH:MM local time: no plan and no new distillation starts after it")
    args = parser.parse_args()
    out = args.out.resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    deadline = None
    if args.deadline:
        hh, mm = (int(x) for x in args.deadline.split(":"))
        deadline = dt.datetime.now().replace(hour=hh, minute=mm, second=0, microsecond=0)
    started = _machine()
    print(
        f"plan bench: budgets {args.budgets}, {args.epochs} epochs, seeds {args.seeds}, deadline {args.deadline}; "
        f"{started['cpu']}; {started['uptime']}",
        flush=True,
    )
    results: list[dict] = []
    per_seed: dict[str, dict] = {}
    doc = {
        "machine": platform.node(),
        "cpu": started["cpu"],
        "command": " ".join(sys.argv),
        "epochs": args.epochs,
        "seeds": args.seeds,
        "budgets": args.budgets,
        "deadline": args.deadline,
        "started": started,
        "results": results,
        "archs": per_seed,
    }

    def save() -> None:
        (out / "plan-bench.json").write_text(json.dumps(doc, indent=1))

    for seed in args.seeds:
        sdir = out / f"seed-{seed}"
        sdir.mkdir(exist_ok=True)
        archs: dict[str, dict] = per_seed.setdefault(str(seed), {})
        for budget in args.budgets:
            entry: dict = {"seed": seed, "budget": budget, "machine_start": _machine(), "fitting": [], "planned_p99_ms": {}}
            results.append(entry)
            print(f"\n== seed {seed}, budget {budget:g} ms: {entry['machine_start']['uptime']}", flush=True)
            if _past(deadline):
                entry["skipped"] = f"deadline {args.deadline} passed before its plan"
                entry["machine_end"] = _machine()
                save()
                continue
            # one plan run directory per seed: a later budget re-plans (targets changed) but reuses the selection and
            # the probes already made (plan_probe.json), as a user re-planning after a budget change would
            run = sdir / "plan"
            recipe = _recipe(
                sdir / "plan.yaml", out, budget, args.epochs, seed, {"arch": "auto", "plan": {"cache": str(out / "latency-cache.json")}}
            )
            (run / "plan.json").unlink(missing_ok=True)
            ran = _run([EXE, "plan", str(recipe), "--run-dir", str(run)], run, out / "logs" / f"seed-{seed}-plan-{budget:g}.log")
            entry["plan_exit"], entry["plan_wall_s"] = ran["exit"], ran["wall_s"]
            try:
                plan = json.loads((run / "plan.json").read_text())
                (sdir / f"plan-{budget:g}.json").write_text(json.dumps(plan, indent=1))
            except (OSError, ValueError):
                plan = None
            if plan is None:
                entry["machine_end"] = _machine()
                print(f"plan failed (exit {ran['exit']}), see {ran['log']}", flush=True)
                save()
                continue
            entry["plan_s"] = ran["stage_s"].get("plan", plan["seconds"].get("total"))
            entry["plan_seconds"] = plan["seconds"]
            entry["probe_s"] = plan["seconds"].get("probe")
            entry["timing_s"] = plan["seconds"].get("timing")
            entry["candidates_total"] = len(plan["candidates"])
            rows = {r["arch"]: r for r in plan["candidates"]}
            fitting = [r for r in plan["candidates"] if r["fits"] == "fit"]
            entry["fitting"] = [r["arch"] for r in fitting]
            entry["inconclusive"] = [r["arch"] for r in plan["candidates"] if r["fits"] == "inconclusive"]
            entry["planned_p99_ms"] = {r["arch"]: _p99(r["targets"][0]) for r in plan["candidates"]}
            entry["planned_p99_interval"] = {
                r["arch"]: (r["targets"][0].get("latency") or {}).get("p99_interval") for r in plan["candidates"]
            }
            entry["chosen"] = (plan.get("chosen") or {}).get("arch")
            entry["why"] = plan.get("why")
            print(
                f"plan: exit {ran['exit']}, stage {entry['plan_s']} s, wall {ran['wall_s']} s; fitting {entry['fitting']}; "
                f"chosen {entry['chosen']}",
                flush=True,
            )
            # the chosen first, then the rest cheapest first (most of a budget finished before a deadline)
            order = sorted(fitting, key=lambda r: (r["arch"] != entry["chosen"], r["mflops"] or 0, r["parameters"]))
            if args.max_candidates is not None:
                order = order[: args.max_candidates]
            for row in order:
                name = row["arch"]
                known = archs.setdefault(name, {"budgets": {}})
                if known.get("failed"):
                    continue
                fresh = "first_stage_s" not in known
                if fresh and _past(deadline):
                    entry.setdefault("not_distilled", []).append(name)
                    print(f"{name}: deadline {args.deadline} passed, not distilled", flush=True)
                    continue
                student = {"arch": name} | ({"feature_layer": row["feature_layer"]} if row.get("feature_layer") else {})
                arun = sdir / f"arch-{name}"
                recipe = _recipe(sdir / f"arch-{name}.yaml", out, budget, args.epochs, seed, student)
                ran = _run(
                    [EXE, "compress", str(recipe), "--run-dir", str(arun)], arun, out / "logs" / f"seed-{seed}-{name}-{budget:g}.log"
                )
                try:  # the project's one report reader (validated, any schema version), as a dict
                    report = Report.read(arun / "report.json").as_json()
                except BadInput:
                    report = None
                if report is None or not report.get("targets"):
                    known["failed"] = f"exit {ran['exit']}, no report; see {ran['log']}"
                    print(f"{name}: {known['failed']}", flush=True)
                    save()
                    continue
                target = report["targets"][0]
                if fresh:
                    known["first_stage_s"] = ran["stage_s"]
                    known["first_budget"] = budget
                    known["accuracy"] = report["student"]["accuracy"]
                    known["parameters"] = report["student"].get("parameters")
                elif "distill" not in ran["skipped"]:
                    known.setdefault("warnings", []).append(f"budget {budget:g}: distill was not reported up to date: {ran['skipped']}")
                known["budgets"][f"{budget:g}"] = {
                    "exit": ran["exit"],
                    "wall_s": ran["wall_s"],
                    "stage_s": ran["stage_s"],
                    "skipped": ran["skipped"],
                    "accuracy": report["student"]["accuracy"],
                    "gated_p99_ms": _p99(target),
                    "gated_p99_interval": next(
                        (v.get("interval") for v in target.get("verdicts") or [] if v.get("budget") == "p99_ms"), None
                    ),
                    "verdict": _verdict(target),
                    "planned_p99_ms": _p99(rows[name]["targets"][0]),
                }
                print(
                    f"{name}: exit {ran['exit']}, accuracy {_pct(report['student']['accuracy'])}, gated p99 {_f(_p99(target))} "
                    f"({_verdict(target)}), stages {ran['stage_s']}, skipped {ran['skipped']}, wall {ran['wall_s']} s",
                    flush=True,
                )
                summarize(entry, archs)
                save()
            summarize(entry, archs)
            entry["machine_end"] = _machine()
            save()
    doc["finished"] = _machine()
    save()
    print_tables(results)
    print(f"\nwritten: {out / 'plan-bench.json'}")


if __name__ == "__main__":
    main()
