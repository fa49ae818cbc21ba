"""Each method against a small reference computed another way.

Weight matching and the learned matchings against the brute-force enumeration of every
permutation of a tiny MLP (4!·4! = 576); the ``layers`` table's variance ratio against plain
forward hooks; REPAIR of a BatchNorm residual net against the paper's procedure written out by
hand (BatchNorm layers added at the block outputs, then every BatchNorm reset).
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn

from repair_ray import (
    PairSettings,
    analyse_pair,
    apply_permutation,
    interpolate_state,
    permutation_spec,
    random_permutation,
    repair,
    sinkhorn_matching,
    ste_matching,
    weight_matching,
)
from repair_ray.datasets import Dataset, TensorData
from repair_ray.permutation import invert_permutation, matching_objective, midpoint_loss

from .helpers import briefly_trained, prototype_data, train_briefly

# the 24 permutations of a group of 4 units; the first is the identity
PERMS_4 = [torch.tensor(p) for p in itertools.permutations(range(4))]
SHAPE, CLASSES = (1, 4, 4), 4


def tiny_pair(pair: int, data: TensorData, steps: int = 30, lr: float = 0.01):
    """Two MLPs with two hidden layers of 4 units, trained briefly from different seeds."""
    a, b = (
        briefly_trained(
            "mlp", data, seed=2 * pair + k, steps=steps, lr=lr, width=4, depth=2, norm="none", num_classes=CLASSES
        )
        for k in (1, 2)
    )
    return a, b, permutation_spec(a)


def brute_force(spec, score) -> dict[tuple[int, int], float]:
    """``score`` of every joint permutation of the two hidden groups, keyed by their indices in PERMS_4."""
    g0, g1 = spec.sizes
    return {(i, j): score({g0: PERMS_4[i], g1: PERMS_4[j]}) for i in range(24) for j in range(24)}


def objective_table(spec, a, b) -> dict[tuple[int, int], float]:
    return brute_force(spec, lambda perm: matching_objective(spec, a, b, perm))


def midpoint_loss_of(spec, a, b, data):
    """The midpoint loss on ``data`` of A and B permuted by a given permutation."""
    state_a = a.state_dict()
    return lambda perm: midpoint_loss(a, state_a, apply_permutation(spec, perm, b), data)


def weight_matching_at(spec, a, b, **options) -> tuple[int, int]:
    return indices(spec, weight_matching(spec, a, b, **options))


def indices(spec, perm) -> tuple[int, int]:
    return tuple(next(k for k, p in enumerate(PERMS_4) if torch.equal(p, perm[g])) for g in spec.sizes)


def improves(new: float, old: float) -> bool:
    return new > old + 1e-9 * max(1.0, abs(old))


def coordinate_descent(table, first: int) -> tuple[int, int]:
    """Weight matching's algorithm on the brute-force table: from the identity, each group in turn
    set to its best permutation with the other fixed (group ``first`` first), until neither improves."""
    at, group, idle = (0, 0), first, 0
    while idle < 2:
        candidates = [(k, at[1]) if group == 0 else (at[0], k) for k in range(24)]
        best = max(candidates, key=table.__getitem__)
        if improves(table[best], table[at]):
            at, idle = best, 0
        else:
            idle += 1
        group = 1 - group
    return at


def is_coordinatewise_optimal(table, at: tuple[int, int]) -> bool:
    """No change of one group's permutation, the other fixed, raises the objective."""
    i, j = at
    return not any(improves(table[(k, j)], table[at]) or improves(table[(i, k)], table[at]) for k in range(24))


