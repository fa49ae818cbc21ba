"""One network trained data-parallel by several processes, from torch.distributed alone (no Ray): it
computes what one process computes on the same global batches, resumes exactly, and every process
decides alike.

The two-process runs happen in real gloo workers (:mod:`tests.ddp_workers`), spawned twice for the
whole file: once for every scenario, once more for new workers resuming an interrupted run.

Tolerance of "the same as one process": the processes compute each step's gradient as the mean of
two half-batch means (summed by gloo), one process as one mean over the batch, so float32 rounds
differently (about 1e-7 relative a step) and 16 SGD steps carry it on: measured here, weights differ
by at most 5e-6 (the LayerNorm ResNet; 6e-8 the MLP) and losses by 5e-7. The tests allow 1e-4 (absolute
and relative) on weights and 1e-5 on losses; a wrong slice, a wrong average or a shifted augmentation
moves them by 1e-2 or more. Accuracies are counts: equal up to one sample whose argmax rounding could
flip (none does here).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from repair_ray.datasets import make_synthetic
from repair_ray.io.checkpoint import load_checkpoint
from repair_ray.models import ModelConfig
from repair_ray.pruning import dense_mask
from repair_ray.training import (
    TrainConfig,
    Trainer,
    TrainResult,
    apply_augmentation,
    augment_batch,
    current_world,
    draw_augmentation,
    train_model,
)
from repair_ray.training.batches import in_memory_batches

from . import ddp_workers as workers
from .conftest import integration

# Two workers average two half-batch gradients where one process sums the whole batch: float32
# sums in another order, 1.7e-4 apart in the LayerNorm ResNet's weights after its two epochs (CI,
# once). A worker on the wrong slice is far off: the same run in another data order differs by 7e-2.
WEIGHTS = {"rtol": 1e-3, "atol": 1e-3}
LOSS = 1e-4  # float32 losses of ~2.3 summed in another order (two workers, or torch threads another test
# left behind: 3e-5 apart once in a random order); a worker on the wrong slice is off by far more

RUNS = {
    "mlp": (workers.MLP, workers.MLP_TRAIN, workers.GREY),
    "layer_resnet": (workers.LAYER_RESNET, workers.RESNET_TRAIN, workers.RGB),
    "augmented": (workers.MLP, workers.AUGMENTED_TRAIN, workers.RGB),
    "batchnorm": (workers.BATCH_RESNET, workers.RESNET_TRAIN, workers.RGB),
}


@pytest.fixture(scope="module")
@integration("spawns two gloo worker processes (torch.distributed)")
def spawned(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], Path]:
    """Every scenario of :func:`workers.many`, run by two gloo workers: (results by rank, their folder)."""
    out = tmp_path_factory.mktemp("ddp")
    return workers.run_workers(workers.many, out), out


@pytest.fixture(scope="module")
def alone() -> dict[str, TrainResult]:
    """The runs of :data:`RUNS`, each trained by this one process (no process group), on one torch
    thread as each worker: not on however many threads a test run before left set."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {
            name: Trainer(model, train, workers.data(options), seed=3, data_seed=4).run()
            for name, (model, train, options) in RUNS.items()
        }
    finally:
        torch.set_num_threads(threads)


def assert_same_history(actual: list[dict[str, float]], expected: list[dict[str, float]], samples: int) -> None:
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        assert got.keys() == want.keys()
        for key in want:
            tolerance = LOSS if key.endswith("loss") else 1 / samples if key.endswith("acc") else 0
            assert got[key] == pytest.approx(want[key], abs=tolerance), (got["epoch"], key)


def assert_weights_close(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], **WEIGHTS, msg=lambda m, key=key: f"{key}: {m}")


