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
from edgedistill.config.schema import Budget
from edgedistill.errors import BudgetInconclusive
from edgedistill.pipeline import Pipeline
from edgedistill.recipe import load_recipe
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
        # a whole target changed (trtexec reads no remote_python: back to its default, as the loading checks)
        [
            "targets.0.budget.p99_ms=0.5",
            "targets.1.ssh=elsewhere",
            "targets.1.runtime=trtexec",
            "targets.1.precision=fp16",
            "targets.1.remote_python=python3",
        ],
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
    assert {p.name: p.stat().st_mtime_ns for p in (run / "stages").glob("*.json") if p.stem != "validate"} == records
    found = cases((run / "what-if" / "junit.xml").read_text())  # a what-if reports beside the run's own files
    assert sorted(found) == [("cpu", "min_accuracy"), ("cpu", "p99_ms")]
    failure = found[("cpu", "p99_ms")].find("failure")
    assert failure is not None and "limit 0.0001 ms" in failure.get("message")
    assert found[("cpu", "min_accuracy")].find("failure") is None
    assert "❌ budget failed (exit 3)" in (run / "what-if" / "summary.md").read_text()
    assert "❌" not in (run / "summary.md").read_text()
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
    defs = json.loads(result.output)["$defs"]
    common = {"ssh", "ssh_config", "known_hosts", "host_key_policy", "runtime", "precision", "timeout_s"}
    assert common | {"remote_python", "providers"} <= defs["Target_onnxruntime"]["properties"].keys()
    assert common | {"trtexec"} <= defs["Target_trtexec"]["properties"].keys()


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
    assert stats.pooled["p99_ms"] > 3.0  # one p99 over all 200 calls, the judgement before rounds: a 3 ms budget would fail
    verdict = latency_verdict("p99_ms", 3.0, stats)
    assert verdict["verdict"] == "inconclusive" and verdict["measured"] < 1.3 and stats.noisy is False


def rounds_of(*figures: float, fastest: float | None = None, busy: float | None = None, cores: int = 2) -> LatencyStats:
    """Rounds of 40 calls each at one figure; `fastest` replaces one call of the first round; `busy` cores used by
    other processes meanwhile (contended when that left this process less than a core of `cores`)."""
    rounds = [np.full(40, v) for v in figures]
    if fastest is not None:
        rounds[0][0] = fastest
    stats = LatencyStats.from_rounds(rounds, batch=1)
    if busy is not None:
        stats.busy_elsewhere_cores, stats.usable_cores, stats.contended = busy, cores, busy > cores - 1
    return stats


# (figures of the rounds, fastest call, cores busy elsewhere, limit) -> (verdict, reason): contention only adds time
LATENCY_CASES = {
    "idle, interval over the limit": ((2.0, 2.1, 2.2, 2.3, 2.4), None, None, 1.0, "fail", "over"),
    "busy runner, best case over the limit (95 ms vs 2 ms)": ((91.0, 93.0, 95.0, 96.0, 97.0), 88.0, 1.9, 2.0, "fail", "best_case_over"),
    "busy, interval over, fastest calls within": ((2.0, 2.1, 2.2, 2.3, 2.4), 0.9, 1.6, 1.0, "inconclusive", "contended"),
    "busy, long calls all slowed, unhindered best case within": (
        (115.0, 118, 120, 121, 125),
        None,
        2.0,
        100.0,
        "inconclusive",
        "contended",
    ),
    "interval straddles the limit": ((1.0, 1.1, 1.2, 1.3, 1.4), None, None, 1.2, "inconclusive", "straddles"),
    "busy, interval within: a pass stands": ((2.0, 2.1, 2.2, 2.3, 2.4), None, 1.9, 3.0, "pass", "within"),
}


@pytest.mark.parametrize("case", list(LATENCY_CASES), ids=list(LATENCY_CASES))
def test_latency_verdict_cases(case):
    """Each case of latency_verdict, with the reason stored and the message saying which it is."""
    figures, fastest, busy, limit, expected, reason = LATENCY_CASES[case]
    found = latency_verdict("p50_ms", limit, rounds_of(*figures, fastest=fastest, busy=busy))
    assert (found["verdict"], found["reason"]) == (expected, reason)
    message = verdict_message(found)
    if reason == "best_case_over":
        assert "even its best case" in message and "fails however busy the machine was" in message and "straddles" not in message
    elif reason == "contended":
        assert f"other processes used {busy} cores; the fastest calls were within the limit" in message and "straddles" not in message
    elif reason == "straddles":
        assert "but its interval straddles the limit" in message


