"""train.seeds_per_trial: auto: alone on a CPU, as many seeds as fit when trials get a GPU."""

from __future__ import annotations

import pytest

from repair_ray.models import ModelConfig
from repair_ray.sweep.config import parse_config
from repair_ray.sweep.planning import training_bytes_per_seed
from repair_ray.sweep.trials import trial_groups
from repair_ray.training import TrainConfig

from .helpers import tiny_sweep

MNIST_LIKE = {"name": "synthetic", "shape": [1, 28, 28], "num_classes": 10, "train_size": 512, "test_size": 256}


def _config(tmp_path, seeds: int, gpu: float, gpu_memory: float | None = None, **overrides):
    data = tiny_sweep("auto", str(tmp_path), seeds=seeds, dataset=MNIST_LIKE, **overrides)
    data["resources"] = {"train": {"gpu": gpu, "gpu_memory": gpu_memory}}
    return parse_config(data)


def _trials(config, gpu: float, slots: int = 1) -> list[tuple[int, bool]]:
    todo = [(plan, seed) for plan in config.models for seed in plan.seeds]
    return [(len(seeds), together) for _, seeds, together in trial_groups(todo, config, {}, gpu, slots)]


def test_auto_trains_every_seed_alone_on_a_cpu(tmp_path):
    config = _config(tmp_path, seeds=6, gpu=0.0)
    assert config.seeds_per_trial is None  # auto is the default
    assert _trials(config, 0.0) == [(1, False)] * 6


def test_auto_puts_a_hundred_narrow_networks_in_one_trial_on_a_gpu(tmp_path):
    config = _config(tmp_path, seeds=100, gpu=0.5)
    assert _trials(config, 0.5) == [(100, True)]
    # ... but where the trial got no GPU after all, alone
    assert _trials(config, 0.0) == [(1, False)] * 100


def test_auto_shares_the_seeds_over_the_trials_the_cluster_runs_at_once(tmp_path):
    """A stack must not leave GPU slots idle: on an H200, 6 seeds in one trial on a quarter of the GPU
    took twice as long as 4 parallel trials."""
    few = _config(tmp_path, seeds=6, gpu=0.25)
    assert _trials(few, 0.25, slots=4) == [(1, False)] * 6  # stacks of 2: not worth it (MIN_STACK)
    assert _trials(_config(tmp_path, seeds=16, gpu=0.25), 0.25, slots=4) == [(4, True)] * 4
    many = _config(tmp_path, seeds=100, gpu=0.25)
    assert _trials(many, 0.25, slots=4) == [(25, True)] * 4
    assert _trials(many, 0.25, slots=200) == [(1, False)] * 100  # more slots than seeds: all alone


def test_auto_splits_seeds_that_do_not_fit_into_even_trials(tmp_path):
    wide = {"models": [{"arch": "mlp", "width": 2048, "depth": 4}], "train": {"epochs": 1, "batch_size": 256}}
    config = _config(tmp_path, seeds=100, gpu=1.0, gpu_memory=4.0, **wide)  # a 4 GiB GPU
    per_seed = training_bytes_per_seed(config.models[0].model, config.train, (1, 28, 28), 10)
    fit = int(0.5 * 4 * 2**30 // per_seed)
    assert 4 <= fit < 100  # the case this test is about
    trials = _trials(config, 1.0)
    sizes = [n for n, _ in trials]
    assert sum(sizes) == 100 and all(together for _, together in trials)
    assert max(sizes) <= fit and max(sizes) - min(sizes) <= 1  # as few trials as fit, evenly filled
    assert len(sizes) == -(-100 // fit)


def test_auto_trains_convolutional_networks_alone_even_on_a_gpu(tmp_path):
    cnn = {"models": [{"arch": "resnet20", "width": 1, "norm": "batch"}]}
    data = tiny_sweep("auto", str(tmp_path), seeds=4, **cnn)
    data["dataset"] = {"name": "synthetic", "shape": [3, 8, 8], "num_classes": 4, "train_size": 64, "test_size": 32}
    data["resources"] = {"train": {"gpu": 1}}
    assert _trials(parse_config(data), 1.0) == [(1, False)] * 4


def test_an_explicit_seeds_per_trial_is_kept_whatever_the_device(tmp_path):
    config = _config(tmp_path, seeds=5, gpu=0.5, train={"epochs": 1, "seeds_per_trial": 2})
    assert _trials(config, 0.5) == _trials(config, 0.0) == [(2, True), (2, True), (1, True)]


@pytest.mark.parametrize("knob", ["batch_size", "width"])
def test_the_memory_estimate_grows_with_batch_and_width(knob):
    def estimate(batch: int = 128, width: int = 128) -> int:
        model = ModelConfig("mlp", width, 2, "none", {})
        return training_bytes_per_seed(model, TrainConfig(batch_size=batch), (1, 28, 28), 10)

    bigger = {"batch_size": {"batch": 512}, "width": {"width": 512}}[knob]
    small, big = estimate(), estimate(**bigger)
    assert big > small > 0
    # weights, gradients and momentum of a 784-128-128-10 MLP alone are 3 x 4 bytes x 118,282 parameters
    assert estimate() > 12 * (784 * 128 + 128 + 128 * 128 + 128 + 128 * 10 + 10)


def test_train_compile_is_how_trials_run_not_which_networks_the_sweep_names(tmp_path):
    from repair_ray.sweep.rows import models_row
    from repair_ray.sweep.trials import trial_spec

    plain = _config(tmp_path, seeds=2, gpu=0.0)
    compiled = _config(tmp_path, seeds=2, gpu=0.0, train={**tiny_sweep("x", "")["train"], "compile": True})
    assert (plain.compile, compiled.compile) == (False, True)
    assert [p.model_key for p in compiled.models] == [p.model_key for p in plain.models]
    plan = compiled.models[0]
    alone, together = trial_spec(compiled, plan, [0], 1), trial_spec(compiled, plan, [0, 1], 1)
    assert models_row(alone, 0)["compiled"] is True
    assert models_row(together, 0)["compiled"] is True  # a stack compiles its vmapped forward
    assert models_row(trial_spec(plain, plan, [0], 1), 0)["compiled"] is False
