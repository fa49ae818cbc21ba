"""Datasets by name: real MNIST, the missing-data error, synthetic data, image folders and the registry.

The registry tests hold every registered dataset to what loading it really gives (real MNIST
files, generated data, a folder of PNGs written here), and hold :func:`check_dataset` to naming
the offending option of every problem, all at once.
"""

from __future__ import annotations

import inspect
import os
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from repair_ray.datasets import (
    DATASETS,
    KNOWN_DATASETS,
    Dataset,
    DatasetNotFoundError,
    check_dataset,
    data_root,
    dataset_files,
    dataset_in_shape,
    dataset_num_classes,
    dataset_options,
    load_dataset,
    make_synthetic,
    split_sizes,
)
from repair_ray.datasets.vision import TORCHVISION_DATASETS
from repair_ray.errors import SettingError

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _no_download(self: object) -> None:
    raise RuntimeError("downloads are disabled in tests")


@pytest.fixture
def mnist_env(monkeypatch: pytest.MonkeyPatch) -> Path:
    """REPAIR_RAY_DATA pointing at the real MNIST (never skipped: a missing MNIST fails), no downloads."""
    root = Path(os.environ.get("REPAIR_RAY_DATA", SHARED_DATA))
    monkeypatch.setenv("REPAIR_RAY_DATA", str(root))
    monkeypatch.setattr(torchvision.datasets.MNIST, "download", _no_download)
    return root


def test_mnist_loads_normalised_tensors(mnist_env: Path) -> None:
    dataset = load_dataset("mnist")
    assert isinstance(dataset, Dataset)
    assert dataset.name == "mnist" and dataset.num_classes == 10 and dataset.in_shape == (1, 28, 28)
    assert dataset.train.x.shape == (60000, 1, 28, 28) and dataset.test.x.shape == (10000, 1, 28, 28)
    assert dataset.train.x.dtype == torch.float32 and dataset.train.y.dtype == torch.int64
    assert abs(dataset.train.x.mean().item()) < 0.01
    assert abs(dataset.train.x.std().item() - 1) < 0.01
    assert sorted(dataset.train.y.unique().tolist()) == list(range(10))
    assert sorted(dataset.test.y.unique().tolist()) == list(range(10))


def test_mnist_matches_torchvision_reading(mnist_env: Path) -> None:
    dataset = load_dataset("mnist", root=mnist_env)
    reference = torchvision.datasets.MNIST(str(mnist_env), train=False, download=False)
    expected = (reference.data.float().div(255).unsqueeze(1) - 0.1307) / 0.3081
    torch.testing.assert_close(dataset.test.x, expected)
    assert torch.equal(dataset.test.y, reference.targets)


def test_missing_data_root_names_env_var_and_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torchvision.datasets.MNIST, "download", _no_download)
    monkeypatch.setenv("REPAIR_RAY_DATA", str(tmp_path / "empty"))
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mnist")
    message = str(info.value)
    assert "REPAIR_RAY_DATA" in message
    assert str(tmp_path / "empty" / "MNIST" / "raw") in message
    assert "mnist" in message
    assert isinstance(info.value, FileNotFoundError)


def test_data_root_comes_from_env_or_defaults_to_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPAIR_RAY_DATA", "/some/where")
    assert data_root() == Path("/some/where")
    monkeypatch.delenv("REPAIR_RAY_DATA")
    assert data_root() == Path.home() / ".cache" / "repair_ray" / "data"


def test_synthetic_is_deterministic_for_a_seed() -> None:
    a, b = load_dataset("synthetic", seed=3), load_dataset("synthetic", seed=3)
    other = load_dataset("synthetic", seed=4)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.train.x, other.train.x)
    assert a.train.x.shape == (2048, 1, 28, 28) and a.test.x.shape == (512, 1, 28, 28)


def test_synthetic_takes_any_shape_and_class_count() -> None:
    dataset = load_dataset("synthetic", shape=(3, 32, 32), num_classes=7, train_size=700, test_size=70)
    assert dataset.in_shape == (3, 32, 32) and dataset.num_classes == 7
    assert dataset.train.x.shape == (700, 3, 32, 32) and dataset.test.x.shape == (70, 3, 32, 32)
    assert sorted(dataset.train.y.unique().tolist()) == list(range(7))
    channel_means = dataset.train.x.mean(dim=(0, 2, 3))
    channel_stds = dataset.train.x.std(dim=(0, 2, 3))
    torch.testing.assert_close(channel_means, torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(channel_stds, torch.ones(3), atol=1e-4, rtol=0)
    tiny = load_dataset("synthetic", shape=(2, 3, 5), num_classes=2, train_size=8, test_size=4)
    assert tiny.train.x.shape == (8, 2, 3, 5) and torch.isfinite(tiny.train.x).all()


def test_synthetic_train_split_does_not_depend_on_test_size() -> None:
    a = load_dataset("synthetic", test_size=10)
    b = load_dataset("synthetic", test_size=100)
    assert torch.equal(a.train.x, b.train.x)


def test_synthetic_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="shape"):
        load_dataset("synthetic", shape=(28, 28))
    with pytest.raises(ValueError, match="colour"):
        load_dataset("synthetic", colour="red")


