"""Seeds trained together (repair_ray.multiseed): each seed is the run it would be alone, checkpoints
go both ways between the two loops, and one seed's NaN, mask or BatchNorm statistics stay its own."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from repair_ray.datasets import Dataset, load_dataset
from repair_ray.io import storage
from repair_ray.io.checkpoint import load_checkpoint
from repair_ray.models import ModelConfig
from repair_ray.multiseed import train_together
from repair_ray.pruning import dense_mask, magnitude_prune
from repair_ray.training import TrainConfig, Trainer, TrainResult, train_trunk

# He init: the learning rates that make these tests' seeds diverge (or not) were chosen at its scale
MLP = ModelConfig("mlp", width=32, depth=2, init="he")
CNN = ModelConfig("vgg", width=0.125, depth=11, init="he")  # 8 plain 3x3 convolutions of 1 to 64 channels
BATCHNORM_CNN = ModelConfig("cifar_resnet", width=0.25, depth=8, norm="batch", init="he")
SGD = TrainConfig(epochs=1, batch_size=64, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
ADAM = TrainConfig(epochs=1, batch_size=64, optimizer="adam", lr=1e-3, weight_decay=5e-4)
SHORT = TrainConfig(epochs=3, batch_size=64, lr=0.05, momentum=0.9, warmup_epochs=0.5, schedule="cosine")


@pytest.fixture(scope="module")
def data() -> Dataset:
    """640 training samples: 10 steps of batch 64 per epoch."""
    return load_dataset("synthetic", shape=[1, 8, 8], num_classes=4, train_size=640, test_size=256)


def _relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The largest ||a - b|| / ||b|| over the floating tensors (integers must be equal)."""
    assert a.keys() == b.keys()
    worst = 0.0
    for name in a:
        if not b[name].is_floating_point():
            assert torch.equal(a[name], b[name]), name
            continue
        scale = b[name].float().norm().clamp_min(1e-12)
        worst = max(worst, ((a[name].float() - b[name].float()).norm() / scale).item())
    return worst


def _optimizer_difference(a: Trainer, b: Trainer) -> float:
    """The largest relative difference of the two trainers' optimizer states (same entries required)."""
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    return max(
        (_relative_difference(sa["state"][i], sb["state"][i]) for i in sa["state"]),
        default=0.0,
    )


def _alone(model: ModelConfig, train: TrainConfig, data: Dataset, seeds, **run) -> list[TrainResult]:
    return [Trainer(model, train, data, seed=seed).run(**run) for seed in seeds]


def _together(model: ModelConfig, train: TrainConfig, data: Dataset, seeds, **run) -> list[TrainResult]:
    return train_together([Trainer(model, train, data, seed=seed) for seed in seeds], **run)


@pytest.mark.parametrize("train", [SGD, ADAM], ids=["sgd-nesterov-wd", "adam"])
@pytest.mark.parametrize("model", [MLP, CNN], ids=["mlp", "cnn"])
def test_each_seed_after_ten_steps_is_the_seed_trained_alone(
    data: Dataset, model: ModelConfig, train: TrainConfig
) -> None:
    alone = [Trainer(model, train, data, seed=seed) for seed in (0, 1, 2)]
    together = [Trainer(model, train, data, seed=seed) for seed in (0, 1, 2)]
    assert alone[0].steps_per_epoch == 10
    expected = [t.run() for t in alone]
    results = train_together(together)
    for mine, theirs, a, b in zip(results, expected, together, alone, strict=True):
        assert mine.status == theirs.status == "ok"
        assert _relative_difference(mine.state_dict, theirs.state_dict) <= 1e-5
        assert _optimizer_difference(a, b) <= 1e-5  # momentum / Adam moments and step count, slice by slice
        assert (a.epoch, a.step) == (b.epoch, b.step) == (1, 10)
        assert torch.equal(a.generator.get_state(), b.generator.get_state())  # the same draws of data


