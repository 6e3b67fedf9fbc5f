"""Runtime backends: selection and errors, latency statistics, the trtexec backend against a stand-in,
and TensorRT / GPU paths wherever the machine has them (skipped with the reason elsewhere)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image
from pydantic import Field
from typer.testing import CliRunner

from edgedistill.backends import (
    RUNTIMES,
    Runtime,
    RuntimeOptions,
    check_target,
    create_runner,
    register_runtime,
    runtime_options,
    threads_option,
)
from edgedistill.backends.base import MIN_TIMED_CALLS, LatencyStats, time_calls, time_rounds
from edgedistill.backends.engine_cache import EngineCache
from edgedistill.backends.hosts.local import LocalHost
from edgedistill.backends.onnxruntime import OnnxRuntimeRunner, resolve_providers
from edgedistill.backends.openvino import OpenVinoOptions, OpenVinoRunner
from edgedistill.backends.runtime import FP32
from edgedistill.backends.trtexec.runner import TrtexecRunner, find_trtexec
from edgedistill.cli import app
from edgedistill.config.schema import TargetSpec
from edgedistill.errors import BadInput, TargetUnavailable
from edgedistill.extensions import recipe_schema
from edgedistill.inputs.builtin import load_builtin
from edgedistill.models.onnx_info import onnx_info
from edgedistill.recipe import recipe_from_dict
from edgedistill.stages.export import export_onnx
from edgedistill.stages.quantize import quantize_int8
from tests.test_export import CLASSES, MNIST, heldout, trained_lenet5, write_class_folders

STANDIN = Path(__file__).with_name("fake_trtexec_standin.py")
ROOT_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "demo.yaml"


def _has_module(name: str) -> bool:
    try:
        __import__(name)
        return True
    except Exception:  # a TensorRT wheel without libnvinfer fails with OSError
        return False


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


HAS_TENSORRT = _has_module("tensorrt")
REAL_TRTEXEC = find_trtexec()
needs_tensorrt = pytest.mark.skipif(
    not (HAS_TENSORRT and _cuda()),
    reason="TensorRT Python API and a CUDA GPU are needed (tensorrt module "
    f"{'present' if HAS_TENSORRT else 'not installed'}, torch.cuda "
    f"{'available' if _cuda() else 'unavailable'})",
)
needs_trtexec = pytest.mark.skipif(
    REAL_TRTEXEC is None or not _cuda(),
    reason="NVIDIA trtexec and a GPU are needed (trtexec not on PATH nor at /usr/src/tensorrt/bin/trtexec, or no CUDA GPU)",
)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("models")
    fp32 = export_onnx(trained_lenet5(), MNIST, folder / "lenet5.onnx", CLASSES)
    calibration = load_builtin("mnist-train").images[:128, None]
    int8_trt = quantize_int8(fp32, folder / "lenet5.int8.trt.onnx", calibration, MNIST.mean, MNIST.std, for_tensorrt=True).path
    int8 = quantize_int8(fp32, folder / "lenet5.int8.onnx", calibration, MNIST.mean, MNIST.std).path
    return {"fp32": fp32, "int8": int8, "int8_trt": int8_trt, "eval": heldout(200)}


@pytest.fixture
def standin_on_path(tmp_path, monkeypatch) -> Path:
    """tests/fake_trtexec_standin.py as `trtexec` on PATH, and an empty engine cache."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "trtexec"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STANDIN}" "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("EDGEDISTILL_ENGINE_CACHE", str(tmp_path / "engines"))
    return wrapper


def _normalized(images: np.ndarray) -> np.ndarray:
    return ((images.astype(np.float32) / 255 - MNIST.mean[0]) / MNIST.std[0]).astype(np.float32)


# --------------------------------------------------------------------------------- latency statistics


