"""One training run of one (model config, seed), reproducible bit for bit and resumable from a checkpoint.

Data stays in memory as tensors on the compute device; shuffling and augmentation draw from one
``torch.Generator`` seeded by the data seed, and the model is initialised under its own seed, so
a run is a pure function of (model config, train config, dataset, init seed, data seed).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .datasets import Dataset
from .errors import Problems
from .interpolation import evaluate
from .io import storage
from .io.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .models import ModelConfig
from .pruning import Mask, apply_mask, dense_mask, magnitude_prune

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("linear", "cosine", "constant")
PRECISIONS = ("fp32", "bf16")
# Fields added to TrainConfig after runs were named by it: left out of a run's identity (its model key,
# its checkpoints' meta) at these defaults, so every run made before them keeps its key and checkpoints.
_LATER_FIELDS = {"precision": "fp32"}
EVAL_BATCH_SIZE = 1000
METRIC_KEYS = ("train_loss", "train_acc", "test_loss", "test_acc")


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

    def identity(self) -> dict[str, Any]:
        """The fields that name a run (model keys, checkpoint meta): all of them, but those added
        later left out at their defaults (so older runs keep their keys and checkpoints)."""
        fields = asdict(self)
        for name, default in _LATER_FIELDS.items():
            if fields.get(name) == default:
                fields.pop(name)
        return fields

    def __post_init__(self) -> None:
        problems = Problems("TrainConfig")

        def check(field: str, ok: bool, expected: str) -> None:
            if not ok:
                problems.add(field, f"must be {expected}, got {getattr(self, field)!r}")

        check("epochs", _is_int(self.epochs) and self.epochs >= 0, "a non-negative integer")
        check("batch_size", _is_int(self.batch_size) and self.batch_size >= 1, "a positive integer")
        check("optimizer", self.optimizer in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}")
        check("schedule", self.schedule in SCHEDULES, f"one of {', '.join(SCHEDULES)}")
        check("lr", _is_real(self.lr) and self.lr > 0 and math.isfinite(self.lr), "a positive number")
        check("momentum", _is_real(self.momentum) and 0 <= self.momentum < 1, "in [0, 1)")
        check(
            "nesterov",
            not self.nesterov or (self.optimizer == "sgd" and self.momentum != 0),
            "False unless optimizer is sgd with momentum > 0",
        )
        check(
            "weight_decay",
            _is_real(self.weight_decay) and self.weight_decay >= 0 and math.isfinite(self.weight_decay),
            "a non-negative number",
        )
        check(
            "warmup_epochs",
            _is_real(self.warmup_epochs) and (not _is_real(self.epochs) or 0 <= self.warmup_epochs <= self.epochs),
            f"between 0 and epochs ({self.epochs})",
        )
        check("label_smoothing", _is_real(self.label_smoothing) and 0 <= self.label_smoothing < 1, "in [0, 1)")
        check(
            "augment",
            self.augment is None or isinstance(self.augment, bool) or self.augment == "translate",
            "true, false, translate or null (automatic)",
        )
        check("precision", self.precision in PRECISIONS, f"one of {', '.join(PRECISIONS)}")
        problems.raise_if_any()

    def uses_augmentation(self, in_shape: tuple[int, ...]) -> bool:
        """Whether inputs of ``in_shape`` are augmented (``augment``, or automatic when None)."""
        return self.augmentation(in_shape) is not None

    def augmentation(self, in_shape: tuple[int, ...]) -> str | None:
        """``"crop_flip"``, ``"translate"`` or None: what :func:`augment_batch` does to inputs of ``in_shape``."""
        if self.augment == "translate":
            return "translate"
        if self.augment is not None:
            return "crop_flip" if self.augment else None
        channels, height, width = in_shape
        return "crop_flip" if channels == 3 and height >= 32 and width >= 32 else None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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


def augment_batch(x: torch.Tensor, generator: torch.Generator, *, padding: int = 4, flips: bool = True) -> torch.Tensor:
    """Random crops (zero padding of ``padding`` pixels) and horizontal flips, per sample, in one gather.

    ``flips=False``: crops only, i.e. random translations by up to ``padding`` pixels (no flip is drawn).

    The random offsets and flips are drawn on the CPU from ``generator`` whatever the device of
    ``x``, so the augmentation is the same on every device. On CUDA they travel through pinned memory
    without blocking (a copy from pageable memory would wait for the GPU's queue to drain every step).
    """
    n, channels, height, width = x.shape
    offsets = _to_device(torch.randint(0, 2 * padding + 1, (2, n), generator=generator), x.device)
    flip = torch.rand(n, generator=generator) < 0.5 if flips else torch.zeros(n, dtype=torch.bool)
    flips_on = _to_device(flip, x.device)
    padded = F.pad(x, (padding, padding, padding, padding))
    rows = offsets[0, :, None] + torch.arange(height, device=x.device)
    columns = torch.arange(width, device=x.device)
    columns = torch.where(flips_on[:, None], width - 1 - columns, columns) + offsets[1, :, None]
    return padded[
        torch.arange(n, device=x.device)[:, None, None, None],
        torch.arange(channels, device=x.device)[None, :, None, None],
        rows[:, None, :, None],
        columns[:, None, None, :],
    ]


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
            with config.patch(**{strict: True}) if strict else contextlib.nullcontext():
                return program(*args, **kwargs)
        except failures as error:
            reason = (str(error).strip().splitlines() or [""])[0]
            raise CompileError(
                f"torch.compile of {what} failed ({type(error).__name__}: {reason}); "
                "train it without compile (train.compile: false)"
            ) from error

    return call


class Trainer:
    """Trains one network on one dataset, an epoch at a time, with exact resumption.

    Attributes:
        model: the network, on ``device``.
        epoch: completed epochs.
        step: completed optimizer steps.
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
        self.device = torch.device(device)
        self.dataset = dataset.to(self.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.init_seed)
            model = model_config.build(dataset.num_classes, dataset.in_shape)
        if self.device.type == "cuda":
            use_fast_cuda_kernels()
        # channels-last memory (NHWC) for convolutional nets, where cuDNN's fastest kernels want it;
        # None: on CUDA only. The same function either way; the weights keep their values.
        has_conv = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
        self.channels_last = has_conv and (self.device.type == "cuda" if channels_last is None else channels_last)
        model = model.to(self.device)
        self.model = model.to(memory_format=torch.channels_last) if self.channels_last else model
        self.optimizer = self._make_optimizer()
        self.forward = compiled(self.model, f"the {model_config.label} network") if self.compile else self.model
        self.generator = torch.Generator().manual_seed(self.data_seed)
        self.augment = train_config.augmentation(dataset.in_shape)
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

    def train_epoch(self) -> dict[str, float]:
        """Train one epoch; ``train_loss`` and ``train_acc`` are averages over its batches.

        Raises NonFiniteLossError, before updating the weights, as soon as a loss is NaN or inf.
        """
        config = self.train_config
        if self.epoch >= config.epochs:
            raise RuntimeError(f"all {config.epochs} epochs of this run are done")
        train = self.dataset.train
        self.model.train()
        started = time.perf_counter()
        order = torch.randperm(len(train), generator=self.generator).to(self.device)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        seen = 0
        for batch in range(self.steps_per_epoch):
            index = order[batch * config.batch_size : (batch + 1) * config.batch_size]
            x, y = train.x[index], train.y[index]
            if self.augment:
                x = augment_batch(x, self.generator, flips=self.augment == "crop_flip")
            if self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            lr = self.learning_rate(self.step)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            with self._autocast():
                logits = self.forward(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)
            if not torch.isfinite(loss):
                raise self.non_finite_loss(loss.item(), batch, lr)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if self._masked:
                with torch.no_grad():
                    for param, keep in self._masked:
                        param.mul_(keep)
            self.step += 1
            loss_sum += loss.detach()
            correct += (logits.argmax(dim=1) == y).sum()
            seen += len(y)
        self.epoch += 1
        self.seconds += time.perf_counter() - started
        return {"train_loss": loss_sum.item() / self.steps_per_epoch, "train_acc": correct.item() / seen}

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
        """``<split>_loss`` and ``<split>_acc`` in eval mode, without augmentation, on whole splits."""
        was_training = self.model.training
        self.model.eval()
        metrics: dict[str, float] = {}
        try:
            for split in splits:
                result = evaluate(self.model, getattr(self.dataset, split), batch_size=EVAL_BATCH_SIZE)
                metrics[f"{split}_loss"], metrics[f"{split}_acc"] = result["loss"], result["acc"]
        finally:
            self.model.train(was_training)
        return metrics

    def training_state(self) -> dict[str, Any]:
        """A snapshot of everything besides the weights that training depends on (with the IMP mask)."""
        state = {
            "epoch": self.epoch,
            "step": self.step,
            "seconds": self.seconds,
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "generator": self.generator.get_state(),
            "history": [dict(h) for h in self.history],
        }
        if self.mask is not None:
            state["mask"] = {name: keep.cpu() for name, keep in self.mask.items()}
        return state

    def set_mask(self, mask: Mask, *, optimizer_state: bool = True) -> None:
        """Prune this run with ``mask`` (:mod:`repair_ray.pruning`): the removed weights (and, with
        ``optimizer_state``, their momentum) are zeroed now, and the weights again after every
        optimizer step. (The momentum of a removed weight never reaches a kept one.)"""
        apply_mask(self.model, mask, self.optimizer if optimizer_state else None)
        params = dict(self.model.named_parameters())
        self.mask = {name: keep.detach().cpu().bool() for name, keep in mask.items()}
        self._masked = [(params[name], keep.to(self.device, params[name].dtype)) for name, keep in self.mask.items()]

    def load_training_state(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`training_state` snapshot (load the matching weights separately)."""
        missing = {"epoch", "step", "optimizer", "generator"} - set(state)
        if missing:
            raise ValueError(f"training state lacks {', '.join(sorted(missing))}")
        epoch, step = int(state["epoch"]), int(state["step"])
        if step != epoch * self.steps_per_epoch:
            raise ValueError(
                f"training state is at step {step} after {epoch} epochs, but this run takes "
                f"{self.steps_per_epoch} steps per epoch: the batch size or the dataset differ"
            )
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"].cpu())
        self.epoch, self.step = epoch, step
        self.seconds = float(state.get("seconds", 0.0))
        self.history = [dict(h) for h in state.get("history") or []]  # none in checkpoints older than it
        if state.get("mask") is not None:
            self.set_mask(state["mask"], optimizer_state=False)  # resumed as it was

    def checkpoint_meta(self, metrics: dict[str, float], status: str) -> dict[str, Any]:
        """What a checkpoint of this run records besides the weights."""
        return {
            "model_config": self.model_config.described(),
            "train_config": self.train_config.identity(),
            "seed": self.seed,
            "init_seed": self.init_seed,
            "data_seed": self.data_seed,
            "branch_epoch": self.branch_epoch,
            "imp_round": self.imp_round,
            "dataset": self.dataset.name,
            "num_classes": self.dataset.num_classes,
            "in_shape": list(self.dataset.in_shape),
            "epoch": self.epoch,
            "metrics": metrics,
            "seconds": self.seconds,
            "status": status,
        }

    def save(self, uri: str | os.PathLike[str], metrics: dict[str, float], *, status: str) -> None:
        """Checkpoint the weights, :meth:`checkpoint_meta` and :meth:`training_state` to ``uri``."""
        save_checkpoint(uri, self.model, self.checkpoint_meta(metrics, status), training_state=self.training_state())

    def resume(self, uri: str | os.PathLike[str]) -> dict[str, Any]:
        """Load weights and training state from the checkpoint at ``uri``; returns its meta.

        Raises ValueError when the checkpoint belongs to a run with other configs or seeds.
        """
        expected = _jsonable(self.checkpoint_meta({}, "running"))
        keys = ("model_config", "train_config", "init_seed", "data_seed", "branch_epoch", "imp_round")
        meta = self._load(uri, {k: expected[k] for k in keys}, "belongs to another run", "this run's", "resume")
        if self.imp_round and self.mask is None:
            raise CheckpointError(f"checkpoint {uri} has no mask, but it is of IMP round {self.imp_round}")
        return meta

    def _load(self, uri: str | os.PathLike[str], wanted: dict[str, Any], misfit: str, ours: str, verb: str) -> dict:
        """Load the weights and training state of the checkpoint at ``uri`` whose meta has ``wanted``."""
        checkpoint = load_checkpoint(uri)
        for key, value in wanted.items():
            if checkpoint.meta.get(key) != value:
                raise ValueError(
                    f"checkpoint {uri} {misfit}: its {key} is {checkpoint.meta.get(key)!r}, {ours} is {value!r}"
                )
        if checkpoint.training_state is None:
            raise CheckpointError(f"checkpoint {uri} has no training state to {verb} from")
        self.model.load_state_dict(checkpoint.state_dict)
        self.load_training_state(checkpoint.training_state)
        return checkpoint.meta

    def start_from(self, uri: str | os.PathLike[str]) -> dict[str, Any]:
        """Start this run from a trunk's snapshot (see :func:`train_trunk`): its weights, optimizer
        state, epoch and step (so the learning-rate schedule goes on where the trunk was), but this
        run's own data order. Returns the snapshot's meta.

        Raises:
            ValueError: when the snapshot is of another network, training config, trunk seed or epoch.
            CheckpointError: when it cannot be read.
        """
        mine = _jsonable(self.checkpoint_meta({}, "running"))
        wanted = {
            "model_config": mine["model_config"],
            "train_config": mine["train_config"],
            "seed": self.init_seed,
            "epoch": self.branch_epoch,
        }
        generator = self.generator.get_state()
        meta = self._load(uri, wanted, "does not fit this branch", "the branch needs", "branch")
        self.generator.set_state(generator)  # the child's own data order
        self.seconds = 0.0  # the child's own compute; the trunk's is the trunk's
        self.history = []  # ... and its own curve
        self.mask, self._masked = None, []  # a trunk is dense; the child's own mask comes next
        return meta

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
        if checkpoint_uri is not None and storage.exists(checkpoint_uri):
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
        due = bool(checkpoint_every) and self.epoch % checkpoint_every == 0
        if checkpoint_uri is not None and (last or due):
            self.save(checkpoint_uri, metrics, status="ok" if last else "running")
        if on_epoch is not None:
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


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


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
) -> TrainResult:
    """Train (or resume and finish) one run: ``Trainer(...).run(...)``.

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
    )
    return trainer.run(
        checkpoint_uri=checkpoint_uri,
        checkpoint_every=checkpoint_every,
        on_epoch=on_epoch,
        branch_from=branch_from if branch_epoch else None,
    )


def next_imp_mask(uri: str | os.PathLike[str], rate: float) -> Callable[[torch.nn.Module], Mask]:
    """The mask of the next IMP round, from the trained network of this round at ``uri``: its
    surviving prunable weights (its mask, or all of them for the dense round 0) pruned by ``rate``
    of global magnitude. Returns a function of the network to prune (it names the prunable weights).

    Raises CheckpointError when the checkpoint cannot be read (when the function is called).
    """

    def mask_for(model: torch.nn.Module) -> Mask:
        checkpoint = load_checkpoint(uri)
        if checkpoint.meta.get("status") != "ok":
            raise CheckpointError(f"checkpoint {uri} is not of a finished run: nothing to prune from")
        state = checkpoint.training_state or {}
        previous = state.get("mask") or dense_mask(model)
        return magnitude_prune(checkpoint.state_dict, previous, rate)

    return mask_for


def train_trunk(
    model_config: ModelConfig,
    train_config: TrainConfig,
    dataset: Dataset,
    *,
    seed: int,
    epochs: Sequence[int],
    snapshot_uri: Callable[[int], str | os.PathLike[str]],
    device: str | torch.device = "cpu",
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[int, dict[str, float]]:
    """Train one trunk (seed ``seed``) on the run's schedule up to the last of ``epochs``, writing a
    snapshot (weights and training state) at each of them to ``snapshot_uri(epoch)``.

    Children branch from the snapshots (:func:`train_model` with ``branch_from``). A trunk
    resumes from its newest readable snapshot, so it is trained once however often it is asked
    for; snapshots already there are kept. Returns each snapshot epoch's test metrics.

    Raises:
        NonFiniteLossError: when the trunk's loss is NaN or infinite (no later snapshot is written).
    """
    wanted = sorted(set(int(e) for e in epochs))
    if not wanted or wanted[0] < 0 or wanted[-1] >= train_config.epochs:
        raise ValueError(
            f"branch epochs must be 0 .. {train_config.epochs - 1} (the run has {train_config.epochs}), got {wanted}"
        )
    trainer = Trainer(model_config, train_config, dataset, seed=seed, device=device)
    # resume from the last snapshot of the longest run of readable ones from the first: a missing or
    # damaged earlier snapshot is trained (deterministically, the same bits) again
    for epoch in wanted:
        uri = snapshot_uri(epoch)
        if not storage.exists(uri):
            break
        try:
            probe = Trainer(model_config, train_config, dataset, seed=seed, device=device)
            probe.resume(uri)
        except (CheckpointError, ValueError):
            storage.remove(uri, missing_ok=True)  # damaged or of another run: written again below
            break
        trainer = probe
    metrics: dict[int, dict[str, float]] = {}

    def snapshot() -> None:
        metrics[trainer.epoch] = {"epoch": trainer.epoch, **trainer.evaluate(("test",))}
        trainer.save(snapshot_uri(trainer.epoch), metrics[trainer.epoch], status="trunk")
        if on_epoch is not None:
            on_epoch(trainer.epoch, metrics[trainer.epoch])

    if trainer.epoch == 0 and 0 in wanted and not storage.exists(snapshot_uri(0)):
        snapshot()
    while trainer.epoch < wanted[-1]:
        trainer.train_epoch()
        if trainer.epoch in wanted:
            snapshot()
    return metrics
