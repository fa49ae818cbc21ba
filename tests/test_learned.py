"""The learned matchings (STE, Sinkhorn): valid permutations, planted ones recovered, lower midpoint loss."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from repair_ray import (
    PairSettings,
    analyse_pair,
    apply_permutation,
    build_model,
    load_dataset,
    permutation_spec,
    random_permutation,
    sinkhorn_matching,
    ste_matching,
    weight_matching,
)
from repair_ray.datasets import make_synthetic
from repair_ray.permutation import invert_permutation, midpoint_loss, soft_permute
from repair_ray.sweep.planning import analysis_keys

from . import custom_nets
from .helpers import briefly_trained, prototype_data


def is_permutation(perm, spec) -> bool:
    return all(torch.equal(torch.sort(perm[g]).values, torch.arange(n)) for g, n in spec.sizes.items())


def planted(arch="mlp", **kwargs):
    torch.manual_seed(0)
    a = build_model(arch, in_shape=(1, 6, 6), **kwargs).eval()
    spec = permutation_spec(a)
    perm = random_permutation(spec, seed=4)
    b = copy.deepcopy(a)
    b.load_state_dict(apply_permutation(spec, perm, a))
    return a, b, spec, perm


@pytest.mark.parametrize("norm", ["none", "batch"])
def test_ste_recovers_a_planted_permutation(norm):
    a, b, spec, perm = planted(width=16, depth=2, norm=norm)
    found = ste_matching(spec, a, b, prototype_data((1, 6, 6), n=128), steps=5, batch_size=64)
    assert is_permutation(found, spec)
    assert all(torch.equal(found[g], invert_permutation(perm)[g]) for g in spec.sizes)


@pytest.mark.parametrize(("order", "gradient"), [("rows", "unrolled"), ("columns", "implicit")])
def test_sinkhorn_recovers_a_planted_permutation_from_the_identity(order, gradient):
    a, b, spec, perm = planted(width=12, depth=2)
    identity = {g: torch.arange(n) for g, n in spec.sizes.items()}
    found = sinkhorn_matching(
        spec, a, b, None, objective="distance", steps=150, lr=0.1, init_perm=identity, order=order, gradient=gradient
    )
    assert is_permutation(found, spec)
    aligned = apply_permutation(spec, found, b)
    for name, value in a.state_dict().items():
        torch.testing.assert_close(aligned[name], value, rtol=0, atol=0, msg=name)


def test_soft_permutation_with_permutation_matrices_is_the_permutation_on_derived_segments():
    """Concatenations and flattened maps: the soft path agrees with apply_permutation exactly."""
    for model, shape in ((custom_nets.unet(width=4), (2, 3, 16, 16)), (custom_nets.SEBlockNet(), (2, 3, 8, 8))):
        spec = permutation_spec(model, torch.randn(*shape))
        perm = random_permutation(spec, seed=1)
        hard = {g: F.one_hot(p, len(p)).float() for g, p in perm.items()}  # S[i, p[i]] = 1
        state = model.state_dict()
        soft = soft_permute(spec, state, hard)
        expected = apply_permutation(spec, perm, state)
        for name in state:
            torch.testing.assert_close(soft[name], expected[name].to(soft[name].dtype), msg=name)


@pytest.fixture(scope="module")
def mnist_pair():
    """Two small MLPs trained briefly on real MNIST, and 2,000 of its training samples."""
    data = load_dataset("mnist")  # MNIST tests fail, never skip, without the data (REPAIR_RAY_DATA)
    train = data.train.subset(6000, seed=0)

    def trained(seed):
        return briefly_trained("mlp", train, steps=300, lr=0.05, seed=seed, width=64, depth=2)

    return trained(1), trained(2), train.head(2000), data


@pytest.mark.parametrize("method", ["ste", "sinkhorn"])
def test_learned_matching_lowers_the_midpoint_loss_below_weight_matching_on_real_mnist(mnist_pair, method, mnist):
    a, b, stat, _ = mnist_pair
    spec = permutation_spec(a)

    def loss(perm):
        return midpoint_loss(a, a.state_dict(), apply_permutation(spec, perm, b), stat)

    wm = weight_matching(spec, a, b)
    run = ste_matching if method == "ste" else sinkhorn_matching
    found = run(spec, a, b, stat, seed=0)
    assert is_permutation(found, spec)
    assert loss(found) < 0.95 * loss(wm), (loss(found), loss(wm))
    # the same seed gives the same permutation
    again = run(spec, a, b, stat, seed=0)
    assert all(torch.equal(found[g], again[g]) for g in spec.sizes)
    # applied, it keeps B's function
    aligned = copy.deepcopy(b)
    aligned.load_state_dict(apply_permutation(spec, found, b))
    with torch.no_grad():
        torch.testing.assert_close(aligned(stat.x[:100]), b(stat.x[:100]), rtol=1e-4, atol=1e-4)


def test_the_pair_analysis_runs_the_learned_aligns():
    data = make_synthetic(shape=(1, 6, 6), num_classes=4, train_size=256, test_size=128)
    torch.manual_seed(1)
    a = build_model("mlp", width=16, depth=2, in_shape=(1, 6, 6), num_classes=4).eval()
    torch.manual_seed(2)
    b = build_model("mlp", width=16, depth=2, in_shape=(1, 6, 6), num_classes=4).eval()
    settings = PairSettings(
        aligns=("weight", "ste", "sinkhorn"), corrections=("none",), alphas=3, train_samples=256, stat_samples=128,
        ste_steps=10, sinkhorn_steps=10,
    )  # fmt: skip
    result = analyse_pair(a, b, data, settings)
    assert [r["align"] for r in result.pairs] == ["weight", "ste", "sinkhorn"]
    assert all(r["align_seconds"] > 0 for r in result.pairs)


def test_learned_settings_are_in_their_own_rows_keys_only():
    base = analysis_keys(PairSettings(aligns=("none", "weight", "ste", "sinkhorn")), {"name": "mnist"})
    changed = analysis_keys(PairSettings(aligns=("none", "weight", "ste", "sinkhorn"), ste_steps=7), {"name": "mnist"})
    assert changed["ste"] != base["ste"]
    assert {k: changed[k] for k in ("none", "weight", "sinkhorn")} == {
        k: base[k] for k in ("none", "weight", "sinkhorn")
    }
    # aligns without learned settings share one key, the one a sweep without ste/sinkhorn has
    plain = analysis_keys(PairSettings(aligns=("none", "weight")), {"name": "mnist"})
    assert base["none"] == base["weight"] == plain["none"]


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"ste_lr": 0}, "ste_lr: must be a positive number"),
        ({"sinkhorn_steps": 0}, "sinkhorn_steps: must be a positive integer"),
        ({"sinkhorn_objective": "midpont"}, "did you mean 'midpoint'"),
        ({"aligns": ("stee",)}, "did you mean 'ste'"),
    ],
)
def test_learned_settings_are_checked(kwargs, words):
    from repair_ray import SettingError

    with pytest.raises(SettingError, match=words):
        PairSettings(**kwargs)


@pytest.mark.parametrize("method", ["ste", "sinkhorn"])
@pytest.mark.parametrize("net", ["cifar_resnet", "unet"])
def test_learned_matchings_run_on_residual_and_derived_networks(method, net):
    """Every architecture the spec machinery supports: a BN ResNet of the zoo and a derived U-Net
    (concatenations); valid permutations that keep B's function."""
    torch.manual_seed(0)
    if net == "unet":
        a, b, shape = custom_nets.unet(width=4).eval(), custom_nets.unet(width=4).eval(), (3, 16, 16)
    else:
        kw = {"width": 0.25, "depth": 8, "norm": "batch", "in_shape": (3, 8, 8), "num_classes": 10}
        a, b, shape = build_model("cifar_resnet", **kw).eval(), build_model("cifar_resnet", **kw).eval(), (3, 8, 8)
    spec = permutation_spec(a, torch.randn(2, *shape))
    data = prototype_data(shape, n=64)
    run = ste_matching if method == "ste" else sinkhorn_matching
    found = run(spec, a, b, data, seed=0, steps=3, batch_size=32)
    assert is_permutation(found, spec)
    aligned = copy.deepcopy(b)
    aligned.load_state_dict(apply_permutation(spec, found, b))
    with torch.no_grad():
        torch.testing.assert_close(aligned(data.x[:8]), b(data.x[:8]), rtol=1e-4, atol=1e-4)


