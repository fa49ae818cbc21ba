"""Sweep configs: malformed ones fail before Ray starts, naming the file and the key."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import yaml

from repair_ray.sweep.config import ConfigError, load_config, parse_config

from .helpers import tiny_sweep, write_yaml


def config_error(data, tmp_path) -> str:
    path = write_yaml(tmp_path / "bad.yaml", data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(str(path)), message  # every message names the file
    return message


BAD = [
    # (change to a valid config, text the message must contain)
    ({"modles": []}, "modles: unknown key; did you mean 'models'?"),
    ({"models": [{"arch": "mlp", "widht": 16}]}, "models[0].widht: unknown key; did you mean 'width'?"),
    ({"models": [{"arch": "mlp", "width": 16}, {"arch": "mlp", "width": 0}]}, "models[1].width: must be a positive"),
    ({"models": [{"arch": "mlp", "width": 16, "depth": -1}]}, "models[0].depth: mlp depth must be"),
    ({"models": [{"arch": "mlpp", "width": 16}]}, "models[0].arch: unknown arch 'mlpp'; did you mean 'mlp'?"),
    ({"models": [{"arch": "resnet20", "width": 1, "norm": "none"}]}, "models[0].norm: resnet20 supports norm batch"),
    ({"models": [{"arch": "mlp", "width": 16, "norm": "group"}]}, "models[0].norm"),
    ({"models": [{"arch": "mlp", "width": 12.5}]}, "models[0].width: mlp width counts hidden units"),
    ({"train": {"epochs": 0}}, "train.epochs: must be a positive integer, got 0"),
    ({"train": {"epochs": "ten"}}, "train.epochs: input should be a valid integer"),
    (
        {"train": {"epochs": 2.5}},
        "train.epochs: input should be a valid integer, got a number with a fractional part (2.5)",
    ),
    ({"train": {"lr": 0}}, "train.lr: must be a positive number"),
    ({"train": {"optimizer": "rmsprop"}}, "train.optimizer: must be one of sgd, adam"),
    ({"train": {"precision": "fp16"}}, "train.precision: must be one of fp32, bf16"),
    ({"train": {"seeds_per_trial": 0}}, "train.seeds_per_trial: must be a positive integer or auto, got 0"),
    ({"train": {"seeds_per_trial": "all"}}, "train.seeds_per_trial"),
    ({"resources": {"train": {"gpu_memory": 0}}}, "resources.train.gpu_memory: must be a positive number of GiB"),
    ({"eval": {"alphas_per_pass": 0}}, "eval.alphas_per_pass: must be a positive integer or auto, got 0"),
    ({"eval": {"alphas_per_pass": "many"}}, "eval.alphas_per_pass"),
    ({"eval": {"precision": "fp16"}}, "eval.precision: unknown precision 'fp16'"),
    ({"train": {"seed_per_trial": 4}}, "train.seed_per_trial: unknown key; did you mean 'seeds_per_trial'?"),
    ({"max_trials_in_flight": 0}, "max_trials_in_flight: must be a positive integer, got 0"),
    ({"seeds": 1}, "seeds: need at least 2 seeds"),
    ({"branch": {"at_epochs": [0, 2]}}, "branch.at_epochs: must be 0 .. 1: the children train the rest"),
    ({"branch": {"at_epochs": []}}, "branch.at_epochs: must list at least one epoch"),
    ({"branch": {"at_epochs": [1, 1]}}, "branch.at_epochs: lists an epoch twice"),
    ({"branch": {"at_epoch": [1]}}, "branch.at_epoch: unknown key; did you mean 'at_epochs'?"),
    ({"branch": {"at_epochs": [1], "trunks": 0}}, "branch.trunks: must be a positive number of trunks"),
    ({"branch": {"at_epochs": [1], "trunks": [2, 2]}}, "branch.trunks: must list distinct non-negative"),
    ({"imp": {"rounds": 0, "rate": 0.2}}, "imp.rounds: must be at least 1"),
    ({"imp": {"rounds": 2, "rate": 1.5}}, "imp.rate: must be a fraction between 0 and 1"),
    ({"imp": {"rounds": 2, "rate": 0.2, "rewind_epoch": 2}}, "imp.rewind_epoch: must be 0 .. 1"),
    ({"imp": {"rounds": 2, "rate": 0.2, "trunks": 0}}, "imp.trunks: must be a positive number of trunks"),
    ({"imp": {"rounds": 2}}, "imp.rate: required key is missing"),
    ({"imp": {"rounds": 1, "rate": 0.2}, "branch": {"at_epochs": [0]}}, "branch, imp: choose one"),
    ({"seeds": [3, 3]}, "seeds: lists a seed twice"),
    ({"alphas": [0, 0.5, 1.2]}, "alphas: every alpha must lie in [0, 1]"),
    ({"alphas": 2}, "alphas: need at least 3 points"),
    ({"align": ["none", "wieght"]}, "align[1]: unknown align 'wieght'; did you mean 'weight'?"),
    ({"correction": ["repiar"]}, "correction[0]: unknown correction 'repiar'; did you mean 'repair'?"),
    ({"dataset": "imagenet"}, "dataset: unknown dataset 'imagenet'"),
    ({"dataset": {"name": "synthetic", "shapes": [1, 2, 2]}}, "dataset.shapes: dataset synthetic takes shape"),
    ({"pairs": {"frist": 2}}, "pairs.frist: unknown key; did you mean 'first'?"),
    ({"resources": {"pair": {"gpu": 1.5}}}, "resources.pair.gpu: must be a fraction in [0, 1]"),
    ({"eval": {"train_samples": 100, "stat_samples": 200}}, "eval.stat_samples"),
    ({"name": "a/b"}, "name: must be letters, digits"),
    ({"storage": "ftp://host/runs"}, "storage: unsupported storage scheme 'ftp://'"),
]


@pytest.mark.parametrize(("change", "expected"), BAD, ids=[e for _, e in BAD])
def test_malformed_config_names_the_key(tmp_path, change, expected):
    message = config_error({**tiny_sweep("bad", str(tmp_path)), **change}, tmp_path)
    assert expected in message, message


def test_missing_required_key_and_bad_yaml(tmp_path):
    data = tiny_sweep("bad", str(tmp_path))
    del data["models"]
    assert "models: required key is missing" in config_error(data, tmp_path)
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")


def test_every_problem_is_reported_at_once(tmp_path):
    change = {"seeds": 1, "alphas": [2.0], "models": [{"arch": "mlp", "width": 0}]}
    message = config_error({**tiny_sweep("bad", str(tmp_path)), **change}, tmp_path)
    for key in ("seeds:", "alphas:", "models[0].width:"):
        assert key in message


def test_grid_expands_to_model_configs_times_seeds(tmp_path):
    data = tiny_sweep("grid", str(tmp_path), models=[{"arch": "mlp", "width": [16, 32], "depth": [1, 2, 3]}], seeds=4)
    config = parse_config(data)
    assert len(config.models) == 6
    assert config.n_trials == 24
    assert config.n_pairs == 6 * 6
    assert len({m.model_key for m in config.models}) == 6
    # the key is stable and changes with the training config
    again = parse_config(data)
    assert [m.model_key for m in again.models] == [m.model_key for m in config.models]
    other = parse_config({**data, "train": {**data["train"], "lr": 0.01}})
    assert not {m.model_key for m in other.models} & {m.model_key for m in config.models}


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        ("all", [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]),
        ("disjoint", [(0, 1), (2, 3)]),
        ({"first": 2}, [(0, 1), (0, 2)]),
    ],
)
def test_pairing_rules(tmp_path, pairs, expected):
    config = parse_config(tiny_sweep("p", str(tmp_path), seeds=4, pairs=pairs))
    assert list(config.models[0].pairs) == expected


def test_alpha_grid_always_holds_endpoints_and_midpoint(tmp_path):
    config = parse_config(tiny_sweep("a", str(tmp_path), alphas=[0.25, 0.75]))
    assert config.pair_settings.alphas == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert parse_config(tiny_sweep("a", str(tmp_path), alphas=5)).pair_settings.alphas == (0.0, 0.25, 0.5, 0.75, 1.0)


def test_reset_on_nets_without_batchnorm_warns_once(tmp_path):
    data = tiny_sweep(
        "r",
        str(tmp_path),
        models=[{"arch": "mlp", "width": 16, "norm": ["none", "batch", "layer"]}],
        correction=["none", "reset", "repair"],
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parse_config(data)
    resets = [w for w in caught if "reset" in str(w.message)]
    assert len(resets) == 1
    assert "2 model config(s) without BatchNorm" in str(resets[0].message)


def test_validate_cli_prints_the_plan_without_starting_ray(tmp_path, subprocesses):
    data = tiny_sweep("plan", str(tmp_path), seeds=4)
    data["train"] = {**data["train"], "seeds_per_trial": 3}
    good = write_yaml(tmp_path / "good.yaml", data)
    code = (
        "import sys; from repair_ray.cli import main\n"
        "try:\n    main(['validate', sys.argv[1]])\nexcept SystemExit as e:\n    code = e.code\n"
        "print('RAY_IMPORTED' if 'ray' in sys.modules else 'NO_RAY'); sys.exit(code)"
    )
    out = subprocess.run([sys.executable, "-c", code, good], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "models to train: 4" in out.stdout
    assert "in 2 trials: up to 3 seeds of a model config trained together" in out.stdout
    assert "pairs: 6" in out.stdout
    assert "forward passes" in out.stdout
    assert "NO_RAY" in out.stdout

    bad = write_yaml(tmp_path / "bad.yaml", {**tiny_sweep("plan", str(tmp_path)), "seeds": 1})
    out = subprocess.run([sys.executable, "-c", code, bad], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "seeds: need at least 2 seeds" in out.stderr
    assert "NO_RAY" in out.stdout


def test_every_example_config_is_valid():
    from pathlib import Path

    examples = sorted(Path(__file__).resolve().parents[1].glob("examples/*.yaml"))
    assert len(examples) >= 6
    for path in examples:
        data = yaml.safe_load(path.read_text())
        # image folders and network files on a cluster's disks and buckets: checked as a stored config is
        # (everything but the files); such a config's imported networks are known only from its files
        elsewhere = str(data["dataset"]).startswith("{'name': 'imagefolder:") or any(
            "checkpoints" in m for m in data["models"]
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = parse_config(data, source=str(path), stored=True) if elsewhere else load_config(path)
        assert all(p.is_imported for p in config.models) if elsewhere and config.n_pairs == 0 else config.n_pairs > 0


def test_config_messages_are_the_core_objects_own(tmp_path):
    """One home per rule: the loader only adds the YAML key to what the core object says."""
    from repair_ray import ModelConfig, PairSettings, SettingError
    from repair_ray.datasets import check_dataset
    from repair_ray.training import TrainConfig

    cases = [
        (lambda: ModelConfig("mlp", 0), {"models": [{"arch": "mlp", "width": 0}]}, "models[0]."),
        (lambda: TrainConfig(momentum=1.5), {"train": {"momentum": 1.5}}, "train."),
        (lambda: PairSettings(alphas=[0.2, 1.7]), {"alphas": [0.2, 1.7]}, ""),
        (
            lambda: PairSettings(train_samples=10, stat_samples=20),
            {"eval": {"train_samples": 10, "stat_samples": 20}},
            "eval.",
        ),
        (
            lambda: check_dataset("synthetic", {"train_size": -5}),
            {"dataset": {"name": "synthetic", "train_size": -5}},
            "dataset.",
        ),
    ]
    for build, change, prefix in cases:
        with pytest.raises(SettingError) as info:
            build()
        ((setting, message),) = info.value.problems
        text = config_error({**tiny_sweep("one", str(tmp_path)), **change}, tmp_path)
        assert f"{prefix}{setting}: {message}" in text, (text, setting, message)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"alphas": 10_000_000}, "alphas: at most 1001 points"),
        ({"resources": {"pair": {"gpu": float("nan")}}}, "resources.pair.gpu: must be a fraction"),
        ({"resources": {"train": {"cpu": float("inf")}}}, "resources.train.cpu: must be a positive number"),
        (
            {"dataset": {"name": "synthetic", "shape": [0, 8, 8], "num_classes": 1}},
            "dataset.num_classes: must be at least 2",
        ),
        (
            {"models": [{"arch": "resnet20", "width": 1, "depth": 32, "norm": "batch"}]},
            "models[0].depth: resnet20 depth",
        ),
    ],
)
def test_values_the_old_loader_let_through_are_rejected(tmp_path, change, expected):
    assert expected in config_error({**tiny_sweep("bad", str(tmp_path)), **change}, tmp_path)


def test_batchnorm_is_read_off_the_model_not_its_norm_name():
    from repair_ray import ModelConfig

    assert ModelConfig("mlp", 8, 1, "batch").has_batchnorm
    assert not ModelConfig("mlp", 8, 1, "layer").has_batchnorm
    assert ModelConfig("cifar_resnet", 0.25, 8, "batch").has_batchnorm


def test_branch_expands_to_a_model_key_per_trunk_and_epoch(tmp_path):
    config = parse_config(tiny_sweep("b", str(tmp_path), branch={"at_epochs": [1, 0], "trunks": [3, 5]}))
    plain = parse_config(tiny_sweep("b", str(tmp_path)))
    assert [(p.branch.trunk_seed, p.branch.epoch) for p in config.models] == [(3, 0), (3, 1), (5, 0), (5, 1)]
    assert len({p.model_key for p in config.models}) == 4
    assert all(p.trunk_key == plain.models[0].model_key for p in config.models)
    assert config.models[1].model_key.startswith("mlp-w16-d2-none-t3-e1-")
    assert config.n_trials == 4 * 3 and config.n_pairs == 4 * 3
    assert plain.models[0].lineage() == {"trunk_seed": None, "branch_epoch": None, "imp_round": None, "sparsity": None}


def test_imp_expands_to_a_model_key_per_trunk_and_round_keyed_by_what_makes_its_mask(tmp_path):
    imp = {"rounds": 2, "rate": 0.2, "rewind_epoch": 1, "trunks": [4]}
    config = parse_config(tiny_sweep("i", str(tmp_path), seeds=[5, 2], imp=imp))
    assert [(p.branch.trunk_seed, p.branch.epoch, p.branch.imp_round) for p in config.models] == [
        (4, 1, 0),
        (4, 1, 1),
        (4, 1, 2),
    ]
    assert config.models[2].model_key.startswith("mlp-w16-d2-none-t4-e1-r2-")
    # round r prunes round r-1's first child (the first of seeds)
    assert [p.prune_from for p in config.models] == [None, config.models[0].model_key, config.models[1].model_key]
    assert all(p.branch.prune_seed == 5 for p in config.models[1:])
    sparsity = [p.lineage()["sparsity"] for p in config.models]
    assert (
        sparsity[0] == 0
        and sparsity[1] == pytest.approx(0.2, abs=1e-3)
        and sparsity[2] == pytest.approx(0.36, abs=1e-3)
    )
    # the dense round does not depend on the rate; every later round does, and on the pruned child
    other_rate = parse_config(tiny_sweep("i", str(tmp_path), seeds=[5, 2], imp={**imp, "rate": 0.5}))
    other_seed = parse_config(tiny_sweep("i", str(tmp_path), seeds=[2, 5], imp=imp))
    more = parse_config(tiny_sweep("i", str(tmp_path), seeds=[5, 2], imp={**imp, "rounds": 3}))
    keys = [p.model_key for p in config.models]
    assert [p.model_key for p in other_rate.models][0] == keys[0]
    assert not set(keys[1:]) & {p.model_key for p in other_rate.models}
    assert not set(keys[1:]) & {p.model_key for p in other_seed.models}
    assert [p.model_key for p in more.models][:3] == keys  # growing the rounds keeps the rounds done


def test_a_list_inside_the_width_grid_is_one_mlp_with_per_layer_widths(tmp_path):
    from repair_ray.sweep.rows import model_columns

    config = parse_config(tiny_sweep("w", str(tmp_path), models=[{"arch": "mlp", "width": [64, [300, 100]]}]))
    widths = [p.model.width for p in config.models]
    assert widths == [64, (300, 100)] and [p.model.depth for p in config.models] == [3, 2]
    lenet = config.models[1]
    assert lenet.model_key.startswith("mlp-w300x100-d2-none-")
    from dataclasses import asdict

    columns = model_columns(asdict(lenet.model), config.dataset.as_dict())
    assert columns["width"] is None and columns["layer_widths"] == "[300, 100]" and columns["depth"] == 2
    assert model_columns(asdict(config.models[0].model), config.dataset.as_dict())["layer_widths"] is None
    message = config_error(
        tiny_sweep("w", str(tmp_path), models=[{"arch": "mlp", "width": [[300, 100]], "depth": 3}]), tmp_path
    )
    assert "models[0].depth: is 3 but width lists 2 hidden layers" in message


def test_model_keys_of_existing_runs_never_change_when_settings_are_added(tmp_path):
    """A sweep run before a TrainConfig field existed must find its rows and checkpoints again: the
    quickstart's keys are pinned (README shows them), and a new field at its default leaves them be."""
    import yaml

    from repair_ray.cli import example_text

    quickstart = yaml.safe_load(example_text("quickstart"))
    quickstart["models"][0]["init"] = "he"  # the zoo's init when these keys were made
    keys = {p.model_key for p in parse_config(quickstart).models}
    assert "mlp-w32-d4-none-44bb9847d9" in keys and "mlp-w128-d2-none-90a763ba41" in keys
    explicit = {**quickstart, "train": {**quickstart["train"], "precision": "fp32"}}
    assert {p.model_key for p in parse_config(explicit).models} == keys
    bf16 = {**quickstart, "train": {**quickstart["train"], "precision": "bf16"}}
    assert not {p.model_key for p in parse_config(bf16).models} & keys


