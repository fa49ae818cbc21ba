"""One training run: it learns, resumes bit for bit, stops on NaN, and seeds mean what they say."""

from __future__ import annotations

import math
import os
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torchvision

from repair_ray.datasets import Dataset, TensorData, load_dataset
from repair_ray.errors import SettingError
from repair_ray.io import storage
from repair_ray.io.checkpoint import load_checkpoint
from repair_ray.models import ModelConfig
from repair_ray.training import (
    NonFiniteLossError,
    TrainConfig,
    Trainer,
    TrainResult,
    augment_batch,
    train_model,
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SMALL_MLP = ModelConfig("mlp", width=32, depth=2)
FAST = TrainConfig(epochs=2, batch_size=128, lr=0.05)


@pytest.fixture(scope="module")
def synthetic() -> Dataset:
    return load_dataset("synthetic", train_size=1024, test_size=512)


def _weights_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_small_mlp_learns_synthetic_data() -> None:
    dataset = load_dataset("synthetic")
    result = train_model(ModelConfig("mlp", width=64, depth=1), FAST, dataset, seed=0)
    assert isinstance(result, TrainResult)
    assert result.status == "ok" and result.error is None and result.epochs == 2
    assert result.metrics["test_acc"] > 0.6  # chance is 0.1
    assert set(result.metrics) == {"train_loss", "train_acc", "test_loss", "test_acc"}
    assert result.state_dict is not None and result.seconds > 0


def test_on_epoch_gets_metrics_and_checkpoints_carry_meta(synthetic: Dataset, tmp_path: Path) -> None:
    seen: list[tuple[int, dict[str, float]]] = []
    uri = str(tmp_path / "model.pt")
    trainer = Trainer(SMALL_MLP, FAST, synthetic, seed=5, data_seed=6)
    result = trainer.run(checkpoint_uri=uri, on_epoch=lambda epoch, metrics: seen.append((epoch, metrics)))
    assert [epoch for epoch, _ in seen] == [1, 2]
    assert {"epoch_train_loss", "epoch_train_acc", "test_loss", "test_acc"} <= set(seen[0][1])
    assert seen[1][1]["train_acc"] == result.metrics["train_acc"]  # the last epoch has a clean train pass
    checkpoint = load_checkpoint(uri)
    meta = checkpoint.meta
    assert meta["status"] == "ok" and meta["epoch"] == 2
    assert meta["model_config"] == {"arch": "mlp", "width": 32, "depth": 2, "norm": "none", "init": "torch"}
    assert meta["train_config"]["lr"] == 0.05
    assert (meta["seed"], meta["init_seed"], meta["data_seed"]) == (5, 5, 6)
    assert meta["dataset"] == "synthetic" and meta["num_classes"] == 10 and meta["in_shape"] == [1, 28, 28]
    assert meta["metrics"]["test_acc"] == result.metrics["test_acc"]
    assert checkpoint.training_state is not None and checkpoint.training_state["epoch"] == 2
    assert _weights_equal(checkpoint.state_dict, result.state_dict)


class _Interrupted(Exception):
    pass


@pytest.mark.parametrize(
    ("model_config", "train_config", "shape"),
    [
        (SMALL_MLP, TrainConfig(epochs=3, batch_size=100, lr=0.05), (1, 28, 28)),
        (
            ModelConfig("mlp", width=16, depth=2, norm="batch"),
            TrainConfig(
                epochs=3,
                batch_size=64,
                optimizer="adam",
                lr=1e-3,
                warmup_epochs=0.5,
                schedule="cosine",
                augment=True,
            ),
            (3, 16, 16),
        ),
    ],
    ids=["sgd", "adam-batchnorm-augment"],
)
def test_resumed_run_equals_uninterrupted_run_bitwise(
    tmp_path: Path, model_config: ModelConfig, train_config: TrainConfig, shape: tuple[int, int, int]
) -> None:
    dataset = load_dataset("synthetic", shape=shape, train_size=384, test_size=64)
    straight = train_model(model_config, train_config, dataset, seed=1, checkpoint_uri=str(tmp_path / "a.pt"))

    uri = str(tmp_path / "b.pt")

    def crash_after_first_epoch(epoch: int, metrics: dict[str, float]) -> None:
        if epoch == 1:
            raise _Interrupted

    with pytest.raises(_Interrupted):
        train_model(model_config, train_config, dataset, seed=1, checkpoint_uri=uri, on_epoch=crash_after_first_epoch)
    assert load_checkpoint(uri).meta["epoch"] == 1
    epochs_run: list[int] = []
    resumed = train_model(
        model_config,
        train_config,
        dataset,
        seed=1,
        checkpoint_uri=uri,
        on_epoch=lambda e, m: epochs_run.append(e),
    )
    assert epochs_run == [2, 3]
    assert resumed.status == "ok" and resumed.epochs == 3
    assert _weights_equal(straight.state_dict, resumed.state_dict)
    assert straight.metrics == resumed.metrics


def test_finished_run_is_not_trained_again(synthetic: Dataset, tmp_path: Path) -> None:
    uri = str(tmp_path / "model.pt")
    first = train_model(SMALL_MLP, FAST, synthetic, seed=0, checkpoint_uri=uri)
    calls: list[int] = []
    again = train_model(SMALL_MLP, FAST, synthetic, seed=0, checkpoint_uri=uri, on_epoch=lambda e, m: calls.append(e))
    assert calls == [] and again.status == "ok" and again.epochs == 2
    assert again.metrics == first.metrics and _weights_equal(again.state_dict, first.state_dict)


def test_checkpoint_of_another_run_is_refused(synthetic: Dataset, tmp_path: Path) -> None:
    uri = str(tmp_path / "model.pt")
    train_model(SMALL_MLP, TrainConfig(epochs=1, batch_size=128), synthetic, seed=0, checkpoint_uri=uri)
    with pytest.raises(ValueError, match="init_seed"):
        train_model(SMALL_MLP, TrainConfig(epochs=1, batch_size=128), synthetic, seed=1, checkpoint_uri=uri)
    with pytest.raises(ValueError, match="train_config"):
        train_model(SMALL_MLP, TrainConfig(epochs=2, batch_size=128), synthetic, seed=0, checkpoint_uri=uri)


def test_nan_inputs_stop_the_run_without_a_checkpoint(synthetic: Dataset, tmp_path: Path) -> None:
    poisoned = Dataset(
        "poisoned",
        TensorData(torch.full_like(synthetic.train.x, math.nan), synthetic.train.y),
        synthetic.test,
        synthetic.num_classes,
        synthetic.in_shape,
    )
    uri = str(tmp_path / "model.pt")
    result = train_model(SMALL_MLP, FAST, poisoned, seed=0, checkpoint_uri=uri)
    assert result.status == "nan_loss" and result.state_dict is None and result.epochs == 0
    assert "epoch 1" in result.error and "step 1 " in result.error
    assert all(math.isnan(v) for v in result.metrics.values()) and len(result.metrics) == 4
    assert not storage.exists(uri)


def test_huge_learning_rate_ends_in_nan_loss(synthetic: Dataset) -> None:
    result = train_model(
        SMALL_MLP, TrainConfig(epochs=1, batch_size=128, lr=1e6, schedule="constant"), synthetic, seed=0
    )
    assert result.status == "nan_loss" and "epoch 1" in result.error


def test_weights_broken_mid_run_are_not_checkpointed(synthetic: Dataset, tmp_path: Path) -> None:
    uri = str(tmp_path / "model.pt")
    trainer = Trainer(SMALL_MLP, TrainConfig(epochs=3, batch_size=128), synthetic, seed=0)

    def break_weights(epoch: int, metrics: dict[str, float]) -> None:
        with torch.no_grad():
            trainer.model.head.weight.fill_(math.inf)

    result = trainer.run(checkpoint_uri=uri, on_epoch=break_weights)
    assert result.status == "nan_loss" and result.epochs == 1 and "epoch 2" in result.error
    checkpoint = load_checkpoint(uri)  # the healthy epoch-1 checkpoint is all there is
    assert checkpoint.meta["epoch"] == 1 and checkpoint.meta["status"] == "running"
    assert all(torch.isfinite(t).all() for t in checkpoint.state_dict.values())


def test_train_epoch_raises_non_finite_loss_error(synthetic: Dataset) -> None:
    trainer = Trainer(SMALL_MLP, FAST, synthetic, seed=0)
    with torch.no_grad():
        trainer.model.head.bias.fill_(math.nan)
    with pytest.raises(NonFiniteLossError, match="epoch 1, step 1 of 8"):
        trainer.train_epoch()


def test_augmentation_keeps_shapes_and_crops_or_flips_each_sample() -> None:
    x = torch.randn(32, 3, 12, 10)
    out = augment_batch(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert not torch.equal(out, x)
    assert torch.equal(out, augment_batch(x, torch.Generator().manual_seed(0)))
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    flipped = 0
    for i in range(len(x)):
        candidates = [
            (
                flip,
                padded[i, :, r : r + 12, c : c + 10].flip(-1) if flip else padded[i, :, r : r + 12, c : c + 10],
            )
            for r in range(9)
            for c in range(9)
            for flip in (False, True)
        ]
        matches = [flip for flip, crop in candidates if torch.equal(crop, out[i])]
        assert matches, f"sample {i} is not a crop of its padded input"
        flipped += matches[0]
    assert 0 < flipped < len(x)


def test_augmentation_default_is_on_for_rgb_32_and_larger() -> None:
    assert TrainConfig().uses_augmentation((3, 32, 32))
    assert TrainConfig().uses_augmentation((3, 64, 64))
    assert not TrainConfig().uses_augmentation((1, 28, 28))
    assert not TrainConfig().uses_augmentation((3, 28, 28))
    assert TrainConfig(augment=True).uses_augmentation((1, 28, 28))
    assert not TrainConfig(augment=False).uses_augmentation((3, 32, 32))


def test_init_seed_sets_initial_weights_and_data_seed_does_not(synthetic: Dataset) -> None:
    def initial(**seeds: int) -> dict[str, torch.Tensor]:
        return Trainer(SMALL_MLP, FAST, synthetic, **seeds).model.state_dict()

    assert not _weights_equal(initial(seed=0, init_seed=1), initial(seed=0, init_seed=2))
    assert _weights_equal(initial(seed=0, init_seed=1, data_seed=1), initial(seed=0, init_seed=1, data_seed=2))
    assert _weights_equal(initial(seed=3), initial(seed=9, init_seed=3))
    before = torch.random.get_rng_state()
    initial(seed=4)
    assert torch.equal(before, torch.random.get_rng_state())  # building the model leaves the global RNG alone


def test_data_seed_changes_training(synthetic: Dataset) -> None:
    config = TrainConfig(epochs=1, batch_size=128)
    a = train_model(SMALL_MLP, config, synthetic, seed=0, data_seed=1)
    b = train_model(SMALL_MLP, config, synthetic, seed=0, data_seed=2)
    c = train_model(SMALL_MLP, config, synthetic, seed=0, data_seed=1)
    assert not _weights_equal(a.state_dict, b.state_dict)
    assert _weights_equal(a.state_dict, c.state_dict)


def test_learning_rate_schedules(synthetic: Dataset) -> None:
    def rates(**kw: object) -> list[float]:
        trainer = Trainer(SMALL_MLP, TrainConfig(batch_size=128, lr=1.0, **kw), synthetic, seed=0)
        assert trainer.steps_per_epoch == 8
        return [trainer.learning_rate(s) for s in range(trainer.total_steps)]

    linear = rates(epochs=2)
    assert linear[0] == 1.0 and linear[-1] == pytest.approx(1 / 16) and linear == sorted(linear, reverse=True)
    warm = rates(epochs=2, warmup_epochs=1.0)
    assert warm[:8] == pytest.approx([(s + 1) / 8 for s in range(8)]) and warm[8] == 1.0
    cosine = rates(epochs=2, schedule="cosine")
    assert cosine[0] == 1.0 and cosine[8] == pytest.approx(0.5) and cosine[-1] < 0.01
    assert rates(epochs=2, schedule="constant") == [1.0] * 16


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("optimizer", "rmsprop"),
        ("schedule", "step"),
        ("epochs", -1),
        ("batch_size", 0),
        ("lr", 0.0),
        ("warmup_epochs", 20.0),
        ("label_smoothing", 1.0),
    ],
)
def test_train_config_rejects_bad_values_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"TrainConfig.{field}"):
        TrainConfig(**{field: value})


