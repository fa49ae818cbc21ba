"""``models[i].train``: a grid's own recipe, merged over the sweep's ``train`` (issue 32, part 1)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from repair_ray import load_tables
from repair_ray.cli import main
from repair_ray.sweep.config import ConfigError, parse_config
from repair_ray.sweep.runner import run_sweep

from .helpers import tiny_sweep, write_yaml


def _grids(*trains):
    return [
        {"arch": "mlp", "width": 16 * (i + 1), "depth": 2, **({"train": t} if t else {})} for i, t in enumerate(trains)
    ]


def test_a_grid_recipe_replaces_only_the_keys_it_names_and_is_part_of_its_key(tmp_path):
    base = parse_config(tiny_sweep("ov", str(tmp_path), models=_grids(None, None)))
    config = parse_config(tiny_sweep("ov", str(tmp_path), models=_grids({"lr": 0.2, "weight_decay": 0.0}, None)))
    tuned, plain = config.models
    assert tuned.train.lr == 0.2 and tuned.train.weight_decay == 0.0
    assert tuned.train.epochs == config.train.epochs == 2 and tuned.train.batch_size == 64  # the sweep's
    assert plain.train == config.train and plain.train_override is None
    assert json.loads(tuned.train_override) == {"lr": 0.2, "weight_decay": 0.0}
    assert tuned.model_key != base.models[0].model_key  # other networks
    assert plain.model_key == base.models[1].model_key  # the grid without one keeps its networks


def test_a_recipe_equal_to_the_sweeps_names_the_same_networks(tmp_path):
    base = parse_config(tiny_sweep("ov", str(tmp_path), models=_grids(None)))
    same = parse_config(tiny_sweep("ov", str(tmp_path), models=_grids({"lr": 0.05, "epochs": 2})))
    assert same.models[0].model_key == base.models[0].model_key
    # and one that only moves a key from the sweep to the grid too
    moved = tiny_sweep("ov", str(tmp_path), models=_grids({"lr": 0.05}))
    moved["train"] = {k: v for k, v in moved["train"].items() if k != "lr"}  # the sweep's lr is then the default
    assert parse_config(moved).models[0].model_key == base.models[0].model_key


def test_an_explicit_null_overrides_too(tmp_path):
    data = tiny_sweep("ov", str(tmp_path), models=_grids({"augment": None}))
    data["train"] = {**data["train"], "augment": False}
    config = parse_config(data)
    assert config.train.augment is False and config.models[0].train.augment is None


@pytest.mark.parametrize(
    ("train", "expected"),
    [
        ({"lrr": 0.1}, r"models\[0\]\.train\.lrr: unknown key; did you mean 'lr'\?"),
        ({"optimizer": "adamw2"}, r"models\[0\]\.train\.optimizer: "),
        ({"epochs": 0}, r"models\[0\]\.train\.epochs: must be a positive integer, got 0"),
        ({"lr": "fast"}, r"models\[0\]\.train\.lr: "),
        ({"checkpoint_every": 2}, r"models\[0\]\.train\.checkpoint_every: unknown key"),  # the sweep's, not a recipe's
    ],
)
def test_bad_grid_recipes_name_their_key(tmp_path, train, expected):
    with pytest.raises(ConfigError, match=expected):
        parse_config(tiny_sweep("ov", str(tmp_path), models=_grids(train)))


def test_a_rule_two_keys_break_together_names_the_grids_key(tmp_path):
    with pytest.raises(ConfigError, match=r"models\[0\]\.train\.warmup_epochs: "):
        parse_config(tiny_sweep("ov", str(tmp_path), models=_grids({"warmup_epochs": 5})))  # the sweep trains 2


def test_imported_and_branched_grids_refuse_what_cannot_apply(tmp_path):
    files = [str(tmp_path / "a.pt"), str(tmp_path / "b.pt")]
    data = tiny_sweep(
        "ov",
        str(tmp_path),
        models=[{"arch": "mlp", "width": 16, "depth": 2, "checkpoints": files, "train": {"lr": 0.1}}],
    )
    with pytest.raises(ConfigError, match=r"models\[0\]\.train: the networks in checkpoints are trained already"):
        parse_config(data, check_files=False)
    data = tiny_sweep("ov", str(tmp_path), models=_grids({"epochs": 3}), branch={"at_epochs": [1]})
    with pytest.raises(ConfigError, match=r"models\[0\]\.train\.epochs: branch's epochs count in the sweep's"):
        parse_config(data)
    data = tiny_sweep("ov", str(tmp_path), models=_grids({"lr": 0.1}), branch={"at_epochs": [1]})
    assert all(plan.train.lr == 0.1 for plan in parse_config(data).models)  # other keys branch fine


def test_validate_prints_each_merged_recipe(tmp_path):
    data = tiny_sweep("ov", str(tmp_path), models=_grids({"lr": 0.2}, None))
    out = CliRunner().invoke(main, ["validate", write_yaml(tmp_path / "sweep.yaml", data)])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    tuned = next(i for i, line in enumerate(lines) if "mlp width=16" in line)
    assert "lr=0.2*" in lines[tuned + 1] and "epochs=2 " in lines[tuned + 1] and "batch_size=64" in lines[tuned + 1]
    assert any(line.startswith("train (the others): ") and "lr=0.05" in line for line in lines)


def test_each_grid_trains_with_its_recipe_and_its_rows_say_so(ray_session, tmp_path):
    data = tiny_sweep(
        "ov", str(tmp_path), seeds=2, models=_grids({"epochs": 3, "lr": 0.1}, None), align=["none"], correction=["none"]
    )
    config = parse_config(data)
    run_sweep(config, say=lambda line: None)
    tables = load_tables(config.root)
    models = tables["models"].set_index("model_key")
    tuned, plain = config.models
    assert set(models.loc[tuned.model_key, "epochs"]) == {3} and set(models.loc[plain.model_key, "epochs"]) == {2}
    recipe = json.loads(models.loc[tuned.model_key, "config_json"].iloc[0])["train"]
    assert recipe["lr"] == 0.1 and recipe["epochs"] == 3 and recipe["batch_size"] == 64
    history = json.loads(models.loc[tuned.model_key, "history_json"].iloc[0])
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert set(models.loc[tuned.model_key, "train_override"]) == {json.dumps({"epochs": 3, "lr": 0.1})}
    assert models.loc[plain.model_key, "train_override"].isna().all()
    pairs = tables["pairs"].set_index("model_key")
    assert set(pairs.loc[[tuned.model_key], "train_override"]) == {json.dumps({"epochs": 3, "lr": 0.1})}
    assert pairs.loc[[plain.model_key], "train_override"].isna().all()
