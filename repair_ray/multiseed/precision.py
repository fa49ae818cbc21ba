"""bfloat16 for the stacked networks' matrix products and convolutions, which autocast misses under vmap."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


class Bfloat16Matmuls(TorchFunctionMode):
    """The ops that CPU autocast runs in bfloat16 (matrix products, convolutions) get bfloat16
    inputs; batch norm of bfloat16 inputs normalises in float32 and returns bfloat16, as the
    mixed-precision kernel of a lone run does (vmap's batch-norm rule wants one dtype)."""

    LOW = {
        F.linear,
        F.bilinear,
        torch.conv1d,
        torch.conv2d,
        torch.conv3d,
        torch.conv_transpose1d,
        torch.conv_transpose2d,
        torch.conv_transpose3d,
        torch.matmul,
        torch.mm,
        torch.bmm,
        torch.addmm,
        torch.baddbmm,
        torch.Tensor.matmul,
        torch.Tensor.__matmul__,
    }

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in self.LOW:
            args, kwargs = _to_bfloat16(args), {k: _to_bfloat16(v) for k, v in kwargs.items()}
        elif func is F.batch_norm and isinstance(args[0], torch.Tensor) and args[0].dtype == torch.bfloat16:
            return func(args[0].float(), *args[1:], **kwargs).to(torch.bfloat16)
        return func(*args, **kwargs)


def _to_bfloat16(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.dtype == torch.float32:
        return value.to(torch.bfloat16)
    if isinstance(value, (list, tuple)):
        return type(value)(_to_bfloat16(v) for v in value)
    return value
