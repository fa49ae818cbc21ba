"""The dataset registry: one table mapping a dataset kind to everything known about it.

Like the model zoo's ``ARCHS`` (and open_lth's ``datasets/registry.py``), :data:`DATASETS` holds
one :class:`DatasetKind` per kind of dataset: its loader, the options it accepts with their
defaults and rules, and what is known without loading it (input shape, class count, split
sizes, whether it is held in memory or streamed from disk). Every question about a dataset name
goes through this table, so adding a dataset means adding one entry, not another branch in
several if-chains.

:func:`check_dataset` is the one home of the rules for dataset names and options:
:func:`load_dataset`, :func:`~repair_ray.datasets.synthetic.make_synthetic` and the queries
below all call it, and it raises :class:`~repair_ray.errors.SettingError` with every problem at
once, each keyed by the option it concerns (``name`` for the dataset name).
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

from ..errors import Problems, is_int, unknown_choice
from .files import IMAGE_EXTENSIONS, CorruptImageError
from .imagefolder import (
    LOADINGS,
    imagefolder_listing,
    imagefolder_loading,
    imagefolder_missing,
    load_imagefolder,
)
from .streaming import ImageFiles
from .synthetic import make_synthetic
from .tensors import Dataset, DatasetNotFoundError, TensorData, black_of, in_memory, memory_only
from .vision import DATA_ENV, TORCHVISION_DATASETS, data_root, load_torchvision

Rule = Callable[[Any], str | None]  # a value -> what is wrong with it (None when it is fine)
# options with their defaults filled in -> (option, what is wrong) for each rule between options
Together = Callable[[Mapping[str, Any]], Iterator[tuple[str, str]]]


@dataclass(frozen=True)
class Option:
    """One option a dataset kind accepts: its default and the rule its values must follow."""

    default: Any
    rule: Rule


@dataclass(frozen=True)
class DatasetKind:
    """What the registry knows of one kind of dataset, most of it without loading anything.

    ``load(name, root, options, workers)`` gets the full dataset name (``imagefolder:<path>``
    carries its path), the data root (None for the default), every option, defaults filled in and
    checked, and the DataLoader workers of a streamed dataset (a runtime setting, never an option).
    ``in_shape`` takes the same options, ``num_classes``, ``split_sizes`` and ``loading`` the name
    and the options; each answers None where only missing files could tell. ``together`` names
    the problems between options (given their defaults). ``prefix`` kinds are named ``<kind>:<path>``.
    """

    load: Callable[[str, Path | None, dict[str, Any], int | None], Dataset]
    options: Mapping[str, Option]
    in_shape: Callable[[Mapping[str, Any]], tuple[int, int, int] | None]
    num_classes: Callable[[str, Mapping[str, Any]], int | None]
    split_sizes: Callable[[str, Mapping[str, Any]], tuple[int, int] | None]  # (train, test) samples
    # "memory" (in-memory tensors) or "stream" (read from disk by DataLoader workers)
    loading: Callable[[str, Mapping[str, Any]], str | None] = lambda name, options: "memory"
    together: Together = lambda options: iter(())
    prefix: bool = False
    # (name, data root) -> what of its files is missing here, None when they are there (or it has none)
    missing: Callable[[str, Path], str | None] = lambda name, root: None
    downloads: bool = False  # the loader downloads missing files (when online)

    @property
    def defaults(self) -> dict[str, Any]:
        """Every option with its default value."""
        return {option: spec.default for option, spec in self.options.items()}

    def check(self, name: str, options: Mapping[str, Any], problems: Problems) -> None:
        """Add a problem to ``problems`` for every option ``name`` does not take or whose value breaks its rule."""
        for option, value in options.items():
            spec = self.options.get(option)
            if spec is None:
                accepted = ", ".join(self.options) if self.options else "no options"
                problems.add(str(option), f"dataset {name} takes {accepted}")
            elif (message := spec.rule(value)) is not None:
                problems.add(option, message)
        if not problems:
            for option, message in self.together({**self.defaults, **options}):
                problems.add(option, message)


# ---------------------------------------------------------------------------------------------
# Rules for option values (integers: numpy's count too; a bool never does, ``train_size: true`` is a slip)
# ---------------------------------------------------------------------------------------------


def _positive_int(value: Any) -> str | None:
    return None if is_int(value, numpy=True) and value >= 1 else f"must be a positive integer, got {value!r}"


def _integer(value: Any) -> str | None:
    return None if is_int(value, numpy=True) else f"must be an integer, got {value!r}"


def _class_count(value: Any) -> str | None:
    if not is_int(value, numpy=True):
        return f"must be an integer of at least 2, got {value!r}"
    return None if value >= 2 else f"must be at least 2, got {value!r}"


def _chw_shape(value: Any) -> str | None:
    ok = isinstance(value, (list, tuple)) and len(value) == 3 and all(is_int(v, numpy=True) and v >= 1 for v in value)
    return None if ok else f"must be three positive integers (C, H, W), got {value!r}"


def _optional_positive_int(value: Any) -> str | None:
    if value is None or (is_int(value, numpy=True) and value >= 1):
        return None
    return f"must be a positive integer or null, got {value!r}"


def _loading(value: Any) -> str | None:
    return None if value in LOADINGS else unknown_choice("load", value, LOADINGS)


def _channel_values(*, positive: bool) -> Rule:
    """The rule of ``mean`` (three finite numbers) or ``std`` (three positive finite numbers), or null."""

    def rule(value: Any) -> str | None:
        if value is None:
            return None
        numbers = isinstance(value, (list, tuple)) and len(value) == 3
        numbers = numbers and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        if numbers and all(math.isfinite(v) and (v > 0 or not positive) for v in value):
            return None
        kind = "positive numbers" if positive else "numbers"
        return f"must be three {kind} (one per RGB channel) or null, got {value!r}"

    return rule


def _imagefolder_together(options: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    if (options["mean"] is None) != (options["std"] is None):
        given, missing = ("mean", "std") if options["std"] is None else ("std", "mean")
        yield missing, f"must be given with {given} (or neither: both are then computed from train images)"
    if options["resize_size"] is not None and options["resize_size"] < options["image_size"]:
        yield (
            "resize_size",
            f"must be at least image_size ({options['image_size']}): the centre crop is taken from the resized "
            f"image, got {options['resize_size']}",
        )


def _chw(shape: Any) -> tuple[int, int, int]:
    """A checked ``shape`` option as a tuple of three ints."""
    channels, height, width = (int(s) for s in shape)
    return channels, height, width


def _options(loader: Callable[..., Dataset], **rules: Rule) -> Mapping[str, Option]:
    """The keyword-only parameters of ``loader`` with their defaults, each paired with its rule.

    The loader's signature is the one home of the defaults and this table the one home of the
    rules; a parameter without a rule (or a rule without a parameter) fails at import.
    """
    defaults = {p.name: p.default for p in inspect.signature(loader).parameters.values() if p.kind is p.KEYWORD_ONLY}
    if set(defaults) != set(rules):
        raise TypeError(
            f"{loader.__name__} takes options {sorted(defaults)}; the registry has rules for {sorted(rules)}"
        )
    return MappingProxyType({option: Option(default, rules[option]) for option, default in defaults.items()})


# ---------------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------------


def _torchvision(key: str) -> DatasetKind:
    """A torchvision dataset: no options, everything but the pixels known from its spec."""
    spec = TORCHVISION_DATASETS[key]
    return DatasetKind(
        load=lambda name, root, options, workers: load_torchvision(name, root),
        options=MappingProxyType({}),
        in_shape=lambda options: spec.in_shape,
        num_classes=lambda name, options: spec.num_classes,
        split_sizes=lambda name, options: spec.split_sizes,
        missing=lambda name, root: _torchvision_missing(key, root),
        downloads=True,
    )


def _torchvision_missing(key: str, root: Path) -> str | None:
    folder = root / TORCHVISION_DATASETS[key].folder
    if folder.is_dir() and any(folder.iterdir()):
        return None
    return f"dataset {key}: no files in {folder} (the data root is ${DATA_ENV}, else ~/.cache/repair_ray/data)"


def _folder_path(name: str) -> Path:
    """The path of a prefix kind's name: ``imagefolder:~/pets`` -> ``/home/me/pets``."""
    return Path(name.split(":", 1)[1]).expanduser()


