"""The CI gate: exit codes, junit.xml, summary.md, and re-gating a finished run without redoing its stages."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from edgedistill.cli import app
from edgedistill.config.load import load_recipe
from edgedistill.pipeline import Pipeline
from edgedistill.results.gate import junit_xml, summary_markdown
from edgedistill.results.report import exit_code


def verdict(budget: str, measured: float, limit: float, passed: bool, basis: str = "accuracy") -> dict:
    return {"budget": budget, "measured": measured, "limit": limit, "passed": passed, "basis": basis}


def target(name: str, verdicts: list[dict], error: str | None = None, budget: dict | None = None) -> dict:
    return {
        "name": name,
        "runtime": "onnxruntime",
        "accuracy": None if error else 0.9,
        "agreement": None if error else 0.95,
        "latency": None if error else {"p50_ms": 1.0, "p99_ms": 1.5},
        "throughput": None,
        "facts": {} if error else {"device_model": "NVIDIA Orin Nano Developer Kit"},
        "verdicts": verdicts,
        "error": error,
        "passed": error is None and all(v["passed"] for v in verdicts),
        "budget": budget if budget is not None else {v["budget"]: v["limit"] for v in verdicts},
    }


def report(*targets: dict) -> dict:
    return {
        "name": "demo",
        "passed": all(t["passed"] for t in targets),
        "targets": list(targets),
        "eval": {"name": "builtin:mnist-heldout", "samples": 100, "labeled": True},
        "teacher": {"arch": "lenet5", "parameters": 61706, "accuracy": 0.97},
        "student": {"arch": "lenet5_half", "parameters": 15738, "onnx_bytes": 65536},
    }


PASSING = target("orin", [verdict("p99_ms", 1.5, 2.0, True, "latency at batch 1"), verdict("min_accuracy", 0.9, 0.85, True)])
FAILING = target("nano", [verdict("p99_ms", 3.214, 2.0, False, "latency at batch 1"), verdict("min_accuracy", 0.9, 0.85, True)])
UNAVAILABLE = target(
    "xavier",
    [],
    error="xavier: connection refused (ssh: connect to host 10.0.0.9 port 22: Connection refused).",
    budget={"p99_ms": 2.0, "max_accuracy_drop": 0.05},
)


def cases(xml_text: str) -> dict[tuple[str, str], ET.Element]:
    root = ET.fromstring(xml_text)
    return {(c.get("classname"), c.get("name")): c for c in root.iter("testcase")}


def test_exit_codes():
    assert exit_code(report(PASSING)) == 0
    assert exit_code(report(PASSING, FAILING)) == 3
    assert exit_code(report(PASSING, FAILING, UNAVAILABLE)) == 4
    assert exit_code(report()) == 0


def test_junit_one_testcase_per_target_and_budget():
    text = junit_xml(report(PASSING, FAILING, UNAVAILABLE))
    assert text.startswith("<?xml")
    root = ET.fromstring(text)
    suite = root.find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("6", "1", "2")
    found = cases(text)
    assert sorted(found) == [
        ("nano", "min_accuracy"),
        ("nano", "p99_ms"),
        ("orin", "min_accuracy"),
        ("orin", "p99_ms"),
        ("xavier", "max_accuracy_drop"),
        ("xavier", "p99_ms"),
    ]
    failure = found[("nano", "p99_ms")].find("failure")
    assert failure.get("message") == "p99_ms: measured 3.214 ms > limit 2 ms (latency at batch 1)"
    assert found[("orin", "p99_ms")].find("failure") is None
    assert "measured 1.5 ms <= limit 2 ms" in found[("orin", "p99_ms")].find("system-out").text
    assert "measured 90.00% >= limit 85.00%" in found[("orin", "min_accuracy")].find("system-out").text
    for name in ("p99_ms", "max_accuracy_drop"):
        error = found[("xavier", name)].find("error")
        assert error.get("type") == "TargetUnavailable" and "connection refused" in error.get("message")


def test_junit_stays_valid_xml_with_control_characters_and_no_budgets():
    odd = target("cpu<&>", [], error='bad\x1b[31m escape \x00 and "quotes"', budget={})
    bare = target("plain", [], budget={})
    found = cases(junit_xml(report(odd, bare)))
    assert found[("cpu<&>", "available")].find("error") is not None
    assert found[("plain", "available")].find("failure") is None


def test_summary_markdown_table():
    text = summary_markdown(report(PASSING, FAILING, UNAVAILABLE))
    assert text.startswith("### edgedistill `demo`: ⚠️ target unavailable (exit 4)")
    assert "| orin | NVIDIA Orin Nano Developer Kit | onnxruntime | 90.00% | 95.00% | 1 | 1.5 | ✅ pass |" in text
    assert "| nano | p99_ms | 3.214 ms | 2 ms | ❌ fail (latency at batch 1) |" in text
    assert "| xavier | p99_ms, max_accuracy_drop | - | - | ⚠️ xavier: connection refused" in text


def test_targets_and_budgets_are_inputs_of_validate_only(compressed_run, tmp_path):
    recipe = load_recipe(compressed_run.recipe)
    changed = load_recipe(
        compressed_run.recipe,
        ["targets.0.budget.p99_ms=0.5", "targets.1.ssh=elsewhere", "targets.1.runtime=trtexec", "targets.1.precision=fp16"],
    )
    before = Pipeline(recipe, compressed_run.run_dir, Console(quiet=True))
    after = Pipeline(changed, compressed_run.run_dir, Console(quiet=True))
    for stage in ("select", "distill", "export"):
        assert before.inputs(stage) == after.inputs(stage), stage
        assert before.run.is_done(stage, after.inputs(stage)), stage
    assert before.inputs("validate") != after.inputs("validate")


def test_budget_failure_exits_3_and_reuses_the_trained_student(compressed_run, tmp_path):
    run = compressed_run.copy(tmp_path)
    records = {p.name: p.stat().st_mtime_ns for p in (run / "stages").glob("*.json") if p.stem != "validate"}
    result = CliRunner().invoke(
        app, ["validate", str(compressed_run.recipe), "--run-dir", str(run), "--target", "cpu", "--set", "targets.0.budget.p99_ms=0.0001"]
    )
    assert result.exit_code == 3, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: budget failed: cpu: p99_ms"), result.output
    for stage in ("select", "distill", "export"):
        assert f"{stage}: up to date, skipped" in result.output
    assert {p.name: p.stat().st_mtime_ns for p in (run / "stages").glob("*.json") if p.stem != "validate"} == records
    found = cases((run / "junit.xml").read_text())
    assert sorted(found) == [("cpu", "min_accuracy"), ("cpu", "p99_ms")]
    failure = found[("cpu", "p99_ms")].find("failure")
    assert failure is not None and "limit 0.0001 ms" in failure.get("message")
    assert found[("cpu", "min_accuracy")].find("failure") is None
    assert "❌ budget failed (exit 3)" in (run / "summary.md").read_text()
    recorded = json.loads((run / "run.json").read_text())["recipe"]
    assert [t["name"] for t in recorded["targets"]] == ["cpu"]


@pytest.mark.parametrize(
    "args,expected",
    [
        (["validate"], "validate needs a RECIPE, or --run-dir DIR"),
        (["validate", "--run-dir", "{tmp}/nowhere"], "no run.json"),
        (["validate", "--run-dir", "{run}", "--target", "gpu"], "--target gpu: no such target; the recipe has cpu, board"),
        (["report", "{tmp}"], "no report.json"),
    ],
    ids=["nothing", "not-a-run", "unknown-target", "report-without-run"],
)
def test_bad_gate_arguments_exit_2(compressed_run, tmp_path, args, expected):
    args = [a.format(tmp=tmp_path, run=compressed_run.run_dir) for a in args]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert expected in result.output and result.output.count("error:") == 1


def test_recipe_schema_lists_remote_target_keys():
    result = CliRunner().invoke(app, ["recipe-schema"])
    target_schema = json.loads(result.output)["$defs"]["TargetSpec"]["properties"]
    assert {
        "ssh",
        "ssh_config",
        "known_hosts",
        "host_key_policy",
        "runtime",
        "precision",
        "remote_python",
        "trtexec",
        "timeout_s",
    } <= target_schema.keys()


def test_precision_needs_trtexec(tmp_path, compressed_run):
    data = yaml.safe_load(Path(compressed_run.recipe).read_text())
    data["targets"][0]["precision"] = "fp16"
    path = tmp_path / "recipe.yaml"
    (tmp_path / "teacher.safetensors").write_bytes((compressed_run.recipe.parent / "teacher.safetensors").read_bytes())
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["validate", str(path), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2 and "precision fp16 needs runtime:" in result.output
