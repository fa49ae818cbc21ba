"""Packaging and the command line outside a checkout: shipped examples, ``python -m``, a lazy ``--help``."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from repair_ray.cli import example_names, main
from repair_ray.sweep.config import parse_config

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "repair_ray", *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def test_help_imports_neither_torch_nor_scipy_nor_ray(subprocesses):
    code = (
        "import sys\nfrom repair_ray.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'scipy', 'ray', 'pyarrow', 'pandas') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert "Commands:" in out.stdout and "examples" in out.stdout


def test_the_names_module_is_the_one_home_of_methods_and_lineage_and_imports_nothing_heavy(subprocesses):
    code = (
        "import sys\nfrom repair_ray import names\n"
        "print(sorted(m for m in ('torch', 'scipy', 'ray', 'pyarrow', 'pandas') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    from repair_ray import correction, names, pair
    from repair_ray.io.tables import SCHEMAS
    from repair_ray.report import statistics

    assert pair.ALIGNS is names.ALIGNS is statistics.ALIGN_ORDER
    assert correction.CORRECTIONS is names.CORRECTIONS is statistics.CORRECTION_ORDER
    assert statistics.LINEAGE is names.LINEAGE
    assert all(name in SCHEMAS[table].names for table in ("models", "pairs") for name in names.LINEAGE)


def test_python_dash_m_is_the_cli_and_runs_anywhere(tmp_path, subprocesses):
    out = run_cli("--help", cwd=tmp_path)  # not the checkout: nothing may depend on the working directory
    assert out.returncode == 0, out.stderr
    assert "Usage: repair-ray" in out.stdout


def test_examples_ship_inside_the_package_and_are_valid(tmp_path, subprocesses):
    names = example_names()
    assert {"quickstart", "tiny", "mlp-width-depth"} <= set(names)
    # the checkout's examples/ is the package folder, not a copy that could drift
    assert sorted(p.stem for p in (REPO / "examples").glob("*.yaml")) == names
    listing = run_cli("examples", cwd=tmp_path)
    assert listing.returncode == 0 and all(name in listing.stdout for name in names)
    printed = run_cli("examples", "quickstart", cwd=tmp_path)
    config = parse_config(yaml.safe_load(printed.stdout))
    assert config.name == "quickstart" and config.n_pairs == 12


def test_validate_and_run_take_an_example_by_name(tmp_path, subprocesses):
    out = run_cli("validate", "--example", "quickstart", "--storage", str(tmp_path), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "models to train: 12" in out.stdout and f"-> {tmp_path}/quickstart" in out.stdout
    wrong = run_cli("validate", "--example", "quikstart", cwd=tmp_path)
    assert wrong.returncode == 2 and "did you mean 'quickstart'?" in wrong.stderr
    both = run_cli("validate", "some.yaml", "--example", "quickstart", cwd=tmp_path)
    assert both.returncode == 2 and "one of them" in both.stderr
    neither = run_cli("run", cwd=tmp_path)
    assert neither.returncode == 2 and "--example" in neither.stderr


def test_validate_spells_out_each_method_a_preset_selects(tmp_path, subprocesses):
    out = run_cli("validate", "--example", "git-rebasin-mlp-mnist", "--storage", str(tmp_path), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "weight matching: start identity, 1 restart(s)" in out.stdout
    assert "ste: init identity, 250 epochs over all training samples, sgd lr 0.01, select batch" in out.stdout
    assert "sinkhorn: init identity, 20 epochs over 9000 training samples, adamw lr 0.1, select last" in out.stdout
    assert "temperatures [1.0, 1.0], columns normalised first, implicit gradient" in out.stdout


def test_a_built_wheel_carries_the_examples_and_the_typed_marker(tmp_path, subprocesses):
    """What a normal (non-editable) install gets: the package data must be in the wheel."""
    import shutil

    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info beside the sources
    shutil.copytree(REPO / "repair_ray", source / "repair_ray", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)]
    out = subprocess.run([*command, str(source)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    (wheel,) = tmp_path.glob("repair_ray-*.whl")
    files = set(zipfile.ZipFile(wheel).namelist())
    assert {f"repair_ray/examples/{name}.yaml" for name in example_names()} <= files
    assert "repair_ray/py.typed" in files and "repair_ray/__main__.py" in files
    assert not any(name.startswith(("tests/", "benchmarks/", "examples/")) for name in files)


def test_usage_errors_exit_with_code_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["examples", "nope"], standalone_mode=True)
    assert info.value.code == 2
    assert "no example named 'nope'" in capsys.readouterr().err


def test_every_public_name_is_what_it_names_even_after_the_submodules_are_imported():
    """A submodule named like a lazily exported function would shadow it (``repair_ray.repair``)."""
    import importlib
    import pkgutil
    import types

    import repair_ray

    for info in pkgutil.walk_packages(repair_ray.__path__, "repair_ray."):
        if info.name != "repair_ray.__main__":
            importlib.import_module(info.name)
    for name in repair_ray.__all__:
        assert not isinstance(getattr(repair_ray, name), types.ModuleType), name
    assert callable(repair_ray.repair) and callable(repair_ray.load_tables)


def test_examples_lists_each_with_whole_sentences():
    """`repair-ray examples` never cuts a description off mid-sentence ("et al." is not an end)."""
    import re

    from click.testing import CliRunner

    from repair_ray.cli import example_names, main

    out = CliRunner().invoke(main, ["examples"]).output
    entries = re.split(r"\n(?=\S)", out.split("\n\nrun one with")[0])
    assert [entry.split()[0] for entry in entries] == example_names()
    for entry in entries:
        text = " ".join(entry.split()[1:])
        assert text[-1] in ".?!", entry
        assert not text.endswith(" al."), entry
