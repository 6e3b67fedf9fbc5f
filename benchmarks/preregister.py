"""Pre-register a reporting run: what will be run, on which method, committed before it runs.

    .venv/bin/python -m benchmarks.preregister B1 \
        --command ".venv/bin/python -m benchmarks.method --full --bench B1 --seed 0 --rows teacher,wd_005"

writes benchmarks/results/prereg-B1-<date>.json: the bench, its definition as benchmarks.method sees it (the bench's
entry, its rows' edits, the budgets, the recipe every row starts from and the teacher file's hash), the commit of the
method (the last commit touching edgedistill/), HEAD, the command and the date; then it prints the git commands that
commit it. BENCH may list several benches, comma-separated: one file each.

benchmarks.method runs a reporting bench only when HEAD holds such a file for that bench whose method commit is the
last commit touching edgedistill/ now (with edgedistill/ unchanged since), whose command is the one being run (the
interpreter aside) and whose definition is today's. A reporting bench is run once per method commit and command: a
second run is refused unless `--again REASON` says why, and is listed like the first. Development benches
(`benchmarks.method --development`, `benchmarks.develop`) need no pre-registration.

Every reporting run is appended to benchmarks/results/reporting-runs.json when it starts and completed when it ends
(finished, or stopped by an error), good or bad; the entries before pre-registration existed were rebuilt from the
committed results by scripts/reporting_runs_history.py. docs/method.md's "Reporting runs" table is rendered from
that list (`benchmarks.method --render-only` rewrites it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS_REL = "benchmarks/results"  # pre-registrations and the runs list, relative to the repository root
RUNS_NAME = "reporting-runs.json"
METHOD_DIR = "edgedistill"  # the method: its commit is the last commit touching this folder
DOC_START = "<!-- reporting-runs:start (rendered from benchmarks/results/reporting-runs.json; do not edit by hand) -->"
DOC_END = "<!-- reporting-runs:end -->"


class Refused(Exception):
    """A reporting run that may not start, with the reason and what to do."""


# ---------------------------------------------------------------------------------------------- git


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise Refused(f"git {' '.join(args)} failed in {repo}: {done.stderr.strip()}")
    return done.stdout.strip()


def method_commit(repo: Path = ROOT) -> str:
    """The commit of the method: the last commit that touched edgedistill/."""
    commit = git(repo, "log", "-1", "--format=%H", "--", METHOD_DIR)
    if not commit:
        raise Refused(f"no commit touches {METHOD_DIR}/ in {repo}")
    return commit


def method_changes(repo: Path = ROOT) -> list[str]:
    """Uncommitted changes under edgedistill/ (`git status --porcelain` lines; untracked files included)."""
    out = git(repo, "status", "--porcelain", "--untracked-files=all", "--", METHOD_DIR)
    return [line for line in out.splitlines() if line.strip()]


def require_committed_method(repo: Path) -> str:
    changes = method_changes(repo)
    if changes:
        shown = "\n  ".join(changes[:10]) + ("\n  ..." if len(changes) > 10 else "")
        raise Refused(
            f"{METHOD_DIR}/ has uncommitted changes, so the method measured would not be any commit:\n  {shown}\n"
            f"commit them (or set them aside) first; a reporting run measures a committed method"
        )
    return method_commit(repo)


# ---------------------------------------------------------------------------------------------- commands


def method_args(command: str | list[str]) -> list[str]:
    """The arguments of a benchmarks.method command, without the interpreter and without `--again REASON` (which
    repeats a run and is recorded in the runs list instead): `.venv/bin/python -m benchmarks.method --full --bench B1`
    and `python -m benchmarks.method --full --bench B1` are the same command."""
    tokens = shlex.split(command) if isinstance(command, str) else list(command)
    start = None
    for i, token in enumerate(tokens):
        if token == "benchmarks.method" and i > 0 and tokens[i - 1] == "-m":
            start = i + 1
            break
        if token.endswith("benchmarks/method.py"):
            start = i + 1
            break
    if start is None:
        raise Refused(f"not a benchmarks.method command: {command!r} (expected '... -m benchmarks.method ARGS')")
    args, out, skip = tokens[start:], [], False
    for token in args:
        if skip:
            skip = False
        elif token == "--again":
            skip = True
        elif not token.startswith("--again="):
            out.append(token)
    return out


def benches_of(args: list[str], default: str) -> list[str]:
    """The benches a benchmarks.method argument list runs (`--bench a,b` or `--bench=a,b`; else `default`)."""
    value = default
    for i, token in enumerate(args):
        if token == "--bench" and i + 1 < len(args):
            value = args[i + 1]
        elif token.startswith("--bench="):
            value = token.split("=", 1)[1]
    return [b for b in value.split(",") if b]


# ---------------------------------------------------------------------------------------------- definitions


def _json(value):
    return json.loads(json.dumps(value))


def definition(bench: str) -> dict:
    """The bench as benchmarks.method will run it: its entry, the edits of its rows, the budgets and the recipe every
    row starts from (seed 0, as a dict), and the sha256 of its teacher's weights."""
    from . import method  # imported here: it loads the library, which the checks themselves never need

    cfg = method.BENCHES[bench]
    keys = list(method.ROWS) if cfg["rows"] == "all" else list(cfg["rows"])
    recipe = method.make_recipe(bench, 0, None)
    weights = recipe.teacher.weights
    teacher = None
    if weights:
        path = (method.RECIPES / weights).resolve()
        teacher = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else f"missing: {weights}"
    return _json(
        {
            "bench": bench,
            "entry": cfg,
            "rows": {k: {"label": method.ROWS[k][0], "edits": method.ROWS[k][1], "equal_time": method.EQUAL_TIME.get(k)} for k in keys},
            "budget": {
                "epochs": method.BENCH_EPOCHS,
                "batch_size": method.BENCH_BATCH,
                "lr": method.BENCH_LR,
                "weight_decay": method.BENCH_WD,
                "modes": method.MODES,
            },
            "recipe": recipe.model_dump(mode="json"),
            "teacher_sha256": teacher,
        }
    )


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differences(x, y, f"{prefix}{key}.")
        elif x != y:
            out.append(f"{prefix}{key}")
    return out


