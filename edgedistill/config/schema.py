"""The recipe's structure: pydantic models with no project imports.

Fields that name an extension (pool source kinds, teacher formats, selection strategies, losses, runtimes) are
plain strings or mappings here; edgedistill.extensions checks them against the registries that define them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SerializeAsAny, field_validator, model_serializer, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputSpec(Strict):
    """How the teacher expects its input: the student and the exported model inherit it.

    A recipe may leave out what the teacher's model file says (an ONNX input shape, pretrained weights' transforms):
    edgedistill.models.teachers.complete_teacher_spec fills those keys, so every stage sees all four."""

    channels: Literal[1, 3] | None = Field(None, description="1 (grayscale) or 3 (RGB); default: the model file's input shape")
    size: Annotated[int, Field(gt=0, le=4096)] | None = Field(
        None, description="side of the square input in pixels; default: the model file's input shape"
    )
    mean: list[float] | None = Field(None, description="per-channel mean of pixels/255; default: the model file's metadata")
    std: list[float] | None = Field(None, description="per-channel std of pixels/255; default: the model file's metadata")

    @model_validator(mode="after")
    def _per_channel(self) -> InputSpec:
        for key in ("mean", "std"):
            values = getattr(self, key)
            if values is not None and self.channels is not None and len(values) != self.channels:
                raise ValueError(f"{key} needs {self.channels} value(s), one per channel")
        if self.mean is not None and self.std is not None and len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} value(s) but std has {len(self.std)}; give one per channel")
        if any(s <= 0 for s in self.std or []):
            raise ValueError("std values must be positive")
        return self

    def missing(self) -> list[str]:
        """The keys neither the recipe nor (yet) the model file gave."""
        return [key for key in ("channels", "size", "mean", "std") if getattr(self, key) is None]


class TeacherSpec(Strict):
    """The teacher from any source (docs/models.md); input and classes may come from the model file itself."""

    arch: str = Field(
        description="lenet5 (built-in), torchvision:NAME, timm:NAME or module.path:callable, with weights a state dict; "
        "or a whole-model format (onnx, torchscript, pickle), with weights the model file"
    )
    weights: Path | None = Field(
        None, description="model file relative to the recipe: .safetensors or .pth/.pt state dict, .onnx, TorchScript or pickle"
    )
    pretrained: str | None = Field(
        None, description="published weights instead of a file: torchvision weights name (IMAGENET1K_V1, DEFAULT) or timm tag (default)"
    )
    trust_checkpoint: bool = Field(False, description="allow unpickling Python objects from weights; this runs code from the file")
    input: InputSpec | None = Field(
        None,
        description="channels, size, mean, std: each required unless the model file says it "
        "(ONNX input shape and mean/std metadata, pretrained weights); give only what it lacks",
    )
    num_classes: Annotated[int, Field(ge=2)] | None = Field(None, description="required unless class_names or the model says it")
    class_names: list[str] | None = None
    feature_layer: str | None = Field(
        None,
        description="layer the feature loss matches: module or torchvision feature-extraction node name, "
        "ONNX tensor name; default: the classifier's input",
    )
    output: str | None = Field(
        None,
        description="ONNX teachers with several outputs: the name of the one holding the class scores; default: the first "
        "(batch, classes) output, preferring one that matches num_classes",
    )

    @model_validator(mode="after")
    def _names(self) -> TeacherSpec:
        if self.num_classes is None and self.class_names:
            self.num_classes = len(self.class_names)
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"class_names has {len(self.class_names)} entries but num_classes is {self.num_classes}")
        return self


class PoolEntry(BaseModel):
    """One pool source, named by its key (`builtin: NAME`, `folder: PATH`, ...): the kinds registered in
    edgedistill.inputs.pool.SOURCES, each with its own model there."""

    model_config = ConfigDict(extra="allow")


class SelectSpec(Strict):
    strategy: str = Field("balanced", description="a strategy registered in edgedistill.stages.select.STRATEGIES")
    per_class: Annotated[int, Field(gt=0)] = 1000
    total: Annotated[int, Field(gt=0)] | None = Field(
        None, description="size of a global selection (dfnd, entropy, random); default per_class x classes"
    )
    dedup_threshold: Annotated[float, Field(gt=0, le=1)] | None = Field(
        None, description="samples whose teacher features have cosine similarity above this with a kept one do not fill a quota"
    )
    batch_size: Annotated[int, Field(gt=0)] = 512
    reservoir: Annotated[int, Field(ge=1, le=100)] = Field(
        1, description="balanced strategy: candidates kept per class, as a multiple of per_class, for distill.resample to draw from"
    )


class ComputeSpec(Strict):
    """How stages use the hardware; none of it changes the recipe's meaning, so a run launched with torchrun uses the same file."""

    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when available")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="autocast of scoring and training; auto: bf16 on GPUs that support it, else fp16 on CUDA, fp32 on CPU"
    )
    channels_last: bool | None = Field(
        None,
        description="memory format of conv nets; default: on (on CPU a distillation step ran 1.2-1.7x faster on every "
        "bench, docs/throughput.md); false keeps the contiguous format",
    )
    compile: bool = Field(False, description="torch.compile the student's training step")
    workers: Annotated[int, Field(ge=0)] | None = Field(
        None,
        description="DataLoader processes per rank that decode pool files; default: none for built-in arrays, else the "
        "usable CPUs less one, up to 8",
    )
    threads: Annotated[int, Field(ge=0)] | None = Field(
        None,
        description="CPU threads of scoring and training; default: the CPUs this process may use (affinity, cgroup quota) "
        "less the cores other processes keep busy as the run starts; 0: every usable CPU",
    )