def test_cifar10_in_torchvision_layout_becomes_nchw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Small fake CIFAR-10 batches in torchvision's pickle layout (checksums skipped)."""
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = {"data": rng.integers(0, 256, (4, 3072), np.uint8), "labels": [0, 3, 9, 1]}
        (folder / name).write_bytes(pickle.dumps(batches[name]))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}))
    dataset = load_dataset("cifar10", root=tmp_path)
    assert dataset.in_shape == (3, 32, 32) and dataset.num_classes == 10
    assert dataset.train.x.shape == (20, 3, 32, 32) and dataset.test.x.shape == (4, 3, 32, 32)
    assert dataset.train.x.is_contiguous() and dataset.test.y.tolist() == [0, 3, 9, 1]
    raw = batches["test_batch"]["data"].reshape(4, 3, 32, 32)  # CIFAR rows are channel-major
    expected = (raw[1, 2, 5, 7] / 255 - 0.4465) / 0.2616
    assert dataset.test.x[1, 2, 5, 7].item() == pytest.approx(expected, abs=1e-5)


def _write_image_folder(root: Path, splits: dict[str, int], classes: tuple[str, ...] = ("cat", "dog", "eel")) -> None:
    rng = np.random.default_rng(0)
    for split, per_class in splits.items():
        for index, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = np.full((20, 24, 3), 60 * index, dtype=np.uint8) + rng.integers(0, 40, (20, 24, 3), np.uint8)
                image = Image.fromarray(pixels)
                if i == 0:
                    image = image.convert("L")  # greyscale files become RGB too
                image.save(folder / f"{i}.{'jpg' if i == 1 else 'png'}")
            (folder / "notes.txt").write_text("not an image")


def test_imagefolder_loads_resized_normalised_images(tmp_path: Path) -> None:
    _write_image_folder(tmp_path, {"train": 4, "val": 2})
    dataset = load_dataset(f"imagefolder:{tmp_path}", image_size=16)
    assert dataset.num_classes == 3 and dataset.in_shape == (3, 16, 16)
    assert dataset.train.x.shape == (12, 3, 16, 16) and dataset.test.x.shape == (6, 3, 16, 16)
    assert dataset.train.y.tolist() == [0] * 4 + [1] * 4 + [2] * 4  # classes sorted by folder name
    torch.testing.assert_close(dataset.train.x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
    # Class 2 is the brightest: its normalised images lie above class 0's.
    assert dataset.test.x[dataset.test.y == 2].mean() > dataset.test.x[dataset.test.y == 0].mean()


def test_imagefolder_without_test_folder_names_the_path(tmp_path: Path) -> None:
    _write_image_folder(tmp_path, {"train": 2})
    with pytest.raises(DatasetNotFoundError, match="test") as info:
        load_dataset(f"imagefolder:{tmp_path}")
    assert str(tmp_path) in str(info.value)


def test_imagefolder_with_empty_or_missing_folders_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "nothing")):
        load_dataset(f"imagefolder:{tmp_path / 'nothing'}")
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "test" / "a").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="no images") as info:
        load_dataset(f"imagefolder:{tmp_path}")
    assert str(tmp_path / "train") in str(info.value)


def test_unknown_dataset_name_suggests_the_closest_or_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'mnits'; did you mean 'mnist'") as info:
        load_dataset("mnits")
    assert isinstance(info.value, SettingError) and info.value.problems[0][0] == "name"
    with pytest.raises(ValueError, match="unknown dataset 'zzz'") as info:
        load_dataset("zzz")
    for known in ("mnist", "fashion_mnist", "cifar10", "cifar100", "synthetic", "imagefolder:<path>"):
        assert known in str(info.value)
    for name in ("imagefolder", "imagefolder:"):  # the prefix kind needs a path
        with pytest.raises(SettingError, match="did you mean 'imagefolder:<path>'"):
            load_dataset(name)


def test_torchvision_datasets_take_no_options(mnist_env: Path) -> None:
    with pytest.raises(ValueError, match="image_size"):
        load_dataset("mnist", image_size=32)


# ---------------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------------

# One case per registered dataset (synthetic twice: its defaults and custom options).
REGISTRY_CASES = ["mnist", "fashion_mnist", "cifar10", "cifar100", "synthetic", "synthetic-defaults", "imagefolder"]


