"""Tests of mlonas.data: real torchvision loaders on generated archives, splits, loaders.

Corrupt, truncated, missing and concurrently produced data are fault cases: tests/faults/.

No network: the CIFAR archives are generated here in the original on-disk layout (Python 2
pickles of dicts with ``data`` uint8 [N, 3072] row-major CHW and ``labels`` /
``fine_labels``), and torchvision's hard-coded md5 sums are replaced by those of the
generated files, so torchvision's real integrity check runs on them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset
from torch.utils.data.distributed import DistributedSampler
from torchvision.datasets import CIFAR10, CIFAR100

from mlonas.artifacts import schema
from mlonas.config import Config, load_config
from mlonas.data import loaders, sources
from mlonas.data.loaders import (
    Cutout,
    epoch_loader,
    eval_datasets,
    search_datasets,
    unlabeled_dataset,
)
from mlonas.data.sources import (
    ArrayImageDataset,
    demo_arrays,
    load_cifar,
    load_imagenet,
    load_source_train_test,
    materialize_demo_imagenet,
)
from mlonas.data.splits import load_split, make_split, write_split
from mlonas.errors import MlonasError

REPO = Path(__file__).resolve().parents[1]

# -- Python-2-style pickles, as the original CIFAR files are ---------------------------


def _py2_pickle_body(obj: Any) -> bytes:
    """Pickle opcodes for ``obj`` as Python 2's cPickle (protocol 2) wrote them: text is a
    byte string (SHORT_BINSTRING / BINSTRING), so ``encoding="latin1"`` loads it as ``str``
    and ``encoding="bytes"`` as ``bytes``, exactly like the real CIFAR files."""
    if isinstance(obj, str):
        raw = obj.encode("latin1")
        if len(raw) < 256:
            return b"U" + bytes([len(raw)]) + raw
        return b"T" + struct.pack("<i", len(raw)) + raw
    if isinstance(obj, dict):
        items = b"".join(_py2_pickle_body(k) + _py2_pickle_body(v) for k, v in obj.items())
        return b"}" + (b"(" + items + b"u" if obj else b"")
    if isinstance(obj, list):
        items = b"".join(_py2_pickle_body(v) for v in obj)
        return b"]" + (b"(" + items + b"e" if obj else b"")
    if isinstance(obj, (int, np.ndarray)):
        # ints and arrays: protocol-2 opcodes without the PROTO header and the STOP.
        return pickle.dumps(obj if not isinstance(obj, int) else int(obj), protocol=2)[2:-1]
    raise TypeError(type(obj))


def _py2_pickle(obj: Any) -> bytes:
    return b"\x80\x02" + _py2_pickle_body(obj) + b"."


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _images(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def _rows(x: np.ndarray) -> np.ndarray:
    """NHWC -> the files' [N, 3072] row-major CHW."""
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2).reshape(len(x), -1))