def test_model_config_is_validated_and_builds() -> None:
    with pytest.raises(ValueError, match="arch"):
        ModelConfig("transformer", width=1)
    with pytest.raises(ValueError, match="norm"):
        ModelConfig("resnet20", width=1, norm="none")
    model = ModelConfig("mlp", width=8, depth=1).build(num_classes=3, in_shape=(1, 4, 4))
    assert model(torch.zeros(2, 1, 4, 4)).shape == (2, 3)


def test_mlp_trains_on_real_mnist_to_90_percent_in_one_epoch(monkeypatch: pytest.MonkeyPatch, mnist) -> None:
    """Not skipped when MNIST is missing: this test must then fail."""
    monkeypatch.setattr(torchvision.datasets.MNIST, "download", lambda self: None)
    root = os.environ.get("REPAIR_RAY_DATA", str(SHARED_DATA))
    monkeypatch.setenv("REPAIR_RAY_DATA", root)
    mnist = load_dataset("mnist")
    result = train_model(ModelConfig("mlp", width=128, depth=2), TrainConfig(epochs=1), mnist, seed=0)
    assert result.status == "ok"
    assert result.metrics["test_acc"] > 0.9


def test_zero_epochs_checkpoints_the_initial_network(synthetic: Dataset, tmp_path: Path) -> None:
    uri = str(tmp_path / "init.pt")
    result = train_model(SMALL_MLP, TrainConfig(epochs=0), synthetic, seed=2, checkpoint_uri=uri)
    initial = Trainer(SMALL_MLP, TrainConfig(epochs=0), synthetic, seed=2).model.state_dict()
    assert result.status == "ok" and result.epochs == 0 and 0 < result.metrics["test_acc"] < 0.5
    assert _weights_equal(load_checkpoint(uri).state_dict, initial)


