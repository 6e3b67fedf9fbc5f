"""Static INT8 quantization (QDQ format) of an exported classifier, calibrated on selected samples.

ONNX Runtime's own tooling does the work: `quant_pre_process` (symbolic shape inference + graph
optimisation, which the quantizer needs to place Q/DQ pairs well) followed by `quantize_static`.
onnxruntime is imported inside the functions so that importing this module (e.g. for CLI `--help`) stays cheap.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from ..atomic import atomic_path, naming
from ..backends.base import cpu_flags
from ..errors import BadInput
from ..models.onnx_info import onnx_info

log = logging.getLogger(__name__)

CalibrationMethod = Literal["minmax", "entropy", "percentile"]

CALIBRATION_BATCH = 32
_BATCHES_PER_CHUNK = 8
# ORT's entropy defaults (128 bins, 128 target bins) leave a single candidate threshold: plain min/max.
ENTROPY_BINS = 2048
PERCENTILE = 99.999


@dataclass
class QuantizeResult:
    path: Path
    method: str
    calibration_samples: int
    size_bytes: int
    fp32_size_bytes: int
    reduce_range: bool


# x86 instructions that multiply 8-bit values into 32-bit sums; without one, ONNX Runtime's u8s8 kernels add pairs of
# products in 16 bits (vpmaddubsw), which full 8-bit weights can saturate.
INT8_DOT_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}


def needs_reduced_range(machine: str | None = None, flags: set[str] | None = None) -> bool:
    """Whether ONNX Runtime's INT8 kernels on this machine need 7-bit weights to stay exact: an x86 CPU that has no
    8-bit dot-product instruction, or whose flags cannot be read (accuracy first). ARM and other CPUs do not."""
    machine = (machine or platform.machine()).lower()
    if machine not in {"x86_64", "amd64", "i386", "i686", "x86"}:
        return False
    flags = cpu_flags() if flags is None else flags
    return flags is None or not flags & INT8_DOT_FLAGS


@dataclass(frozen=True)
class _InputSpec:
    name: str
    batch: int | None
    channels: int | None
    height: int | None
    width: int | None


def quantize_int8(
    fp32_onnx: Path,
    out: Path,
    calibration: np.ndarray,
    mean: list[float],
    std: list[float],
    method: CalibrationMethod = "minmax",
    per_channel: bool = True,
    max_samples: int = 512,
    seed: int = 0,
    *,
    for_tensorrt: bool = False,
    reduce_range: bool | None = None,
) -> QuantizeResult:
    """Write a QDQ INT8 copy of `fp32_onnx` to `out`, calibrated on uint8 NCHW `calibration` images.

    Default (`for_tensorrt=False`) is ORT's x86 CPU recommendation: asymmetric QUInt8 activations with
    symmetric per-channel QInt8 weights (U8S8), which spends all 8 bits on post-ReLU tensors.
    `for_tensorrt=True` gives what TensorRT's ONNX parser accepts: symmetric QInt8 activations and weights
    (zero point 0), float biases (it rejects ORT's int32 bias DequantizeLinear), float weights behind their
    own Q/DQ pair (older parsers reject int8 weight initializers; the engine build quantizes them, so this
    file is no smaller than the fp32 one) and one Q/DQ pair per consumer.
    `reduce_range` (7-bit weights) follows the machine that quantizes unless given (`needs_reduced_range`): on CPUs
    with VNNI or AMX (and ARM) full 8-bit weights are exact, and 7-bit ones made ResNet-18 INT8 2.3x slower under
    OpenVINO (AMX) and 1.4x slower under ONNX Runtime there (docs/deploy.md); on x86 CPUs without them, ONNX
    Runtime's u8s8 kernels saturate 16-bit intermediate sums with 8-bit weights (a MobileNetV3-like block's logits
    23% off). The TensorRT flavour always keeps 8-bit weights.
    On the CPU flavour, HardSwish (MobileNetV3), which ORT's pre-processing splits into HardSigmoid and Mul,
    is put back together before Q/DQ placement (see `_restore_hardswish`).
    More than `max_samples` images are subsampled with `seed` so runs are reproducible.
    """
    fp32_onnx, out = Path(fp32_onnx), Path(out)
    if reduce_range is None:
        reduce_range = not for_tensorrt and needs_reduced_range()
    if method not in get_args(CalibrationMethod):
        raise BadInput(f"unknown calibration method {method!r}; use one of {', '.join(get_args(CalibrationMethod))}")
    if max_samples < 1:
        raise BadInput(f"max_samples must be at least 1, got {max_samples}")
    info = onnx_info(fp32_onnx)
    spec = _InputSpec(info.input_name, info.batch, *info.image_input("quantization"))
    if info.quantized:
        raise BadInput(f"{fp32_onnx} is already quantized (has QuantizeLinear/DequantizeLinear); pass the fp32 export")
    if out.resolve() == fp32_onnx.resolve():
        raise BadInput(f"output {out} would overwrite the fp32 input model; choose another path, e.g. *.int8.onnx")
    images = _check_calibration(calibration, spec, fp32_onnx)
    mean_arr, std_arr = _check_norm(mean, std, images.shape[1])

    batch = spec.batch or CALIBRATION_BATCH
    if spec.batch and len(images) < spec.batch:
        raise BadInput(
            f"{fp32_onnx} has a fixed batch size of {batch} but only {len(images)} calibration samples were given; "
            "pass more samples or export with a dynamic batch axis"
        )
    count = min(len(images), max_samples)
    if spec.batch:
        count -= count % spec.batch
    index = np.arange(len(images))
    if count < len(images):
        index = np.sort(np.random.default_rng(seed).choice(len(images), size=count, replace=False))

    from onnxruntime.quantization import QuantFormat, QuantType, quant_pre_process, quantize_static

    reader = _make_reader(images, index, spec.name, batch, mean_arr, std_arr)
    has_cache = "calibration_cache_path" in inspect.signature(quantize_static).parameters
    out.parent.mkdir(parents=True, exist_ok=True)
    # scratch beside `out` (a run directory removes `.*.part` a killed run left); an OSError there without a file
    # name (ENOSPC from a write) names `out`, the file being made; the result goes through the one atomic writer
    with naming(out), tempfile.TemporaryDirectory(prefix=f".{out.name}.", suffix=".part", dir=out.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        staged = Path(tmp) / "quantized.onnx"
        with contextlib.redirect_stdout(io.StringIO()):
            _pre_process(quant_pre_process, fp32_onnx, prepared)
            if not for_tensorrt:
                _restore_hardswish(prepared)
            if has_cache:
                cache = _calibrate(prepared, reader, method, symmetric=for_tensorrt, tmp=Path(tmp))
                source = {"calibration_cache_path": str(cache)}
            else:  # older onnxruntime: quantize_static calibrates itself, with its fixed histogram settings
                if method == "entropy":
                    log.warning("this onnxruntime cannot take calibration ranges; entropy runs as min/max")
                source = {"calibration_data_reader": reader}
            quantize_static(
                model_input=str(prepared),
                model_output=str(staged),
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                reduce_range=reduce_range,
                activation_type=QuantType.QInt8 if for_tensorrt else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=_ort_method(method),
                extra_options={
                    "ActivationSymmetric": for_tensorrt,
                    "WeightSymmetric": True,
                    "CalibTensorRangeSymmetric": for_tensorrt,
                    "QuantizeBias": not for_tensorrt,
                    "AddQDQPairToWeight": for_tensorrt,
                    "DedicatedQDQPair": for_tensorrt,
                },
                **source,
            )
        with atomic_path(out) as final:
            os.replace(staged, final)
    return QuantizeResult(
        path=out,
        method=method,
        calibration_samples=int(count),
        size_bytes=onnx_info(out).size_bytes,
        fp32_size_bytes=info.size_bytes,
        reduce_range=reduce_range,
    )


def _check_calibration(calibration: object, spec: _InputSpec, path: Path) -> np.ndarray:
    want = f"(N, {spec.channels or 'C'}, {spec.height or 'H'}, {spec.width or 'W'})"
    if not isinstance(calibration, np.ndarray):
        raise BadInput(f"calibration must be a numpy uint8 array shaped {want}, got {type(calibration).__name__}")
    shape = calibration.shape
    if calibration.dtype != np.uint8:
        raise BadInput(
            f"calibration images must be uint8 pixels (0-255), got {calibration.dtype}; "
            "pass raw pixels, mean/std normalisation is applied here"
        )
    if calibration.ndim != 4:
        hint = "; add the channel axis with x[:, None]" if calibration.ndim == 3 else ""
        raise BadInput(f"calibration must be shaped {want}, got {shape}{hint}")
    if len(calibration) < 1:
        raise BadInput("no calibration samples (N=0); select at least one image for calibration")
    n, c, h, w = shape
    if spec.channels is not None and c != spec.channels:
        hint = ""
        if w == spec.channels:
            hint = "; the array looks NHWC, transpose it with x.transpose(0, 3, 1, 2)"
        raise BadInput(f"calibration has {c} channel(s) but {path} expects {spec.channels} ({want}), got {shape}{hint}")
    if (spec.height is not None and h != spec.height) or (spec.width is not None and w != spec.width):
        raise BadInput(
            f"calibration images are {h}x{w} but {path} expects {spec.height}x{spec.width}; resize them to the model's input size"
        )
    return calibration


def _check_norm(mean: list[float], std: list[float], channels: int) -> tuple[np.ndarray, np.ndarray]:
    mean_arr = np.asarray(mean, dtype=np.float32).reshape(-1)
    std_arr = np.asarray(std, dtype=np.float32).reshape(-1)
    for name, arr in (("mean", mean_arr), ("std", std_arr)):
        if arr.size not in (1, channels):
            raise BadInput(f"{name} has {arr.size} values but the images have {channels} channel(s); give one each")
    if np.any(std_arr <= 0) or not np.all(np.isfinite(std_arr)) or not np.all(np.isfinite(mean_arr)):
        raise BadInput(f"std must be positive and mean/std finite, got mean={list(mean)} std={list(std)}")
    shape = (1, -1, 1, 1)
    return (
        np.broadcast_to(mean_arr, (channels,)).reshape(shape),
        np.broadcast_to(std_arr, (channels,)).reshape(shape),
    )


def _make_reader(images: np.ndarray, index: np.ndarray, name: str, batch: int, mean: np.ndarray, std: np.ndarray):
    """A CalibrationDataReader that normalises one batch at a time; `set_range` lets calibration run in chunks."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.starts = list(range(0, len(index), batch))
            self.set_range(0, len(self.starts))

        def __len__(self) -> int:
            return len(self.starts)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.pending = iter(self.starts[start_index:end_index])

        def get_next(self) -> dict[str, np.ndarray] | None:
            start = next(self.pending, None)
            if start is None:
                return None
            x = images[index[start : start + batch]].astype(np.float32) / np.float32(255.0)
            return {name: np.ascontiguousarray((x - mean) / std, dtype=np.float32)}

    return _Reader()