ALL_ALIGNS = ("none", "weight", "activation", "ste", "sinkhorn")
# every setting of a method by name, with a value other than its default
METHOD_SETTINGS = {
    "weight_matching_start": "identity",
    "weight_matching_restarts": 3,
    "weight_matching_max_iter": 7,
    "ste_epochs": 2,
    "ste_optimizer": "sgd",
    "ste_momentum": 0.5,
    "ste_batch_size": 64,
    "ste_samples": "all",
    "ste_init": "identity",
    "ste_select": "batch",
    "ste_batchnorm": "running",
    "sinkhorn_epochs": 2,
    "sinkhorn_optimizer": "adamw",
    "sinkhorn_batch_size": 64,
    "sinkhorn_samples": 900,
    "sinkhorn_init": "identity",
    "sinkhorn_select": "last",
    "sinkhorn_batchnorm": "running",
    "sinkhorn_temperatures": (1.0, 1.0),
    "sinkhorn_order": "columns",
    "sinkhorn_gradient": "implicit",
    "fold_batchnorm": True,
}


@pytest.mark.parametrize(("name", "value"), METHOD_SETTINGS.items(), ids=list(METHOD_SETTINGS))
def test_every_method_setting_is_in_the_analysis_key_of_the_rows_it_changes(name, value):
    """A learned matching's settings change its own rows' key only; weight matching's settings (the
    learned ones start from it) and fold_batchnorm change every key of the rows they can change."""
    base = analysis_keys(PairSettings(aligns=ALL_ALIGNS), {"name": "mnist"})
    changed = analysis_keys(PairSettings(aligns=ALL_ALIGNS, **{name: value}), {"name": "mnist"})
    moved = {align for align in ALL_ALIGNS if changed[align] != base[align]}
    if name.startswith(("ste_", "sinkhorn_")):
        assert moved == {name.split("_")[0]}
    else:
        assert moved == set(ALL_ALIGNS)