def _listed(name: str, answer: Callable[[Any], Any]) -> Any:
    """``answer`` of the image folder's listing (classes and files, no decode), None where it is not on this machine."""
    listing = imagefolder_listing(_folder_path(name))
    return None if listing is None else answer(listing)


DATASETS: dict[str, DatasetKind] = {
    **{key: _torchvision(key) for key in TORCHVISION_DATASETS},
    "synthetic": DatasetKind(
        load=lambda name, root, options, workers: make_synthetic(**options),
        options=_options(
            make_synthetic,
            shape=_chw_shape,
            num_classes=_class_count,
            train_size=_positive_int,
            test_size=_positive_int,
            seed=_integer,
        ),
        in_shape=lambda options: _chw(options["shape"]),
        num_classes=lambda name, options: int(options["num_classes"]),
        split_sizes=lambda name, options: (int(options["train_size"]), int(options["test_size"])),
    ),
    # imagefolder:<path>: classes and sizes are whatever the folder holds (listed, where it exists)
    "imagefolder": DatasetKind(
        load=lambda name, root, options, workers: load_imagefolder(name, _folder_path(name), workers, **options),
        options=_options(
            load_imagefolder,
            image_size=_positive_int,
            load=_loading,
            resize_size=_optional_positive_int,
            mean=_channel_values(positive=False),
            std=_channel_values(positive=True),
        ),
        in_shape=lambda options: (3, int(options["image_size"]), int(options["image_size"])),
        num_classes=lambda name, options: _listed(name, lambda listing: len(listing.classes)),
        split_sizes=lambda name, options: _listed(name, lambda listing: (len(listing.train), len(listing.test))),
        loading=lambda name, options: imagefolder_loading(
            _folder_path(name), image_size=int(options["image_size"]), load=options["load"]
        ),
        together=_imagefolder_together,
        prefix=True,
        missing=lambda name, root: imagefolder_missing(_folder_path(name)),
    ),
}
KNOWN_DATASETS: tuple[str, ...] = tuple(f"{key}:<path>" if kind.prefix else key for key, kind in DATASETS.items())