class ClassDropSpec(Strict):
    mode: str = Field("top_k", description="a mode registered in edgedistill.stages.class_drop.CLASS_DROPS: top_k, min_prob, none")
    top_k: Annotated[int, Field(ge=1)] = Field(3, description="top_k mode: keep each soft label's k most likely classes")
    min_prob: Annotated[float, Field(gt=0, lt=1)] = Field(0.01, description="min_prob mode: drop classes below this probability")
    only_below: Annotated[float, Field(gt=0, le=1)] | None = Field(
        None, description="denoise only soft labels whose top probability is under this (noisy ones); default: all"
    )


class CandidateSpec(Strict):
    arch: str = Field(description="as student.arch takes it: built-in, torchvision:NAME, timm:NAME or module.path:callable")
    feature_layer: str | None = Field(None, description="this candidate's layer matched to the teacher's features")


class PlanSpec(Strict):
    """How `edgedistill plan` (and compress's plan stage) chooses among student candidates (docs/plan.md)."""

    cache: Path | None = Field(
        None,
        description="latency cache file, relative to the recipe; default $EDGEDISTILL_LATENCY_CACHE or "
        "~/.cache/edgedistill/latency-cache.json",
    )
    probe_steps: Annotated[int, Field(ge=0)] = Field(
        200,
        description="distillation steps of distill.batch_size each that every probed candidate trains; "
        "0: no probe, the largest fitting candidate wins",
    )
    probe_top: Annotated[int, Field(ge=1)] = Field(3, description="how many of the largest fitting candidates the probe trains")
    calibration: Annotated[int, Field(gt=0)] = Field(64, description="selected pool images that calibrate the INT8 copies timed")