def test_a_busy_runner_fails_a_model_far_over_its_budget_and_passes_one_under():
    """validate resnet18.onnx --budget p99_ms=2 at 95 ms (interval 91-97 ms) on a busy runner is a failure (exit 3),
    not "inconclusive, its interval straddles the limit"; a model under its budget passes on the same machine."""
    busy = rounds_of(91.0, 93.0, 95.0, 96.0, 97.0, fastest=88.0, busy=1.9)
    verdicts = budget_verdicts(Budget(p99_ms=2), busy, None, None, None)
    assert [v["verdict"] for v in verdicts] == ["fail"]
    assert exit_code(report(target("busy", verdicts))) == 3
    assert "straddles" not in verdict_message(verdicts[0]) and "best case" in verdict_message(verdicts[0])
    fast = rounds_of(0.3, 0.31, 0.32, 0.33, 0.34, busy=1.9)
    assert budget_verdicts(Budget(p99_ms=2), fast, None, None, None)[0]["verdict"] == "pass"
    assert busy.as_dict()["busy_elsewhere_cores"] == 1.9 and busy.as_dict()["contended"] is True


def test_the_table_and_the_budget_line_show_one_p99():
    """A model has one p99 everywhere: LatencyStats' figures are the median of the rounds', the one the gate judges
    (summary.md showed the pooled 0.05698 in its table and 0.03252 on its budget line); the pooled ones are kept."""
    quiet = [np.r_[np.full(39, 1.0), 1.2] for _ in range(4)]
    stats = LatencyStats.from_rounds([*quiet, np.r_[np.full(35, 1.0), np.full(5, 9.0)]], batch=1)
    assert stats.p99_ms == stats.gate_figure("p99_ms")[0] == latency_verdict("p99_ms", 3.0, stats)["measured"]
    assert stats.pooled["p99_ms"] > 3.0 and stats.as_dict()["pooled"]["p99_ms"] == stats.pooled["p99_ms"]


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
    assert "edgedistill validate --run-dir RUN_DIR --rounds 10" in str(error)
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
    assert "retry on a quieter machine: `edgedistill validate --run-dir RUN_DIR --rounds 10`" in text


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


def test_gate_command_prints_inconclusive_and_exits_5(compressed_run, tmp_path):
    from edgedistill.models.onnx_info import onnx_info

    model = compressed_run.run_dir / "student.onnx"
    standalone = {**report(PASSING, INCONCLUSIVE), "model": {"path": str(model), "sha256": onnx_info(model).digest()}}
    (tmp_path / "report.json").write_text(json.dumps(standalone))
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
    assert '<tr class="inconclusive"><td>busy</td><td>p99_ms</td>' in page and "--run-dir RUN_DIR --rounds 10" in page
    (tmp_path / "report.json").write_text(json.dumps(report()))
    page = build_report_html(tmp_path)
    assert "nothing gated: no targets (exit 0)" in page and "nothing gated: the recipe has no targets" in page


def test_regate_with_more_rounds_applies_to_that_invocation(compressed_run, tmp_path):
    run = compressed_run.copy(tmp_path)
    recorded = json.loads((run / "run.json").read_text())["recipe"]
    result = CliRunner().invoke(app, ["validate", "--run-dir", str(run), "--rounds", "3"])
    assert result.exit_code == 0, result.output
    assert "gate: all budgets met (exit 0)" in result.output and CliRunner().invoke(app, ["gate", str(run)]).exit_code == 0
    cpu = json.loads((run / "report.json").read_text())["targets"][0]
    assert cpu["latency"]["rounds"] == 3 and {v["rounds"] for v in cpu["verdicts"] if v["budget"].endswith("_ms")} == {3}
    assert json.loads((run / "run.json").read_text())["recipe"] == recorded  # a retry, not a change of the recipe


# ------------------------------------------------------------- on_inconclusive: retries by the tool, or a policy


def tiny_model(folder: Path) -> Path:
    import torch

    from edgedistill.config.schema import InputSpec
    from edgedistill.models.factory import create_model
    from edgedistill.stages.export import export_onnx

    torch.manual_seed(0)
    spec = InputSpec(channels=1, size=28, mean=[0.5], std=[0.5])
    return export_onnx(create_model("lenet5_half", 10, 1).eval(), spec, folder / "tiny.onnx")


