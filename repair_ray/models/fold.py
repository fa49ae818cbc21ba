"""BatchNorm folded into the layer before it: a trained BatchNorm net as the plain net it computes.

The REPAIR paper's depth sweep of MNIST MLPs (``Train-and-Permute-MNIST-MLP-BatchNorm.ipynb``)
trains each MLP with BatchNorm and then fuses every BatchNorm into the preceding linear layer
(``fuse_fc_bn``) before matching, interpolating and repairing: every experiment sees a plain MLP.
:func:`fold_batchnorm` is that step for any network whose BatchNorms each directly follow a linear
or convolution layer used nowhere else.
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with every BatchNorm folded into the layer that feeds it.

    Each BatchNorm ``y = γ (z - μ) / sqrt(σ² + ε) + β`` of ``z = W x + b`` becomes the layer
    ``W' = W · γ/sqrt(σ² + ε)``, ``b' = β + (b - μ) · γ/sqrt(σ² + ε)`` (a bias is added where the
    layer had none) and the BatchNorm an ``nn.Identity``: in eval mode the copy computes what the
    model computes, up to float rounding. Its permutation spec must be derived from the copy
    (:func:`repair_ray.permutation_spec` with an example input): the BatchNorms are gone.

    Raises:
        ValueError: naming a BatchNorm that does not directly follow a linear or convolution
            layer whose output only it reads (it cannot be folded), or one without running statistics.
    """
    folded = copy.deepcopy(model).eval()
    graph = fx.symbolic_trace(folded).graph
    modules = dict(folded.named_modules())
    pairs: list[tuple[str, str]] = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], _BATCHNORMS):
            continue
        source = node.args[0] if node.args else None
        if not (
            isinstance(source, fx.Node)
            and source.op == "call_module"
            and isinstance(modules[source.target], (nn.Linear, *_CONVS))
            and len(source.users) == 1
        ):
            raise ValueError(
                f"cannot fold BatchNorm {node.target!r}: it does not directly follow a linear or convolution "
                "layer whose output only it reads"
            )
        pairs.append((str(source.target), str(node.target)))
    for layer_name, norm_name in pairs:
        layer, norm = modules[layer_name], modules[norm_name]
        if norm.running_mean is None or norm.running_var is None:
            raise ValueError(f"cannot fold BatchNorm {norm_name!r}: it keeps no running statistics")
        scale = torch.rsqrt(norm.running_var.double() + norm.eps)
        if norm.weight is not None:
            scale = scale * norm.weight.double()
        bias = layer.bias.double() if layer.bias is not None else torch.zeros_like(scale)
        shift = (bias - norm.running_mean.double()) * scale
        if norm.bias is not None:
            shift = shift + norm.bias.double()
        weight = layer.weight.double() * scale.view(-1, *([1] * (layer.weight.dim() - 1)))
        layer.weight.copy_(weight.to(layer.weight.dtype))
        if layer.bias is None:
            layer.bias = nn.Parameter(shift.to(layer.weight.dtype))
        else:
            layer.bias.copy_(shift.to(layer.bias.dtype))
        folded.set_submodule(norm_name, nn.Identity())
    return folded


def fold_problem(model: nn.Module) -> str | None:
    """Why :func:`fold_batchnorm` cannot fold ``model`` (no BatchNorm, or one that cannot be folded); None if it can."""
    if not any(isinstance(m, _BATCHNORMS) for m in model.modules()):
        return "it has no BatchNorm to fold"
    try:
        fold_batchnorm(model)
    except (ValueError, RuntimeError, TypeError, fx.proxy.TraceError) as error:
        return str(error)
    return None


__all__ = ["fold_batchnorm", "fold_problem"]