def test_latency_stats_flag_noisy_when_rounds_disagree_not_when_calls_spread():
    steady = LatencyStats.from_samples(np.full(100, 2.0) + np.linspace(0, 0.01, 100), batch=1)
    assert not steady.noisy and steady.cv < 0.01 and steady.as_dict()["noisy"] is False and steady.rounds == 1
    spiky = LatencyStats.from_samples(np.r_[np.full(95, 1.0), np.full(5, 10.0)], batch=1)
    assert not spiky.noisy and spiky.cv > 0.1 and spiky.p99_ms == pytest.approx(10.0)  # a long tail is not a noisy measurement
    assert "samples_ms" not in spiky.as_dict() and spiky.throughput_per_s == pytest.approx(1000 / spiky.mean_ms)
    tails = LatencyStats.from_rounds([np.r_[np.full(38, 1.0), np.full(2, 10.0)] for _ in range(5)], batch=1)
    assert not tails.noisy and tails.round_spread == 0 and tails.iterations == 200 and tails.rounds == 5
    drifting = LatencyStats.from_rounds([np.full(40, 1.0), np.full(40, 1.0), np.full(40, 1.3), np.full(40, 1.0), np.full(40, 1.0)], 1)
    assert drifting.noisy and drifting.round_spread == pytest.approx(0.3) and drifting.per_round["p50_ms"][2] == pytest.approx(1.3)
    assert drifting.as_dict()["per_round"]["p99_ms"] == [1.0, 1.0, 1.3, 1.0, 1.0]


def test_time_calls_by_count_or_by_duration():
    calls = []
    samples = time_calls(lambda: calls.append(1), warmup=3, iterations=7)
    assert len(samples) == 7 and len(calls) == 10
    started = time.perf_counter()
    samples = time_calls(lambda: time.sleep(0.002), warmup=0, iterations=10_000, duration_s=0.05)
    assert MIN_TIMED_CALLS <= len(samples) < 100 and time.perf_counter() - started < 2
    assert len(time_calls(lambda: None, 0, 1, duration_s=0)) == MIN_TIMED_CALLS


def test_time_rounds_splits_calls_each_round_after_its_warmup(models):
    runner = OnnxRuntimeRunner(models["fp32"], threads=1)
    calls = []
    real_run = runner.session.run
    runner.session.run = lambda *a: calls.append(1) or real_run(*a)
    stats = time_rounds(runner, 1, warmup=3, iterations=20, rounds=4)
    assert stats.rounds == 4 and stats.iterations == 20 and len(calls) == 4 * (3 + 5)
    assert all(len(v) == 4 for v in stats.per_round.values()) and stats.round_spread is not None
    assert stats.busy_elsewhere_cores is None and not stats.contended  # too short a window to read the machine's load
    timed = time_rounds(runner, 1, warmup=0, iterations=1_000_000, rounds=2, duration_s=0.6)
    assert timed.rounds == 2 and MIN_TIMED_CALLS * 2 <= timed.iterations < 1_000_000
    assert timed.busy_elsewhere_cores is None if not Path("/proc/stat").exists() else timed.busy_elsewhere_cores >= 0


# ----------------------------------------------------------------------------------------- onnxruntime


def test_onnxruntime_runner_records_threads_and_machine(models):
    runner = OnnxRuntimeRunner(models["fp32"], threads=1)
    logits = runner.infer(_normalized(models["eval"].images))
    assert (logits.argmax(1) == models["eval"].labels).mean() > 0.9
    stats = runner.time(1, warmup=2, iterations=15)
    timed = runner.time(8, warmup=1, iterations=1, duration_s=0.02)
    assert stats.iterations == 15 and stats.batch == 1 and timed.batch == 8 and timed.iterations >= MIN_TIMED_CALLS
    facts = runner.facts()
    assert facts["intra_op_threads"] == 1 and facts["inter_op_threads"] == 1
    assert facts["providers"] == ["CPUExecutionProvider"] and facts["usable_cpus"] >= 1 and "cpu_model" in facts