def _lookup(name: object) -> DatasetKind | None:
    """The kind of a dataset name (``imagefolder:<path>`` needs a non-empty path), None when unknown."""
    if not isinstance(name, str):
        return None
    kind = DATASETS.get(name)
    if kind is not None:
        return None if kind.prefix else kind
    head, colon, path = name.partition(":")
    kind = DATASETS.get(head)
    return kind if kind is not None and kind.prefix and colon and path else None


# ---------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------


def check_dataset(name: str, options: Mapping[str, Any] | None = None) -> None:
    """Check a dataset name and its options, names and values; the one home of these rules.

    Raises:
        SettingError: with every problem at once (owner ``dataset``), each keyed by the option it
            concerns: ``("train_size", "must be a positive integer, got -5")``, ``("colour",
            "dataset synthetic takes shape, ...")``; an unknown name is keyed ``name`` and says
            which known name is closest. Options are not checked when the name is unknown.
    """
    problems = Problems("dataset")
    kind = _lookup(name)
    if kind is None:
        problems.add("name", unknown_choice("dataset", name, KNOWN_DATASETS))
    else:
        kind.check(name, options or {}, problems)
    problems.raise_if_any()


def dataset_files(
    name: str, options: Mapping[str, Any] | None = None, root: str | os.PathLike[str] | None = None
) -> tuple[str | None, bool]:
    """What of a dataset's files is missing on this machine: ``(problem, downloads)``, where
    ``problem`` is None when the files are there (or the dataset has none, like ``synthetic``) and
    ``downloads`` says whether :func:`load_dataset` fetches them when online (torchvision's). Cheap:
    it looks at folders, it reads no data.

    Raises :class:`~repair_ray.errors.SettingError` for what :func:`check_dataset` rejects.
    """
    kind, _ = _checked(name, options)
    where = Path(root).expanduser() if root is not None else data_root()
    return kind.missing(name, where), kind.downloads


def _checked(name: str, options: Mapping[str, Any] | None) -> tuple[DatasetKind, dict[str, Any]]:
    """The kind of ``name`` and its options with defaults filled in, after :func:`check_dataset`."""
    check_dataset(name, options)
    kind = _lookup(name)
    assert kind is not None  # check_dataset raised otherwise
    return kind, {**kind.defaults, **(options or {})}