def test_every_registered_dataset_has_a_registry_case() -> None:
    assert {case.split("-")[0] for case in REGISTRY_CASES} == set(DATASETS)
    assert set(KNOWN_DATASETS) == {*TORCHVISION_DATASETS, "synthetic", "imagefolder:<path>"}


def _registered(case: str, tmp_path: Path, mnist_root: Path) -> tuple[str, dict[str, Any], Path | None]:
    """(name, options, data root) of a real instance of the registry case ``case``."""
    if case == "mnist":
        return "mnist", {}, mnist_root
    if case == "fashion_mnist":  # MNIST's files in Fashion-MNIST's place: the same format and sizes
        folder = tmp_path / "FashionMNIST" / "raw"
        folder.mkdir(parents=True)
        for file in (mnist_root / "MNIST" / "raw").glob("*-ubyte"):
            (folder / file.name).symlink_to(file)
        return "fashion_mnist", {}, tmp_path
    if case in ("cifar10", "cifar100"):
        if not (data_root() / TORCHVISION_DATASETS[case].folder).is_dir():
            pytest.skip(f"{case} is not in the data root {data_root()}")
        return case, {}, None
    if case == "synthetic":
        return "synthetic", {"shape": [3, 12, 10], "num_classes": 4, "train_size": 40, "test_size": 12, "seed": 5}, None
    if case == "synthetic-defaults":
        return "synthetic", {}, None
    assert case == "imagefolder"
    _write_image_folder(tmp_path / "pets", {"train": 3, "test": 2})
    return f"imagefolder:{tmp_path / 'pets'}", {"image_size": 12}, None


@pytest.mark.parametrize("case", REGISTRY_CASES)
def test_registry_agrees_with_the_loaded_dataset(case: str, tmp_path: Path, mnist_env: Path) -> None:
    name, options, root = _registered(case, tmp_path, mnist_env)
    dataset = load_dataset(name, root=root, **options)
    in_shape = tuple(dataset.train.x.shape[1:])
    assert dataset_in_shape(name, options) == dataset.in_shape == in_shape == tuple(dataset.test.x.shape[1:])
    # an image folder on this machine is listed: its sizes and classes are known without decoding
    assert split_sizes(name, options) == (len(dataset.train), len(dataset.test))
    assert dataset_num_classes(name, options) == dataset.num_classes
    assert int(dataset.train.y.max()) < dataset.num_classes and int(dataset.test.y.max()) < dataset.num_classes
    assert dataset_options(name) == tuple(DATASETS[case.split("-")[0]].options)


def test_registry_defaults_are_the_loaders_keyword_defaults() -> None:
    signature = inspect.signature(make_synthetic).parameters
    assert DATASETS["synthetic"].defaults == {option: p.default for option, p in signature.items()}
    assert dataset_options("synthetic") == ("shape", "num_classes", "train_size", "test_size", "seed")
    assert dataset_options("imagefolder:/anywhere") == ("image_size", "load", "resize_size", "mean", "std")
    assert dataset_in_shape("imagefolder:/anywhere") == (3, 32, 32)
    assert split_sizes("imagefolder:/anywhere") is None and dataset_num_classes("imagefolder:/anywhere") is None
    assert split_sizes("synthetic", {"test_size": 7}) == (2048, 7)
    assert split_sizes("cifar10") == (50000, 10000) and dataset_num_classes("cifar100") == 100


CHECK_CASES = [
    # (name, options, the option named, text of its message)
    ("synthetic", {"train_size": -5}, "train_size", "must be a positive integer, got -5"),
    ("synthetic", {"test_size": 0}, "test_size", "must be a positive integer, got 0"),
    ("synthetic", {"shape": [0, 8, 8]}, "shape", "must be three positive integers (C, H, W), got [0, 8, 8]"),
    ("synthetic", {"shape": [8, 8]}, "shape", "must be three positive integers (C, H, W), got [8, 8]"),
    ("synthetic", {"shape": "1x28x28"}, "shape", "must be three positive integers"),
    ("synthetic", {"num_classes": 1}, "num_classes", "must be at least 2, got 1"),
    ("synthetic", {"train_size": True}, "train_size", "must be a positive integer, got True"),
    ("synthetic", {"shape": [1, True, 8]}, "shape", "must be three positive integers"),
    ("synthetic", {"seed": 1.5}, "seed", "must be an integer, got 1.5"),
    (
        "synthetic",
        {"colour": "red"},
        "colour",
        "dataset synthetic takes shape, num_classes, train_size, test_size, seed",
    ),
    ("mnist", {"image_size": 32}, "image_size", "dataset mnist takes no options"),
    ("imagefolder:/nowhere", {"image_size": 0}, "image_size", "must be a positive integer, got 0"),
    ("imagefolder:/nowhere", {"image_size": True}, "image_size", "must be a positive integer, got True"),
    ("imagefolder:/nowhere", {"shape": [1, 8, 8]}, "shape", "dataset imagefolder:/nowhere takes image_size"),
    ("mnits", {}, "name", "unknown dataset 'mnits'; did you mean 'mnist'?"),
]