def test_sync_batchnorm_at_its_default_keeps_the_model_keys_and_on_makes_new_ones(tmp_path):
    """train.sync_batchnorm (added after runs were named) is left out of the keys at false; true
    trains BatchNorm nets differently on several processes, so it names other networks."""
    import yaml

    from repair_ray.cli import example_text

    quickstart = yaml.safe_load(example_text("quickstart"))
    quickstart["models"][0]["init"] = "he"  # the zoo's init when these keys were made
    keys = {p.model_key for p in parse_config(quickstart).models}
    assert "mlp-w32-d4-none-44bb9847d9" in keys  # the key the quickstart's networks had before the field
    off = {**quickstart, "train": {**quickstart["train"], "sync_batchnorm": False}}
    assert {p.model_key for p in parse_config(off).models} == keys
    on = {**quickstart, "train": {**quickstart["train"], "sync_batchnorm": True}}
    assert parse_config(on).train.sync_batchnorm is True
    assert not {p.model_key for p in parse_config(on).models} & keys


def test_seeds_per_trial_changes_how_seeds_train_not_which_networks_the_sweep_names(tmp_path):
    alone = parse_config(tiny_sweep("spt", str(tmp_path)))
    data = tiny_sweep("spt", str(tmp_path))
    data["train"] = {**data["train"], "seeds_per_trial": 4}
    together = parse_config(data)
    assert (alone.seeds_per_trial, together.seeds_per_trial) == (None, 4)  # None: auto
    plan = alone.models[0]
    assert (alone.stack_size(plan, 0.0), together.stack_size(plan, 0.0)) == (1, 4)  # auto on a CPU: alone
    assert [p.model_key for p in together.models] == [p.model_key for p in alone.models]
    assert together.train == alone.train


