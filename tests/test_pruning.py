"""Iterative magnitude pruning with rewinding: global magnitude masks, masked training, exact resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from repair_ray.datasets import Dataset, load_dataset
from repair_ray.io.checkpoint import CheckpointError, load_checkpoint
from repair_ray.models import ModelConfig
from repair_ray.pruning import (
    dense_mask,
    imp_sparsity,
    magnitude_prune,
    mask_sparsity,
    prunable_count,
    prunable_names,
    weight_sparsity,
)
from repair_ray.training import TrainConfig, Trainer, next_imp_mask, train_model, train_trunk

MLP = ModelConfig("mlp", width=32, depth=2, init="he")  # the scale its learning rates were chosen at
TRAIN = TrainConfig(epochs=3, batch_size=128, lr=0.05)


@pytest.fixture(scope="module")
def synthetic() -> Dataset:
    return load_dataset("synthetic", train_size=1024, test_size=256)


class _Interrupted(Exception):
    pass


def test_prunable_weights_are_conv_and_linear_weights_only() -> None:
    net = ModelConfig("vgg", width=0.25, depth=11, norm="batch").build(10, (3, 32, 32))
    names = prunable_names(net)
    params = dict(net.named_parameters())
    assert names and all(name.endswith(".weight") for name in names)
    assert all(params[n].dim() in (2, 4) for n in names)  # no norm scales, no biases
    bn_weights = [n for n, m in net.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert bn_weights and not set(f"{n}.weight" for n in bn_weights) & set(names)
    assert prunable_count(net) == sum(params[n].numel() for n in names)


def test_global_magnitude_pruning_removes_the_smallest_surviving_weights_over_all_layers() -> None:
    torch.manual_seed(0)
    weights = {"a": torch.randn(10, 10) * 0.01, "b": torch.randn(20, 5) + 10.0}  # a's all smaller than b's
    mask = {"a": torch.ones(10, 10, dtype=torch.bool), "b": torch.ones(20, 5, dtype=torch.bool)}
    pruned = magnitude_prune(weights, mask, 0.3)
    assert int((~pruned["a"]).sum()) == 60 and bool(pruned["b"].all())  # global, not 30 % per layer
    kept_a = weights["a"].abs()[pruned["a"]]
    assert kept_a.min() >= weights["a"].abs()[~pruned["a"]].max()
    # the next round prunes only among the survivors, round(rate * survivors) of them
    again = magnitude_prune(weights, pruned, 0.5)
    assert not (again["a"] & ~pruned["a"]).any()
    assert int(sum(m.sum() for m in again.values())) == 140 - 70
    assert mask_sparsity(again) == pytest.approx(130 / 200)
    with pytest.raises(ValueError, match="between 0 and 1"):
        magnitude_prune(weights, mask, 1.0)
    with pytest.raises(KeyError, match="c"):
        magnitude_prune(weights, {"c": torch.ones(3, dtype=torch.bool)}, 0.2)


def test_planned_sparsity_matches_the_masks_of_every_round() -> None:
    net = ModelConfig("mlp", width=(30, 10), depth=2).build(10, (1, 28, 28))
    mask, total = dense_mask(net), prunable_count(net)
    state = {k: v.detach() for k, v in net.state_dict().items()}
    for round_ in range(6):
        assert mask_sparsity(mask) == pytest.approx(imp_sparsity(total, round_, 0.2), abs=0)
        mask = magnitude_prune(state, mask, 0.2)
    assert imp_sparsity(total, 2, 0.5) == pytest.approx(0.75, abs=1e-3)


def test_masked_training_keeps_pruned_weights_at_zero_and_trains_the_rest(synthetic: Dataset) -> None:
    net = MLP.build(10, synthetic.in_shape)
    mask = magnitude_prune(net.state_dict(), dense_mask(net), 0.6)
    start = Trainer(MLP, TRAIN, synthetic, seed=3, imp_round=1, mask=mask)
    result = train_model(MLP, TRAIN, synthetic, seed=3, imp_round=1, mask=mask)
    names = list(mask)
    assert weight_sparsity(result.state_dict, names) == pytest.approx(mask_sparsity(mask))
    for name in names:
        assert not result.state_dict[name][~mask[name]].any()
        moved = result.state_dict[name][mask[name]] - start.model.state_dict()[name][mask[name]]
        assert moved.abs().max() > 0
    assert result.metrics["test_acc"] > 0.5
    with pytest.raises(ValueError, match="needs its mask"):
        train_model(MLP, TRAIN, synthetic, seed=3, imp_round=1)


def test_a_masked_round_resumes_bit_for_bit_with_its_mask_from_the_checkpoint(
    synthetic: Dataset, tmp_path: Path
) -> None:
    net = MLP.build(10, synthetic.in_shape)
    mask = magnitude_prune(net.state_dict(), dense_mask(net), 0.5)
    straight = train_model(MLP, TRAIN, synthetic, seed=1, imp_round=1, mask=mask)
    uri = str(tmp_path / "round.pt")

    def crash(epoch: int, metrics: dict[str, float]) -> None:
        if epoch == 1:
            raise _Interrupted

    with pytest.raises(_Interrupted):
        train_model(MLP, TRAIN, synthetic, seed=1, imp_round=1, mask=mask, checkpoint_uri=uri, on_epoch=crash)
    saved = load_checkpoint(uri)
    assert saved.meta["imp_round"] == 1 and torch.equal(
        saved.training_state["mask"][list(mask)[0]], list(mask.values())[0]
    )

    def no_mask_needed(model: nn.Module):
        raise AssertionError("a resumed round takes its mask from its checkpoint")

    resumed = train_model(MLP, TRAIN, synthetic, seed=1, imp_round=1, mask=no_mask_needed, checkpoint_uri=uri)
    assert all(torch.equal(straight.state_dict[k], resumed.state_dict[k]) for k in straight.state_dict)
    with pytest.raises(ValueError, match="imp_round"):  # another round's checkpoint is refused
        train_model(MLP, TRAIN, synthetic, seed=1, imp_round=2, mask=mask, checkpoint_uri=uri)


def test_imp_rounds_rewind_to_the_trunk_snapshot_and_prune_from_the_previous_round(
    synthetic: Dataset, tmp_path: Path
) -> None:
    train_trunk(MLP, TRAIN, synthetic, seed=7, epochs=(1,), snapshot_uri=lambda e: str(tmp_path / f"trunk-{e}.pt"))
    snapshot = load_checkpoint(str(tmp_path / "trunk-1.pt"))
    kw = {"init_seed": 7, "branch_epoch": 1, "branch_from": str(tmp_path / "trunk-1.pt")}
    uris = [str(tmp_path / f"round-{r}.pt") for r in range(3)]
    train_model(MLP, TRAIN, synthetic, seed=0, imp_round=0, checkpoint_uri=uris[0], **kw)
    masks = []
    for r in (1, 2):
        mask_of = next_imp_mask(uris[r - 1], 0.5)
        trainer = Trainer(
            MLP,
            TRAIN,
            synthetic,
            seed=0,
            data_seed=0,
            imp_round=r,
            mask=mask_of,
            **{k: v for k, v in kw.items() if k != "branch_from"},
        )
        trainer.start_from(kw["branch_from"])
        mask = mask_of(trainer.model)
        trainer.set_mask(mask)
        for name, keep in mask.items():  # rewound: the survivors have the trunk's epoch-1 values
            assert torch.equal(trainer.model.state_dict()[name], snapshot.state_dict[name] * keep)
        masks.append(mask)
        train_model(MLP, TRAIN, synthetic, seed=0, imp_round=r, mask=mask_of, checkpoint_uri=uris[r], **kw)
        assert load_checkpoint(uris[r]).meta["imp_round"] == r
    total = prunable_count(MLP.build(10, synthetic.in_shape))
    assert [mask_sparsity(m) for m in masks] == [imp_sparsity(total, 1, 0.5), imp_sparsity(total, 2, 0.5)]
    assert all(not (masks[1][n] & ~masks[0][n]).any() for n in masks[0])  # round 2 prunes within round 1
    final = load_checkpoint(uris[2]).state_dict
    assert weight_sparsity(final, list(masks[1])) == pytest.approx(0.75, abs=1e-3)
    Path(uris[1]).write_bytes(b"broken")
    with pytest.raises(CheckpointError):
        next_imp_mask(uris[1], 0.5)(MLP.build(10, synthetic.in_shape))
