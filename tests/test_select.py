"""Selection is deterministic for a seed, class-balanced, and its streaming top-k equals a full sort."""

import numpy as np
import pytest
import torch

from edgedistill.config.schema import InputSpec, SelectSpec
from edgedistill.inputs.pool import ArrayPart, Pool
from edgedistill.models.factory import create_model
from edgedistill.stages.select import StreamingTopK, select_pool

SPEC = InputSpec(channels=1, size=28, mean=[0.5], std=[0.5])


def pool_and_teacher(n=600):
    images = np.random.default_rng(3).integers(0, 256, (n, 1, 28, 28), dtype=np.uint8)
    torch.manual_seed(0)
    return Pool(SPEC, [ArrayPart("noise", images)]), create_model("lenet5", 10, 1).eval()


def test_streaming_topk_matches_full_sort():
    rng = np.random.default_rng(0)
    group, score, index = rng.integers(0, 4, 1000), rng.random(1000).round(2), np.arange(1000)
    keeper = StreamingTopK(4, 7)
    for s in range(0, 1000, 64):
        keeper.add(group[s : s + 64], score[s : s + 64], index[s : s + 64])
    for g, kept in enumerate(keeper.groups()):
        mask = group == g
        order = np.lexsort((index[mask], -score[mask]))[:7]
        assert kept["index"].tolist() == index[mask][order].tolist()


def test_balanced_selection_is_deterministic_and_balanced():
    pool, teacher = pool_and_teacher()
    a = select_pool(teacher, pool, SelectSpec(strategy="balanced", per_class=5, batch_size=64), 10, seed=0)
    b = select_pool(teacher, pool, SelectSpec(strategy="balanced", per_class=5, batch_size=100), 10, seed=0)
    assert a.pool_index.tolist() == b.pool_index.tolist()
    counts = np.bincount(a.probs.argmax(1), minlength=10)
    assert counts.max() <= 5
    covered = [c for c in range(10) if a.stats["pool_predicted_per_class"][c] >= 5]
    assert all(counts[c] == 5 for c in covered)
    assert a.stats["under_covered_classes"] == [c for c in range(10) if c not in covered]
    np.testing.assert_array_equal(a.images, pool.parts[0].array[a.pool_index])


def test_balanced_keeps_most_confident_per_class():
    pool, teacher = pool_and_teacher(300)
    sel = select_pool(teacher, pool, SelectSpec(strategy="balanced", per_class=3, batch_size=64), 10, seed=0)
    with torch.no_grad():
        from edgedistill.inputs.images import normalize

        probs = torch.softmax(teacher(normalize(torch.from_numpy(pool.parts[0].array), SPEC)), 1).numpy()
    top = probs.argmax(1)
    for c in np.unique(top):
        expected = np.argsort(-probs[top == c, c], kind="stable")[:3]
        assert set(np.flatnonzero(top == c)[expected]) == set(sel.pool_index[sel.probs.argmax(1) == c])


def test_random_selection_depends_on_seed_only():
    pool, teacher = pool_and_teacher()
    spec = SelectSpec(strategy="random", per_class=4, batch_size=64)
    a = select_pool(teacher, pool, spec, 10, seed=1)
    b = select_pool(teacher, pool, SelectSpec(strategy="random", per_class=4, batch_size=128), 10, seed=1)
    c = select_pool(teacher, pool, spec, 10, seed=2)
    assert len(a.pool_index) == 40 and a.pool_index.tolist() == b.pool_index.tolist() != c.pool_index.tolist()


def test_dfnd_and_entropy_orderings():
    pool, teacher = pool_and_teacher(400)
    with torch.no_grad():
        from edgedistill.inputs.images import normalize

        probs = torch.softmax(teacher(normalize(torch.from_numpy(pool.parts[0].array), SPEC)), 1).numpy()
    dfnd = select_pool(teacher, pool, SelectSpec(strategy="dfnd", total=20, batch_size=64), 10, seed=0)
    assert set(dfnd.pool_index) == set(np.argsort(-probs.max(1), kind="stable")[:20])
    entropy = -(probs * np.log(probs)).sum(1)
    high = select_pool(teacher, pool, SelectSpec(strategy="entropy", total=20, batch_size=64), 10, seed=0)
    assert set(high.pool_index) == set(np.argsort(-entropy, kind="stable")[:20])