# ---------------------------------------------------------------------------------------------- pre-registrations


def prereg_name(bench: str, date: str, n: int = 1) -> str:
    return f"prereg-{bench}-{date}.json" if n == 1 else f"prereg-{bench}-{date}-{n}.json"


def write(
    bench: str,
    command: str,
    repo: Path = ROOT,
    definition_of: Callable[[str], dict] = definition,
    now: float | None = None,
    known_benches: dict[str, str] | None = None,
) -> Path:
    """Write the pre-registration of `command` for `bench` under repo/benchmarks/results/ and return its path.
    `known_benches` (bench -> role) is checked when given: only reporting benches are pre-registered."""
    args = method_args(command)
    if "--render-only" in args or "--development" in args:
        raise Refused(f"{command!r} is not a reporting run (--render-only and --development need no pre-registration)")
    if known_benches is not None:
        if bench not in known_benches:
            raise Refused(f"unknown bench {bench!r}; choose from {', '.join(known_benches)}")
        if known_benches[bench] != "reporting":
            raise Refused(f"{bench} is a {known_benches[bench]} bench: it runs with --development and needs no pre-registration")
    if bench not in benches_of(args, default=""):
        raise Refused(f"the command does not run {bench} (its --bench is {','.join(benches_of(args, '')) or 'missing'})")
    commit = require_committed_method(repo)
    stamp = time.gmtime(time.time() if now is None else now)
    date = time.strftime("%Y-%m-%d", stamp)
    folder = repo / RESULTS_REL
    folder.mkdir(parents=True, exist_ok=True)
    n = 1
    while (folder / prereg_name(bench, date, n)).exists():
        n += 1
    path = folder / prereg_name(bench, date, n)
    record = {
        "bench": bench,
        "command": command,
        "args": args,
        "method_commit": commit,
        "head": git(repo, "rev-parse", "HEAD"),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", stamp),
        "definition": definition_of(bench),
    }
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def committed_preregs(bench: str, repo: Path = ROOT) -> list[tuple[str, dict]]:
    """The pre-registrations for `bench` as HEAD holds them (a file not committed, or its uncommitted edits, do not
    count), oldest name first."""
    listed = git(repo, "ls-tree", "--name-only", "HEAD", f"{RESULTS_REL}/")
    out = []
    for path in sorted(listed.splitlines()):
        name = path.rsplit("/", 1)[-1]
        if not (name.startswith(f"prereg-{bench}-") and name.endswith(".json")):
            continue
        try:
            record = json.loads(git(repo, "show", f"HEAD:{path}"))
        except json.JSONDecodeError:
            continue
        if record.get("bench") == bench:  # prereg-B1-... also starts prereg-B1-hard-...
            out.append((path, record))
    return out


