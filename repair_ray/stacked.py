"""Several interpolated networks as one program: the α grid of a pair evaluated many points per pass.

On a GPU the curve of a small network costs launches and Python, not arithmetic: an MLP's forward
pass over 1,000 samples is microseconds of work behind tens of microseconds of overhead, once per
α, per batch, per correction. :class:`AlphaStack` holds the interpolated networks θ(α) of several
α as stacked tensors (one leading dimension, one network per α) and runs them as ONE program,
``torch.func.vmap`` over ``functional_call`` of the architecture, so every batch of samples passes
through all of them at once.

RESET, REPAIR and evaluation do per network exactly what :mod:`repair_ray.correction` and
:func:`repair_ray.interpolation.evaluate` do for one: the same batches, the same per-batch
renormalisation, the same float64 statistics, the same folding into the weights and the same
carried affines. The rows are therefore the same up to float rounding (batched matrix products
and grouped convolutions sum in another order); ``tests/test_stacked.py`` compares them with the
one-α-at-a-time path.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from .correction import batchnorm_names, safe_scale
from .datasets import ImageFiles, TensorData
from .hooks import ChannelMoments, Moments, channel_view, channels_last_2d

# A pass should carry at least this much arithmetic before more α join it: below, a GPU waits on
# launches (an H200 does ~50 TFLOP/s in fp32, a pass costs ~1 ms of launches and Python).
TARGET_PASS_FLOPS = 50e9
# ... and the stacked networks with their activations may take at most this share of free memory
MEMORY_SHARE = 0.5

Sums = tuple[torch.Tensor, torch.Tensor]  # per-channel sum and sum of squares (float64)


def interpolated_tensors(
    model: nn.Module, state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor], alphas: Sequence[float]
) -> dict[str, torch.Tensor]:
    """The parameters and buffers of θ(α) for each α, stacked along a new first dimension
    (:func:`~repair_ray.interpolation.interpolate_states`); buffers outside the state dict
    (non-persistent ones) are ``model``'s own."""
    from .interpolation import interpolate_states

    stacked = interpolate_states(state_a, state_b, alphas)
    for name, tensor in (*model.named_parameters(), *model.named_buffers()):
        if name not in stacked:
            stacked[name] = tensor.detach().unsqueeze(0).expand(len(alphas), *tensor.shape).clone()
    return stacked


