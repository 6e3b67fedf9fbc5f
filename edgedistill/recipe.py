"""The recipe: one YAML file, safe-loaded and validated, that drives every stage."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import BadInput


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputSpec(Strict):
    """How the teacher expects its input: the student and the exported model inherit it."""

    channels: Literal[1, 3]
    size: Annotated[int, Field(gt=0, le=4096)]
    mean: list[float]
    std: list[float]

    @model_validator(mode="after")
    def _per_channel(self) -> "InputSpec":
        for key in ("mean", "std"):
            if len(getattr(self, key)) != self.channels:
                raise ValueError(f"{key} needs {self.channels} value(s), one per channel")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        return self


WHOLE_MODEL_ARCHS = ("onnx", "torchscript", "pickle")


class TeacherSpec(Strict):
    """The teacher from any source (docs/models.md); input and classes may come from the model file itself."""

    arch: str = Field(description="lenet5 (built-in), torchvision:NAME, timm:NAME or module.path:callable, with weights a state dict; "
                                  "or onnx, torchscript, pickle, with weights the whole model")
    weights: Path | None = Field(None, description="model file relative to the recipe: .safetensors or .pth/.pt state dict, .onnx, TorchScript or pickle")
    pretrained: str | None = Field(None, description="published weights instead of a file: torchvision weights name (IMAGENET1K_V1, DEFAULT) or timm tag (default)")
    trust_checkpoint: bool = Field(False, description="allow unpickling Python objects from weights; this runs code from the file")
    input: InputSpec | None = Field(None, description="required unless the model says it (ONNX input shape + mean/std metadata, pretrained weights)")
    num_classes: Annotated[int, Field(ge=2)] | None = Field(None, description="required unless class_names or the model says it")
    class_names: list[str] | None = None
    feature_layer: str | None = Field(None, description="layer the feature loss matches: module or torchvision feature-extraction node name, "
                                                        "ONNX tensor name; default: the classifier's input")

    @model_validator(mode="after")
    def _names(self) -> "TeacherSpec":
        if self.num_classes is None and self.class_names:
            self.num_classes = len(self.class_names)
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"class_names has {len(self.class_names)} entries but num_classes is {self.num_classes}")
        if self.arch in WHOLE_MODEL_ARCHS and self.weights is None:
            raise ValueError(f"arch {self.arch} needs weights: the model file")
        if self.pretrained is not None and not self.arch.startswith(("torchvision:", "timm:")):
            raise ValueError("pretrained applies to torchvision:NAME and timm:NAME teachers")
        if self.pretrained is not None and self.weights is not None:
            raise ValueError("give weights or pretrained, not both")
        return self


class BuiltinSource(Strict):
    builtin: str
    count: Annotated[int, Field(gt=0)] | None = None


class FolderSource(Strict):
    folder: Path = Field(description="any images, searched recursively")
    count: Annotated[int, Field(gt=0)] | None = None


class ShardsSource(Strict):
    shards: str = Field(description="WebDataset tar shards, brace-expanded: data/pool-{000000..000999}.tar; one image per sample key")


class ManifestSource(Strict):
    manifest: Path = Field(description="CSV (with a header) or Parquet file listing image paths, relative to the manifest's folder")
    column: str = Field("path", description="the column that holds the paths")


PoolSource = Union[BuiltinSource, FolderSource, ShardsSource, ManifestSource]
SOURCE_KINDS = ("BuiltinSource", "FolderSource", "ShardsSource", "ManifestSource")


class SelectSpec(Strict):
    strategy: Literal["balanced", "dfnd", "entropy", "random"] = Field(
        "balanced", description="balanced: most confident per predicted class up to per_class; dfnd: lowest teacher "
        "cross-entropy against its own argmax, global; entropy: highest-entropy samples (MosaicKD); random: baseline")
    per_class: Annotated[int, Field(gt=0)] = 1000
    total: Annotated[int, Field(gt=0)] | None = Field(None, description="size of a global selection (dfnd, entropy, random); default per_class x classes")
    dedup_threshold: Annotated[float, Field(gt=0, le=1)] | None = Field(
        None, description="samples whose teacher features have cosine similarity above this with a kept one do not fill a quota")
    batch_size: Annotated[int, Field(gt=0)] = 512


class ComputeSpec(Strict):
    """How stages use the hardware; none of it changes the recipe's meaning, so a run launched with torchrun uses the same file."""

    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when available")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="autocast of scoring and training; auto: bf16 on GPUs that support it, else fp16 on CUDA, fp32 on CPU")
    channels_last: bool | None = Field(None, description="memory format of conv nets; default: on for CUDA")
    compile: bool = Field(False, description="torch.compile the student's training step")
    workers: Annotated[int, Field(ge=0)] | None = Field(
        None, description="DataLoader processes per rank that decode pool files; default: none for built-in arrays, else up to 8")


