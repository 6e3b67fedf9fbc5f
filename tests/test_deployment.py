"""The deployment table: teacher and student at each precision measured on every target, speed-ups against the
teacher, the comparison against the PyTorch student, the batch sweep, the recommendation and the collapsed-student
warning; in report.json, summary.md, report.html and the terminal."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from edgedistill.cli import app
from edgedistill.stages.deployment import recommend, student_warnings
from edgedistill.stages.validate import compare_outputs


@pytest.fixture(scope="module")
def report(compressed_run) -> dict:
    return compressed_run.report


def test_every_target_has_teacher_and_student_rows_with_speedups(report):
    rows = report["deployment"]["rows"]
    for target in ("cpu", "board"):
        mine = {(r["model"], r["precision"]): r for r in rows if r["target"] == target}
        assert set(mine) == {("teacher", "fp32"), ("student", "fp32"), ("student", "int8")}, target
        teacher, student, int8 = mine["teacher", "fp32"], mine["student", "fp32"], mine["student", "int8"]
        assert student["gated"] and not teacher["gated"] and not int8["gated"]
        assert teacher["speedup"] == pytest.approx(1.0)
        for row in (student, int8):
            assert row["speedup"] == pytest.approx(teacher["p50_ms"] / row["p50_ms"])
            assert row["bytes"] > 0 and row["p50_ms"] > 0 and row["throughput_per_s"] > 0
            assert row["accuracy"] is not None and row["agreement"] is not None
        assert teacher["accuracy"] == report["teacher"]["accuracy"] and teacher["bytes"] > student["bytes"] > int8["bytes"]


def test_runtimes_are_compared_with_the_pytorch_student(report):
    for row in report["deployment"]["rows"]:
        if row["model"] == "student":
            c = row["comparison"]
            assert c["samples"] == report["eval"]["samples"] and 0 <= c["top1_agreement"] <= 1
        if row["model"] == "student" and row["precision"] == "fp32":
            assert row["comparison"]["max_abs_diff"] < 1e-3 and row["comparison"]["top1_agreement"] == 1.0


def test_the_gated_model_gets_a_batch_sweep(report):
    for t in report["targets"]:
        assert [b["batch"] for b in t["batch_sweep"]] == [1, 8, 32]
        assert t["throughput"]["batch"] == 32 and all(b["throughput_per_s"] > 0 for b in t["batch_sweep"])


def test_the_report_files_show_the_table(compressed_run, report):
    summary = (compressed_run.run_dir / "summary.md").read_text()
    assert "| cpu | " in summary and "teacher fp32" in summary and "student int8" in summary and "Recommended:" in summary
    html = (compressed_run.run_dir / "report.html").read_text()
    assert "<h2>Deployment</h2>" in html and "speed-up (p50)" in html and "<h2>Batch sizes</h2>" in html
    assert report["deployment"]["recommendation"] and report["teacher"]["runtime"] == "pytorch"
    assert report["teacher"]["feature_layer"] and report["student"]["feature_layer"] and "Feature loss: teacher layer" in html


def test_the_terminal_shows_the_table(compressed_run, tmp_path):
    run = compressed_run.copy(tmp_path)
    result = CliRunner().invoke(app, ["gate", str(run)])
    assert "student int8" in result.output and "teacher" in result.output and "speed" in result.output, result.output


def test_compare_outputs():
    ref = np.array([[1.0, 2.0, 0.5], [3.0, -1.0, 0.0]], np.float32)
    same = compare_outputs(ref.copy(), ref)
    assert same["max_abs_diff"] == 0 and same["top1_agreement"] == 1.0
    moved = compare_outputs(ref + np.array([[0, 0, 2.0], [0, 0, 0]], np.float32), ref)
    assert moved["max_abs_diff"] == pytest.approx(2.0) and moved["top1_agreement"] == 0.5
    assert moved["max_rel_diff"] == pytest.approx(2.0 / 3.0)


def _row(target, precision, p50, accuracy, device="cpu0"):
    return {
        "target": target,
        "model": "student",
        "precision": precision,
        "runtime": "onnxruntime",
        "device": device,
        "p50_ms": p50,
        "accuracy": accuracy,
        "agreement": None,
        "speedup": 2.0,
        "error": None,
    }


def test_recommend_picks_the_fastest_within_the_accuracy_budget():
    rows = [_row("a", "fp32", 1.0, 0.95), _row("a", "int8", 0.2, 0.90), _row("b", "int8", 0.4, 0.948), _row("c", "fp32", 0.1, 0.5, "gpu")]
    advice = {a["device"]: a for a in recommend(rows, 0.95, "accuracy")}
    assert advice["cpu0"]["target"] == "b" and advice["cpu0"]["precision"] == "int8"
    assert advice["cpu0"]["drop"] == pytest.approx(0.002)
    assert advice["gpu"]["target"] is None and "no student within" in advice["gpu"]["reason"]


def test_a_collapsed_student_is_flagged():
    assert "near chance" in student_warnings(0.11, "accuracy", 10, 0.99)[0]
    assert "points below its teacher" in student_warnings(0.70, "accuracy", 10, 0.99)[0]
    assert student_warnings(0.93, "accuracy", 10, 0.99) == []
    assert json.dumps(student_warnings(0.5, "teacher agreement", 10, None)) == "[]"


def test_output_diff_and_agreement_budgets_gate_a_run(compressed_run, tmp_path):
    run = compressed_run.copy(tmp_path)
    base = ["validate", "--run-dir", str(run), "--target", "cpu", "--set", "targets.0.budget={min_agreement_with_fp32: 0.99}"]
    result = CliRunner().invoke(app, base)
    assert result.exit_code == 0, result.output
    verdicts = json.loads((run / "what-if" / "report.json").read_text())["targets"][0]["verdicts"]  # a what-if's report
    assert [(v["budget"], v["verdict"]) for v in verdicts] == [("min_agreement_with_fp32", "pass")]
    result = CliRunner().invoke(app, [*base[:-1], "targets.0.budget={max_output_diff: 1.0e-12}"])
    assert result.exit_code == 3 and "max_output_diff" in result.output, result.output