class AlphaStack:
    """K networks of one architecture (the interpolations at K values of α), run as one vmapped program.

    ``skeleton`` is the architecture (any module of it: it is copied to the meta device and only
    its code runs); ``tensors`` every parameter and buffer, stacked (see :func:`interpolated_tensors`).
    """

    def __init__(self, skeleton: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
        self.skeleton = skeleton if _on_meta(skeleton) else copy.deepcopy(skeleton).to("meta")
        self.tensors = tensors
        self.size = len(next(iter(tensors.values())))
        self.modules = dict(self.skeleton.named_modules())
        self._state: dict = {}

    @torch.no_grad()
    def correct(
        self,
        data: TensorData | ImageFiles,
        *,
        reset: bool,
        targets: Mapping[str, Sequence[Moments]] | None,
        batch_size: int,
        axes: Mapping[str, int] | None = None,
        carried: frozenset[str] = frozenset(),
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """RESET (``reset``) and REPAIR (``targets``: per point, each network's target moments) of
        every network in one pass over ``data``: per network what ``correction._corrective_pass`` does.

        BatchNorm running statistics become the exact moments of their inputs; REPAIR points get
        their affine folded into their weight and bias. Returns the affines of the ``carried``
        points, (scale, shift) as [K, C] tensors, for :meth:`evaluate`.
        """
        axes = dict(axes or {})
        bns = batchnorm_names(self.skeleton) if reset else []
        want = {name: _stacked_moments(moments) for name, moments in (targets or {}).items()}
        # a BatchNorm can be a REPAIR point too: its input ("in:") and output ("out:") sums are apart
        sums = {key: ChannelMoments() for key in [*(f"in:{n}" for n in bns), *(f"out:{n}" for n in want)]}

        def renormalise(name: str, y: torch.Tensor) -> torch.Tensor:
            axis = axes.get(name, 1)
            flat = channels_last_2d(y, axis)
            self._collect(f"out:{name}", flat)
            mean, std = flat.mean(0), flat.std(0, unbiased=False)
            target_mean, target_std = self._state["extra"][name]
            scale = safe_scale(target_std, std.double()).to(y.dtype)
            shift = target_mean.to(y.dtype) - scale * mean
            return y * channel_view(scale, y, axis) + channel_view(shift, y, axis)

        def record_input(name: str, x: torch.Tensor) -> None:
            self._collect(f"in:{name}", channels_last_2d(x, 1))

        extra = {name: (m.mean, m.std) for name, m in want.items()}
        self.skeleton.eval()
        for name in bns:
            self.modules[name].train()  # each batch normalised by its own statistics, as in RESET
        try:
            passes = self._passes(data, batch_size, extra, renormalise, list(want), record_input, bns)
            for collected, _logits, _y in passes:
                for key, (total, total_sq, count) in collected.items():
                    sums[key].add(total, total_sq, count)
        finally:
            self.skeleton.eval()
        for name in bns:
            acc = sums[f"in:{name}"]
            for buffer, value in ((f"{name}.running_mean", acc.mean), (f"{name}.running_var", acc.var)):
                self.tensors[buffer].copy_(value.to(self.tensors[buffer].dtype))
            if f"{name}.num_batches_tracked" in self.tensors:
                self.tensors[f"{name}.num_batches_tracked"].fill_(0)
        out = {}
        for name, target in want.items():
            raw = sums[f"out:{name}"]
            scale = safe_scale(target.std, raw.std)
            shift = target.mean - scale * raw.mean
            if name in carried:
                out[name] = (scale, shift)
            else:
                self._fold(name, scale, shift)
        return out

    @torch.no_grad()
    def evaluate(
        self,
        data: TensorData | ImageFiles,
        *,
        batch_size: int,
        carried: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
        axes: Mapping[str, int] | None = None,
        record: tuple[Sequence[str], int, int] | None = None,
        flip: bool = False,
    ) -> tuple[list[dict[str, float]], dict[str, list[Moments]]]:
        """Each network's mean cross-entropy ``loss`` and ``acc`` on ``data`` (eval mode), as
        :func:`~repair_ray.interpolation.evaluate` gives them, with ``carried`` affines applied.

        ``record`` = (points, start, stop): also the moments of those points' outputs over samples
        ``[start, stop)`` of the pass, in every network (a :class:`~repair_ray.hooks.MomentRecorder`).
        ``flip``: flip test-time augmentation (:func:`~repair_ray.interpolation.flip_averaged`
        logits), as ``evaluate(..., flip=True)``; not with ``record``.
        """
        if flip and record is not None:
            raise ValueError("AlphaStack.evaluate cannot record statistics with flip: each sample would pass twice")
        axes = dict(axes or {})
        carried = dict(carried or {})
        points, start, stop = record if record is not None else ((), 0, 0)
        recorded: dict[str, ChannelMoments] = {name: ChannelMoments() for name in points}

        def on_output(name: str, y: torch.Tensor) -> torch.Tensor:
            axis = axes.get(name, 1)
            if name in carried:
                scale, shift = self._state["extra"][name]
                y = y * channel_view(scale, y, axis) + channel_view(shift, y, axis)
            if name in recorded:
                first = self._state["offset"]
                lo, hi = max(start - first, 0), min(stop - first, y.shape[0])
                if hi > lo:
                    self._collect(f"out:{name}", channels_last_2d(y[lo:hi], axis))
            return y

        total_loss = torch.zeros(self.size, dtype=torch.float64, device=data.device)
        correct = torch.zeros(self.size, dtype=torch.int64, device=data.device)
        names = list(dict.fromkeys([*carried, *recorded]))
        self.skeleton.eval()
        for collected, logits, y in self._passes(data, batch_size, carried, on_output, names, flip=flip):
            per_sample = F.cross_entropy(logits.float().flatten(0, 1), y.repeat(self.size), reduction="none")
            total_loss += per_sample.view(self.size, -1).sum(1).double()
            correct += (logits.argmax(-1) == y).sum(1)
            for key, (total, total_sq, count) in collected.items():
                recorded[key.split(":", 1)[1]].add(total, total_sq, count)
        n = max(len(data), 1)
        losses, hits = (total_loss / n).tolist(), correct.tolist()
        metrics = [{"loss": loss, "acc": hit / n} for loss, hit in zip(losses, hits, strict=True)]
        short = [name for name, acc in recorded.items() if acc.count < stop - start]
        if short:
            raise ValueError(f"only {recorded[short[0]].count} of {stop - start} samples reached {short[0]!r}")
        moments = {name: [Moments(acc.mean[k], acc.std[k]) for k in range(self.size)] for name, acc in recorded.items()}
        return metrics, moments

    def _collect(self, key: str, flat: torch.Tensor) -> None:
        """Sums of a [samples, C] output of the network being traced (returned through the vmapped program)."""
        flat = flat.double()
        self._state["collected"][key] = (flat.sum(0), (flat * flat).sum(0))
        self._state["counts"][key] = flat.shape[0]  # the same in every network: a plain int, no sync

    def _passes(
        self,
        data: TensorData | ImageFiles,
        batch_size: int,
        extra: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
        on_output: Callable[[str, torch.Tensor], torch.Tensor | None],
        outputs: Sequence[str],
        on_input: Callable[[str, torch.Tensor], None] | None = None,
        inputs: Sequence[str] = (),
        *,
        flip: bool = False,
    ) -> Iterator[tuple[dict[str, tuple[torch.Tensor, torch.Tensor, int]], torch.Tensor, torch.Tensor]]:
        """Every network on every batch of ``data``: (what the hooks collected, logits [K, B, classes], labels).

        ``on_output(name, y)`` sees (and may replace) each named module's output, ``on_input`` each
        named module's input, both per network; ``extra`` holds per-network tensors ([K, ...]) the
        hooks read as ``self._state["extra"]`` (inside the program: one network's slice). ``flip``:
        the logits are :func:`~repair_ray.interpolation.flip_averaged` (what the hooks collected is
        the unflipped pass's).
        """
        state = self._state

        def program(tensors: dict, extra: dict, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
            state["extra"], state["collected"], state["counts"] = extra, {}, {}
            logits = functional_call(self.skeleton, tensors, (x,))
            return logits, state["collected"]

        run = vmap(program, in_dims=(0, 0, None))
        with self._hooks(outputs, on_output, inputs, on_input):
            state["offset"] = 0
            for x, y in data.batches(batch_size):
                logits, collected = run(self.tensors, dict(extra), x)
                counts = state["counts"]
                if flip:
                    mirrored, _ = run(self.tensors, dict(extra), x.flip(-1))
                    logits = (logits + mirrored) / 2  # flip_averaged's arithmetic, per network
                yield {k: (s, ss, counts[k]) for k, (s, ss) in collected.items()}, logits, y
                state["offset"] += len(y)
        state.clear()

    @contextmanager
    def _hooks(
        self,
        outputs: Sequence[str],
        on_output: Callable[[str, torch.Tensor], torch.Tensor | None],
        inputs: Sequence[str],
        on_input: Callable[[str, torch.Tensor], None] | None,
    ) -> Iterator[None]:
        handles = []
        try:
            for name in outputs:
                if name not in self.modules:
                    raise KeyError(f"model has no module {name!r}")
                handles.append(
                    self.modules[name].register_forward_hook(lambda _m, _i, out, name=name: on_output(name, out))
                )
            if inputs:
                if on_input is None:
                    raise ValueError("hooks on module inputs need on_input")
                take_input = on_input
                for name in inputs:
                    handles.append(
                        self.modules[name].register_forward_pre_hook(
                            lambda _m, args, name=name: take_input(name, args[0])
                        )
                    )
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _fold(self, name: str, scale: torch.Tensor, shift: torch.Tensor) -> None:
        """Each network's output of module ``name`` becomes scale·y + shift per channel, in its own weights."""
        weight, bias = self.tensors.get(f"{name}.weight"), self.tensors.get(f"{name}.bias")
        if weight is None or bias is None:
            kind = type(self.modules[name]).__name__
            raise ValueError(f"cannot fold a REPAIR correction into {kind}: it needs a weight and a bias")
        scale, shift = scale.to(weight.dtype), shift.to(weight.dtype)
        weight.mul_(scale.view(*scale.shape, *([1] * (weight.dim() - 2))))
        bias.mul_(scale).add_(shift)


def _on_meta(module: nn.Module) -> bool:
    return all(t.device.type == "meta" for t in (*module.parameters(), *module.buffers()))


def _stacked_moments(moments: Sequence[Moments]) -> Moments:
    return Moments(torch.stack([m.mean for m in moments]), torch.stack([m.std for m in moments]))


def chunks(points: Sequence[float], size: int) -> list[list[float]]:
    """``points`` in consecutive chunks of at most ``size``, as even as possible (21 by 8: 7, 7, 7)."""
    if not points:
        return []
    count = math.ceil(len(points) / max(size, 1))
    each = math.ceil(len(points) / count)
    return [list(points[i : i + each]) for i in range(0, len(points), each)]


def auto_alphas_per_pass(
    model: nn.Module, sample: torch.Tensor, *, batch_size: int, points: int, memory_share: float = 1.0
) -> int:
    """How many α one pass should carry on ``sample``'s device: 1 on the CPU (already compute-bound;
    the one-α path is the reference); on a GPU enough networks that a pass holds
    :data:`TARGET_PASS_FLOPS` of arithmetic, at most ``points`` and what fits in ``memory_share``
    of the device's free memory (a pair sharing a GPU with others gets its share)."""
    device = sample.device
    if device.type != "cuda":
        return 1
    from torch.utils.flop_counter import FlopCounterMode

    batch = sample[:1].expand(batch_size, *sample.shape[1:])
    with torch.no_grad():
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        with FlopCounterMode(display=False) as counter:
            model.eval()(batch)
        activations = max(torch.cuda.max_memory_allocated(device) - before, 1)
    weights = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    free, _total = torch.cuda.mem_get_info(device)
    fit = int(MEMORY_SHARE * memory_share * free // (2 * activations + weights))
    enough = math.ceil(TARGET_PASS_FLOPS / max(counter.get_total_flops(), 1))
    return max(1, min(points, enough, fit))
