"""Pre-registration of reporting runs (benchmarks/preregister.py): the gate benchmarks.method passes before it runs a
reporting bench, checked in a throwaway git repository with a stand-in bench definition (nothing is trained)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from benchmarks import preregister as pr

COMMAND = ".venv/bin/python -m benchmarks.method --full --bench B1 --seed 0 --rows teacher,wd_005"
ARGV = ["--full", "--bench", "B1", "--seed", "0", "--rows", "teacher,wd_005"]
ROLES = {"B1": "reporting", "B1-hard": "reporting", "B3": "development"}
ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.invalid",
}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=ENV).stdout.strip()


def commit_all(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


class Definitions:
    """A stand-in for benchmarks.method's view of a bench, changeable by the test."""

    def __init__(self) -> None:
        self.epochs = 40

    def __call__(self, bench: str) -> dict:
        return {"bench": bench, "budget": {"epochs": self.epochs}, "recipe": {"distill": {"lr": 0.008}}}


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "edgedistill").mkdir(parents=True)
    (root / "edgedistill" / "__init__.py").write_text("# the method\n")
    (root / "benchmarks" / "results").mkdir(parents=True)
    (root / "benchmarks" / "results" / ".keep").write_text("")
    git(root, "init", "-q")
    commit_all(root, "method")
    return root


def register(repo: Path, definitions, command: str = COMMAND, bench: str = "B1") -> Path:
    return pr.write(bench, command, repo, definitions, known_benches=ROLES)


def test_refused_without_any_preregistration(repo):
    with pytest.raises(pr.Refused, match="no pre-registration") as e:
        pr.check("B1", ARGV, repo, Definitions())
    assert "benchmarks.preregister B1 --command" in str(e.value)  # it says what to do


def test_an_uncommitted_preregistration_does_not_count(repo):
    definitions = Definitions()
    register(repo, definitions)
    with pytest.raises(pr.Refused, match="no pre-registration"):
        pr.check("B1", ARGV, repo, definitions)


def test_a_committed_matching_preregistration_admits_the_run(repo):
    definitions = Definitions()
    path = register(repo, definitions)
    record = json.loads(path.read_text())
    assert path.name.startswith("prereg-B1-") and path.parent == repo / "benchmarks" / "results"
    assert record["method_commit"] == git(repo, "log", "-1", "--format=%H", "--", "edgedistill")
    assert record["head"] == git(repo, "rev-parse", "HEAD") and record["command"] == COMMAND
    assert record["definition"] == definitions("B1") and record["date"]
    commit_all(repo, "pre-register B1")  # HEAD moves; the method's commit does not
    found, got = pr.check("B1", ARGV, repo, definitions)
    assert found == f"benchmarks/results/{path.name}" and got == record
    # the interpreter is not part of the command, and --again is recorded elsewhere
    pr.check("B1", ARGV + ["--again", "a reason"], repo, definitions)


def test_refused_when_the_command_differs(repo):
    definitions = Definitions()
    register(repo, definitions)
    commit_all(repo, "pre-register B1")
    for argv in (
        ["--full", "--bench", "B1", "--seed", "0,1", "--rows", "teacher,wd_005"],  # more seeds
        ["--quick", "--bench", "B1", "--seed", "0", "--rows", "teacher,wd_005"],
        ["--full", "--seed", "0", "--bench", "B1", "--rows", "teacher,wd_005"],  # the same, typed in another order
    ):
        with pytest.raises(pr.Refused, match="not '--full|not '--quick"):
            pr.check("B1", argv, repo, definitions)


def test_refused_when_the_method_changed_since(repo):
    definitions = Definitions()
    register(repo, definitions)
    commit_all(repo, "pre-register B1")
    (repo / "docs.md").write_text("a commit that leaves the method alone\n")
    commit_all(repo, "docs")
    pr.check("B1", ARGV, repo, definitions)  # still the same method commit
    (repo / "edgedistill" / "__init__.py").write_text("# the method, changed\n")
    with pytest.raises(pr.Refused, match="uncommitted changes"):  # a working tree that is no commit
        pr.check("B1", ARGV, repo, definitions)
    commit_all(repo, "change the method")
    with pytest.raises(pr.Refused, match="method commit .* not the current"):
        pr.check("B1", ARGV, repo, definitions)