class ClassDropSpec(Strict):
    mode: Literal["top_k", "min_prob", "none"] = "top_k"
    top_k: Annotated[int, Field(ge=1)] = Field(3, description="top_k mode: keep each soft label's k most likely classes")
    min_prob: Annotated[float, Field(gt=0, lt=1)] = Field(0.01, description="min_prob mode: drop classes below this probability")


class StudentSpec(Strict):
    arch: str = Field(description="lenet5_half (built-in), torchvision:NAME, timm:NAME or module.path:callable; sized to the teacher's classes and channels")
    feature_layer: str | None = Field(None, description="layer matched to the teacher's features: module or torchvision feature-extraction node name; "
                                                        "default: the classifier's input")


class RelationTerms(Strict):
    """Weights of the relation terms inside the relation loss."""

    distance: Annotated[float, Field(ge=0)] = 1.0
    angle: Annotated[float, Field(ge=0)] = 2.0
    similarity: Annotated[float, Field(ge=0)] = 0.0


class LossSpec(Strict):
    kd: Annotated[float, Field(ge=0)] = 1.0
    temperature: Annotated[float, Field(gt=0)] = Field(
        1.0, description="softmax temperature of KD; on out-of-domain pools, temperatures above 1 amplify the teacher's "
        "noisy low-probability classes (docs/method.md)")
    feature: Annotated[float, Field(ge=0)] = 1.0
    relation: Annotated[float, Field(ge=0)] = 1.0
    relation_terms: RelationTerms = RelationTerms()


class AugmentSpec(Strict):
    max_rotate_deg: Annotated[float, Field(ge=0, le=180)] = 10.0
    max_translate: Annotated[float, Field(ge=0, le=0.5)] = 0.1
    scale: tuple[float, float] = (0.9, 1.1)
    hflip: bool = False
    mixup: Annotated[float, Field(ge=0, le=1)] = Field(0.0, description="probability that a batch is mixed with a shuffled copy of itself")


class DistillSpec(Strict):
    epochs: Annotated[int, Field(gt=0)] = 20
    batch_size: Annotated[int, Field(gt=1)] = 256
    lr: Annotated[float, Field(gt=0)] = Field(0.003, description="peak learning rate of AdamW's one-cycle schedule")
    weight_decay: Annotated[float, Field(ge=0)] = 1e-4
    loss: LossSpec = LossSpec()
    augment: AugmentSpec | None = AugmentSpec()


class EvalSpec(Strict):
    labeled: str | None = Field(None, description="builtin:NAME, or a folder with one subfolder per class")
    limit: Annotated[int, Field(gt=0)] | None = None


class Budget(Strict):
    p99_ms: Annotated[float, Field(gt=0)] | None = None
    min_accuracy: Annotated[float, Field(ge=0, le=1)] | None = None
    max_accuracy_drop: Annotated[float, Field(ge=0, le=1)] | None = None
    max_int8_drop: Annotated[float, Field(ge=0, le=1)] | None = Field(
        None, description="fp32 minus INT8 student accuracy (teacher agreement without labels): on this target when "
        "its precision is int8, else student.int8.onnx on ONNX Runtime CPU")


class Int8Spec(Strict):
    enabled: bool = Field(True, description="write student.int8.onnx, calibrated on the selected pool samples")
    method: Literal["minmax", "entropy", "percentile"] = "minmax"
    samples: Annotated[int, Field(gt=0)] = Field(512, description="calibration images drawn from the selection")


class ExportSpec(Strict):
    int8: Int8Spec = Int8Spec()