def _ort_method(method: str):
    from onnxruntime.quantization import CalibrationMethod as OrtMethod

    return {"minmax": OrtMethod.MinMax, "entropy": OrtMethod.Entropy, "percentile": OrtMethod.Percentile}[method]


def _calibrate(model: Path, reader, method: str, symmetric: bool, tmp: Path) -> Path:
    """Activation ranges from our own calibrator run, handed to quantize_static as a calibration cache.

    quantize_static cannot set histogram bins (see ENTROPY_BINS). Collecting a few batches per call
    also bounds memory: histogram calibrators keep every intermediate tensor until `collect_data` returns.
    """
    from onnxruntime.quantization import create_calibrator, save_tensors_data

    # KL compares against the codes the tensor really gets inside ORT's signed window [-t, t]: 255 for
    # symmetric int8, 511 for uint8 whose 256 codes cover [0, t] after a ReLU. Fewer levels (TensorRT's
    # 128 on |x|) made LeNet-5 clip post-ReLU activations to 6% of their range.
    options = {
        "minmax": {},
        "entropy": {"num_bins": ENTROPY_BINS, "num_quantized_bins": 255 if symmetric else 511},
        "percentile": {"num_bins": 2048, "percentile": PERCENTILE},
    }[method]
    calibrator = create_calibrator(
        model,
        None,
        augmented_model_path=str(tmp / "augmented.onnx"),
        calibrate_method=_ort_method(method),
        extra_options={"symmetric": symmetric, **options},
    )
    for start in range(0, len(reader), _BATCHES_PER_CHUNK):
        reader.set_range(start, start + _BATCHES_PER_CHUNK)
        calibrator.collect_data(reader)
    collector = getattr(calibrator, "collector", None)
    if method == "entropy" and hasattr(collector, "get_entropy_threshold"):
        collector.get_entropy_threshold = _entropy_threshold
    cache = tmp / "calibration.json"
    save_tensors_data(calibrator.compute_data(), cache)
    return cache


