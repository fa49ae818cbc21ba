"""PairSettings: the α grid construction leaves behind, read as points."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

from repair_ray.pair import PairSettings


def test_alpha_points_are_the_sorted_grid_with_both_ends_and_the_midpoint():
    assert PairSettings(alphas=5).alpha_points == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert PairSettings(alphas=[0.3, 0.1]).alpha_points == (0.0, 0.1, 0.3, 0.5, 1.0)
    # a count and the same points written out are one grid, of floats, the ends and midpoint once each
    assert PairSettings(alphas=3).alpha_points == (0.0, 0.5, 1.0)
    assert PairSettings(alphas=[1, 0.5, 0, 0.5]).alpha_points == (0.0, 0.5, 1.0)
    assert all(type(a) is float for a in PairSettings(alphas=[0, 1]).alpha_points)
    assert PairSettings(alphas=3) == PairSettings(alphas=[0.0, 0.5, 1.0])  # so the same analysis key


def imported_from_pair() -> dict[str, set[str]]:
    """Every name that code of this repository imports from ``repair_ray.pair`` (absolute or
    relative, at module level or inside a function; submodules aside), and the files that import it."""
    root = Path(__file__).resolve().parents[1]
    found: dict[str, set[str]] = {}
    for folder in ("repair_ray", "tests", "analysis", "benchmarks"):
        for path in (root / folder).rglob("*.py"):
            package = path.relative_to(root).parent.parts
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not isinstance(node, ast.ImportFrom):
                    continue
                base = package[: len(package) - node.level + 1] if node.level else ()
                module = ".".join([*base, *(node.module or "").split(".")]).strip(".")
                if module == "repair_ray.pair":
                    for alias in node.names:
                        if importlib.util.find_spec(f"repair_ray.pair.{alias.name}") is not None:
                            continue  # a submodule (``from repair_ray.pair import curve``), not a name it exports
                        found.setdefault(alias.name, set()).add(str(path.relative_to(root)))
    return found


def test_the_package_keeps_every_name_the_sweep_and_tests_import():
    from repair_ray import pair

    imported = imported_from_pair()
    # the walk finds what the sweep is known to import (a walk that found nothing would pass below)
    assert {"PairSettings", "analyse_pair", "METHOD_FIELDS", "alpha_grid"} <= set(imported), sorted(imported)
    assert "repair_ray/sweep/pair_worker.py" in imported["analyse_pair"]
    star: dict = {}
    exec("from repair_ray.pair import *", star)
    for name, files in sorted(imported.items()):
        assert name in pair.__all__, f"{name} (imported by {sorted(files)}) is not in repair_ray.pair.__all__"
        assert star[name] is getattr(pair, name)
    # the package re-exports its modules' own objects, not copies that could drift
    from repair_ray.pair import analyse, settings

    assert pair.PairSettings is settings.PairSettings and pair.analyse_pair is analyse.analyse_pair
    assert pair.ANALYSIS_VERSION == settings.ANALYSIS_VERSION and pair.PRESETS is settings.PRESETS


def test_the_analysis_keys_of_default_settings_are_pinned():
    """test_samples and test_flip joined the settings later (LATER_FIELDS): at their defaults every
    key computed before them stays the same (these were computed before they existed)."""
    from repair_ray.sweep.planning import analysis_key

    mnist = {"name": "mnist", "options": {}}
    imagenet = {"name": "imagefolder:/data/imagenet", "options": {"image_size": 224}}
    assert analysis_key(PairSettings(), mnist) == "a21-s5000-b5ca330cc8"
    assert analysis_key(PairSettings(), imagenet, "weight") == "a21-s5000-3707a01bf6"
    explicit = PairSettings(test_samples=None, test_flip=False)
    assert analysis_key(explicit, mnist) == "a21-s5000-b5ca330cc8"
    keys = {analysis_key(PairSettings(**s), mnist) for s in ({"test_samples": 5000}, {"test_flip": True}, {})}
    assert len(keys) == 3  # set away from the default, each makes its own rows


def test_test_samples_and_test_flip_are_checked():
    import pytest

    from repair_ray.errors import SettingError

    with pytest.raises(SettingError) as info:
        PairSettings(test_samples=0, test_flip="yes")
    assert dict(info.value.problems) == {
        "test_samples": "must be a positive integer (or None for the whole split), got 0",
        "test_flip": "must be true or false, got 'yes'",
    }
    with pytest.raises(SettingError, match="test_samples"):
        PairSettings(test_samples=True)
    assert PairSettings(test_samples=5000, test_flip=True).test_samples == 5000
