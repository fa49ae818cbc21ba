"""The trust boundary: code named in a config runs only where the user allowed it, and reading a
sweep folder never runs any; validation lists every problem at once, missing dataset folders included."""

from __future__ import annotations

import json
import sys
import uuid

import pytest
import yaml
from click.testing import CliRunner

from repair_ray import load_tables
from repair_ray.cli import main
from repair_ray.models import ImportRefused, ModelConfig
from repair_ray.models.external import ALLOW_IMPORT_ENV, import_allowed
from repair_ray.sweep.config import ConfigError, parse_config

from .helpers import tiny_sweep, write_yaml

NET = (
    "import pathlib\n"
    "from torch import nn\n"
    "pathlib.Path({marker!r}).write_text('imported')\n\n"
    "def make(width, num_classes, in_shape):\n"
    "    c, h, w = in_shape\n"
    "    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, width), nn.ReLU(), nn.Linear(width, num_classes))\n"
)


@pytest.fixture
def marker_module(tmp_path, monkeypatch):
    """A module on sys.path that leaves a file behind when it is imported: ``(name, marker path)``."""
    name = f"marker_net_{uuid.uuid4().hex[:8]}"
    marker = tmp_path / f"{name}.imported"
    code = tmp_path / "code"
    code.mkdir()
    (code / f"{name}.py").write_text(NET.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(code))
    monkeypatch.delenv(ALLOW_IMPORT_ENV, raising=False)
    yield name, marker
    sys.modules.pop(name, None)


def never_imported(name: str, marker) -> bool:
    return not marker.exists() and name not in sys.modules


def sweep_of(tmp_path, arch: str, **overrides) -> dict:
    models = [{"arch": "mlp", "width": 8, "depth": 1}, {"arch": arch, "width": 8}]
    return tiny_sweep("trust", str(tmp_path / "runs"), models=models, **overrides)


def test_a_config_naming_a_module_is_refused_without_importing_it(tmp_path, marker_module):
    name, marker = marker_module
    with pytest.raises(ConfigError) as info:
        parse_config(sweep_of(tmp_path, f"{name}:make"))
    message = str(info.value)
    assert f"models[1].arch: '{name}:make' would import and run the module '{name}'" in message
    assert f"--allow-import {name}" in message and ALLOW_IMPORT_ENV in message
    assert never_imported(name, marker)
    with pytest.raises(ConfigError, match=r"models\[1\].arch: 'os:system' would import and run the module 'os'"):
        parse_config(sweep_of(tmp_path, "os:system"))


def test_allowing_the_module_or_a_package_above_it_builds_the_network(tmp_path, marker_module):
    name, marker = marker_module
    config = parse_config(sweep_of(tmp_path, f"{name}:make"), allow_import=[name])
    assert marker.exists() and config.allow_import == (name,)
    assert import_allowed("pkg.nets:make", ["pkg"]) and import_allowed("pkg.nets:make", ["pkg.nets"])
    assert not import_allowed("pkg.nets:make", ["pk"]) and not import_allowed("pkg:make", ["pkg.nets"])
    assert import_allowed("torchvision:resnet18", []) and import_allowed("mlp", [])
    assert not import_allowed("torchvision.models:resnet18", [])  # only torchvision's builder table is free


def test_a_model_config_is_data_until_it_is_built_where_allowed(marker_module):
    name, marker = marker_module
    config = ModelConfig(f"{name}:make", width=8)  # a config naming a module: kept as data
    for use in (config.build, config.skeleton, config.permutation_spec, lambda: config.has_batchnorm):
        with pytest.raises(ImportRefused, match=f"--allow-import {name}"):
            use()
    assert never_imported(name, marker)
    net = config.build(3, (1, 4, 4), allow_import=[name])
    assert net[-1].out_features == 3 and marker.exists()
    assert ModelConfig(f"{name}:make", width=8, allow_import=name).skeleton(3, (1, 4, 4)) is not None


def test_validate_and_run_refuse_and_allow_from_the_command_line_or_the_environment(
    tmp_path, marker_module, monkeypatch
):
    name, marker = marker_module
    path = write_yaml(tmp_path / "sweep.yaml", sweep_of(tmp_path, f"{name}:make"))
    runner = CliRunner()
    for command in ("validate", "run"):
        refused = runner.invoke(main, [command, path])
        assert refused.exit_code == 2, refused.output
        assert "models[1].arch" in refused.output and f"--allow-import {name}" in refused.output
        assert never_imported(name, marker)
    assert not (tmp_path / "runs").exists()  # run stopped before anything was written
    wrong = runner.invoke(main, ["validate", path, "--allow-import", "other_pkg"])
    assert wrong.exit_code == 2 and never_imported(name, marker)
    allowed = runner.invoke(main, ["validate", path, "--allow-import", name])
    assert allowed.exit_code == 0, allowed.output
    assert f"{name}:make width=8" in allowed.output and marker.exists()
    marker.unlink()
    monkeypatch.setenv(ALLOW_IMPORT_ENV, f"other_pkg,{name}")
    from_env = runner.invoke(main, ["validate", path])
    assert from_env.exit_code == 0, from_env.output


def test_submit_refuses_and_passes_the_allowance_to_the_job(tmp_path, marker_module, monkeypatch):
    from repair_ray.sweep import jobs

    name, marker = marker_module
    submitted = {}

    class Client:
        def submit_job(self, **job):
            submitted.update(job)
            return job["submission_id"]

    monkeypatch.setattr(jobs, "client", lambda address: Client())
    path = write_yaml(tmp_path / "sweep.yaml", sweep_of(tmp_path, f"{name}:make"))
    refused = CliRunner().invoke(main, ["submit", path, "--address", "http://head:8265"])
    assert refused.exit_code == 2 and "models[1].arch" in refused.output and never_imported(name, marker)
    assert not submitted
    allowed = CliRunner().invoke(main, ["submit", path, "--address", "http://head:8265", "--allow-import", name])
    assert allowed.exit_code == 0, allowed.output
    assert submitted["entrypoint"] == f"python -m repair_ray run sweep.yaml --allow-import {name}"


