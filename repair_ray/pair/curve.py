"""One correction's curve: the interpolated (and corrected) network evaluated at every α."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..correction import correction_plan, has_batchnorm, remove_carried, repair, reset_batchnorm, target_moments
from ..datasets import ImageFiles, TensorData
from ..hooks import MomentRecorder, Moments
from ..interpolation import evaluate, interpolate_state
from ..permutation import PermutationSpec
from ..stacked import AlphaStack, chunks, interpolated_tensors
from .settings import PairSettings


@dataclass(frozen=True)
class HeldOut:
    """Where the ``layers`` table measures the variance collapse: samples ``[start, stop)`` of ``data``,
    disjoint from the statistics samples REPAIR was fitted on, so a repaired ratio near 1 is a
    finding and not true by construction. ``split`` names them (the ``held_out`` column): ``train``
    samples are the train-curve samples after the statistics samples, measured during the train
    curve's own pass; ``test`` samples (when no train-curve sample is left over) are the first of the
    test curve's, measured in a pass of their own (the test curve may be evaluated with flips)."""

    points: Sequence[str]
    split: str
    data: TensorData | ImageFiles
    start: int
    stop: int

    @property
    def rides_on_train(self) -> bool:
        """Whether the held-out samples are recorded during the train curve's evaluation."""
        return self.split == "train"

    @property
    def record(self) -> tuple[Sequence[str], int, int]:
        """``(points, start, stop)``, what a stacked evaluation records."""
        return self.points, self.start, self.stop

    def recorder(self, axes: Mapping[str, int]) -> MomentRecorder:
        return MomentRecorder(self.points, self.stop, self.start, axes=axes)