def test_an_untracked_file_in_the_method_counts_as_a_change(repo):
    definitions = Definitions()
    register(repo, definitions)
    commit_all(repo, "pre-register B1")
    (repo / "edgedistill" / "new_stage.py").write_text("x = 1\n")
    with pytest.raises(pr.Refused, match="uncommitted changes"):
        pr.check("B1", ARGV, repo, definitions)


def test_refused_when_the_bench_definition_changed(repo):
    definitions = Definitions()
    register(repo, definitions)
    commit_all(repo, "pre-register B1")
    definitions.epochs = 80  # e.g. recipes/demo.yaml or benchmarks/method.py edited after the pre-registration
    with pytest.raises(pr.Refused, match="definition changed since: budget.epochs"):
        pr.check("B1", ARGV, repo, definitions)


def test_another_benchs_preregistration_does_not_count(repo):
    definitions = Definitions()
    command = COMMAND.replace("--bench B1 ", "--bench B1-hard ")
    register(repo, definitions, command, bench="B1-hard")  # its file name starts prereg-B1-
    commit_all(repo, "pre-register B1-hard")
    with pytest.raises(pr.Refused, match="no pre-registration"):
        pr.check("B1", ARGV, repo, definitions)
    pr.check("B1-hard", ARGV[:2] + ["B1-hard"] + ARGV[3:], repo, definitions)


def test_a_reporting_bench_runs_once_per_method_commit(repo):
    definitions = Definitions()
    register(repo, definitions)
    commit_all(repo, "pre-register B1")
    prereg = pr.check("B1", ARGV, repo, definitions)
    first = pr.record_start("B1", prereg, COMMAND, "full", [0], ["teacher", "wd_005"], repo=repo)
    pr.record_end(first, "finished", {"wd_005": {"0": 0.9632}}, ["benchmarks/results/method-full/B1.seed0.json"], repo=repo)
    with pytest.raises(pr.Refused, match="already ran"):
        pr.check("B1", ARGV, repo, definitions)
    prereg = pr.check("B1", ARGV + ["--again", "the machine rebooted"], repo, definitions, again="the machine rebooted")
    second = pr.record_start("B1", prereg, COMMAND + " --again 'the machine rebooted'", "full", [0], None, "the machine rebooted", repo)
    pr.record_end(second, "stopped", {}, [], repo=repo)
    runs = pr.read_runs(repo)
    assert [(r["id"], r["status"], r["again"]) for r in runs] == [(1, "finished", None), (2, "stopped", "the machine rebooted")]
    assert runs[0]["method_commit"] == git(repo, "log", "-1", "--format=%H", "--", "edgedistill")
    assert runs[0]["prereg"].startswith("benchmarks/results/prereg-B1-") and runs[0]["results"] == {"wd_005": {"0": 0.9632}}
    table = pr.runs_table(runs)
    assert "wd_005 96.32" in table and "status: stopped" in table and "again: the machine rebooted" in table


def test_admit_separates_development_and_reporting_benches(repo):
    definitions = Definitions()
    assert pr.admit(["B3"], ROLES, ["--full", "--development", "--bench", "B3"], True, repo=repo, definition_of=definitions) == {}
    with pytest.raises(pr.Refused, match="B3 is a development bench: run with --development"):
        pr.admit(["B3"], ROLES, ["--full", "--bench", "B3"], False, repo=repo, definition_of=definitions)
    with pytest.raises(pr.Refused, match="B1 is a reporting bench"):  # --development would dodge pre-registration
        pr.admit(["B1", "B3"], ROLES, ["--full", "--development", "--bench", "B1,B3"], True, repo=repo, definition_of=definitions)
    with pytest.raises(pr.Refused, match="unknown bench B9"):
        pr.admit(["B9"], ROLES, ["--full", "--bench", "B9"], False, repo=repo, definition_of=definitions)
    with pytest.raises(pr.Refused, match="no pre-registration"):
        pr.admit(["B1"], ROLES, ARGV, False, repo=repo, definition_of=definitions)
    register(repo, definitions)
    commit_all(repo, "pre-register B1")
    assert list(pr.admit(["B1"], ROLES, ARGV, False, repo=repo, definition_of=definitions)) == ["B1"]