def test_final_accuracy_of_each_seed_is_that_of_training_it_alone(data: Dataset) -> None:
    seeds = (0, 1, 2, 3)
    together = _together(MLP, SHORT, data, seeds)
    alone = _alone(MLP, SHORT, data, seeds)
    for mine, theirs in zip(together, alone, strict=True):
        assert mine.status == "ok" and mine.epochs == 3
        assert mine.metrics["test_acc"] > 0.4  # it learned (chance is 0.25)
        assert mine.metrics["test_acc"] == pytest.approx(theirs.metrics["test_acc"], abs=2 / 256)
        assert mine.metrics["test_loss"] == pytest.approx(theirs.metrics["test_loss"], rel=1e-3)


def test_seeds_are_not_copies_init_and_data_order_are_each_their_own(data: Dataset) -> None:
    config = TrainConfig(epochs=1, batch_size=64, lr=0.05)
    trainers = [
        Trainer(MLP, config, data, seed=0),
        Trainer(MLP, config, data, seed=1),  # another initialisation
        Trainer(MLP, config, data, seed=2, init_seed=0, data_seed=2),  # seed 0's weights, another data order
        Trainer(MLP, config, data, seed=3, init_seed=0, data_seed=0),  # seed 0 again: a copy stays a copy
    ]
    initial = [t._state_dict() for t in trainers]
    assert _relative_difference(initial[0], initial[1]) > 0.5
    assert _relative_difference(initial[0], initial[2]) == 0
    final = [r.state_dict for r in train_together(trainers)]
    assert _relative_difference(final[0], final[1]) > 0.5
    assert _relative_difference(final[0], final[2]) > 1e-3  # the data order made the difference
    assert _relative_difference(final[0], final[3]) == 0  # and the stack mixes nothing between seeds


def test_a_checkpoint_of_the_vectorised_loop_resumes_in_a_lone_trainer(data: Dataset, tmp_path: Path) -> None:
    uris = [str(tmp_path / f"seed-{seed}.pt") for seed in (0, 1)]
    trainers = [Trainer(MLP, SHORT, data, seed=seed) for seed in (0, 1)]

    def stop_after_first_epoch(epoch: int, metrics: dict[str, float]) -> None:
        if epoch == 1:
            raise _Interrupted

    with pytest.raises(_Interrupted):
        train_together(trainers, checkpoint_uris=uris, on_epoch=[None, stop_after_first_epoch])
    assert [load_checkpoint(uri).meta["epoch"] for uri in uris] == [1, 1]
    resumed = [
        Trainer(MLP, SHORT, data, seed=seed).run(checkpoint_uri=uri) for seed, uri in zip((0, 1), uris, strict=True)
    ]
    alone = _alone(MLP, SHORT, data, (0, 1))
    for mine, theirs in zip(resumed, alone, strict=True):
        assert mine.status == "ok" and mine.epochs == 3 and len(mine.history) == 3
        assert _relative_difference(mine.state_dict, theirs.state_dict) <= 1e-5


def test_a_lone_trainers_checkpoint_resumes_in_the_vectorised_loop(data: Dataset, tmp_path: Path) -> None:
    uris = [str(tmp_path / f"seed-{seed}.pt") for seed in (0, 1)]
    for seed, uri in zip((0, 1), uris, strict=True):
        trainer = Trainer(MLP, SHORT, data, seed=seed)
        running = trainer.train_epoch()
        trainer.finish_epoch(running, checkpoint_uri=uri, checkpoint_every=1, on_epoch=None)
    epochs_trained: list[int] = []
    resumed = train_together(
        [Trainer(MLP, SHORT, data, seed=seed) for seed in (0, 1)],
        checkpoint_uris=uris,
        on_epoch=[lambda e, m: epochs_trained.append(e), None],
    )
    assert epochs_trained == [2, 3]
    alone = _alone(MLP, SHORT, data, (0, 1))
    for mine, theirs in zip(resumed, alone, strict=True):
        assert mine.status == "ok" and [h["epoch"] for h in mine.history] == [1, 2, 3]
        assert _relative_difference(mine.state_dict, theirs.state_dict) <= 1e-5
    assert all(load_checkpoint(uri).meta["status"] == "ok" for uri in uris)


class _Interrupted(Exception):
    pass


def _interrupt_at(epoch: int):
    def interrupt(e: int, metrics: dict[str, float]) -> None:
        if e == epoch:
            raise _Interrupted

    return interrupt


