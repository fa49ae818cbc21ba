"""What one training run does: :class:`TrainConfig`, its hyperparameters, checked when made.

Torch-free: the sweep's config schema derives its ``train`` section from these fields.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import Problems, is_int, is_real

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("linear", "cosine", "constant")
PRECISIONS = ("fp32", "bf16")
PADS = ("black", "mean")
# Fields added to TrainConfig after runs were named by it: left out of a run's identity (its model key,
# its checkpoints' meta) at these defaults, so every run made before them keeps its key and checkpoints.
_LATER_FIELDS = {"precision": "fp32", "sync_batchnorm": False}


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one training run.

    The learning rate changes every step: a linear warm-up from 0 over ``warmup_epochs``, then
    ``linear`` decay to 0, ``cosine`` decay to 0, or ``constant``. ``augment=None`` turns on
    random crops (4-pixel padding) and horizontal flips for RGB inputs of at least 32x32;
    ``True``/``False`` force them on or off; ``"translate"`` shifts each input by up to 4 pixels
    without flips (the REPAIR notebooks' ``RandomTranslate(padding=4)`` for MNIST).
    ``weight_decay`` is coupled L2 for both optimizers (``torch.optim.SGD`` / ``Adam``).
    ``precision="bf16"`` runs each training step's forward pass and loss under bfloat16 autocast
    (weights, gradients and optimizer state stay float32; evaluation is float32).
    ``pad``: what a crop or translation fills the border with: ``black`` (a raw pixel 0, the
    normalised value ``-mean / std`` per channel: the papers' loaders, FFCV ``RandomTranslate`` and
    torchvision ``RandomCrop(padding=4)`` before ``Normalize``) or ``mean`` (a normalised 0, the
    dataset's mean colour: what runs trained before this field padded with). Streamed data crops
    with ``RandomResizedCrop``, which never pads.
    ``sync_batchnorm=True`` makes a network trained by several data-parallel processes normalise
    with the BatchNorm statistics of the whole global batch (``torch.nn.SyncBatchNorm``) instead of
    each process's slice of it; it changes nothing for one process, and needs GPUs (PyTorch's
    SyncBatchNorm refuses CPU tensors).
    """

    epochs: int = 10
    batch_size: int = 256
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.0
    schedule: str = "linear"
    label_smoothing: float = 0.0
    augment: bool | str | None = None
    precision: str = "fp32"
    sync_batchnorm: bool = False
    pad: str = "black"

    def identity(self, in_shape: tuple[int, ...]) -> dict[str, Any]:
        """The fields that name a run on inputs of ``in_shape`` (model keys, checkpoint meta): all
        of them, but those added later left out at their defaults (so older runs keep their keys
        and checkpoints). ``pad`` came later with a new default: ``mean`` (what every older run
        did) is left out, and ``black`` too where nothing is augmented (nothing is padded), so
        only augmented runs padded with black get new keys."""
        fields = asdict(self)
        for name, default in _LATER_FIELDS.items():
            if fields.get(name) == default:
                fields.pop(name)
        if self.pad == "mean" or not self.uses_augmentation(in_shape):
            fields.pop("pad")
        return fields

    def __post_init__(self) -> None:
        problems = Problems("TrainConfig")

        def check(field: str, ok: bool, expected: str) -> None:
            if not ok:
                problems.add(field, f"must be {expected}, got {getattr(self, field)!r}")

        check("epochs", is_int(self.epochs) and self.epochs >= 0, "a non-negative integer")
        check("batch_size", is_int(self.batch_size) and self.batch_size >= 1, "a positive integer")
        check("optimizer", self.optimizer in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}")
        check("schedule", self.schedule in SCHEDULES, f"one of {', '.join(SCHEDULES)}")
        check("lr", is_real(self.lr) and self.lr > 0 and math.isfinite(self.lr), "a positive number")
        check("momentum", is_real(self.momentum) and 0 <= self.momentum < 1, "in [0, 1)")
        check(
            "nesterov",
            not self.nesterov or (self.optimizer == "sgd" and self.momentum != 0),
            "False unless optimizer is sgd with momentum > 0",
        )
        check(
            "weight_decay",
            is_real(self.weight_decay) and self.weight_decay >= 0 and math.isfinite(self.weight_decay),
            "a non-negative number",
        )
        check(
            "warmup_epochs",
            is_real(self.warmup_epochs) and (not is_real(self.epochs) or 0 <= self.warmup_epochs <= self.epochs),
            f"between 0 and epochs ({self.epochs})",
        )
        check("label_smoothing", is_real(self.label_smoothing) and 0 <= self.label_smoothing < 1, "in [0, 1)")
        check(
            "augment",
            self.augment is None or isinstance(self.augment, bool) or self.augment == "translate",
            "true, false, translate or null (automatic)",
        )
        check("precision", self.precision in PRECISIONS, f"one of {', '.join(PRECISIONS)}")
        check("sync_batchnorm", isinstance(self.sync_batchnorm, bool), "true or false")
        check("pad", self.pad in PADS, f"one of {', '.join(PADS)}")
        problems.raise_if_any()

    def uses_augmentation(self, in_shape: tuple[int, ...]) -> bool:
        """Whether inputs of ``in_shape`` are augmented (``augment``, or automatic when None)."""
        return self.augmentation(in_shape) is not None

    def pad_fill(self, black: tuple[float, ...] | None, dataset: str = "the dataset") -> tuple[float, ...] | None:
        """What :func:`augment_batch` pads with: ``black`` (each channel's normalised black, the
        dataset's :attr:`~repair_ray.datasets.Dataset.black`) for ``pad: black``, None (a normalised
        0) for ``pad: mean``.

        Raises:
            ValueError: ``pad: black`` and the dataset does not say where black lies.
        """
        if self.pad == "mean":
            return None
        if black is None:
            raise ValueError(
                f"train.pad: black needs the normalised value of a black pixel, which {dataset} does not "
                "give (Dataset.black); pad: mean pads with its mean colour"
            )
        return black

    def augmentation(self, in_shape: tuple[int, ...]) -> str | None:
        """``"crop_flip"``, ``"translate"`` or None: what :func:`augment_batch` does to inputs of ``in_shape``."""
        if self.augment == "translate":
            return "translate"
        if self.augment is not None:
            return "crop_flip" if self.augment else None
        channels, height, width = in_shape
        return "crop_flip" if channels == 3 and height >= 32 and width >= 32 else None