def test_near_duplicates_do_not_fill_a_quota():
    pool, teacher = pool_and_teacher(50)
    images = np.repeat(pool.parts[0].array[:10], 5, axis=0)  # every image five times
    dup_pool = Pool(SPEC, [ArrayPart("dups", images)])
    plain = select_pool(teacher, dup_pool, SelectSpec(strategy="dfnd", total=10, batch_size=16), 10, seed=0)
    dedup = select_pool(teacher, dup_pool, SelectSpec(strategy="dfnd", total=10, batch_size=16, dedup_threshold=0.999), 10, seed=0)
    assert len({bytes(x) for x in plain.images}) < 10
    assert len({bytes(x) for x in dedup.images}) == 10


def test_pool_coverage_grades_each_class_and_says_what_to_do():
    from edgedistill.stages.select import pool_coverage

    sure, doubtful = np.array([0.95, 0.05, 0.0]), np.array([0.1, 0.5, 0.4])
    probs = np.stack([sure] * 10 + [doubtful] * 10 + [np.array([0.0, 0.05, 0.95])] * 3)
    coverage = pool_coverage(probs, np.array([500, 40, 3]), quota=10)
    assert [c["level"] for c in coverage] == ["well", "poorly", "poorly"]  # doubtful images; too few images
    assert coverage[0]["advice"] is None and coverage[0]["mean_confidence"] == pytest.approx(0.95)
    assert "folder:" in coverage[2]["advice"] and coverage[2]["selected"] == 3 and coverage[2]["pool_predicted"] == 3
    half = pool_coverage(np.stack([sure] * 7), np.array([7, 0, 0]), quota=10)[0]
    assert half["level"] == "thinly" and "larger pool" in half["advice"]


def test_coverage_advice_only_where_it_helps_and_at_most_20_lines():
    """A full quota at confidence 0.47 is no gap ("0 (3000/3000, conf 0.47)" was called poorly covered); with 1,000
    classes the terminal gets 20 classes and a pointer to the full table, not ~330 lines."""
    from edgedistill.stages.select import coverage_lines, pool_coverage

    full_unsure = np.stack([np.array([0.47, 0.33, 0.2])] * 10)
    (first, *_) = pool_coverage(full_unsure, np.array([10, 0, 0]), quota=10)
    assert first["selected"] == 10 and first["advice"] is None
    doubtful = pool_coverage(np.stack([np.array([0.25, 0.25, 0.25, 0.25])] * 10), np.array([10, 0, 0, 0]), quota=10)[0]
    assert doubtful["advice"] is not None  # under a quarter of the mass on its own class: advice
    classes = 1000
    probs = np.full((classes * 2, classes), 0.5 / (classes - 1))
    probs[np.arange(classes * 2), np.arange(classes * 2) % classes] = 0.5
    stats = {"coverage": pool_coverage(probs, np.full(classes, 2), quota=3), "pool_predicted_per_class": [2] * classes}
    lines = coverage_lines(stats, [str(c) for c in range(classes)])
    assert len(lines) == 2 and lines[0].count("(2/3, conf 0.50)") == 20
    assert lines[-1] == "select: ... and 980 more; the full table is in selection.json and report.html"


def test_selection_stats_hold_the_pool_histogram_and_name_a_collapsed_teacher():
    """Without labels: one class with over 90% of the pool's top-1 predictions is a collapsed teacher."""
    from edgedistill.stages.select import coverage_lines

    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 4))
    with torch.no_grad():
        teacher[1].weight.zero_()
        teacher[1].bias.copy_(torch.tensor([5.0, 0.0, 0.0, 0.0]))  # every image is class 0
    pool, _ = pool_and_teacher(40)
    selection = select_pool(teacher, pool, SelectSpec(per_class=5, batch_size=16), 4, seed=0)
    assert selection.stats["pool_predicted_per_class"] == [40, 0, 0, 0]
    assert selection.stats["teacher_class_share"] == {"class": 0, "share": 1.0, "scored": 40}
    lines = coverage_lines(selection.stats, ["cat", "dog", "bird", "fish"])
    assert lines[0].startswith("select: warning: the teacher put 100.0% of the 40 scored pool images in one class (cat)")
