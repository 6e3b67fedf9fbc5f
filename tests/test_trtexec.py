"""trtexec log/JSON parsing against real trtexec output, and the argv we build against a stand-in."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgedistill.backends.trtexec.log import (
    TrtexecRun,
    decode_trt_version,
    load_trtexec_json,
    parse_export_output,
    parse_export_times,
    parse_trtexec_log,
    trtexec_command,
    write_raw_input,
)
from edgedistill.errors import BadInput

SAMPLES = Path(__file__).with_name("data") / "trtexec_samples"
JSON_SAMPLES = Path(__file__).with_name("data") / "trtexec_json"  # verbatim excerpts named in trtexec_samples/json_formats.md
STANDIN = Path(__file__).with_name("fake_trtexec_standin.py")
SAMPLE_FILES = sorted(SAMPLES.iterdir())
LOG_FILES = [f for f in SAMPLE_FILES if f.suffix == ".log"]


def sample_text(prefix: str) -> str:
    return next(f for f in LOG_FILES if f.name.startswith(prefix)).read_text()


def without_curator_header(text: str) -> str:
    """Each sample's first line is a '# source:' note added by whoever collected it, not trtexec output."""
    first, _, rest = text.partition("\n")
    return rest if first.startswith("# source:") else text


# Read by eye from each file: (passed, version, device, qps).
EXPECTED = {
    "01": (True, None, None, 479.452),
    "02": (True, "8.0.1", "NVIDIA Tegra X1", 24.5583),
    "03": (False, "8.2.3", "NVIDIA GeForce GTX 1070", None),
    "04": (True, "8.4.0", None, 41087.7),
    "05": (True, None, None, 27207.0),
    "06": (True, "8.5.2", None, 97.8649),
    "07": (True, "8.6.1", "NVIDIA H100 PCIe", 484.641),
    "08": (True, "10.3.0", None, 318.007),
    "09": (True, "10.9.0", "NVIDIA GeForce RTX 3070", 8.66824),
    "10": (True, "10.16.1", "NVIDIA H100 PCIe", 15374.3),
    "11": (True, "10.16.1", "NVIDIA H100 PCIe", None),
    "12": (True, "10.16.1", "NVIDIA H100 PCIe", 12827.1),
    "13": (True, "10.16.1", "NVIDIA H100 PCIe", 12764.5),
    "14": (True, None, None, 43073.6),
    "15": (True, None, None, 208.729),
    "16": (False, None, None, None),
    "17": (False, None, None, None),
    "18": (False, "10.3.0", None, None),
    "19": (True, "10.14.1", "NVIDIA RTX 6000 Ada Generation", 23188.6),
    "20": (True, "8.4.1", "NVIDIA GeForce GTX 1070", 6207.5),
    "21": (False, "10.0.1", None, None),
}

# Words the one-line failure must contain, per failing sample.
FAILURE_WORDS = {
    "03": ["no error reported", "Finish parsing network model", "--verbose"],
    "16": ["out of GPU memory", "engine build", "14.4 GiB", "--memPoolSize"],
    "17": ["ONNX parse failed", "plugin"],
    "18": ["--workspace", "--buildOnly", "--explicitBatch", "--memPoolSize", "--skipInference"],
    "21": ["different TensorRT version", "rebuild"],
}


# ------------------------------------------------------------ real samples


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: p.name[:40])
def test_every_sample_file_parses(path):
    run = parse_trtexec_log(path.read_text())
    assert isinstance(run, TrtexecRun)
    assert run.passed or run.failure


@pytest.mark.parametrize("path", LOG_FILES, ids=lambda p: p.name[:2])
def test_sample_values(path):
    prefix = path.name[:2]
    assert prefix in EXPECTED, f"new sample {path.name}: add its expected values"
    passed, version, device, qps = EXPECTED[prefix]
    run = parse_trtexec_log(path.read_text())
    assert run.passed is passed
    assert run.trt_version == version
    assert run.device == device
    assert run.throughput_qps == (pytest.approx(qps) if qps is not None else None)
    assert (run.failure is None) is passed
    for word in FAILURE_WORDS.get(prefix, []):
        assert word in run.failure
    if run.failure:
        assert "\n" not in run.failure


@pytest.mark.parametrize("path", LOG_FILES, ids=lambda p: p.name[:2])
def test_curator_header_changes_nothing(path):
    text = path.read_text()
    assert parse_trtexec_log(text) == parse_trtexec_log(without_curator_header(text))


@pytest.mark.parametrize("path", LOG_FILES, ids=lambda p: p.name[:2])
def test_any_truncation_parses(path):
    text = path.read_text()
    for cut in np.linspace(0, len(text), 23, dtype=int):
        parse_trtexec_log(text[:cut])
    parse_trtexec_log(text.replace("\n", "\r\n"))