@pytest.mark.parametrize("name", ["mlp", "layer_resnet", "augmented"])
def test_two_workers_compute_what_one_process_computes_on_the_global_batch(
    spawned: tuple[list[dict[str, Any]], Path], alone: dict[str, TrainResult], name: str
) -> None:
    """An MLP, a LayerNorm ResNet (no batch statistics) and an MLP with crops and flips (3x32x32):
    final weights, every epoch's metrics and the final metrics as one process's, on both ranks."""
    results, _ = spawned
    expected = alone[name]
    assert expected.state_dict is not None and expected.history is not None
    samples = len(workers.data(RUNS[name][2]).test)
    for rank, run in enumerate(r[name] for r in results):
        assert (run["rank"], run["world_size"], run["data_parallel"]) == (rank, 2, True)
        assert run["status"] == "ok"
        assert_weights_close(run["state_dict"], expected.state_dict)
        assert_same_history(run["history"], expected.history, samples)
        for key, value in expected.metrics.items():
            assert run["metrics"][key] == pytest.approx(value, abs=LOSS if key.endswith("loss") else 1 / samples)
    first, second = (r[name]["state_dict"] for r in results)
    assert all(torch.equal(first[k], second[k]) for k in first)  # one network, whichever rank returns it
    assert results[0][name]["history"] == results[1][name]["history"]


def test_each_worker_trains_its_slice_of_every_global_batch_with_its_slice_of_the_augmentation(
    spawned: tuple[list[dict[str, Any]], Path],
) -> None:
    """Rank 0's and rank 1's inputs of each batch, one after the other, are one process's batch, bit for bit."""
    results, _ = spawned
    trainer = Trainer(workers.MLP, workers.AUGMENTED_TRAIN, workers.data(workers.RGB), seed=3, data_seed=4)
    whole = list(trainer.epoch_batches())
    halves = [r["batches"] for r in results]
    assert len(halves[0]) == len(halves[1]) == len(whole) == trainer.steps_per_epoch
    for (x, y), (x0, y0), (x1, y1) in zip(whole, *halves, strict=True):
        assert len(y0) == len(y1) == len(y) // 2
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)


def test_a_batchnorm_resnet_trains_on_two_workers_and_rank_0_alone_writes_its_checkpoint(
    spawned: tuple[list[dict[str, Any]], Path], alone: dict[str, TrainResult]
) -> None:
    results, out = spawned
    runs = [r["batchnorm"] for r in results]
    assert all(run["status"] == "ok" for run in runs)
    assert all(torch.isfinite(torch.tensor(run["metrics"]["train_loss"])) for run in runs)
    # written once per epoch (checkpoint_every=1, 2 epochs), and only by rank 0
    assert runs[0]["writes"] == ["batchnorm.pt", "batchnorm.pt"] and runs[1]["writes"] == []
    checkpoint = load_checkpoint(out / "batchnorm.pt")
    assert checkpoint.meta["status"] == "ok" and checkpoint.meta["epoch"] == 2
    assert not any("world" in key for key in checkpoint.meta["train_config"])  # not part of the run's identity
    first, second = runs[0]["state_dict"], runs[1]["state_dict"]
    # every rank holds rank 0's network, running statistics included, and that is the checkpoint's
    assert all(torch.equal(first[k], second[k]) and torch.equal(first[k], checkpoint.state_dict[k]) for k in first)
    # per-process batch statistics (half batches) are not one process's: BatchNorm is the exception
    expected = alone["batchnorm"].state_dict
    assert expected is not None
    drift = max((first[k] - expected[k]).abs().max().item() for k in first if k.endswith("running_mean"))
    assert drift > 1e-2, drift  # ten times what summation order can move a weight (WEIGHTS)


def test_sync_batchnorm_is_refused_on_the_cpu_with_a_clear_message(spawned: tuple[list[dict[str, Any]], Path]) -> None:
    """PyTorch's SyncBatchNorm raises for CPU tensors (torch 2.14): the run refuses it up front, on every rank."""
    results, _ = spawned
    for errors in (r["errors"] for r in results):
        assert "train.sync_batchnorm needs GPUs" in errors["sync_batchnorm"]


