"""Networks trained elsewhere (``models[i].checkpoints``): read safely, named by content, checked before Ray.

The core (``repair_ray.io.networks``) reads state_dict and safetensors files without running code
from them; the config names each file's network by its bytes and refuses files that cannot be
networks of the model config, with exit 2 and the file named; a sweep analyses every pair of them
and, re-run, computes only what a renamed, added or rewritten file changes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from repair_ray import load_tables
from repair_ray.cli import main
from repair_ray.datasets import make_synthetic
from repair_ray.io.networks import NetworkFileError, content_id, expand, fit_problem, load_state_dict, read_shapes
from repair_ray.models import ModelConfig
from repair_ray.sweep import imports
from repair_ray.sweep.config import ConfigError, parse_config
from repair_ray.sweep.runner import run_sweep, sweep_status
from repair_ray.training import TrainConfig, train_model

from .helpers import write_yaml

DATA = {"name": "synthetic", "shape": [1, 8, 8], "num_classes": 4, "train_size": 512, "test_size": 256}
MODEL = ModelConfig("mlp", 16, 2)


def trained_state(seed: int) -> dict[str, torch.Tensor]:
    dataset = make_synthetic(shape=(1, 8, 8), num_classes=4, train_size=512, test_size=256)
    return train_model(MODEL, TrainConfig(epochs=2, batch_size=64, lr=0.05), dataset, seed=seed).state_dict or {}


@pytest.fixture(scope="module")
def states() -> list[dict[str, torch.Tensor]]:
    return [trained_state(seed) for seed in range(5)]


def write_networks(folder: Path, states: list[dict[str, torch.Tensor]]) -> list[Path]:
    """Three files in three formats: a plain state_dict, a training script's checkpoint with a
    DistributedDataParallel prefix, and safetensors."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "a.pt", folder / "b.pth", folder / "c.safetensors"]
    torch.save(states[0], paths[0])
    torch.save({"epoch": 2, "state_dict": {f"module.{k}": v for k, v in states[1].items()}}, paths[1])
    save_file({k: v.contiguous() for k, v in states[2].items()}, str(paths[2]))
    return paths


def sweep(name: str, storage: Path, checkpoints, **overrides) -> dict:
    config = {
        "name": name,
        "storage": str(storage),
        "dataset": DATA,
        "models": [{"arch": "mlp", "width": 16, "depth": 2, "checkpoints": checkpoints}],
        "align": ["none", "weight"],
        "correction": ["none", "repair"],
        "alphas": 5,
        "eval": {"train_samples": 256, "stat_samples": 128},
    }
    config.update(overrides)
    return config


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- the core: reading files -------------------------------------------------------------------


def test_every_format_reads_to_the_same_state_dict(tmp_path, states):
    paths = write_networks(tmp_path, states)
    expected = [states[0], states[1], states[2]]
    for path, state in zip(paths, expected, strict=True):
        assert read_shapes(str(path)) == {k: tuple(v.shape) for k, v in state.items()}, path
        loaded = load_state_dict(str(path), sha256=sha(path))
        assert loaded.keys() == state.keys()
        assert all(torch.equal(loaded[k], state[k]) for k in state), path


def test_safetensors_shapes_come_from_the_header_without_reading_the_data(tmp_path, states):
    path = tmp_path / "n.safetensors"
    save_file({k: v.contiguous() for k, v in states[0].items()}, str(path))
    data = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    data[header:] = b"\xff" * (len(data) - header)  # every tensor byte garbage, the size the same
    path.write_bytes(bytes(data))
    assert read_shapes(str(path)) == {k: tuple(v.shape) for k, v in states[0].items()}


def test_a_pickled_object_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "payload": Payload(str(marker))}, path)
    module = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), module)
    for bad in (path, module):
        with pytest.raises(NetworkFileError, match="state_dict") as caught:
            read_shapes(str(bad))
        assert str(bad) in str(caught.value)
        with pytest.raises(NetworkFileError, match="weights_only"):
            load_state_dict(str(bad))
    assert not marker.exists()


