"""The CI gate: exit codes, junit.xml, summary.md, and re-gating a finished run without redoing its stages."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from edgedistill.backends.base import LatencyStats, median_interval
from edgedistill.cli import app
from edgedistill.config.load import load_recipe
from edgedistill.config.schema import Budget
from edgedistill.errors import BudgetInconclusive
from edgedistill.pipeline import Pipeline
from edgedistill.results.gate import junit_xml, summary_markdown
from edgedistill.results.report import exit_code, gate_error, gate_headline, verdict_message
from edgedistill.stages.validate import budget_verdicts, latency_verdict


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
    row = "| orin | NVIDIA Orin Nano Developer Kit | student fp32 | onnxruntime | 90.00% | 95.00% | 1 | 1.5 | - | 64 KiB | - | ✅ pass |"
    assert row in text
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
    recorded = json.loads((run / "run.json").read_text())["recipe"]  # a what-if re-gate is not saved without --save
    assert [t["name"] for t in recorded["targets"]] == ["cpu", "board"] and recorded["targets"][0]["budget"]["p99_ms"] == 1000.0


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


# ------------------------------------------------------------- latency rounds, inconclusive verdicts, nothing gated


def test_median_interval_is_order_statistics_of_the_rounds():
    assert median_interval([5, 1, 4, 2, 3]) == (3.0, 1.0, 5.0, 0.9375)  # 5 rounds: smallest to largest, 94%
    median, low, high, coverage = median_interval(range(10))  # 10 rounds: 2nd smallest to 2nd largest, 98%
    assert (median, low, high) == (4.5, 1.0, 8.0) and coverage == pytest.approx(0.9785, abs=1e-4)
    assert median_interval([2.5]) == (2.5, 2.5, 2.5, 0.0)  # one round: a point, judged as before rounds existed


def test_latency_verdict_pass_fail_inconclusive_from_the_interval():
    stats = LatencyStats.from_rounds([np.full(40, v) for v in (1.0, 1.1, 1.2, 1.3, 1.4)], batch=1)
    assert stats.gate_figure("p50_ms") == (1.2, 1.0, 1.4, 0.9375)
    found = {limit: latency_verdict("p50_ms", limit, stats) for limit in (1.5, 1.4, 1.2, 0.99)}
    assert [found[limit]["verdict"] for limit in (1.5, 1.4, 1.2, 0.99)] == ["pass", "pass", "inconclusive", "fail"]
    unsure = found[1.2]
    assert unsure["passed"] is False and unsure["measured"] == 1.2 and unsure["interval"] == [1.0, 1.4] and unsure["rounds"] == 5
    assert "median of 5 rounds, 94% interval 1-1.4 ms" in unsure["basis"]
    assert verdict_message(unsure).startswith("p50_ms: measured 1.2 ms but its interval straddles the limit 1.2 ms")
    one = LatencyStats.from_samples(np.full(40, 1.2), batch=1)  # rounds=1: never inconclusive
    assert latency_verdict("p50_ms", 1.2, one)["verdict"] == "pass" and latency_verdict("p50_ms", 1.19, one)["verdict"] == "fail"


def test_one_spiky_round_makes_a_far_budget_inconclusive_not_failed():
    quiet = [np.r_[np.full(39, 1.0), 1.2] for _ in range(4)]
    burst = np.r_[np.full(35, 1.0), np.full(5, 9.0)]  # a burst of load during one round
    stats = LatencyStats.from_rounds([*quiet, burst], batch=1)
    assert stats.p99_ms > 3.0  # one p99 over all 200 calls, the judgement before rounds: a 3 ms budget would fail
    verdict = latency_verdict("p99_ms", 3.0, stats)
    assert verdict["verdict"] == "inconclusive" and verdict["measured"] < 1.3 and stats.noisy is False


def test_a_fail_on_a_contended_machine_is_inconclusive_a_pass_stands():
    stats = LatencyStats.from_rounds([np.full(40, v) for v in (2.0, 2.1, 2.2, 2.3, 2.4)], batch=1)
    assert latency_verdict("p50_ms", 1.0, stats)["verdict"] == "fail"
    stats.busy_elsewhere_cores, stats.contended = 1.6, True  # other processes left less than a core
    busy = latency_verdict("p50_ms", 1.0, stats)
    assert busy["verdict"] == "inconclusive" and "other processes kept 1.6 cores busy" in busy["basis"]
    assert latency_verdict("p50_ms", 3.0, stats)["verdict"] == "pass"  # load only slows a model: a pass stands
    assert stats.as_dict()["busy_elsewhere_cores"] == 1.6 and stats.as_dict()["contended"] is True


def test_every_latency_figure_and_the_comparison_budgets_are_judged():
    stats = LatencyStats.from_rounds([np.linspace(1.0, 2.0, 40) for _ in range(5)], batch=1)
    budget = Budget(p50_ms=5, p90_ms=5, p99_ms=5, mean_ms=0.5, max_output_diff=1e-3, min_agreement_with_fp32=0.99)
    comparison = {"max_abs_diff": 2e-4, "max_rel_diff": 1e-5, "top1_agreement": 0.98, "samples": 200}
    found = {v["budget"]: v for v in budget_verdicts(budget, stats, None, None, None, comparison=comparison)}
    assert {k: v["verdict"] for k, v in found.items()} == {
        "p50_ms": "pass",
        "p90_ms": "pass",
        "p99_ms": "pass",
        "mean_ms": "fail",
        "max_output_diff": "pass",
        "min_agreement_with_fp32": "fail",
    }
    assert found["p90_ms"]["measured"] == pytest.approx(np.percentile(np.linspace(1.0, 2.0, 40), 90), abs=1e-4)
    assert verdict_message(found["min_agreement_with_fp32"]).startswith("min_agreement_with_fp32: measured 98.00% < limit 99.00%")
    assert verdict_message(found["max_output_diff"]).startswith("max_output_diff: measured 0.0002 <= limit 0.001")
    unmeasured = {v["budget"]: v for v in budget_verdicts(budget, stats, None, None, None, comparison=None)}
    for name in ("max_output_diff", "min_agreement_with_fp32"):
        assert (
            unmeasured[name]["verdict"] == "fail" and unmeasured[name]["measured"] is None and "not measured" in unmeasured[name]["basis"]
        )


INCONCLUSIVE = target(
    "busy",
    [
        {
            **verdict("p99_ms", 1.02, 1.0, False, "p99 latency at batch 1: median of 5 rounds"),
            "verdict": "inconclusive",
            "interval": [0.9, 1.3],
        },
        {**verdict("min_accuracy", 0.9, 0.85, True), "verdict": "pass"},
    ],
)


def test_inconclusive_exit_code_error_and_junit_skipped():
    assert exit_code(report(PASSING, INCONCLUSIVE)) == 5
    assert exit_code(report(FAILING, INCONCLUSIVE)) == 3 and exit_code(report(UNAVAILABLE, INCONCLUSIVE)) == 4
    error = gate_error(report(PASSING, INCONCLUSIVE))
    assert isinstance(error, BudgetInconclusive) and error.exit_code == 5 and "\n" not in str(error)
    assert str(error).startswith("budget inconclusive: busy: p99_ms 1.02 ms (interval 0.9 ms to 1.3 ms) vs limit 1 ms")
    assert "edgedistill validate --run-dir RUN_DIR --target busy --rounds 10" in str(error)
    standalone = {**report(INCONCLUSIVE), "model": {"path": "/m/student.onnx"}}
    assert "edgedistill validate /m/student.onnx --rounds 10" in str(gate_error(standalone))
    root = ET.fromstring(junit_xml(report(PASSING, INCONCLUSIVE)))
    suite = root.find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("4", "0", "1")
    skipped = cases(junit_xml(report(PASSING, INCONCLUSIVE)))[("busy", "p99_ms")].find("skipped")
    assert skipped is not None and "interval straddles the limit 1 ms" in skipped.get("message")
    text = summary_markdown(report(PASSING, INCONCLUSIVE))
    assert text.startswith("### edgedistill `demo`: ❔ budget inconclusive (exit 5)")
    assert "| busy | p99_ms | 1.02 ms | 1 ms | ❔ inconclusive (p99 latency at batch 1: median of 5 rounds) |" in text
    assert "retry on a quieter machine: `edgedistill validate --run-dir RUN_DIR --target busy --rounds 10`" in text


def test_a_report_without_targets_says_nothing_gated():
    empty = report()
    assert exit_code(empty) == 0 and gate_error(empty) is None and gate_headline(empty) == "nothing gated: no targets"
    assert summary_markdown(empty).startswith("### edgedistill `demo`: ➖ nothing gated: no targets (exit 0)")
    root = ET.fromstring(junit_xml(empty))
    assert root.find("testsuite").get("skipped") == "1"
    assert cases(junit_xml(empty))[("edgedistill", "gate")].find("skipped").get("message") == "nothing gated: the recipe has no targets"
    unbudgeted = report(target("plain", [], budget={}))
    assert gate_headline(unbudgeted) == "nothing gated: no budgets set" and gate_headline(report(PASSING)) == "all budgets met"


def test_verdicts_written_before_the_verdict_field_still_read():
    old = target("old", [verdict("p99_ms", 3.0, 2.0, False, "latency at batch 1")])
    assert exit_code(report(old)) == 3 and "❌ fail" in summary_markdown(report(old))


def test_gate_command_prints_inconclusive_and_exits_5(tmp_path):
    (tmp_path / "report.json").write_text(json.dumps(report(PASSING, INCONCLUSIVE)))
    result = CliRunner().invoke(app, ["gate", str(tmp_path)])
    assert result.exit_code == 5, result.output
    assert "busy: p99_ms: measured 1.02 ms but its interval straddles the limit 1 ms" in result.output
    assert "gate: budget inconclusive (exit 5)" in result.output


def test_standalone_validate_latency_budgets_rounds_and_pinned_threads(tmp_path):
    import torch

    from edgedistill.config.schema import InputSpec
    from edgedistill.models.factory import create_model
    from edgedistill.stages.export import export_onnx

    torch.manual_seed(0)
    spec = InputSpec(channels=1, size=28, mean=[0.5], std=[0.5])
    model = export_onnx(create_model("lenet5_half", 10, 1).eval(), spec, tmp_path / "tiny.onnx")
    runner = CliRunner()
    base = ["validate", str(model), "--iterations", "20", "--warmup", "1", "--rounds", "4"]
    budgets = ["--budget", "p50_ms=10000", "--budget", "p90_ms=10000", "--budget", "mean_ms=10000", "--budget", "p99_ms=10000"]
    result = runner.invoke(app, [*base, *budgets, "--out", str(tmp_path / "ok")])
    assert result.exit_code == 0, result.output
    assert "gate: all budgets met (exit 0)" in result.output and "pass 4/4" in result.output
    target_entry = json.loads((tmp_path / "ok" / "report.json").read_text())["targets"][0]
    assert target_entry["facts"]["intra_op_threads"] == 1  # pinned by default
    assert target_entry["latency"]["rounds"] == 4 and len(target_entry["latency"]["per_round"]["p99_ms"]) == 4
    assert {v["budget"]: (v["verdict"], v["rounds"]) for v in target_entry["verdicts"]} == {
        name: ("pass", 4) for name in ("p50_ms", "p90_ms", "p99_ms", "mean_ms")
    }
    result = runner.invoke(app, [*base, "--threads", "0", "--budget", "p50_ms=1e-6", "--out", str(tmp_path / "slow")])
    assert result.exit_code == 3 and "p50_ms: measured" in result.output, result.output
    facts = json.loads((tmp_path / "slow" / "report.json").read_text())["targets"][0]["facts"]
    assert facts["intra_op_threads"] == "default"
    for argv, needle in (
        (["--budget", "max_output_diff=0.1"], "--budget max_output_diff: a model on its own has no teacher or PyTorch fp32 reference"),
        (["--budget", "min_agreement_with_fp32=0.9"], "--budget min_agreement_with_fp32"),
        (["--budget", "p99ms=1"], "did you mean 'p99_ms'"),
        (["--budget", "p90_ms=0"], "p90_ms"),
        (["--rounds", "0"], "--rounds"),
    ):
        result = runner.invoke(app, [*base, *argv, "--out", str(tmp_path / "bad")])
        assert result.exit_code == 2 and needle in result.output, (argv, result.output)


def test_a_device_over_ssh_times_every_round_in_one_call(compressed_run):
    board = next(t for t in compressed_run.report["targets"] if t["name"] == "board")
    latency = board["latency"]
    assert latency["rounds"] == 5 and latency["iterations"] == 30 and [len(v) for v in latency["per_round"].values()] == [5] * 4
    assert latency["busy_elsewhere_cores"] is None  # this machine's /proc/stat says nothing of the device's load
    assert board["facts"]["intra_op_threads"] == 1 and {v["verdict"] for v in board["verdicts"]} == {"pass"}


def test_report_html_shows_inconclusive_and_nothing_gated(tmp_path):
    from edgedistill.results.html import build_report_html

    (tmp_path / "report.json").write_text(json.dumps(report(PASSING, INCONCLUSIVE)))
    page = build_report_html(tmp_path)
    assert '<span class="verdict v5">budget inconclusive (exit 5)</span>' in page
    assert '<tr class="inconclusive"><td>busy</td><td>p99_ms</td>' in page and "--target busy --rounds 10" in page
    (tmp_path / "report.json").write_text(json.dumps(report()))
    page = build_report_html(tmp_path)
    assert "nothing gated: no targets (exit 0)" in page and "nothing gated: the recipe has no targets" in page


def test_regate_with_more_rounds_applies_to_that_invocation(compressed_run, tmp_path):
    run = compressed_run.copy(tmp_path)
    recorded = (run / "run.json").read_text()
    result = CliRunner().invoke(app, ["validate", "--run-dir", str(run), "--target", "cpu", "--rounds", "3"])
    assert result.exit_code == 0, result.output
    assert "gate: all budgets met (exit 0)" in result.output
    cpu = json.loads((run / "report.json").read_text())["targets"][0]
    assert cpu["latency"]["rounds"] == 3 and {v["rounds"] for v in cpu["verdicts"] if v["budget"].endswith("_ms")} == {3}
    assert (run / "run.json").read_text() == recorded  # a retry, not a change of the recipe
