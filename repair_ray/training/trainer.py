"""One training run of one (model config, seed), reproducible bit for bit and resumable from a checkpoint.

Data stays in memory as tensors on the compute device; shuffling and augmentation draw from one
``torch.Generator`` seeded by the data seed, and the model is initialised under its own seed, so
a run is a pure function of (model config, train config, dataset, init seed, data seed).

A run may be trained data-parallel by the processes of a ``torch.distributed`` process group
(:mod:`.parallel`): the same run, each process computing its slice of every batch.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..datasets import Dataset, ImageFiles
from ..interpolation import evaluate
from ..io import storage
from ..models import ModelConfig
from ..pruning import Mask, apply_mask
from .batches import Batch, in_memory_batches, streamed_batches
from .checkpointing import Checkpointing
from .config import TrainConfig
from .distributed import all_reduce_sum, broadcast_buffers, collective_device, weighted_means
from .parallel import (
    check_data_parallel,
    data_parallel,
    data_parallel_device,
    resolve_world,
    with_sync_batchnorm,
)
from .steps import compiled, make_optimizer, use_fast_cuda_kernels

EVAL_BATCH_SIZE = 1000
METRIC_KEYS = ("train_loss", "train_acc", "test_loss", "test_acc")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class TrainResult:
    """Outcome of :meth:`Trainer.run`.

    ``metrics`` holds ``train_loss, train_acc, test_loss, test_acc`` of the final weights
    (NaN when the run failed); ``seconds`` is the training time summed over resumed runs;
    ``history`` the metrics of every epoch of the run (kept in its checkpoints, so across resumes).
    """

    status: str  # "ok" | "nan_loss"
    epochs: int
    metrics: dict[str, float]
    seconds: float
    state_dict: dict[str, torch.Tensor] | None
    error: str | None = None
    history: list[dict[str, float]] | None = None  # per-epoch metrics (what ``on_epoch`` got), resumed runs too


class Trainer(Checkpointing):
    """Trains one network on one dataset, an epoch at a time, with exact resumption.

    Saving, resuming and starting from a trunk's snapshot are :class:`Checkpointing`'s.

    ``distributed`` says whether the run is trained data-parallel (see :func:`.parallel.resolve_world`):
    None (the default) when an initialised ``torch.distributed`` process group has several processes,
    True over any initialised group, False never. Every process of the group then makes its own
    Trainer with the same arguments; ``train.batch_size`` stays the global batch (divisible by the
    number of processes), each process trains on its slice of every batch with the model wrapped in
    ``DistributedDataParallel``, and the run computes what one process would on the same batches, up
    to float rounding (BatchNorm aside: each process normalises with its slice's statistics, unless
    ``train.sync_batchnorm``). Every epoch's metrics and every evaluation cover the whole data and
    are the same on every process. Rank 0 writes the checkpoints (the others wait for it) and calls
    ``on_epoch``; every process resumes from the same checkpoint. A CUDA ``device`` without an index
    is the process's own GPU, ``cuda:<LOCAL_RANK>``.

    Attributes:
        model: the network, on ``device`` (the bare module, also under data-parallel training:
            evaluation and checkpoints use it).
        epoch: completed epochs.
        step: completed optimizer steps.
        world: this process's place in the run's processes (rank 0 of 1 when it trains alone).
        data_parallel: whether the run trains data-parallel.
    """

    def __init__(
        self,
        model_config: ModelConfig,
        train_config: TrainConfig,
        dataset: Dataset,
        *,
        seed: int,
        init_seed: int | None = None,
        data_seed: int | None = None,
        branch_epoch: int | None = None,
        imp_round: int | None = None,
        mask: Mask | Callable[[torch.nn.Module], Mask] | None = None,
        device: str | torch.device = "cpu",
        channels_last: bool | None = None,
        compile: bool = False,
        distributed: bool | None = None,
    ) -> None:
        self.model_config = model_config
        # torch.compile the training steps' forward pass (evaluation stays eager): the same network up
        # to float rounding, faster where per-op overhead dominates; not part of the run's identity.
        # Measured on an H200: a ResNet20 x4 bf16 step 1.08-1.28x faster, after 14-21 s of compiling
        self.compile = bool(compile)
        self.branch_epoch = branch_epoch
        self.imp_round = imp_round
        # an IMP round's mask (or what computes it: only a run that starts afresh needs it; a resumed
        # one has it in its checkpoint)
        self._mask_source = mask
        self.mask: Mask | None = None
        self._masked: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.train_config = train_config
        self.seed = seed
        self.init_seed = seed if init_seed is None else init_seed
        self.data_seed = seed if data_seed is None else data_seed
        self.world, self.data_parallel = resolve_world(distributed)
        self.device = torch.device(device)
        if self.data_parallel:
            self.device = data_parallel_device(self.device, self.world)
        self.dataset = dataset.to(self.device)
        self.streamed = dataset.streamed
        if self.streamed and train_config.augment == "translate":
            raise ValueError("train.augment: translate is for data in memory; streamed data takes true or false")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.init_seed)
            model = model_config.build(dataset.num_classes, dataset.in_shape)
        if self.data_parallel:
            check_data_parallel(train_config, self.world, len(self.dataset.train), self.device, model)
            if train_config.sync_batchnorm:
                model = with_sync_batchnorm(model)
        if self.device.type == "cuda":
            use_fast_cuda_kernels()
        # channels-last memory (NHWC) for convolutional nets, where cuDNN's fastest kernels want it;
        # None: on CUDA only. The same function either way; the weights keep their values.
        has_conv = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
        self.channels_last = has_conv and (self.device.type == "cuda" if channels_last is None else channels_last)
        model = model.to(self.device)
        self.model = model.to(memory_format=torch.channels_last) if self.channels_last else model
        self.optimizer = self._make_optimizer()
        # the training steps' forward pass; evaluation and checkpoints use the bare model
        forward: torch.nn.Module = data_parallel(self.model, self.device) if self.data_parallel else self.model
        self.forward = compiled(forward, f"the {model_config.label} network") if self.compile else forward
        self.generator = torch.Generator().manual_seed(self.data_seed)
        self.augment = train_config.augmentation(dataset.in_shape)
        # what translated inputs are padded with (a streamed split's crops never pad)
        self.pad_fill = (
            train_config.pad_fill(dataset.black, f"dataset {dataset.name}")
            if self.augment and not self.streamed
            else None
        )
        # The last partial batch is dropped (a new shuffle every epoch uses it next time); a
        # train split smaller than one batch is a single batch.
        self.steps_per_epoch = max(1, len(self.dataset.train) // train_config.batch_size)
        self.total_steps = train_config.epochs * self.steps_per_epoch
        self.warmup_steps = round(train_config.warmup_epochs * self.steps_per_epoch)
        self.epoch = 0
        self.step = 0
        self.seconds = 0.0
        self.history: list[dict[str, float]] = []  # each epoch's metrics, as ``run`` reports them

    def _make_optimizer(self) -> torch.optim.Optimizer:
        return make_optimizer(self.train_config, self.model.parameters())

    def learning_rate(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based) of the run."""
        config = self.train_config
        if step < self.warmup_steps:
            return config.lr * (step + 1) / self.warmup_steps
        if config.schedule == "constant":
            return config.lr
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        if config.schedule == "cosine":
            return config.lr * 0.5 * (1 + math.cos(math.pi * progress))
        return config.lr * (1 - progress)

    def epoch_batches(self) -> Iterator[Batch]:
        """This process's inputs and labels of every batch of the epoch to train (all of each batch
        when it trains alone), augmented, on the device: drawn from the run's generator for data in
        memory, made by the split itself (from the data seed and the epoch) for streamed data."""
        rank, world = self.world.rank, self.world.world_size
        config = self.train_config
        train = self.dataset.train
        if isinstance(train, ImageFiles):
            return streamed_batches(
                train,
                batch_size=config.batch_size,
                seed=self.data_seed,
                epoch=self.epoch,
                augment=config.augment is not False,
                rank=rank,
                world=world,
            )
        return in_memory_batches(
            train,
            batch_size=config.batch_size,
            steps=self.steps_per_epoch,
            generator=self.generator,
            augment=self.augment,
            rank=rank,
            world=world,
            fill=self.pad_fill,
        )

    def train_epoch(self) -> dict[str, float]:
        """Train one epoch; ``train_loss`` and ``train_acc`` are averages over its batches (over the
        global batches, the same on every process, when training data-parallel).

        Raises NonFiniteLossError, before updating the weights, as soon as a loss is NaN or inf
        (data-parallel: the loss of the global batch, so every process raises at the same step).
        """
        config = self.train_config
        if self.epoch >= config.epochs:
            raise RuntimeError(f"all {config.epochs} epochs of this run are done")
        self.model.train()
        started = time.perf_counter()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        seen = batches = 0
        for batch, (x, y) in enumerate(self.epoch_batches()):
            if self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            lr = self.learning_rate(self.step)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            with self._autocast():
                logits = self.forward(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)
            batch_loss = self.global_loss(loss.detach())
            if not torch.isfinite(batch_loss):
                raise self.non_finite_loss(batch_loss.item(), batch, lr)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if self._masked:
                with torch.no_grad():
                    for param, keep in self._masked:
                        param.mul_(keep)
            self.step += 1
            loss_sum += batch_loss
            correct += (logits.argmax(dim=1) == y).sum()
            seen += len(y)
            batches += 1
        if self.data_parallel:
            counts = torch.stack([correct, torch.tensor(seen, device=self.device)]).to(collective_device())
            all_reduce_sum(counts)
            correct, seen = counts[0], int(counts[1])
            broadcast_buffers(self.model)  # every process holds rank 0's network, the one checkpointed
        self.epoch += 1
        self.seconds += time.perf_counter() - started
        return {"train_loss": loss_sum.item() / max(1, batches), "train_acc": correct.item() / max(1, seen)}

    def global_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """The mean loss of the global batch from this process's mean ``loss`` of its (equal) slice:
        averaged over the processes when training data-parallel, ``loss`` itself alone."""
        if not self.data_parallel:
            return loss
        total = all_reduce_sum(loss.to(collective_device(), copy=True))
        return (total / self.world.world_size).to(loss.device)

    def non_finite_loss(self, loss: float, batch: int, lr: float) -> NonFiniteLossError:
        """The error of a NaN or infinite ``loss`` at batch ``batch`` (0-based) of the epoch being trained."""
        return NonFiniteLossError(
            f"training loss is {loss} at epoch {self.epoch + 1}, "
            f"step {batch + 1} of {self.steps_per_epoch} (learning rate {lr:.3g})"
        )

    def _autocast(self) -> Any:
        """The mixed-precision context of a training step (``train.precision``); float32: none."""
        if self.train_config.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def evaluate(self, splits: tuple[str, ...] = ("train", "test")) -> dict[str, float]:
        """``<split>_loss`` and ``<split>_acc`` in eval mode, without augmentation, on whole splits.

        Data-parallel, each process evaluates its shard of each split and the sums are all-reduced:
        the same numbers on every process, those of one process evaluating the whole split (up to
        float rounding).
        """
        was_training = self.model.training
        self.model.eval()
        metrics: dict[str, float] = {}
        try:
            for split in splits:
                data = getattr(self.dataset, split)
                if self.data_parallel:
                    part = data.shard(self.world.rank, self.world.world_size)
                    result = weighted_means(evaluate(self.model, part, batch_size=EVAL_BATCH_SIZE), len(part))
                else:
                    result = evaluate(self.model, data, batch_size=EVAL_BATCH_SIZE)
                metrics[f"{split}_loss"], metrics[f"{split}_acc"] = result["loss"], result["acc"]
        finally:
            self.model.train(was_training)
        return metrics

    def set_mask(self, mask: Mask, *, optimizer_state: bool = True) -> None:
        """Prune this run with ``mask`` (:mod:`repair_ray.pruning`): the removed weights (and, with
        ``optimizer_state``, their momentum) are zeroed now, and the weights again after every
        optimizer step. (The momentum of a removed weight never reaches a kept one.)"""
        apply_mask(self.model, mask, self.optimizer if optimizer_state else None)
        params = dict(self.model.named_parameters())
        self.mask = {name: keep.detach().cpu().bool() for name, keep in mask.items()}
        self._masked = [(params[name], keep.to(self.device, params[name].dtype)) for name, keep in self.mask.items()]

    def run(
        self,
        *,
        checkpoint_uri: str | os.PathLike[str] | None = None,
        checkpoint_every: int | None = 1,
        on_epoch: Callable[[int, dict[str, float]], None] | None = None,
        branch_from: str | os.PathLike[str] | None = None,
    ) -> TrainResult:
        """Train the remaining epochs, resuming from ``checkpoint_uri`` when a checkpoint is there.

        A branch (``branch_epoch`` set) without a checkpoint of its own starts from the trunk
        snapshot ``branch_from`` (:meth:`start_from`); at branch epoch 0 there is none to start from
        (the shared initialisation is the init seed's).

        After every epoch ``on_epoch(epoch, metrics)`` gets ``epoch``, ``epoch_train_loss`` and
        ``epoch_train_acc`` (averages over the epoch's batches), ``test_loss`` and ``test_acc``;
        after the last epoch also ``train_loss`` and ``train_acc`` of a clean pass over the train
        split. A checkpoint (with training state) is written before ``on_epoch`` every
        ``checkpoint_every`` epochs (never when None or 0) and after the last epoch. A NaN or
        infinite loss ends the run with status ``nan_loss`` and writes no checkpoint.

        Data-parallel, every process calls ``run`` alike and gets the same result; ``on_epoch`` is
        called on rank 0 only (the metrics are the same everywhere), which alone writes checkpoints.
        ``checkpoint_uri`` must name storage every process reads (rank 0's view of whether it exists
        decides for all).
        """
        done = self.prepare_run(checkpoint_uri, branch_from)
        if done is not None:
            return done
        final: dict[str, float] | None = None
        try:
            while self.epoch < self.train_config.epochs:
                final = self.finish_epoch(
                    self.train_epoch(),
                    checkpoint_uri=checkpoint_uri,
                    checkpoint_every=checkpoint_every,
                    on_epoch=on_epoch,
                )
        except NonFiniteLossError as error:
            return self.failed_run(error)
        return self.finish_run(final, checkpoint_uri)

    # The steps of :meth:`run`, public so that a loop training several runs together
    # (:mod:`repair_ray.multiseed`) does for each run exactly what ``run`` does.

    def prepare_run(
        self, checkpoint_uri: str | os.PathLike[str] | None, branch_from: str | os.PathLike[str] | None
    ) -> TrainResult | None:
        """Resume from ``checkpoint_uri`` when a checkpoint is there, else start afresh (from the trunk
        snapshot ``branch_from``, then pruned by the run's mask). Returns the result of a run that the
        checkpoint shows finished, None when there is training left."""
        if checkpoint_uri is not None and self.decided(storage.exists(checkpoint_uri)):
            meta = self.resume(checkpoint_uri)
            stored = meta.get("metrics") or {}
            if self.epoch == self.train_config.epochs and all(k in stored for k in METRIC_KEYS):
                metrics = {k: float(stored[k]) for k in METRIC_KEYS}
                return TrainResult("ok", self.epoch, metrics, self.seconds, self._state_dict(), history=self.history)
        else:
            if branch_from is not None:
                self.start_from(branch_from)
            if self._mask_source is not None:  # IMP: the rewound weights, pruned
                mask = self._mask_source(self.model) if callable(self._mask_source) else self._mask_source
                self.set_mask(mask)
        return None

    def finish_epoch(
        self,
        running: dict[str, float],
        *,
        checkpoint_uri: str | os.PathLike[str] | None,
        checkpoint_every: int | None,
        on_epoch: Callable[[int, dict[str, float]], None] | None,
    ) -> dict[str, float] | None:
        """After an epoch whose batches averaged ``running``: evaluate, record the history, checkpoint
        when due and call ``on_epoch``. Returns the metrics after the last epoch, None before it."""
        last = self.epoch == self.train_config.epochs
        started = time.perf_counter()
        metrics = {
            "epoch": self.epoch,
            "epoch_train_loss": running["train_loss"],
            "epoch_train_acc": running["train_acc"],
            **self.evaluate(("train", "test") if last else ("test",)),
        }
        self.seconds += time.perf_counter() - started
        self.history.append({k: float(v) for k, v in metrics.items()})
        due = bool(checkpoint_every and self.epoch % checkpoint_every == 0)
        if checkpoint_uri is not None and (last or due):
            self.save(checkpoint_uri, metrics, status="ok" if last else "running")
        if on_epoch is not None and self.world.is_main:
            on_epoch(self.epoch, metrics)
        return metrics if last else None

    def failed_run(self, error: NonFiniteLossError) -> TrainResult:
        """The result of a run stopped by a NaN or infinite loss (no weights, NaN metrics)."""
        nan = {key: math.nan for key in METRIC_KEYS}
        return TrainResult("nan_loss", self.epoch, nan, self.seconds, None, str(error), self.history)

    def finish_run(self, final: dict[str, float] | None, checkpoint_uri: str | os.PathLike[str] | None) -> TrainResult:
        """The result of a run whose epochs are all trained; ``final``: the last epoch's metrics (None
        when this call trained none: the run is evaluated, and checkpointed, now)."""
        if final is None:  # nothing left to train (0 epochs, or a finished checkpoint without metrics)
            final = {"epoch": self.epoch, **self.evaluate()}
            if checkpoint_uri is not None:
                self.save(checkpoint_uri, final, status="ok")
        metrics = {k: final[k] for k in METRIC_KEYS}
        return TrainResult("ok", self.epoch, metrics, self.seconds, self._state_dict(), history=self.history)

    def _state_dict(self) -> dict[str, torch.Tensor]:
        return {name: tensor.detach().cpu().clone() for name, tensor in self.model.state_dict().items()}


