"""edgedistill: distill a trained image classifier into a small deployable model without its training data.

Architecture (README.md): inputs -> stages -> backends -> results, driven by pipeline.py, with cli.py on top.

The Python API is the command line's: `compress`, `validate` and `quantize` run what the commands of the same names
run and return what they write, as a dict. Each takes `overrides`: the `section.key=value` strings of --set, or a
dict of them ({"distill.epochs": 5, "targets.0.budget.p99_ms": 2}).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .version import __version__

if TYPE_CHECKING:
    from rich.console import Console

    from .config.schema import Recipe

Overrides = list[str] | dict[str, Any] | None

QUANTIZE_SETTINGS = {"method": "minmax", "samples": 512, "seed": 0, "for_tensorrt": False, "mean": None, "std": None}
"""quantize's settings and their defaults, as `edgedistill quantize` has them (--method, --samples, ...)."""


def override_items(overrides: Overrides) -> list[str]:
    """--set strings from either form; dict values are written as JSON, which --set reads back as YAML unchanged."""
    if not overrides:
        return []
    if isinstance(overrides, str):
        return [overrides]
    if isinstance(overrides, dict):
        return [f"{key}={json.dumps(value, default=str)}" for key, value in overrides.items()]
    return [str(item) for item in overrides]


def compress(
    recipe: Recipe | str | Path,
    run_dir: str | Path | None = None,
    fresh: bool = False,
    stages: tuple[str, ...] | None = None,
    console: Console | None = None,
    overrides: Overrides = None,
) -> dict:
    """`edgedistill compress`: runs the recipe's stages (all by default) and returns the report, also written to
    RUN_DIR/report.json. Raises BudgetFailed (exit 3) or TargetUnavailable (4) after writing it when the gate fails,
    BadInput (2) for a recipe or override that is wrong; see edgedistill.pipeline.compress."""
    from .config.schema import Recipe
    from .pipeline import STAGES
    from .pipeline import compress as run_pipeline
    from .recipe import load_recipe, recipe_with_overrides

    items = override_items(overrides)
    if isinstance(recipe, Recipe):
        recipe = recipe_with_overrides(recipe, items) if items else recipe
    else:
        recipe = load_recipe(recipe, items)
    return run_pipeline(recipe, run_dir=run_dir, fresh=fresh, stages=tuple(stages or STAGES), console=console)


def validate(
    model_or_run_dir: str | Path,
    overrides: Overrides = None,
    out_dir: str | Path | None = None,
    save: bool = False,
    console: Console | None = None,
) -> dict:
    """`edgedistill validate`: gates an ONNX classifier file, or re-gates a run directory with the recipe it recorded.

    For a run directory, overrides are recipe keys (`targets.0.budget.p99_ms=2`) and make a what-if unless `save`:
    only validation runs, its report goes to RUN_DIR/what-if/ and the run keeps its recipe and verdict. For a model
    file they are the settings of `validate MODEL.onnx`: its target's (a recipe target's keys: runtime, threads,
    iterations, ...; budget.NAME for each budget; those not given are the recipe schema's defaults) and labeled, mean,
    std, limit, duration_s (`{"runtime": "openvino", "budget.p99_ms": 2, "labeled": "val/"}`); its report goes to
    `out_dir` (default runs/validate-MODEL). Returns the report; raises as `compress` does when the gate fails.
    """
    from .pipeline import regate

    path = Path(model_or_run_dir)
    items = override_items(overrides)
    if path.suffix.lower() != ".onnx":
        return regate(path, None, items, save=save, console=console)
    from .results.report import gate_error

    report = _validate_model_file(path, items, Path(out_dir) if out_dir is not None else Path("runs") / f"validate-{path.stem}")
    error = gate_error(report)
    if error is not None:
        raise error
    return report


def _settings(items: list[str], defaults: dict[str, Any], what: str, prefix: str | None = None) -> dict[str, Any]:
    """`key=value` items over `defaults` (and `prefix`.NAME keys); values read as YAML scalars, as --set reads them."""
    import yaml

    from .errors import BadInput, did_you_mean

    settings = dict(defaults)
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or (key not in defaults and not (prefix and key.startswith(prefix + "."))):
            also = f" and {prefix}.NAME" if prefix else ""
            raise BadInput(f"{item}: {what} takes {', '.join(defaults)}{also}{did_you_mean(key, list(defaults))}")
        settings[key] = yaml.safe_load(raw)
    return settings