def test_an_interrupted_vectorised_run_resumes_to_the_uninterrupted_result(data: Dataset, tmp_path: Path) -> None:
    seeds = (0, 1, 2)
    straight = _together(MLP, SHORT, data, seeds)
    uris = [str(tmp_path / f"seed-{seed}.pt") for seed in seeds]
    with pytest.raises(_Interrupted):  # seed 0 has its epoch-1 checkpoint, seeds 1 and 2 have none yet
        _together(MLP, SHORT, data, seeds, checkpoint_uris=uris, on_epoch=[_interrupt_at(1), None, None])
    assert storage.exists(uris[0]) and not storage.exists(uris[1])
    epochs_trained: dict[int, list[int]] = {seed: [] for seed in seeds}
    resumed = _together(
        MLP,
        SHORT,
        data,
        seeds,
        checkpoint_uris=uris,
        on_epoch=[lambda e, m, s=s: epochs_trained[s].append(e) for s in seeds],
    )
    # seeds 1 and 2 catch up on epoch 1 before seed 0 joins them
    assert epochs_trained == {0: [2, 3], 1: [1, 2, 3], 2: [1, 2, 3]}
    for mine, theirs in zip(resumed, straight, strict=True):
        assert mine.status == "ok"
        assert _relative_difference(mine.state_dict, theirs.state_dict) <= 1e-6
        assert mine.metrics["test_acc"] == pytest.approx(theirs.metrics["test_acc"], abs=1 / 256)


def _poison(trainer: Trainer, kind: str) -> Trainer:
    """``inf``: a loss of NaN at the first step; ``huge``: first-layer weights 1e8 times too large,
    whose updates blow up a few steps later."""
    with torch.no_grad():
        if kind == "inf":
            trainer.model.head.weight[0, 0] = math.inf
        else:
            trainer.model.layers[0].linear.weight.mul_(1e8)
    return trainer


def test_a_nan_in_one_seed_fails_only_that_seed(data: Dataset, tmp_path: Path) -> None:
    trainers = [Trainer(MLP, SHORT, data, seed=seed) for seed in (0, 1, 2, 3)]
    _poison(trainers[1], "inf")
    _poison(trainers[2], "huge")
    uris = [str(tmp_path / f"seed-{seed}.pt") for seed in (0, 1, 2, 3)]
    results = train_together(trainers, checkpoint_uris=uris)
    assert [r.status for r in results] == ["ok", "nan_loss", "nan_loss", "ok"]
    for seed in (1, 2):
        failed = results[seed]
        assert failed.state_dict is None and failed.epochs == 0 and failed.history == []
        assert all(math.isnan(v) for v in failed.metrics.values()) and not storage.exists(uris[seed])
    assert results[1].error.startswith("training loss is nan at epoch 1, step 1 of 10 (learning rate")
    lone = _poison(Trainer(MLP, SHORT, data, seed=2), "huge")
    expected = lone.run()
    assert results[2].error == expected.error and "step 1 of" not in expected.error
    assert trainers[2].step == lone.step > 0  # left where the lone run stops: before the failed step
    assert _relative_difference(trainers[2]._state_dict(), lone._state_dict()) <= 1e-5
    for mine, theirs in zip([results[0], results[3]], _alone(MLP, SHORT, data, (0, 3)), strict=True):
        assert _relative_difference(mine.state_dict, theirs.state_dict) <= 1e-5


def test_when_the_first_seed_fails_mid_epoch_the_others_keep_their_learning_rates(data: Dataset) -> None:
    trainers = [_poison(Trainer(MLP, SHORT, data, seed=0), "huge"), Trainer(MLP, SHORT, data, seed=1)]
    results = train_together(trainers)
    assert results[0].status == "nan_loss" and "step 1 of" not in results[0].error
    (alone,) = _alone(MLP, SHORT, data, (1,))
    assert _relative_difference(results[1].state_dict, alone.state_dict) <= 1e-5