def check(
    bench: str,
    argv: list[str],
    repo: Path = ROOT,
    definition_of: Callable[[str], dict] = definition,
    again: str | None = None,
) -> tuple[str, dict]:
    """The committed pre-registration that admits running `bench` with benchmarks.method arguments `argv` now, as
    (path, record); raises Refused saying why none does."""
    commit = require_committed_method(repo)
    args = method_args(["-m", "benchmarks.method", *argv])
    found = committed_preregs(bench, repo)
    typed = shlex.join([".venv/bin/python", "-m", "benchmarks.method", *args])
    register = f".venv/bin/python -m benchmarks.preregister {bench} --command {shlex.quote(typed)}"
    hint = f"pre-register it and commit the file first:\n  {register}"
    if not found:
        raise Refused(f"{bench} is a reporting bench and HEAD holds no pre-registration for it; {hint}")
    now_definition = None
    reasons = []
    for path, record in reversed(found):  # the newest first
        why = []
        if record.get("method_commit") != commit:
            why.append(f"method commit {str(record.get('method_commit'))[:12]}, not the current {commit[:12]}")
        if record.get("args") != args:
            why.append(f"command {shlex.join(record.get('args') or [])!r}, not {shlex.join(args)!r}")
        if not why:
            if now_definition is None:
                now_definition = definition_of(bench)
            changed = _differences(record.get("definition") or {}, now_definition)
            if changed:
                why.append("the bench's definition changed since: " + ", ".join(changed[:8]) + (" ..." if len(changed) > 8 else ""))
        if not why:
            earlier = [r for r in read_runs(repo) if r.get("bench") == bench and r.get("method_commit") == commit and r.get("args") == args]
            if earlier and not again:
                raise Refused(
                    f"{bench} already ran with this command on method commit {commit[:12]} (runs list entries "
                    f"{', '.join(str(r['id']) for r in earlier)}): a reporting bench runs once per method; rerun only with "
                    f"--again REASON, which the runs list and docs/method.md show"
                )
            return path, record
        reasons.append(f"  {path}: " + "; ".join(why))
    raise Refused(f"no committed pre-registration of {bench} matches this run:\n" + "\n".join(reasons) + f"\n{hint}")


def admit(
    benches: list[str],
    roles: dict[str, str],
    argv: list[str],
    development: bool,
    again: str | None = None,
    repo: Path = ROOT,
    definition_of: Callable[[str], dict] = definition,
) -> dict[str, tuple[str, dict]]:
    """benchmarks.method's gate: development benches run only with --development (and need nothing else); reporting
    benches never with it, each only with a matching committed pre-registration. Returns bench -> (path, record) for
    the reporting benches; raises Refused."""
    unknown = [b for b in benches if b not in roles]
    if unknown:
        raise Refused(f"unknown bench {', '.join(unknown)}; choose from {', '.join(roles)}")
    reporting = [b for b in benches if roles[b] == "reporting"]
    other = [b for b in benches if roles[b] != "reporting"]
    if development and reporting:
        raise Refused(
            f"--development runs development benches only; {', '.join(reporting)} "
            f"{'is a reporting bench' if len(reporting) == 1 else 'are reporting benches'} (tune on benchmarks.develop instead)"
        )
    if other and not development:
        what = "is a development bench" if len(other) == 1 else "are development benches"
        raise Refused(f"{', '.join(other)} {what}: run with --development")
    return {b: check(b, argv, repo, definition_of, again) for b in reporting}


# ---------------------------------------------------------------------------------------------- the runs list


def runs_path(repo: Path = ROOT) -> Path:
    return repo / RESULTS_REL / RUNS_NAME


def read_runs(repo: Path = ROOT) -> list[dict]:
    path = runs_path(repo)
    return json.loads(path.read_text()) if path.is_file() else []


def _write_runs(repo: Path, runs: list[dict]) -> None:
    path = runs_path(repo)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(runs, indent=1) + "\n")
    tmp.replace(path)


def _locked(repo: Path):
    from filelock import FileLock

    return FileLock(str(runs_path(repo)) + ".lock")


def record_start(
    bench: str,
    prereg: tuple[str, dict],
    command: str,
    mode: str,
    seeds: list[int],
    rows: list[str] | None,
    again: str | None = None,
    repo: Path = ROOT,
) -> int:
    """Append a started reporting run (`command` as typed, a benchmarks.method command) to the runs list; returns
    its id."""
    path, record = prereg
    with _locked(repo):
        runs = read_runs(repo)
        run_id = max((r["id"] for r in runs), default=0) + 1
        runs.append(
            {
                "id": run_id,
                "bench": bench,
                "mode": mode,
                "command": command,
                "args": method_args(command),
                "seeds": seeds,
                "rows": rows or "all",
                "status": "running",
                "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "finished": None,
                "method_commit": record["method_commit"],
                "head": git(repo, "rev-parse", "HEAD"),
                "prereg": path,
                "again": again,
                "results": {},
                "files": [],
                "note": None,
            }
        )
        _write_runs(repo, runs)
    return run_id


def record_end(run_id: int, status: str, results: dict, files: list[str], note: str | None = None, repo: Path = ROOT) -> None:
    """Complete a run's entry: `status` finished or stopped, `results` row -> seed -> accuracy, the result files."""
    with _locked(repo):
        runs = read_runs(repo)
        for run in runs:
            if run["id"] == run_id:
                run.update(status=status, finished=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), results=results, files=files)
                if note:
                    run["note"] = note
        _write_runs(repo, runs)


