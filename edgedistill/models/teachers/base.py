"""What every teacher format provides, and the registry of the formats a recipe's `teacher.arch` can name."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from ...errors import BadInput
from ...registry import Registry

if TYPE_CHECKING:
    from ...config.schema import TeacherSpec


@dataclass
class SourceFacts:
    """What the model itself says; None where it is silent."""

    origin: str
    channels: int | None = None
    size: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    num_classes: int | None = None
    class_names: list[str] | None = None
    layout: str | None = None  # NCHW or NHWC, where the model says; edgedistill itself always feeds NCHW
    defaults: dict = field(default_factory=dict)  # input keys to use when neither the recipe nor the model says them
    notes: list[str] = field(default_factory=list)  # how the model is read, for the run log
    output_hint: str = ""  # how to pick another output, appended to a class-count mismatch


class TeacherFormat:
    """One kind of teacher source. Whole-model formats take the model file as `weights`; the architecture format
    (architecture.py) builds the network from code and loads a state dict into it."""

    whole_model = True
    named_outputs = False  # whether teacher.output can pick one of several outputs
    description = ""
    runtime = "pytorch"  # what runs the teacher when it scores the pool and the evaluation set (the report says it)

    def files(self, weights: Path) -> tuple[Path, ...]:
        """The files the teacher is read from (fingerprinted by the stages that read it: a replaced file redoes them)."""
        return (weights,)

    def onnx_file(self, weights: Path | None) -> Path | None:
        """The teacher as an ONNX file already, timed as it is for the deployment table; None: the export stage
        writes teacher.onnx."""
        return None

    def check(self, spec: TeacherSpec, weights: Path | None) -> None:
        """What is wrong with the recipe's teacher section for this format, found without loading the model."""
        if weights is None:
            raise BadInput(f"teacher.weights: arch {spec.arch} needs weights: the model file")
        if spec.pretrained is not None:
            raise BadInput("teacher.pretrained applies to torchvision:NAME and timm:NAME teachers")
        check_output(self, spec)

    def facts(self, spec: TeacherSpec, weights: Path | None) -> SourceFacts:
        return SourceFacts(self.description)

    def load(self, spec: TeacherSpec, weights: Path | None, search_path: Path | None) -> nn.Module:
        raise NotImplementedError


def check_output(fmt: TeacherFormat, spec: TeacherSpec) -> None:
    """teacher.output names a graph output, which only formats with named outputs have."""
    if spec.output is not None and not fmt.named_outputs:
        raise BadInput(f"teacher.output applies to ONNX teachers (outputs have names there); arch {spec.arch} has one output")


FORMATS: Registry[type[TeacherFormat]] = Registry("teacher.arch format")