def test_a_run_resumed_by_new_workers_equals_the_uninterrupted_run(
    spawned: tuple[list[dict[str, Any]], Path], alone: dict[str, TrainResult], tmp_path: Path
) -> None:
    """Two workers stop after epoch 1 (checkpointed); two new ones resume to epoch 2: bit for bit the
    uninterrupted two-worker run (a sum of two floats is the same in either order), and one process's."""
    results, out = spawned
    assert [r["interrupted"]["epoch"] for r in results] == [1, 1]
    assert load_checkpoint(out / "interrupted.pt").meta["epoch"] == 1
    resumed = workers.run_workers(workers.resumed, tmp_path, str(out / "interrupted.pt"))
    uninterrupted = results[0]["mlp"]
    for run in resumed:
        assert run["status"] == "ok" and run["resumed_at"] == 1  # the history of epoch 1 came from the checkpoint
        assert all(
            torch.equal(run["state_dict"][k], uninterrupted["state_dict"][k]) for k in uninterrupted["state_dict"]
        )
        assert run["history"] == uninterrupted["history"] and run["metrics"] == uninterrupted["metrics"]
        expected = alone["mlp"].state_dict
        assert expected is not None
        assert_weights_close(run["state_dict"], expected)


def test_a_checkpoint_of_two_workers_resumes_in_one_process(
    spawned: tuple[list[dict[str, Any]], Path], alone: dict[str, TrainResult], tmp_path: Path
) -> None:
    """How many processes trained a run is not part of it: one process finishes what two began."""
    _, out = spawned
    uri = tmp_path / "interrupted.pt"
    shutil.copyfile(out / "interrupted-epoch-1.pt", uri)
    model, train, options = RUNS["mlp"]
    trainer = Trainer(model, train, workers.data(options), seed=3, data_seed=4)
    result = trainer.run(checkpoint_uri=str(uri))
    expected = alone["mlp"]
    assert result.status == "ok" and trainer.history[0]["epoch"] == 1 and not trainer.data_parallel
    assert result.state_dict is not None and expected.state_dict is not None and expected.history is not None
    assert_weights_close(result.state_dict, expected.state_dict)
    assert_same_history(trainer.history, expected.history, len(workers.data(options).test))


def test_a_trunk_and_a_pruned_branch_of_it_train_on_two_workers_as_one_process_does(
    spawned: tuple[list[dict[str, Any]], Path], tmp_path: Path
) -> None:
    """Snapshots, branching and IMP masks need nothing of their own under DDP: the trunk's snapshot is
    written once and read by every rank, the mask computed alike on every rank, and the child is one
    process's child (half its prunable weights zero on every rank)."""
    results, out = spawned
    expected = workers.lineage(tmp_path)
    prunable = list(dense_mask(workers.MLP.build(10, workers.GREY["shape"])))
    assert load_checkpoint(out / "trunk-1.pt").meta["status"] == "trunk"
    for run in (r["lineage"] for r in results):
        assert run["status"] == "ok" == expected["status"]
        assert run["trunk"][1]["test_loss"] == pytest.approx(expected["trunk"][1]["test_loss"], abs=LOSS)
        assert_weights_close(run["state_dict"], expected["state_dict"])
        assert_same_history(run["history"], expected["history"], len(workers.data(workers.GREY).test))
        pruned = [run["state_dict"][name] == 0 for name in prunable]
        assert all(torch.equal(p, expected["state_dict"][n] == 0) for p, n in zip(pruned, prunable, strict=True))
        assert sum(int(p.sum()) for p in pruned) == pytest.approx(sum(p.numel() for p in pruned) / 2, abs=1)


def test_a_batch_size_the_workers_cannot_split_evenly_is_refused_naming_train_batch_size(
    spawned: tuple[list[dict[str, Any]], Path],
) -> None:
    results, _ = spawned
    for errors in (r["errors"] for r in results):
        assert errors["batch_size"].startswith("train.batch_size (63) must be divisible by")
        assert "(2)" in errors["batch_size"]


def test_a_nan_in_one_workers_slice_stops_every_worker_at_the_same_step(
    spawned: tuple[list[dict[str, Any]], Path],
) -> None:
    """Only rank 1's slice of the first batch holds a NaN input: rank 0's own loss is finite, yet both
    stop there (the loss is all-reduced before the decision), and nobody waits for the other."""
    results, out = spawned
    runs = [r["nan"] for r in results]
    assert [run["status"] for run in runs] == ["nan_loss", "nan_loss"]
    assert runs[0]["error"] == runs[1]["error"] and "epoch 1, step 1 of 8" in runs[0]["error"]
    assert not (out / "nan.pt").exists()


def test_on_epoch_is_called_on_rank_0_only(spawned: tuple[list[dict[str, Any]], Path]) -> None:
    results, _ = spawned
    assert [r["epochs"] for r in results] == [[1], []]