class StudentSpec(Strict):
    arch: str | None = Field(
        None,
        description="lenet5_half (built-in), torchvision:NAME, timm:NAME or module.path:callable; "
        "sized to the teacher's classes and channels; `auto`: the zoo's ladder for the teacher's input, planned",
    )
    feature_layer: str | None = Field(
        None,
        description="layer matched to the teacher's features: module or torchvision feature-extraction node name; "
        "default: the classifier's input",
    )
    candidates: Annotated[list[str | CandidateSpec], Field(min_length=1)] | None = Field(
        None,
        description="students to choose from instead of one arch: the plan stage keeps those whose latency meets every "
        "target's budget and picks the best by a short label-free distillation probe (docs/plan.md)",
    )
    plan: PlanSpec = PlanSpec()

    @model_validator(mode="after")
    def _one_choice(self) -> StudentSpec:
        if (self.arch is None) == (self.candidates is None):
            raise ValueError("give either arch (one student, or auto) or candidates (a list to choose from), not both")
        if self.candidates is not None and self.feature_layer is not None:
            raise ValueError("with candidates, give feature_layer per candidate: {arch: NAME, feature_layer: LAYER}")
        return self

    @property
    def planned(self) -> bool:
        """Whether the plan stage chooses the student (candidates, or arch: auto)."""
        return self.candidates is not None or self.arch == "auto"

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        """A single-arch student dumps as it did before candidates existed, so its runs' fingerprints stay the same."""
        data = handler(self)
        if isinstance(data, dict) and not self.planned:
            data.pop("candidates", None)
            if self.plan == PlanSpec():
                data.pop("plan", None)
        return data


LossEntry = Annotated[float, Field(ge=0)] | dict[str, Any]


class AugmentSpec(Strict):
    max_rotate_deg: Annotated[float, Field(ge=0, le=180)] = 10.0
    max_translate: Annotated[float, Field(ge=0, le=0.5)] = 0.1
    scale: tuple[float, float] = (0.9, 1.1)
    hflip: bool = False
    mixup: Annotated[float, Field(ge=0, le=1)] = Field(0.0, description="probability that a batch is mixed with a shuffled copy of itself")
    cutmix: Annotated[float, Field(ge=0, le=1)] = Field(
        0.5,
        description="probability per image of pasting a box (30-70% of the side) from another image of the batch; "
        "the teacher labels the result",
    )
    mosaic: Annotated[float, Field(ge=0, le=1)] = Field(
        0.3,
        description="probability per image of becoming a two-tile mosaic with another image of the batch, side by side "
        "or stacked; the teacher labels the result",
    )


class ResampleSpec(Strict):
    """Student-in-the-loop sampling (edgedistill/stages/resample.py): the training set drawn anew from the selection's
    reservoir every few epochs, class by class."""

    every: Annotated[int, Field(ge=1)] = Field(2, description="epochs between two draws")
    confident: Annotated[float, Field(ge=0, le=1)] = Field(
        0.5,
        description="share of each class's places kept for the images the teacher is surest of; the rest go to the "
        "images where the student disagrees with the teacher most",
    )
    by: Literal["kl", "top1"] = Field("kl", description="disagreement: KL(teacher || student), or top-1 mismatch")


class RefineSpec(Strict):
    """Training images moved a few signed-gradient steps toward teacher classes, within an L-inf radius of the pool
    image they came from (edgedistill/stages/refine.py)."""

    when: Literal["every_batch", "once"] = Field(
        "every_batch",
        description="every_batch: each augmented batch before the teacher labels it; once: the whole "
        "training set before training, which then trains on refined and original images",
    )
    steps: Annotated[int, Field(ge=1, le=100)] = 1
    step_size: Annotated[float, Field(gt=0, le=1)] = Field(0.2, description="per step, in pixel units of [0, 1]")
    radius: Annotated[float, Field(gt=0, le=1)] = Field(0.2, description="L-inf distance an image may move from where it started")
    target: str = Field(
        "random",
        description="a target registered in edgedistill.stages.refine.REFINE_TARGETS: random: any class; argmax/second: the "
        "teacher's first/second choice; rare: classes the training set holds fewest of; disagreement: away from the "
        "student, keeping the teacher's class",
    )
    bn_prior: Annotated[float, Field(ge=0)] = Field(
        0.0, description="weight of matching the teacher's BatchNorm statistics (needs BN layers)"
    )
    tv_prior: Annotated[float, Field(ge=0)] = Field(0.0, description="weight of a total-variation image prior")


