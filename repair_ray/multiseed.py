"""Several seeds of one network trained together: one vectorised loop over their stacked weights.

:func:`train_together` trains :class:`~repair_ray.training.Trainer` s of the same network, training
config and dataset as if each ran :meth:`Trainer.run <repair_ray.training.Trainer.run>` alone (its
own initialisation, data order, augmentation, mask, checkpoints, history and NaN check), but each
step is one program for all of them: the weights and buffers are stacked along a new first
dimension (:func:`torch.func.stack_module_state`), the forward pass is ``vmap`` of
``functional_call`` over per-seed batches ``[N, batch, ...]``, and one optimizer updates the stacked
tensors. SGD (momentum, Nesterov, coupled weight decay) and Adam are elementwise, so seed ``i``'s
optimizer state is slice ``i`` of the stacked state (Adam's step count, equal for all, is shared).
Small networks, whose steps are mostly per-step overhead, train several times faster per seed.

The :class:`Trainer` objects stay the record of each run: after every epoch each seed's slice is
written back into its trainer's model and optimizer, so evaluation, checkpoints (the same format:
a lone trainer resumes them, and this loop resumes a lone trainer's), ``history`` and ``on_epoch``
are the trainer's own. The stack is built from the trainers again at the next epoch, so what an
``on_epoch`` callback does to a trainer's weights is trained on.

The numbers agree with a lone run up to float rounding (batched matrix products sum in another
order; relative differences ~1e-7 per step), not bit for bit; a run resumed inside this loop is the
uninterrupted one. Two things differ from a lone run by design: a stack computes in NCHW memory
even for ``channels_last`` trainers (vmap turns the seeds' convolutions into one grouped
convolution; the trainers' weights keep their format), and ``bf16`` casts the matmuls and
convolutions to bfloat16 by hand (autocast does not reach them under vmap; the casts do, on the CPU
and on CUDA alike), which rounds like autocast but not at exactly the same places. Trainers made with
``compile=True`` run the vmapped forward pass under ``torch.compile`` (compiled once per call).

Speed (``benchmarks/seeds_per_trial.py``): vmap, ``functional_call`` and batched autograd cost about
1 ms per step more than a lone step, so one seed alone is slower this way; 16 narrow MLPs train
about twice as fast per seed as one at a time on a CPU core. Networks whose lone steps are
compute-bound (CNNs on the CPU, where a grouped convolution is no faster than its groups) gain
nothing.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap
from torch.overrides import TorchFunctionMode

from .datasets import TensorData
from .training import NonFiniteLossError, Trainer, TrainResult, augment_batch, compiled, make_optimizer

Uri = str | os.PathLike[str]
OnEpoch = Callable[[int, dict[str, float]], None]
# optimizer-state entries shared by all seeds of a stack (the rest are tensors shaped like the parameter)
SHARED_STATE = ("step",)
# steps between checks for a non-finite loss, per device type (1 where not listed: every step). Reading
# the losses back makes the host wait for the device every step, which on a GPU idles it between steps.
NAN_CHECK_EVERY = {"cuda": 16}


def train_together(
    trainers: Sequence[Trainer],
    *,
    checkpoint_uris: Sequence[Uri | None] | None = None,
    checkpoint_every: int | None = 1,
    on_epoch: Sequence[OnEpoch | None] | None = None,
    branch_from: Sequence[Uri | None] | None = None,
) -> list[TrainResult]:
    """Train the remaining epochs of every trainer, all in one vectorised loop; returns what each
    trainer's :meth:`Trainer.run` would return, in order.

    ``checkpoint_uris``, ``on_epoch`` and ``branch_from`` hold one entry (or None) per trainer, and
    ``checkpoint_every`` applies to all: each trainer resumes from its checkpoint when there is one,
    else starts afresh (from its trunk snapshot, pruned by its mask), and after each epoch is
    evaluated, checkpointed and reported exactly as ``run`` does it.

    Trainers at different epochs (one resumed, others fresh) are caught up: each round trains one
    epoch of those furthest behind, so the laggards join the others once they reach them. Trainers
    at one epoch whose optimizer states differ in layout (momentum buffers or not, Adam step counts)
    train as separate stacks.

    A seed whose loss becomes NaN or infinite ends with status ``nan_loss`` and the error a lone
    run gives, its weights and optimizer state left as they were before that step; it leaves the
    stack and the others go on. ``seconds`` is each seed's share of the compute: the wall time of
    every stacked epoch (stacking, steps, writing back) divided by the seeds in the stack, plus its
    own evaluations. As for a lone run, the epoch a seed fails in is not counted.

    Raises:
        ValueError: when the trainers differ in network, training config, dataset, device or
            memory format, when one is listed twice, or when a per-trainer list has another length.
        RuntimeError: from a callback or the network, as ``run`` would (the checkpoints written
            until then stay, so calling again resumes).
    """
    trainers = list(trainers)
    _check_together(trainers)
    uris = _per_trainer(checkpoint_uris, len(trainers), "checkpoint_uris")
    callbacks = _per_trainer(on_epoch, len(trainers), "on_epoch")
    trunks = _per_trainer(branch_from, len(trainers), "branch_from")
    results: dict[int, TrainResult] = {}
    final: dict[int, dict[str, float] | None] = dict.fromkeys(range(len(trainers)))
    for i, trainer in enumerate(trainers):
        done = trainer.prepare_run(uris[i], trunks[i])
        if done is not None:
            results[i] = done
    epochs = trainers[0].train_config.epochs

    def unfinished() -> list[int]:
        return [i for i, t in enumerate(trainers) if i not in results and t.epoch < epochs]

    forward = _StackedForward(trainers[0])  # one program for every stack of this call (compiled once)
    while active := unfinished():
        behind = min(trainers[i].epoch for i in active)
        for cohort in _cohorts([i for i in active if trainers[i].epoch == behind], trainers):
            outcomes = _Stack([trainers[i] for i in cohort], forward).train_epoch()
            for i, outcome in zip(cohort, outcomes, strict=True):
                if isinstance(outcome, NonFiniteLossError):
                    results[i] = trainers[i].failed_run(outcome)
                else:
                    final[i] = trainers[i].finish_epoch(
                        outcome, checkpoint_uri=uris[i], checkpoint_every=checkpoint_every, on_epoch=callbacks[i]
                    )
    for i, trainer in enumerate(trainers):
        if i not in results:
            results[i] = trainer.finish_run(final[i], uris[i])
    return [results[i] for i in range(len(trainers))]


def _check_together(trainers: list[Trainer]) -> None:
    """Refuse trainers that cannot share one stack (see :func:`train_together`)."""
    if not trainers:
        raise ValueError("train_together needs at least one trainer")
    first = trainers[0]
    seen: dict[int, int] = {}
    for i, trainer in enumerate(trainers):
        if id(trainer) in seen:
            raise ValueError(f"trainers[{i}] is trainers[{seen[id(trainer)]}] again: each run can train only once")
        seen[id(trainer)] = i
        for field in ("model_config", "train_config", "device", "channels_last", "compile"):
            mine, theirs = getattr(trainer, field), getattr(first, field)
            if mine != theirs:
                raise ValueError(
                    f"trainers[{i}].{field} is {mine!r} but trainers[0]'s is {theirs!r}: "
                    "only runs of one network, training config, device and compile setting train together"
                )
        if trainer.device.type == "cuda" and trainer.channels_last and _has_batchnorm(trainer.model):
            raise ValueError(
                f"trainers[{i}] is a channels-last network with BatchNorm on CUDA: stacked, it fails inside "
                "PyTorch's vmap (NYI: querying is_contiguous inside of vmap for memory_format other than "
                "torch.contiguous_format; seen on an H200, torch 2.11); build its trainers with channels_last=False "
                "(a stack computes in NCHW anyway)"
            )
        if not _same_data(trainer, first):
            raise ValueError(
                f"trainers[{i}] trains on other data ({trainer.dataset.name}) than trainers[0] "
                f"({first.dataset.name}): only runs on one dataset train together"
            )


def _has_batchnorm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _same_data(a: Trainer, b: Trainer) -> bool:
    x, y = a.dataset.train, b.dataset.train
    if a.dataset.name != b.dataset.name or x.x.shape != y.x.shape:
        return False
    same_memory = x.x.data_ptr() == y.x.data_ptr() and x.y.data_ptr() == y.y.data_ptr()
    return same_memory or (torch.equal(x.x, y.x) and torch.equal(x.y, y.y))


def _per_trainer(values: Sequence[Any] | None, count: int, name: str) -> list[Any]:
    if values is None:
        return [None] * count
    if isinstance(values, (str, os.PathLike)) or len(values) != count:
        raise ValueError(f"{name} must hold one entry (or None) per trainer: {count}, got {values!r}")
    return list(values)


def _cohorts(indices: list[int], trainers: list[Trainer]) -> list[list[int]]:
    """``indices`` grouped by the layout of their trainers' optimizer states: one stack each."""
    groups: dict[tuple, list[int]] = {}
    for i in indices:
        groups.setdefault(_state_layout(trainers[i]), []).append(i)
    return list(groups.values())


