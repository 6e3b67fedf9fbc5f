"""On-device validation over SSH, against the real sshd on 127.0.0.1 (tests/sshd.py).

The "device" is this machine: runtime onnxruntime runs in this venv's Python on the far side of
ssh, and runtime trtexec runs tests/fake_trtexec_standin.py (a flag-checking stand-in, no GPU).
One small run is compressed once per session (`compressed_run`); tests re-gate copies of it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgedistill.backends import create_runner
from edgedistill.backends.hosts.jetson import parse_device_facts
from edgedistill.backends.onnxruntime import RemoteOnnxRuntimeRunner
from edgedistill.backends.trtexec.runner import TrtexecRunner
from edgedistill.cli import app
from edgedistill.config.schema import TargetSpec
from edgedistill.errors import TargetUnavailable
from tests.remote_run import ROOT, ssh_target_entry

STANDIN = ROOT / "tests" / "fake_trtexec_standin.py"


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


def error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, output
    return lines[0]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------ end to end


def test_compress_validates_on_the_ssh_target(compressed_run):
    report = compressed_run.report
    assert report["passed"]
    cpu, board = report["targets"]
    assert board["error"] is None and board["passed"]
    assert board["facts"]["ssh"] == compressed_run.server.destination
    assert board["facts"]["runtime"] == "onnxruntime" and board["facts"]["version"]
    assert {"device_model", "l4t", "jetpack", "power_mode", "soc"} <= board["facts"].keys()
    # Same model, same inputs, same runtime: the device's predictions match the local ones.
    assert board["accuracy"] == pytest.approx(cpu["accuracy"])
    assert board["latency"]["iterations"] == 30
    samples = json.loads((compressed_run.run_dir / "latency_samples.json").read_text())
    assert len(samples["board"]["samples_ms"]) == 30 and len(samples["cpu"]["samples_ms"]) == 30
    for name in ("junit.xml", "summary.md", "report.html"):
        assert (compressed_run.run_dir / name).is_file(), name


def test_remote_workdir_is_removed_on_close(compressed_run, sshd_server):
    spec = TargetSpec(**ssh_target_entry(sshd_server))
    runner = create_runner(spec, compressed_run.run_dir / "student.onnx")
    assert isinstance(runner, RemoteOnnxRuntimeRunner)
    workdir = runner.workdir
    assert os.path.isfile(f"{workdir}/model.onnx") and os.path.isfile(f"{workdir}/edgedistill_ort.py")
    runner.close()
    assert not os.path.exists(workdir)
    runner.close()


def test_missing_remote_python_is_one_clear_line(compressed_run, sshd_server):
    spec = TargetSpec(**ssh_target_entry(sshd_server, remote_python="/nonexistent/python3"))
    with pytest.raises(TargetUnavailable) as info:
        create_runner(spec, compressed_run.run_dir / "student.onnx")
    message = str(info.value)
    assert "/nonexistent/python3" in message and "not found" in message and "\n" not in message


def test_remote_python_without_onnxruntime_is_unavailable(compressed_run, sshd_server, tmp_path):
    fake = tmp_path / "python-without-ort"
    fake.write_text(
        f'#!/bin/sh\nexec {sys.executable} -c \'import sys; sys.modules["onnxruntime"] = None; '
        'sys.argv = sys.argv[1:]; exec(open(sys.argv[0]).read())\' "$@"\n'
    )
    fake.chmod(0o755)
    spec = TargetSpec(**ssh_target_entry(sshd_server, remote_python=str(fake)))
    with pytest.raises(TargetUnavailable, match="lacks onnxruntime"):
        create_runner(spec, compressed_run.run_dir / "student.onnx")


def test_refused_key_is_unavailable(compressed_run, sshd_server, tmp_path):
    config = sshd_server.write_client_config(tmp_path / "config", identity_file=sshd_server.unauthorized_identity)
    spec = TargetSpec(**ssh_target_entry(sshd_server, ssh_config=str(config)))
    with pytest.raises(TargetUnavailable, match="authentication refused"):
        create_runner(spec, compressed_run.run_dir / "student.onnx")


def test_hung_target_times_out_and_is_cleaned_up(compressed_run, sshd_server, tmp_path):
    slow = tmp_path / "slow-python"
    slow.write_text("#!/bin/sh\nsleep 37.5 &\nsleep 37.25\n")  # a hung step with a child of its own
    slow.chmod(0o755)
    spec = TargetSpec(**ssh_target_entry(sshd_server, remote_python=str(slow), timeout_s=1))
    before = set(Path("/tmp").glob("edgedistill.*"))
    with pytest.raises(TargetUnavailable, match="timed out after 1 s"):
        create_runner(spec, compressed_run.run_dir / "student.onnx")
    leftovers = {p for p in set(Path("/tmp").glob("edgedistill.*")) - before if (p / "edgedistill_ort.py").exists()}
    assert not leftovers
    still = subprocess.run(["pgrep", "-f", "sleep 37.(5|25)"], capture_output=True, text=True).stdout.split()
    assert not still, f"processes left running on the target: {still}"


def test_missing_execution_provider_on_target(compressed_run, sshd_server):
    spec = TargetSpec(**ssh_target_entry(sshd_server, providers=["cuda"]))
    with pytest.raises(TargetUnavailable, match="lacks CUDAExecutionProvider.*onnxruntime-gpu"):
        create_runner(spec, compressed_run.run_dir / "student.onnx")


# ------------------------------------------------------------------------------------ failures, exit 4


def test_host_key_mismatch_is_refused_with_exit_4(compressed_run, tmp_path):
    run = compressed_run.copy(tmp_path)
    result = cli(
        "validate", "--run-dir", str(run), "--target", "board", "--set", f"targets.1.known_hosts={compressed_run.server.wrong_known_hosts}"
    )
    assert result.exit_code == 4, result.output
    line = error_line(result.output)
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in line
    junit = (run / "what-if" / "junit.xml").read_text()  # a --set re-gate is a what-if: its files go beside the run's own
    assert "<error" in junit and 'classname="board"' in junit
    assert "pre-flight: board: edgedistill-test: host key verification failed" in result.output  # warned before validate ran


def test_unreachable_target_keeps_other_results(compressed_run, tmp_path):
    run = compressed_run.copy(tmp_path)
    config = compressed_run.server.write_client_config(tmp_path / "dead_config", alias="dead-board", port=_closed_port())
    result = cli("validate", "--run-dir", str(run), "--set", "targets.1.ssh=dead-board", "--set", f"targets.1.ssh_config={config}")
    assert result.exit_code == 4, result.output
    assert "connection refused" in error_line(result.output)
    report = json.loads((run / "what-if" / "report.json").read_text())  # the pre-flight warned; validate went on
    cpu, board = report["targets"]
    assert cpu["passed"] and cpu["latency"]["p99_ms"] > 0 and cpu["accuracy"] is not None
    assert board["error"] and "connection refused" in board["error"] and board["latency"] is None
    assert "⚠️ unavailable" in (run / "what-if" / "summary.md").read_text()


# ---------------------------------------------------------------------------- trtexec through ssh


def _standin(folder: Path) -> Path:
    wrapper = folder / "trtexec"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} {STANDIN} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def test_trtexec_runner_contract_with_standin(compressed_run, sshd_server, tmp_path):
    """The stand-in rejects flags TensorRT 10 does not know and inputs of the wrong byte size."""
    spec = TargetSpec(**ssh_target_entry(sshd_server, runtime="trtexec", precision="fp16", trtexec=str(_standin(tmp_path))))
    runner = create_runner(spec, compressed_run.run_dir / "student.onnx")
    assert isinstance(runner, TrtexecRunner)
    workdir = runner.workdir
    try:
        stats = runner.time(1, warmup=2, iterations=25)
        assert stats.iterations == 25 and stats.p99_ms > stats.min_ms > 1.0
        assert os.path.isfile(f"{workdir}/model.engine")
        out = runner.infer(np.zeros((1, 1, 28, 28), np.float32))
        assert out.shape == (1, 10) and out.argmax() == 9
        with pytest.raises(TargetUnavailable, match="shape 1x10 for a batch of 3"):
            runner.infer(np.zeros((3, 1, 28, 28), np.float32))
        facts = runner.facts()
        assert facts["tensorrt"] == "10.3.0" and facts["gpu"] == "stand-in (no GPU)" and facts["precision"] == "fp16"
    finally:
        runner.close()
    assert not os.path.exists(workdir)


def test_validate_target_with_trtexec_standin(compressed_run, sshd_server, tmp_path):
    """The whole validate_target path on a trtexec target; one eval image because the stand-in always returns 1x10."""
    from edgedistill.inputs.labeled import EvalSet
    from edgedistill.recipe import load_recipe
    from edgedistill.stages.validate import validate_target

    recipe = load_recipe(compressed_run.recipe)
    spec = TargetSpec(**ssh_target_entry(sshd_server, runtime="trtexec", trtexec=str(_standin(tmp_path)), budget={"p99_ms": 1.0}))
    eval_set = EvalSet("one image", np.zeros((1, 1, 28, 28), np.uint8), np.array([9]))
    plan = tmp_path / "engine-board-fp32.plan"
    result = validate_target(
        spec,
        compressed_run.run_dir / "student.onnx",
        eval_set,
        recipe.teacher.input,
        teacher_pred=np.array([9]),
        teacher_accuracy=1.0,
        engine_path=plan,
    )
    assert result.error is None, result.error
    assert plan.stat().st_size > 0 and result.facts["engine_plan"] == plan.name  # the plan trtexec built, fetched over ssh
    assert result.accuracy == 1.0 and result.agreement == 1.0
    assert result.latency["iterations"] == 30 and len(result.latency_samples_ms) == 30
    assert result.facts["runtime"] == "trtexec" and result.facts["tensorrt"] == "10.3.0"
    assert [v["passed"] for v in result.verdicts] == [False]  # the stand-in's synthetic ~1.1 ms vs a 1 ms budget


def test_trtexec_missing_on_target(compressed_run, sshd_server):
    spec = TargetSpec(**ssh_target_entry(sshd_server, runtime="trtexec", trtexec="/nonexistent/trtexec"))
    with pytest.raises(TargetUnavailable, match="trtexec not found at /nonexistent/trtexec"):
        create_runner(spec, compressed_run.run_dir / "student.onnx")


def _real_trtexec() -> str | None:
    found = shutil.which("trtexec")
    return found or ("/usr/src/tensorrt/bin/trtexec" if os.access("/usr/src/tensorrt/bin/trtexec", os.X_OK) else None)


@pytest.mark.skipif(_real_trtexec() is None, reason="needs NVIDIA trtexec (TensorRT) on this machine; not installed here")
def test_real_trtexec_over_ssh(compressed_run, sshd_server):
    spec = TargetSpec(**ssh_target_entry(sshd_server, runtime="trtexec", trtexec=_real_trtexec(), timeout_s=600))
    runner = create_runner(spec, compressed_run.run_dir / "student.onnx")
    try:
        x = np.random.default_rng(0).standard_normal((70, 1, 28, 28)).astype(np.float32)
        import onnxruntime as ort

        expected = ort.InferenceSession(str(compressed_run.run_dir / "student.onnx")).run(None, {"input": x})[0]
        got = runner.infer(x)
        assert got.shape == expected.shape and np.abs(got - expected).max() < 1e-2
        stats = runner.time(1, warmup=5, iterations=50)
        assert stats.iterations >= 50 and stats.p99_ms > 0
        assert runner.facts()["tensorrt"]
    finally:
        runner.close()


# ----------------------------------------------------------------------------------- device facts


def test_device_facts_from_a_jetson():
    text = "\n".join(
        [
            "@@model",
            "NVIDIA Orin Nano Developer Kit",
            "@@compatible",
            "nvidia,p3768-0000+p3767-0005 nvidia,p3767-0005 nvidia,tegra234 ",
            "@@tegra",
            "# R35 (release), REVISION: 3.1, GCID: 32827747, BOARD: t186ref, EABI: aarch64, DATE: Sun Mar 19 15:19:21 UTC 2023",
            "@@jetpack",
            "",
            "@@nvpmodel",
            "NVPM WARN: fan mode is not set!",
            "NV Power Mode: 15W",
            "0",
            "@@gpu",
            "@@uname",
            "Linux 5.10.104-tegra aarch64",
            "@@cpus",
            "6",
            "@@hostname",
            "orin",
        ]
    )
    facts = parse_device_facts(text)
    assert facts == {
        "hostname": "orin",
        "system": "Linux 5.10.104-tegra aarch64",
        "cpus": 6,
        "device_model": "NVIDIA Orin Nano Developer Kit",
        "soc": "tegra234",
        "gpu": None,
        "nv_tegra_release": "# R35 (release), REVISION: 3.1, GCID: 32827747, BOARD: t186ref, EABI: aarch64, "
        "DATE: Sun Mar 19 15:19:21 UTC 2023",
        "l4t": "35.3.1",
        "jetpack": None,
        "power_mode": "15W (mode 0)",
    }


def test_device_facts_jetpack_from_l4t_or_package():
    r36 = "@@tegra\n# R36 (release), REVISION: 4.3, GCID: 1, BOARD: generic, EABI: aarch64, DATE: x\n# KERNEL_VARIANT: oot\n"
    assert parse_device_facts(r36)["jetpack"] == "6.2"
    r32 = "@@tegra\n# R32 (release), REVISION: 5, GCID: 2, BOARD: t186ref, EABI: aarch64, DATE: x\n"
    assert parse_device_facts(r32)["l4t"] == "32.5.0" and parse_device_facts(r32)["jetpack"] == "4.5"
    assert parse_device_facts(r36 + "@@jetpack\n5.1.2-b104\n")["jetpack"] == "5.1.2"
    assert parse_device_facts("")["l4t"] is None