def test_trt7_old_summary_format_warmup():
    assert parse_trtexec_log(sample_text("01")).warmup_queries == 80


def test_enqueue_bound_warning():
    run = parse_trtexec_log(sample_text("02"))
    assert len(run.warnings) == 1 and run.warnings[0].startswith("Throughput may be bound by Enqueue Time")
    assert "--useCudaGraph" in run.warnings[0]


def test_collided_line_and_unstable_warning():
    run = parse_trtexec_log(sample_text("07"))
    assert run.warnings == [
        "GPU compute time is unstable, with coefficient of variance = 25.6499%. "
        "If not already in use, locking GPU clock frequency or adding --useSpinWait may improve the stability."
    ]
    assert run.warmup_queries == 96


def test_dump_profile_run_passes_without_a_summary():
    run = parse_trtexec_log(sample_text("11"))
    assert run.passed and run.throughput_qps is None


def test_logs_cut_before_the_result_line_pass_on_their_summary():
    for prefix in ("14", "15"):  # terminal-truncated summary lines; a trace excerpt without '&&&& PASSED'
        run = parse_trtexec_log(sample_text(prefix))
        assert run.passed and run.failure is None
    cut = sample_text("10").split("&&&& PASSED")[0]
    assert parse_trtexec_log(cut).passed
    assert not parse_trtexec_log(cut.split("=== Performance summary ===")[0]).passed


def test_windows_crlf_log_keeps_its_failure():
    text = sample_text("17")
    assert parse_trtexec_log(text.replace("\n", "\r\n")).failure == parse_trtexec_log(text).failure


def test_zero_throughput_is_recomputed_from_the_trace():
    text = sample_text("02").replace("Throughput: 24.5583 qps", "Throughput: 0 qps")
    run = parse_trtexec_log(text)
    assert run.throughput_qps == pytest.approx(100 / 4.07195)


def test_empty_and_foreign_text():
    assert not parse_trtexec_log("").passed
    assert "no trtexec result" in parse_trtexec_log("").failure
    run = parse_trtexec_log("&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec --onnx=m.onnx\n")
    assert not run.passed and "did not finish" in run.failure


@pytest.mark.parametrize(
    "code, version",
    [(8001, "8.0.1"), (8203, "8.2.3"), (8601, "8.6.1"), (100001, "10.0.1"), (100300, "10.3.0"), (101601, "10.16.1")],
)
def test_decode_trt_version(code, version):
    assert decode_trt_version(code) == version


# ------------------------------------------------------- JSON export golden

# json_formats.md 1.3: the first 4 lines of the TRT 7.1 file, then the last 2 lines of its first document (verbatim).
TRT7_TIMES = (JSON_SAMPLES / "trt7.1_times_excerpt.json").read_text()

# Key layout of TRT 8.0/8.2 (13 keys) from json_formats.md 1.2; no real 8.x/10.x file exists, so the values are made up.
TRT82_TIMES = [
    {
        "startEnqMs": 0.1,
        "endEnqMs": 0.3,
        "startH2dMs": 0.3,
        "endH2dMs": 0.4,
        "startComputeMs": 0.4,
        "endComputeMs": 2.4,
        "startD2hMs": 2.4,
        "endD2hMs": 2.45,
        "h2dMs": 0.1,
        "computeMs": 2.0,
        "d2hMs": 0.05,
        "latencyMs": 2.15,
        "endToEndMs": 2.35,
    },
]


def test_export_times_trt7_golden():
    (doc,) = load_trtexec_json(TRT7_TIMES)
    np.testing.assert_allclose(parse_export_times(doc), [4.63152, 2.86528, 4.55885, 2.03345])
    np.testing.assert_allclose(parse_export_times(doc, "end_to_end"), [4.66554, 2.892, 4.57776, 2.04346])
    np.testing.assert_allclose(parse_export_times(doc, "h2d"), [0.0896, 0.0551362, 0.0578561, 0.0378418])
    np.testing.assert_allclose(parse_export_times(doc, "d2h")[0], 0.0432639)
    # 7.1 swaps the Enq and In timestamps: the enqueue span is under startInMs/endInMs.
    np.testing.assert_allclose(parse_export_times(doc, "enqueue")[0], 5.17184 - 0.683045)
    np.testing.assert_allclose(parse_export_times(doc, "latency", warmup=3), [2.03345])


def test_export_times_concatenated_trt7_documents():
    docs = load_trtexec_json(TRT7_TIMES + TRT7_TIMES)
    assert len(docs) == 2 and len(parse_export_times(docs[1])) == 4


