"""Pair designs for large studies (issue 34, item 4): ``pairs: {sample: K, seed: S}`` and ``{star: i}``.

A sample is K distinct pairs drawn without replacement, deterministic in its seed, spread over every
seed, and stable as the study grows: raising K only adds pairs, and appending seeds keeps every pair
drawn before when K grows by the old draw's complete rounds per added seed. A star pairs every seed
with one reference. Every pair row records the design it was computed under.
"""

from __future__ import annotations

import collections
import itertools
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from repair_ray import load_tables
from repair_ray.cli import main
from repair_ray.io.tables import SCHEMAS, new_stem, table_file
from repair_ray.models import build_model
from repair_ray.sweep.config import ConfigError, load_config, parse_config
from repair_ray.sweep.pair_designs import sample_rounds, sampled_pairs
from repair_ray.sweep.runner import run_sweep

from .helpers import tiny_sweep, write_yaml


def grown_k(n: int, k: int, m: int) -> int:
    """The sample size that keeps every pair of a sample of ``k`` of ``n`` seeds when seeds grow to ``m``."""
    complete, _ = sample_rounds(n, k)
    return k + complete * (m - n)


@pytest.mark.parametrize(("n", "k", "seed"), [(2, 1, 0), (5, 3, 0), (10, 45, 1), (30, 100, 7), (200, 1000, 3)])
def test_a_sample_is_k_distinct_pairs_of_two_different_seeds(n, k, seed):
    seeds = list(range(n))
    pairs = sampled_pairs(seeds, k, seed)
    assert len(pairs) == k
    assert len({frozenset(p) for p in pairs}) == k  # without replacement, (a, b) and (b, a) being one pair
    assert all(a != b and a in seeds and b in seeds for a, b in pairs)
    # oriented as `all` orients them (the earlier seed first), so a pair done under `all` is the same pair
    assert set(pairs) <= set(itertools.combinations(seeds, 2))


def test_a_sample_is_deterministic_in_its_seed_and_another_seed_draws_others():
    seeds = list(range(40))
    assert sampled_pairs(seeds, 60, 0) == sampled_pairs(seeds, 60, 0)
    draws = {frozenset(sampled_pairs(seeds, 60, s)) for s in range(5)}
    assert len(draws) == 5


def test_raising_k_only_adds_pairs():
    seeds = list(range(25))
    most = sampled_pairs(seeds, 299, 4)  # of 300 (all 300 are every pair, in their own order)
    for k in [*range(1, 60), *range(60, 299, 17)]:  # every k of the first rounds, then some
        assert sampled_pairs(seeds, k, 4) == most[:k]  # the first k of one sequence


@pytest.mark.parametrize(("n", "k", "m"), [(6, 7, 10), (10, 20, 30), (10, 9, 11), (50, 200, 120), (12, 66, 20)])
def test_appending_seeds_keeps_every_pair_drawn_before(n, k, m):
    before = set(sampled_pairs(list(range(n)), k, 11))
    after = set(sampled_pairs(list(range(m)), grown_k(n, k, m), 11))
    assert before <= after
    # ... and every added seed is in the grown draw once a round was complete
    if sample_rounds(n, k)[0]:
        assert set(range(n, m)) <= {s for pair in after - before for s in pair}
    # a list grown at its end (any numbers) keeps them as well
    listed = [41, 7, 19, 3, 88, 60, 2, 15, 33, 71, 5, 90][:n] if n <= 12 else list(range(100, 100 + n))
    extra = [1000 + i for i in range(m - n)]
    old = set(sampled_pairs(listed, k, 11))
    assert old <= set(sampled_pairs(listed + extra, grown_k(n, k, m), 11))