class Payload:
    """A pickle whose loading would run code (it would create ``marker``)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_truncated_files_are_refused_naming_them(tmp_path, states):
    for path in write_networks(tmp_path, states):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) * 2 // 3])
        with pytest.raises(NetworkFileError, match="truncated") as caught:
            read_shapes(str(path))
        assert str(path) in str(caught.value)


def test_a_file_without_a_state_dict_is_refused(tmp_path):
    path = tmp_path / "opt.pt"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(NetworkFileError, match="holds no state_dict"):
        read_shapes(str(path))


def test_fit_problem_names_the_first_key_that_does_not_fit():
    expected = {"a.weight": (4, 3), "a.bias": (4,), "bn.num_batches_tracked": ()}
    assert fit_problem({"a.weight": (4, 3), "a.bias": (4,)}, expected) is None  # no counter: fine
    assert "'a.bias' has shape (5,) in the file but (4,)" in fit_problem({"a.weight": (4, 3), "a.bias": (5,)}, expected)
    assert "'a.bias' of the network is missing" in fit_problem({"a.weight": (4, 3)}, expected)
    assert "the key 'b.weight'" in fit_problem({"a.weight": (4, 3), "a.bias": (4,), "b.weight": (1,)}, expected)


def test_bytes_that_changed_since_they_were_named_are_refused(tmp_path, states):
    path = tmp_path / "n.pt"
    torch.save(states[0], path)
    named = sha(path)
    torch.save(states[1], path)
    with pytest.raises(NetworkFileError, match="content changed"):
        load_state_dict(str(path), sha256=named)


def test_globs_find_files_on_disk_and_in_a_bucket(tmp_path, states, s3_bucket):
    from pyarrow import fs as pafs

    from repair_ray.io import storage

    paths = write_networks(tmp_path / "deep" / "er", states)
    (tmp_path / "deep" / "notes.txt").write_text("not a network")
    assert expand(str(tmp_path / "deep" / "**" / "*")) == sorted(str(p) for p in paths)
    assert expand(str(tmp_path / "deep" / "er" / "*.pt*")) == [str(paths[0]), str(paths[1])]
    filesystem, _ = storage.resolve(s3_bucket)
    for path in paths:
        with filesystem.open_output_stream(f"repair-ray-test/globbed/sub/{path.name}") as out:
            out.write(path.read_bytes())
    found = expand(f"{s3_bucket}/globbed/**/*.safetensors")
    assert found == [f"{s3_bucket}/globbed/sub/c.safetensors"]
    assert read_shapes(found[0]) == read_shapes(str(paths[2]))
    assert isinstance(filesystem, pafs.S3FileSystem)
    with pytest.raises(NetworkFileError, match="no file matches"):
        expand(f"{s3_bucket}/globbed/*.pt")
    with pytest.raises(NetworkFileError, match="not found"):
        expand(str(tmp_path / "missing.pt"))


# --- the config: networks named by content, bad input refused before Ray -------------------------


def test_networks_are_named_by_their_content_not_their_names(tmp_path, states):
    paths = write_networks(tmp_path / "nets", states)
    config = parse_config(sweep("c", tmp_path / "runs", str(tmp_path / "nets" / "*")))
    (plan,) = config.models
    assert plan.is_imported and plan.model_key.startswith("mlp-w16-d2-none-imported-")
    assert sorted(plan.seeds) == sorted(content_id(sha(p)) for p in paths)
    assert plan.pairs == tuple((a, b) for i, a in enumerate(plan.seeds) for b in plan.seeds[i + 1 :])
    assert {n.uri: n.sha256 for n in plan.imported} == {str(p): sha(p) for p in paths}

    shutil.move(paths[0], tmp_path / "nets" / "renamed.pt")
    renamed = parse_config(sweep("c", tmp_path / "runs", str(tmp_path / "nets" / "*"))).models[0]
    assert (renamed.model_key, renamed.seeds) == (plan.model_key, plan.seeds)

    torch.save(states[3], tmp_path / "nets" / "renamed.pt")
    rewritten = parse_config(sweep("c", tmp_path / "runs", str(tmp_path / "nets" / "*"))).models[0]
    assert rewritten.model_key == plan.model_key
    assert len(set(rewritten.seeds) & set(plan.seeds)) == 2 and len(rewritten.seeds) == 3


def test_an_unchanged_file_is_not_read_again_once_a_run_recorded_it(tmp_path, states, monkeypatch):
    from repair_ray.sweep.stored import save_networks

    write_networks(tmp_path / "nets", states)
    config = parse_config(sweep("c", tmp_path / "runs", str(tmp_path / "nets" / "*")))
    save_networks(config)
    hashed: list[str] = []
    real = imports.content_hash
    monkeypatch.setattr(imports, "content_hash", lambda uri: hashed.append(uri) or real(uri))
    again = parse_config(sweep("c", tmp_path / "runs", str(tmp_path / "nets" / "*")))
    assert hashed == [] and again.models[0].seeds == config.models[0].seeds
    path = tmp_path / "nets" / "a.pt"
    torch.save(states[4], path)
    os.utime(path, (1e9, 1e9))  # another modification time: read again
    changed = parse_config(sweep("c", tmp_path / "runs", str(tmp_path / "nets" / "*")))
    assert hashed == [str(path)] and content_id(sha(path)) in changed.models[0].seeds


def validate(tmp_path: Path, data: dict) -> tuple[int, str]:
    out = CliRunner().invoke(main, ["validate", write_yaml(tmp_path / "sweep.yaml", data)])
    return out.exit_code, out.output


@pytest.mark.parametrize(
    "damage, expected",
    [
        ("empty_glob", "models[0].checkpoints: {folder}/*.safetensors: no file matches"),
        ("missing", "models[0].checkpoints: {folder}/gone.pt: not found"),
        ("pickled", "models[0].checkpoints: {folder}/a.pt: holds pickled objects other than tensors"),
        ("truncated", "models[0].checkpoints: {folder}/c.safetensors: truncated"),
        (
            "misfit",
            "models[0].checkpoints: {folder}/b.pth does not fit mlp-w16-d2-none (4 classes, input (1, 8, 8)): "
            "the key 'layers.0.linear.weight' has shape (32, 64) in the file but (16, 64) in the network",
        ),
        ("twice", "models[0].checkpoints: {folder}/a.pt and {folder}/copy.pt hold the same network"),
        ("one", "models[0].checkpoints: names 1 network file(s); a pair needs at least 2"),
    ],
)
def test_bad_network_files_fail_validate_with_exit_2_naming_the_file(tmp_path, states, damage, expected):
    folder = tmp_path / "nets"
    paths = write_networks(folder, states)
    pattern: str | list[str] = str(folder / "*")
    if damage == "empty_glob":
        pattern = str(folder / "*.safetensors")
        paths[2].unlink()
    elif damage == "missing":
        pattern = [str(paths[0]), str(folder / "gone.pt")]
    elif damage == "pickled":
        torch.save(torch.nn.Linear(2, 2), paths[0])
    elif damage == "truncated":
        paths[2].write_bytes(paths[2].read_bytes()[:-10])
    elif damage == "misfit":
        wide = ModelConfig("mlp", 32, 2).build(4, (1, 8, 8)).state_dict()
        torch.save(wide, paths[1])
    elif damage == "twice":
        shutil.copy(paths[0], folder / "copy.pt")
    elif damage == "one":
        pattern = [str(paths[0])]
    code, output = validate(tmp_path, sweep("bad", tmp_path / "runs", pattern))
    assert code == 2, output
    assert expected.format(folder=folder) in output, output


@pytest.mark.parametrize(
    "extra, expected",
    [
        ({"train": {"epochs": 3}}, "train: applies to networks the sweep trains"),
        ({"seeds": 5}, "seeds: applies to networks the sweep trains"),
        ({"branch": {"at_epochs": [1]}}, "branch: a study design of networks the sweep trains"),
        ({"imp": {"rounds": 1, "rate": 0.5}}, "imp: a study design of networks the sweep trains"),
    ],
)
def test_training_only_keys_beside_imported_networks_are_refused(tmp_path, states, extra, expected):
    write_networks(tmp_path / "nets", states)
    with pytest.raises(ConfigError, match=expected):
        parse_config(sweep("t", tmp_path / "runs", str(tmp_path / "nets" / "*"), **extra))


def test_a_grid_with_checkpoints_is_one_model_config(tmp_path, states):
    write_networks(tmp_path / "nets", states)
    data = sweep("g", tmp_path / "runs", str(tmp_path / "nets" / "*"))
    data["models"][0]["width"] = [16, 32]
    with pytest.raises(ConfigError, match=r"models\[0\]: with checkpoints, width, depth and norm take one value"):
        parse_config(data)


def test_imported_networks_take_no_init_and_their_key_and_rows_name_none(tmp_path, states):
    """An imported network was initialised elsewhere: ``init`` beside checkpoints is refused, and its
    model key is what it was before init was a knob (the zoo's default init is not in it)."""
    write_networks(tmp_path / "nets", states)
    data = sweep("i", tmp_path / "runs", str(tmp_path / "nets" / "*"))
    with_init = {**data, "models": [{**data["models"][0], "init": "torch"}]}
    with pytest.raises(ConfigError, match=r"models\[0\]\.init: the networks in checkpoints are trained already"):
        parse_config(with_init)
    plan = parse_config(data).models[0]
    assert plan.model_key == "mlp-w16-d2-none-imported-64cc4716e1"  # computed with main's code before init
    assert "init" in plan.model.described() and plan.fields()["init"] is None


def test_a_sweep_that_also_trains_may_keep_its_training_keys(tmp_path, states):
    write_networks(tmp_path / "nets", states)
    data = sweep("m", tmp_path / "runs", str(tmp_path / "nets" / "*"), seeds=2, train={"epochs": 1, "batch_size": 64})
    data["models"].append({"arch": "mlp", "width": 8, "depth": 2})
    config = parse_config(data)
    assert [p.is_imported for p in config.models] == [True, False]
    assert config.models[1].seeds == (0, 1)


# --- the sweep: every pair, resumed by content ----------------------------------------------------


def test_a_sweep_of_imported_networks_computes_only_what_changed(ray_session, tmp_path, states):
    folder = tmp_path / "nets"
    paths = write_networks(folder, states)
    data = sweep("byo", tmp_path / "runs", str(folder / "*"))

    def run() -> tuple:
        config = parse_config(data)
        result = run_sweep(config, say=lambda _line: None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tables = load_tables(config.root)
        return config, result, tables, [str(w.message) for w in caught]

    config, result, tables, _ = run()
    models, pairs = tables["models"], tables["pairs"]
    assert (result.train.ran, result.pairs.ran) == (3, 3)
    assert (models["status"] == "ok").all() and models["imported"].all()
    assert dict(zip(models["checkpoint_uri"], models["checkpoint_sha256"], strict=True)) == {
        str(p): sha(p) for p in paths
    }
    assert sorted(models["seed"]) == sorted(content_id(sha(p)) for p in paths)
    assert models["test_acc"].gt(0.4).all()  # evaluated as stored: these are trained networks
    assert len(pairs) == 3 * 2 * 2 and (pairs["status"] == "ok").all()
    by_seed = {content_id(sha(p)): (str(p), sha(p)) for p in paths}
    for row in pairs.itertuples():
        assert (row.source_a, row.sha256_a) == by_seed[row.seed_a]
        assert (row.source_b, row.sha256_b) == by_seed[row.seed_b]
    assert len(tables["curves"]) == len(pairs) * 2 * 5 and len(tables["layers"]) == len(pairs) * 2
    status = sweep_status(config.root)
    assert (status.models_ok, status.pairs_ok, status.pairs_expected) == (3, 3, 3)

    shutil.move(paths[0], folder / "moved.pt")  # renamed: the same network, nothing new
    _, result, tables, _ = run()
    assert (result.train.ran, result.pairs.ran) == (0, 0) and len(tables["pairs"]) == 12

    torch.save(states[3], folder / "d.pt")  # added: its 3 pairs only
    _, result, tables, _ = run()
    assert (result.train.ran, result.pairs.ran, result.pairs.already_done) == (1, 3, 3)
    assert len(tables["pairs"]) == 24

    old = content_id(sha(paths[1]))
    torch.save(states[4], paths[1])  # rewritten: a new network, whose rows never mix with the old one's
    new = content_id(sha(paths[1]))
    config, result, tables, caught = run()
    assert (result.train.ran, result.pairs.ran) == (1, 3)
    current = set(tables["pairs"]["seed_a"]) | set(tables["pairs"]["seed_b"])
    assert new in current and old not in current and old not in set(tables["models"]["seed"])
    assert any("pairs: left out 12 row(s)" in w for w in caught), caught
    everything = load_tables(config.root, keys="all")
    assert old in set(everything["pairs"]["seed_a"]) | set(everything["pairs"]["seed_b"])
    assert sweep_status(config.root).pairs_ok == 6


def test_a_pair_task_refuses_a_file_rewritten_after_its_network_was_named(ray_session, tmp_path, states):
    from repair_ray.sweep.pair_stage import run_pair_stage

    folder = tmp_path / "nets"
    paths = write_networks(folder, states)
    config = parse_config(sweep("late", tmp_path / "runs", str(folder / "*")))
    run_sweep(config, say=lambda _line: None)
    for table in ("pairs", "curves", "layers"):
        shutil.rmtree(Path(config.root, "tables", table))
    torch.save(states[4], paths[0])  # rewritten behind the config's back
    summary = run_pair_stage(config, say=lambda _line: None)
    assert summary.failed == 2  # the two pairs of the rewritten file
    pairs = load_tables(config.root)["pairs"]
    failed = pairs[pairs["status"] == "failed"]
    assert failed["error"].str.contains("content changed since the sweep named it").all()
    named = next(n.seed for n in config.models[0].imported or () if n.uri == str(paths[0]))
    assert set(failed["unloadable_seed"]) == {named}  # the network is imported (checked) again next run


def test_an_imported_network_is_evaluated_with_its_batchnorm_statistics_as_stored(tmp_path):
    """The import task evaluates the file's network as it is: its BatchNorm running statistics are the
    stored ones, not statistics measured again (which give measurably other numbers here)."""
    from repair_ray import evaluate, reset_batchnorm
    from repair_ray.io.networks import load_into
    from repair_ray.io.tables import read_table
    from repair_ray.sweep.train_worker import run_import
    from repair_ray.sweep.trials import trial_spec

    dataset = make_synthetic(shape=(1, 8, 8), num_classes=4, train_size=512, test_size=256)
    model = ModelConfig("mlp", 16, 2, "batch")
    folder = tmp_path / "nets"
    folder.mkdir()
    for seed in (0, 1):
        state = train_model(model, TrainConfig(epochs=1, batch_size=64, lr=0.05), dataset, seed=seed).state_dict
        torch.save(state, folder / f"bn-{seed}.pt")
    data = sweep("bn", tmp_path / "runs", str(folder / "*.pt"))
    data["models"][0]["norm"] = "batch"
    config = parse_config(data)
    (plan,) = config.models
    network = plan.imported[0] if plan.imported else None
    assert network is not None
    errors = run_import(trial_spec(config, plan, [network.seed], 1), lambda _report: None)
    assert errors == {network.seed: None}
    row = read_table(config.root, "models").iloc[0]
    assert (row["seed"], row["status"], row["checkpoint_sha256"]) == (network.seed, "ok", network.sha256)
    stored = load_into(model.build(4, (1, 8, 8)), load_state_dict(network.uri), network.uri).eval()
    as_stored = evaluate(stored, dataset.test)
    assert row["test_loss"] == pytest.approx(as_stored["loss"], rel=1e-6)
    remeasured = evaluate(reset_batchnorm(stored, dataset.train).eval(), dataset.test)
    assert abs(remeasured["loss"] - as_stored["loss"]) > 1e-3  # the test could tell them apart
