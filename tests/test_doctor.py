"""`edgedistill doctor`: what this machine can run, as a table and as JSON, without failing on what it lacks."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import onnxruntime as ort
from rich.console import Console
from typer.testing import CliRunner

from edgedistill.backends import RUNTIMES
from edgedistill.cli import app
from edgedistill.doctor import INSTALL, collect_facts, facts_table, install_hint

STANDIN = Path(__file__).with_name("fake_trtexec_standin.py")


def test_doctor_json_lists_runtimes_providers_gpus_and_cpu(tmp_path, monkeypatch):
    wrapper = tmp_path / "trtexec"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STANDIN}" "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    result = CliRunner().invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.output)
    assert set(facts) == {"runtimes", "torch_cuda", "nvidia_smi", "gpu_packages", "cpu", "plugins"}
    assert list(facts["runtimes"]) == list(RUNTIMES)  # every runtime of the table, and only those
    ort_facts = facts["runtimes"]["onnxruntime"]
    assert ort_facts["usable"] and ort_facts["version"] == ort.__version__
    assert ort_facts["providers"] == ort.get_available_providers() and ort_facts["parts"]["provider cpu"]["usable"] is True
    trtexec = facts["runtimes"]["trtexec"]
    assert trtexec["usable"] and trtexec["path"] == str(wrapper) and trtexec["tensorrt"] == "10.3.0"
    assert facts["runtimes"]["openvino"]["usable"] and facts["runtimes"]["openvino"]["version"]
    assert "available" in facts["torch_cuda"] and "found" in facts["nvidia_smi"]
    assert facts["cpu"]["usable_cpus"] >= 1 and facts["cpu"]["cpus"] >= 1
    if not facts["runtimes"]["tensorrt"]["usable"]:
        assert "tensorrt" in facts["runtimes"]["tensorrt"]["detail"].lower()


def test_doctor_table_says_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("edgedistill.backends.trtexec.runner.DEFAULT_TRTEXEC", str(tmp_path / "none"))
    facts = collect_facts()
    assert not facts["runtimes"]["trtexec"]["usable"] and facts["nvidia_smi"] == {"found": False}
    result = CliRunner().invoke(app, ["doctor"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for row in [f"runtime {name}" for name in RUNTIMES] + ["torch.cuda", "nvidia-smi", "CPU"]:
        assert row in result.output
    assert "not on PATH nor at" in result.output and "install TensorRT" in result.output
    assert facts_table(facts).row_count >= 8
    # each "no" says what provides it; the JSON carries the same line for every unusable runtime
    wide = Console(file=io.StringIO(), width=400)
    wide.print(facts_table(facts))
    table = wide.file.getvalue()
    assert "JetPack on a Jetson (/usr/src/tensorrt/bin/trtexec)" in table and "the NVIDIA driver" in table
    assert facts["runtimes"]["trtexec"]["install"] == RUNTIMES["trtexec"].install == install_hint("runtime trtexec")
    cuda = facts["runtimes"]["onnxruntime"]["parts"]["provider cuda"]
    if not cuda["usable"]:  # a part's line is its row's too, in the table and in the JSON
        assert "pip install onnxruntime-gpu (in place of onnxruntime) and a CUDA driver" in table
        assert cuda["install"] == RUNTIMES["onnxruntime"].part_install["provider cuda"] == install_hint("provider cuda")


def test_every_runtime_and_provider_has_an_install_hint():
    """A runtime's hint is its row's (a row without one does not construct), and so are its parts' (ONNX Runtime's
    execution providers): a part that can be missing without a line fails here, not in a user's doctor. doctor.INSTALL
    keeps only what is no runtime's."""
    assert all(install_hint(f"runtime {name}") for name in RUNTIMES)
    for name, row in RUNTIMES.items():
        missing = [part for part, facts in (row.probe().get("parts") or {}).items() if not facts["usable"]]
        assert all(row.part_install.get(part) for part in missing), (name, missing)
    assert set(RUNTIMES["onnxruntime"].part_install) == {"provider cuda", "provider tensorrt"}
    assert not any(key.startswith(("runtime ", "provider ")) for key in INSTALL)
