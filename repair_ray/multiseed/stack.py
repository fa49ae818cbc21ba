"""The weights, buffers, optimizer state and masks of several trainers stacked along a new first
dimension, and one epoch of training them as one vectorised program (:class:`Stack`)."""

from __future__ import annotations

import contextlib
import copy
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from ..datasets import TensorData, memory_only
from ..training import NonFiniteLossError, Trainer, augment_batch, compiled, make_optimizer
from .precision import Bfloat16Matmuls

# optimizer-state entries shared by all seeds of a stack (the rest are tensors shaped like the parameter)
SHARED_STATE = ("step",)
# steps between checks for a non-finite loss, per device type (1 where not listed: every step). Reading
# the losses back makes the host wait for the device every step, which on a GPU idles it between steps.
NAN_CHECK_EVERY = {"cuda": 16}


class StackedForward:
    """Every seed's logits from stacked weights, buffers and batches: ``vmap`` of ``functional_call``
    on a skeleton of the network (on the meta device: ``functional_call`` runs its code on the stacked
    tensors), compiled with ``torch.compile`` when the trainers ask for it. Built once per
    :func:`train_together` call, so the compiled program serves every epoch's stack."""

    def __init__(self, first: Trainer) -> None:
        self.skeleton = copy.deepcopy(first.model).to("meta").train()
        forward = vmap(self._logits)
        self.forward = (
            compiled(forward, f"the stacked {first.model_config.label} networks") if first.compile else forward
        )

    def _logits(
        self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor
    ) -> torch.Tensor:
        """One seed's logits (vmapped over the seeds)."""
        return functional_call(self.skeleton, (params, buffers), (x,))

    def __call__(
        self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor
    ) -> torch.Tensor:
        return self.forward(params, buffers, x)


