"""PairSettings: the α grid construction leaves behind, read as points."""

from __future__ import annotations

from repair_ray.pair import PairSettings


def test_alpha_points_are_the_sorted_grid_with_both_ends_and_the_midpoint():
    assert PairSettings(alphas=5).alpha_points == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert PairSettings(alphas=[0.3, 0.1]).alpha_points == (0.0, 0.1, 0.3, 0.5, 1.0)
    settings = PairSettings(alphas=3)
    assert settings.alpha_points == settings.alphas


def test_the_package_keeps_every_name_the_sweep_and_tests_import():
    from repair_ray import pair

    for name in (
        "ANALYSIS_VERSION",
        "LATER_FIELDS",
        "METHOD_FIELDS",
        "PRESETS",
        "PairSettings",
        "analyse_pair",
        "correction_applies",
        "float_precision",
        "sample_forwards",
    ):
        assert hasattr(pair, name), name