def test_write_refuses_what_is_not_a_reporting_run(repo):
    definitions = Definitions()
    with pytest.raises(pr.Refused, match="development bench"):
        pr.write("B3", COMMAND.replace("B1", "B3"), repo, definitions, known_benches=ROLES)
    with pytest.raises(pr.Refused, match="does not run B1"):
        pr.write("B1", COMMAND.replace("--bench B1", "--bench B1-hard"), repo, definitions, known_benches=ROLES)
    with pytest.raises(pr.Refused, match="not a benchmarks.method command"):
        pr.write("B1", "python -m benchmarks.develop --bench B1", repo, definitions, known_benches=ROLES)
    (repo / "edgedistill" / "__init__.py").write_text("# dirty\n")
    with pytest.raises(pr.Refused, match="uncommitted changes"):
        pr.write("B1", COMMAND, repo, definitions, known_benches=ROLES)


def test_cli_writes_the_file_and_prints_the_git_commands(repo, capsys):
    definitions = Definitions()
    assert pr.main(["B1", "--command", COMMAND], repo, definitions, ROLES) == 0
    out = capsys.readouterr().out
    (path,) = (repo / "benchmarks" / "results").glob("prereg-B1-*.json")
    assert f"git add benchmarks/results/{path.name}" in out and "git commit -m" in out and COMMAND in out
    assert pr.main(["B1", "--command", COMMAND], repo, definitions, ROLES) == 0  # the same day: a second name
    assert len(list((repo / "benchmarks" / "results").glob("prereg-B1-*.json"))) == 2
    assert pr.main(["B3", "--command", COMMAND.replace("B1", "B3")], repo, definitions, ROLES) == 2
    assert "development bench" in capsys.readouterr().err


def test_the_docs_table_is_rewritten_between_its_markers(repo, tmp_path):
    doc = tmp_path / "method.md"
    doc.write_text(f"# Method\n\nbefore\n\n{pr.DOC_START}\nold table\n{pr.DOC_END}\n\nafter\n")
    run = {
        "id": 1,
        "bench": "B1",
        "mode": "full",
        "rows": ["wd_005"],
        "seeds": [0],
        "status": "finished",
        "finished": "2026-12-03 00:48 UTC",
        "method_commit": None,
        "prereg": None,
        "recorded_in": "a3b1c4a" * 5,
        "recorded_at": "2026-12-03 01:09 UTC",
        "results": {"wd_005": {"0": 0.9632}},
        "files": [],
        "note": None,
    }
    pr._write_runs(repo, [run])
    assert pr.write_doc_table(doc, repo)
    text = doc.read_text()
    assert "old table" not in text and "before" in text and "after" in text
    assert "| 1 | B1 | full | wd_005 | 0 | 2026-12-03 00:48 UTC | not recorded | no | a3b1c4a (2026-12-03 01:09) | wd_005 96.32 |" in text


def test_the_committed_runs_list_renders():
    """The repository's own list (rebuilt from the committed results) renders, and lists every B3 pass."""
    runs = pr.read_runs()
    assert runs and [r["id"] for r in runs] == list(range(1, len(runs) + 1))
    b3 = {",".join(r["rows"]) if isinstance(r["rows"], list) else r["rows"] for r in runs if r["bench"] == "B3"}
    assert {"teacher,full", "full", "epochs_80", "teacher,epochs_160", "teacher,batch_128", "teacher,lr_008", "teacher,wd_005"} <= b3
    assert pr.runs_table(runs).count("\n") >= 40