@pytest.mark.slow
def test_weight_matching_against_the_brute_force_optimum():
    """On 10 pairs of tiny MLPs, every one of the 576 permutations scored by ``matching_objective``.

    What holds, and is asserted: every result is coordinate-wise optimal in the table (no change of
    one group raises the objective); ``start="identity"`` ends where the brute-force coordinate
    descent from the identity ends (visiting one or the other group first), and ``restarts=10``
    is the better of those two descents; ``restarts=K`` is never below ``restarts=1`` of the same seed.

    What does not hold: the global optimum. Restarts vary only the visiting order, never the start;
    with two groups there are two orders, so restarts escape at most one local optimum (and with the
    deterministic forward start none). Measured: ``restarts=10`` from the identity reaches the brute-force
    maximum on 7 of these 10 pairs, ``restarts=1`` (seed 0) on 5, the forward start on 7.
    """
    data = prototype_data(SHAPE, n=256, classes=CLASSES)
    hits = {"identity x1": 0, "identity x10": 0, "forward": 0}
    for pair in range(10):
        a, b, spec = tiny_pair(pair, data)
        table = objective_table(spec, a, b)
        optimum = max(table.values())
        descents = {coordinate_descent(table, first) for first in (0, 1)}
        for start in ("identity", "forward"):
            for seed in range(3):
                once = weight_matching_at(spec, a, b, seed=seed, start=start)
                many = weight_matching_at(spec, a, b, seed=seed, start=start, restarts=10)
                assert is_coordinatewise_optimal(table, once), (pair, start, seed)
                assert is_coordinatewise_optimal(table, many), (pair, start, seed)
                assert table[many] >= table[once], (pair, start, seed)
                if start == "identity":
                    assert once in descents, (pair, seed)
        best_descent = max(table[d] for d in descents)
        assert table[weight_matching_at(spec, a, b, seed=0, start="identity", restarts=10)] == best_descent, pair
        hits["identity x1"] += table[weight_matching_at(spec, a, b, seed=0, start="identity")] == optimum
        hits["identity x10"] += best_descent == optimum
        hits["forward"] += table[weight_matching_at(spec, a, b, seed=0, start="forward")] == optimum
    # measured: 5, 7 and 7 of the 10 pairs
    assert hits["identity x1"] <= hits["identity x10"], hits
    assert hits["identity x1"] >= 5 and hits["identity x10"] >= 7, hits


def test_weight_matching_from_the_identity_recovers_a_planted_permutation_under_noise():
    """B = A with its hidden units permuted plus 1% noise: Git Re-Basin's algorithm (the identity
    start) finds the inverse permutation exactly, and it is the brute-force optimum."""
    data = prototype_data(SHAPE, n=256, classes=CLASSES)
    for pair in range(5):
        a, _, spec = tiny_pair(pair, data)
        planted = random_permutation(spec, seed=pair)
        gen = torch.Generator().manual_seed(pair)
        b = {
            k: v + 0.01 * v.std() * torch.randn(v.shape, generator=gen)
            for k, v in apply_permutation(spec, planted, a).items()
        }
        expected = invert_permutation(planted)
        found = weight_matching(spec, a, b, start="identity", seed=pair)
        assert all(torch.equal(found[g], expected[g]) for g in spec.sizes), pair
        table = objective_table(spec, a, b)
        assert max(table, key=table.get) == indices(spec, expected), pair


@pytest.mark.slow
def test_learned_matchings_against_the_brute_force_midpoint_loss():
    """The midpoint loss of all 576 permutations of 8 pairs of tiny MLPs ranks each method's result.

    Git Re-Basin's STE (from the identity, SGD with momentum, the best minibatch's projection) lands
    in the best 5% on every pair (measured worst: 1.4%); a seeded random permutation does on none of
    them (measured: 0 of 8; by chance 5% each). Peña et al.'s Sinkhorn (from the identity, AdamW,
    constant temperature 1, the last logits hardened) lands there on 7 of the 8, not all: on pair 1
    its relaxed optimum hardens to a permutation at the 80th percentile (weight matching's is at
    the 11th; measured with the rows-first, unrolled Sinkhorn of this tool's first version; since
    issue 31 it runs Peña et al.'s columns-first, implicit-gradient one, which passes too). With
    ``init="weight"`` and this tool's selection rules (``data``, ``best``) both are
    never worse than weight matching's own permutation (the fallback guarantee), also at learning
    rates where the papers' rules (``batch``, ``last``) from the same start end worse than it.
    """
    data = prototype_data(SHAPE, n=512, classes=CLASSES)
    top = 0.05
    within = {"ste": 0, "sinkhorn": 0, "random": 0}
    worse = {"ste": 0, "sinkhorn": 0}
    for pair in range(8):
        a, b, spec = tiny_pair(pair, data, steps=100, lr=0.05)
        loss = midpoint_loss_of(spec, a, b, data)
        ranked = sorted(brute_force(spec, loss).values())
        ste = ste_matching(
            spec, a, b, data, init="identity", select="batch", optimizer="sgd", lr=0.01, momentum=0.9,
            steps=200, batch_size=128,
        )  # fmt: skip
        sinkhorn = sinkhorn_matching(
            spec, a, b, data, init="identity", select="last", optimizer="adamw", lr=0.1, temperatures=(1.0, 1.0),
            steps=100, batch_size=128, order="columns", gradient="implicit",
        )  # fmt: skip
        for name, perm in (("ste", ste), ("sinkhorn", sinkhorn), ("random", random_permutation(spec, seed=pair))):
            value = loss(perm)
            within[name] += sum(v < value - 1e-9 for v in ranked) / len(ranked) <= top

        # the fallback, under a learning rate at which the search wanders off weight matching's permutation
        weight = loss(weight_matching(spec, a, b, seed=0))
        for name, run, options, (guarded, unguarded) in (
            ("ste", ste_matching, {"optimizer": "adam", "lr": 3.0, "batch_size": 32}, ("data", "batch")),
            ("sinkhorn", sinkhorn_matching, {"lr": 1.0, "batch_size": 128}, ("best", "last")),
        ):
            assert loss(run(spec, a, b, data, init="weight", select=guarded, steps=50, **options)) <= weight, (
                name,
                pair,
            )
            worse[name] += loss(run(spec, a, b, data, init="weight", select=unguarded, steps=50, **options)) > weight
    assert within["ste"] == 8, within
    assert within["sinkhorn"] >= 7, within
    assert within["random"] <= 2, within
    # without the guarantee (the papers' selection rules) these runs do end above weight matching:
    # measured on 4 (STE) and 3 (Sinkhorn) of the 8 pairs
    assert worse["ste"] >= 1 and worse["sinkhorn"] >= 1, worse