class ScriptedTiming:
    """Stands in for time_rounds only (the model still runs in ONNX Runtime): each call returns the next scripted
    measurement, so a test can make a verdict inconclusive on any machine; records the rounds asked for."""

    def __init__(self, *figures: tuple[float, ...]):
        self.figures, self.asked = list(figures), []

    def __call__(self, runner, batch, warmup, iterations, rounds=5, duration_s=None):
        self.asked.append((iterations, rounds))
        figures = self.figures.pop(0) if len(self.figures) > 1 else self.figures[0]
        return LatencyStats.from_rounds([np.full(max(1, iterations // rounds), v) for v in figures], batch)


STRADDLING = (1.0, 1.1, 1.2, 1.3, 1.4)  # against a 1.2 ms limit
WITHIN = (0.5, 0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.7)


def validate_tiny(tmp_path, monkeypatch, timing: ScriptedTiming, policy: str | None):
    from edgedistill.config.schema import InputSpec, TargetSpec
    from edgedistill.inputs.labeled import EvalSet
    from edgedistill.stages import validate

    model = tiny_model(tmp_path)
    monkeypatch.setattr(validate, "time_rounds", timing)
    target = TargetSpec(name="cpu", budget=Budget(p50_ms=1.2), **({"on_inconclusive": policy} if policy else {}))
    spec = InputSpec(channels=1, size=28, mean=[0.5], std=[0.5])
    none = EvalSet("none", np.zeros((0, 1, 28, 28), np.uint8), None)
    return validate.validate_target(target, model, none, spec, None, None, sweep=False)


def test_an_inconclusive_latency_is_retimed_with_twice_the_rounds_by_default(tmp_path, monkeypatch):
    """Default `retry 1`: the tool re-times once with twice the rounds and calls and keeps the last measurement."""
    timing = ScriptedTiming(STRADDLING, WITHIN)
    result = validate_tiny(tmp_path, monkeypatch, timing, None)
    assert timing.asked == [(200, 5), (400, 10)]
    (found,) = result.verdicts
    assert found["verdict"] == "pass" and found["retries"] == 1 and found["rounds"] == 10
    assert found["earlier"] == [{"verdict": "inconclusive", "reason": "straddles", "measured": 1.2, "interval": [1.0, 1.4], "rounds": 5}]
    assert result.latency["rounds"] == 10 and "after 1 retry" in verdict_message(found)


@pytest.mark.parametrize(
    "policy,expected,asked", [("retry 2", "inconclusive", 3), ("retry 0", "inconclusive", 1), ("fail", "fail", 1), ("pass", "pass", 1)]
)
def test_on_inconclusive_policy(tmp_path, monkeypatch, policy, expected, asked):
    """`retry N` re-times up to N times then stays inconclusive (exit 5); `fail`/`pass` decide at once, recorded."""
    timing = ScriptedTiming(STRADDLING)
    result = validate_tiny(tmp_path, monkeypatch, timing, policy)
    (found,) = result.verdicts
    assert found["verdict"] == expected and len(timing.asked) == asked
    if policy in ("fail", "pass"):
        assert found["policy"] == policy and found["measured_verdict"] == "inconclusive" and found["passed"] is (policy == "pass")
        assert f"decided {policy} by the policy on_inconclusive: {policy}" in verdict_message(found)
    if policy == "retry 2":
        assert found["retries"] == 2 and [rounds for _, rounds in timing.asked] == [5, 10, 20]


def test_on_inconclusive_is_checked_in_the_recipe_and_on_the_command_line(tmp_path, monkeypatch):
    from pydantic import ValidationError

    from edgedistill.config.schema import TargetSpec
    from edgedistill.stages import validate

    assert TargetSpec(name="cpu").on_inconclusive == "retry 1"
    for bad in ("retry", "retry -1", "ignore", "retry 11"):
        with pytest.raises(ValidationError):
            TargetSpec(name="cpu", on_inconclusive=bad)
    model = tiny_model(tmp_path)
    runner = CliRunner()
    base = ["validate", str(model), "--iterations", "20", "--warmup", "1", "--budget", "p50_ms=1.2"]
    bad = runner.invoke(app, [*base, "--on-inconclusive", "maybe", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "--on-inconclusive 'maybe': use fail, pass or 'retry N'" in bad.output
    monkeypatch.setattr(validate, "time_rounds", ScriptedTiming(STRADDLING))
    unsure = runner.invoke(app, [*base, "--out", str(tmp_path / "unsure")])
    assert unsure.exit_code == 5, unsure.output
    failed = runner.invoke(app, [*base, "--on-inconclusive", "fail", "--out", str(tmp_path / "fail")])
    assert failed.exit_code == 3, failed.output
    assert "decided fail by the policy on_inconclusive: fail" in failed.output
    written = json.loads((tmp_path / "fail" / "report.json").read_text())["targets"][0]["verdicts"][0]
    assert written["policy"] == "fail" and "decided fail" in (tmp_path / "fail" / "junit.xml").read_text()
    passed = runner.invoke(app, [*base, "--on-inconclusive", "pass", "--out", str(tmp_path / "pass")])
    assert passed.exit_code == 0, passed.output


# ------------------------------------------------------------- a collapsed teacher, without labels


def test_max_teacher_class_share_fails_the_gate_and_a_collapsed_teacher_is_a_warning():
    from edgedistill.results.report import Report, teacher_class_share

    selection = {"pool_predicted_per_class": [950, 30, 20]}
    share = teacher_class_share(selection)
    assert share == {"class": 0, "share": 0.95, "scored": 1000}
    found = budget_verdicts(Budget(max_teacher_class_share=0.5), None, None, None, None, teacher_class_share=share)
    assert [(v["budget"], v["verdict"], v["measured"]) for v in found] == [("max_teacher_class_share", "fail", 0.95)]
    assert exit_code(report(target("cpu", found))) == 3
    assert verdict_message(found[0]).startswith("max_teacher_class_share: measured 95.00% > limit 50.00%")
    ok = budget_verdicts(Budget(max_teacher_class_share=0.99), None, None, None, None, teacher_class_share=share)
    assert ok[0]["verdict"] == "pass"
    unmeasured = budget_verdicts(Budget(max_teacher_class_share=0.5), None, None, None, None)
    assert unmeasured[0]["verdict"] == "fail" and "not measured" in unmeasured[0]["basis"]
    written = Report(name="r", eval={}, targets=[], versions={}, warnings=["other"], selection=selection).as_json()
    assert written["warnings"][0] == "other" and "95.0% of the 1,000 scored pool images in one class (0)" in written["warnings"][1]
    assert "warnings" not in Report(name="r", eval={}, targets=[], versions={}, selection={"pool_predicted_per_class": [5, 5]}).as_json()


# ------------------------------------------------------------- report.json: a typed, versioned model


def _sections(model, path: str = "report"):
    """(path, section) for the report and every part under it."""
    from pydantic import BaseModel

    yield path, model
    for name in type(model).model_fields:
        value = getattr(model, name)
        for i, item in enumerate(value) if isinstance(value, list) else [(None, value)]:
            if isinstance(item, BaseModel):
                yield from _sections(item, f"{path}.{name}" + ("" if i is None else f".{i}"))


def test_report_json_is_the_typed_versioned_model(compressed_run):
    """A real report.json validates as Report, says its schema_version, reads back to the same JSON, and every key
    outside the open-ended sections (device facts, selection and INT8 facts) is a typed field."""
    from edgedistill.results.report import SCHEMA_VERSION, Facts, Int8, Parity, Report, Selection, StageThroughput

    data = json.loads((compressed_run.run_dir / "report.json").read_text())
    assert data["schema_version"] == SCHEMA_VERSION == 1 and list(data)[:3] == ["schema_version", "name", "passed"]
    report = Report.model_validate(data)
    assert report.as_json() == data  # nothing lost, nothing added
    cpu = next(t for t in report.targets if t.name == "cpu")
    assert cpu.verdicts[0].verdict == "pass" and cpu.verdicts[0].interval is not None and cpu.latency.rounds == 5
    assert {row.model for row in report.deployment.rows} >= {"teacher", "student"}
    open_ended = (Facts, Int8, Selection, StageThroughput, Parity)
    untyped = {
        path: sorted(section.model_extra)
        for path, section in _sections(report)
        if section.model_extra and not isinstance(section, open_ended)
    }
    assert untyped == {}, "report.json keys the model does not type; add them to results/report.py"


def test_a_report_written_before_schema_version_still_reads():
    """tests/data/reports/before-schema-version.json: no schema_version, no deployment table, verdicts with only
    `passed`: the gate, junit.xml, summary.md and report.html read it as before."""
    from edgedistill.results.report import Report, as_report

    data = json.loads((Path(__file__).parent / "data" / "reports" / "before-schema-version.json").read_text())
    assert "schema_version" not in data and "verdict" not in data["targets"][0]["verdicts"][0]
    report = as_report(data)
    assert isinstance(report, Report) and report.schema_version == 1  # read as the current version
    cpu, orin = report.targets
    assert [v.verdict for v in cpu.verdicts] == ["fail", "pass", "pass"] and not cpu.passed and orin.error
    assert cpu.verdicts[2].measured == 0 and isinstance(cpu.verdicts[2].measured, int)
    assert exit_code(data) == 4 and gate_headline(data) == "target unavailable"
    assert "budget failed" not in str(gate_error(data)) and "orin: orin: jetson-ci: connection refused" in str(gate_error(data))
    found = cases(junit_xml(data))
    assert found[("cpu", "p99_ms")].find("failure").get("message") == "p99_ms: measured 0.0495 ms > limit 0.04 ms (latency at batch 1)"
    assert found[("orin", "p99_ms")].find("error") is not None
    text = summary_markdown(data)
    assert "| cpu | AMD EPYC 7B13 64-Core Processor | student fp32 | onnxruntime | 96.32% | 96.58% | 0.031 | 0.0495 |" in text
    assert "| cpu | max_unreadable | 0 file(s) | 0 file(s) | ✅ pass (files of the evaluation set that could not be read) |" in text
    assert report.as_json()["targets"][0]["verdicts"][0]["verdict"] == "fail"  # written again: the current format


def test_old_and_newer_reports_through_the_pages_and_the_gate(compressed_run, tmp_path):
    """report.html and the gate files of an old report build as before; `edgedistill gate` refuses a report of a newer
    schema_version, or one that is not a report, with exit 2 and one line, not a traceback or a misread verdict."""
    from edgedistill.models.onnx_info import onnx_info
    from edgedistill.results.gate import write_gate_files
    from edgedistill.results.html import build_report_html

    (tmp_path / "report.json").write_text((Path(__file__).parent / "data" / "reports" / "before-schema-version.json").read_text())
    page = build_report_html(tmp_path)
    assert '<span class="verdict v4">target unavailable (exit 4)</span>' in page and "the weights of epoch 78 of 80" in page
    assert '<tr class="fail"><td>cpu</td><td>p99_ms</td>' in page
    write_gate_files(tmp_path, json.loads((tmp_path / "report.json").read_text()))
    assert "⚠️ target unavailable (exit 4)" in (tmp_path / "summary.md").read_text()

    model = compressed_run.run_dir / "student.onnx"
    standalone = {**report(PASSING), "model": {"path": str(model), "sha256": onnx_info(model).digest()}}
    gated = tmp_path / "gated"
    gated.mkdir()
    (gated / "report.json").write_text(json.dumps({**standalone, "schema_version": 1}))
    assert CliRunner().invoke(app, ["gate", str(gated)]).exit_code == 0
    for written, needle in (
        ({**standalone, "schema_version": 99}, "schema_version 99 is newer than this edgedistill reads (1); upgrade edgedistill"),
        ({**standalone, "targets": [{"name": "cpu", "verdicts": [{"budget": 1}]}]}, "not a report this edgedistill reads: targets.0."),
    ):
        (gated / "report.json").write_text(json.dumps(written))
        result = CliRunner().invoke(app, ["gate", str(gated)])
        assert result.exit_code == 2 and result.output.count("error:") == 1 and needle in result.output, result.output


def test_report_schema_command_prints_the_json_schema():
    result = CliRunner().invoke(app, ["report-schema"])
    assert result.exit_code == 0, result.output
    schema = json.loads(result.output)
    assert schema["$schema"].endswith("/draft/2020-12/schema") and schema["properties"]["schema_version"]["default"] == 1
    assert {"schema_version", "name", "passed", "targets", "deployment", "plan"} <= schema["properties"].keys()
    defs = schema["$defs"]
    verdict = defs["Verdict"]["properties"]
    assert verdict["verdict"]["enum"] == ["pass", "fail", "inconclusive"] and {"reason", "interval", "passed"} <= verdict.keys()
    assert set(defs["Target"]["properties"]) >= {"name", "verdicts", "latency", "facts", "error", "budget"}
    assert defs["Facts"]["additionalProperties"] is True  # device facts are open-ended
    assert "class" in defs["Coverage"]["properties"]  # report.json's key, not the Python name