def test_alphas_per_pass_is_a_speed_setting_outside_the_analysis_key(tmp_path):
    """eval.alphas_per_pass changes how fast rows come, not what they say: the analysis keys stay."""
    from repair_ray.sweep.planning import analysis_keys

    auto = parse_config(tiny_sweep("a", str(tmp_path)))
    forced = parse_config(
        tiny_sweep("a", str(tmp_path), eval={"train_samples": 256, "stat_samples": 128, "alphas_per_pass": 5})
    )
    assert auto.alphas_per_pass is None and forced.alphas_per_pass == 5
    keys = analysis_keys(auto.pair_settings, auto.dataset.as_dict())
    assert keys == analysis_keys(forced.pair_settings, forced.dataset.as_dict())


def test_eval_precision_tf32_makes_new_analysis_keys_and_fp32_keeps_the_keys(tmp_path):
    from repair_ray.sweep.planning import analysis_keys

    def keys(**eval_section):
        config = parse_config(
            tiny_sweep("a", str(tmp_path), eval={"train_samples": 256, "stat_samples": 128, **eval_section})
        )
        return set(analysis_keys(config.pair_settings, config.dataset.as_dict()).values())

    # tiny_sweep's key at analysis version 3 (issue 23), pinned so that no change of the key is
    # an accident: a change that alters rows bumps ANALYSIS_VERSION and this line with it
    assert keys() == keys(precision="fp32") == {"a5-s128-1f01cb9e87"}
    assert keys(precision="tf32").isdisjoint(keys())