def _state_layout(trainer: Trainer) -> tuple:
    """What of a trainer's optimizer state must be equal in a stack: its entries' names per
    parameter and the values of the shared ones (Adam's step count)."""
    layout = []
    for param in trainer.model.parameters():
        state = trainer.optimizer.state.get(param, {})
        layout.append(
            tuple(sorted((key, _plain(value) if key in SHARED_STATE else None) for key, value in state.items()))
        )
    return tuple(layout)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, torch.Tensor) else value


class _StackedForward:
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


class _Stack:
    """The weights, buffers, optimizer state and masks of trainers at the same point of training,
    stacked along a new first dimension (seed ``k`` of the stack is slice ``k``)."""

    def __init__(self, trainers: list[Trainer], forward: _StackedForward | None = None) -> None:
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
            states = [t.optimizer.state.get(p) for t, p in zip(trainers, seeds, strict=True)]
            if states[0]:
                self.optimizer.state[param] = {key: _stacked([s[key] for s in states], key) for key in states[0]}
        self.masks = self._stacked_masks()
        self.forward = forward or _StackedForward(first)

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
        train, batch_size, steps = first.dataset.train, self.config.batch_size, first.steps_per_epoch
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
            x, y = _gather(train, order[:, batch * batch_size : (batch + 1) * batch_size])
            if first.augment:
                flips = first.augment == "crop_flip"
                x = torch.stack([augment_batch(x[k], trainers[i].generator, flips=flips) for k, i in enumerate(alive)])
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
        stack.enter_context(_Bfloat16Matmuls())
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


def _gather(data: TensorData, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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


class _Bfloat16Matmuls(TorchFunctionMode):
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