class Stack:
    """The weights, buffers, optimizer state and masks of trainers at the same point of training,
    stacked along a new first dimension (seed ``k`` of the stack is slice ``k``)."""

    def __init__(self, trainers: list[Trainer], forward: StackedForward | None = None) -> None:
        self.started = time.perf_counter()  # the stack's own cost is shared compute too
        self.trainers = trainers
        first = trainers[0]
        self.config = first.train_config
        self.names = [name for name, _ in first.model.named_parameters()]
        params, buffers = stack_module_state([t.model for t in trainers])
        # contiguous: vmap's fallback for channels-last (NHWC) tensors computes wrong results, so a
        # stack computes in NCHW whatever the trainers' memory format (their weights keep theirs)
        self.params = [params[name].detach().contiguous().requires_grad_() for name in self.names]
        self.buffers = {name: buffer.contiguous() for name, buffer in buffers.items()}
        self.optimizer = make_optimizer(self.config, self.params, foreach=True)
        for param, seeds in zip(self.params, zip(*(t.model.parameters() for t in trainers), strict=True), strict=True):
            states = [t.optimizer.state.get(p, {}) for t, p in zip(trainers, seeds, strict=True)]
            if states[0]:
                self.optimizer.state[param] = {key: _stacked([s[key] for s in states], key) for key in states[0]}
        self.masks = self._stacked_masks()
        self.forward = forward or StackedForward(first)

    def _stacked_masks(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(stacked parameter, stacked keep) for every parameter some trainer masks; a seed without
        a mask of it keeps all of it (times 1 changes nothing)."""
        masked = sorted({name for t in self.trainers if t.mask is not None for name in t.mask})
        out = []
        for name in masked:
            param = self.params[self.names.index(name)]
            keeps = [
                (
                    t.mask[name]
                    if t.mask is not None and name in t.mask
                    else torch.ones(param.shape[1:], dtype=torch.bool)
                )
                for t in self.trainers
            ]
            out.append((param, torch.stack(keeps).to(param.device, param.dtype)))
        return out

    def _losses_and_logits(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every seed's mean loss on its batch (``[seeds]``) and its logits (``[seeds, batch, classes]``).

        The loss is computed outside vmap, on all seeds' samples at once: under vmap, cross-entropy
        runs as a Python decomposition, which costs more than the step of a small network."""
        logits = self.forward(dict(zip(self.names, self.params, strict=True)), self.buffers, x)
        per_sample = F.cross_entropy(
            logits.float().flatten(0, 1), y.flatten(), reduction="none", label_smoothing=self.config.label_smoothing
        )
        return per_sample.view(y.shape).mean(dim=1), logits

    def train_epoch(self) -> list[dict[str, float] | NonFiniteLossError]:
        """Train one epoch of every seed; per trainer, its running metrics (as
        :meth:`Trainer.train_epoch` returns them) or the error that stopped it.

        On the CPU every step's losses are checked before the update. On a device where reading them
        back stalls the queue (:data:`NAN_CHECK_EVERY`), a window of steps runs unchecked from a
        snapshot of the stack and is checked once at its end; when a loss was not finite, the stack goes
        back to the snapshot and replays the window step by step, so a failing seed is still left
        exactly before its failing step, with the same error, and the others go on."""
        trainers, first = list(self.trainers), self.trainers[0]
        train = memory_only(first.dataset.train, "training seeds together")
        batch_size, steps = self.config.batch_size, first.steps_per_epoch
        device = train.x.device
        alive = list(range(len(trainers)))  # the trainers (indices) of the stack's rows
        order = torch.stack([torch.randperm(len(train), generator=t.generator) for t in trainers]).to(device)
        loss_sum = torch.zeros(len(trainers), device=device)
        correct = torch.zeros(len(trainers), device=device, dtype=torch.int64)
        outcomes: dict[int, dict[str, float] | NonFiniteLossError] = {}
        shares = [0.0] * len(trainers)  # each seed's part of the wall time
        seen = 0
        start = first.step  # the epoch's first step (read once: a failing trainer's own step moves on)
        lr = first.learning_rate(start)

        def step(batch: int, check: bool) -> torch.Tensor:
            """One optimizer step of the stack; with ``check``, the seeds whose loss is not finite fail
            first (left before this step) and leave the stack. Returns the step's losses."""
            nonlocal order, loss_sum, correct, alive, seen, lr
            x, y = gather(train, order[:, batch * batch_size : (batch + 1) * batch_size])
            if first.augment:
                flips = first.augment == "crop_flip"
                x = torch.stack(
                    [
                        augment_batch(x[k], trainers[i].generator, flips=flips, fill=first.pad_fill)
                        for k, i in enumerate(alive)
                    ]
                )
            lr = first.learning_rate(start + batch)
            with self._precision():
                losses, logits = self._losses_and_logits(x, y)
            failed = []
            if check and not torch.isfinite(losses).all():
                failed = (~torch.isfinite(losses)).nonzero()[:, 0].tolist()
            for k in failed:  # left as a lone run leaves it: before this step
                trainer = trainers[alive[k]]
                self.write_back(k, trainer, lr)
                trainer.step += batch
                outcomes[alive[k]] = trainer.non_finite_loss(losses[k].item(), batch, lr)
            self._update(losses, lr)
            loss_sum += losses.detach()
            correct += (logits.detach().argmax(dim=-1) == y).sum(dim=-1)
            seen += y.shape[1]
            if failed:
                self._share_time(shares, alive)
                keep = [k for k in range(len(alive)) if k not in failed]
                self._select(keep)
                order, loss_sum, correct = order[keep], loss_sum[keep], correct[keep]
                alive = [alive[k] for k in keep]
            return losses

        every = NAN_CHECK_EVERY.get(device.type, 1)
        batch = 0
        while batch < steps and alive:
            window = range(batch, min(steps, batch + every))
            if len(window) > 1:
                snapshot = self._snapshot([trainers[i] for i in alive], loss_sum, correct, seen)
                finite = torch.ones(len(alive), dtype=torch.bool, device=device)
                for b in window:
                    finite &= torch.isfinite(step(b, check=False).detach())
                if bool(finite.all()):  # the window's one wait for the device
                    batch = window.stop
                    continue
                loss_sum, correct, seen = self._restore(snapshot)
            for b in window:
                step(b, check=True)
                if not alive:
                    break
            batch = window.stop
        for k, i in enumerate(alive):
            self.write_back(k, trainers[i], lr)
            trainers[i].epoch += 1
            trainers[i].step += steps
            outcomes[i] = {"train_loss": loss_sum[k].item() / steps, "train_acc": correct[k].item() / seen}
        self._share_time(shares, alive)
        for i in alive:
            trainers[i].seconds += shares[i]
        return [outcomes[i] for i in range(len(trainers))]

    @torch.no_grad()
    def _snapshot(self, trainers: list[Trainer], loss_sum: torch.Tensor, correct: torch.Tensor, seen: int) -> dict:
        """What a window of unchecked steps changes: the stack's weights, buffers and optimizer state,
        the random state of each seed's augmentation, and the epoch's running sums."""
        return {
            "params": [p.detach().clone() for p in self.params],
            "buffers": {name: b.clone() for name, b in self.buffers.items()},
            "optimizer": [
                {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in self.optimizer.state[p].items()}
                if p in self.optimizer.state
                else None
                for p in self.params
            ],
            "generators": [(t.generator, t.generator.get_state()) for t in trainers],
            "sums": (loss_sum.clone(), correct.clone(), seen),
        }

    @torch.no_grad()
    def _restore(self, snapshot: dict) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Back to ``snapshot`` (see :meth:`_snapshot`); returns its running sums."""
        for param, saved in zip(self.params, snapshot["params"], strict=True):
            param.copy_(saved)
        for name, buffer in self.buffers.items():
            buffer.copy_(snapshot["buffers"][name])
        for param, state in zip(self.params, snapshot["optimizer"], strict=True):
            if state is None:
                self.optimizer.state.pop(param, None)
            else:
                self.optimizer.state[param] = state
        for generator, state in snapshot["generators"]:
            generator.set_state(state)
        return snapshot["sums"]

    def _precision(self) -> Any:
        """bfloat16 autocast for ``precision: bf16``, with the matmuls and convolutions cast by hand:
        under vmap, autocast misses them (vmap decomposes them below autocast). The casts are a torch
        function mode, which sees every call above the dispatcher, so they reach the stacked ops on
        every device (CUDA as the CPU); autocast of the device type covers the rest as for a lone run."""
        if self.config.precision != "bf16":
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        stack.enter_context(torch.autocast(device_type=self.params[0].device.type, dtype=torch.bfloat16))
        stack.enter_context(Bfloat16Matmuls())
        return stack

    def _update(self, losses: torch.Tensor, lr: float) -> None:
        """One optimizer step of every seed (each loss's gradient lands in its own slice), then the masks."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        self.optimizer.step()
        with torch.no_grad():
            for param, keep in self.masks:
                param.mul_(keep)

    def _share_time(self, shares: list[float], alive: list[int]) -> None:
        """Split the wall time since the last call among the seeds in the stack."""
        now = time.perf_counter()
        for i in alive:
            shares[i] += (now - self.started) / len(alive)
        self.started = now

    def _select(self, keep: list[int]) -> None:
        """Keep only the stack's rows ``keep`` (in this order): weights, buffers, optimizer state, masks."""
        rows = torch.tensor(keep, device=self.params[0].device)
        old = self.params
        self.params = [p.detach()[rows].requires_grad_(p.requires_grad) for p in old]
        self.buffers = {name: b[rows] for name, b in self.buffers.items()}
        optimizer = make_optimizer(self.config, self.params, foreach=True)
        for before, after in zip(old, self.params, strict=True):
            state = self.optimizer.state.get(before)
            if state:
                optimizer.state[after] = {
                    key: value if key in SHARED_STATE or value is None else value[rows] for key, value in state.items()
                }
        self.optimizer = optimizer
        self.masks = [(self.params[self._index(param, old)], keep_[rows]) for param, keep_ in self.masks]
        self.trainers = [self.trainers[k] for k in keep]

    @staticmethod
    def _index(param: torch.Tensor, params: list[torch.Tensor]) -> int:
        return next(i for i, p in enumerate(params) if p is param)

    @torch.no_grad()
    def write_back(self, k: int, trainer: Trainer, lr: float) -> None:
        """Seed ``k``'s weights, buffers and optimizer state into ``trainer`` (its model keeps its own
        tensors and memory format; its optimizer's settings are its own, with the last step's ``lr``)."""
        for param, stacked in zip(trainer.model.parameters(), self.params, strict=True):
            param.copy_(stacked[k])
        for name, buffer in trainer.model.named_buffers():
            buffer.copy_(self.buffers[name][k])
        state = {}
        for index, stacked in enumerate(self.params):
            entries = self.optimizer.state.get(stacked)
            if entries:
                state[index] = {key: _slice(value, key, k) for key, value in entries.items()}
        groups = trainer.optimizer.state_dict()["param_groups"]
        for group in groups:
            group["lr"] = lr
        trainer.optimizer.load_state_dict({"state": state, "param_groups": groups})


def gather(data: TensorData, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The samples ``index`` (seeds x batch) of ``data``, as ``[seeds, batch, ...]`` (``index_select``
    of the flat index: several times faster on the CPU than indexing with a 2-d index)."""
    flat = index.reshape(-1)
    x = data.x.index_select(0, flat).view(*index.shape, *data.x.shape[1:])
    return x, data.y.index_select(0, flat).view(index.shape)


def _stacked(values: list[Any], key: str) -> Any:
    """One optimizer-state entry of a stack from the seeds' entries (shared ones: the first's)."""
    if key in SHARED_STATE or not isinstance(values[0], torch.Tensor):
        return values[0].clone() if isinstance(values[0], torch.Tensor) else values[0]
    return torch.stack(values)


def _slice(value: Any, key: str, k: int) -> Any:
    """Seed ``k``'s part of a stacked optimizer-state entry (a copy: the stack goes on changing)."""
    if not isinstance(value, torch.Tensor):
        return value
    return value.clone() if key in SHARED_STATE else value[k].clone()
