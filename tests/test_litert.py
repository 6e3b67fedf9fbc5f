"""Runtime litert (backends/litert.py): a runtime whose files are not ONNX. The PyTorch student is converted to .tflite
by litert-torch, its INT8 copy is full-integer (ai-edge-quantizer, calibrated on the selected images), and LiteRT runs
them here and on a board over ssh (litert_worker.py in the board's Python; the "board" is tests/sshd.py's loopback sshd).

The runner tests need ai-edge-litert (`make test` installs it); those that convert also need litert-torch, the
`litert` extra, and skip without it, saying so."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from edgedistill.backends import RUNTIMES, MakeInputs, check_target, create_runner
from edgedistill.backends.base import time_rounds
from edgedistill.backends.litert import LiteRTRunner, RemoteLiteRTRunner
from edgedistill.cli import app
from edgedistill.config.schema import InputSpec, TargetSpec
from edgedistill.errors import BadInput, TargetUnavailable
from edgedistill.inputs.builtin import load_builtin
from edgedistill.inputs.images import convert_array, normalize
from edgedistill.models.factory import create_model
from edgedistill.stages.export import export_onnx
from tests.remote_run import ROOT, SHIPPED_TEACHER, make_teacher, ssh_target_entry

HAS_RUNTIME = importlib.util.find_spec("ai_edge_litert") is not None
HAS_CONVERTER = HAS_RUNTIME and importlib.util.find_spec("litert_torch") is not None
needs_runtime = pytest.mark.skipif(not HAS_RUNTIME, reason="needs ai-edge-litert: pip install ai-edge-litert")
needs_converter = pytest.mark.skipif(not HAS_CONVERTER, reason="needs litert-torch: pip install 'edgedistill[litert]'")

SPEC = InputSpec(channels=1, size=28, mean=[0.1307], std=[0.3081])
MISSING = ("ai_edge_litert", "ai_edge_litert.interpreter", "tflite_runtime", "tflite_runtime.interpreter")


FIXTURES = ROOT / "tests" / "data" / "litert"  # LiteRT files of the shipped demo teacher, for CI without the converter


def make_files(folder: Path) -> dict:
    """The shipped demo LeNet-5 (a trained classifier) as the student, its ONNX export and its two LiteRT files made by
    the row's makers, calibrated on 200 of the first 300 sklearn digits. `python -m tests.test_litert` rewrites
    tests/data/litert/ with them."""
    from edgedistill.backends.litert import FP32_TFLITE, INT8_TFLITE

    student = teacher_lenet5()
    onnx_path = export_onnx(student, SPEC, folder / "student.onnx")
    images = convert_array(load_builtin("sklearn-digits").images[:300], SPEC)
    made = {}
    for precision, artifact in (("fp32", FP32_TFLITE), ("int8", INT8_TFLITE)):
        out = folder / artifact.file
        made[precision] = (
            out,
            artifact.make(MakeInputs(onnx_path, out, images, tuple(SPEC.mean), tuple(SPEC.std), max_samples=200, student=student)),
        )
    return made


def teacher_lenet5() -> torch.nn.Module:
    if not SHIPPED_TEACHER.is_file():
        pytest.skip(f"needs the shipped demo teacher {SHIPPED_TEACHER}")
    student = create_model("lenet5", 10, 1).eval()
    student.load_state_dict(load_file(str(SHIPPED_TEACHER)))
    return student


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The LiteRT files, made here when litert-torch is installed, else the checked-in copies; and digits to run."""
    if not HAS_RUNTIME:
        pytest.skip("needs ai-edge-litert: pip install ai-edge-litert")
    student = teacher_lenet5()
    if HAS_CONVERTER:
        made = make_files(tmp_path_factory.mktemp("litert"))
    else:
        made = {p: (FIXTURES / name, None) for p, name in (("fp32", "student.tflite"), ("int8", "student.int8.tflite"))}
    digits = load_builtin("sklearn-digits")
    x = normalize(torch.from_numpy(convert_array(digits.images[300:800], SPEC)), SPEC).numpy()
    with torch.no_grad():
        reference = student(torch.from_numpy(x)).numpy()
    return {"made": made, "x": x, "reference": reference, "labels": digits.labels[300:800]}


# ------------------------------------------------------------------------------------------------ the row


def test_the_row_runs_tflite_files_at_fp32_and_int8_here_and_over_ssh():
    row = RUNTIMES.get("litert")
    assert row.precisions == ("fp32", "int8") and row.over_ssh and set(row.options.model_fields) == {"threads", "remote_python"}
    assert row.artifact_for("fp32").file == "student.tflite" and row.artifact_for("int8").file == "student.int8.tflite"
    assert row.artifact_for("int8").calibrated and not row.artifact_for("fp32").calibrated and not row.builds_engine
    assert "pip install" in row.install and "litert" in row.install
    check_target(TargetSpec(name="phone", runtime="litert", precision="int8", threads=2, ssh="pi@board.local"))
    with pytest.raises(BadInput, match="precision fp16 needs runtime"):
        check_target(TargetSpec(name="phone", runtime="litert", precision="fp16"))
    with pytest.raises(BadInput, match="providers"):
        check_target(TargetSpec(name="phone", runtime="litert", providers=["cuda"]))
    probe = row.probe()
    assert probe["usable"] == HAS_RUNTIME and probe["detail"]


