"""The plan stage (issue #28): candidates timed as the gate times, the latency filter, the cache, the label-free probe,
bad candidates, and the trtexec and ssh paths."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from edgedistill.backends.base import LatencyStats
from edgedistill.cli import app
from edgedistill.config.schema import Budget, InputSpec, StudentSpec, TargetSpec
from edgedistill.errors import BadInput
from edgedistill.models.factory import create_model, student_candidates
from edgedistill.models.zoo import ZOO, auto_ladder
from edgedistill.recipe import load_recipe
from edgedistill.stages import plan as plan_stage
from edgedistill.stages.export import export_onnx
from tests.remote_run import make_teacher, ssh_target_entry

ROOT = Path(__file__).resolve().parents[1]
SPEC = InputSpec(channels=1, size=28, mean=[0.1307], std=[0.3081])
CANDIDATES = ["lenet5_w0.25", "lenet5_w0.5", "resnet8_w8"]


def write_recipe(folder: Path, targets: list[dict] | None = None, **student) -> Path:
    make_teacher(folder / "teacher.safetensors")
    data = {
        "name": "plan-test",
        "teacher": {"arch": "lenet5", "weights": "teacher.safetensors", "num_classes": 10, "input": SPEC.model_dump()},
        "pool": [{"builtin": "sklearn-digits", "count": 600}],
        "select": {"per_class": 30, "batch_size": 200},
        "student": {"candidates": CANDIDATES, "plan": {"probe_steps": 4, "probe_top": 2, "cache": "cache.json"}} | student,
        "distill": {"epochs": 1, "batch_size": 16, "augment": None},
        "eval": {"labeled": "builtin:mnist-heldout", "limit": 100},
        "targets": targets
        if targets is not None
        else [
            {"name": "cpu", "threads": 1, "warmup": 2, "iterations": 20, "budget": {"p99_ms": 1000.0}},
            {"name": "ov", "runtime": "openvino", "precision": "int8", "warmup": 2, "iterations": 20, "budget": {"p99_ms": 1000.0}},
        ],
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def fake_latency(ms: float, rounds: int = 5) -> dict:
    rng = np.random.default_rng(0)
    stats = LatencyStats.from_rounds([ms * (1 + 0.01 * rng.random(20)) for _ in range(rounds)], 1)
    return stats.as_dict()


@pytest.fixture
def counted_timing(monkeypatch):
    """time_model replaced by a deterministic one that counts its calls: latency proportional to parameters."""
    calls = []

    def fake(target, model, spec):
        calls.append((target.name, target.precision, model.name))
        return fake_latency(0.01 * (1 + model.stat().st_size / 50_000)), {"version": "fake"}, None

    monkeypatch.setattr(plan_stage, "time_model", fake)
    return calls


def _selection(n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (n, 1, 28, 28), dtype=np.uint8), rng.integers(0, 255, (16, 1, 28, 28), dtype=np.uint8)


def _teacher(recipe):
    from edgedistill.pipeline import load_teacher

    return load_teacher(recipe)


# ------------------------------------------------------------------------------------------------ zoo and schema


def test_ladders_build_and_old_names_stay():
    for name in ("lenet5", "lenet5_half", "lenet5_w0.25", "resnet20_w32", "mobilenetv3_small_w0.5", "mobilenetv3_large_w1"):
        assert name in ZOO.names()
    model = create_model("resnet8_w8", 7, 1)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 7)
    assert create_model("mobilenetv3_small_w0.35", 5, 1)(torch.zeros(2, 1, 64, 64)).shape == (2, 5)


def test_zoo_mobilenets_take_a_stride_1_stem_below_64_px():
    assert create_model("mobilenetv3_small_w0.5", 16, 3, 32).features[0][0].stride == (1, 1)
    assert create_model("mobilenetv3_large_w0.35", 10, 1, 28).features[0][0].stride == (1, 1)
    assert create_model("mobilenetv3_small_w0.5", 16, 3, 64).features[0][0].stride == (2, 2)
    assert create_model("mobilenetv3_small_w0.5", 16, 3, 224).features[0][0].stride == (2, 2)
    assert "lenet5_w0.5" in auto_ladder(1, 28) and all("mobilenet" in n for n in auto_ladder(3, 224))


def test_single_arch_dumps_as_before():
    assert StudentSpec(arch="lenet5_half").model_dump(mode="json") == {"arch": "lenet5_half", "feature_layer": None}
    with pytest.raises(ValueError, match="either arch"):
        StudentSpec(arch="lenet5", candidates=["lenet5_half"])
    spec = StudentSpec(candidates=["lenet5", {"arch": "resnet8_w8", "feature_layer": "pool"}])
    assert student_candidates(spec, 1, 28) == [("lenet5", None), ("resnet8_w8", "pool")]
    assert student_candidates(StudentSpec(arch="auto"), 1, 28) == [(n, None) for n in auto_ladder(1, 28)]


def test_unknown_candidate_is_one_line_with_a_suggestion(tmp_path):
    path = write_recipe(tmp_path, candidates=["lenet5_w0.5", "resnet8_w9"])
    with pytest.raises(BadInput, match=r"student.candidates: resnet8_w9: unknown architecture 'resnet8_w9'; did you mean 'resnet8_w8'"):
        load_recipe(path)


def test_candidate_that_cannot_take_the_input_is_named_before_any_timing(tmp_path, counted_timing):
    (tmp_path / "fixednets.py").write_text(
        "import torch\n"
        "class Fixed(torch.nn.Module):\n"
        "    def __init__(self, num_classes, in_channels):\n"
        "        super().__init__()\n"
        "        self.fc = torch.nn.Linear(in_channels * 32 * 32, num_classes)\n"
        "    def forward(self, x):\n"
        "        return self.fc(x.flatten(1))\n"
        "def build(num_classes=10, in_channels=3):\n"
        "    return Fixed(num_classes, in_channels)\n"
    )
    path = write_recipe(tmp_path, candidates=["lenet5_w0.5", "fixednets:build"])
    with pytest.raises(BadInput) as err:
        load_recipe(path)
    message = str(err.value)
    assert "student.candidates: fixednets:build" in message and "1x28x28" in message and "\n" not in message
    assert counted_timing == []


# ------------------------------------------------------------------------------------------------ the filter, real runtimes


@pytest.mark.parametrize(("runtime", "precision"), [("onnxruntime", "fp32"), ("openvino", "fp32")])
def test_filter_on_real_timings_met_missed_inconclusive(tmp_path, runtime, precision):
    """One real measurement judged at three limits: far above (fits), far below (misses), inside the interval of the
    rounds (inconclusive: not called fitting)."""
    torch.manual_seed(0)
    model = export_onnx(create_model("lenet5_w0.5", 10, 1), SPEC, tmp_path / "m.onnx")
    target = TargetSpec(name="t", runtime=runtime, precision=precision, warmup=2, iterations=40, rounds=5)
    latency, facts, error = plan_stage.time_model(target, model, SPEC)
    assert error is None and facts["runtime"] == runtime and latency["rounds"] == 5
    low, high = plan_stage._interval(latency, "p99_ms")
    assert low < high

    def fits(limit: float) -> str:
        judged = target.model_copy(update={"budget": Budget(p99_ms=limit)})
        return plan_stage._fits({"targets": [{"verdicts": plan_stage.judge(judged, latency), "error": None}]})

    assert fits(1000.0) == "fit"
    assert fits(low / 100) == "miss"
    assert fits((low + high) / 2) == "inconclusive"


# ------------------------------------------------------------------------------------------------ cache


def test_cache_key_changes_with_runtime_precision_input_and_network():
    base = TargetSpec(name="t")
    net = create_model("lenet5", 10, 1, 28)
    key = plan_stage.cache_key("lenet5", net, 10, SPEC, "fp32", base)
    assert key == plan_stage.cache_key(
        "lenet5", create_model("lenet5", 10, 1, 28), 10, SPEC, "fp32", base.model_copy(update={"name": "other-name"})
    )
    strided = create_model("lenet5", 10, 1, 28)
    strided.features[0].stride = (2, 2)  # the same name building another network (a zoo or plugin change)
    for changed in (
        plan_stage.cache_key("lenet5", net, 10, SPEC, "int8", base),
        plan_stage.cache_key("lenet5", net, 10, SPEC, "fp32", base.model_copy(update={"runtime": "openvino"})),
        plan_stage.cache_key("lenet5", net, 10, SPEC.model_copy(update={"size": 32}), "fp32", base),
        plan_stage.cache_key("lenet5", net, 10, SPEC, "fp32", base.model_copy(update={"threads": 2})),
        plan_stage.cache_key("lenet5", net, 100, SPEC, "fp32", base),
        plan_stage.cache_key("lenet5", strided, 10, SPEC, "fp32", base),
    ):
        assert changed != key
    facts = plan_stage.device_facts(base)
    assert facts["cpu_model"] is not None and facts["version"] is not None


def test_second_plan_hits_the_cache_and_a_changed_precision_retimes(tmp_path, counted_timing):
    recipe = load_recipe(write_recipe(tmp_path, plan={"probe_steps": 0, "cache": "cache.json"}))
    train, holdout = _selection()
    teacher = _teacher(recipe)
    first = plan_stage.plan_students(recipe, teacher, train, holdout, tmp_path)
    assert len(counted_timing) == len(CANDIDATES) * 2 and first["cache"]["misses"] == 6
    second = plan_stage.plan_students(recipe, teacher, train, holdout, tmp_path)
    assert len(counted_timing) == 6 and second["cache"]["hits"] == 6
    assert [r["targets"][0]["source"] for r in second["candidates"]] == ["cache"] * 3
    changed = recipe.model_copy(update={"targets": [recipe.targets[0], recipe.targets[1].model_copy(update={"precision": "fp16"})]})
    plan_stage.plan_students(changed, teacher, train, holdout, tmp_path)
    assert counted_timing[6:] == [("ov", "fp16", "candidate.student.fp16.onnx")] * 3
    assert json.loads((tmp_path / "cache.json").read_text())["version"] == 1


def test_contended_timings_are_not_cached(tmp_path):
    cache = plan_stage.LatencyCache(tmp_path / "c.json")
    cache.put({"a": 1}, {"contended": True}, {})
    cache.put({"a": 2}, {"noisy": False, "contended": False, "p99_ms": 1.0}, {})
    assert plan_stage.LatencyCache(tmp_path / "c.json").get({"a": 2})["latency"]["p99_ms"] == 1.0
    assert plan_stage.LatencyCache(tmp_path / "c.json").get({"a": 1}) is None
    (tmp_path / "broken.json").write_text("{not json")
    assert plan_stage.LatencyCache(tmp_path / "broken.json").entries == {}


# ------------------------------------------------------------------------------------------------ end to end, label-free


def test_plan_end_to_end_never_reads_the_evaluation_set(tmp_path, monkeypatch):
    """`edgedistill plan` with real ONNX Runtime and OpenVINO timings chooses among the fitting candidates by the
    probe; reading the evaluation set or any label at any point fails the test."""
    import edgedistill.inputs.labeled as labeled
    import edgedistill.stages.stage as stage

    def forbidden(*_a, **_k):
        raise AssertionError("the plan read the evaluation set")

    monkeypatch.setattr(stage, "load_labeled", forbidden)
    monkeypatch.setattr(labeled, "load_labeled", forbidden)
    monkeypatch.setattr(stage.RunContext, "eval_set", forbidden)
    path = write_recipe(tmp_path)
    result = CliRunner().invoke(app, ["plan", str(path), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert [r["fits"] for r in plan["candidates"]] == ["fit"] * 3
    probed = [r for r in plan["candidates"] if r.get("probe_agreement") is not None]
    assert {r["arch"] for r in probed} == {"resnet8_w8", "lenet5_w0.5"}  # the two largest that fit
    chosen = json.loads((tmp_path / "run" / "plan_choice.json").read_text())
    assert chosen["arch"] == max(probed, key=lambda r: (r["probe_agreement"], -r["parameters"]))["arch"]
    assert "chosen:" in result.output and "resnet8_w8" in result.output
    for name in ("plan.md", "plan.html"):
        assert "Choose the student" in (tmp_path / "run" / name).read_text()


def test_no_fit_exits_3_with_the_nearest_misses(tmp_path, counted_timing):
    targets = [{"name": "cpu", "warmup": 1, "iterations": 10, "budget": {"p99_ms": 0.001}}]
    path = write_recipe(tmp_path, targets=targets)
    result = CliRunner().invoke(app, ["plan", str(path), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 3, result.output
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert plan["chosen"] is None and plan["near_misses"][0]["arch"] == "lenet5_w0.25"
    assert "nearest: lenet5_w0.25" in result.output and "p99_ms >=" in result.output
    assert not (tmp_path / "run" / "plan_choice.json").exists()


def test_compress_distills_the_chosen_student(tmp_path, counted_timing):
    from edgedistill.pipeline import compress

    targets = [{"name": "cpu", "warmup": 1, "iterations": 10, "also_time": [], "batch_sizes": [1], "budget": {"p99_ms": 1000.0}}]
    path = write_recipe(tmp_path, targets=targets)
    data = yaml.safe_load(path.read_text())
    data["export"] = {"int8": {"enabled": False}, "teacher": False}
    path.write_text(yaml.safe_dump(data))
    monkeypatch_free = compress(path, tmp_path / "run")
    assert monkeypatch_free["student"]["arch"] == json.loads((tmp_path / "run" / "plan_choice.json").read_text())["arch"]
    assert monkeypatch_free["plan"]["chosen"]["arch"] == monkeypatch_free["student"]["arch"]
    from edgedistill.results.plan import plan_html, plan_markdown, plan_of
    from edgedistill.results.report import as_report

    plan = plan_of(as_report(monkeypatch_free))  # what the summary.md / report.html hooks read
    assert "**chosen**" in plan_markdown(plan) and "<h2>Choose the student</h2>" in plan_html(plan)
    timed = len(counted_timing)
    again = compress(path, tmp_path / "run")  # everything up to date: nothing re-timed, nothing redone
    assert len(counted_timing) == timed and again["student"]["arch"] == monkeypatch_free["student"]["arch"]


# ------------------------------------------------------------------------------------------------ trtexec and ssh


def test_plan_times_with_trtexec(tmp_path, monkeypatch):
    standin = Path(__file__).with_name("fake_trtexec_standin.py")
    wrapper = tmp_path / "trtexec"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{standin}" "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("EDGEDISTILL_ENGINE_CACHE", str(tmp_path / "engines"))
    targets = [
        {"name": "trt", "runtime": "trtexec", "trtexec": str(wrapper), "precision": "fp16", "iterations": 20, "budget": {"p99_ms": 1000.0}}
    ]
    recipe = load_recipe(write_recipe(tmp_path, targets=targets, candidates=["lenet5_w0.25"], plan={"probe_steps": 0, "cache": "c.json"}))
    train, holdout = _selection()
    plan = plan_stage.plan_students(recipe, _teacher(recipe), train, holdout, tmp_path)
    row = plan["candidates"][0]["targets"][0]
    assert row["error"] is None and row["latency"]["p99_ms"] > 0 and plan["chosen"]["arch"] == "lenet5_w0.25"
    assert plan_stage.device_facts(recipe.targets[0])["trtexec"] == str(wrapper)


def test_plan_times_over_ssh(tmp_path, sshd_server):
    targets = [ssh_target_entry(sshd_server, iterations=20)]
    recipe = load_recipe(write_recipe(tmp_path, targets=targets, candidates=["lenet5_w0.25"], plan={"probe_steps": 0, "cache": "c.json"}))
    train, holdout = _selection()
    plan = plan_stage.plan_students(recipe, _teacher(recipe), train, holdout, tmp_path)
    row = plan["candidates"][0]["targets"][0]
    assert row["error"] is None and row["latency"]["p99_ms"] > 0
    key = plan_stage.cache_key(
        "lenet5_w0.25", create_model("lenet5_w0.25", 10, 1, 28), 10, SPEC, "fp32", recipe.targets[0].resolved(recipe)
    )
    assert key["ssh"] == sshd_server.destination and "cpu_model" not in key
    assert row["source"] == "measured" and row["facts"]  # cached only when neither noisy nor contended (LatencyCache)


def test_inconclusive_figures_are_timed_again_never_settled_from_the_cache(tmp_path, monkeypatch):
    calls = []

    def straddling(target, model, spec):  # rounds' p99 from 0.9 to 1.1 ms: a 1 ms budget cannot be settled
        calls.append(target.name)
        return LatencyStats.from_rounds([np.full(20, v) for v in (0.9, 0.95, 1.0, 1.05, 1.1)], 1).as_dict(), {}, None

    monkeypatch.setattr(plan_stage, "time_model", straddling)
    loose = [{"name": "cpu", "budget": {"p99_ms": 1000.0}}]
    recipe = load_recipe(write_recipe(tmp_path, targets=loose, candidates=["lenet5_w0.25"], plan={"probe_steps": 0, "cache": "c.json"}))
    train, holdout = _selection()
    teacher = _teacher(recipe)
    assert plan_stage.plan_students(recipe, teacher, train, holdout, tmp_path)["chosen"]["arch"] == "lenet5_w0.25"
    tight = recipe.model_copy(update={"targets": [recipe.targets[0].model_copy(update={"budget": Budget(p99_ms=1.0)})]})
    plan = plan_stage.plan_students(tight, teacher, train, holdout, tmp_path)  # cached, but inconclusive here: re-timed
    assert calls == ["cpu", "cpu"] and plan["chosen"] is None and plan["candidates"][0]["fits"] == "inconclusive"
    plan_stage.plan_students(tight, teacher, train, holdout, tmp_path)
    assert calls == ["cpu", "cpu", "cpu"]
    assert "inconclusive" in str(plan_stage.no_fit_error(plan))