def load_dataset(
    name: str,
    *,
    root: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    workers: int | None = None,
    **options: Any,
) -> Dataset:
    """Load a dataset by name, normalised per channel: (N, C, H, W) float32 tensors in memory, or
    for a large image folder its files, streamed by DataLoader workers (:class:`ImageFiles`).

    Args:
        name: ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100`` (torchvision files under the
            data root), ``synthetic`` (generated from a seed) or ``imagefolder:<path>`` (a folder
            with ``train/<class>/*.png`` and ``test/<class>/...`` or ``val/<class>/...``).
        root: data root of the torchvision datasets; defaults to :func:`data_root`.
        device: where the tensors (or a streamed dataset's batches) end up.
        workers: DataLoader worker processes of a streamed dataset (None: this process's CPUs, at
            most 8; 0: decode in this process). A runtime setting: it changes no number and is in no key.
        options: ``synthetic``: ``shape``, ``num_classes``, ``train_size``, ``test_size``, ``seed``;
            ``imagefolder``: ``image_size``, ``load`` (auto, memory, stream), ``resize_size``,
            ``mean``, ``std``. The torchvision datasets take none.

    Raises:
        DatasetNotFoundError: the files are missing and could not be downloaded.
        CorruptImageError: an image of an image folder cannot be decoded (a ValueError naming the file).
        SettingError: an unknown name or option, or an option value :func:`check_dataset` rejects
            (a ValueError, naming each offending option).
        ValueError: ``workers`` is not None or a non-negative integer.
    """
    if workers is not None and not (is_int(workers) and workers >= 0):
        raise ValueError(f"workers must be a non-negative integer or None, got {workers!r}")
    kind, resolved = _checked(name, options)
    dataset = kind.load(name, Path(root).expanduser() if root is not None else None, resolved, workers)
    return dataset.to(device)


def dataset_options(name: str) -> tuple[str, ...]:
    """The options ``load_dataset(name, ...)`` accepts, in the order of the loader's signature.

    Raises :class:`~repair_ray.errors.SettingError` (keyed ``name``) for an unknown name.
    """
    kind, _ = _checked(name, None)
    return tuple(kind.options)


def dataset_in_shape(name: str, options: Mapping[str, Any] | None = None) -> tuple[int, int, int] | None:
    """(C, H, W) of one input of a dataset, without loading it (None when only the files tell).

    Raises :class:`~repair_ray.errors.SettingError` for what :func:`check_dataset` rejects.
    """
    kind, resolved = _checked(name, options)
    return kind.in_shape(resolved)


def dataset_num_classes(name: str, options: Mapping[str, Any] | None = None) -> int | None:
    """How many classes a dataset has, without loading it: an image folder on this machine is
    listed (its class folders; once per process), None when only missing files could tell.

    Raises :class:`~repair_ray.errors.SettingError` for what :func:`check_dataset` rejects.
    """
    kind, resolved = _checked(name, options)
    return kind.num_classes(name, resolved)


def split_sizes(name: str, options: Mapping[str, Any] | None = None) -> tuple[int, int] | None:
    """(train, test) samples of a dataset, without loading it: an image folder on this machine is
    listed (its image files, nothing decoded; once per process), None when only missing files could tell.

    Raises :class:`~repair_ray.errors.SettingError` for what :func:`check_dataset` rejects.
    """
    kind, resolved = _checked(name, options)
    return kind.split_sizes(name, resolved)


def dataset_loading(
    name: str, options: Mapping[str, Any] | None = None, root: str | os.PathLike[str] | None = None
) -> str | None:
    """``"memory"`` when :func:`load_dataset` holds the dataset as tensors, ``"stream"`` when it
    reads it from disk through DataLoader workers, None when only missing files could tell (an
    image folder with ``load: auto`` that is not on this machine). Cheap: an image folder is
    listed, nothing decoded. ``root`` is accepted for symmetry with :func:`dataset_files`; no
    dataset's loading depends on it today.

    Raises :class:`~repair_ray.errors.SettingError` for what :func:`check_dataset` rejects.
    """
    kind, resolved = _checked(name, options)
    return kind.loading(name, resolved)


__all__ = [
    "DATASETS",
    "DATA_ENV",
    "IMAGE_EXTENSIONS",
    "KNOWN_DATASETS",
    "LOADINGS",
    "CorruptImageError",
    "Dataset",
    "DatasetKind",
    "DatasetNotFoundError",
    "ImageFiles",
    "Option",
    "TensorData",
    "black_of",
    "check_dataset",
    "data_root",
    "dataset_in_shape",
    "dataset_loading",
    "dataset_num_classes",
    "dataset_files",
    "dataset_options",
    "in_memory",
    "load_dataset",
    "make_synthetic",
    "memory_only",
    "split_sizes",
]