# ----------------------------------------------------------------------------- trunks and branches

BRANCHING = TrainConfig(epochs=3, batch_size=128, lr=0.05)


def _trunk(dataset: Dataset, root: Path, epochs=(1, 2), seed: int = 7) -> dict[int, dict[str, float]]:
    from repair_ray.training import train_trunk

    return train_trunk(
        SMALL_MLP, BRANCHING, dataset, seed=seed, epochs=epochs, snapshot_uri=lambda e: str(root / f"epoch-{e}.pt")
    )


def test_a_branch_carries_weights_optimizer_and_schedule_exactly(synthetic: Dataset, tmp_path: Path) -> None:
    """With the trunk's own data order put back, a branch at epoch 1 IS the straight run, bit for bit:
    nothing of the trunk's state is lost at the branch point; only the data order is the child's."""
    straight = train_model(SMALL_MLP, BRANCHING, synthetic, seed=7)
    _trunk(synthetic, tmp_path)
    snapshot = load_checkpoint(str(tmp_path / "epoch-1.pt"))
    child = Trainer(SMALL_MLP, BRANCHING, synthetic, seed=0, init_seed=7, data_seed=0, branch_epoch=1)
    child.start_from(str(tmp_path / "epoch-1.pt"))
    assert (child.epoch, child.step, child.seconds) == (1, child.steps_per_epoch, 0.0)
    assert _weights_equal(child.model.state_dict(), snapshot.state_dict)
    child.generator.set_state(snapshot.training_state["generator"])
    while child.epoch < BRANCHING.epochs:
        child.train_epoch()
    assert _weights_equal(child._state_dict(), straight.state_dict)


