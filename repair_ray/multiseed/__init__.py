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

- :mod:`.together`: :func:`train_together`, which runs train together and the loop over their epochs.
- :mod:`.stack`: :class:`Stack`, the stacked weights and optimizer state, and one vectorised epoch of them.
- :mod:`.precision`: the bfloat16 casts that autocast misses under vmap.
"""

from __future__ import annotations

from .precision import Bfloat16Matmuls
from .stack import NAN_CHECK_EVERY, SHARED_STATE, Stack, StackedForward
from .together import OnEpoch, Uri, train_together

__all__ = [
    "NAN_CHECK_EVERY",
    "SHARED_STATE",
    "Bfloat16Matmuls",
    "OnEpoch",
    "Stack",
    "StackedForward",
    "Uri",
    "train_together",
]
