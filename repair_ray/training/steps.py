"""The pieces of a training step that the lone loop (:class:`~repair_ray.training.Trainer`) and the
stacked one (:mod:`repair_ray.multiseed`) share: the optimizer, the augmentation, ``torch.compile``
that never falls back silently, and the CUDA kernel switches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .config import TrainConfig


def make_optimizer(config: TrainConfig, params: Iterable[torch.Tensor], **options: Any) -> torch.optim.Optimizer:
    """The optimizer of ``config`` (SGD or Adam, coupled weight decay) over ``params``; ``options``
    (e.g. ``foreach``) go to its constructor. Its learning rate is set before every step."""
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, **options)
    return torch.optim.SGD(
        params,
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
        **options,
    )


def use_fast_cuda_kernels() -> None:
    """TF32 matmuls and convolutions, and cuDNN autotuning (the fastest kernel per shape, chosen on
    the first batches), for training on NVIDIA GPUs (Ampere and newer run TF32 on tensor cores).

    Both trade bit-exactness for speed: a run resumed on CUDA is then equal to an uninterrupted one
    up to float rounding, not bit for bit (on the CPU it stays bit for bit).
    """
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True


@dataclass(frozen=True)
class Augmentation:
    """What training does to inputs held in memory, as data: ``kind`` (``crop_flip`` or
    ``translate``, :meth:`TrainConfig.augmentation`) padded with ``fill`` (:meth:`TrainConfig.pad_fill`),
    so that others (a pair's statistics, ``eval.stat_augment``) can augment as the training did."""

    kind: str
    fill: tuple[float, ...] | None = None

    @staticmethod
    def of(
        config: TrainConfig, in_shape: tuple[int, ...], black: tuple[float, ...] | None, dataset: str = "the dataset"
    ) -> Augmentation | None:
        """The augmentation ``config`` trains inputs of ``in_shape`` held in memory with (None: none)."""
        kind = config.augmentation(in_shape)
        return None if kind is None else Augmentation(kind, config.pad_fill(black, dataset))

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``x`` augmented by draws from ``generator`` (:func:`augment_batch`)."""
        return augment_batch(x, generator, flips=self.kind == "crop_flip", fill=self.fill)


def augment_batch(
    x: torch.Tensor,
    generator: torch.Generator,
    *,
    padding: int = 4,
    flips: bool = True,
    fill: Sequence[float] | None = None,
) -> torch.Tensor:
    """Random crops (``padding`` pixels of padding) and horizontal flips, per sample, in one gather.

    ``flips=False``: crops only, i.e. random translations by up to ``padding`` pixels (no flip is drawn).
    ``fill``: each channel's value of the padding (:meth:`TrainConfig.pad_fill`: a black pixel,
    normalised); None pads with 0, the normalised mean.

    The random offsets and flips are drawn on the CPU from ``generator`` whatever the device of
    ``x``, so the augmentation is the same on every device. On CUDA they travel through pinned memory
    without blocking (a copy from pageable memory would wait for the GPU's queue to drain every step).
    It is :func:`draw_augmentation` then :func:`apply_augmentation`.
    """
    draws = draw_augmentation(len(x), generator, padding=padding, flips=flips)
    return apply_augmentation(x, draws, padding=padding, fill=fill)


def draw_augmentation(
    n: int, generator: torch.Generator, *, padding: int = 4, flips: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """The random draws of :func:`augment_batch` for ``n`` samples, on the CPU: crop offsets ``(2, n)``
    in ``[0, 2 * padding]`` (rows, columns) and flips ``(n,)`` (all False, none drawn, without ``flips``).

    Drawn apart from their use so that a data-parallel process can draw a whole global batch's (the
    generator advancing exactly as in one process) and apply only its own slice of them.
    """
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5 if flips else torch.zeros(n, dtype=torch.bool)
    return offsets, flip


def apply_augmentation(
    x: torch.Tensor,
    draws: tuple[torch.Tensor, torch.Tensor],
    *,
    padding: int = 4,
    fill: Sequence[float] | None = None,
) -> torch.Tensor:
    """``x`` (N, C, H, W) cropped and flipped by ``draws`` (:func:`draw_augmentation` of N samples), in
    one gather; the padding is ``fill`` per channel (None: 0)."""
    n, channels, height, width = x.shape
    offsets, flip = (_to_device(draw, x.device) for draw in draws)
    if offsets.shape != (2, n) or flip.shape != (n,):
        raise ValueError(f"augmentation draws of {flip.shape[0]} samples for a batch of {n}")
    padded = pad_with(x, padding, fill)
    rows = offsets[0, :, None] + torch.arange(height, device=x.device)
    columns = torch.arange(width, device=x.device)
    columns = torch.where(flip[:, None], width - 1 - columns, columns) + offsets[1, :, None]
    return padded[
        torch.arange(n, device=x.device)[:, None, None, None],
        torch.arange(channels, device=x.device)[None, :, None, None],
        rows[:, None, :, None],
        columns[:, None, None, :],
    ]


def pad_with(x: torch.Tensor, padding: int, fill: Sequence[float] | None) -> torch.Tensor:
    """``x`` (N, C, H, W) with ``padding`` pixels on every side of value ``fill[c]`` in channel c
    (None: 0); the inside is ``x`` exactly."""
    if fill is None:
        return F.pad(x, (padding, padding, padding, padding))
    n, channels, height, width = x.shape
    if len(fill) != channels:
        raise ValueError(f"a padding value per channel: {len(fill)} for {channels} channels")
    values = torch.tensor([float(v) for v in fill], dtype=x.dtype).to(x.device).view(1, channels, 1, 1)
    padded = values.expand(n, channels, height + 2 * padding, width + 2 * padding).clone()
    padded[:, :, padding : padding + height, padding : padding + width] = x
    return padded


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor on ``device``: on CUDA an asynchronous copy from pinned memory (the pinned buffer is
    kept alive by the copy's stream), elsewhere a plain ``to``."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


# dynamo's switch (and error) for "raise instead of running eager once the recompile limit is hit", by torch version
_FAIL_ON_LIMIT = ("fail_on_recompile_limit_hit", "fail_on_cache_limit_hit")
_LIMIT_ERRORS = ("FailOnRecompileLimitHit", "FailOnCacheLimitHit")


class CompileError(RuntimeError):
    """``torch.compile`` could not compile the training step's network (``compile=True``)."""


def compiled(forward: Callable[..., Any], what: str) -> Callable[..., Any]:
    """``torch.compile(forward)`` whose compilation errors raise :class:`CompileError` naming ``what``
    (compilation happens at the first calls): a run asked to compile never falls back to eager silently,
    neither when it cannot compile nor when dynamo's recompile limit is hit (a worker that compiled the
    same code for many shapes)."""
    import torch._dynamo

    program = torch.compile(forward)
    config = torch._dynamo.config
    strict = next((k for k in _FAIL_ON_LIMIT if hasattr(config, k)), None)
    failures: tuple[type[BaseException], ...] = (torch._dynamo.exc.TorchDynamoException,) + tuple(
        getattr(torch._dynamo.exc, name) for name in _LIMIT_ERRORS if hasattr(torch._dynamo.exc, name)
    )

    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            with config.patch(strict, True) if strict else contextlib.nullcontext():
                return program(*args, **kwargs)
        except failures as error:
            reason = (str(error).strip().splitlines() or [""])[0]
            raise CompileError(
                f"torch.compile of {what} failed ({type(error).__name__}: {reason}); "
                "train it without compile (train.compile: false)"
            ) from error

    return call