def test_children_differ_only_in_data_order_and_resume_exactly(synthetic: Dataset, tmp_path: Path) -> None:
    _trunk(synthetic, tmp_path / "trunk")
    snap = str(tmp_path / "trunk" / "epoch-2.pt")
    kw = {"init_seed": 7, "branch_epoch": 2, "branch_from": snap}
    a = train_model(SMALL_MLP, BRANCHING, synthetic, seed=0, data_seed=0, **kw)
    b = train_model(SMALL_MLP, BRANCHING, synthetic, seed=1, data_seed=1, **kw)
    again = train_model(SMALL_MLP, BRANCHING, synthetic, seed=0, data_seed=0, **kw)
    assert _weights_equal(a.state_dict, again.state_dict)
    assert not _weights_equal(a.state_dict, b.state_dict)
    assert a.epochs == 3 and a.status == "ok"
    # a child's checkpoint records its branch and refuses to resume another branch
    uri = str(tmp_path / "child.pt")
    train_model(SMALL_MLP, BRANCHING, synthetic, seed=0, data_seed=0, checkpoint_uri=uri, **kw)
    assert load_checkpoint(uri).meta["branch_epoch"] == 2
    with pytest.raises(ValueError, match="branch_epoch"):
        train_model(SMALL_MLP, BRANCHING, synthetic, seed=0, init_seed=7, data_seed=0, checkpoint_uri=uri)


