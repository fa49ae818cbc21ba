"""The train stage's trials: which seeds train together in one task, and the :class:`Trial` messages.

What is left to train comes from :func:`~repair_ray.sweep.planning.plan_trials`; this module
groups it into trials (stacks of seeds trained together where that pays, one seed otherwise) and
adds the trunks that children of a branch start from. It imports no Ray.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict

from .cluster import ClusterShape, tasks_in_flight
from .config import SweepConfig
from .layout import checkpoint_uri, trunk_snapshot_uri
from .messages import Network, Trial
from .plans import ModelPlan

DEFAULT_STACK = 16  # seeds to a trial when networks trained together are retrained under seeds_per_trial: 1


def trial_spec(
    config: SweepConfig,
    plan: ModelPlan,
    seeds: list[int],
    threads: float,
    together: bool | None = None,
    gpu: float = 0.0,
) -> Trial:
    """The trial that trains ``seeds`` of one model config: ``together`` in the vectorised loop
    (default: when there are several) or one by one; for a model config that imports its networks,
    the import of one network file (``seeds`` holds its number)."""
    branch_from = trunk = prune_from = prune_key = imp_rate = None
    branch = plan.branch
    if branch is not None and branch.epoch > 0 and plan.trunk_key is not None:
        branch_from = trunk_snapshot_uri(config.root, plan.trunk_key, branch.trunk_seed, branch.epoch)
        trunk = Network(plan.trunk_key, branch.trunk_seed)
    if plan.prune_from is not None and branch is not None and branch.prune_seed is not None:
        # IMP round >= 1: its mask prunes the previous round's first child
        prune_from = checkpoint_uri(config.root, plan.prune_from, branch.prune_seed)
        prune_key = Network(plan.prune_from, branch.prune_seed)
        imp_rate = branch.rate
    source = plan.network(seeds[0]) if plan.is_imported else None
    settings = config.pair_settings
    return Trial(
        role="import" if plan.is_imported else "trial",
        sweep=config.name,
        root=config.root,
        model_key=plan.model_key,
        seeds=tuple(seeds),
        model=plan.fields(),
        train=asdict(plan.recipe(config.train)),
        train_override=plan.train_override,
        dataset=config.dataset.as_dict(),
        threads=threads,
        allow_import=tuple(config.allow_import),
        together=len(seeds) > 1 if together is None else bool(together),
        checkpoint_every=config.checkpoint_every,
        compile=config.compile,
        lineage=plan.lineage(),
        branch_from=branch_from,
        trunk=trunk,
        prune_from=prune_from,
        prune_key=prune_key,
        imp_rate=imp_rate,
        workers=1 if plan.is_imported else config.workers_per_trial,
        worker_gpu=gpu if config.workers_per_trial > 1 and not plan.is_imported else 0.0,
        source=source,
        evaluation={
            "train_samples": settings.train_samples,
            "test_samples": settings.test_samples,
            "seed": settings.subset_seed,
            "flip": settings.test_flip,
            "batch_size": settings.eval_batch_size,
        },
    )


def _trunk_of(plan: ModelPlan) -> Network | None:
    """The trunk that ``plan``'s children start from after epoch 0 (None: no such trunk)."""
    if plan.branch is None or plan.branch.epoch == 0 or plan.trunk_key is None:
        return None
    return Network(plan.trunk_key, plan.branch.trunk_seed)


def trunk_specs(config: SweepConfig, todo: list[tuple[ModelPlan, int]], threads: float) -> list[Trial]:
    """One trunk trial per (model config, trunk seed) that a child still to train branches from
    after epoch 0; each trains to the last branch epoch of its config (once: it resumes from its
    snapshots, and checks them)."""
    epochs: dict[Network, set[int]] = {}
    model: dict[str, ModelPlan] = {}
    for plan in config.models:
        trunk = _trunk_of(plan)
        if trunk is not None and plan.branch is not None:
            epochs.setdefault(trunk, set()).add(plan.branch.epoch)
            model[trunk.model_key] = plan
    needed = {trunk for plan, _ in todo if (trunk := _trunk_of(plan)) is not None}
    return [
        Trial(
            role="trunk",
            sweep=config.name,
            root=config.root,
            model_key=trunk.model_key,
            seeds=(trunk.seed,),
            epochs=tuple(sorted(epochs[trunk])),
            model=asdict(model[trunk.model_key].model),
            allow_import=tuple(config.allow_import),
            train=asdict(model[trunk.model_key].recipe(config.train)),
            dataset=config.dataset.as_dict(),
            threads=threads,
        )
        for trunk in sorted(needed)
    ]


def trial_groups(
    todo: list[tuple[ModelPlan, int]],
    config: SweepConfig,
    healed: dict[tuple[str, int], bool],
    gpu: float = 0.0,
    slots: int = 1,
) -> list[tuple[ModelPlan, list[int], bool]]:
    """The trials to run, in plan order: the seeds to train of each model config,
    :meth:`SweepConfig.stack_size` of them to a trial trained together when that is more than 1
    (``train.seeds_per_trial``; ``auto`` fills a GPU when trials get ``gpu``, sharing the seeds
    over the ``slots`` trials that run at once), else one to a trial trained alone; a damaged
    network is retrained the way it was trained (``healed``), whatever the config says now (a
    stack of any size computes each seed the same way). Each trial: (model config, seeds, together)."""
    per_slot = -(-len(todo) // max(slots, 1))
    seeds: dict[tuple[str, bool], list[int]] = {}
    plans: dict[str, ModelPlan] = {}
    for plan, seed in todo:
        together = healed.get((plan.model_key, seed), config.stack_size(plan, gpu, per_slot) > 1)
        seeds.setdefault((plan.model_key, together), []).append(seed)
        plans[plan.model_key] = plan
    out = []
    for (key, together), group in seeds.items():
        size = config.stack_size(plans[key], gpu, per_slot)
        step = (size if size > 1 else DEFAULT_STACK) if together else 1
        out += [(plans[key], group[i : i + step], together) for i in range(0, len(group), step)]
    return out


def stack_slots(config: SweepConfig, cpu: float, gpu: float, shape: ClusterShape) -> int:
    """Over how many trials at once ``seeds_per_trial: auto`` shares the seeds: ``max_trials_in_flight``,
    else what the cluster runs at once at its maximum size, or, where an autoscaler does not say its
    size, what is up now (at least 1: one stack is no slower to start than nodes are to come)."""
    if config.max_trials_in_flight is None and shape.maximum is None:
        shape = dataclasses.replace(shape, maximum=shape.current)
    return tasks_in_flight(config.max_trials_in_flight, cpu, gpu, shape)