# ---------------------------------------------------------------------------------------------- the docs' table


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _result_cell(results: dict) -> str:
    cells = []
    for row, by_seed in results.items():
        if row == "teacher" or not by_seed:
            continue
        accs = list(by_seed.values())
        cells.append(f"{row} {100 * _mean(accs):.2f}" + ("" if len(accs) == 1 else f" (mean of {len(accs)})"))
    return "; ".join(cells)


def runs_table(runs: list[dict]) -> str:
    """The docs' table: one line per bench, rows and commit that recorded them, the seeds of its commands together."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        rows = run["rows"] if isinstance(run["rows"], str) else ",".join(run["rows"])
        key = (run.get("recorded_in") or run.get("prereg") or f"id{run['id']}", run["bench"], run["mode"], rows, run.get("again"))
        groups.setdefault(key, []).append(run)
    lines = [
        "| runs | bench | mode | rows | seeds | finished (UTC) | method commit | pre-registered | recorded in | result (% on the bench's "
        "reporting set; mean over the seeds listed) | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (_, bench, mode, rows, _again), members in groups.items():
        ids = [m["id"] for m in members]
        if len(ids) == 1:
            id_cell = str(ids[0])
        elif ids == list(range(ids[0], ids[-1] + 1)):
            id_cell = f"{ids[0]}–{ids[-1]}"
        else:
            id_cell = ", ".join(map(str, ids))
        seeds = sorted({s for m in members for s in m.get("seeds") or []})
        finished = [m["finished"] for m in members if m.get("finished")]
        merged: dict[str, dict] = {}
        for m in members:
            for row, by_seed in (m.get("results") or {}).items():
                merged.setdefault(row, {}).update(by_seed)
        commits = sorted({m["method_commit"][:10] for m in members if m.get("method_commit")})
        preregs = sorted({m["prereg"].rsplit("/", 1)[-1] for m in members if m.get("prereg")})
        recorded = members[0].get("recorded_in")
        statuses = sorted({m["status"] for m in members})
        notes = [n for n in dict.fromkeys(m.get("note") for m in members) if n]
        if statuses != ["finished"]:
            notes.insert(0, "status: " + ", ".join(statuses))
        if members[0].get("again"):
            notes.insert(0, f"again: {members[0]['again']}")
        lines.append(
            "| "
            + " | ".join(
                [
                    id_cell,
                    bench,
                    mode,
                    rows.replace(",", ", "),
                    ", ".join(map(str, seeds)) if seeds else "—",
                    max(finished) if finished else "not recorded",
                    ", ".join(commits) or "not recorded",
                    ", ".join(preregs) or "no",
                    f"{recorded[:7]} ({members[0].get('recorded_at', '')[:16]})" if recorded else "—",
                    _result_cell(merged) or ", ".join(dict.fromkeys(f for m in members for f in m.get("files") or [])) or "—",
                    "; ".join(notes),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def write_doc_table(doc: Path, repo: Path = ROOT) -> bool:
    """Rewrite the table between the markers of `doc` from the runs list; False when the markers are missing."""
    text = doc.read_text()
    if DOC_START not in text or DOC_END not in text:
        return False
    head, rest = text.split(DOC_START, 1)
    _, tail = rest.split(DOC_END, 1)
    doc.write_text(f"{head}{DOC_START}\n{runs_table(read_runs(repo))}\n{DOC_END}{tail}")
    return True


# ---------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None, repo: Path = ROOT, definition_of: Callable[[str], dict] = definition, roles=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench", help="the reporting bench (several: comma-separated, one file each)")
    parser.add_argument("--command", required=True, help="the benchmarks.method command that will be run, as it will be typed")
    args = parser.parse_args(argv)
    if roles is None:
        from .method import BENCHES

        roles = {b: cfg["role"] for b, cfg in BENCHES.items()}
    written = []
    try:
        for bench in args.bench.split(","):
            written.append(write(bench, args.command, repo, definition_of, known_benches=roles))
    except Refused as e:
        for path in written:
            path.unlink()
        print(f"refused: {e}", file=sys.stderr)
        return 2
    rel = [str(p.relative_to(repo)) for p in written]
    record = json.loads(written[0].read_text())
    print(f"wrote {', '.join(rel)} (method commit {record['method_commit'][:12]}). Commit it before the run:\n")
    print(f"  git add {' '.join(shlex.quote(p) for p in rel)}")
    print(f"  git commit -m {shlex.quote(f'Pre-register {args.bench}: {args.command}')}")
    print(f"\nthen run, once:\n\n  {args.command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
