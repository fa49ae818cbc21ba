"""train.pad: a translated or cropped input's border is a black pixel (the papers' loaders), or the
dataset's mean colour (what networks trained before the field saw), and the model keys say which."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from repair_ray.datasets import Dataset, TensorData, load_dataset, make_synthetic
from repair_ray.errors import SettingError
from repair_ray.models import ModelConfig
from repair_ray.sweep.config import ConfigError, parse_config
from repair_ray.training import TrainConfig, Trainer, apply_augmentation
from repair_ray.training.batches import in_memory_batches
from tests.helpers import tiny_sweep

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def _epoch_inputs_and_draws(trainer: Trainer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first batch the trainer trains on, the same samples un-augmented, and their crop offsets
    (drawn again from a copy of the trainer's generator, as :func:`in_memory_batches` draws them)."""
    generator = torch.Generator().manual_seed(trainer.data_seed)
    order = torch.randperm(len(trainer.dataset.train), generator=generator)
    batch_size = trainer.train_config.batch_size
    offsets = torch.randint(0, 9, (2, batch_size), generator=generator)
    x, _ = next(iter(trainer.epoch_batches()))
    train = trainer.dataset.train
    assert isinstance(train, TensorData)
    return x, train.x[order[:batch_size]], offsets


def test_a_translated_mnist_input_is_padded_with_black_pixels(mnist) -> None:
    """The padded border of a translated MNIST batch un-normalises to pixel value 0 (it was the
    dataset mean, about 33 of 255, before ``train.pad``); ``pad: mean`` keeps that border."""
    mnist = load_dataset("mnist")
    assert mnist.black == pytest.approx((-MNIST_MEAN / MNIST_STD,))
    small = dataclasses.replace(mnist, train=mnist.train.head(512), test=mnist.test.head(64))
    model = ModelConfig("mlp", width=8, depth=1)
    for pad, pixel in (("black", 0.0), ("mean", MNIST_MEAN * 255)):
        config = TrainConfig(epochs=1, batch_size=64, augment="translate", pad=pad)
        trainer = Trainer(model, config, small, seed=3)
        x, _, offsets = _epoch_inputs_and_draws(trainer)
        border = 0
        for i in range(len(x)):
            rows, columns = int(offsets[0, i]), int(offsets[1, i])
            padded = torch.zeros(28, 28, dtype=torch.bool)  # which pixels of the output came from the padding
            padded[: max(0, 4 - rows)] = True
            padded[28 - max(0, rows - 4) :] = True
            padded[:, : max(0, 4 - columns)] = True
            padded[:, 28 - max(0, columns - 4) :] = True
            values = (x[i, 0][padded] * MNIST_STD + MNIST_MEAN) * 255  # back to pixel values
            torch.testing.assert_close(values, torch.full_like(values, pixel), atol=1e-4, rtol=0)
            border += int(padded.sum())
        assert border > 0  # some samples were shifted


def test_black_padding_is_the_normalised_zero_of_every_channel_and_keeps_the_inside_exact() -> None:
    data = make_synthetic(shape=(3, 8, 8), train_size=64, test_size=16)
    assert data.black is not None and len(data.black) == 3
    x = data.train.x[:5]
    draws = (torch.zeros(2, 5, dtype=torch.long), torch.zeros(5, dtype=torch.bool))  # shift down-right by 4
    out = apply_augmentation(x, draws, fill=data.black)
    for channel, black in enumerate(data.black):
        assert torch.all(out[:, channel, :4, :] == torch.tensor(black, dtype=out.dtype))
        assert torch.all(out[:, channel, :, :4] == torch.tensor(black, dtype=out.dtype))
    assert torch.equal(out[:, :, 4:, 4:], x[:, :, :4, :4])
    assert torch.equal(apply_augmentation(x, draws)[:, :, :4], torch.zeros(5, 3, 4, 8))  # fill None: 0, as before


def test_black_padding_needs_a_dataset_that_says_where_black_is() -> None:
    data = make_synthetic(shape=(1, 8, 8), train_size=64, test_size=16)
    bare = Dataset("bare", data.train, data.test, 10, (1, 8, 8))  # built by hand: no black
    model = ModelConfig("mlp", width=8, depth=1)
    with pytest.raises(ValueError, match="train.pad: black .* dataset bare"):
        Trainer(model, TrainConfig(epochs=1, augment="translate"), bare, seed=0)
    Trainer(model, TrainConfig(epochs=1, augment="translate", pad="mean"), bare, seed=0)  # pads with 0
    Trainer(model, TrainConfig(epochs=1), bare, seed=0)  # nothing augmented: nothing padded


def test_in_memory_batches_pad_with_the_fill_they_are_given() -> None:
    train = TensorData(torch.full((8, 1, 4, 4), 5.0), torch.zeros(8, dtype=torch.long))
    batches = in_memory_batches(
        train, batch_size=8, steps=1, generator=torch.Generator().manual_seed(0), augment="translate", fill=(-2.0,)
    )
    x, _ = next(batches)
    assert set(x.unique().tolist()) <= {5.0, -2.0} and (x == -2.0).any()


def test_pad_is_checked_naming_train_pad(tmp_path) -> None:
    with pytest.raises(SettingError, match="pad"):
        TrainConfig(pad="grey")
    data = tiny_sweep("p", str(tmp_path))
    data["train"] = {**data["train"], "pad": "grey"}
    with pytest.raises(ConfigError, match=r"train\.pad: must be one of black, mean, got 'grey'"):
        parse_config(data)


def test_pad_names_only_augmented_runs_and_pad_mean_keeps_todays_keys(tmp_path) -> None:
    """Not augmented (the quickstart): ``pad`` never enters the key. Augmented: the new default
    ``black`` names new networks, and ``pad: mean`` (what they were trained with) keeps their keys."""
    import yaml

    from repair_ray.cli import example_text

    quickstart = yaml.safe_load(example_text("quickstart"))
    quickstart["models"][0]["init"] = "he"  # the zoo's init when these keys were made
    keys = {p.model_key for p in parse_config(quickstart).models}
    assert "mlp-w32-d4-none-44bb9847d9" in keys and "mlp-w128-d2-none-90a763ba41" in keys
    for pad in ("black", "mean"):
        same = {**quickstart, "train": {**quickstart["train"], "pad": pad}}
        assert {p.model_key for p in parse_config(same).models} == keys

    def key(**train: object) -> str:
        he = [{"arch": "mlp", "width": 16, "depth": 2, "init": "he"}]  # the zoo's init when the keys were pinned
        data = tiny_sweep("p", str(tmp_path), models=he)
        data["train"] = {**data["train"], **train}
        return parse_config(data).models[0].model_key

    # tiny_sweep's translated networks' key before train.pad existed, pinned
    before = "mlp-w16-d2-none-42e41a8b9e"
    assert key(augment="translate", pad="mean") == before
    assert key(augment="translate") == key(augment="translate", pad="black") != before
    assert key(augment=True, pad="mean") == "mlp-w16-d2-none-9dc2053060" != key(augment=True)
    assert (
        key() == key(pad="mean") == key(pad="black") == "mlp-w16-d2-none-94a481c10d"
    )  # synthetic 1x8x8: automatic augmentation is off
    assert TrainConfig(augment="translate").identity((1, 28, 28))["pad"] == "black"
    assert "pad" not in TrainConfig().identity((1, 28, 28))
    assert TrainConfig().identity((3, 32, 32))["pad"] == "black"  # CIFAR: augmented by default
    assert "pad" not in TrainConfig(pad="mean").identity((3, 32, 32))
