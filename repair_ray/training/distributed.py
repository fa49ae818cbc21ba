"""Where this process stands among the processes that train one network together, from ``torch.distributed`` alone.

Data-parallel training (:class:`~repair_ray.training.Trainer` with several processes) needs only an
initialised default process group: whoever starts the processes sets it up (``torchrun``, Ray Train's
``TorchTrainer``, or :func:`init_from_env` from torchrun-style environment variables), and this module
reads it. It knows nothing of who started the processes, so the core stays free of Ray.

The collective helpers below do nothing (and cost nothing) without an initialised group, so a caller
in one process can call them unconditionally.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place in the default process group: ``rank`` of ``world_size`` processes,
    ``local_rank`` on its machine (the index of its GPU there). One process alone is rank 0 of 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the process that writes checkpoints and reports epochs."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1


def current_world() -> World:
    """The :class:`World` of the initialised default process group; rank 0 of 1 when there is none.

    ``local_rank`` is ``LOCAL_RANK`` from the environment (set by ``torchrun`` and Ray Train; the
    process group itself does not know it), else 0.
    """
    if not initialised():
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def initialised() -> bool:
    """Whether a default process group is set up in this process."""
    return dist.is_available() and dist.is_initialized()


def init_from_env(backend: str | None = None, *, timeout: datetime.timedelta | None = None) -> World:
    """Set up the default process group from torchrun-style environment variables (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) when ``WORLD_SIZE`` > 1 and
    none is set up yet; returns this process's :class:`World`.

    ``backend`` None: ``nccl`` when CUDA is available (this process's current GPU is set to
    ``LOCAL_RANK`` first, as NCCL wants one GPU per process), ``gloo`` otherwise. ``timeout``
    bounds every collective (PyTorch's default when None). A group someone else set up (Ray Train,
    a caller) is kept as it is.
    """
    if initialised():
        return current_world()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return World()
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, init_method="env://", timeout=timeout)
    return current_world()


def collective_device() -> torch.device:
    """Where the tensors of a collective must live: the current GPU under NCCL, the CPU otherwise."""
    if initialised() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over every process, in place (returned for convenience); itself alone."""
    if initialised():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    """Wait until every process gets here (nothing to wait for alone)."""
    if initialised():
        dist.barrier()


def broadcast_decision(decision: bool, src: int = 0) -> bool:
    """Rank ``src``'s ``decision`` on every process, so that all of them take the same branch (a
    branch taken by some processes only would leave the others waiting in a collective forever)."""
    if not initialised():
        return decision
    flag = torch.tensor([1 if decision else 0], dtype=torch.int32, device=collective_device())
    dist.broadcast(flag, src=src)
    return bool(flag.item())


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) of ``module`` to every process, in place.

    Data-parallel ranks see different batches, so their running statistics drift apart between
    DistributedDataParallel's own broadcasts (at the start of every forward pass); after this, every
    rank holds the same network as rank ``src``, the one that is checkpointed.
    """
    if not initialised():
        return
    device = collective_device()
    for buffer in module.buffers():
        if buffer.device == device:
            dist.broadcast(buffer, src=src)
        else:
            staged = buffer.detach().to(device)
            dist.broadcast(staged, src=src)
            buffer.copy_(staged)


def weighted_means(values: dict[str, float], count: int) -> dict[str, float]:
    """Means over every process of per-process means ``values`` of ``count`` samples each, weighted by
    the counts: one process's ``values`` over the whole data, when the processes' parts cover it once."""
    if not initialised():
        return dict(values)
    names = sorted(values)
    sums = torch.tensor([values[n] * count for n in names] + [count], dtype=torch.float64, device=collective_device())
    all_reduce_sum(sums)
    total = max(float(sums[-1]), 1.0)
    return {name: float(sums[i]) / total for i, name in enumerate(names)}
