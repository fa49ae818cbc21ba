"""Global magnitude pruning for iterative magnitude pruning (IMP) with rewinding (lottery tickets).

Frankle et al. (2020), as open_lth does it: the prunable weights are the ``weight`` tensors of the
convolutions and linear layers (not biases, not normalisation parameters); each round removes a
fraction of the weights that survive, those of smallest magnitude over the whole network (global,
not per layer). A mask is ``{parameter name: bool tensor}`` (True = kept) over the prunable weights.

Pruning removes an exact number of weights (``round(rate * surviving)``), ties broken by position,
so the sparsity of round ``r`` depends only on the network's shape and ``rate``
(:func:`imp_sparsity`), never on its values.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

Mask = dict[str, torch.Tensor]

PRUNABLE_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def prunable_names(model: nn.Module) -> list[str]:
    """The parameter names of the prunable weights of ``model`` (conv and linear ``weight``), in order."""
    return [
        f"{name}.weight" if name else "weight"
        for name, module in model.named_modules()
        if isinstance(module, PRUNABLE_MODULES) and getattr(module, "weight", None) is not None
    ]


def prunable_count(model: nn.Module) -> int:
    """How many prunable weights ``model`` has (works on the meta device)."""
    params = dict(model.named_parameters())
    return sum(params[name].numel() for name in prunable_names(model))


def dense_mask(model: nn.Module) -> Mask:
    """A mask that keeps every prunable weight (round 0 of IMP)."""
    params = dict(model.named_parameters())
    return {name: torch.ones_like(params[name], dtype=torch.bool, device="cpu") for name in prunable_names(model)}


def magnitude_prune(weights: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor], rate: float) -> Mask:
    """The next IMP mask: drop ``round(rate * kept)`` of the weights ``mask`` keeps, those of smallest
    ``|weight|`` over all of ``mask``'s tensors together (global magnitude pruning).

    ``weights`` maps at least ``mask``'s names to tensors of the same shapes (a state dict). Ties in
    magnitude are broken by position (stable sort), so the result is deterministic.
    """
    if not 0.0 < rate < 1.0:
        raise ValueError(f"the pruning rate must be between 0 and 1 (exclusive), got {rate}")
    missing = [name for name in mask if name not in weights]
    if missing:
        raise KeyError(f"the weights lack the masked tensor(s) {', '.join(missing)}")
    names = list(mask)
    for name in names:
        if tuple(weights[name].shape) != tuple(mask[name].shape):
            raise ValueError(
                f"{name}: the weights have shape {tuple(weights[name].shape)}, the mask {tuple(mask[name].shape)}"
            )
    keep = torch.cat([mask[n].detach().cpu().reshape(-1).bool() for n in names])
    magnitude = torch.cat([weights[n].detach().cpu().float().abs().reshape(-1) for n in names])
    surviving = keep.nonzero().squeeze(1)
    drop = round(rate * len(surviving))
    order = torch.sort(magnitude[surviving], stable=True).indices
    keep = keep.clone()
    keep[surviving[order[:drop]]] = False
    out, start = {}, 0
    for name in names:
        size = mask[name].numel()
        out[name] = keep[start : start + size].reshape(mask[name].shape).clone()
        start += size
    return out


def mask_sparsity(mask: Mapping[str, torch.Tensor]) -> float:
    """The fraction of the masked weights that ``mask`` removes."""
    total = sum(m.numel() for m in mask.values())
    kept = sum(int(m.sum()) for m in mask.values())
    return 1.0 - kept / total if total else 0.0


def weight_sparsity(model_or_state: nn.Module | Mapping[str, torch.Tensor], names: list[str] | None = None) -> float:
    """The fraction of the prunable weights (or of the tensors ``names``) that are exactly zero."""
    state: dict[str, torch.Tensor]
    if isinstance(model_or_state, nn.Module):
        names = prunable_names(model_or_state) if names is None else names
        state = dict(model_or_state.named_parameters())
    else:
        if names is None:
            raise ValueError("give the prunable names with a state dict")
        state = dict(model_or_state)
    total = sum(state[n].numel() for n in names)
    zeros = sum(int((state[n] == 0).sum()) for n in names)
    return zeros / total if total else 0.0


def imp_sparsity(prunable: int, round_: int, rate: float) -> float:
    """The sparsity of IMP round ``round_`` (0 = dense) of a network with ``prunable`` prunable
    weights, each round removing ``round(rate * surviving)`` of them (what :func:`magnitude_prune` does)."""
    kept = prunable
    for _ in range(round_):
        kept -= round(rate * kept)
    return 1.0 - kept / prunable if prunable else 0.0


@torch.no_grad()
def apply_mask(
    model: nn.Module, mask: Mapping[str, torch.Tensor], optimizer: torch.optim.Optimizer | None = None
) -> None:
    """Zero the weights ``mask`` removes (in place) and, with ``optimizer``, their per-weight state
    (momentum, Adam's moments), so a rewound network starts with nothing of the pruned weights."""
    params = dict(model.named_parameters())
    unknown = [name for name in mask if name not in params]
    if unknown:
        raise KeyError(f"the mask names parameters the network lacks: {', '.join(unknown)}")
    for name, keep in mask.items():
        param = params[name]
        keep = keep.to(param.device)
        param.mul_(keep)
        if optimizer is not None:
            for value in optimizer.state.get(param, {}).values():
                if isinstance(value, torch.Tensor) and value.shape == param.shape:
                    value.mul_(keep)