def train_model(
    model_config: ModelConfig,
    train_config: TrainConfig,
    dataset: Dataset,
    *,
    seed: int,
    init_seed: int | None = None,
    data_seed: int | None = None,
    device: str | torch.device = "cpu",
    checkpoint_uri: str | os.PathLike[str] | None = None,
    checkpoint_every: int | None = 1,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    branch_epoch: int | None = None,
    branch_from: str | os.PathLike[str] | None = None,
    imp_round: int | None = None,
    mask: Mask | Callable[[torch.nn.Module], Mask] | None = None,
    distributed: bool | None = None,
) -> TrainResult:
    """Train (or resume and finish) one run: ``Trainer(...).run(...)``.

    ``distributed``: whether to train data-parallel over the processes of the ``torch.distributed``
    process group (None: when one with several processes is initialised); see :class:`Trainer`.

    A branch of a trunk (Frankle et al.'s instability analysis): ``init_seed`` is the trunk's seed,
    ``branch_epoch`` the trunk epoch it branches at, and ``branch_from`` the trunk's snapshot at
    that epoch (see :func:`train_trunk`; none at epoch 0). The child trains the remaining epochs
    of the same schedule with its own data order (``data_seed``).

    A round of IMP with rewinding (lottery tickets) is such a branch with a ``mask``
    (:mod:`repair_ray.pruning`; or a function of the network that computes it, see
    :func:`next_imp_mask`): the rewound weights are pruned before training, and stay pruned. The
    mask is saved in the checkpoint, so a resumed round needs none.
    """
    if branch_epoch is not None and branch_epoch > 0 and branch_from is None:
        raise ValueError(f"a branch at epoch {branch_epoch} needs its trunk's snapshot (branch_from)")
    if imp_round and mask is None:
        raise ValueError(f"IMP round {imp_round} needs its mask")
    trainer = Trainer(
        model_config,
        train_config,
        dataset,
        seed=seed,
        init_seed=init_seed,
        data_seed=data_seed,
        branch_epoch=branch_epoch,
        imp_round=imp_round,
        mask=mask,
        device=device,
        distributed=distributed,
    )
    return trainer.run(
        checkpoint_uri=checkpoint_uri,
        checkpoint_every=checkpoint_every,
        on_epoch=on_epoch,
        branch_from=branch_from if branch_epoch else None,
    )