class TargetSpec(Strict):
    name: str
    runtime: Literal["onnxruntime", "tensorrt", "trtexec"] = Field(
        "onnxruntime", description="tensorrt: TensorRT's Python API on this machine's GPU")
    providers: list[str] | None = Field(None, description="ONNX Runtime execution providers in order of preference: "
                                        "cpu, cuda, tensorrt (or ORT's names, e.g. CUDAExecutionProvider)")
    threads: Annotated[int, Field(ge=0)] = 0
    warmup: Annotated[int, Field(ge=0)] = 20
    iterations: Annotated[int, Field(gt=0)] = 200
    budget: Budget = Budget()
    ssh: str | None = Field(None, description="validate on this device over SSH: host, user@host or a Host alias of your ssh config")
    ssh_config: Path | None = Field(None, description="ssh config file (default: ~/.ssh/config), relative to the recipe")
    known_hosts: Path | None = Field(None, description="known_hosts file (default: ssh's own), relative to the recipe")
    host_key_policy: Literal["strict", "accept-new"] = "strict"
    precision: Literal["fp32", "fp16", "int8"] = Field(
        "fp32", description="engine precision (tensorrt, trtexec); int8 on onnxruntime runs student.int8.onnx")
    remote_python: str = Field("python3", description="Python with onnxruntime on the device (runtime onnxruntime over ssh)")
    trtexec: str = Field("/usr/src/tensorrt/bin/trtexec", description="trtexec on the device (JetPack's default path)")
    timeout_s: Annotated[float, Field(gt=0)] = Field(600, description="limit for each step on the device: upload, engine build, one run")

    @model_validator(mode="after")
    def _runtime_options(self) -> "TargetSpec":
        if self.precision == "fp16" and self.runtime == "onnxruntime":
            raise ValueError("precision fp16 needs runtime: tensorrt or trtexec (onnxruntime runs student.onnx, or "
                             "student.int8.onnx with precision: int8)")
        if self.runtime == "tensorrt" and self.ssh:
            raise ValueError("runtime tensorrt runs on this machine; for a device over ssh use runtime: trtexec")
        if self.providers and self.runtime != "onnxruntime":
            raise ValueError("providers are ONNX Runtime execution providers; they need runtime: onnxruntime")
        return self

    def resolved(self, recipe: "Recipe") -> "TargetSpec":
        """ssh_config and known_hosts are relative to the recipe file, like every other path in it."""
        paths = {key: recipe.resolve(value) for key in ("ssh_config", "known_hosts") if (value := getattr(self, key)) is not None}
        return self.model_copy(update=paths)


class Recipe(Strict):
    name: str
    seed: int = 0
    teacher: TeacherSpec
    pool: Annotated[list[PoolSource], Field(min_length=1)]
    select: SelectSpec = SelectSpec()
    class_drop: ClassDropSpec = ClassDropSpec()
    student: StudentSpec
    distill: DistillSpec = DistillSpec()
    eval: EvalSpec = EvalSpec()
    export: ExportSpec = ExportSpec()
    targets: list[TargetSpec] = []
    compute: ComputeSpec = ComputeSpec()

    base_dir: Path = Field(Path("."), exclude=True, description="directory of the recipe file; relative paths resolve against it")

    @field_validator("targets")
    @classmethod
    def _unique_targets(cls, targets: list[TargetSpec]) -> list[TargetSpec]:
        names = [t.name for t in targets]
        if len(names) != len(set(names)):
            raise ValueError("target names must be unique")
        return targets

    @model_validator(mode="after")
    def _int8_targets(self) -> "Recipe":
        if not self.export.int8.enabled:
            for t in self.targets:
                if t.budget.max_int8_drop is not None or (t.precision == "int8" and t.runtime == "onnxruntime"):
                    raise ValueError(f"target {t.name} needs the INT8 model, but export.int8.enabled is false")
        return self

    def resolve(self, path: Path) -> Path:
        path = Path(path).expanduser()
        return path if path.is_absolute() else (self.base_dir / path).resolve()

    def section(self, *names: str) -> dict[str, Any]:
        """JSON-ready dump of some sections, the basis of stage fingerprints."""
        return self.model_dump(mode="json", include=set(names))