def test_export_times_trt8_and_10_layouts():
    np.testing.assert_allclose(parse_export_times(TRT82_TIMES, "end_to_end"), [2.35])
    np.testing.assert_allclose(parse_export_times(TRT82_TIMES, "enqueue"), [0.2])
    trt10 = [{k: v for k, v in TRT82_TIMES[0].items() if k != "endToEndMs"}]
    np.testing.assert_allclose(parse_export_times(trt10), [2.15])
    with pytest.raises(BadInput, match="8.2"):
        parse_export_times(trt10, "end_to_end")
    no_latency = [{k: v for k, v in trt10[0].items() if k != "latencyMs"}]
    np.testing.assert_allclose(parse_export_times(no_latency), [2.15])


# json_formats.md 3.1: the first lines of the TRT 7.1 googlenet output file, verbatim up to the
# 26th value; the excerpt is cut mid-number there, so it is closed after that value.
TRT7_OUTPUT_HEAD = (JSON_SAMPLES / "trt7.1_output_head_excerpt.json").read_text()


def test_export_output_trt7_golden():
    (doc,) = load_trtexec_json(TRT7_OUTPUT_HEAD)
    with pytest.raises(BadInput, match="26 values but dimensions '1000x1x1'"):
        parse_export_output(doc)
    doc[0]["dimensions"] = "26x1x1"  # edited to the number of values the excerpt keeps
    out = parse_export_output(doc)
    assert out["prob"].shape == (26, 1, 1)
    assert out["prob"][0, 0, 0] == pytest.approx(0.00100185)


def test_export_output_trt10_layout_from_dump_output():
    """Values are log 12's --dumpOutput lines, written in exportJSONOutput's layout."""
    text = """[
  { "name" : "z"
  , "dimensions" : "1"
  , "values" : [ 3 ]
  }
, { "name" : "y"
  , "dimensions" : "1x10"
  , "values" : [ -0.0518188, 0.000385761, 0.0417786, 0.27002, -0.0838013, 0.0484314, -0.234619, -0.0370483, -0.000504494, -0.0668945 ]
  }
]"""
    out = parse_export_output(load_trtexec_json(text)[0])
    assert out["z"].shape == (1,) and out["z"].dtype.kind == "i" and out["z"][0] == 3
    assert out["y"].shape == (1, 10) and int(np.argmax(out["y"])) == 3


def test_export_output_nonfinite_and_scalar():
    text = (
        '[ { "name" : "nan_head", "dimensions" : "", "values" : [ nan ] }, '
        '{ "name" : "o", "dimensions" : "3", "values" : [ inf, -inf, -nan ] } ]'
    )
    out = parse_export_output(load_trtexec_json(text)[0])
    assert out["nan_head"].shape == () and np.isnan(out["nan_head"])
    assert out["o"][0] == np.inf and out["o"][1] == -np.inf and np.isnan(out["o"][2])


def test_malformed_json_is_bad_input():
    with pytest.raises(BadInput):
        load_trtexec_json('[ { "latencyMs" : 1.0 ')


# --------------------------------------------------------------- raw input


def test_write_raw_input_round_trip(tmp_path):
    x = np.random.default_rng(0).standard_normal((1, 1, 28, 28)).astype(np.float32)
    path = tmp_path / "x.input.1.1.28.28.fp32.raw"
    write_raw_input(x, path)
    assert path.stat().st_size == 1 * 1 * 28 * 28 * 4
    np.testing.assert_array_equal(np.fromfile(path, dtype="<f4").reshape(x.shape), x)


def test_write_raw_input_c_order_little_endian(tmp_path):
    x = np.asfortranarray(np.arange(6, dtype=">f2").reshape(2, 3))
    write_raw_input(x, tmp_path / "h.raw")
    assert (tmp_path / "h.raw").read_bytes() == np.arange(6, dtype="<f2").tobytes()


def test_write_raw_input_rejects_float64(tmp_path):
    with pytest.raises(BadInput, match="float32"):
        write_raw_input(np.zeros(3), tmp_path / "d.raw")


# ------------------------------------------------------------ command line

REMOVED_IN_TRT10 = ("--workspace", "--explicitBatch", "--buildOnly", "--batch", "--maxBatch")