class CurvePoints:
    """The metrics of one correction's curve at every α: ``{α: {split: metrics, "layers": moments at 0.5}}``.

    The ``test`` split is evaluated with flip test-time augmentation when ``settings.test_flip``
    says so (:meth:`flips`); the ``train`` split never is (its pass also records statistics).

    ``per_pass`` α at a time: one (today's reference path: the interpolated network loaded,
    corrected and evaluated α by α) or several as one vmapped program (:mod:`repair_ray.stacked`),
    which gives the same numbers up to float rounding. The uncorrected curve's endpoints are the
    trained networks' evaluations (``endpoint``), not evaluated again.
    """

    def __init__(
        self,
        work: nn.Module,
        spec: PermutationSpec,
        splits: Mapping[str, TensorData | ImageFiles],
        stat_data: TensorData,
        settings: PairSettings,
        clock: Clock,
        held_out: HeldOut,
        moments_a: Mapping[str, Moments],
        endpoint: Mapping[str, tuple[dict[str, float], ...]],
        per_pass: int,
    ) -> None:
        self.work, self.spec, self.splits, self.stat_data = work, spec, splits, stat_data
        self.settings, self.clock, self.held_out = settings, clock, held_out
        self.moments_a, self.endpoint, self.per_pass = moments_a, endpoint, per_pass
        self.skeleton = copy.deepcopy(work).to("meta") if per_pass > 1 else None  # the stacks' architecture

    def __call__(
        self,
        correction: str,
        state_a: Mapping[str, torch.Tensor],
        state_b: Mapping[str, torch.Tensor],
        moments_b: Mapping[str, Moments],
        alphas: Sequence[float],
    ) -> dict[float, dict]:
        out: dict[float, dict] = {}
        todo = []
        for alpha in alphas:
            if alpha in (0.0, 1.0) and correction == "none":
                out[alpha] = {split: self.endpoint[split][0 if alpha == 0.0 else 1] for split in self.splits}
            else:
                todo.append(alpha)
        if self.per_pass <= 1:
            for alpha in todo:
                out[alpha] = self._one(correction, state_a, state_b, moments_b, alpha)
        else:
            for chunk in chunks(todo, self.per_pass):
                out.update(self._stacked(correction, state_a, state_b, moments_b, chunk))
        return out

    def flips(self, split: str) -> bool:
        """Whether ``split`` is evaluated with flip test-time augmentation: the test split when the settings ask."""
        return split == "test" and self.settings.test_flip

    def _one(
        self,
        correction: str,
        state_a: Mapping[str, torch.Tensor],
        state_b: Mapping[str, torch.Tensor],
        moments_b: Mapping[str, Moments],
        alpha: float,
    ) -> dict:
        work, settings = self.work, self.settings
        work.load_state_dict(interpolate_state(state_a, state_b, alpha))
        remove_carried(work)  # the previous point's carried affines
        with self.clock("stat"):
            correct(work, correction, self.moments_a, moments_b, self.stat_data, alpha, self.spec, settings)
        held = self.held_out
        # at alpha = 0.5 the variance collapse (``layers``) is measured on the held-out samples too
        recorder = held.recorder(self.spec.channel_axes) if alpha == 0.5 else None
        measured: dict = {}
        with self.clock("eval"):
            for split, data in self.splits.items():
                record = recorder if split == "train" and held.rides_on_train else None
                measured[split] = evaluate(
                    work, data, batch_size=settings.eval_batch_size, record=record, flip=self.flips(split)
                )
            if recorder is not None and not held.rides_on_train:
                evaluate(work, held.data, batch_size=settings.eval_batch_size, record=recorder)
        if recorder is not None:
            measured["layers"] = recorder.result()
        return measured

    def _stacked(
        self,
        correction: str,
        state_a: Mapping[str, torch.Tensor],
        state_b: Mapping[str, torch.Tensor],
        moments_b: Mapping[str, Moments],
        alphas: Sequence[float],
    ) -> dict[float, dict]:
        spec, settings = self.spec, self.settings
        assert self.skeleton is not None  # built on construction whenever several α share a pass
        stack = AlphaStack(self.skeleton, interpolated_tensors(self.work, state_a, state_b, alphas))
        carried: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        with self.clock("stat"):
            if correction != "none":
                plan = correction_plan(correction, spec, batchnorm=has_batchnorm(self.work))
                targets = None
                if plan.renormalised:
                    per_alpha = [target_moments(self.moments_a, moments_b, alpha) for alpha in alphas]
                    targets = {point: [t[point] for t in per_alpha] for point in plan.renormalised}
                carried = stack.correct(
                    self.stat_data,
                    reset=plan.reset,
                    targets=targets,
                    batch_size=settings.stat_batch_size,
                    axes=spec.channel_axes,
                    carried=frozenset(plan.carried),
                )
        out: dict[float, dict] = {alpha: {} for alpha in alphas}
        held = self.held_out
        with self.clock("eval"):
            for split, data in self.splits.items():
                record = held.record if split == "train" and held.rides_on_train and 0.5 in alphas else None
                metrics, moments = stack.evaluate(
                    data,
                    batch_size=settings.eval_batch_size,
                    carried=carried,
                    axes=spec.channel_axes,
                    record=record,
                    flip=self.flips(split),
                )
                for k, alpha in enumerate(alphas):
                    out[alpha][split] = metrics[k]
                    if alpha == 0.5 and record is not None:
                        out[alpha]["layers"] = {point: moments[point][k] for point in moments}
            if 0.5 in alphas and not held.rides_on_train:
                _, moments = stack.evaluate(
                    held.data,
                    batch_size=settings.eval_batch_size,
                    carried=carried,
                    axes=spec.channel_axes,
                    record=held.record,
                )
                k = list(alphas).index(0.5)
                out[0.5]["layers"] = {point: moments[point][k] for point in moments}
        return out


class Clock:
    """Accumulates wall time per phase (``align``, ``stat``, ``eval``) until taken."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {"align": 0.0, "stat": 0.0, "eval": 0.0}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.spent[phase] += time.perf_counter() - started

    def take(self) -> dict[str, float]:
        spent, self.spent = self.spent, dict.fromkeys(self.spent, 0.0)
        return spent


def correct(
    model: nn.Module,
    correction: str,
    moments_a: Mapping[str, Moments],
    moments_b: Mapping[str, Moments],
    stat_data: TensorData,
    alpha: float,
    spec: PermutationSpec,
    settings: PairSettings,
) -> None:
    if correction == "reset":
        reset_batchnorm(model, stat_data, batch_size=settings.stat_batch_size)
    elif correction != "none":
        repair(
            model,
            moments_a,
            moments_b,
            stat_data,
            alpha=alpha,
            spec=spec,
            batch_size=settings.stat_batch_size,
            correction=correction,
        )