def _entropy_threshold(histogram: tuple, num_quantized_bins: int) -> tuple:
    """ORT's `HistogramCollector.get_entropy_threshold` with its per-bin Python loops vectorised.

    Same candidates, same arithmetic (ORT's own smoothing and KL), same result; ORT's version takes
    seconds per tensor at 2048 bins, which made entropy calibration the slowest step by far.
    """
    from onnxruntime.quantization.calibrate import entropy
    from onnxruntime.quantization.quant_utils import smooth_distribution

    hist, edges = histogram[0], histogram[1]
    dtype = edges.dtype
    num_bins = hist.size
    zero = num_bins // 2
    half = num_quantized_bins // 2
    cum = np.concatenate(([0], np.cumsum(hist)))
    windows = [(zero - i, min(zero + i + 1, num_bins)) for i in range(half, zero + 1)]
    divergence = np.zeros(len(windows))
    for k, (start, end) in enumerate(windows):
        sliced = hist[start:end]
        p = sliced.copy()
        p[0] += cum[start]
        p[-1] += cum[-1] - cum[end]
        merged = sliced.size // num_quantized_bins
        full = merged * num_quantized_bins
        quantized = sliced[:full].reshape(num_quantized_bins, merged).sum(axis=1)
        quantized[-1] += sliced[full:].sum()
        norm = (p[:full] != 0).reshape(num_quantized_bins, merged).sum(axis=1)
        q = np.zeros(p.size, dtype=np.int64)
        q[:full] = np.repeat(np.where(norm != 0, quantized / np.maximum(norm, 1), 0), merged)
        p, q = smooth_distribution(p), smooth_distribution(q)
        divergence[k] = np.array(np.inf if p is None or q is None else entropy(p, q), dtype=dtype)
    start, end = windows[int(np.argmin(divergence))]
    low, high = edges[start], edges[end]
    min_value, max_value = histogram[2], histogram[3]
    return (min_value if low < min_value else low, max_value if high > max_value else high)


