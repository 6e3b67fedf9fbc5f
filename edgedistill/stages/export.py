"""Export: ONNX with a dynamic batch axis, checked, with a parity check against PyTorch."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import tempfile
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import torch
from torch import nn

from ..atomic import atomic_path
from ..config.schema import InputSpec
from ..errors import BadInput
from ..inputs.images import normalize
from ..version import __version__

OPSET = 17
PROTOBUF_LIMIT = 2**31 - 1
log = logging.getLogger("edgedistill")
Exporter = Literal["auto", "torchscript", "dynamo"]


@dataclass
class Parity:
    """parity.json: the fields of compare_outputs' dict (stages.validate) that the export check keeps."""

    samples: int
    max_abs_diff: float
    top1_agreement: float

    @classmethod
    def of(cls, comparison: dict) -> Parity:
        return cls(**{f.name: comparison[f.name] for f in fields(cls)})


def export_onnx(model: nn.Module, spec: InputSpec, path: Path, class_names: list[str] | None = None, exporter: Exporter = "auto") -> Path:
    """A single self-contained ONNX file (opset >= 17, dynamic batch) carrying the preprocessing as metadata.

    The TorchScript exporter goes first: mature for CNNs and 50x faster than the dynamo one on small models.
    It cannot express some ops (AdaptiveAvgPool2d to a size that does not divide its input, as LeNet-5 at
    32x32 has), and for those the dynamo exporter takes over.
    """
    model = model.eval()
    with atomic_path(path) as tmp:
        proto, used = None, "torchscript"
        if exporter in ("auto", "torchscript"):
            try:
                proto = _export_torchscript(model, spec, tmp)
            except Exception as exc:  # torch raises SymbolicValueError, UnsupportedOperatorError, RuntimeError...
                if exporter == "torchscript":
                    raise BadInput(f"the TorchScript ONNX exporter cannot export this model: {first_line(exc)}") from None
                log.info("export: TorchScript exporter failed (%s); using the dynamo exporter", first_line(exc))
        if proto is None:
            proto, used = _export_dynamo(model, spec, tmp), "dynamo"
        _add_metadata(proto, spec, class_names, used)
        if proto.ByteSize() > PROTOBUF_LIMIT:
            raise BadInput(f"the exported model is {proto.ByteSize() / 2**30:.1f} GiB, over protobuf's 2 GiB single-file limit")
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
    return path


def first_line(exc: BaseException) -> str:
    """`Type: first line of the message`, at most 200 characters: what a one-line error or log entry shows of an exception."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


def _dummy(spec: InputSpec, batch: int) -> torch.Tensor:
    return torch.zeros(batch, spec.channels, spec.size, spec.size)


@contextlib.contextmanager
def _native_output_silenced():
    """The exporters' C++ side prints straight to file descriptors 1 and 2 (the whole TorchScript graph on failure)."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def _export_torchscript(model: nn.Module, spec: InputSpec, tmp: Path) -> onnx.ModelProto:
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _native_output_silenced():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (_dummy(spec, 1),),
            str(tmp),
            input_names=["input"],
            output_names=["logits"],
            opset_version=OPSET,
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
    return onnx.load(str(tmp))


@contextlib.contextmanager
def _quiet_dynamo():
    """The dynamo exporter logs its opset 18 -> 17 down-conversion attempt, traceback included, when it fails."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "torch.export", "torch._dynamo")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
            _native_output_silenced(),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _export_dynamo(model: nn.Module, spec: InputSpec, tmp: Path) -> onnx.ModelProto:
    """Exports at batch 2 (torch.export specializes a size-1 dim); may come back at opset 18 when the
    down-conversion fails, which is fine (>= 17), and with weights in a side file, which is folded back in."""
    with tempfile.TemporaryDirectory(prefix=".export.", suffix=".part", dir=tmp.parent) as work, _quiet_dynamo():
        staged = Path(work) / "model.onnx"
        try:
            torch.onnx.export(
                model,
                (_dummy(spec, 2),),
                str(staged),
                input_names=["input"],
                output_names=["logits"],
                opset_version=OPSET,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                dynamo=True,
                external_data=False,
                report=False,
                verify=False,
            )
        except Exception as exc:
            raise BadInput(f"neither ONNX exporter can export this model; dynamo: {first_line(exc)}") from None
        proto = onnx.load(str(staged), load_external_data=True)
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < OPSET:
        raise BadInput(f"the dynamo exporter produced opset {opset}; edgedistill needs >= {OPSET}")
    return proto


def _add_metadata(proto: onnx.ModelProto, spec: InputSpec, class_names: list[str] | None, exporter: str) -> None:
    metadata = {
        "edgedistill_version": __version__,
        "input_layout": "NCHW",
        "input_scale": "1/255",
        "mean": json.dumps(spec.mean),
        "std": json.dumps(spec.std),
        "class_names": json.dumps(class_names or []),
        "exporter": exporter,
    }
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in metadata]
    del proto.metadata_props[:]
    for key, value in [*kept, *metadata.items()]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def check_parity(model: nn.Module, onnx_path: Path, images: np.ndarray, spec: InputSpec) -> Parity:
    """Compares PyTorch and ONNX Runtime logits on real samples, at a batch size other than the export's, as every
    target's logits are compared (compare_outputs)."""
    import onnxruntime as ort

    from .validate import compare_outputs

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = normalize(torch.from_numpy(images), spec)
    with torch.inference_mode():
        expected = model.eval()(x).numpy()
    got = np.concatenate([session.run(None, {name: x[i : i + 64].numpy()})[0] for i in range(0, len(x), 64)])
    return Parity.of(compare_outputs(got, expected))


def parity_dict(parity: Parity) -> dict:
    return asdict(parity)