def test_reading_a_sweep_folder_never_imports_what_its_config_names(ray_session, tmp_path, marker_module):
    """A sweep of the user's own network runs with the allowance (its Ray workers build the network with
    the driver's allowance, not their environment's); then its stored sweep.yaml is rewritten, as anyone
    who can write to the bucket could, to name a module that runs code: status, report and load_tables
    read the folder and import nothing."""
    from repair_ray.sweep.runner import load_sweep_config, run_sweep, sweep_status

    name, marker = marker_module
    models = [{"arch": "tests.custom_nets:residual_mlp", "width": 8, "depth": 1}]
    data = tiny_sweep("trusted", str(tmp_path / "runs"), models=models, seeds=2, align=["none", "weight"])
    config = parse_config({**data, "train": {"epochs": 1, "batch_size": 64, "lr": 0.05}}, allow_import=["tests"])
    result = run_sweep(config, say=lambda _: None)
    assert result.train.failed == 0 and result.pairs.failed == 0 and result.pairs.ran == 1
    recorded = json.loads((tmp_path / "runs" / "trusted" / "networks.json").read_text())
    assert recorded == {"batchnorm": dict(config.batchnorm)}
    # the stored config imports nothing: whether its network has BatchNorm is what the run recorded
    assert load_sweep_config(config.root).batchnorm == recorded["batchnorm"]
    status = sweep_status(config.root)
    assert (status.models_ok, status.pairs_ok, status.pairs_missing) == (2, 1, 0)  # the code was not needed

    stored = tmp_path / "runs" / "trusted" / "sweep.yaml"
    text = yaml.safe_load(stored.read_text())
    text["models"] = [{"arch": f"{name}:make", "width": 8}, {"arch": "os:system"}]
    stored.write_text(yaml.safe_dump(text))
    read = load_sweep_config(config.root)
    assert [plan.model.arch for plan in read.models] == [f"{name}:make", "os:system"]
    assert set(read.batchnorm.values()) == {False}  # no record of these keys: taken as without BatchNorm
    runner = CliRunner()
    shown = runner.invoke(main, ["status", config.root])
    assert shown.exit_code == 0, shown.output
    assert "models: 0 trained, 0 failed, 4 missing (of 4)" in shown.output  # other keys than the rows'
    report = runner.invoke(main, ["report", config.root, "--out", str(tmp_path / "report")])
    assert report.exit_code == 0, report.output
    tables = load_tables(config.root)
    assert len(tables["models"]) == 2 and len(tables["pairs"]) == 2 * 2  # align x correction
    assert never_imported(name, marker)


def test_validate_lists_every_problem_at_once_each_with_its_key(tmp_path):
    data = tiny_sweep(
        "many",
        str(tmp_path),
        models=[{"arch": "mlpp", "width": 8}],
        train={"epochs": 2, "lr": "fast", "batch_size": "big"},
    )
    result = CliRunner().invoke(main, ["validate", write_yaml(tmp_path / "sweep.yaml", data)])
    assert result.exit_code == 2, result.output
    assert "train.lr: input should be a valid number" in result.output
    assert "train.batch_size: input should be a valid integer" in result.output
    assert "models[0].arch: unknown arch 'mlpp'; did you mean 'mlp'?" in result.output


def test_a_rejected_key_does_not_also_report_what_follows_from_its_absence(tmp_path):
    data = tiny_sweep("many", str(tmp_path), models=[{"arch": "mlp", "width": "wide"}], seeds="many", trian={})
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    lines = str(info.value).splitlines()[1:]
    assert any(line.startswith("  - models[0].width: input should be") for line in lines)
    assert any(line.startswith("  - seeds: input should be") for line in lines)
    assert any(line.startswith("  - trian: unknown key; did you mean 'train'?") for line in lines)
    assert not any("needs a width" in line for line in lines), lines  # width was left out, not missing


def test_a_missing_image_folder_is_a_problem_and_a_missing_torchvision_dataset_a_warning(tmp_path, monkeypatch):
    nowhere = tmp_path / "no-such-folder"
    data = tiny_sweep("files", str(tmp_path), dataset=f"imagefolder:{nowhere}", models=[{"arch": "mlpp", "width": 8}])
    result = CliRunner().invoke(main, ["validate", write_yaml(tmp_path / "a.yaml", data)])
    assert result.exit_code == 2, result.output
    assert f"dataset: imagefolder {nowhere} does not exist or is not a folder (on this machine)" in result.output
    assert "models[0].arch: unknown arch 'mlpp'" in result.output  # and the other problems with it
    for split in ("train/cat", "test/cat"):
        (nowhere / split).mkdir(parents=True)
    parse_config({**data, "models": [{"arch": "mlp", "width": 8, "depth": 1}]})  # the layout is there now
    assert parse_config({**data, "models": [{"arch": "mlp", "width": 8, "depth": 1}]}, check_files=False)

    monkeypatch.setenv("REPAIR_RAY_DATA", str(tmp_path / "empty-root"))
    data = tiny_sweep("files", str(tmp_path), dataset="cifar10", models=[{"arch": "mlp", "width": 8, "depth": 1}])
    result = CliRunner().invoke(main, ["validate", write_yaml(tmp_path / "b.yaml", data)])
    assert result.exit_code == 0, result.output  # the workers download it when online
    assert "warning:" in result.output and "dataset cifar10: no files in" in result.output