class DistillSpec(Strict):
    epochs: Annotated[int, Field(gt=0)] = Field(
        80, description="passes over the selected images; 80 beat 40 by 1.0 point on B1's development set and 6.8 on B2's"
    )
    batch_size: Annotated[int, Field(gt=1)] = Field(
        128,
        description="images per step; 128 beat 256 on the development sets (B1 +0.7, B2 +2.3 points at 80 epochs) "
        "for 1.2x the time: on a CPU a step costs nearly in proportion to its batch, so half the batch buys twice the steps",
    )
    lr: Annotated[float, Field(gt=0)] = Field(
        0.008,
        description="peak learning rate of AdamW's one-cycle schedule; at 80 epochs of batch 128, 0.008 beat 0.003 on the "
        "development sets (B1 +2.1, B2 +0.4 points)",
    )
    weight_decay: Annotated[float, Field(ge=0)] = Field(
        0.05,
        description="AdamW's decoupled weight decay; at the defaults above, 0.05 beat 1e-4 on the development sets where "
        "the student has BatchNorm (B1-bn +4.2 points) and moved B1 and B2 within their seed noise (-0.3, +0.7)",
    )
    loss: dict[str, LossEntry] = Field(
        {"kd": 1.0, "feature": 1.0, "relation": 1.0},
        description="loss name (registered in edgedistill.stages.losses.LOSSES) -> weight, or {weight: W, ...its parameters}; "
        "a weight of 0 switches a loss off",
    )
    augment: AugmentSpec | None = AugmentSpec()
    balance: Annotated[float, Field(ge=0, le=1)] = Field(
        1.0,
        description="how far each epoch evens out the teacher's classes: images are drawn with probability "
        "proportional to (images of their class)^-balance; 0: each image once, 1: every class equally often",
    )
    refine: RefineSpec | None = None
    resample: ResampleSpec | None = None
    keep: Literal["best", "last"] = Field(
        "last",
        description="which epoch's student to keep: the last (the one-cycle schedule ends at a low learning rate), or "
        "the best by teacher agreement on the selection's held-out images; neither reads labels",
    )


class EvalSpec(Strict):
    labeled: str | None = Field(None, description="builtin:NAME, or a folder with one subfolder per class")
    limit: Annotated[int, Field(gt=0)] | None = None


LATENCY_BUDGET_DESCRIPTION = (
    "milliseconds at batch 1, judged per round: the median of the rounds' {figure} and an interval around it; pass "
    "when the whole interval is within the limit, fail when it is all beyond, else inconclusive (exit 5)"
)


class Budget(Strict):
    """Limits a target must meet; docs/ci.md says how each is judged and what the exit codes are."""

    p50_ms: Annotated[float, Field(gt=0)] | None = Field(None, description=LATENCY_BUDGET_DESCRIPTION.format(figure="median latency"))
    p90_ms: Annotated[float, Field(gt=0)] | None = Field(None, description=LATENCY_BUDGET_DESCRIPTION.format(figure="90th percentile"))
    p99_ms: Annotated[float, Field(gt=0)] | None = Field(None, description=LATENCY_BUDGET_DESCRIPTION.format(figure="99th percentile"))
    mean_ms: Annotated[float, Field(gt=0)] | None = Field(None, description=LATENCY_BUDGET_DESCRIPTION.format(figure="mean latency"))
    min_accuracy: Annotated[float, Field(ge=0, le=1)] | None = None
    max_accuracy_drop: Annotated[float, Field(ge=0, le=1)] | None = None
    max_unreadable: Annotated[int, Field(ge=0)] | None = Field(
        None, description="files of the labeled evaluation folder that could not be read; 0 requires every file to be read"
    )
    max_int8_drop: Annotated[float, Field(ge=0, le=1)] | None = Field(
        None,
        description="fp32 minus INT8 student accuracy (teacher agreement without labels): on this target when "
        "its precision is int8, else student.int8.onnx on ONNX Runtime CPU",
    )
    max_output_diff: Annotated[float, Field(ge=0)] | None = Field(
        None, description="largest |logit difference| between this target and the PyTorch fp32 student on the same inputs"
    )
    min_agreement_with_fp32: Annotated[float, Field(ge=0, le=1)] | None = Field(
        None, description="share of inputs where this target's top-1 class is the PyTorch fp32 student's"
    )
    max_teacher_class_share: Annotated[float, Field(ge=0, le=1)] | None = Field(
        None,
        description="largest share of the scored pool that the teacher puts in one class (top-1, no labels needed); "
        "over it the teacher has collapsed onto one class and the selection teaches little (selection.json)",
    )