def test_command_for_a_build():
    argv = trtexec_command(
        "/usr/src/tensorrt/bin/trtexec",
        onnx="m.onnx",
        save_engine="m.plan",
        precision="fp16",
        shapes={"x": (1, 3, 224, 224)},
        export_times="t.json",
    )
    assert argv == [
        "/usr/src/tensorrt/bin/trtexec",
        "--onnx=m.onnx",
        "--fp16",
        "--saveEngine=m.plan",
        "--shapes=x:1x3x224x224",
        "--warmUp=500",
        "--iterations=200",
        "--duration=0",
        "--percentile=99,50,90",
        "--exportTimes=t.json",
    ]
    assert not any(a.split("=")[0] in REMOVED_IN_TRT10 for a in argv)


def test_command_for_an_engine_has_no_precision_flags():
    argv = trtexec_command("trtexec", engine="m.plan", precision="int8")
    assert "--loadEngine=m.plan" in argv and "--int8" not in argv


def test_command_input_names_and_windows_paths():
    argv = trtexec_command(
        "trtexec.exe",
        onnx="m.onnx",
        shapes={"x:0": (1, 3)},
        load_inputs={"x:0": "x.raw", "data": r"C:\Users\TRT\data.bin"},
    )
    assert "--shapes=x:0:1x3" in argv
    assert r"--loadInputs=x:0:x.raw,'data':C:\Users\TRT\data.bin" in argv


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"onnx": "m.onnx", "engine": "m.plan"},
        {"engine": "m.plan", "save_engine": "n.plan"},
        {"onnx": "m.onnx", "precision": "fp64"},
        {"onnx": "m.onnx", "shapes": {"x": ()}},
        {"onnx": "m.onnx", "shapes": {"a,b": (1,)}},
        {"onnx": "m.onnx", "load_inputs": {"x": "a,b.raw"}},
        {"onnx": "m.onnx", "percentiles": (101,)},
        {"onnx": "m.onnx", "iterations": 0},
    ],
)
def test_command_rejects_what_trtexec_cannot_take(kwargs):
    with pytest.raises(BadInput):
        trtexec_command("trtexec", **kwargs)


# --------------------------------------------- contract with the stand-in


def run_standin(argv: list[str]) -> tuple[subprocess.CompletedProcess, TrtexecRun]:
    assert argv[0] == str(STANDIN)
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=60)
    assert "STAND-IN" in proc.stdout
    return proc, parse_trtexec_log(proc.stdout)


def test_standin_build_and_benchmark(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"stand-in model")
    write_raw_input(np.zeros((1, 3, 32, 32), np.float32), tmp_path / "x.raw")
    argv = trtexec_command(
        str(STANDIN),
        onnx=str(tmp_path / "m.onnx"),
        save_engine=str(tmp_path / "m.plan"),
        precision="fp16",
        shapes={"x": (1, 3, 32, 32)},
        iterations=50,
        export_times=str(tmp_path / "t.json"),
        load_inputs={"x": str(tmp_path / "x.raw")},
        export_output=str(tmp_path / "o.json"),
    )
    proc, run = run_standin(argv)
    assert proc.returncode == 0 and run.passed and run.failure is None
    assert (run.trt_version, run.device) == ("10.3.0", "stand-in (no GPU)")

    (times_doc,) = load_trtexec_json((tmp_path / "t.json").read_text())
    latency = parse_export_times(times_doc)
    assert len(latency) == 50
    assert parse_export_times(times_doc, "compute").mean() <= latency.mean()

    outputs = parse_export_output(load_trtexec_json((tmp_path / "o.json").read_text())[0])
    assert outputs["y"].shape == (1, 10)

    proc, run = run_standin(trtexec_command(str(STANDIN), engine=str(tmp_path / "m.plan"), iterations=20))
    assert run.passed and run.throughput_qps is not None


def test_standin_rejects_flags_removed_in_trt10(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"stand-in model")
    argv = trtexec_command(str(STANDIN), onnx=str(tmp_path / "m.onnx"))
    proc, run = run_standin([*argv, "--workspace=2048", "--explicitBatch", "--buildOnly"])
    assert proc.returncode == 1 and not run.passed
    assert "--workspace, --explicitBatch, --buildOnly" in run.failure and "TensorRT 10.3.0" in run.failure


def test_standin_checks_raw_input_size(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"stand-in model")
    write_raw_input(np.zeros((1, 3, 16, 16), np.float32), tmp_path / "x.raw")
    argv = trtexec_command(
        str(STANDIN),
        onnx=str(tmp_path / "m.onnx"),
        shapes={"x": (1, 3, 32, 32)},
        load_inputs={"x": str(tmp_path / "x.raw")},
    )
    proc, run = run_standin(argv)
    assert proc.returncode == 1 and "Unexpected file size" in run.failure


def test_standin_needs_a_model():
    proc, run = run_standin([str(STANDIN), "--iterations=10"])
    assert proc.returncode == 1 and "Model missing" in run.failure
