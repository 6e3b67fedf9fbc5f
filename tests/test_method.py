"""The method's parts, each on its contract: refinement, student-in-the-loop sampling, mixing, adaptive class-drop,
BatchNorm statistics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import edgedistill
from edgedistill.config.schema import AugmentSpec, InputSpec, RefineSpec, ResampleSpec
from edgedistill.inputs.builtin import load_builtin
from edgedistill.inputs.images import convert_array, normalize, standardize
from edgedistill.models.checkpoint import load_weights
from edgedistill.models.factory import create_model
from edgedistill.recipe import load_recipe
from edgedistill.scale.compute import Compute
from edgedistill.stages.augment import augment_batch, cutmix, mosaic
from edgedistill.stages.class_drop import drop_classes
from edgedistill.stages.distill import recalibrate_batchnorm
from edgedistill.stages.refine import refine
from edgedistill.stages.resample import disagreement, training_subset
from tests.test_pipeline import TEACHER, tiny_recipe

MNIST = InputSpec(channels=1, size=28, mean=[0.1307], std=[0.3081])


@pytest.fixture(scope="module")
def teacher_and_images():
    teacher = load_weights(create_model("lenet5", 10, 1), TEACHER).eval().requires_grad_(False)
    images = convert_array(load_builtin("fashion-mnist", count=256, seed=3).images, MNIST)
    return teacher, torch.from_numpy(images).float() / 255


def confidence(teacher: nn.Module, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(teacher(standardize(x, MNIST)), 1).gather(1, classes.view(-1, 1)).squeeze(1)


@pytest.mark.parametrize("target", ["argmax", "second", "random"])
def test_refinement_stays_within_its_radius_and_raises_teacher_confidence(teacher_and_images, target):
    teacher, x = teacher_and_images
    spec = RefineSpec(steps=5, step_size=0.05, radius=0.1, target=target)
    moved = refine(teacher, x, MNIST, spec, torch.Generator().manual_seed(0))
    again = refine(teacher, x, MNIST, spec, torch.Generator().manual_seed(0))
    assert torch.equal(moved, again)  # deterministic for a seed
    assert (moved - x).abs().max() <= 0.1 + 1e-6 and moved.min() >= 0 and moved.max() <= 1
    with torch.no_grad():
        logits = teacher(standardize(x, MNIST))
    if target == "random":
        targets = torch.randint(0, 10, (len(x),), generator=torch.Generator().manual_seed(0))
    else:
        targets = logits.argmax(1) if target == "argmax" else logits.topk(2, 1).indices[:, 1]
    before, after = confidence(teacher, x, targets), confidence(teacher, moved, targets)
    assert after.mean() > before.mean() + 0.05 and (after >= before - 1e-4).float().mean() > 0.9


def test_refinement_priors_and_disagreement_search(teacher_and_images):
    _, x = teacher_and_images
    torch.manual_seed(0)
    bn_teacher = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)
    )
    bn_teacher.train()
    with torch.no_grad():
        for _ in range(20):  # running statistics of "its training data"
            bn_teacher(torch.randn(64, 1, 28, 28) * 0.5)
    bn_teacher.eval().requires_grad_(False)
    plain = refine(bn_teacher, x, MNIST, RefineSpec(steps=3, step_size=0.05, radius=0.2, target="argmax"), torch.Generator().manual_seed(1))
    priors = RefineSpec(steps=3, step_size=0.05, radius=0.2, target="argmax", bn_prior=1.0, tv_prior=1.0)
    with_priors = refine(bn_teacher, x, MNIST, priors, torch.Generator().manual_seed(1))
    assert not torch.equal(plain, with_priors) and (with_priors - x).abs().max() <= 0.2 + 1e-6
    assert not bn_teacher.training  # restored
    student = create_model("lenet5_half", 10, 1).train()
    searched = refine(
        bn_teacher,
        x,
        MNIST,
        RefineSpec(steps=2, step_size=0.05, radius=0.1, target="disagreement"),
        torch.Generator().manual_seed(2),
        student=student,
    )
    assert (searched - x).abs().max() <= 0.1 + 1e-6 and student.training


def test_resampling_keeps_classes_balanced_and_is_deterministic():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(5, 0.3), size=400)
    counts = np.bincount(probs.argmax(1), minlength=5)
    first = training_subset(probs, 30)
    assert np.array_equal(first, np.sort(first)) and len(set(first)) == len(first)
    picked = np.bincount(probs[first].argmax(1), minlength=5)
    assert picked.tolist() == np.minimum(counts, 30).tolist()
    confident = probs.max(1)
    for c in range(5):  # the classic selection: each class's most confident images
        members = np.flatnonzero(probs.argmax(1) == c)
        assert set(first[probs[first].argmax(1) == c]) == set(members[np.argsort(-confident[members], kind="stable")][:30])
    scores = disagreement(probs, rng.normal(size=(400, 5)), "kl")
    spec = ResampleSpec(confident=0.5)
    drawn = training_subset(probs, 30, spec, scores)
    assert np.array_equal(drawn, training_subset(probs, 30, spec, scores))
    assert np.bincount(probs[drawn].argmax(1), minlength=5).tolist() == picked.tolist()
    for c in range(5):
        members = np.flatnonzero(probs.argmax(1) == c)
        sure = members[np.lexsort((members, -confident[members]))][:15]
        rest = np.setdiff1d(members, sure)
        expected = set(sure) | set(rest[np.lexsort((rest, -scores[rest]))][: min(30, len(members)) - len(sure)])
        assert set(drawn[probs[drawn].argmax(1) == c]) == expected
    assert disagreement(probs, np.log(probs), "top1").sum() == 0 and disagreement(probs, np.log(probs), "kl").max() < 1e-9


def test_mixing_pastes_from_other_images_and_off_changes_nothing():
    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 1, 16, 16).clone()
    mixed = cutmix(x, 1.0, torch.Generator().manual_seed(0))
    for i in range(4):
        values = set(mixed[i].unique().tolist())
        assert i in values and len(values) <= 2  # its own image and a box of one other (itself, if the shuffle left it)
    assert sum(len(set(mixed[i].unique().tolist())) == 2 for i in range(4)) >= 2
    tiles = mosaic(x, 1.0, torch.Generator().manual_seed(0))
    assert all(len(set(tiles[i].unique().tolist())) <= 2 for i in range(4))
    assert torch.equal(cutmix(x, 0.0, torch.Generator().manual_seed(0)), x)
    images = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    plain = augment_batch(images, AugmentSpec(cutmix=0.0, mosaic=0.0), torch.Generator().manual_seed(1))
    assert torch.equal(plain, augment_batch(images, AugmentSpec(cutmix=0.0, mosaic=0.0), torch.Generator().manual_seed(1)))
    assert not torch.equal(plain, augment_batch(images, AugmentSpec(), torch.Generator().manual_seed(1)))  # mixing is on by default


def test_class_drop_only_below_leaves_confident_labels_alone():
    probs = torch.tensor([[0.9, 0.05, 0.03, 0.02], [0.4, 0.3, 0.2, 0.1]])
    dropped = drop_classes(probs, top_k=2, only_below=0.5)
    torch.testing.assert_close(dropped[0], probs[0])  # confident: untouched, second choices kept
    torch.testing.assert_close(dropped[1], torch.tensor([4 / 7, 3 / 7, 0.0, 0.0]))
    torch.testing.assert_close(drop_classes(probs, top_k=2), torch.stack([torch.tensor([0.9, 0.05, 0, 0]) / 0.95, dropped[1]]))


def test_reservoir_resampling_and_refinement_through_the_pipeline(tmp_path: Path):
    recipe = load_recipe(tiny_recipe(tmp_path, epochs=3))
    recipe = recipe.model_copy(
        update={
            "select": recipe.select.model_copy(update={"per_class": 30, "reservoir": 3}),
            "distill": recipe.distill.model_copy(
                update={
                    "resample": ResampleSpec(every=1),
                    "refine": RefineSpec(steps=1, step_size=0.1, radius=0.1),
                    "augment": AugmentSpec(cutmix=0.5, mosaic=0.2),
                }
            ),
            "targets": [],
        }
    )
    edgedistill.compress(recipe, run_dir=tmp_path / "run", stages=("select", "distill"))
    selection = json.loads((tmp_path / "run" / "selection.json").read_text())
    assert max(selection["selected_per_class"]) > 30 and selection["reservoir"] == 3
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(history) == 3 and all(np.isfinite(h["loss"]) for h in history)
    assert normalize(torch.zeros(1, 1, 28, 28, dtype=torch.uint8), MNIST).shape == (1, 1, 28, 28)


def test_epoch_order_matches_torch_and_balancing_evens_out_classes():
    from edgedistill.stages.distill import EpochOrder, balancing_weights

    for world in (1, 2, 3):
        for rank in range(world):
            ours, torchs = EpochOrder(10, rank, world, seed=7), torch.utils.data.DistributedSampler(range(10), world, rank, seed=7)
            ours.epoch = 3
            torchs.set_epoch(3)
            assert list(ours) == list(torchs)
    classes = np.array([0] * 90 + [1] * 10)
    order = EpochOrder(100, 0, 1, seed=0)
    order.weights = balancing_weights(classes, 1.0)
    drawn = np.bincount(classes[list(order)], minlength=2)
    assert 35 <= drawn[1] <= 65  # about half from the class that has a tenth of the images
    assert balancing_weights(classes, 0.0) is None


def test_batchnorm_statistics_are_recalibrated_to_the_trained_weights():
    """A BatchNorm student whose running averages lag its weights (MobileNetV3's momentum is 0.01) answers nearly
    one class in eval mode; recalibrated on training images, eval mode computes what training computed."""
    import torchvision

    torch.manual_seed(0)
    student = torchvision.models.mobilenet_v3_small(num_classes=10, dropout=0.0)
    spec = InputSpec(channels=3, size=32, mean=[0.5] * 3, std=[0.25] * 3)
    images = convert_array(load_builtin("fashion-mnist", count=256, seed=3).images, spec)
    x = normalize(torch.from_numpy(images), spec)
    with torch.no_grad():
        trained = student.train()(x)  # batch statistics, as in a training step
        for m in student.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.fill_(1.0), m.running_var.fill_(10.0)  # averages far behind the weights
        lagging = student.eval()(x)
        recalibrate_batchnorm(student, images, np.arange(len(images)), spec, Compute(torch.device("cpu"), None, False, False), 256, 0)
        recalibrated = student.eval()(x)
    assert student.training is False
    assert (lagging.argmax(1) == trained.argmax(1)).float().mean() < 0.5
    assert (recalibrated.argmax(1) == trained.argmax(1)).float().mean() > 0.95
    assert torch.corrcoef(torch.stack([recalibrated.flatten(), trained.flatten()]))[0, 1] > 0.99  # unbiased variance: not exact