def test_a_sample_spreads_over_every_seed_not_the_first_ones():
    n, k = 300, 1500
    degree = collections.Counter(s for pair in sampled_pairs(list(range(n)), k, 0) for s in pair)
    assert set(degree) == set(range(n))  # every seed is in the sample
    assert min(degree.values()) >= k // n  # each seed is paired with at least one per complete round
    assert max(degree.values()) <= 2 * (2 * k // n)  # and no seed with more than twice the mean


def test_growing_a_sweep_keeps_its_sampled_pairs(tmp_path):
    small = parse_config(tiny_sweep("g", str(tmp_path), seeds=8, pairs={"sample": 10, "seed": 2}))
    k = grown_k(8, 10, 14)
    grown = parse_config(tiny_sweep("g", str(tmp_path), seeds=14, pairs={"sample": k, "seed": 2}))
    assert set(small.models[0].pairs) <= set(grown.models[0].pairs)
    assert len(grown.models[0].pairs) == grown.n_pairs == k
    assert grown.pair_design == f"sample:{k}:seed=2" and small.pair_design == "sample:10:seed=2"
    other = parse_config(tiny_sweep("g", str(tmp_path), seeds=8, pairs={"sample": 10, "seed": 3}))
    assert set(other.models[0].pairs) != set(small.models[0].pairs)


def test_a_star_pairs_every_seed_with_its_reference(tmp_path):
    config = parse_config(tiny_sweep("s", str(tmp_path), seeds=[4, 9, 2, 7], pairs={"star": 2}))
    assert list(config.models[0].pairs) == [(2, 4), (2, 9), (2, 7)]  # the reference is network A
    assert config.pair_design == "star:2"


def test_every_child_config_of_a_stability_study_draws_the_same_pairs(tmp_path):
    data = tiny_sweep("b", str(tmp_path), seeds=6, branch={"at_epochs": [0, 1]}, pairs={"sample": 5, "seed": 1})
    config = parse_config(data)
    assert len(config.models) == 2 and config.models[0].pairs == config.models[1].pairs
    assert len(config.models[0].pairs) == 5
    star = parse_config({**data, "pairs": {"star": 3}})
    assert all(plan.pairs == ((3, 0), (3, 1), (3, 2), (3, 4), (3, 5)) for plan in star.models)


BAD = [
    ({"pairs": {"sampel": 3}}, ["pairs.sampel: unknown key; did you mean 'sample'?"]),
    ({"pairs": {"sample": 4, "sed": 1}}, ["pairs.sed: unknown key; did you mean 'seed'?"]),
    ({"pairs": {"sample": 11}}, ["pairs.sample: 11 pairs asked, but the 5 seeds form only 10 pairs"]),
    ({"pairs": {"sample": 0}}, ["pairs.sample: must be a positive integer, got 0"]),
    ({"pairs": {"sample": -2}}, ["pairs.sample: must be a positive integer, got -2"]),
    ({"pairs": {"sample": 2.5}}, ["pairs.sample: input should be a valid integer"]),
    ({"pairs": {"sample": True}}, ["pairs.sample: input should be a valid integer"]),
    ({"pairs": {"sample": "ten"}}, ["pairs.sample: input should be a valid integer"]),
    ({"pairs": {"star": 9}}, ["pairs.star: 9 is not a seed (its seeds: [0, 1, 2, 3, 4])"]),
    ({"pairs": {"sample": 3, "star": 1}}, ["pairs: name exactly one of first, sample, star", "sample, pairs.star"]),
    ({"pairs": {"seed": 3}}, ["pairs: name exactly one of first, sample, star"]),
    ({"pairs": {"first": 2, "seed": 3}}, ["pairs.seed: only with pairs.sample"]),
    ({"pairs": {}}, ["pairs: name exactly one of first, sample, star"]),
]


@pytest.mark.parametrize(("change", "expected"), BAD, ids=[e[0] for _, e in BAD])
def test_a_bad_pair_design_names_its_key(tmp_path, change, expected):
    path = write_yaml(tmp_path / "bad.yaml", tiny_sweep("bad", str(tmp_path), seeds=5, **change))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert all(text in message for text in expected), message
    assert "should be 'all' or 'disjoint'" not in message  # a mapping is named by its own problems


def test_imported_networks_take_a_star_only_of_their_own_numbers(tmp_path):
    torch.manual_seed(0)
    folder = tmp_path / "nets"
    folder.mkdir()
    for name in "abc":
        net = build_model("mlp", width=16, depth=2, num_classes=4, in_shape=(1, 8, 8))
        torch.save(net.state_dict(), folder / f"{name}.pt")
    grid = {"arch": "mlp", "width": 16, "depth": 2, "checkpoints": f"{folder}/*.pt"}
    data = tiny_sweep("imp", str(tmp_path), models=[grid])
    for key in ("seeds", "train"):
        data.pop(key)
    numbers = list(parse_config(data).models[0].seeds)
    star = parse_config({**data, "pairs": {"star": numbers[1]}})
    assert list(star.models[0].pairs) == [(numbers[1], numbers[0]), (numbers[1], numbers[2])]
    with pytest.raises(ConfigError, match=r"pairs\.star: 0 is not a seed of models\[0\] \(its networks' numbers\)"):
        parse_config({**data, "pairs": {"star": 0}})
    with pytest.raises(ConfigError, match=r"pairs\.sample: 4 pairs asked, but the 3 seeds of models\[0\]"):
        parse_config({**data, "pairs": {"sample": 4}})
    assert len(parse_config({**data, "pairs": {"sample": 2}}).models[0].pairs) == 2


def test_validate_prints_the_pair_count_under_the_design(tmp_path):
    data = tiny_sweep("v", str(tmp_path), seeds=10, pairs={"sample": 12, "seed": 5})
    out = CliRunner().invoke(main, ["validate", write_yaml(tmp_path / "sweep.yaml", data)])
    assert out.exit_code == 0, out.output
    assert "pairs: 12 (sample:12:seed=5); align" in out.output
    assert "pairs.sample: 12 of the 45 pairs of 10 seeds (1 complete round + 3 pairs" in out.output
    assert "grows by 1 per seed added" in out.output
    star = CliRunner().invoke(main, ["validate", write_yaml(tmp_path / "star.yaml", {**data, "pairs": {"star": 0}})])
    assert "pairs: 9 (star:0); align" in star.output


def test_a_pairs_table_written_before_the_design_column_still_loads(tmp_path):
    schema = SCHEMAS["pairs"]
    old = pa.schema([f for f in schema if f.name != "pair_design"])
    row = {"sweep": "s", "model_key": "k", "seed_a": 0, "seed_b": 1, "align": "none", "correction": "none"}
    path = table_file(str(tmp_path), "pairs", new_stem("part"))
    Path(path).parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{**row, "status": "ok", "barrier_test_loss": 0.5}], schema=old), path)
    pairs = load_tables(tmp_path)["pairs"]
    assert len(pairs) == 1 and "pair_design" in pairs and pairs["pair_design"].isna().all()


def test_a_sampled_sweep_records_its_design_on_every_pair_row(ray_session, tmp_path):
    data = tiny_sweep("rows", str(tmp_path), seeds=4, pairs={"sample": 2, "seed": 1}, align=["none"])
    data["correction"] = ["none"]
    config = parse_config(data)
    run_sweep(config, say=lambda line: None)
    pairs = load_tables(config.root)["pairs"]
    assert {(a, b) for a, b in zip(pairs.seed_a, pairs.seed_b, strict=True)} == set(config.models[0].pairs)
    assert len(pairs) == 2 and set(pairs["pair_design"]) == {"sample:2:seed=1"}
    assert set(pairs["status"]) == {"ok"}