class Int8Spec(Strict):
    enabled: bool = Field(True, description="write student.int8.onnx, calibrated on the selected pool samples")
    method: Literal["minmax", "entropy", "percentile"] = "minmax"
    samples: Annotated[int, Field(gt=0)] = Field(512, description="calibration images drawn from the selection")


class ExportSpec(Strict):
    int8: Int8Spec = Int8Spec()
    teacher: bool = Field(
        True, description="export the teacher to teacher.onnx too, so each target times it for the deployment table's speed-ups"
    )
    fp16: bool = Field(
        True, description="write student.fp16.onnx when a target's runtime runs an fp16 file (openvino) at precision fp16 or in also_time"
    )


class TargetSpec(BaseModel):
    """Where the model is validated. These are the keys every target has; the keys only its runtime reads (threads,
    providers, remote_python, trtexec, a plugin runtime's own) are kept here as extra keys and are that runtime's:
    its row's `options` model (edgedistill.backends.runtime) validates them when the recipe is checked, and its
    runner reads them typed through runtime_options(target)."""

    model_config = ConfigDict(extra="allow")
    # Every target's dump held these keys before the runtimes owned them: a target that leaves one out still dumps it
    # at this value, so the stage fingerprints of runs made before stay the same; a recorded run.json has them on
    # every target, so a runtime that does not read one ignores it at this value (and a row that reads it keeps it).
    DUMPED_OPTIONS: ClassVar[dict[str, Any]] = {
        "providers": None,
        "threads": 1,
        "remote_python": "python3",
        "trtexec": "/usr/src/tensorrt/bin/trtexec",
    }

    name: str
    runtime: str = Field("onnxruntime", description="a runtime of edgedistill.backends.RUNTIMES")
    warmup: Annotated[int, Field(ge=0)] = Field(10, description="untimed calls before each round")
    iterations: Annotated[int, Field(gt=0)] = Field(200, description="timed calls at batch 1 in all rounds together")
    rounds: Annotated[int, Field(ge=1, le=100)] = Field(
        5,
        description="rounds the timed calls are split into, each after its warmup; latency budgets are judged on the "
        "median of the rounds with an interval from them (1: a single measurement, never inconclusive)",
    )
    budget: Budget = Budget()
    ssh: str | None = Field(None, description="validate on this device over SSH: host, user@host or a Host alias of your ssh config")
    ssh_config: Path | None = Field(None, description="ssh config file (default: ~/.ssh/config), relative to the recipe")
    known_hosts: Path | None = Field(None, description="known_hosts file (default: ssh's own), relative to the recipe")
    host_key_policy: Literal["strict", "accept-new"] = "strict"
    precision: Literal["fp32", "fp16", "int8"] = Field(
        "fp32", description="what the target runs: fp32 student.onnx, its INT8 copy, or an fp16 engine (the runtimes that build one)"
    )
    timeout_s: Annotated[float, Field(gt=0)] = Field(600, description="limit for each step on the device: upload, engine build, one run")
    also_time: list[Literal["teacher", "fp32", "int8", "fp16"]] = Field(
        ["teacher", "fp32", "int8", "fp16"],
        description="other models this target also measures for the deployment table, ungated: the teacher, the student "
        "at other precisions; those the run has and the runtime runs. [] measures only the gated model",
    )
    batch_sizes: list[Annotated[int, Field(gt=0)]] = Field(
        [1, 8, 32], description="batch-size sweep of the gated model; throughput is reported at the largest"
    )
    on_inconclusive: Annotated[str, Field(pattern=r"^(fail|pass|retry ([0-9]|10))$")] = Field(
        "retry 1",
        description="what an inconclusive latency verdict becomes: `retry N` re-times the target up to N times, each "
        "with twice the rounds and calls, and exits 5 if still inconclusive; `fail` or `pass` decide it at once",
    )

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        return {**data, **{k: v for k, v in self.DUMPED_OPTIONS.items() if k not in data}} if isinstance(data, dict) else data

    def resolved(self, recipe: Recipe) -> TargetSpec:
        """ssh_config and known_hosts are relative to the recipe file, like every other path in it."""
        paths = {key: recipe.resolve(value) for key in ("ssh_config", "known_hosts") if (value := getattr(self, key)) is not None}
        return self.model_copy(update=paths)