def test_presets_select_the_published_methods_and_keys_beside_them_override(tmp_path):
    from repair_ray.pair import PRESETS
    from repair_ray.sweep.config import ConfigError, parse_config

    from .helpers import tiny_sweep

    config = parse_config(
        tiny_sweep(
            "p",
            str(tmp_path),
            align=["ste", "sinkhorn"],
            ste={"preset": "git-rebasin"},
            sinkhorn={"preset": "pena2023", "lr": 0.5},
        )
    )
    s = config.pair_settings
    for key, value in PRESETS["ste"]["git-rebasin"].items():
        assert getattr(s, f"ste_{key}") == value, key
    assert (s.ste_epochs, s.ste_optimizer, s.ste_lr, s.ste_init, s.ste_select) == (
        250,
        "sgd",
        1e-2,
        "identity",
        "batch",
    )
    assert (s.sinkhorn_lr, s.sinkhorn_optimizer, s.sinkhorn_temperatures) == (0.5, "adamw", (1.0, 1.0))
    assert (s.sinkhorn_order, s.sinkhorn_gradient) == ("columns", "implicit")  # as fagp/sinkhorn-rebasin
    # steps given beside a preset replace its epochs
    steps = parse_config(tiny_sweep("p", str(tmp_path), align=["ste"], ste={"preset": "git-rebasin", "steps": 30}))
    assert (steps.pair_settings.ste_steps, steps.pair_settings.ste_epochs) == (30, None)
    with pytest.raises(ConfigError, match=r"ste.preset: unknown preset 'git-rebasn'; did you mean 'git-rebasin'"):
        parse_config(tiny_sweep("p", str(tmp_path), align=["ste"], ste={"preset": "git-rebasn"}))
    with pytest.raises(ConfigError) as error:
        parse_config(tiny_sweep("p", str(tmp_path), weight={"start": "middle"}, ste={"optimizer": "lbfgs"}))
    assert "weight.start" in str(error.value) and "ste.optimizer" in str(error.value)


def test_the_midpoint_of_a_batchnorm_net_is_normalised_by_batch_statistics_when_asked():
    """batchnorm="batch": each batch normalised by its own statistics (as Peña et al. train the
    midpoint), the running statistics untouched; "running": the interpolated running statistics."""
    data = prototype_data((1, 6, 6), n=300)
    a = briefly_trained("mlp", data, seed=1, steps=10, width=16, depth=2, norm="batch")
    b = briefly_trained("mlp", data, seed=2, steps=10, width=16, depth=2, norm="batch")
    state_a, state_b = a.state_dict(), b.state_dict()
    before = {k: v.clone() for k, v in state_a.items()}
    mid = copy.deepcopy(a)
    mid.load_state_dict({k: (v + state_b[k]) / 2 if v.is_floating_point() else v for k, v in state_a.items()})
    with torch.no_grad():
        running = F.cross_entropy(mid.eval()(data.x), data.y).item()
        by_hand = F.cross_entropy(mid.train()(data.x), data.y).item()  # train mode: batch statistics
    batch = midpoint_loss(copy.deepcopy(a), state_a, state_b, data, batch_size=len(data), batchnorm="batch")
    assert batch == pytest.approx(by_hand, rel=1e-5)
    assert midpoint_loss(copy.deepcopy(a), state_a, state_b, data, batch_size=len(data)) == pytest.approx(
        running, rel=1e-5
    )
    assert abs(batch - running) > 1e-3
    assert all(torch.equal(before[k], v) for k, v in state_a.items())  # nothing was updated in place