def write_mini_cifar(
    root: Path, name: str, monkeypatch: pytest.MonkeyPatch, n_batch: int = 8, n_test: int = 10
) -> dict[str, np.ndarray]:
    """Write a miniature CIFAR-10/100 folder under ``root`` and point torchvision at its md5s."""
    rng = np.random.default_rng(123 if name == "cifar10" else 456)
    out: dict[str, np.ndarray] = {}
    if name == "cifar10":
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        xs, ys, train_list = [], [], []
        for b in range(1, 6):
            x, y = _images(rng, n_batch), rng.integers(0, 10, n_batch)
            xs.append(x)
            ys.append(y)
            entry = {
                "batch_label": f"training batch {b} of 5",
                "labels": [int(v) for v in y],
                "data": _rows(x),
                "filenames": [f"img_{b}_{i}.png" for i in range(n_batch)],
            }
            (folder / f"data_batch_{b}").write_bytes(_py2_pickle(entry))
            train_list.append([f"data_batch_{b}", _md5(folder / f"data_batch_{b}")])
        tx, ty = _images(rng, n_test), rng.integers(0, 10, n_test)
        test = {
            "batch_label": "testing batch 1 of 1",
            "labels": [int(v) for v in ty],
            "data": _rows(tx),
            "filenames": [f"test_{i}.png" for i in range(n_test)],
        }
        (folder / "test_batch").write_bytes(_py2_pickle(test))
        names = ["airplane", "automobile", "bird", "cat", "deer"]
        names += ["dog", "frog", "horse", "ship", "truck"]
        meta = {"num_cases_per_batch": n_batch, "label_names": names, "num_vis": 3072}
        (folder / "batches.meta").write_bytes(_py2_pickle(meta))
        monkeypatch.setattr(CIFAR10, "train_list", train_list)
        monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", _md5(folder / "test_batch")]])
        meta_md5 = _md5(folder / "batches.meta")
        monkeypatch.setattr(
            CIFAR10, "meta", {"filename": "batches.meta", "key": "label_names", "md5": meta_md5}
        )
        out["train_x"], out["train_y"] = np.concatenate(xs), np.concatenate(ys)
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True)
        n_train = 5 * n_batch
        x, y = _images(rng, n_train), rng.integers(0, 100, n_train)
        tx, ty = _images(rng, n_test), rng.integers(0, 100, n_test)
        for fname, xx, yy, label in (("train", x, y, "training"), ("test", tx, ty, "testing")):
            entry = {
                "filenames": [f"{fname}_{i}.png" for i in range(len(xx))],
                "batch_label": f"{label} batch 1 of 1",
                "fine_labels": [int(v) for v in yy],
                "coarse_labels": [int(v) // 5 for v in yy],
                "data": _rows(xx),
            }
            (folder / fname).write_bytes(_py2_pickle(entry))
        meta = {
            "fine_label_names": [f"fine{i}" for i in range(100)],
            "coarse_label_names": [f"coarse{i}" for i in range(20)],
        }
        (folder / "meta").write_bytes(_py2_pickle(meta))
        monkeypatch.setattr(CIFAR100, "train_list", [["train", _md5(folder / "train")]])
        monkeypatch.setattr(CIFAR100, "test_list", [["test", _md5(folder / "test")]])
        monkeypatch.setattr(
            CIFAR100,
            "meta",
            {"filename": "meta", "key": "fine_label_names", "md5": _md5(folder / "meta")},
        )
        out["train_x"], out["train_y"] = x, y
    out["test_x"], out["test_y"] = tx, ty
    return out


def _ds(name: str, root: Path, **over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "source": name,
        "root": str(root),
        "download": False,
        "split_seed": 0,
        "n_train": 12,
        "n_val": 10,
        "image_size": 32,
    }
    if name == "imagenet":
        del base["n_train"], base["n_val"]
    return base | over


def _cfg(tmp_path: Path, **datasets: dict[str, Any]) -> Config:
    return Config({"root": f"{tmp_path}/", "preset": "test", "datasets": datasets})


def _demo_cfg(tmp_path: Path) -> Config:
    """The demo preset of the repository's params.yaml, with its data under ``tmp_path``."""
    cfg = load_config(REPO / "params.yaml", "demo")
    params = copy.deepcopy(cfg.params)
    params["root"] = f"{tmp_path}/"
    for name, ds in params["datasets"].items():
        ds["root"] = str(tmp_path / "raw" / name)
    return Config(params)


@pytest.fixture()
def cifar10(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path / "raw"
    return root, write_mini_cifar(root, "cifar10", monkeypatch)


# -- real CIFAR loaders -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_real_torchvision_cifar_reads_generated_files(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    arrays = write_mini_cifar(tmp_path, name, monkeypatch)
    # the files really are Python-2 style: bytes keys when loaded with encoding="bytes"
    first = "cifar-10-batches-py/data_batch_1" if name == "cifar10" else "cifar-100-python/train"
    with open(tmp_path / first, "rb") as fh:
        assert b"data" in pickle.load(fh, encoding="bytes")
    ds = _ds(name, tmp_path)
    train = load_cifar(name, ds, train=True)
    test = load_cifar(name, ds, train=False)
    assert isinstance(train, CIFAR100 if name == "cifar100" else CIFAR10)
    np.testing.assert_array_equal(train.data, arrays["train_x"])
    assert train.targets == arrays["train_y"].tolist()
    np.testing.assert_array_equal(test.data, arrays["test_x"])
    assert test.targets == arrays["test_y"].tolist()
    assert len(train.classes) == (10 if name == "cifar10" else 100)
    img, label = load_source_train_test(name, ds, train=False)[3]
    np.testing.assert_array_equal(np.asarray(img), arrays["test_x"][3])
    assert label == int(arrays["test_y"][3])


def test_intact_cifar_with_download_true_does_not_download(
    cifar10: tuple[Path, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_download(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("must not download intact data")

    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", no_download)
    root, arrays = cifar10
    train = load_cifar("cifar10", _ds("cifar10", root, download=True), train=True)
    assert len(train) == len(arrays["train_x"])


def test_real_cifar_must_be_32px(cifar10: tuple[Path, Any]) -> None:
    root, _ = cifar10
    with pytest.raises(MlonasError, match=r"^datasets\.cifar10\.image_size"):
        load_source_train_test("cifar10", _ds("cifar10", root, image_size=16), train=True)


# -- splits -------------------------------------------------------------------------------


def test_cifar_split_is_deterministic_disjoint_and_sized(
    cifar10: tuple[Path, Any], tmp_path: Path
) -> None:
    root, _ = cifar10
    cfg = _cfg(tmp_path, cifar10=_ds("cifar10", root))
    a, b = make_split(cfg, "cifar10"), make_split(cfg, "cifar10")
    assert a == b
    assert set(a) == split_schema_keys("cifar10")
    assert len(a["train_indices"]) == 12 and len(a["val_indices"]) == 10
    assert a["train_indices"] == sorted(a["train_indices"])
    assert not set(a["train_indices"]) & set(a["val_indices"])
    assert max(a["train_indices"] + a["val_indices"]) < 40
    assert (a["n_test"], a["num_classes"], a["image_size"]) == (10, 10, 32)
    other = make_split(_cfg(tmp_path, cifar10=_ds("cifar10", root, split_seed=1)), "cifar10")
    assert other["train_indices"] != a["train_indices"]
    assert other["raw_sha256"] == a["raw_sha256"]


def test_split_too_large_names_n_train(cifar10: tuple[Path, Any], tmp_path: Path) -> None:
    root, _ = cifar10
    cfg = _cfg(tmp_path, cifar10=_ds("cifar10", root, n_train=30, n_val=11))
    with pytest.raises(MlonasError, match=r"datasets\.cifar10\.n_train.*exceeds the 40 images"):
        make_split(cfg, "cifar10")


def test_load_split_detects_changed_raw_data(
    cifar10: tuple[Path, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, arrays = cifar10
    cfg = _cfg(tmp_path, cifar10=_ds("cifar10", root))
    out = Path(cfg.split_path("cifar10"))
    written = write_split(cfg, "cifar10", out)
    assert load_split(out, cfg, "cifar10") == written
    assert not list(out.parent.glob(".*tmp"))  # atomic write left no temp file

    # Replace batch 2 by a valid (md5-registered) file with one pixel changed.
    folder = root / "cifar-10-batches-py"
    x = arrays["train_x"][8:16].copy()
    x[0, 0, 0, 0] ^= 1
    entry = {
        "batch_label": "training batch 2 of 5",
        "labels": arrays["train_y"][8:16].tolist(),
        "data": _rows(x),
        "filenames": [f"x{i}" for i in range(8)],
    }
    (folder / "data_batch_2").write_bytes(_py2_pickle(entry))
    train_list = [list(e) for e in CIFAR10.train_list]
    train_list[1][1] = _md5(folder / "data_batch_2")
    monkeypatch.setattr(CIFAR10, "train_list", train_list)

    assert load_split(out, cfg, "cifar10", verify=False)["raw_sha256"] == written["raw_sha256"]
    with pytest.raises(MlonasError, match=r"raw data of cifar10 changed since the split was made"):
        load_split(out, cfg, "cifar10")


def split_schema_keys(dataset: str) -> set[str]:
    """The keys split.schema.json requires of a split of ``dataset`` (all a writer writes)."""
    s = schema("split")
    return set(s["required"]) | set(s["then" if dataset == "imagenet" else "else"]["required"])


def test_load_split_rejects_bad_files(cifar10: tuple[Path, Any], tmp_path: Path) -> None:
    root, _ = cifar10
    cfg = _cfg(tmp_path, cifar10=_ds("cifar10", root), cifar100=_ds("cifar100", root))
    out = tmp_path / "split.json"
    split = write_split(cfg, "cifar10", out)
    with pytest.raises(MlonasError, match="expected 'cifar100'"):
        load_split(out, cfg, "cifar100", verify=False)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(MlonasError, match=f"{bad}"):
        load_split(bad, cfg, "cifar10")
    with pytest.raises(MlonasError, match="does not exist"):
        load_split(tmp_path / "absent.json", cfg, "cifar10")
    for key, value in (("train_indices", None), ("n_val", "10")):
        broken = {k: v for k, v in split.items() if k != key or value is not None}
        if value is not None:
            broken[key] = value
        bad.write_text(json.dumps(broken))
        with pytest.raises(MlonasError, match=rf"^{bad}: .*{key}"):
            load_split(bad, cfg, "cifar10", verify=False)
    # the schema's checks name the file and the JSON path, on one line
    for key, value, message in (
        ("n_val", True, "n_val: must be integer, got boolean"),
        ("n_train", 12.0, "n_train: must be integer, got number"),
        (
            "train_indices",
            [-1, *split["train_indices"][1:]],
            r"train_indices\[0\]: must be a non-neg",
        ),
        ("val_indices", [split["val_indices"][0]] * 10, "val_indices: must be a list of distinct"),
        ("raw_sha256", "abc", "raw_sha256: must be a sha256 hex digest"),
    ):
        bad.write_text(json.dumps(split | {key: value}))
        with pytest.raises(MlonasError, match=rf"^{bad}: {message}") as exc:
            load_split(bad, cfg, "cifar10", verify=False)
        assert "\n" not in str(exc.value)
    bad.write_text(json.dumps(split | {"val_indices": split["val_indices"][:-1]}))
    with pytest.raises(MlonasError, match="val_indices holds 9 indices but n_val is 10"):
        load_split(bad, cfg, "cifar10", verify=False)
    bad.write_text(json.dumps(split | {"val_indices": split["train_indices"][:10]}))
    with pytest.raises(MlonasError, match="overlap"):
        load_split(bad, cfg, "cifar10", verify=False)
    cfg2 = _cfg(tmp_path, cifar10=_ds("cifar10", root, n_train=11))
    with pytest.raises(MlonasError, match=r"n_train=12 but params datasets\.cifar10\.n_train"):
        load_split(out, cfg2, "cifar10", verify=False)


def test_demo_preset_splits_fit_and_verify(tmp_path: Path) -> None:
    cfg = _demo_cfg(tmp_path)
    for name in ("cifar10", "cifar100"):
        split = write_split(cfg, name, cfg.split_path(name))
        ds = cfg.dataset(name)
        assert (split["n_train"], split["n_val"], split["n_test"]) == (
            ds["n_train"],
            ds["n_val"],
            400,
        )
        assert split["image_size"] == cfg.dataset(name)["image_size"]
        assert load_split(cfg.split_path(name), cfg, name) == split
    a = json.loads(Path(cfg.split_path("cifar10")).read_text())
    b = json.loads(Path(cfg.split_path("cifar100")).read_text())
    assert a["raw_sha256"] != b["raw_sha256"]  # different tints, different data


# -- demo stand-in ----------------------------------------------------------------------


# sha256 of demo_arrays("cifar10", 16)'s train + test images: the stand-in must be the same
# bytes on every machine (the demo's raw hashes and results depend on it).
DEMO_CIFAR10_16_SHA256 = "cda9d9c62542ac6efc201ffd0fe1dc8225e1f6ae2bbcf306e837f365e12a802b"


def test_demo_digits_are_scikit_learns_load_digits() -> None:
    """The stand-in reads sklearn's bundled CSV itself (no sklearn import per job)."""
    from sklearn.datasets import load_digits

    from mlonas.data.sources import _digits

    images, labels = _digits()
    want = load_digits()
    assert images.dtype == want.images.dtype and labels.dtype == np.int64
    np.testing.assert_array_equal(images, want.images)
    np.testing.assert_array_equal(labels, want.target)


def test_demo_arrays_shapes_determinism_and_tints() -> None:
    tx, ty, vx, vy = demo_arrays("cifar10", 16)
    assert tx.shape == (1397, 16, 16, 3) and vx.shape == (400, 16, 16, 3)
    assert tx.dtype == vx.dtype == np.uint8 and ty.dtype == vy.dtype == np.int64
    assert ty.shape == (1397,) and vy.shape == (400,)
    assert set(np.unique(ty)) == set(range(10)) and np.bincount(vy).tolist() == [40] * 10
    again = demo_arrays("cifar10", 16)
    for x, y in zip((tx, ty, vx, vy), again, strict=True):
        np.testing.assert_array_equal(x, y)
    tx[0] = 0  # callers get copies
    assert demo_arrays("cifar10", 16)[0][0].any()
    c100, inet = demo_arrays("cifar100", 16)[0], demo_arrays("imagenet", 16)[0]
    assert not np.array_equal(again[0], c100) and not np.array_equal(c100, inet)
    np.testing.assert_array_equal(demo_arrays("cifar100", 16)[1], again[1])  # same digits
    assert demo_arrays("imagenet", 32)[0].shape == (1397, 32, 32, 3)
    # pinned bytes: catches any change of the stand-in on any machine or library version
    digest = hashlib.sha256(again[0].tobytes() + again[2].tobytes()).hexdigest()
    assert digest == DEMO_CIFAR10_16_SHA256


def test_array_image_dataset_matches_cifar_protocol() -> None:
    x = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    ds = ArrayImageDataset(x, [1, 0], transform=lambda im: np.asarray(im))
    img, label = ds[0]
    np.testing.assert_array_equal(img, x[0])
    assert label == 1 and len(ds) == 2 and ds.classes == ["0", "1"]
    with pytest.raises(ValueError):
        ArrayImageDataset(x.astype(np.float32), [1, 0])


# -- ImageNet folder ----------------------------------------------------------------------


def test_demo_imagenet_tree_split_and_idempotence(tmp_path: Path) -> None:
    cfg = _demo_cfg(tmp_path)
    ds = cfg.dataset("imagenet")
    train = load_imagenet(ds, "train")
    val = load_imagenet(ds, "val")
    assert len(train.classes) == 10 and train.classes == val.classes
    assert (len(train), len(val)) == (1397, 400)
    img, label = val[0]
    assert img.size == (ds["image_size"], ds["image_size"]) and 0 <= label < 10
    root = Path(ds["root"])
    manifest = root / sources.DEMO_IMAGENET_MANIFEST
    stamp = manifest.stat().st_mtime_ns
    materialize_demo_imagenet(root, ds["image_size"])
    assert manifest.stat().st_mtime_ns == stamp
    # no temp dirs (the lock file of concurrent builders stays; see sources.data_lock)
    assert [p.name for p in root.parent.iterdir() if p.name.startswith(".")] == [".imagenet.lock"]

    split = write_split(cfg, "imagenet", cfg.split_path("imagenet"))
    assert set(split) == split_schema_keys("imagenet")
    assert (split["n_train"], split["n_test"], split["num_classes"]) == (1397, 400, 10)
    assert load_split(cfg.split_path("imagenet"), cfg, "imagenet") == split
    next((root / "val").rglob("*.png")).unlink()
    with pytest.raises(MlonasError, match="raw data of imagenet changed"):
        load_split(cfg.split_path("imagenet"), cfg, "imagenet")


def test_demo_imagenet_never_overwrites_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "imagenet").mkdir()
    (tmp_path / "imagenet" / "precious.txt").write_text("x")
    with pytest.raises(MlonasError, match=r"^datasets\.imagenet\.root: .* is not the demo"):
        materialize_demo_imagenet(tmp_path / "imagenet", 16)
    assert (tmp_path / "imagenet" / "precious.txt").exists()


def test_killed_demo_imagenet_build_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def dies_halfway(tmp: Path, image_size: int) -> None:
        (tmp / "train" / "n00000000").mkdir(parents=True)
        (tmp / "train" / "n00000000" / "00000.png").write_bytes(b"png")
        raise KeyboardInterrupt

    monkeypatch.setattr(sources, "_write_demo_tree", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        materialize_demo_imagenet(tmp_path / "imagenet", 16)
    assert [p.name for p in tmp_path.iterdir()] == [".imagenet.lock"]


# -- loaders ------------------------------------------------------------------------------


def test_cutout_zeroes_one_square_from_torch_rng() -> None:
    img = torch.ones(3, 16, 16)
    full = 0
    for i in range(20):
        torch.manual_seed(i)
        out = Cutout(4)(img)
        zero = out[0] == 0
        assert torch.equal(zero, out[1] == 0) and torch.equal(zero, out[2] == 0)
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        assert zero.sum() == len(rows) * len(cols) > 0  # one rectangle
        assert len(rows) <= 4 and len(cols) <= 4
        assert rows.diff().eq(1).all() and cols.diff().eq(1).all()
        full += int(zero.sum()) == 16
        torch.manual_seed(i)
        np.random.seed(i + 1)  # numpy's RNG must not matter
        assert torch.equal(Cutout(4)(img), out)
    assert full > 0
    assert torch.equal(img, torch.ones(3, 16, 16))  # input untouched


def test_epoch_loader_order_depends_on_seed_and_epoch_only() -> None:
    data = TensorDataset(torch.arange(100))

    def order(seed: int, epoch: int, **kw: Any) -> list[int]:
        loader = epoch_loader(data, 10, shuffle=True, seed=seed, epoch=epoch, **kw)
        return torch.cat([b[0] for b in loader]).tolist()

    torch.manual_seed(1)
    first = order(0, 3)
    torch.manual_seed(2)
    _ = torch.rand(10)
    assert order(0, 3) == first  # global RNG state is irrelevant
    assert sorted(first) == list(range(100))
    assert order(0, 4) != first and order(1, 3) != first
    assert order(0, 3, drop_last=True) == first
    unshuffled = epoch_loader(data, 10, shuffle=False, seed=0, epoch=0)
    assert torch.cat([b[0] for b in unshuffled]).tolist() == list(range(100))

    sampler = DistributedSampler(data, num_replicas=2, rank=0, shuffle=True, seed=5)
    dist = order(0, 7, sampler=sampler)
    assert len(dist) == 50
    reference = DistributedSampler(data, num_replicas=2, rank=0, shuffle=True, seed=5)
    reference.set_epoch(7)
    assert dist == list(reference)


def test_search_and_eval_datasets_on_demo(tmp_path: Path) -> None:
    cfg = _demo_cfg(tmp_path)
    split = write_split(cfg, "cifar10", cfg.split_path("cifar10"))
    s_train, s_val, n_cls = search_datasets(cfg, "cifar10", split)
    ds = cfg.dataset("cifar10")
    assert (len(s_train), len(s_val), n_cls) == (ds["n_train"], ds["n_val"], 10)
    x, y, i = s_train[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and isinstance(y, int)
    assert i == 0  # the example's position in the search-train half
    # LeaSE's plain view: the same image without the random crop/flip
    x_aug, y2, i, x_plain = search_datasets(cfg, "cifar10", split, plain_view=True)[0][5]
    assert (y2, i) == (s_train[5][1], 5) and x_plain.shape == x_aug.shape
    plain_again = search_datasets(cfg, "cifar10", split, plain_view=True)[0][5][3]
    assert torch.equal(x_plain, plain_again)
    e_train, e_test, n_cls = eval_datasets(cfg, "cifar10", split, cutout=4)
    assert (len(e_train), len(e_test), n_cls) == (1397, 400, 10)
    assert any(isinstance(t, Cutout) for t in e_train.transform.transforms)
    tx, _ = e_test[0]
    assert tx.shape == (3, 16, 16)
    # test transform is deterministic and normalizes with the demo statistics (0.5/0.5)
    raw = torch.from_numpy(demo_arrays("cifar10", 16)[2][0]).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(tx, (raw - 0.5) / 0.5)


def test_search_datasets_on_real_cifar(cifar10: tuple[Path, Any], tmp_path: Path) -> None:
    root, _ = cifar10
    cfg = _cfg(tmp_path, cifar10=_ds("cifar10", root))
    split = make_split(cfg, "cifar10")
    s_train, s_val, n_cls = search_datasets(cfg, "cifar10", split)
    assert (len(s_train), len(s_val), n_cls) == (12, 10, 10)
    assert s_train[0][0].shape == (3, 32, 32)
    # SGL's unlabeled images: the whole training set of the other dataset, labels dropped,
    # with the searched dataset's normalization
    both = _cfg(tmp_path, cifar10=_ds("cifar10", root), cifar100=_ds("cifar100", root))
    images = unlabeled_dataset(both, "cifar100", "cifar10", split)
    assert len(images) == 40 and images[0].shape == (3, 32, 32)
    e_train, e_test, _ = eval_datasets(cfg, "cifar10", split, cutout=0)
    assert (len(e_train), len(e_test)) == (40, 10)


def test_imagenet_datasets_on_demo(tmp_path: Path) -> None:
    cfg = _demo_cfg(tmp_path)
    split = make_split(cfg, "imagenet")
    train, test, n_cls = loaders.imagenet_datasets(cfg, split)
    size = cfg.dataset("imagenet")["image_size"]
    assert n_cls == 10
    torch.manual_seed(0)
    assert train[0][0].shape == (3, size, size)
    assert test[0][0].shape == (3, size, size)
    with pytest.raises(MlonasError, match="differ from the split"):
        loaders.imagenet_datasets(cfg, split | {"classes": split["classes"][::-1]})


@pytest.mark.parametrize("size", [16, 32])
def test_cifar_transforms_are_torchvisions_bit_for_bit(size: int) -> None:
    """mlonas.data.augment replaces torchvision.transforms (an import of seconds per job):
    from the same RNG state, torchvision's pipeline and ours give equal tensors and leave
    the RNG in the same state, image after image, for PIL and array inputs."""
    from PIL import Image
    from torchvision import transforms as TV

    from mlonas.data import augment

    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    theirs = TV.Compose(
        [TV.RandomCrop(size, padding=size // 8), TV.RandomHorizontalFlip(), TV.ToTensor(),
         TV.Normalize(mean, std)]
    )  # fmt: skip
    ours = augment.Compose(
        [augment.RandomCrop(size, padding=size // 8), augment.RandomHorizontalFlip(),
         augment.ToTensor(), augment.Normalize(mean, std)]
    )  # fmt: skip
    plain = (TV.Compose([TV.ToTensor(), TV.Normalize(mean, std)]),
             augment.Compose([augment.ToTensor(), augment.Normalize(mean, std)]))  # fmt: skip
    rng = np.random.default_rng(size)
    images = rng.integers(0, 256, size=(64, size, size, 3), dtype=np.uint8)
    torch.manual_seed(7)
    want = [theirs(Image.fromarray(a)) for a in images] + [plain[0](Image.fromarray(images[0]))]
    after = torch.rand(1)
    torch.manual_seed(7)
    got = [ours(Image.fromarray(a)) for a in images[:32]] + [ours(a) for a in images[32:]]
    got.append(plain[1](images[0]))
    assert torch.equal(torch.rand(1), after)
    for w, g in zip(want, got, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape and torch.equal(g, w)
    flipped = sum(not torch.equal(w, theirs.transforms[3](TV.ToTensor()(Image.fromarray(a))))
                  for w, a in zip(want, images, strict=False))  # fmt: skip
    assert flipped > 0  # the images were really transformed (crops and flips happened)
