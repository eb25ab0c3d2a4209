"""Where images come from: torchvision CIFAR-10/100, an ImageNet folder, or the offline demo.

Every source ends up as the same kind of object: a dataset with ``data``/``targets`` (or
``samples``) and ``classes`` whose items are ``(PIL.Image, int)`` before the transform. The
search and evaluation code therefore runs the *same* transforms and code paths on the
demo stand-in as on the real data, which is what lets the demo preset prove the pipeline.

Real CIFAR is loaded with torchvision's own classes, including its download and md5
integrity check; we only turn its exceptions into one-line :class:`MlonasError` messages
that name the params key to fix.

Concurrent jobs. The split rule is the DAG's single producer of raw data, but two
Snakemake invocations (or a search started while a split still downloads) can still reach
the same data root at once, and torchvision downloads and extracts in place. Whatever
writes raw data (CIFAR download + extraction, the demo ImageNet tree) therefore holds an
exclusive ``fcntl.flock`` on a lock file in the dataset's root directory
(``.cifar-10-batches-py.lock``, ``.cifar-100-python.lock``, ``.imagenet.lock``), and
readers of CIFAR hold it shared while torchvision checks and reads the files: a reader
never sees a half-extracted folder, and two producers never download over each other
(the second finds the data intact and only reads it). flock works across processes on a
local disk and on NFS (Linux emulates it with POSIX locks); where the lock file cannot be
created (a read-only data mount) the data is only read, and no lock is needed.

The demo stand-in is scikit-learn's bundled 8x8 handwritten digits (1797 real images, 10
classes, shipped inside the wheel: no network). It is made bit-identical on every machine
by construction: the resize is explicit IEEE arithmetic in float64 (no BLAS, no SIMD
kernels whose rounding could differ), and the train/test partition is ordered by SHA-256
of the sample index instead of a pseudo-random generator whose stream could change
between library versions.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import gzip
import hashlib
import importlib.util
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch.utils.data
from PIL import Image

from mlonas.errors import MlonasError

if TYPE_CHECKING:
    from torchvision.datasets import CIFAR10, CIFAR100, ImageFolder

Stats = tuple[tuple[float, float, float], tuple[float, float, float]]

#: Per-channel (mean, std) used by ``Normalize``. The CIFAR and ImageNet values are the
#: usual ones of the DARTS-family code bases. For the demo stand-in we deliberately use
#: 0.5/0.5 (maps [0, 1] to [-1, 1]) instead of statistics measured on the tinted digits:
#: the demo only has to exercise the pipeline, and a constant keeps the value independent
#: of the tints and the image size.
NORMALIZATION: dict[str, Stats] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "demo": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}

_CIFAR = {"cifar10": "CIFAR10", "cifar100": "CIFAR100"}  # torchvision.datasets' classes
CIFAR_IMAGE_SIZE = 32

# -- the demo stand-in ---------------------------------------------------------------

#: (background, ink) RGB per stand-in, so that the three stand-ins have different bytes
#: (and therefore different raw hashes) although they are made from the same digits.
_DEMO_TINTS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "cifar10": ((16, 32, 80), (250, 200, 60)),
    "cifar100": ((70, 10, 40), (120, 240, 200)),
    "imagenet": ((20, 60, 20), (255, 140, 200)),
}
DEMO_TEST_PER_CLASS = 40  # 10 classes x 40 = 400 test images, 1397 training images
DEMO_CLASSES = [f"digit{d}" for d in range(10)]
DEMO_IMAGENET_MANIFEST = "mlonas_demo.json"
_DEMO_IMAGENET_VERSION = 1


def normalization(name: str, ds_cfg: dict[str, Any]) -> Stats:
    """The (mean, std) for ``datasets.<name>``: the demo stand-in has its own."""
    return NORMALIZATION["demo" if ds_cfg["source"] == "demo" else name]


def _tint(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name in _DEMO_TINTS:
        bg, ink = _DEMO_TINTS[name]
    else:  # any other stand-in name still gets its own fixed colours
        d = hashlib.sha256(f"mlonas-demo-tint:{name}".encode()).digest()
        bg, ink = (d[0] // 3, d[1] // 3, d[2] // 3), (128 + d[3] // 2, 128 + d[4] // 2, 255)
    return np.asarray(bg, dtype=np.float64), np.asarray(ink, dtype=np.float64)


def _bilinear_axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of half-pixel-centred bilinear resampling along one axis.

    Same convention as PIL / ``interpolate(align_corners=False)``, but written as plain
    element-wise float64 operations so the result is bit-identical everywhere.
    """
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0.0, n_in - 1.0)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = src - i0
    return i0, i1, w1


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits (float64 ``[1797, 8, 8]`` images 0..16, int64 labels),
    read from the CSV file it ships, as ``sklearn.datasets.load_digits`` reads it, but
    without importing scikit-learn: that import cost each demo job about two seconds
    (tests/test_data.py checks the arrays equal load_digits')."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise MlonasError("the demo data needs scikit-learn (pip install scikit-learn)")
    path = Path(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz")
    with gzip.open(path, mode="rt", encoding="utf-8") as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)


@functools.cache
def _demo_arrays_cached(name: str, image_size: int) -> tuple[np.ndarray, ...]:
    images, labels = _digits()
    images = images / 16.0  # [N, 8, 8] in [0, 1]
    n, h, w = images.shape

    r0, r1, rw = _bilinear_axis(h, image_size)
    rows = images[:, r0, :] * (1.0 - rw)[None, :, None] + images[:, r1, :] * rw[None, :, None]
    c0, c1, cw = _bilinear_axis(w, image_size)
    value = rows[:, :, c0] * (1.0 - cw)[None, None, :] + rows[:, :, c1] * cw[None, None, :]

    bg, ink = _tint(name)
    rgb = bg + (ink - bg) * value[..., None]  # [N, S, S, 3]
    rgb8 = np.clip(np.floor(rgb + 0.5), 0, 255).astype(np.uint8)

    # Stratified partition: within each class, order samples by a hash of their index and
    # put the first DEMO_TEST_PER_CLASS in the test set. No RNG stream involved.
    key = [hashlib.sha256(f"mlonas-demo-split:{i}".encode()).digest() for i in range(n)]
    is_test = np.zeros(n, dtype=bool)
    for c in np.unique(labels):
        members = sorted(np.flatnonzero(labels == c).tolist(), key=key.__getitem__)
        is_test[members[:DEMO_TEST_PER_CLASS]] = True
    out = (rgb8[~is_test], labels[~is_test], rgb8[is_test], labels[is_test])
    for a in out:
        a.setflags(write=False)
    return out


def demo_arrays(
    name: str, image_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The offline stand-in for ``name``: ``(train_x, train_y, test_x, test_y)``.

    Images are uint8 ``[N, image_size, image_size, 3]`` (1397 train, 400 test), labels
    int64. Identical bytes on every call and machine; different tint (and bytes) per
    ``name``. Returns fresh copies so callers may modify them.
    """
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    return tuple(a.copy() for a in _demo_arrays_cached(name, int(image_size)))  # type: ignore[return-value]


class ArrayImageDataset(torch.utils.data.Dataset):
    """Images held in memory as uint8 NHWC, served exactly like torchvision's CIFAR classes.

    Same attributes (``data``, ``targets``, ``classes``) and same item protocol (a PIL image
    passed through ``transform``), so the demo stand-in shares every transform and every
    code path with the real CIFAR datasets.
    """

    def __init__(
        self,
        data: np.ndarray,
        targets: Sequence[int],
        transform: Callable[[Any], Any] | None = None,
        target_transform: Callable[[Any], Any] | None = None,
        classes: Sequence[str] | None = None,
    ) -> None:
        if data.ndim != 4 or data.shape[-1] != 3 or data.dtype != np.uint8:
            raise ValueError(f"expected uint8 [N, H, W, 3] images, got {data.dtype} {data.shape}")
        if len(data) != len(targets):
            raise ValueError(f"{len(data)} images but {len(targets)} targets")
        self.data = data
        self.targets = [int(t) for t in targets]
        self.transform = transform
        self.target_transform = target_transform
        n_classes = max(self.targets, default=-1) + 1
        self.classes = list(classes) if classes is not None else [str(c) for c in range(n_classes)]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        img: Any = Image.fromarray(self.data[index])
        target: Any = self.targets[index]
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target


def demo_dataset(
    name: str, image_size: int, train: bool, transform: Callable[[Any], Any] | None = None
) -> ArrayImageDataset:
    """The stand-in's training or test set as an :class:`ArrayImageDataset`."""
    train_x, train_y, test_x, test_y = demo_arrays(name, image_size)
    x, y = (train_x, train_y) if train else (test_x, test_y)
    return ArrayImageDataset(x, y.tolist(), transform=transform, classes=DEMO_CLASSES)


# -- locking ---------------------------------------------------------------------------


@contextlib.contextmanager
def data_lock(lock_file: str | os.PathLike[str], shared: bool = False) -> Iterator[bool]:
    """Hold an inter-process ``flock`` on ``lock_file`` (exclusive unless ``shared``).

    Yields whether the lock is held: ``False`` when the lock file cannot be created (its
    directory is missing or read-only), in which case nothing can be written there either.
    The lock file is never deleted: removing a lock file while another process waits on it
    would let a third process lock a new file and run beside the second.
    """
    try:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        yield False
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield True
    finally:
        os.close(fd)  # closing the descriptor releases the lock


# -- real CIFAR ------------------------------------------------------------------------


def _check_integrity(path: str, md5: str) -> bool:
    """torchvision's md5 check of a CIFAR file (imported lazily, as in cifar_class)."""
    from torchvision.datasets.utils import check_integrity

    return bool(check_integrity(path, md5))


def cifar_class(name: str) -> type[CIFAR10]:
    """torchvision's class of CIFAR dataset ``name``. torchvision is imported here, not at
    the top of the module: the demo's jobs never read real CIFAR, and importing torchvision
    costs seconds per job (see mlonas.data.augment)."""
    if name not in _CIFAR:
        raise MlonasError(f"datasets.{name}: not a CIFAR dataset (cifar10 or cifar100)")
    import torchvision.datasets

    return getattr(torchvision.datasets, _CIFAR[name])


def _cifar_defect(cls: type[CIFAR10], root: str) -> str | None:
    """First missing or corrupt file of the extracted CIFAR folder, as words (None: intact).

    Reads the class attributes at call time so the md5 sums are torchvision's (or those a
    test substituted), i.e. the same check torchvision itself applies.
    """
    folder = os.path.join(root, cls.base_folder)
    if not os.path.isdir(folder):
        return f"{cls.base_folder}/ does not exist"
    files = [*cls.train_list, *cls.test_list, [cls.meta["filename"], cls.meta["md5"]]]
    for fname, md5 in files:
        path = os.path.join(folder, fname)
        if not os.path.isfile(path):
            return f"{fname} is missing"
        if not _check_integrity(path, md5):
            return f"{fname} fails its md5 check"
    return None


def _remove_bad_archive(cls: type[CIFAR10], root: str) -> None:
    """Delete a downloaded archive that fails its md5 so nothing can mistake it for complete."""
    archive = os.path.join(root, cls.filename)
    if os.path.isfile(archive) and not _check_integrity(archive, cls.tgz_md5):
        os.unlink(archive)


def load_cifar(
    name: str,
    ds_cfg: dict[str, Any],
    train: bool,
    transform: Callable[[Any], Any] | None = None,
) -> CIFAR10 | CIFAR100:
    """torchvision's CIFAR-10/100 (``name``) from ``ds_cfg["root"]``, downloaded if allowed.

    torchvision checks the md5 of the archive and of every extracted file; any failure
    (missing, corrupt, download error) becomes one :class:`MlonasError` line naming
    ``datasets.<name>.root`` and the first defective file.
    """
    cls = cifar_class(name)
    root = str(ds_cfg["root"])
    download = bool(ds_cfg["download"])
    key = f"datasets.{name}.root"
    lock = os.path.join(root, f".{cls.base_folder}.lock")
    if download:
        os.makedirs(root, exist_ok=True)
    # Read under a shared lock: intact data is the common case and many jobs read at once.
    with data_lock(lock, shared=True):
        try:
            return cls(root, train=train, transform=transform, download=False)
        except Exception as exc:  # RuntimeError, OSError, unpickling errors...
            if not download:
                defect = _cifar_defect(cls, root) or f"its files cannot be read: {exc!r}"
                raise MlonasError(
                    f"{key}: {root} has no intact {cls.base_folder} ({defect}; download: false)"
                ) from None
    # Missing or damaged: download and extract under the exclusive lock. A process that
    # waited here while another one downloaded finds the data intact and only reads it.
    with data_lock(lock):
        try:
            return cls(root, train=train, transform=transform, download=True)
        except Exception as exc:  # RuntimeError, URLError, OSError, tar errors...
            _remove_bad_archive(cls, root)
            defect = _cifar_defect(cls, root) or f"its files cannot be read: {exc!r}"
            raise MlonasError(
                f"{key}: {root} has no intact {cls.base_folder} ({defect}) and the download"
                f" of {cls.url} failed: {type(exc).__name__}: {exc} (download: true)"
            ) from None


# -- ImageNet --------------------------------------------------------------------------


def _manifest_ok(root: Path, image_size: int) -> bool:
    try:
        manifest = json.loads((root / DEMO_IMAGENET_MANIFEST).read_text("utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(manifest, dict)
        and manifest.get("version") == _DEMO_IMAGENET_VERSION
        and manifest.get("image_size") == image_size
    )


def demo_imagenet_class(label: int) -> str:
    """Folder name of a demo class, shaped like an ImageNet WordNet id (n + 8 digits)."""
    return f"n{label:08d}"


def _write_demo_tree(tmp: Path, image_size: int) -> None:
    train_x, train_y, test_x, test_y = demo_arrays("imagenet", image_size)
    for split, xs, ys in (("train", train_x, train_y), ("val", test_x, test_y)):
        for label in range(len(DEMO_CLASSES)):
            (tmp / split / demo_imagenet_class(label)).mkdir(parents=True)
        for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
            buf = io.BytesIO()
            # compress_level=0: file sizes (part of the ImageNet raw hash) do not depend
            # on the zlib version.
            Image.fromarray(x).save(buf, format="PNG", compress_level=0)
            (tmp / split / demo_imagenet_class(int(y)) / f"{i:05d}.png").write_bytes(buf.getvalue())
    manifest = {
        "generator": "mlonas demo stand-in for ImageNet (scikit-learn digits)",
        "version": _DEMO_IMAGENET_VERSION,
        "image_size": image_size,
        "n_train": len(train_x),
        "n_val": len(test_x),
        "classes": [demo_imagenet_class(c) for c in range(len(DEMO_CLASSES))],
    }
    (tmp / DEMO_IMAGENET_MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", "utf-8")


def materialize_demo_imagenet(root: str | os.PathLike[str], image_size: int) -> None:
    """Write the ImageNet stand-in as an ImageFolder tree ``root/{train,val}/<class>/*.png``.

    The tree is built in a temporary directory next to ``root`` (manifest last) and renamed
    into place, so ``root`` is either absent or complete: a killed job never leaves a tree
    that ImageFolder would read as a smaller dataset. Idempotent: a complete tree of the
    same ``image_size`` is left alone, concurrent callers settle on whichever finished
    first, and a directory that is not ours (no manifest, not empty) is never deleted.
    """
    root = Path(root)
    image_size = int(image_size)
    if _manifest_ok(root, image_size):
        return
    root.parent.mkdir(parents=True, exist_ok=True)
    with data_lock(root.parent / f".{root.name}.lock"):
        if not _manifest_ok(root, image_size):  # another process may have built it meanwhile
            _build_demo_imagenet(root, image_size)


def _build_demo_imagenet(root: Path, image_size: int) -> None:
    ours = (root / DEMO_IMAGENET_MANIFEST).is_file()
    if root.exists() and not ours and (not root.is_dir() or any(root.iterdir())):
        raise MlonasError(
            f"datasets.imagenet.root: {root} exists but is not the demo ImageNet tree"
            f" (no {DEMO_IMAGENET_MANIFEST}); move it away or point the root elsewhere"
        )
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
    trash: Path | None = None
    try:
        _write_demo_tree(tmp, image_size)
        if root.exists():  # an empty directory, or our own tree of another image size
            trash = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".old", dir=root.parent))
            os.replace(root, trash / "tree")
        try:
            os.rename(tmp, root)
        except OSError:
            if not _manifest_ok(root, image_size):  # not a concurrent twin that won the race
                raise
    finally:
        for leftover in (tmp, trash):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)


def missing_imagenet_folder(folder: Path) -> MlonasError:
    """The one error for an absent ``train/`` or ``val/`` (shared with the split hash)."""
    return MlonasError(
        f"datasets.imagenet.root: {folder} does not exist (expected ImageFolder train/ and val/)"
    )


def load_imagenet(
    ds_cfg: dict[str, Any],
    split: str,
    transform: Callable[[Any], Any] | None = None,
) -> ImageFolder:
    """The ``train`` or ``val`` ImageFolder under ``ds_cfg["root"]`` (val is the test set).

    ImageNet cannot be downloaded automatically; with ``source: demo`` the stand-in tree is
    written first (once).
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    root = Path(ds_cfg["root"])
    if ds_cfg["source"] == "demo":
        materialize_demo_imagenet(root, ds_cfg["image_size"])
    folder = root / split
    if not folder.is_dir():
        raise missing_imagenet_folder(folder)
    from torchvision.datasets import ImageFolder  # lazily, as in cifar_class

    try:
        return ImageFolder(str(folder), transform=transform)
    except (FileNotFoundError, OSError) as exc:
        raise MlonasError(
            f"datasets.imagenet.root: {folder} is not an ImageFolder tree of class folders ({exc})"
        ) from None


# -- one entry point -------------------------------------------------------------------


def load_source_train_test(
    name: str,
    ds_cfg: dict[str, Any],
    train: bool,
    transform: Callable[[Any], Any] | None = None,
) -> torch.utils.data.Dataset:
    """The training (``train=True``) or test set of ``datasets.<name>``, whatever its source.

    ``source: demo`` gives the stand-in, anything else the real data. The rest of the
    package goes through this function, so a preset switches data without code changes.
    For ImageNet the test set is the ``val/`` folder.
    """
    if name == "imagenet":
        return load_imagenet(ds_cfg, "train" if train else "val", transform)
    if ds_cfg["source"] == "demo":
        return demo_dataset(name, int(ds_cfg["image_size"]), train, transform)
    cifar_class(name)
    if int(ds_cfg["image_size"]) != CIFAR_IMAGE_SIZE:
        raise MlonasError(
            f"datasets.{name}.image_size: real {name} images are {CIFAR_IMAGE_SIZE}x"
            f"{CIFAR_IMAGE_SIZE}, got {ds_cfg['image_size']}"
        )
    return load_cifar(name, ds_cfg, train, transform)
