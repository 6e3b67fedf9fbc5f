"""Rebuild the reporting runs made before pre-registration existed, from the committed results, into the runs list.

    .venv/bin/python scripts/reporting_runs_history.py [--until COMMIT] [--dry-run]

Every benchmarks.method command that the committed record holds, up to COMMIT (default: the last commit before
pre-registration, e2696b2), becomes one entry of benchmarks/results/reporting-runs.json per bench it ran: the
"Commands" lines of each version of docs/results.md up to 2026-12-02 13:03 UTC (the raw files of those runs were lost
with runs/; their page is docs/results-until-2026-12-02.md), then the `command` field of each version of
benchmarks/results/method-full/*.json. An entry is recorded in the first commit that holds its command. Where a result
file holds the command as the last one that wrote it, its `finished` time and its rows' accuracies for that seed are
the entry's; otherwise they are not recorded, and the entry names the page that shows the result.

Known limits, written into the entries' notes: a command repeated with the same arguments is recorded once by
benchmarks.method (its command list is deduplicated), so such a repeat cannot be seen; the method's commit was not
recorded by any of these runs; a run that left no result (B3's first run, whose MobileNetV3 student sat at 10% in
eval mode) is added by hand from docs/method.md. Entries made by benchmarks.method since pre-registration (those with
a `prereg`) are kept as they are, after the rebuilt ones.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "benchmarks" / "results" / "reporting-runs.json"
UNTIL = "e2696b2"  # HEAD when pre-registration was added: every reporting run before it is in the record up to here
LOST_PAGE = "docs/results-until-2026-12-02.md"
FIRST_JSON = "338631c"  # the first commit with raw result files; before it, docs/results.md is the record
SECTION = re.compile(r"^## (\S+) — `--(quick|full)`")
COMMANDS = re.compile(r"^Commands?: `(.*?)` \(")


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout


def commits(until: str) -> list[tuple[str, str]]:
    """(full hash, 'YYYY-MM-DD HH:MM UTC') of every commit up to `until` touching the record, oldest first."""
    out = git("log", "--reverse", "--date=format-local:%Y-%m-%d %H:%M UTC", "--format=%H %ad", until, "--",
              "docs/results.md", "benchmarks/results/method-full")  # fmt: skip
    return [(line[:40], line[41:]) for line in out.splitlines() if line.strip()]


def files_at(commit: str) -> list[str]:
    out = git("ls-tree", "--name-only", commit, "benchmarks/results/method-full/")
    return [p for p in out.splitlines() if p.endswith(".json")]


def parse(command: str) -> dict:
    """bench(es), mode, seeds and rows of a benchmarks.method command (old `--seeds N` included)."""
    tokens = shlex.split(command)
    args = tokens[tokens.index("benchmarks.method") + 1 :]

    def value(flag: str) -> str | None:
        return args[args.index(flag) + 1] if flag in args else None

    mode = "full" if "--full" in args else "quick"
    if value("--seed"):
        seeds = [int(s) for s in value("--seed").split(",")]
    elif value("--seeds"):
        seeds = list(range(int(value("--seeds"))))
    else:
        seeds = [0, 1, 2] if mode == "full" else [0]
    rows = value("--rows")
    return {
        "benches": (value("--bench") or "B1,B1-hard,B2").split(","),
        "mode": mode,
        "seeds": seeds,
        "rows": rows.split(",") if rows else "all",
        "args": args,
    }


def rebuild(until: str) -> list[dict]:
    lost = {c for line in (ROOT / LOST_PAGE).read_text().splitlines() if (m := COMMANDS.match(line)) for c in m.group(1).split("; ")}
    seen: set[tuple[str, str]] = set()
    entries: list[dict] = []
    json_era = False
    for commit, date in commits(until):
        json_era = json_era or commit.startswith(FIRST_JSON)
        found: list[tuple[str, str, dict | None, int | None, bool]] = []  # command, bench, file data, seed, last in file
        if json_era:
            for path in files_at(commit):
                data = json.loads(git("show", f"{commit}:{path}"))
                cmds = data["command"].split("; ")
                for i, c in enumerate(cmds):
                    found.append((c, data["bench"], data, data["seeds"][0], i == len(cmds) - 1))
        else:
            bench = None
            for line in git("show", f"{commit}:docs/results.md").splitlines():
                if m := SECTION.match(line):
                    bench = m.group(1)
                elif (m := COMMANDS.match(line)) and bench:
                    found += [(c, bench, None, None, False) for c in m.group(1).split("; ")]
        for c, bench, data, seed, last in found:
            if (c, bench) in seen:
                continue
            seen.add((c, bench))
            p = parse(c)
            entry = {
                "id": 0,
                "bench": bench,
                "mode": p["mode"],
                "command": c,
                "args": p["args"],
                "seeds": [seed] if seed is not None else p["seeds"],
                "rows": p["rows"],
                "status": "finished",
                "started": None,
                "finished": None,
                "method_commit": None,
                "head": None,
                "prereg": None,
                "again": None,
                "recorded_in": commit,
                "recorded_at": date,
                "results": {},
                "files": [],
                "note": None,
            }
            if data is not None:
                entry["files"] = [f"benchmarks/results/method-full/{bench}.seed{seed}.json"]
                rows = data["rows"] if p["rows"] == "all" else {k: data["rows"][k] for k in p["rows"] if k in data["rows"]}
                if last:
                    entry["finished"] = data["finished"]
                for k, row in rows.items():
                    accs = [r["accuracy"] for r in row["runs"] if r.get("seed") == seed]
                    if accs and k != "teacher":
                        entry["results"][k] = {str(seed): accs[-1]}
            elif c in lost:
                entry["files"] = [LOST_PAGE]
                entry["note"] = "raw results lost with runs/; the rows are on the page"
            else:
                entry["files"] = [f"docs/results.md at {commit[:7]}"]
                entry["note"] = "superseded: later runs replaced its rows on the page"
            entries.append(entry)
    # B3's first run left no result in the record; docs/method.md has said since da9ba7b that it sat at 10%.
    first_b3 = next(i for i, e in enumerate(entries) if e["bench"] == "B3")
    entries.insert(
        first_b3,
        {
            **{k: None for k in entries[first_b3]},
            "bench": "B3",
            "mode": "not recorded",
            "command": None,
            "args": None,
            "seeds": [],
            "rows": "not recorded",
            "status": "bad",
            "recorded_in": git("log", "-1", "--format=%H", "da9ba7b").strip(),
            "recorded_at": "2026-12-02 03:33 UTC",
            "results": {},
            "files": ["docs/method.md (the training row of the parts table)"],
            "note": "B3's first run: the MobileNetV3 student answered one class in eval mode (10%) until BatchNorm "
            "statistics were recalibrated after each epoch; no result file or command was kept",
        },
    )
    for i, e in enumerate(entries, 1):
        e["id"] = i
    return entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--until", default=UNTIL)
    parser.add_argument("--dry-run", action="store_true", help="print the rebuilt entries instead of writing them")
    args = parser.parse_args()
    history = rebuild(args.until)
    if args.dry_run:
        json.dump(history, sys.stdout, indent=1)
        return
    kept = [r for r in (json.loads(RUNS.read_text()) if RUNS.is_file() else []) if r.get("prereg")]
    if kept and min(r["id"] for r in kept) <= len(history):
        sys.exit(f"the pre-registered entries' ids start at {min(r['id'] for r in kept)}, inside the {len(history)} rebuilt ones")
    RUNS.parent.mkdir(parents=True, exist_ok=True)
    RUNS.write_text(json.dumps(history + kept, indent=1) + "\n")
    print(f"{RUNS.relative_to(ROOT)}: {len(history)} runs rebuilt from the record up to {args.until}, {len(kept)} pre-registered kept")


if __name__ == "__main__":
    main()
