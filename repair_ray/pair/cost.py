"""What one pair costs: the samples its analysis pushes through a network (the planner's estimate)."""

from __future__ import annotations

from .align import learned_steps
from .settings import PairSettings


def sample_forwards(
    settings: PairSettings, n_train_eval: int, n_test: int, *, batchnorm: bool, n_train: int | None = None
) -> int:
    """Samples :func:`analyse_pair` pushes through a network for one pair: the forward floor.

    Every endpoint evaluated once on the train-curve and test samples and measured once on the
    statistics samples; activation matching runs both networks on the statistics samples; an
    uncorrected curve evaluates each interior α once on the train-curve and test samples; a
    corrected one (``reset`` only on BatchNorm nets) evaluates every α, endpoints included, after
    one statistics pass each. The endpoints' and the ``layers`` statistics ride on the train
    evaluation, so they cost nothing extra, except augmented statistics samples
    (``stat_augment``: one more pass per endpoint) and held-out samples of the test split (one more
    pass per endpoint and per curve at α = 0.5).
    """
    stat = settings.stat_count(n_train_eval)
    interior = sum(1 for a in settings.alpha_points if 0 < a < 1)
    total = 2 * (n_train_eval + n_test) + 2 * stat
    if settings.stat_augment:
        total += 2 * stat
    if n_train_eval <= stat:  # held out on the test split
        total += (2 + len(settings.methods(batchnorm=batchnorm))) * min(stat, n_test)
    total += sum(2 * stat for a in settings.aligns if a == "activation")
    # a learned matching: a minibatch per step (backward passes not counted) and two full scorings
    for method in ("ste", "sinkhorn"):
        if method in settings.aligns:
            samples = getattr(settings, f"{method}_samples")
            whole = n_train or n_train_eval  # the training split (learned matchings with samples: all)
            n = stat if samples is None else (whole if samples == "all" else min(whole, samples))
            steps, batch = learned_steps(settings, method, n)
            total += steps * batch + 2 * n
    for _align, correction in settings.methods(batchnorm=batchnorm):
        if correction == "none":
            total += interior * (n_train_eval + n_test)
        else:
            total += len(settings.alpha_points) * (n_train_eval + n_test + stat)
    return total