@pytest.mark.parametrize(
    ("name", "options", "option", "text"), CHECK_CASES, ids=[f"{c[0]}-{c[2]}" for c in CHECK_CASES]
)
def test_check_dataset_names_the_offending_option(name: str, options: dict, option: str, text: str) -> None:
    with pytest.raises(SettingError) as info:
        check_dataset(name, options)
    assert len(info.value.problems) == 1, info.value.problems
    key, message = info.value.problems[0]
    assert key == option and text in message, (key, message)
    assert f"dataset.{option}: " in str(info.value)
    assert isinstance(info.value, ValueError)


def test_check_dataset_reports_every_problem_at_once() -> None:
    options = {"train_size": -5, "shape": [0, 8, 8], "num_classes": 1, "colour": "red", "seed": 3}
    with pytest.raises(SettingError) as info:
        check_dataset("synthetic", options)
    assert [key for key, _ in info.value.problems] == ["train_size", "shape", "num_classes", "colour"]


FILE_EVENTS = ("open", "os.listdir", "os.scandir", "glob.glob", "os.walk")
_audit: dict[str, list] = {}


def _record_file_access(event: str, args: tuple) -> None:
    if "events" in _audit and event in FILE_EVENTS:
        _audit["events"].append((event, args[0] if args else None))


def test_check_dataset_accepts_valid_options_without_touching_files(tmp_path: Path, monkeypatch) -> None:
    """Checking is of names and values alone: it accepts what loading then refuses for want of
    files (MNIST under an empty data root, a folder that is not there), opens and lists nothing,
    and what it accepts (numpy and torch numbers, a negative seed) loads as written."""
    monkeypatch.setenv("REPAIR_RAY_DATA", str(tmp_path / "empty-root"))
    missing = f"imagefolder:{tmp_path / 'no-such-folder'}"
    synthetic = {"shape": (3, 8, 8), "num_classes": np.int64(3), "train_size": 5, "test_size": 2, "seed": -1}
    if not _audit.get("hooked"):  # audit hooks cannot be removed: one, recording only while asked
        sys.addaudithook(_record_file_access)
        _audit["hooked"] = [True]
    _audit["events"] = []
    try:
        results = [
            check_dataset("mnist", {}),
            check_dataset("synthetic", synthetic),
            check_dataset("synthetic", {"shape": torch.Size([1, 4, 4])}),
            check_dataset(missing, {"image_size": 8}),
        ]
        touched = _audit["events"]
    finally:
        del _audit["events"]
    assert results == [None] * 4
    assert touched == [], touched
    # ... while the files really are missing: loading needs them, checking did not
    assert dataset_files("mnist", {})[0] is not None
    assert dataset_files(missing, {"image_size": 8})[0] is not None
    with pytest.raises((DatasetNotFoundError, FileNotFoundError)):
        load_dataset(missing, image_size=8)
    data = load_dataset("synthetic", **synthetic)
    assert data.train.x.shape == (5, 3, 8, 8) and data.test.x.shape == (2, 3, 8, 8)
    assert set(data.train.y.tolist()) <= {0, 1, 2} and data.num_classes == 3


def test_loading_goes_through_the_same_checker(tmp_path: Path) -> None:
    with pytest.raises(SettingError) as info:
        load_dataset("synthetic", train_size=-5)
    assert info.value.problems == [("train_size", "must be a positive integer, got -5")]
    with pytest.raises(SettingError) as info:
        make_synthetic(train_size=-5, num_classes=True)
    assert [key for key, _ in info.value.problems] == ["num_classes", "train_size"]
    with pytest.raises(SettingError, match="image_size"):  # options are checked before the folder is read
        load_dataset(f"imagefolder:{tmp_path / 'missing'}", image_size=True)


def test_queries_reject_what_the_checker_rejects() -> None:
    with pytest.raises(SettingError, match="dataset.train_size: must be a positive integer, got 0"):
        split_sizes("synthetic", {"train_size": 0})
    with pytest.raises(SettingError, match="dataset.shape"):
        dataset_in_shape("synthetic", {"shape": [1, 2]})
    with pytest.raises(SettingError, match="dataset.name: unknown dataset 'cifar'; did you mean 'cifar10'"):
        dataset_options("cifar")