def _validate_model_file(model: Path, items: list[str], out_dir: Path) -> dict:
    """The settings of a model file are its target's (TargetSpec's fields, budget.NAME for each budget) and
    MODEL_FILE_OPTIONS (labeled, mean, std, limit, duration_s); one left out is the schema's default."""
    from .config.schema import Budget
    from .errors import BadInput
    from .stages.validate import MODEL_FILE_OPTIONS, model_file_target_fields, validate_model_file

    keys = [name for name in model_file_target_fields() if name != "budget"] + list(MODEL_FILE_OPTIONS)
    settings = _settings(items, dict.fromkeys(keys), "validate MODEL.onnx", prefix="budget")
    budget = {key.removeprefix("budget."): settings.pop(key) for key in list(settings) if key.startswith("budget.")}
    unknown = [name for name in budget if name not in Budget.model_fields]
    if unknown:
        raise BadInput(f"budget.{unknown[0]}: not a budget; budgets are {', '.join(Budget.model_fields)}")
    options = {name: settings.pop(name) for name in MODEL_FILE_OPTIONS}
    if options["labeled"] is not None:
        options["labeled"] = Path(options["labeled"])
    for key in ("mean", "std"):  # one number or a list, as quantize takes them
        value = options[key]
        try:
            options[key] = None if value is None else [float(v) for v in (value if isinstance(value, list) else [value])]
        except (TypeError, ValueError):
            raise BadInput(f"{key}={value!r}: expected a number or a list of numbers, e.g. [0.485, 0.456, 0.406]") from None
    target = {name: value for name, value in settings.items() if value is not None} | {"budget": budget}
    return validate_model_file(model, out_dir, target, **options)


def quantize(model: str | Path, calib: str | Path, out: str | Path | None = None, overrides: Overrides = None, force: bool = False) -> dict:
    """`edgedistill quantize`: an INT8 (Q/DQ) copy of any ONNX classifier, calibrated on a folder of images.

    Settings (QUANTIZE_SETTINGS): method, samples, seed, for_tensorrt, mean, std. Input size and channels come from
    the model; mean/std from its metadata unless given. `out` defaults to MODEL.int8.onnx (MODEL.int8.trt.onnx for
    TensorRT); an existing file there is the user's and is replaced only with `force=True` (--force).
    Returns the written file's facts and the calibration files that could not be read."""
    from dataclasses import asdict
    from typing import get_args

    from .errors import BadInput
    from .inputs.images import sample_folder
    from .stages.quantize import CalibrationMethod, quantize_int8
    from .stages.validate import model_input_spec

    model, calib = Path(model), Path(calib)
    s = _settings(override_items(overrides), QUANTIZE_SETTINGS, "quantize")
    floats = {key: [float(v) for v in s[key]] if isinstance(s[key], list) else s[key] for key in ("mean", "std")}
    spec, _ = model_input_spec(model, floats["mean"], floats["std"])
    suffix = ".int8.trt.onnx" if s["for_tensorrt"] else ".int8.onnx"
    target = Path(out) if out is not None else model.with_name(model.name.removesuffix(".onnx") + suffix)
    if not calib.is_dir():
        raise BadInput(f"--calib {calib}: not a directory of calibration images")
    if s["method"] not in get_args(CalibrationMethod):
        raise BadInput(f"unknown calibration method {s['method']!r}; use one of {', '.join(get_args(CalibrationMethod))}")
    if (target.exists() or target.is_symlink()) and not force:  # the input's mistakes first, then the user's file
        raise BadInput(f"{target}: already exists; write elsewhere with --out PATH (out=), or replace it with --force (force=True)")
    images, unreadable = sample_folder(calib, spec, s["samples"], s["seed"])
    if not len(images):
        raise BadInput(f"--calib {calib}: no readable images ({len(unreadable)} unreadable)")
    result = quantize_int8(
        model,
        target,
        images,
        spec.mean,
        spec.std,
        method=s["method"],
        max_samples=s["samples"],
        seed=s["seed"],
        for_tensorrt=s["for_tensorrt"],
    )
    return {**asdict(result), "unreadable": unreadable}


__all__ = ["compress", "validate", "quantize", "override_items", "__version__"]
