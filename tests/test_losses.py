"""Class-drop math and loss invariants, with golden values on fixed inputs."""

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from edgedistill.config.schema import DistillSpec
from edgedistill.stages.class_drop import drop_classes
from edgedistill.stages.losses import LOSSES, FeatureLoss, KDLoss, RelationLoss, _angles


def test_drop_classes_keeps_top_k_and_renormalizes():
    probs = torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05], [0.05, 0.05, 0.1, 0.3, 0.5]])
    dropped = drop_classes(probs, 2)
    torch.testing.assert_close(dropped, torch.tensor([[5 / 7, 2 / 7, 0, 0, 0], [0, 0, 0, 0.375, 0.625]]))
    assert drop_classes(probs, None) is probs
    assert drop_classes(probs, 5) is probs


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 9), st.integers(0, 10_000))
def test_drop_classes_properties(k, seed):
    probs = torch.softmax(torch.randn(8, 10, generator=torch.Generator().manual_seed(seed)) * 3, dim=1)
    dropped = drop_classes(probs, k)
    torch.testing.assert_close(dropped.sum(1), torch.ones(8))
    assert ((dropped > 0).sum(1) <= k).all()
    assert (dropped.argmax(1) == probs.argmax(1)).all()


def test_kd_zero_when_student_equals_teacher_and_golden_value():
    logits = torch.tensor([[2.0, 1.0, 0.1], [0.3, 0.2, 3.0]])
    kd = KDLoss(temperature=4.0)
    assert abs(kd(logits, torch.softmax(logits / 4.0, dim=1)).item()) < 1e-5
    student = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    torch.testing.assert_close(kd(student, torch.softmax(logits / 4.0, dim=1)), torch.tensor(0.9040268))


def test_kd_handles_dropped_zeros():
    teacher = torch.tensor([[0.7, 0.3, 0.0]])
    value = KDLoss(2.0)(torch.tensor([[1.0, 0.0, -1.0]]), teacher)
    assert torch.isfinite(value)


def test_feature_loss_golden_and_gradient_reaches_adapter():
    torch.manual_seed(0)
    loss = FeatureLoss(3, 2)
    with torch.no_grad():
        loss.adapter.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
        loss.adapter.bias.zero_()
    s = torch.tensor([[1.0, 2.0, 3.0], [0.0, 1.0, 0.0]])
    t = torch.tensor([[1.0, 2.0], [0.0, 2.0]])
    value = loss(s, t)
    torch.testing.assert_close(value, torch.tensor(0.25 / 2.25))
    value.backward()
    assert loss.adapter.weight.grad.abs().sum() > 0


def test_relation_loss_zero_for_same_structure_and_order_invariant():
    g = torch.Generator().manual_seed(1)
    t = torch.randn(16, 8, generator=g)
    rel = RelationLoss(distance=1.0, angle=2.0, similarity=1.0)
    assert rel(t * 3.0, t).item() < 1e-2  # scale-free distances and angles
    s = torch.randn(16, 5, generator=g)
    perm = torch.randperm(16, generator=g)
    torch.testing.assert_close(rel(s, t), rel(s[perm], t[perm]))


def test_angles_from_the_gram_matrix_equal_explicit_differences():
    """_angles computes RKD's cosines from the Gram matrix; the explicit O(B^3 D) differences are the reference for
    values and gradients. A zero difference (j == i or k == i, a duplicate) gives 0 in both, but the explicit form's
    gradient there is 1/eps times the upstream gradient, which cancels only up to rounding (or not at all for a
    duplicate); the Gram form's is 0. So gradients are compared on the other entries."""
    x = torch.randn(24, 64, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 5 + 2

    def reference(v: torch.Tensor) -> torch.Tensor:
        e = F.normalize(v.unsqueeze(0) - v.unsqueeze(1), dim=2)
        return torch.bmm(e, e.transpose(1, 2)).flatten()

    i, j, k = torch.meshgrid(*[torch.arange(24)] * 3, indexing="ij")
    w = torch.randn(24**3, dtype=torch.float64) * ((j != i) & (k != i)).flatten()
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    torch.testing.assert_close(_angles(a), reference(b))
    (_angles(a) * w).sum().backward()
    (reference(b) * w).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)
    torch.testing.assert_close(_angles(x.float()), reference(x.float()), atol=2e-5, rtol=1e-4)

    x[7] = x[3]  # a duplicate image
    a = x.clone().requires_grad_()
    torch.testing.assert_close(_angles(a), reference(x))
    (_angles(a) * w).sum().backward()
    assert a.grad.abs().max() < 1e3


def test_relation_loss_golden_value():
    s = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    t = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(RelationLoss(1.0, 0.0, 0.0)(s, t), torch.tensor(0.018484), atol=1e-5, rtol=0)


def test_drop_classes_min_prob_keeps_argmax():
    probs = torch.tensor([[0.6, 0.3, 0.06, 0.04], [0.3, 0.25, 0.25, 0.2]])
    dropped = drop_classes(probs, min_prob=0.05)
    torch.testing.assert_close(dropped[0], torch.tensor([0.6, 0.3, 0.06, 0.0]) / 0.96)
    torch.testing.assert_close(drop_classes(probs, min_prob=0.9)[1], torch.tensor([1.0, 0, 0, 0]))


def test_kd_default_temperature_is_the_recipes():
    """KDLoss built directly and KDLoss built from a recipe's `kd` entry (no temperature given) agree: one default."""
    kd = LOSSES.get("kd", "distill.loss")
    assert kd is KDLoss
    default_entry = DistillSpec().loss["kd"]  # the recipe default, a bare weight
    for entry in (default_entry, {"weight": 0.5}):
        built = kd.build(kd.params(entry, "distill.loss.kd"), 4, 4)
        assert built.temperature == KDLoss().temperature == KDLoss.Params().temperature == 1.0
