"""Weight files: what a file holds (judged by its bytes), state dicts from safetensors or PyTorch checkpoints
(never unpickled unless the recipe trusts the file), and loading them strictly with errors in the user's terms."""

from __future__ import annotations

import logging
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import BadInput
from .features import first_conv

log = logging.getLogger("edgedistill")

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")

WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")


def sniff_file(path: Path) -> str:
    """What a model file holds, judged by its bytes: safetensors, torchscript, torch (a torch.save pickle), onnx or unknown."""
    with open(path, "rb") as f:
        head = f.read(16)
    size = path.stat().st_size
    if len(head) >= 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if 0 < header_len < size and head[8:9] == b"{":
            return "safetensors"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile:
            return "unknown"
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            return "torchscript"
        return "torch" if any(n.endswith("data.pkl") for n in names) else "unknown"
    if head[:1] == b"\x80":
        return "torch"
    if path.suffix.lower() == ".onnx" or head[:1] == b"\x08":
        try:
            import onnx

            onnx.load_model(str(path), load_external_data=False)
            return "onnx"
        except Exception:  # protobuf raises DecodeError or plain exceptions by version
            return "unknown"
    return "unknown"


def refusal(path: Path, what: str = "holds pickled Python objects, not just tensors") -> str:
    return (
        f"{path} {what}; unpickling runs arbitrary code from the file, so it is refused. Convert it once where you trust it "
        f"(m = torch.load('{path.name}', weights_only=False); safetensors.torch.save_file(m.state_dict(), 'weights.safetensors')) "
        "and give that as weights with the architecture, or set teacher.trust_checkpoint: true"
    )


def torch_load(path: Path, trust_checkpoint: bool) -> Any:
    """`torch.load(weights_only=True)`; full unpickling only with the recipe's trust_checkpoint, and logged."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for foreign globals; RuntimeError and others for damaged files
        if "weights only" not in str(exc).lower() and "weights_only" not in str(exc):
            raise BadInput(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    if not trust_checkpoint:
        raise BadInput(refusal(path))
    log.warning(
        "%s: unpickling with weights_only=False because the recipe sets trust_checkpoint: true; this runs whatever code the file carries",
        path,
    )
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (ModuleNotFoundError, AttributeError) as exc:
        raise BadInput(f"{path} pickles classes that cannot be imported here ({exc}); install the code that defined the model") from None


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint: nested under state_dict / model / ... keys, or a whole nn.Module's."""
    for _ in range(4):
        if isinstance(obj, nn.Module):
            obj = obj.state_dict()
        if not isinstance(obj, dict) or _is_tensor_dict(obj):
            break
        key = next((k for k in STATE_DICT_KEYS if isinstance(obj.get(k), (dict, nn.Module))), None)
        if key is None:
            break
        obj = obj[key]
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
    if not tensors:
        keys = list(obj)[:5] if isinstance(obj, dict) else type(obj).__name__
        raise BadInput(f"{path} holds no state dict (found {keys}); expected tensors, possibly under one of {list(STATE_DICT_KEYS)}")
    return tensors


def read_state_dict(path: Path, trust_checkpoint: bool = False) -> dict[str, torch.Tensor]:
    """Tensors from safetensors or a .pth/.pt/.bin/.ckpt checkpoint, whatever the suffix says."""
    if not path.is_file():
        raise BadInput(f"weights file {path} does not exist")
    kind = sniff_file(path)
    if kind == "safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise BadInput(f"{path} is not a readable safetensors file ({exc})") from None
    if kind == "torch":
        return unwrap_state_dict(torch_load(path, trust_checkpoint), path)
    if kind == "torchscript":
        raise BadInput(f"{path} is a TorchScript archive, not a state dict; use arch: torchscript")
    if kind == "onnx":
        raise BadInput(f"{path} is an ONNX model, not a state dict; use arch: onnx")
    raise BadInput(
        f"{path}: unsupported file; weights are safetensors or a torch.save state dict (.pth/.pt), "
        "or set arch: onnx / torchscript / pickle for a whole model"
    )


def _strip_wrappers(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Drops `module.` (DDP), `_orig_mod.` (torch.compile), `model.` (Lightning) prefixes when that makes keys fit."""
    for _ in range(3):
        best, best_hits = state, len(expected & state.keys())
        prefixes = set(WRAPPER_PREFIXES)
        heads = {k.split(".", 1)[0] for k in state}
        if len(heads) == 1 and all("." in k for k in state):
            prefixes.add(next(iter(heads)) + ".")
        for prefix in prefixes:
            candidate = {k.removeprefix(prefix): v for k, v in state.items()}
            hits = len(expected & candidate.keys())
            if hits > best_hits:
                best, best_hits = candidate, hits
        if best is state:
            return state
        state = best
    return state


def _few(keys: list[str], n: int = 3) -> str:
    return f"{keys[:n]}" + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def fit_state_dict(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Loads `state` strictly, explaining a class-count or channel mismatch in the user's terms."""
    own = model.state_dict()
    state = _strip_wrappers(state, set(own))
    shape_errors = [k for k in own if k in state and state[k].shape != own[k].shape]  # in the model's layer order
    if shape_errors:
        head = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        stem = first_conv(model)
        first = shape_errors[0]
        if head and all(k.startswith(head[-1] + ".") for k in shape_errors) and state[first].shape[1:] == own[first].shape[1:]:
            raise BadInput(
                f"{path}: class-count mismatch: its classifier {head[-1]} has {state[first].shape[0]} outputs but "
                f"num_classes is {own[first].shape[0]} (every other layer fits); set num_classes: {state[first].shape[0]}"
            )
        if stem and shape_errors == [f"{stem[0]}.weight"] and state[first].shape[2:] == own[first].shape[2:]:
            raise BadInput(
                f"{path}: input-channel mismatch: its first conv {stem[0]} takes {state[first].shape[1]} channel(s) "
                f"but input.channels is {own[first].shape[1]} (every other layer fits)"
            )
        raise BadInput(
            f"{path} holds another architecture: {len(shape_errors)} layer(s) have other shapes, the first {first}: "
            f"{list(state[first].shape)} in the file, {list(own[first].shape)} in {type(model).__name__}; check the arch "
            "(more than the class count differs)"
        )
    missing = sorted(k for k in own.keys() - state.keys() if not k.endswith("num_batches_tracked"))
    unexpected = sorted(state.keys() - own.keys())
    problems = []
    if missing:
        problems.append(f"missing keys {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_few(unexpected)}")
    if problems:
        raise BadInput(f"{path} does not fit the architecture: {'; '.join(problems)}")
    model.load_state_dict(state, strict=False)


def load_weights(model: nn.Module, path: Path, trust_checkpoint: bool = False) -> nn.Module:
    """Load safetensors or .pth weights strictly; a mismatch lists a few of the offending keys."""
    fit_state_dict(model, read_state_dict(Path(path), trust_checkpoint), Path(path))
    return model
