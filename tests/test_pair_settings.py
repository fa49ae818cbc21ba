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
