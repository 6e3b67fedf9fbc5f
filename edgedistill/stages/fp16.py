"""FP16 copy of an exported classifier: half the size, run natively where a runtime has 16-bit float kernels.

ONNX Runtime's own converter (onnxruntime.transformers.float16) does the work; inputs and outputs stay float32
(one Cast at each end), so whoever feeds student.onnx feeds student.fp16.onnx the same arrays. Values beyond
fp16's range are clamped by the converter (it logs them).
"""

from __future__ import annotations

from pathlib import Path

from ..atomic import atomic_path
from ..errors import BadInput
from ..models.onnx_info import onnx_info


def convert_fp16(fp32_onnx: Path, out: Path) -> Path:
    """Write a float16 copy of `fp32_onnx` to `out`, with float32 input and output; returns `out`."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    fp32_onnx, out = Path(fp32_onnx), Path(out)
    info = onnx_info(fp32_onnx)  # missing or unreadable file: BadInput
    if info.quantized:
        raise BadInput(f"{fp32_onnx} is quantized (has QuantizeLinear/DequantizeLinear); pass the fp32 export")
    if out.resolve() == fp32_onnx.resolve():
        raise BadInput(f"output {out} would overwrite the fp32 input model; choose another path, e.g. *.fp16.onnx")
    half = convert_float_to_float16(onnx.load(str(fp32_onnx)), keep_io_types=True)
    OnnxModel(half).topological_sort()  # the converter appends its input Casts at the end of the graph
    onnx.checker.check_model(half)
    with atomic_path(out) as tmp:
        onnx.save(half, str(tmp))
    return out
