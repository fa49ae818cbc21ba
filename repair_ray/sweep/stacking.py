"""How many seeds of a model config one trial trains together (``train.seeds_per_trial: auto``).

Estimated on the meta device (no memory, no compute). This module imports no Ray.
"""

from __future__ import annotations

import math
from typing import Any

from ..datasets import dataset_in_shape, dataset_num_classes
from ..models import ModelConfig
from ..training import TrainConfig
from .plans import ModelPlan

# What ``train.seeds_per_trial: auto`` assumes of a GPU it cannot see (the driver may have none):
# the memory of the smallest common datacenter GPU (T4, V100-16GB), unless resources.train.gpu_memory
# says otherwise, of which the stacked seeds may take half (the dataset, workspaces and the
# allocator's slack share the rest).
DEFAULT_GPU_MEMORY_GIB = 16.0
STACK_MEMORY_SHARE = 0.5
# Fewer seeds to a trial than this train alone: on an H200 one seed in the stacked loop runs at 0.62x
# of a lone run, 16 at 6-8.5x per seed, and 6 seeds in 3 trials of 2 (27 s) lost to 6 lone trials (20 s)
MIN_STACK = 4


def training_bytes_per_seed(model: ModelConfig, train: TrainConfig, in_shape: tuple[int, ...], classes: int) -> int:
    """GPU memory one more seed adds to a stack, estimated on the meta device (no memory, no compute).

    Its weights, gradients and optimizer state (SGD with momentum: one copy, Adam: two) in float32,
    its batch of inputs, and every module output of one batch, as autograd keeps them for the
    backward pass (an upper bound: in-place activations keep less).
    """
    import torch

    net = model.skeleton(classes, in_shape)
    params = sum(p.numel() for p in net.parameters())
    states = 2 if train.optimizer == "adam" else (1 if train.momentum else 0)
    outputs: list[int] = []
    leaves = [m for m in net.modules() if not list(m.children())]
    handles = [m.register_forward_hook(lambda _m, _i, out: outputs.append(_numel(out))) for m in leaves]
    try:
        device = next(iter(net.parameters()), torch.empty(0)).device
        net.train()(torch.zeros(train.batch_size, *in_shape, device=device))
    finally:
        for handle in handles:
            handle.remove()
    inputs = train.batch_size * math.prod(in_shape)
    return 4 * (params * (2 + states) + inputs + sum(outputs))


def _numel(out: object) -> int:
    import torch

    return out.numel() if isinstance(out, torch.Tensor) else 0


def has_convolutions(model: ModelConfig, in_shape: tuple[int, ...], classes: int) -> bool:
    """Whether the network convolves (its stacked training is vmap's grouped convolutions)."""
    from torch import nn

    return any(isinstance(m, nn.modules.conv._ConvNd) for m in model.skeleton(classes, in_shape).modules())


def stack_size(
    plan: ModelPlan,
    train: TrainConfig,
    dataset: dict[str, Any],
    *,
    seeds_per_trial: int | None,
    gpu: float,
    gpu_memory_gib: float | None = None,
    per_slot: int | None = None,
) -> int:
    """How many seeds of ``plan`` one trial trains together.

    An explicit ``seeds_per_trial`` is kept. ``None`` (``auto``): 1 where trials get no GPU (a CPU
    core is already busy with one network: today's lone trials) and for networks that convolve (a
    lone ResNet20 x4 already keeps an H200 busy, 45,000 images/s in bf16, and vmap's stacked
    convolutions are slower there); otherwise as many seeds as fit in the trial's share of GPU
    memory (``gpu`` x ``gpu_memory_gib``, default :data:`DEFAULT_GPU_MEMORY_GIB`, of which
    :data:`STACK_MEMORY_SHARE`), and no more than ``per_slot`` (the seeds to train over the trials
    the cluster runs at once: a stack must not leave the other slots idle), spread evenly over as
    few trials as that allows (100 seeds that fit 40 to a trial: 34 + 33 + 33). Measured on an
    H200, 64 narrow MLPs train 13-21x faster per seed together than one at a time, but 6 seeds in
    one trial on a quarter of the GPU took twice as long as 4 parallel trials (BENCHMARKS.md); stacks
    smaller than :data:`MIN_STACK` are not worth it, so those seeds train alone.
    """
    if seeds_per_trial is not None:
        return seeds_per_trial
    seeds = len(plan.seeds)
    if gpu <= 0 or seeds < 2:
        return 1
    in_shape = dataset_in_shape(dataset["name"], dataset.get("options")) or (3, 224, 224)
    classes = dataset_num_classes(dataset["name"], dataset.get("options")) or 1000
    if has_convolutions(plan.model, in_shape, classes):
        return 1
    budget = STACK_MEMORY_SHARE * min(gpu, 1.0) * (gpu_memory_gib or DEFAULT_GPU_MEMORY_GIB) * 2**30
    fit = max(1, int(budget // training_bytes_per_seed(plan.model, train, in_shape, classes)))
    fit = min(fit, per_slot or fit)
    if fit < MIN_STACK:
        return 1
    trials = math.ceil(seeds / fit)
    return math.ceil(seeds / trials)
