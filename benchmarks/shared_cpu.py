"""A run beside a competing CPU-bound process: its time against its time alone, with the CPU threads chosen as the run
starts (`compute.threads` unset: the usable CPUs less the cores others keep busy) and with every CPU (`threads: 0`,
what torch takes by itself, the behaviour before).

    .venv/bin/python -m benchmarks.shared_cpu [--epochs 3] [--burners 1]

Each cell is one `edgedistill compress` of the demo recipe, shortened (fewer epochs, a smaller pool, no targets), in
a fresh process; the time is the select and distill stages' own (from run.log). Prints one markdown table with the
machine's load and CPU; the aim (issue #27): beside one CPU-bound process, at most 2.5x the time alone.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_once(threads: int | None, epochs: int, folder: Path) -> dict[str, float]:
    run_dir = folder / f"run-{threads}-{time.time_ns()}"
    sets = [
        f"distill.epochs={epochs}",
        "pool.1.count=20000",
        "select.per_class=1000",
        "targets=[]",
        "export.int8.enabled=false",
        "export.teacher=false",
    ]
    if threads is not None:
        sets.append(f"compute.threads={threads}")
    args = [sys.executable, "-m", "edgedistill", "compress", str(ROOT / "recipes" / "demo.yaml"), "--run-dir", str(run_dir), "--quiet"]
    for item in sets:
        args += ["--set", item]
    subprocess.run(args, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    log = (run_dir / "run.log").read_text()
    return {stage: float(m.group(1)) for stage in ("select", "distill") if (m := re.search(rf"{stage}: done in ([\d.]+) s", log))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--burners", type=int, default=1, help="competing CPU-bound processes")
    args = parser.parse_args()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for threads, label in ((None, "auto (default)"), (0, "every CPU (threads: 0)")):
            alone = run_once(threads, args.epochs, Path(tmp))
            burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.burners)]
            try:
                time.sleep(1.0)
                shared = run_once(threads, args.epochs, Path(tmp))
            finally:
                for b in burners:
                    b.kill()
                    b.wait()
            total_alone, total_shared = sum(alone.values()), sum(shared.values())
            rows.append((label, total_alone, total_shared, total_shared / total_alone))
    print(f"load average {os.getloadavg()[0]:.2f}; {cpu}, {os.cpu_count()} CPUs; {args.burners} competing process(es)")
    print("| CPU threads | alone s (select+distill) | beside the competitor s | ratio |")
    print("|---|---|---|---|")
    for label, a, s, ratio in rows:
        print(f"| {label} | {a:.1f} | {s:.1f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