class Recipe(Strict):
    version: Annotated[int, Field(ge=1, le=2)] = Field(
        2,
        description="recipe format the file is written in; 2 is this release's, and what a recipe without version is read "
        "as. Earlier forms (1: distill.loss with temperature and relation_terms beside the weights) are upgraded when read, "
        "with one warning that prints the current form to paste; a newer one asks for a newer edgedistill",
    )
    name: str
    seed: int = 0
    teacher: TeacherSpec
    pool: Annotated[list[SerializeAsAny[PoolEntry]], Field(min_length=1)]
    select: SelectSpec = SelectSpec()
    class_drop: ClassDropSpec = ClassDropSpec()
    student: StudentSpec
    distill: DistillSpec = DistillSpec()
    eval: EvalSpec = EvalSpec()
    export: ExportSpec = ExportSpec()
    targets: list[TargetSpec] = []
    compute: ComputeSpec = ComputeSpec()

    base_dir: Path = Field(Path("."), exclude=True, description="directory of the recipe file; relative paths resolve against it")
    # set by edgedistill.recipe's checked loader, so the pipeline does not check the same recipe again; model_copy keeps
    # it (an update there is not validated either), validating a dump starts unchecked
    _checked: bool = PrivateAttr(False)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        """The default run directory is runs/<name>: a path here would put it (and what --fresh forgets) elsewhere."""
        if not name.strip() or name in (".", "..") or "/" in name or "\\" in name or Path(name).is_absolute() or "\0" in name:
            raise ValueError(
                f"the name must be a plain name (no path separators, not . or ..), got {name!r}; "
                "use --run-dir DIR to choose where the run goes"
            )
        return name

    @field_validator("targets")
    @classmethod
    def _unique_targets(cls, targets: list[TargetSpec]) -> list[TargetSpec]:
        names = [t.name for t in targets]
        if len(names) != len(set(names)):
            raise ValueError("target names must be unique")
        return targets

    @model_validator(mode="after")
    def _reservoir_for_resampling(self) -> Recipe:
        if self.distill.resample is not None and self.select.reservoir == 1:
            raise ValueError("distill.resample draws from a reservoir: set select.reservoir above 1 (e.g. 4)")
        return self

    def resolve(self, path: Path) -> Path:
        path = Path(path).expanduser()
        return path if path.is_absolute() else (self.base_dir / path).resolve()

    def section(self, *names: str) -> dict[str, Any]:
        """JSON-ready dump of some sections, the basis of stage fingerprints."""
        return self.model_dump(mode="json", include=set(names))