def _pre_process(quant_pre_process, src: Path, dst: Path) -> None:
    """ORT's recommended pre-processing; symbolic shape inference is dropped if it cannot handle the graph."""
    try:
        quant_pre_process(str(src), str(dst), auto_merge=True)
    except Exception as exc:  # symbolic shape inference fails on some exotic ops
        log.warning("quantization pre-processing without symbolic shape inference (%s)", exc)
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)


def _restore_hardswish(model_path: Path) -> int:
    """Fuse HardSigmoid(alpha=1/6, beta=1/2)(x) * x back into one HardSwish node, in place; returns how many.

    ORT's pre-processing expands HardSwish into its ONNX function body, HardSigmoid + Mul; the quantizer
    then puts Q/DQ pairs between the two, which stops OpenVINO from fusing the activation into the convolution
    before it: MobileNetV3-Small INT8 ran 1.5x slower under OpenVINO that way, and no faster under ORT.
    """
    import onnx
    from onnx import helper

    model = onnx.load(str(model_path))
    if max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0) < 14:
        return 0  # HardSwish exists from opset 14
    graph = model.graph
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    fused: set[str] = set()
    for node in graph.node:
        if node.op_type != "HardSigmoid" or node.output[0] in outputs:
            continue
        attrs = {a.name: a.f for a in node.attribute}
        if abs(attrs.get("alpha", 0.2) - 1 / 6) > 1e-6 or abs(attrs.get("beta", 0.5) - 0.5) > 1e-6:
            continue
        users = consumers.get(node.output[0], [])
        if len(users) != 1 or users[0].op_type != "Mul" or sorted(users[0].input) != sorted([node.input[0], node.output[0]]):
            continue
        mul = users[0]
        fused.add(mul.output[0])
        node.CopyFrom(helper.make_node("HardSwish", [node.input[0]], [mul.output[0]], name=f"{mul.name or mul.output[0]}/HardSwish"))
    if fused:
        kept = [n for n in graph.node if not (n.op_type == "Mul" and n.output[0] in fused)]
        del graph.node[:]
        graph.node.extend(kept)
        onnx.save(model, str(model_path))
    return len(fused)