def test_children_at_epoch_zero_share_the_trunk_initialisation(synthetic: Dataset) -> None:
    a = Trainer(SMALL_MLP, BRANCHING, synthetic, seed=0, init_seed=7, data_seed=0, branch_epoch=0)
    b = Trainer(SMALL_MLP, BRANCHING, synthetic, seed=1, init_seed=7, data_seed=1, branch_epoch=0)
    assert _weights_equal(a.model.state_dict(), b.model.state_dict())
    assert not torch.equal(a.generator.get_state(), b.generator.get_state())


def test_a_trunk_is_trained_once_resumes_and_heals_a_damaged_snapshot(synthetic: Dataset, tmp_path: Path) -> None:
    full = tmp_path / "full"
    _trunk(synthetic, full, epochs=(0, 1, 2))
    parts = tmp_path / "parts"
    _trunk(synthetic, parts, epochs=(0, 1))
    grown = _trunk(synthetic, parts, epochs=(0, 1, 2))  # resumes at epoch 1: only epoch 2 is trained
    assert sorted(grown) == [2]
    for epoch in (0, 1, 2):
        assert _weights_equal(
            load_checkpoint(str(full / f"epoch-{epoch}.pt")).state_dict,
            load_checkpoint(str(parts / f"epoch-{epoch}.pt")).state_dict,
        )
    damaged = parts / "epoch-1.pt"
    damaged.write_bytes(damaged.read_bytes()[:100])
    healed = _trunk(synthetic, parts, epochs=(0, 1, 2))
    assert sorted(healed) == [1, 2]
    rebuilt, original = load_checkpoint(str(damaged)), load_checkpoint(str(full / "epoch-1.pt"))
    assert _weights_equal(rebuilt.state_dict, original.state_dict)
    with pytest.raises(ValueError, match="branch epochs must be 0 .. 2"):
        _trunk(synthetic, parts, epochs=(3,))


def test_a_branch_refuses_the_snapshot_of_another_trunk_or_epoch(synthetic: Dataset, tmp_path: Path) -> None:
    _trunk(synthetic, tmp_path)
    snap = str(tmp_path / "epoch-1.pt")
    with pytest.raises(ValueError, match="its epoch is 1"):
        train_model(SMALL_MLP, BRANCHING, synthetic, seed=0, init_seed=7, branch_epoch=2, branch_from=snap)
    with pytest.raises(ValueError, match="its seed is 7"):
        train_model(SMALL_MLP, BRANCHING, synthetic, seed=0, init_seed=3, branch_epoch=1, branch_from=snap)
    with pytest.raises(ValueError, match="needs its trunk's snapshot"):
        train_model(SMALL_MLP, BRANCHING, synthetic, seed=0, init_seed=7, branch_epoch=1)


# ----------------------------------------------------------------------------- precision and memory format


