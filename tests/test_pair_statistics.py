"""The samples a pair's statistics and held-out figures are measured on: ``eval.stat_samples: all``
(the whole train split), ``eval.stat_augment`` (augmented as training augments), and held-out
samples that are never REPAIR's own."""

from __future__ import annotations

import copy

import pytest
import torch

from repair_ray.datasets import Dataset
from repair_ray.errors import SettingError
from repair_ray.hooks import Moments
from repair_ray.interpolation import interpolate_state
from repair_ray.pair import PairSettings, analyse_pair
from repair_ray.pair import curve as curve_module
from repair_ray.sweep.config import ConfigError, parse_config
from repair_ray.sweep.planning import analysis_keys
from repair_ray.training import Augmentation, augment_batch
from tests.helpers import briefly_trained, prototype_data, tiny_sweep

CLASSES = 4
SHAPE = (1, 6, 6)
LINEARS = [f"layers.{i}.linear" for i in range(2)]


@pytest.fixture(scope="module")
def pair() -> tuple[torch.nn.Module, torch.nn.Module, Dataset]:
    data = prototype_data(SHAPE, n=300, classes=CLASSES)
    test = prototype_data(SHAPE, n=120, classes=CLASSES, seed=1)
    dataset = Dataset("prototypes", data, test, CLASSES, SHAPE, black=(-1.5,))
    kwargs = {"width": 8, "depth": 2, "norm": "none", "num_classes": CLASSES}
    a = briefly_trained("mlp", data, seed=1, steps=40, lr=0.05, **kwargs)
    b = briefly_trained("mlp", data, seed=2, steps=40, lr=0.05, **kwargs)
    return a, b, dataset