# ------------------------------------------------------------------------------------------------ here


def test_converted_student_matches_pytorch_at_fp32_and_int8(converted):
    x, reference, labels = converted["x"], converted["reference"], converted["labels"]
    fp32, fp32_facts = converted["made"]["fp32"]
    int8, int8_facts = converted["made"]["int8"]
    if int8_facts is not None:  # made here, by the row's makers
        assert int8_facts["calibration_samples"] == 200 and int8_facts["bytes"] < int8_facts["fp32_bytes"] / 3
        assert "full-integer" in int8_facts["scheme"] and fp32_facts["bytes"] == fp32.stat().st_size
    with create_runner(TargetSpec(name="here", runtime="litert"), fp32) as runner:
        assert isinstance(runner, LiteRTRunner)
        logits = np.concatenate([runner.infer(x[i : i + 256]) for i in range(0, len(x), 256)])
        assert (logits.argmax(1) == reference.argmax(1)).mean() >= 0.99 and np.abs(logits - reference).max() < 1e-3
        stats = time_rounds(runner, 1, 2, 20, rounds=2)
        assert stats.iterations == 20 and stats.p50_ms > 0 and runner.time(4, 1, 5).batch == 4
        facts = runner.facts()
        assert facts["runtime"] == "litert" and facts["version"] and facts["integer_io"] is False and facts["threads"] == 1
    with create_runner(TargetSpec(name="here", runtime="litert", precision="int8"), int8) as runner:
        int8_logits = runner.infer(x)
        assert runner.facts()["integer_io"] is True  # int8 in and out: the runner quantizes and dequantizes
    agreement = (int8_logits.argmax(1) == reference.argmax(1)).mean()
    accuracy, fp32_accuracy = (int8_logits.argmax(1) == labels).mean(), (reference.argmax(1) == labels).mean()
    assert agreement >= 0.97 and accuracy >= fp32_accuracy - 0.02, (agreement, accuracy, fp32_accuracy)


@needs_converter
def test_mobilenetv3_with_hardswish_converts_exactly(tmp_path):
    torch.manual_seed(0)
    student = create_model("mobilenetv3_small_w0.35", 10, 3).eval()
    spec = InputSpec(channels=3, size=32, mean=[0.5] * 3, std=[0.25] * 3)
    onnx_path = export_onnx(student, spec, tmp_path / "student.onnx")
    out = tmp_path / "student.tflite"
    RUNTIMES.get("litert").artifact_for("fp32").make(MakeInputs(onnx_path, out, student=student))
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        reference = student(x).numpy()
    with LiteRTRunner(out, threads=1) as runner:
        assert np.abs(runner.infer(x.numpy()) - reference).max() < 1e-4


# ------------------------------------------------------------------------------------------------ on a board


def test_runs_on_a_board_over_ssh_like_here(converted, sshd_server):
    for precision in ("fp32", "int8"):
        model = converted["made"][precision][0]
        with LiteRTRunner(model, threads=1) as local:
            expected = local.infer(converted["x"][:64])
        spec = TargetSpec(**ssh_target_entry(sshd_server, runtime="litert", precision=precision))
        runner = create_runner(spec, model)
        try:
            assert isinstance(runner, RemoteLiteRTRunner)
            workdir = runner.workdir
            assert os.path.isfile(f"{workdir}/model.tflite") and os.path.isfile(f"{workdir}/edgedistill_litert.py")
            np.testing.assert_allclose(runner.infer(converted["x"][:64]), expected, atol=1e-6)
            stats = time_rounds(runner, 1, 1, 10, rounds=2)
            assert stats.iterations == 10 and len(stats.per_round["p50_ms"]) == 2
            facts = runner.facts()
            assert facts["ssh"] == sshd_server.destination and facts["version"] and facts["integer_io"] is (precision == "int8")
        finally:
            runner.close()
        assert not os.path.exists(workdir)


def test_a_board_without_litert_is_one_line(converted, sshd_server, tmp_path):
    fake = tmp_path / "python-without-litert"
    blocked = "; ".join(f'sys.modules["{name}"] = None' for name in MISSING)
    run_script = "sys.argv = sys.argv[1:]; exec(open(sys.argv[0]).read())"
    fake.write_text(f"#!/bin/sh\nexec {sys.executable} -c 'import sys; {blocked}; {run_script}' \"$@\"\n")
    fake.chmod(0o755)
    spec = TargetSpec(**ssh_target_entry(sshd_server, runtime="litert", remote_python=str(fake)))
    with pytest.raises(TargetUnavailable, match="lacks ai-edge-litert") as info:
        create_runner(spec, converted["made"]["fp32"][0])
    assert "pip install ai-edge-litert" in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------------ compress