def test_bf16_autocast_trains_on_the_cpu_with_float32_weights_and_its_own_identity(synthetic: Dataset) -> None:
    bf16 = TrainConfig(epochs=2, batch_size=128, lr=0.05, precision="bf16")
    fp32 = TrainConfig(epochs=2, batch_size=128, lr=0.05)
    low = train_model(SMALL_MLP, bf16, synthetic, seed=3)
    full = train_model(SMALL_MLP, fp32, synthetic, seed=3)
    assert low.status == "ok" and all(t.dtype == torch.float32 for t in low.state_dict.values())
    assert not _weights_equal(low.state_dict, full.state_dict)  # autocast really ran in bfloat16
    assert abs(low.metrics["test_acc"] - full.metrics["test_acc"]) < 0.05
    # fp32 (the default) is left out of a run's identity, so runs named before the field keep their names
    assert "precision" not in fp32.identity((1, 28, 28)) and bf16.identity((1, 28, 28))["precision"] == "bf16"
    with pytest.raises(SettingError, match="precision: must be one of fp32, bf16"):
        TrainConfig(precision="fp16")


def test_a_checkpoint_written_before_precision_existed_still_resumes(synthetic: Dataset, tmp_path: Path) -> None:
    uri = str(tmp_path / "old.pt")
    train_model(SMALL_MLP, FAST, synthetic, seed=1, checkpoint_uri=uri)
    checkpoint = load_checkpoint(uri)
    assert "precision" not in checkpoint.meta["train_config"]
    trainer = Trainer(SMALL_MLP, FAST, synthetic, seed=1)
    trainer.resume(uri)
    assert trainer.epoch == 2
    with pytest.raises(ValueError, match="train_config"):
        Trainer(SMALL_MLP, TrainConfig(**{**asdict(FAST), "precision": "bf16"}), synthetic, seed=1).resume(uri)


def test_channels_last_computes_the_same_training_as_contiguous_memory() -> None:
    dataset = load_dataset("synthetic", shape=(3, 16, 16), train_size=256, test_size=64)
    config = ModelConfig("cifar_resnet", width=0.25, depth=8, norm="batch")
    train = TrainConfig(epochs=1, batch_size=64, lr=0.05, augment=False)
    nhwc = Trainer(config, train, dataset, seed=0, channels_last=True)
    nchw = Trainer(config, train, dataset, seed=0)
    assert not nchw.channels_last  # automatic: on CUDA only
    conv = next(m for m in nhwc.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = dataset.test.x[:32]
    with torch.no_grad():  # the same function (up to the order of float sums)
        assert torch.allclose(
            nhwc.model.eval()(x.contiguous(memory_format=torch.channels_last)), nchw.model.eval()(x), atol=1e-5
        )
    nhwc.train_epoch()
    nchw.train_epoch()
    a, b = nhwc._state_dict(), nchw._state_dict()
    for name in a:  # and the same training, but for rounding that four steps of BatchNorm amplify a little
        assert (a[name].float() - b[name].float()).abs().max() <= 1e-3 * (1 + b[name].float().abs().max()), name
    assert nhwc.evaluate(("test",))["test_acc"] == pytest.approx(nchw.evaluate(("test",))["test_acc"], abs=1 / 64)


def test_the_per_epoch_history_survives_a_resume(tmp_path):
    dataset = synthetic_dataset_for_history()
    model, train = ModelConfig(arch="mlp", width=16, depth=1), TrainConfig(epochs=3, batch_size=64, lr=0.05)
    whole = train_model(model, train, dataset, seed=4)
    uri = tmp_path / "run.pt"
    first = Trainer(model, train, dataset, seed=4)
    first.train_epoch()
    first.history.append({"epoch": 1.0, "marker": 1.0})  # what the resumed run must carry on from
    first.save(uri, {}, status="running")
    resumed = train_model(model, train, dataset, seed=4, checkpoint_uri=uri)
    assert [h["epoch"] for h in whole.history] == [1.0, 2.0, 3.0]
    assert resumed.history[0] == {"epoch": 1.0, "marker": 1.0}
    assert resumed.history[1:] == whole.history[1:]
    assert set(whole.history[-1]) >= {"epoch_train_loss", "test_acc", "train_acc"}


def synthetic_dataset_for_history():
    return load_dataset("synthetic", shape=[1, 4, 4], num_classes=3, train_size=256, test_size=64)