def test_the_yaml_sections_of_the_learned_matchings_offer_exactly_their_settings():
    """One list of a learned matching's settings (METHOD_FIELDS): the config sections expose each."""
    from repair_ray.pair import METHOD_FIELDS
    from repair_ray.sweep.schema import SinkhornSection, SteSection

    for method, section in (("ste", SteSection), ("sinkhorn", SinkhornSection)):
        keys = set(section.model_fields) - {"preset"}
        assert keys == {field.removeprefix(f"{method}_") for field in METHOD_FIELDS[method]}, method


# ----------------------------------------------------------------------------- the Sinkhorn operator


def test_one_sinkhorn_iteration_normalises_columns_then_rows_as_pena_et_al_or_rows_then_columns():
    from repair_ray.permutation.sinkhorn import sinkhorn

    logits = torch.tensor([[0.0, 1.0, 2.0], [0.5, -1.0, 0.0], [3.0, 0.2, -0.4]], dtype=torch.float64)
    k = logits.exp()
    by_columns = k / k.sum(0, keepdim=True)
    columns_then_rows = by_columns / by_columns.sum(1, keepdim=True)
    by_rows = k / k.sum(1, keepdim=True)
    rows_then_columns = by_rows / by_rows.sum(0, keepdim=True)
    for gradient in ("unrolled", "implicit"):
        found = sinkhorn(logits, 1, order="columns", gradient=gradient)
        torch.testing.assert_close(found, columns_then_rows)
        torch.testing.assert_close(found.sum(1), torch.ones(3, dtype=torch.float64))  # rows exact, as upstream
        torch.testing.assert_close(sinkhorn(logits, 1, order="rows", gradient=gradient), rows_then_columns)
    assert not torch.allclose(columns_then_rows, rows_then_columns)


def test_the_implicit_sinkhorn_gradient_is_the_fixed_points_and_the_unrolled_one_at_convergence():
    from repair_ray.permutation.sinkhorn import ImplicitSinkhorn, sinkhorn

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: ImplicitSinkhorn.apply(z, 1000, "columns"), (logits,), atol=1e-6)
    weights = torch.randn(5, 5, generator=gen, dtype=torch.float64)
    grads = {}
    for gradient in ("unrolled", "implicit"):
        z = logits.detach().clone().requires_grad_(True)
        (sinkhorn(z, 500, order="columns", gradient=gradient) * weights).sum().backward()
        grads[gradient] = z.grad
    torch.testing.assert_close(grads["implicit"], grads["unrolled"], rtol=1e-8, atol=1e-10)
    # after a few iterations the two differ: the implicit gradient is not the unrolled one's shortcut there
    z = logits.detach().clone().requires_grad_(True)
    (sinkhorn(z, 1, order="columns") * weights).sum().backward()
    assert not torch.allclose(z.grad, grads["implicit"], atol=1e-3)


def test_the_sinkhorn_rows_of_earlier_settings_keep_their_key_and_the_preset_gets_a_new_one():
    """order and gradient joined the settings later (LATER_FIELDS): sinkhorn rows computed before
    them keep their key at the old values (rows first, unrolled); the pena2023 preset now normalises
    columns first with the implicit gradient, as upstream, so its rows get a new key and the rows it
    computed the old way stop being current (the keys below were computed before the fields existed)."""
    from repair_ray.pair import PRESETS

    mnist = {"name": "mnist", "options": {}}
    assert analysis_keys(PairSettings(aligns=("sinkhorn",)), mnist)["sinkhorn"] == "a21-s5000-53778f9ac7"
    preset = {f"sinkhorn_{k}": v for k, v in PRESETS["sinkhorn"]["pena2023"].items()}
    old_way = {**preset, "sinkhorn_order": "rows", "sinkhorn_gradient": "unrolled"}
    assert analysis_keys(PairSettings(aligns=("sinkhorn",), **old_way), mnist)["sinkhorn"] == "a21-s5000-0450aad365"
    new = analysis_keys(PairSettings(aligns=("sinkhorn",), **preset), mnist)["sinkhorn"]
    assert new not in ("a21-s5000-0450aad365", "a21-s5000-53778f9ac7")


def test_sinkhorn_order_and_gradient_are_checked():
    from repair_ray.errors import SettingError

    with pytest.raises(SettingError) as info:
        PairSettings(sinkhorn_order="diagonal", sinkhorn_gradient="implict")
    problems = dict(info.value.problems)
    assert "sinkhorn_order" in problems and "did you mean 'implicit'" in problems["sinkhorn_gradient"]