def test_the_stacked_multiseed_loop_refuses_a_data_parallel_trainer(spawned: tuple[list[dict[str, Any]], Path]) -> None:
    results, _ = spawned
    for errors in (r["errors"] for r in results):
        assert "trains data-parallel over 2 processes, but train_together stacks seeds" in errors["together"]


# ----------------------------------------------------------------------------- in this process, no group


@pytest.mark.parametrize("augment", [None, "crop_flip", "translate"])
def test_the_slices_of_every_rank_make_up_one_process_batches(augment: str | None) -> None:
    """Three ranks' slices of each global batch (48 = 3 x 16), one after the other, are one process's
    batch, augmentation included, and each rank's generator ends where one process's does."""
    train = make_synthetic(shape=(3, 8, 8), train_size=200, test_size=10).train

    def batches(rank: int, world: int) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        generator = torch.Generator().manual_seed(7)
        made = list(
            in_memory_batches(
                train, batch_size=48, steps=4, generator=generator, augment=augment, rank=rank, world=world
            )
        )
        return made, generator.get_state()

    whole, state = batches(0, 1)
    parts = [batches(rank, 3) for rank in range(3)]
    for step, (x, y) in enumerate(whole):
        assert torch.equal(torch.cat([p[0][step][0] for p in parts]), x)
        assert torch.equal(torch.cat([p[0][step][1] for p in parts]), y)
        assert [len(p[0][step][1]) for p in parts] == [16, 16, 16]
    assert all(torch.equal(p[1], state) for p in parts)


def test_a_slice_of_the_draws_augments_that_slice_of_the_batch_as_the_whole_batch_does() -> None:
    """What a rank relies on: augmenting its slice with its slice of the global batch's draws gives
    its slice of the augmented global batch; and the draws advance the generator as augment_batch does."""
    x = torch.randn(6, 3, 8, 8)
    for flips in (True, False):
        generator = torch.Generator().manual_seed(1)
        draws = draw_augmentation(len(x), generator, flips=flips)
        whole = apply_augmentation(x, draws)
        assert torch.equal(whole, augment_batch(x, torch.Generator().manual_seed(1), flips=flips))
        part = slice(2, 5)
        assert torch.equal(apply_augmentation(x[part], (draws[0][:, part], draws[1][part])), whole[part])
        reference = torch.Generator().manual_seed(1)
        augment_batch(x, reference, flips=flips)
        assert torch.equal(generator.get_state(), reference.get_state())
    with pytest.raises(ValueError, match="draws of 5 samples for a batch of 6"):
        apply_augmentation(x, draw_augmentation(5, torch.Generator()))


def test_without_a_process_group_a_run_is_one_process_and_distributed_true_is_refused() -> None:
    dataset = make_synthetic(train_size=128, test_size=32)
    assert current_world().world_size == 1 and current_world().is_main
    trainer = Trainer(workers.MLP, TrainConfig(epochs=1, batch_size=64), dataset, seed=0)
    assert not trainer.data_parallel and trainer.world.rank == 0
    with pytest.raises(ValueError, match="distributed=True needs an initialised torch.distributed process group"):
        train_model(workers.MLP, TrainConfig(epochs=1, batch_size=64), dataset, seed=0, distributed=True)


def test_sync_batchnorm_is_a_later_field_left_out_of_identities_at_its_default() -> None:
    assert "sync_batchnorm" not in TrainConfig().identity((1, 28, 28))
    assert TrainConfig(sync_batchnorm=True).identity((1, 28, 28))["sync_batchnorm"] is True
    with pytest.raises(ValueError, match="sync_batchnorm: must be true or false"):
        TrainConfig(sync_batchnorm="yes")  # type: ignore[arg-type]


def test_the_layernorm_resnet_of_these_tests_has_no_batch_statistics_and_the_batchnorm_one_has() -> None:
    """The premise of the equality tests: without batch statistics, equality must hold."""

    def has_batchnorm(config: ModelConfig) -> bool:
        net = config.build(10, (3, 32, 32))
        return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())

    assert not has_batchnorm(workers.LAYER_RESNET) and has_batchnorm(workers.BATCH_RESNET)
