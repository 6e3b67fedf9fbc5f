"""The cookbook (recipes/): every recipe loads and passes the checks compress runs before any stage, with the
files it points to built small in tmp_path; its teacher is loaded where that costs no download."""

from __future__ import annotations

import csv
import io
import re
import shutil
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from edgedistill.extensions import check_recipe
from edgedistill.pipeline import load_teacher
from edgedistill.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.name for p in (ROOT / "recipes").glob("*.yaml"))


def write_images(folder: Path, count: int, channels: int = 3, side: int = 48) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(folder)))
    paths = []
    for i in range(count):
        shape = (side, side + 8, 3) if channels == 3 else (side, side + 8)
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def torchvision_folder(folder: Path) -> None:
    """A fine-tuned 4-class ResNet-18 state dict, an unlabeled folder and a labeled one per class name."""
    torch.manual_seed(0)
    state = torchvision.models.resnet18(num_classes=4).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "parts_resnet18.safetensors"))
    write_images(folder / "unlabeled" / "day1", 3)
    for name in ("bolt", "nut", "washer", "screw"):
        write_images(folder / "val" / name, 1)


class VendorNet(nn.Module):
    """A vendor model as they ship it: fixed batch 1, 64x64 RGB, ending in Softmax, no metadata."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.body(x)).softmax(1)


def vendor_onnx(folder: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            VendorNet().eval(), (torch.zeros(1, 3, 64, 64),), str(folder / "vendor_classifier.onnx"), opset_version=17, dynamo=False
        )
    write_images(folder / "line-camera", 2)
    archive = write_images(folder / "old", 2)
    with (folder / "archive.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path"])
        writer.writerows([[p.relative_to(folder)] for p in archive])


def webdataset_shards(folder: Path) -> None:
    """16 real WebDataset shards of two samples each (key.jpg + key.cls)."""
    (folder / "shards").mkdir()
    for shard in range(16):
        with tarfile.open(folder / "shards" / f"crawl-{shard:06d}.tar", "w") as tar:
            for sample in range(2):
                image = io.BytesIO()
                Image.fromarray(np.full((40, 40, 3), shard * 10 + sample, np.uint8)).save(image, format="JPEG")
                for suffix, data in ((".jpg", image.getvalue()), (".cls", b"0")):
                    info = tarfile.TarInfo(f"s{shard}_{sample}{suffix}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


BUILD = {"torchvision-folder.yaml": torchvision_folder, "vendor-onnx.yaml": vendor_onnx, "webdataset-multigpu.yaml": webdataset_shards}
LOAD_TEACHER = {"demo.yaml", "jetson-ssh-trtexec.yaml", "torchvision-folder.yaml", "vendor-onnx.yaml"}  # no download needed


def test_the_cookbook_has_the_recipes_the_docs_promise():
    promised = {"demo.yaml", "torchvision-folder.yaml", "vendor-onnx.yaml", "jetson-ssh-trtexec.yaml", "webdataset-multigpu.yaml"}
    assert promised <= set(RECIPES)
    readme = (ROOT / "README.md").read_text()
    for name in RECIPES:
        assert f"recipes/{name}" in readme, f"README's cookbook does not list recipes/{name}"
        assert (ROOT / "recipes" / name).read_text().startswith("#"), f"recipes/{name} starts without a comment saying what it is for"


def test_every_recipe_the_docs_name_exists():
    """docs/ci.md once told users to run recipes/mnist.yaml, which never existed."""
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for name in re.findall(r"recipes/([\w.-]+\.ya?ml)", doc.read_text()):
            assert name in RECIPES, f"{doc.relative_to(ROOT)} names recipes/{name}, which does not exist"


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_loads_and_passes_the_checks(name, tmp_path):
    path = ROOT / "recipes" / name
    if name in BUILD:  # its files live next to it: build them small, beside a copy
        path = Path(shutil.copy(path, tmp_path / name))
        BUILD[name](tmp_path)
    recipe = load_recipe(path)
    check_recipe(recipe, str(path))  # what compress checks before any stage runs
    t = recipe.teacher
    assert t.input is not None and not t.input.missing() and t.num_classes >= 2
    if name == "vendor-onnx.yaml":  # the file said channels, size and classes; the recipe only mean and std
        assert (t.input.channels, t.input.size, t.num_classes) == (3, 64, 3)
    if name == "webdataset-multigpu.yaml":  # from torchvision's metadata, without downloading the weights
        assert (t.input.size, t.num_classes, t.class_names[0]) == (224, 1000, "tench")
    if name in LOAD_TEACHER:
        torch.set_num_threads(1)
        assert load_teacher(recipe) is not None  # the weights fit the architecture and run on the recipe's input