def test_provider_names_and_missing_providers(models):
    assert resolve_providers(None) == ["CPUExecutionProvider"]
    assert resolve_providers(["cuda"]) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers(["tensorrt", "cuda"])[:2] == ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    for alias, name in (("cuda", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider")):
        if name in ort.get_available_providers():
            continue
        with pytest.raises(TargetUnavailable, match=f"lacks {name}.*onnxruntime-gpu"):
            create_runner(TargetSpec(name="gpu", providers=[alias]), models["fp32"])
    with pytest.raises(BadInput, match="need runtime: onnxruntime"):
        check_target(TargetSpec(name="x", runtime="trtexec", providers=["cuda"]))


@pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers() or not _cuda(),
    reason="onnxruntime-gpu with CUDAExecutionProvider and a CUDA GPU are needed",
)
def test_onnxruntime_cuda_provider_matches_cpu(models):
    x = _normalized(models["eval"].images)
    cpu = OnnxRuntimeRunner(models["fp32"]).infer(x)
    gpu = OnnxRuntimeRunner(models["fp32"], providers=["cuda"])
    assert gpu.providers[0] == "CUDAExecutionProvider"
    assert np.abs(gpu.infer(x) - cpu).max() < 1e-3 and gpu.time(1, 5, 20).p50_ms > 0


# ------------------------------------------------------------------------------------ selection/errors


def test_runtime_selection_and_one_line_errors(models, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no trtexec to be found
    assert isinstance(create_runner(TargetSpec(name="cpu"), models["fp32"]), OnnxRuntimeRunner)
    if not Path(runtime_options(TargetSpec(name="t", runtime="trtexec")).trtexec).exists():  # JetPack's default place, then PATH
        with pytest.raises(TargetUnavailable, match=r"trtexec not found at /usr/src/tensorrt/bin/trtexec nor on PATH") as info:
            create_runner(TargetSpec(name="t", runtime="trtexec"), models["fp32"])
        assert "\n" not in str(info.value) and info.value.exit_code == 4
    with pytest.raises(TargetUnavailable, match="trtexec not found at /opt/nowhere/trtexec"):
        create_runner(TargetSpec(name="t", runtime="trtexec", trtexec="/opt/nowhere/trtexec"), models["fp32"])
    if not HAS_TENSORRT:
        with pytest.raises(TargetUnavailable, match="TensorRT Python package is not installed") as info:
            create_runner(TargetSpec(name="trt", runtime="tensorrt"), models["fp32"])
        assert "\n" not in str(info.value)
    elif not _cuda():
        with pytest.raises(TargetUnavailable, match="no CUDA GPU"):
            create_runner(TargetSpec(name="trt", runtime="tensorrt"), models["fp32"])
    with pytest.raises(BadInput, match="runs on this machine"):
        check_target(TargetSpec(name="trt", runtime="tensorrt", ssh="jetson"))
    info = onnx_info(models["fp32"])
    assert (info.item_shape, info.batch, info.quantized) == ((1, 28, 28), None, False)
    assert onnx_info(models["int8_trt"]).quantized is True


# ------------------------------------------------------------------------- runtime options: each row's own keys


def test_a_target_key_is_refused_on_a_runtime_that_does_not_read_it():
    cases = [
        (
            {"runtime": "openvino", "trtexec": "/usr/bin/trtexec"},
            "targets.0: trtexec (the trtexec binary): they need runtime: trtexec; runtime openvino does not read trtexec "
            "(drop it, or change the runtime; its options: threads)",
        ),
        (
            {"runtime": "tensorrt", "remote_python": "/opt/py"},
            "targets.0: remote_python (the device's Python): they need runtime: onnxruntime or litert; runtime tensorrt does not "
            "read remote_python (drop it, or change the runtime; its options: none)",
        ),
        (
            {"runtime": "openvino", "threadz": 2},
            "targets.0: threadz is not a target key nor an option of runtime openvino (its options: threads); did you mean 'threads'?",
        ),
        (
            {"runtime": "onnxruntime", "threads": -1},
            "targets.0.threads: Input should be greater than or equal to 0 (an option of runtime onnxruntime)",
        ),
    ]
    for keys, message in cases:
        with pytest.raises(BadInput) as info:
            check_target(TargetSpec(name="x", **keys), "targets.0")
        assert str(info.value) == message
    # a run.json recorded before the runtimes owned their keys has all four on every target, at these defaults: read alike
    recorded = TargetSpec(name="ov", runtime="openvino", **TargetSpec.DUMPED_OPTIONS)
    check_target(recorded)
    assert runtime_options(recorded) == OpenVinoOptions(threads=1)
    # and a target still dumps them (stage fingerprints of earlier runs stay the same), round trip included
    fresh = TargetSpec(name="ov", runtime="openvino", threads=2)
    dump = fresh.model_dump(mode="json")
    assert {k: dump[k] for k in TargetSpec.DUMPED_OPTIONS} == {**TargetSpec.DUMPED_OPTIONS, "threads": 2}
    assert TargetSpec.model_validate(dump).model_dump(mode="json") == dump and runtime_options(TargetSpec.model_validate(dump)).threads == 2


class ToyOptions(RuntimeOptions):
    """Test-only: a runtime's own key, and the shared threads."""

    toy_mark: str = Field("unmarked", title="the toy's mark", description="test-only: what the toy runner records")
    threads: int = threads_option("the toy runtime")


def test_a_runtime_rows_own_key_loads_from_a_recipe_and_reaches_its_runner(models):
    """A row registered the way a plugin registers one: its options model's key is read from the recipe, checked, and
    handed typed to its runner (real ONNX Runtime underneath); other runtimes refuse it, the schema offers it on its
    targets only."""
    opened = []

    def open_runner(target, model):
        options = runtime_options(target)
        opened.append(options)
        return OnnxRuntimeRunner(model, options.threads)

    register_runtime(
        Runtime(
            "toy_opts",
            "test-only: ONNX Runtime's CPU",
            open_runner,
            lambda: {"usable": True, "detail": "test"},
            "nothing",
            {"fp32": FP32},
            options=ToyOptions,
        )
    )
    try:
        recipe = recipe_from_dict(
            {
                "name": "t",
                "teacher": {"arch": "lenet5", "num_classes": 10, "input": {"channels": 1, "size": 28, "mean": [0.1307], "std": [0.3081]}},
                "pool": [{"builtin": "sklearn-digits", "count": 200}],
                "student": {"arch": "lenet5_half"},
                "targets": [
                    {"name": "toy", "runtime": "toy_opts", "toy_mark": "from the recipe", "threads": 2},
                    {"name": "plain", "runtime": "toy_opts"},
                ],
            }
        )
        with create_runner(recipe.targets[0], models["fp32"]) as runner:
            assert runner.infer(_normalized(models["eval"].images[:4])).shape == (4, 10) and runner.facts()["intra_op_threads"] == 2
        create_runner(recipe.targets[1], models["fp32"]).close()
        assert opened == [ToyOptions(toy_mark="from the recipe", threads=2), ToyOptions()]
        with pytest.raises(
            BadInput, match=r"toy_mark \(the toy's mark\): they need runtime: toy_opts; runtime openvino does not read toy_mark"
        ):
            check_target(TargetSpec(name="ov", runtime="openvino", toy_mark="x"))
        with pytest.raises(BadInput, match=r"^targets.0: tooy_mark is not a target key nor .*did you mean 'toy_mark'\?$"):
            check_target(TargetSpec(name="x", runtime="toy_opts", tooy_mark="x"), "targets.0")
        defs = recipe_schema()["$defs"]
        assert defs["Target_toy_opts"]["properties"]["toy_mark"]["default"] == "unmarked"
        assert "toy_mark" not in defs["Target_openvino"]["properties"]

        class Collides(RuntimeOptions):
            rounds: int = 3  # every target's key

        class OtherDefault(RuntimeOptions):
            threads: int = 4  # every recorded target dumps threads: 1

        for bad, why in ((Collides, "option rounds is a key of every target"), (OtherDefault, "option threads must default to 1")):
            with pytest.raises(ValueError, match=why):
                Runtime("bad", "test-only", open_runner, lambda: {}, "nothing", {"fp32": FP32}, options=bad)
    finally:
        RUNTIMES.unregister("toy_opts")


def test_recipe_schema_offers_each_runtime_only_its_own_keys():
    schema = recipe_schema()
    items, defs = schema["properties"]["targets"]["items"], schema["$defs"]
    assert items["discriminator"] == {"propertyName": "runtime", "mapping": {name: f"#/$defs/Target_{name}" for name in RUNTIMES}}
    assert items["oneOf"] == [{"$ref": ref} for ref in items["discriminator"]["mapping"].values()] and "TargetSpec" not in defs
    own = {name: set(defs[f"Target_{name}"]["properties"]) - set(TargetSpec.model_fields) for name in RUNTIMES}
    assert own == {name: set(row.options.model_fields) for name, row in RUNTIMES.items()}
    assert own["onnxruntime"] == {"providers", "threads", "remote_python"} and own["openvino"] == {"threads"}
    assert own["trtexec"] == {"trtexec"} and own["litert"] == {"threads", "remote_python"} and own["tensorrt"] == set()
    for name, row in RUNTIMES.items():
        branch = defs[f"Target_{name}"]
        assert branch["additionalProperties"] is False and branch["properties"]["runtime"]["const"] == name
        assert branch["properties"]["precision"]["enum"] == list(row.precisions)
        assert ("runtime" in branch["required"]) == (name != "onnxruntime")  # a target without runtime is onnxruntime's


# ---------------------------------------------------------------------------------------------- openvino


def test_deploy_benchmark_times_each_model_on_each_runtime(models):
    """benchmarks.deploy names models alike on every runtime: each (model, runtime) pair gets its own runner."""
    from benchmarks.deploy import Measured, measure

    ev = models["eval"]
    rows = [Measured("student FP32", models["fp32"], runtime=r) for r in ("onnxruntime", "openvino")]
    facts = measure(rows, _normalized(ev.images), ev.labels, threads=1, iterations=10, warmup=1, batch=4, rounds=1)
    assert {f["runtime"] for f in facts.values()} == {"onnxruntime", "openvino"} and "providers" in facts["onnxruntime"]
    assert rows[0].accuracy == rows[1].accuracy and all(m.batch1 is not None for m in rows)


def test_openvino_runs_fp32_exactly_and_int8_like_onnxruntime(models):
    x = _normalized(models["eval"].images)
    labels = models["eval"].labels
    for key, max_diff in (("fp32", 1e-3), ("int8", None)):
        reference = OnnxRuntimeRunner(models[key]).infer(x)
        with create_runner(TargetSpec(name="ov", runtime="openvino", threads=1, precision=key), models[key]) as runner:
            assert isinstance(runner, OpenVinoRunner)
            logits = runner.infer(x)
            assert logits.shape == reference.shape == (200, 10)
            if max_diff is not None:  # f32 inference precision is pinned: the same logits as ONNX Runtime
                assert np.abs(logits - reference).max() < max_diff
            else:  # INT8 kernels round differently from ONNX Runtime's, and score alike
                assert (logits.argmax(1) == reference.argmax(1)).mean() >= 0.97
                assert abs((logits.argmax(1) == labels).mean() - (reference.argmax(1) == labels).mean()) <= 0.02
            one, many = runner.time(1, warmup=2, iterations=15), runner.time(32, warmup=1, iterations=3)
            assert one.iterations == 15 and one.p50_ms > 0 and many.batch == 32
            facts = runner.facts()
            assert facts["runtime"] == "openvino" and facts["precision"] == key and facts["threads"] == 1
            assert "f32" in facts["inference_precision"] and facts["usable_cpus"] >= 1
    for bad, needle in (
        ({"ssh": "board"}, "runs on this machine"),
        ({"providers": ["cpu"]}, "need runtime: onnxruntime"),
    ):
        with pytest.raises(BadInput, match=needle):
            check_target(TargetSpec(name="ov", runtime="openvino", **bad))


def _openvino_precisions_for(flags: set[str]) -> tuple[str, str | None]:
    """(the hint precision fp16 should get, the plugin's own default or None where OpenVINO versions differ) on an
    x86 CPU with these /proc/cpuinfo flags. The CPU plugin lists BF16 among its capabilities with AVX512-BF16
    (every AMX CPU has it) or AVX2-VNNI-2 (AVX-NE-CONVERT); f16 on x86 is emulated unless the CPU has AVX512-FP16
    or AVX2-VNNI-2, and where it has them the plugin's default is f16 or bf16 depending on its version."""
    bf16 = "avx512_bf16" in flags or "avx_ne_convert" in flags
    if "avx512_fp16" in flags or "avx_ne_convert" in flags:
        return "bf16", None
    if bf16:
        return "bf16", "bf16"
    return "f32", ("f32" if "avx512f" not in flags else None)  # AVX-512 without BF16: some versions default to bf16


def test_openvino_fp16_runs_the_fp16_file_at_the_cpus_16_bit_precision(models, tmp_path):
    """precision fp16 runs bf16 on CPUs with AVX512-BF16/AMX (OpenVINO's own default there), f32 on AVX2-only
    x86 CPUs (never emulated f16); fp32 and int8 stay f32. Expected values come from /proc/cpuinfo's flags."""
    import platform

    from edgedistill.backends.base import cpu_flags
    from edgedistill.backends.openvino import inference_precision
    from edgedistill.stages.fp16 import convert_fp16

    check_target(TargetSpec(name="ov", runtime="openvino", precision="fp16"))
    fp16 = convert_fp16(models["fp32"], tmp_path / "lenet5.fp16.onnx")
    x = _normalized(models["eval"].images)
    reference = OnnxRuntimeRunner(models["fp32"]).infer(x)
    with create_runner(TargetSpec(name="ov", runtime="openvino", threads=1, precision="fp16"), fp16) as runner:
        logits, facts = runner.infer(x), runner.facts()
    assert facts["precision"] == "fp16"
    assert inference_precision("fp32") == inference_precision("int8") == "f32"
    assert np.abs(logits - reference).max() < 0.05 * np.abs(reference).max()
    assert (logits.argmax(1) == reference.argmax(1)).mean() >= 0.98
    flags = cpu_flags()
    if flags is None or platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("expected precisions are derived from x86 /proc/cpuinfo flags; not readable here")
    expected, plugin_default = _openvino_precisions_for(flags)
    assert inference_precision("fp16") == expected and facts["inference_precision"] == expected
    allowed = (plugin_default,) if plugin_default else ("bf16", "f16") if expected == "bf16" else ("bf16", "f32")
    assert facts["plugin_default_precision"] in allowed


def test_standalone_validate_on_openvino(models, tmp_path):
    labeled = write_class_folders(tmp_path / "labeled", models["eval"])
    result = CliRunner().invoke(
        app,
        [
            "validate",
            str(models["int8"]),
            "--runtime",
            "openvino",
            "--labeled",
            str(labeled),
            "--threads",
            "1",
            "--iterations",
            "20",
            "--budget",
            "min_accuracy=0.8",
            "--out",
            str(tmp_path / "ov"),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "ov" / "report.json").read_text())
    target = report["targets"][0]
    assert target["runtime"] == "openvino" and target["accuracy"] > 0.9 and report["model"]["quantized"]


# ---------------------------------------------------------------------------------- trtexec (stand-in)


def test_trtexec_backend_contract_with_standin(models, standin_on_path, tmp_path):
    """Command lines the stand-in accepts as TRT 10's trtexec would; timings and outputs parsed back; cache reused."""
    cache = EngineCache(tmp_path / "engines")
    target = TargetSpec(name="jetson-like", runtime="trtexec", iterations=25, warmup=1)
    runner = create_runner(target, models["fp32"])
    assert isinstance(runner, TrtexecRunner) and runner.trtexec == str(standin_on_path)
    one = _normalized(models["eval"].images[:1])
    assert runner.infer(one).shape == (1, 10)
    stats = runner.time(1, warmup=1, iterations=25)
    assert stats.iterations == 25 and stats.p50_ms == pytest.approx(1.115, abs=0.01) and not stats.noisy
    assert runner.time(64, warmup=0, iterations=10).batch == 64
    facts = runner.facts()
    assert facts["tensorrt"] == "10.3.0" and facts["gpu"] == "stand-in (no GPU)" and facts["engine_cache"] == "built"
    assert facts["engine_cache_dir"] == str(cache.root) and facts["precision"] == "fp32"
    runner.close()
    engines = sorted(p.name for p in cache.root.glob("*.engine"))
    assert len(engines) == 1 and b"STAND-IN" in (cache.root / engines[0]).read_bytes()

    again = create_runner(target, models["fp32"])
    again.infer(one)
    assert again.facts()["engine_cache"] == "hit" and again.facts()["tensorrt"] == "10.3.0"
    again.close()

    int8 = create_runner(target.model_copy(update={"precision": "int8"}), models["int8_trt"])
    int8.infer(one)
    assert int8.facts()["engine_cache"] == "built" and int8.facts()["precision"] == "int8"
    int8.close()
    assert len(list(cache.root.glob("*.engine"))) == 2
    with pytest.raises(BadInput, match="needs a Q/DQ model.*--for-tensorrt"):
        create_runner(target.model_copy(update={"precision": "int8"}), models["fp32"])


def test_engine_cache_keys_separate_everything_that_changes_a_plan(tmp_path):
    base = dict(onnx="abc", precision="fp16", tensorrt="10.3.0", gpu="Orin", max_batch=64)
    keys = {EngineCache.key(**base)} | {EngineCache.key(**(base | {k: "other"})) for k in base}
    assert len(keys) == len(base) + 1
    cache = EngineCache(tmp_path)
    key = EngineCache.key(**base)
    assert cache.lookup(key) is None
    cache.store(key, b"plan", {"tensorrt": "10.3.0"})
    assert cache.lookup(key).read_bytes() == b"plan" and cache.meta(key) == {"tensorrt": "10.3.0"}
    assert not list(tmp_path.glob("*.part"))


# ------------------------------------------------------------------------------------ real TensorRT


@needs_tensorrt
def test_tensorrt_python_backend_fp16_and_int8(models, tmp_path):
    from edgedistill.backends.tensorrt import TensorRTRunner

    x = _normalized(models["eval"].images)
    reference = OnnxRuntimeRunner(models["fp32"]).infer(x)
    cache = EngineCache(tmp_path / "engines")
    for model, precision, tolerance in ((models["fp32"], "fp32", 1e-2), (models["fp32"], "fp16", 0.1), (models["int8_trt"], "int8", None)):
        runner = TensorRTRunner(model, precision=precision, cache=cache)
        logits = runner.infer(x)
        agreement = (logits.argmax(1) == reference.argmax(1)).mean()
        assert agreement >= (0.99 if tolerance else 0.95), (precision, agreement)
        if tolerance:
            assert np.abs(logits - reference).max() < tolerance
        stats = runner.time(1, 10, 50)
        assert stats.p50_ms > 0 and runner.time(64, 2, 10).batch == 64
        assert runner.facts()["engine_cache"] == "built" and runner.facts()["gpu"]
        runner.close()
    hit = TensorRTRunner(models["fp32"], precision="fp16", cache=cache)
    assert hit.facts()["engine_cache"] == "hit"


@needs_trtexec
def test_real_trtexec_matches_onnxruntime(models, tmp_path):
    x = _normalized(models["eval"].images[:64])
    reference = OnnxRuntimeRunner(models["fp32"]).infer(x)
    runner = TrtexecRunner(
        LocalHost(), models["fp32"], TargetSpec(name="gpu", runtime="trtexec", precision="fp16"), cache=EngineCache(tmp_path / "engines")
    )
    try:
        assert (runner.infer(x).argmax(1) == reference.argmax(1)).mean() >= 0.98
        assert runner.time(1, 1, 50).p99_ms > 0 and runner.facts()["tensorrt"]
    finally:
        runner.close()


# ------------------------------------------------------------------------------- validate MODEL.onnx


def test_standalone_validate_command(models, tmp_path, standin_on_path):
    labeled = write_class_folders(tmp_path / "labeled", models["eval"])
    runner = CliRunner()
    base = ["validate", str(models["fp32"]), "--labeled", str(labeled), "--threads", "1", "--iterations", "20", "--warmup", "2"]

    result = runner.invoke(app, [*base, "--budget", "p99_ms=1000", "--budget", "min_accuracy=0.5", "--out", str(tmp_path / "ok")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "ok" / "report.json").read_text())
    target = report["targets"][0]
    assert report["passed"] and target["accuracy"] > 0.9 and target["agreement"] is None
    assert report["eval"] == {"name": str(labeled), "samples": 200, "labeled": True, "unreadable": 0, "unreadable_examples": []}
    assert target["latency"]["iterations"] == 20 and "noisy" in target["latency"] and target["throughput"]["batch"] == 32
    assert target["facts"]["intra_op_threads"] == 1 and report["model"]["opset"] >= 17
    assert (tmp_path / "ok" / "junit.xml").is_file() and (tmp_path / "ok" / "latency_samples.json").is_file()

    result = runner.invoke(app, [*base, "--budget", "min_accuracy=0.9999", "--out", str(tmp_path / "strict")])
    assert result.exit_code == 3 and "min_accuracy" in result.output

    if not HAS_TENSORRT:
        result = runner.invoke(app, [*base, "--runtime", "tensorrt", "--out", str(tmp_path / "trt")])
        assert result.exit_code == 4 and "TensorRT Python package is not installed" in result.output

    one = write_class_folders(tmp_path / "one", type(models["eval"])("one", models["eval"].images[:1], models["eval"].labels[:1]))
    result = runner.invoke(
        app,
        [
            "validate",
            str(models["fp32"]),
            "--runtime",
            "trtexec",
            "--labeled",
            str(one),
            "--budget",
            "p99_ms=5",
            "--iterations",
            "20",
            "--out",
            str(tmp_path / "trtexec"),
        ],
    )
    assert result.exit_code == 0, result.output
    facts = json.loads((tmp_path / "trtexec" / "report.json").read_text())["targets"][0]["facts"]
    assert facts["runtime"] == "trtexec" and facts["tensorrt"] == "10.3.0"


def test_standalone_validate_foreign_model_and_bad_input(models, tmp_path):
    import onnx

    proto = onnx.load(str(models["fp32"]))
    del proto.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save(proto, str(foreign))
    labeled = tmp_path / "labeled"
    for name, label in (("zero", 0), ("one", 1)):  # names the model does not know: sorted folder order
        picks = models["eval"].images[models["eval"].labels == label][:10]
        (labeled / name).mkdir(parents=True)
        for i, image in enumerate(picks):
            Image.fromarray(image[0]).save(labeled / name / f"{i}.png")
    runner = CliRunner()
    result = runner.invoke(app, ["validate", str(foreign), "--labeled", str(labeled), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "--mean" in result.output
    result = runner.invoke(
        app,
        [
            "validate",
            str(foreign),
            "--labeled",
            str(labeled),
            "--mean",
            "0.1307",
            "--std",
            "0.3081",
            "--duration",
            "0.05",
            "--out",
            str(tmp_path / "r"),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert "sorted folder order" in report["eval"]["name"]  # one=0, zero=1: accuracy near 0, and says why
    assert report["targets"][0]["latency"]["iterations"] >= 10
    for argv, needle in (
        (["--budget", "max_accuracy_drop=0.1"], "no teacher"),
        (["--budget", "p99"], "NAME=VALUE"),
        (["--runtime", "tflite"], "--runtime"),
        (["--set", "a=1"], "apply to a recipe"),
        (["--budget", "min_accuracy=2"], "min_accuracy"),
        (["--mean", "a,b"], "numbers"),
        (["--runtime", "trtexec", "--duration", "1"], "--iterations"),
    ):
        result = runner.invoke(app, ["validate", str(models["fp32"]), *argv, "--out", str(tmp_path / "bad")])
        assert result.exit_code == 2 and needle in result.output, (argv, result.output)
    result = runner.invoke(app, ["validate", str(ROOT_RECIPE), "--runtime", "trtexec"])
    assert result.exit_code == 2 and "apply to `validate MODEL.onnx`" in result.output


def test_unreadable_evaluation_files_are_counted_and_can_be_budgeted(models, tmp_path):
    labeled = write_class_folders(tmp_path / "labeled", models["eval"])
    (labeled / "3" / "broken.png").write_bytes(b"\x89PNG not really")
    base = ["validate", str(models["fp32"]), "--labeled", str(labeled), "--iterations", "10", "--threads", "1"]
    result = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "lenient")])
    assert result.exit_code == 0, result.output
    evaluation = json.loads((tmp_path / "lenient" / "report.json").read_text())["eval"]
    assert evaluation["unreadable"] == 1 and "broken.png" in evaluation["unreadable_examples"][0]
    result = CliRunner().invoke(app, [*base, "--budget", "max_unreadable=0", "--out", str(tmp_path / "strict")])
    assert result.exit_code == 3 and "max_unreadable: measured 1 file(s) > limit 0 file(s)" in result.output


def test_a_local_child_process_is_the_runners_own_cpu_not_other_load():
    """A local trtexec is a child process: its CPU time is the runner's own, so time_rounds must not count it as other
    processes' load (which could turn a fail into "inconclusive"). own_cpu_s holds ended children's time."""
    import subprocess
    import sys
    import time

    from edgedistill.scale.compute import own_cpu_s

    before, process = own_cpu_s(), time.process_time()
    burn = "import time\nend = time.process_time() + 0.4\nwhile time.process_time() < end: pass"
    subprocess.run([sys.executable, "-c", burn], check=True)
    assert own_cpu_s() - before >= 0.35 and time.process_time() - process < 0.2