@pytest.mark.parametrize("every", [3, 16])
def test_checking_losses_once_a_window_fails_the_same_seeds_at_the_same_steps_with_the_same_state(
    data: Dataset, every: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a GPU does (multiseed.stack.NAN_CHECK_EVERY): steps unchecked, then back to the window's start
    and step by step when a loss was not finite. On the CPU it must give the bits of checking every step."""
    from repair_ray.multiseed import stack

    def poisoned() -> list[Trainer]:
        trainers = [Trainer(MLP, SHORT, data, seed=seed) for seed in range(4)]
        _poison(trainers[0], "huge")
        _poison(trainers[2], "inf")
        return trainers

    checked = poisoned()
    expected = train_together(checked)
    monkeypatch.setattr(stack, "NAN_CHECK_EVERY", {"cpu": every})
    replays = []
    restore = stack.Stack._restore
    monkeypatch.setattr(stack.Stack, "_restore", lambda self, snap: replays.append(1) or restore(self, snap))
    windowed = poisoned()
    results = train_together(windowed)
    assert replays  # a failure sent its window back (once per window that held one)
    assert [r.status for r in results] == [r.status for r in expected] == ["nan_loss", "ok", "nan_loss", "ok"]
    for mine, theirs, a, b in zip(results, expected, windowed, checked, strict=True):
        assert mine.error == theirs.error and mine.history == theirs.history
        assert (a.epoch, a.step) == (b.epoch, b.step)
        assert all(torch.equal(t, b._state_dict()[n]) for n, t in a._state_dict().items())
        assert _optimizer_difference(a, b) == 0.0


def test_weights_broken_mid_run_fail_that_seed_with_the_lone_runs_error(data: Dataset, tmp_path: Path) -> None:
    def breaker(trainer: Trainer):
        def break_weights(epoch: int, metrics: dict[str, float]) -> None:
            with torch.no_grad():
                trainer.model.head.weight.fill_(math.inf)

        return break_weights

    lone = Trainer(MLP, SHORT, data, seed=1)
    expected = lone.run(on_epoch=breaker(lone))
    trainers = [Trainer(MLP, SHORT, data, seed=seed) for seed in (0, 1)]
    uris = [str(tmp_path / "a.pt"), str(tmp_path / "b.pt")]
    results = train_together(trainers, checkpoint_uris=uris, on_epoch=[None, breaker(trainers[1])])
    assert results[0].status == "ok" and results[0].epochs == 3
    assert results[1].status == expected.status == "nan_loss"
    assert results[1].error == expected.error and "epoch 2, step 1 of 10" in results[1].error
    assert results[1].epochs == 1 and len(results[1].history) == 1 and results[1].seconds > 0
    assert load_checkpoint(uris[1]).meta["epoch"] == 1  # its healthy epoch-1 checkpoint is all there is
    assert (trainers[1].epoch, trainers[1].step) == (lone.epoch, lone.step) == (1, 10)


def test_each_seed_keeps_its_own_imp_mask(data: Dataset) -> None:
    def masks_for(seed: int):
        def mask(model: torch.nn.Module):
            noise = {
                n: torch.randn(p.shape, generator=torch.Generator().manual_seed(seed))
                for n, p in model.named_parameters()
            }
            return magnitude_prune(noise, dense_mask(model), 0.5 + 0.2 * seed)

        return mask

    def trainers():
        return [
            Trainer(MLP, SHORT, data, seed=0, mask=masks_for(0)),
            Trainer(MLP, SHORT, data, seed=1, mask=masks_for(1)),
            Trainer(MLP, SHORT, data, seed=2),  # dense: nothing pruned
        ]

    together = trainers()
    results = train_together(together)
    alone = [t.run() for t in trainers()]
    for trainer, mine, theirs in zip(together, results, alone, strict=True):
        assert _relative_difference(mine.state_dict, theirs.state_dict) <= 1e-5
        if trainer.mask is None:
            assert all((t != 0).all() for n, t in mine.state_dict.items() if n.endswith("weight"))
            continue
        for name, keep in trainer.mask.items():
            assert (mine.state_dict[name][~keep] == 0).all(), name
            assert (mine.state_dict[name][keep] != 0).all(), name
    sparsity = [
        1 - sum(k.sum() for k in t.mask.values()) / sum(k.numel() for k in t.mask.values()) for t in together[:2]
    ]
    assert sparsity == pytest.approx([0.5, 0.7], abs=1e-3)


def test_batchnorm_running_statistics_are_each_seeds_own(data: Dataset) -> None:
    config = TrainConfig(epochs=1, batch_size=64, lr=0.05, momentum=0.9)
    results = _together(BATCHNORM_CNN, config, data, (0, 1))
    alone = _alone(BATCHNORM_CNN, config, data, (0, 1))
    statistics = [n for n in results[0].state_dict if n.endswith(("running_mean", "running_var"))]
    assert statistics and all(results[0].state_dict[n].shape == alone[0].state_dict[n].shape for n in statistics)
    for mine, theirs in zip(results, alone, strict=True):
        for name in statistics:
            assert _relative_difference({name: mine.state_dict[name]}, {name: theirs.state_dict[name]}) <= 1e-5, name
        tracked = [n for n in mine.state_dict if n.endswith("num_batches_tracked")]
        assert all(mine.state_dict[n].item() == 10 for n in tracked)
        assert _relative_difference(mine.state_dict, theirs.state_dict) <= 1e-5
    first = statistics[0]
    assert not torch.allclose(results[0].state_dict[first], results[1].state_dict[first])


def test_seconds_and_history_are_filled_per_seed(data: Dataset, tmp_path: Path, monkeypatch) -> None:
    """A seed's seconds are its share of every stacked epoch (the stack's time over the seeds in it)
    plus its own evaluations, never the checkpoints' writing: timed on a clock the test moves (10 s
    per stacked epoch, 1 s per evaluation, 100 s per checkpoint), so no real time is measured."""
    from types import SimpleNamespace

    from repair_ray.multiseed import stack as stack_module
    from repair_ray.training import trainer as trainer_module

    clock = SimpleNamespace(now=0.0)
    evaluations = {0: 0, 1: 0}
    for module in (stack_module, trainer_module):
        monkeypatch.setattr(module, "time", SimpleNamespace(perf_counter=lambda: clock.now))

    def moving(method, seconds, counted=None):
        def moved(self, *args, **kwargs):
            clock.now += seconds
            if counted is not None:
                counted[self.seed] += 1
            return method(self, *args, **kwargs)

        return moved

    monkeypatch.setattr(stack_module.Stack, "train_epoch", moving(stack_module.Stack.train_epoch, 10.0))
    monkeypatch.setattr(Trainer, "evaluate", moving(Trainer.evaluate, 1.0, evaluations))
    monkeypatch.setattr(Trainer, "save", moving(Trainer.save, 100.0))
    seen: list[tuple[int, int]] = []
    trainers = [Trainer(MLP, SHORT, data, seed=seed) for seed in (0, 1)]
    results = train_together(
        trainers,
        checkpoint_uris=[str(tmp_path / "a.pt"), str(tmp_path / "b.pt")],
        on_epoch=[lambda e, m, s=s: seen.append((s, e)) for s in (0, 1)],
    )
    assert seen == [(0, 1), (1, 1), (0, 2), (1, 2), (0, 3), (1, 3)]
    assert evaluations == {0: 3, 1: 3}  # one per epoch (the last one's both splits at once)
    assert [r.seconds for r in results] == [3 * 10.0 / 2 + 3 * 1.0] * 2
    for result in results:
        assert [h["epoch"] for h in result.history] == [1, 2, 3]
        assert {"epoch_train_loss", "epoch_train_acc", "test_loss", "test_acc"} <= set(result.history[0])
        assert result.history[-1]["train_acc"] == result.metrics["train_acc"]
    checkpoint = load_checkpoint(str(tmp_path / "b.pt"))
    assert checkpoint.meta["seconds"] == results[1].seconds
    assert checkpoint.training_state["history"] == results[1].history


def test_branches_of_a_trunk_train_together_as_they_train_alone(data: Dataset, tmp_path: Path) -> None:
    train_trunk(MLP, SHORT, data, seed=7, epochs=(1,), snapshot_uri=lambda e: str(tmp_path / f"trunk-{e}.pt"))
    snapshot = str(tmp_path / "trunk-1.pt")

    def children():
        return [Trainer(MLP, SHORT, data, seed=s, init_seed=7, data_seed=s, branch_epoch=1) for s in (0, 1)]

    results = train_together(children(), branch_from=[snapshot, snapshot])
    alone = [child.run(branch_from=snapshot) for child in children()]
    for mine, theirs in zip(results, alone, strict=True):
        assert mine.status == "ok" and [h["epoch"] for h in mine.history] == [2, 3]
        assert _relative_difference(mine.state_dict, theirs.state_dict) <= 1e-5
    assert _relative_difference(results[0].state_dict, results[1].state_dict) > 1e-3


def test_bf16_runs_in_bfloat16_with_float32_weights(data: Dataset) -> None:
    bf16 = TrainConfig(epochs=1, batch_size=64, lr=0.05, precision="bf16")
    fp32 = TrainConfig(epochs=1, batch_size=64, lr=0.05)
    low = _together(MLP, bf16, data, (0,))[0]
    full = _together(MLP, fp32, data, (0,))[0]
    lone = _alone(MLP, bf16, data, (0,))[0]
    assert all(t.dtype == torch.float32 for t in low.state_dict.values())
    # it rounds as a lone bfloat16 run does, far closer to it than to float32
    assert _relative_difference(low.state_dict, lone.state_dict) < 0.5 * _relative_difference(
        full.state_dict, lone.state_dict
    )
    assert low.metrics["test_acc"] == pytest.approx(lone.metrics["test_acc"], abs=0.03)


def test_finished_runs_are_not_trained_again(data: Dataset, tmp_path: Path) -> None:
    uri = str(tmp_path / "done.pt")
    first = Trainer(MLP, SGD, data, seed=0).run(checkpoint_uri=uri)
    calls: list[int] = []
    again, fresh = train_together(
        [Trainer(MLP, SGD, data, seed=0), Trainer(MLP, SGD, data, seed=1)],
        checkpoint_uris=[uri, None],
        on_epoch=[lambda e, m: calls.append(e), None],
    )
    assert calls == [] and again.metrics == first.metrics and fresh.status == "ok"


def test_runs_that_cannot_share_a_stack_are_refused(data: Dataset) -> None:
    other = load_dataset("synthetic", shape=[1, 8, 8], num_classes=4, train_size=640, test_size=256, seed=1)
    a = Trainer(MLP, SGD, data, seed=0)
    with pytest.raises(ValueError, match=r"trainers\[1\]\.train_config is .* only runs of one network"):
        train_together([a, Trainer(MLP, ADAM, data, seed=1)])
    with pytest.raises(ValueError, match=r"trainers\[1\]\.model_config"):
        train_together([a, Trainer(CNN, SGD, data, seed=1)])
    with pytest.raises(ValueError, match=r"trainers\[1\] trains on other data"):
        train_together([a, Trainer(MLP, SGD, other, seed=1)])
    with pytest.raises(ValueError, match=r"trainers\[1\] is trainers\[0\] again"):
        train_together([a, a])
    with pytest.raises(ValueError, match="checkpoint_uris must hold one entry"):
        train_together([a], checkpoint_uris=["x.pt", "y.pt"])
    with pytest.raises(ValueError, match="at least one trainer"):
        train_together([])


def test_channels_last_trainers_train_together_and_keep_their_memory_format(data: Dataset) -> None:
    """A stack computes in NCHW whatever the trainers' format (vmap folds the seeds into grouped
    convolutions): it trains as the lone NCHW run does; NHWC's own rounding (test_training) is not
    reproduced, and ten steps of BatchNorm amplify that well past 1e-5."""
    config = TrainConfig(epochs=1, batch_size=64, lr=0.05, momentum=0.9)
    trainers = [Trainer(BATCHNORM_CNN, config, data, seed=seed, channels_last=True) for seed in (0, 1)]
    results = train_together(trainers)
    alone = _alone(BATCHNORM_CNN, config, data, (0, 1))
    for trainer, mine, theirs in zip(trainers, results, alone, strict=True):
        assert _relative_difference(mine.state_dict, theirs.state_dict) <= 1e-5
        conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="channels_last"):
        train_together([Trainer(BATCHNORM_CNN, config, data, seed=0), trainers[0]])


def _compiled_trainers(model: ModelConfig, train: TrainConfig, data: Dataset, seeds) -> list[Trainer]:
    return [Trainer(model, train, data, seed=seed, compile=True) for seed in seeds]


def test_a_compiled_lone_run_computes_the_eager_network(data: Dataset, compiled) -> None:
    eager = Trainer(MLP, SHORT, data, seed=0).run()
    trainer = Trainer(MLP, SHORT, data, seed=0, compile=True)
    result = trainer.run()
    assert result.status == "ok" and result.state_dict.keys() == eager.state_dict.keys()  # no "_orig_mod." names
    assert _relative_difference(result.state_dict, eager.state_dict) <= 1e-5  # 30 steps, up to float rounding
    assert result.metrics["test_acc"] == pytest.approx(eager.metrics["test_acc"], abs=1e-3)


def test_compiled_seeds_trained_together_compute_the_eager_stack(data: Dataset, compiled) -> None:
    eager = _together(MLP, SGD, data, (0, 1, 2))
    results = train_together(_compiled_trainers(MLP, SGD, data, (0, 1, 2)))
    for mine, theirs in zip(results, eager, strict=True):
        assert mine.status == "ok"
        assert _relative_difference(mine.state_dict, theirs.state_dict) <= 1e-5


def test_a_compiled_bf16_stack_rounds_like_the_eager_one(data: Dataset, compiled) -> None:
    bf16 = TrainConfig(epochs=1, batch_size=64, lr=0.05, precision="bf16")
    eager = _together(MLP, bf16, data, (0, 1))
    results = train_together(_compiled_trainers(MLP, bf16, data, (0, 1)))
    for mine, theirs in zip(results, eager, strict=True):
        assert mine.status == "ok" and _relative_difference(mine.state_dict, theirs.state_dict) <= 1e-2


@pytest.mark.slow  # compiling a vmapped ResNet's forward and backward takes ~30 s on a CPU core
def test_a_compiled_batchnorm_stack_keeps_each_seeds_statistics(compiled) -> None:
    # two steps: over more, BatchNorm nets amplify float rounding (10 steps: 4e-2 in a bias) whatever compiles
    two_steps = load_dataset("synthetic", shape=[1, 8, 8], num_classes=4, train_size=128, test_size=64)
    eager = _together(BATCHNORM_CNN, SGD, two_steps, (0, 1))
    results = train_together(_compiled_trainers(BATCHNORM_CNN, SGD, two_steps, (0, 1)))
    for mine, theirs in zip(results, eager, strict=True):
        assert mine.status == "ok" and _relative_difference(mine.state_dict, theirs.state_dict) <= 1e-5
    assert _relative_difference(results[0].state_dict, results[1].state_dict) > 1e-2  # each seed its own


def test_a_network_that_does_not_compile_fails_with_an_error_naming_the_setting(
    data: Dataset, monkeypatch: pytest.MonkeyPatch, compiled
) -> None:
    from repair_ray.training import CompileError

    def no_compiler(graph, inputs):
        raise RuntimeError("no C compiler on this machine")

    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda forward, **options: real(forward, backend=no_compiler))
    torch._dynamo.reset()  # nothing compiled by other tests is reused
    try:
        with pytest.raises(
            CompileError, match=r"torch.compile of the mlp-w32-d2-none network failed .*train.compile: false"
        ):
            Trainer(MLP, SGD, data, seed=0, compile=True).run()
        with pytest.raises(CompileError, match="the stacked mlp-w32-d2-none networks"):
            train_together(_compiled_trainers(MLP, SGD, data, (0, 1)))
    finally:
        torch._dynamo.reset()


def test_compiled_and_eager_runs_do_not_share_a_stack(data: Dataset, compiled) -> None:
    mixed = [Trainer(MLP, SGD, data, seed=0), Trainer(MLP, SGD, data, seed=1, compile=True)]
    with pytest.raises(ValueError, match="trainers\\[1\\].compile is True"):
        train_together(mixed)