def test_the_layers_variance_ratio_is_the_papers_computed_with_plain_hooks():
    """``mean_var_ratio`` of the ``layers`` rows: mean over units of the midpoint's variance over
    the mean of the endpoints' (population variances, as ChannelMoments), measured on the
    held-out train-curve samples [stat_samples, 2·stat_samples); not the squared ``std_ratio``."""
    data = prototype_data((1, 6, 6), n=400, classes=CLASSES)
    test = prototype_data((1, 6, 6), n=100, classes=CLASSES, seed=1)
    dataset = Dataset("prototypes", data, test, CLASSES, (1, 6, 6))
    kwargs = {"width": 8, "depth": 2, "norm": "none", "num_classes": CLASSES}
    a = briefly_trained("mlp", data, seed=1, steps=40, lr=0.05, **kwargs)
    b = briefly_trained("mlp", data, seed=2, steps=40, lr=0.05, **kwargs)
    settings = PairSettings(
        aligns=("none",), corrections=("none",), alphas=3, train_samples=300, stat_samples=100, eval_batch_size=64
    )
    # the train-curve samples: 300 of the split drawn by the subset seed; held out: their second hundred
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(settings.subset_seed))
    held_out = data.x[order[:300]][100:200]
    mid = copy.deepcopy(a)
    mid.load_state_dict(interpolate_state(a.state_dict(), b.state_dict(), 0.5))
    linears = [f"layers.{i}.linear" for i in range(2)]

    def unit_variances(model) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        modules = dict(model.named_modules())
        handles = [
            modules[n].register_forward_hook(
                lambda _m, _i, y, n=n: out.__setitem__(n, y.double().var(0, unbiased=False))
            )
            for n in linears
        ]
        with torch.no_grad():
            model(held_out)
        for h in handles:
            h.remove()
        return out

    var_a, var_b, var_mid = (unit_variances(m) for m in (a, b, mid))
    expected = {n: float(var_mid[n].mean() / ((var_a[n].mean() + var_b[n].mean()) / 2)) for n in linears}
    for per_pass in (1, 3):  # one α at a time, and the vmapped stack
        rows = {r["layer"]: r for r in analyse_pair(a, b, dataset, settings, alphas_per_pass=per_pass).layers}
        assert set(rows) == set(linears)
        for n in linears:
            assert rows[n]["mean_var_ratio"] == pytest.approx(expected[n], rel=1e-4), (per_pass, n)
    # a different statistic from the mean per-unit std ratio, squared, where units' ratios vary
    assert max(abs(rows[n]["mean_var_ratio"] - rows[n]["std_ratio"] ** 2) for n in linears) > 0.02