def _format_error(source: str, err: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in err["loc"] if not (isinstance(p, str) and p in SOURCE_KINDS))
    kind, msg = err["type"], err["msg"]
    hint = ""
    if kind == "extra_forbidden":
        msg = "unknown key"
        hint = "; check the spelling (edgedistill recipe-schema lists every key)"
    elif kind == "missing":
        msg = "required key is missing"
    elif kind == "union_tag_invalid" or "union" in kind:
        hint = "; a pool entry needs `builtin: NAME`, `folder: PATH`, `shards: PATTERN` or `manifest: FILE`"
    return f"{source}: {loc or '<root>'}: {msg}{hint}"


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`section.key=value` pairs from --set; list items by index (pool.1.count=5000); values are YAML scalars."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise BadInput(f"--set {item!r}: expected section.key=value, e.g. --set distill.epochs=5")
        node: Any = data
        parts = key.split(".")
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise BadInput(f"--set {item!r}: {'.'.join(parts[:depth]) or key} has {len(node)} entries; index with 0..{len(node) - 1}")
                part = int(part)
            elif not isinstance(node, dict):
                raise BadInput(f"--set {item!r}: {'.'.join(parts[:depth])} is a value, not a section")
            if last:
                node[part] = yaml.safe_load(raw)
            else:
                if isinstance(node, dict) and not isinstance(node.get(part), (dict, list)):
                    node[part] = {}
                node = node[part]
    return data


def load_recipe(path: Path | str, overrides: list[str] | None = None) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise BadInput(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    except UnicodeDecodeError:
        raise BadInput(f"{path}: not a UTF-8 text file") from None
    if not isinstance(data, dict):
        raise BadInput(f"{path}: a recipe is a YAML mapping with keys name, teacher, pool, student, ...")
    if overrides:
        data = apply_overrides(data, overrides)
    return recipe_from_dict(data, base_dir=path.resolve().parent, source=str(path))


def recipe_from_dict(data: dict[str, Any], base_dir: Path = Path("."), source: str = "<recipe>") -> Recipe:
    try:
        recipe = Recipe.model_validate({**data, "base_dir": base_dir})
    except ValidationError as exc:
        errors = exc.errors()
        raise BadInput(_format_error(source, errors[0]) + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")) from None
    _check_files(recipe, source)
    from .teacher import complete_teacher

    complete_teacher(recipe, source)
    return recipe


def _check_files(recipe: Recipe, source: str) -> None:
    """Missing files are recipe errors, reported before any work starts."""
    from .sources import BUILTINS

    if recipe.teacher.weights is not None and not recipe.resolve(recipe.teacher.weights).is_file():
        raise BadInput(f"{source}: teacher.weights: file {recipe.resolve(recipe.teacher.weights)} does not exist")
    for i, src in enumerate(recipe.pool):
        if isinstance(src, BuiltinSource) and src.builtin not in BUILTINS:
            raise BadInput(f"{source}: pool.{i}.builtin: unknown built-in source {src.builtin!r}; available: {', '.join(sorted(BUILTINS))}")
        if isinstance(src, FolderSource) and not recipe.resolve(src.folder).is_dir():
            raise BadInput(f"{source}: pool.{i}.folder: directory {recipe.resolve(src.folder)} does not exist")
        if isinstance(src, ManifestSource) and not recipe.resolve(src.manifest).is_file():
            raise BadInput(f"{source}: pool.{i}.manifest: file {recipe.resolve(src.manifest)} does not exist")
        if isinstance(src, ShardsSource):
            from .pool import expand_shards

            missing = [p for p in expand_shards(src.shards, recipe.base_dir) if not p.is_file()]
            if missing:
                raise BadInput(f"{source}: pool.{i}.shards: {len(missing)} shard file(s) missing, e.g. {missing[0]}")
    labeled = recipe.eval.labeled
    if labeled:
        if labeled.startswith("builtin:"):
            if labeled[8:] not in BUILTINS:
                raise BadInput(f"{source}: eval.labeled: unknown built-in source {labeled[8:]!r}; available: {', '.join(sorted(BUILTINS))}")
        elif not recipe.resolve(Path(labeled)).is_dir():
            raise BadInput(f"{source}: eval.labeled: directory {recipe.resolve(Path(labeled))} does not exist (use builtin:NAME or a folder of class subfolders)")


def recipe_schema() -> dict[str, Any]:
    schema = Recipe.model_json_schema()
    schema.get("properties", {}).pop("base_dir", None)
    return schema