def _outputs(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each linear layer's outputs on ``x``, in float64, by plain forward hooks."""
    out: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    handles = [
        modules[n].register_forward_hook(lambda _m, _i, y, n=n: out.__setitem__(n, y.detach().double()))
        for n in LINEARS
    ]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return out


def _captured(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """What every REPAIR of the analysis was given (A's target statistics, the statistics samples)
    and the network it left at α = 0.5."""
    calls: list[dict] = []
    original = curve_module.correct

    def correct(model, correction, moments_a, moments_b, stat_data, alpha, spec, settings):
        original(model, correction, moments_a, moments_b, stat_data, alpha, spec, settings)
        calls.append(
            {
                "correction": correction,
                "alpha": alpha,
                "moments_a": moments_a,
                "stat_data": stat_data,
                "model": copy.deepcopy(model),
            }
        )

    monkeypatch.setattr(curve_module, "correct", correct)
    return calls


def test_stat_samples_all_measures_repairs_statistics_over_the_whole_train_split(pair, monkeypatch) -> None:
    a, b, dataset = pair
    calls = _captured(monkeypatch)
    settings = PairSettings(aligns=("none",), corrections=("repair",), alphas=3, train_samples=None, stat_samples="all")
    analyse_pair(a, b, dataset, settings, alphas_per_pass=1)
    assert calls and all(len(c["stat_data"]) == len(dataset.train) == 300 for c in calls)
    outputs = _outputs(a, dataset.train.x)
    for name in LINEARS:
        target: Moments = calls[0]["moments_a"][name]
        torch.testing.assert_close(target.mean.double(), outputs[name].mean(0), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(target.std.double(), outputs[name].std(0, unbiased=False), rtol=1e-5, atol=1e-6)


def test_stat_samples_all_needs_the_whole_split_for_the_train_curve() -> None:
    with pytest.raises(SettingError, match="train_samples must be null"):
        PairSettings(stat_samples="all")  # train_samples: 10000 by default
    with pytest.raises(SettingError, match="stat_samples"):
        PairSettings(stat_samples="most")
    assert PairSettings(train_samples=None, stat_samples="all").stat_count(60000) == 60000
    assert PairSettings(train_samples=None, stat_samples="all").held_out_split(60000) == "test"


def test_augmented_statistics_differ_from_plain_ones_and_are_reproducible(pair, monkeypatch) -> None:
    a, b, dataset = pair
    translate = Augmentation("translate", fill=dataset.black)
    base = {"aligns": ("none",), "corrections": ("repair",), "alphas": 3, "train_samples": 200, "stat_samples": 100}
    runs = []
    for stat_augment in (False, True, True):
        calls = _captured(monkeypatch)
        settings = PairSettings(**base, stat_augment=stat_augment)
        result = analyse_pair(a, b, dataset, settings, alphas_per_pass=1, augmentation=translate)
        runs.append((calls[0], result))
    (plain, plain_rows), (augmented, augmented_rows), (again, again_rows) = runs
    order = torch.randperm(300, generator=torch.Generator().manual_seed(0))  # the train-curve samples
    head = dataset.train.x[order[:100]]
    assert torch.equal(plain["stat_data"].x, head)
    expected = augment_batch(head, torch.Generator().manual_seed(0), flips=False, fill=(-1.5,))
    assert torch.equal(augmented["stat_data"].x, expected)  # one translation per sample, from the subset seed
    assert torch.equal(augmented["stat_data"].x, again["stat_data"].x)
    for name in LINEARS:
        assert not torch.allclose(augmented["moments_a"][name].std, plain["moments_a"][name].std)
        assert torch.equal(augmented["moments_a"][name].std, again["moments_a"][name].std)
    assert augmented_rows.pairs[0]["midpoint_test_loss"] == again_rows.pairs[0]["midpoint_test_loss"]
    assert augmented_rows.pairs[0]["midpoint_test_loss"] != plain_rows.pairs[0]["midpoint_test_loss"]
    with pytest.raises(ValueError, match="stat_augment"):
        analyse_pair(a, b, dataset, PairSettings(**base, stat_augment=True), alphas_per_pass=1)


def test_held_out_samples_are_the_test_splits_when_repair_uses_every_train_curve_sample(pair, monkeypatch) -> None:
    """train_samples == stat_samples: no train-curve sample is left over, so the ``layers`` rows measure
    on the first stat_samples of the test curve's samples, never on REPAIR's own (where the repaired
    ratio is 1 by construction)."""
    a, b, dataset = pair
    calls = _captured(monkeypatch)
    settings = PairSettings(
        aligns=("none",), corrections=("none", "repair"), alphas=3, train_samples=100, stat_samples=100
    )
    rows = analyse_pair(a, b, dataset, settings, alphas_per_pass=1).layers
    assert {(r["held_out"], r["held_out_samples"]) for r in rows} == {("test", 100)}
    held_out = dataset.test.x[:100]  # test_samples None: the whole test split, in order
    mid = copy.deepcopy(a)
    mid.load_state_dict(interpolate_state(a.state_dict(), b.state_dict(), 0.5))
    repaired = next(c["model"] for c in calls if c["alpha"] == 0.5 and c["correction"] == "repair")

    def var_ratio(model: torch.nn.Module, x: torch.Tensor) -> dict[str, float]:
        out, ends = _outputs(model, x), (_outputs(a, x), _outputs(b, x))
        return {
            n: float(out[n].var(0, unbiased=False).mean())
            / float((ends[0][n].var(0, unbiased=False).mean() + ends[1][n].var(0, unbiased=False).mean()) / 2)
            for n in LINEARS
        }

    expected = {"none": var_ratio(mid, held_out), "repair": var_ratio(repaired, held_out)}
    on_repairs_own = var_ratio(repaired, calls[0]["stat_data"].x)
    for row in rows:
        assert row["mean_var_ratio"] == pytest.approx(expected[row["correction"]][row["layer"]], rel=1e-4)
    repaired_rows = [r for r in rows if r["correction"] == "repair"]
    assert any(abs(r["std_ratio"] - 1.0) > 1e-3 for r in repaired_rows)  # measured, not 1 by construction
    assert any(abs(r["mean_var_ratio"] - on_repairs_own[r["layer"]]) > 1e-3 for r in repaired_rows)
    stacked = analyse_pair(a, b, dataset, settings, alphas_per_pass=3).layers  # the vmapped path measures alike
    for one, other in zip(rows, stacked, strict=True):
        assert one["mean_var_ratio"] == pytest.approx(other["mean_var_ratio"], rel=1e-4)
        assert (other["held_out"], other["held_out_samples"]) == ("test", 100)


def test_held_out_samples_stay_the_train_curves_where_there_are_some_left(pair) -> None:
    a, b, dataset = pair
    settings = PairSettings(aligns=("none",), corrections=("none",), alphas=3, train_samples=150, stat_samples=100)
    rows = analyse_pair(a, b, dataset, settings, alphas_per_pass=1).layers
    assert {(r["held_out"], r["held_out_samples"]) for r in rows} == {("train", 50)}


def _keys(tmp_path, **sections) -> set[str]:
    config = parse_config(tiny_sweep("a", str(tmp_path), **sections))
    return set(analysis_keys(config.pair_settings, config.dataset.as_dict()).values())


def test_the_new_eval_keys_keep_todays_analysis_keys_and_make_their_own(tmp_path) -> None:
    plain = {"train_samples": 256, "stat_samples": 128}
    assert (
        _keys(tmp_path, eval=plain) == _keys(tmp_path, eval={**plain, "stat_augment": False}) == {"a5-s128-1f01cb9e87"}
    )
    translated = {"train": {"epochs": 2, "batch_size": 64, "lr": 0.05, "checkpoint_every": 1, "augment": "translate"}}
    augmented = _keys(tmp_path, eval={**plain, "stat_augment": True}, **translated)
    assert augmented.isdisjoint({"a5-s128-1f01cb9e87"})
    everything = _keys(tmp_path, eval={"train_samples": None, "stat_samples": "all"})
    assert len(everything) == 1 and next(iter(everything)).startswith("a5-sall-")
    # held out on the test split: other rows than those measured on REPAIR's own samples before
    assert _keys(tmp_path, eval={"train_samples": 128, "stat_samples": 128}).isdisjoint({"a5-s128-4acbb19129"})


def test_the_new_eval_keys_are_checked_naming_them(tmp_path) -> None:
    def message(**sections) -> str:
        with pytest.raises(ConfigError) as info:
            parse_config(tiny_sweep("a", str(tmp_path), **sections))
        return str(info.value)

    assert "eval.stat_samples: 'all' takes the statistics over the whole train split" in message(
        eval={"train_samples": 256, "stat_samples": "all"}
    )
    assert "eval.stat_augment: true augments the statistics samples as training does" in message(
        eval={"train_samples": 256, "stat_samples": 128, "stat_augment": True}
    )
    assert "eval.stat_samples" in message(eval={"train_samples": 256, "stat_samples": "some"})


def test_a_sweep_with_augmented_statistics_writes_held_out_layers_rows(ray_session, tmp_path) -> None:
    """Through the pair stage: the training's translation (padded with the dataset's black) reaches
    the pair's statistics, and with train_samples == stat_samples the layers rows say ``test``."""
    from repair_ray import load_tables
    from repair_ray.sweep.runner import run_sweep

    data = tiny_sweep(
        "aug",
        str(tmp_path),
        seeds=2,
        align=["none", "activation"],
        correction=["none", "repair"],
        train={"epochs": 1, "batch_size": 64, "lr": 0.05, "checkpoint_every": 1, "augment": "translate"},
        eval={"train_samples": 128, "stat_samples": 128, "stat_augment": True},
    )
    config = parse_config(data)
    run_sweep(config, say=lambda _m: None)
    tables = load_tables(config.root)
    assert set(tables["pairs"]["status"]) == {"ok"} and len(tables["pairs"]) == 4
    layers = tables["layers"]
    assert set(layers["held_out"]) == {"test"} and set(layers["held_out_samples"]) == {128}