def _recipe(folder: Path) -> Path:
    recipe = {
        "name": "litert",
        "seed": 0,
        "teacher": {
            "arch": "lenet5",
            "weights": str(make_teacher(folder / "teacher.safetensors")),
            "num_classes": 10,
            "input": SPEC.model_dump(),
        },
        "pool": [{"builtin": "sklearn-digits", "count": 300}],
        "select": {"per_class": 15, "batch_size": 150},
        "student": {"arch": "lenet5_half"},
        "distill": {"epochs": 1, "batch_size": 32, "augment": None},
        "eval": {"labeled": "builtin:sklearn-digits", "limit": 100},
        "export": {"teacher": False, "int8": {"samples": 64}},
        "targets": [
            {
                "name": "phone",
                "runtime": "litert",
                "precision": "int8",
                "warmup": 2,
                "iterations": 20,
                "rounds": 1,
                "batch_sizes": [1],
                "also_time": ["fp32"],
                "budget": {"p99_ms": 1000.0},
            }
        ],
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@needs_converter
def test_compress_makes_the_tflite_files_and_their_deployment_rows(tmp_path):
    from edgedistill.pipeline import compress

    torch.set_num_threads(1)
    report = compress(_recipe(tmp_path), tmp_path / "run")
    run = tmp_path / "run"
    assert (run / "student.tflite").is_file() and (run / "student.int8.tflite").is_file() and (run / "student.int8.onnx").is_file()
    int8 = json.loads((run / "int8.json").read_text())["models"]["student.int8.tflite"]
    assert "full-integer" in int8["scheme"] and int8["bytes"] < int8["fp32_bytes"]
    target = report["targets"][0]
    assert target["error"] is None and target["runtime"] == "litert" and target["facts"]["integer_io"] is True
    rows = {(r["model"], r["precision"]): r for r in report["deployment"]["rows"] if r["runtime"] == "litert"}
    assert set(rows) == {("student", "int8"), ("student", "fp32")}, rows
    assert rows[("student", "int8")]["gated"] and rows[("student", "int8")]["p50_ms"] > 0
    assert rows[("student", "fp32")]["error"] is None and rows[("student", "fp32")]["comparison"]["top1_agreement"] >= 0.99
    assert rows[("student", "int8")]["bytes"] == (run / "student.int8.tflite").stat().st_size


# ------------------------------------------------------------------------------------------------ bad input


def test_missing_litert_is_one_line_naming_the_install_exit_4(tmp_path, monkeypatch):
    for name in MISSING:
        monkeypatch.setitem(sys.modules, name, None)
    assert RUNTIMES.get("litert").probe()["usable"] is False
    with pytest.raises(TargetUnavailable, match=r"pip install ai-edge-litert") as info:
        create_runner(TargetSpec(name="phone", runtime="litert"), tmp_path / "student.tflite")
    assert info.value.exit_code == 4 and "\n" not in str(info.value)
    # compress stops in its pre-flight, before any work, with that line and exit 4
    result = CliRunner().invoke(app, ["compress", str(_recipe(tmp_path)), "--run-dir", str(tmp_path / "run")])
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 4 and len(errors) == 1 and "pip install ai-edge-litert" in errors[0], result.output
    assert not (tmp_path / "run" / "student.safetensors").exists()


def test_missing_converter_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "litert_torch", None)
    student = create_model("lenet5_half", 10, 1).eval()
    onnx_path = export_onnx(student, SPEC, tmp_path / "student.onnx")
    with pytest.raises(TargetUnavailable, match=r"litert-torch is not installed .*pip install 'edgedistill\[litert\]'") as info:
        RUNTIMES.get("litert").artifact_for("fp32").make(MakeInputs(onnx_path, tmp_path / "student.tflite", student=student))
    assert info.value.exit_code == 4 and "\n" not in str(info.value)


@needs_runtime
def test_an_onnx_file_or_a_broken_file_is_refused_in_one_line(tmp_path):
    bad = tmp_path / "student.tflite"
    bad.write_bytes(b"not a flatbuffer")
    with pytest.raises(BadInput, match="LiteRT cannot load it") as info:
        LiteRTRunner(bad)
    assert "\n" not in str(info.value)
    with pytest.raises(TargetUnavailable, match="runs .tflite files, not teacher.onnx"):
        LiteRTRunner(tmp_path / "teacher.onnx")


if __name__ == "__main__":  # rewrites the checked-in LiteRT files (after the demo teacher or the makers change)
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for path, _ in make_files(FIXTURES).values():
        print(path, path.stat().st_size)
    (FIXTURES / "student.onnx").unlink()