class Block(nn.Module):
    """A BasicBlock: relu(x + bn(conv(relu(bn(conv(x)))))), each ReLU a module called once."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu_out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu_out(x + self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))))


class TinyResNet(nn.Module):
    """conv-bn-relu stem, two residual blocks, global average pool, linear classifier."""

    def __init__(self, width: int = 8, num_classes: int = CLASSES) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.block1, self.block2 = Block(width), Block(width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(self.relu(self.bn(self.conv(x)))))
        return self.head(self.flatten(self.pool(x)))


def trained_resnet(data: TensorData, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return train_briefly(TinyResNet(), data, steps=30, lr=0.05, seed=seed)


def papers_repair(mid: nn.Module, a: nn.Module, b: nn.Module, x: torch.Tensor, alpha: float) -> nn.Module:
    """REPAIR of a BatchNorm ResNet as ``Merge-ResNet50-ImageNet.ipynb`` does it: a BatchNorm after
    every block's output whose affine is the target (the interpolated endpoints' means and stds),
    then every BatchNorm reset (momentum None, statistics reset, one train-mode pass over all
    samples in one batch) and eval mode."""
    blocks = ("block1", "block2")

    def block_moments(model) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        out = {}
        handles = [
            getattr(model, n).register_forward_hook(
                lambda _m, _i, y, n=n: out.__setitem__(n, (y.mean((0, 2, 3)), y.var((0, 2, 3), unbiased=False).sqrt()))
            )
            for n in blocks
        ]
        with torch.no_grad():
            model.eval()(x)
        for h in handles:
            h.remove()
        return out

    moments_a, moments_b = block_moments(a), block_moments(b)
    net = copy.deepcopy(mid)
    for n in blocks:
        (mean_a, std_a), (mean_b, std_b) = moments_a[n], moments_b[n]
        norm = nn.BatchNorm2d(len(mean_a))
        with torch.no_grad():
            norm.weight.copy_((1 - alpha) * std_a + alpha * std_b)
            norm.bias.copy_((1 - alpha) * mean_a + alpha * mean_b)
        block = getattr(net, n)
        block.relu_out = nn.Sequential(block.relu_out, norm)
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    counts = {}
    handles = [
        m.register_forward_pre_hook(lambda m, i: counts.__setitem__(m, i[0].numel() // i[0].shape[1])) for m in norms
    ]
    for m in norms:
        m.momentum = None
        m.reset_running_stats()
    net.train()
    with torch.no_grad():
        net(x)
    for h in handles:
        h.remove()
    # BatchNorm's running variance is the unbiased one (÷ n-1) where repair_ray keeps the
    # population variance (÷ n, what the batch was normalised by): corrected exactly here
    for m in norms:
        m.running_var.mul_((counts[m] - 1) / counts[m])
    return net.eval()


def test_repair_of_a_batchnorm_resnet_is_the_papers_procedure_written_by_hand():
    """``repair`` (correction ``repair``) of a 2-block BatchNorm ResNet computes the same logits as
    the REPAIR notebooks' procedure; ``repair_bn`` (every BatchNorm output renormalised too) does not."""
    data = prototype_data((3, 8, 8), n=600, classes=CLASSES)
    a, b = trained_resnet(data, seed=1), trained_resnet(data, seed=2)
    spec = permutation_spec(a, data.x[:2])
    assert {"block1.relu_out", "block2.relu_out"} <= set(spec.carried_points)
    assert spec.classifier_input is not None
    mid = copy.deepcopy(a)
    mid.load_state_dict(interpolate_state(a.state_dict(), b.state_dict(), 0.5))

    expected = papers_repair(mid, a, b, data.x, alpha=0.5)
    paper = repair(copy.deepcopy(mid), a, b, data, alpha=0.5, spec=spec, batch_size=len(data))
    variant = repair(copy.deepcopy(mid), a, b, data, alpha=0.5, spec=spec, batch_size=len(data), correction="repair_bn")
    with torch.no_grad():
        want, got, other, raw = expected(data.x), paper(data.x), variant(data.x), mid(data.x)
    scale = want.abs().max()
    assert (got - want).abs().max() < 1e-4 * scale
    assert (other - want).abs().max() > 1e-2 * scale
    assert (raw - want).abs().max() > 1e-2 * scale  # the correction did change the interpolated net
