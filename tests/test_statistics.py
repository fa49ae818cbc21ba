"""Intervals, paired differences and small cells for seed studies, on hand-made pairs tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import repair_ray
from repair_ray import report


def pairs_table(rows: list[dict]) -> pd.DataFrame:
    """A ``pairs`` table of ``rows`` (each: model_key, seed_a, seed_b, align, correction, loss, and
    optionally analysis_key, status, width), with the description and accuracy columns filled in."""
    full = []
    for r in rows:
        loss = r["loss"]
        full.append(
            {
                "model_key": r["model_key"],
                "analysis_key": r.get("analysis_key", ""),
                "arch": "mlp",
                "dataset": "mnist",
                "norm": "none",
                "width": r.get("width", 16.0),
                "depth": 2,
                "seed_a": r["seed_a"],
                "seed_b": r["seed_b"],
                "align": r["align"],
                "correction": r["correction"],
                "status": r.get("status", "ok"),
                "barrier_test_loss": loss,
                "barrier_test_error": loss / 10,
                "endpoint_test_acc_a": 0.9,
                "endpoint_test_acc_b": 0.9,
                "midpoint_test_acc": 0.9 - loss / 10,
            }
        )
    return pd.DataFrame(full)


def method_rows(model_key: str, method: str, losses, **extra) -> list[dict]:
    """Rows of ``method`` (``align/correction``) for pairs (0, 1), (0, 2), ... with these losses."""
    align, correction = method.split("/")
    return [
        {"model_key": model_key, "seed_a": 0, "seed_b": i + 1, "align": align, "correction": correction, "loss": loss}
        | extra
        for i, loss in enumerate(losses)
    ]


# ----------------------------------------------------------------------------- interval


def test_t_interval_equals_scipys_t_interval():
    x = [0.31, 0.42, 0.29, 0.55, 0.38, 0.47]
    for confidence in (0.95, 0.9):
        found = report.interval(x, confidence=confidence)
        low, high = stats.t.interval(confidence, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
        assert (found.n, found.method) == (6, "t")
        assert found.mean == pytest.approx(np.mean(x))
        assert (found.low, found.high) == pytest.approx((low, high), rel=1e-12)
    # the summary's ci95 is the same half-width, and nulls are not values
    found = report.interval([*x, None, math.nan])
    assert found.n == 6 and found.high - found.mean == pytest.approx(report.ci95(np.std(x, ddof=1), 6))
    one = report.interval([2.0])
    assert one.n == 1 and one.mean == 2.0 and math.isnan(one.low) and math.isnan(one.high)
    assert report.interval([]).n == 0 and math.isnan(report.interval([]).mean)
    for method in ("t", "bootstrap"):
        same = report.interval([0.3, 0.3, 0.3], method=method)
        assert same.low == same.high == same.mean == pytest.approx(0.3)
    with pytest.raises(ValueError, match="bootstrap"):
        report.interval(x, method="bca")


def test_bootstrap_interval_is_seeded_contains_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    widths = []
    for n in (10, 40, 160, 640):
        x = rng.normal(1.0, 2.0, n)
        found = report.interval(x, method="bootstrap", seed=7)
        assert found == report.interval(x, method="bootstrap", seed=7)  # the same interval every time
        assert found.method == "bootstrap" and found.n == n
        assert found.mean == pytest.approx(x.mean()) and found.low < found.mean < found.high
        widths.append(found.high - found.low)
        if n >= 160:  # large samples: the percentile bootstrap comes close to the t-interval
            t = report.interval(x)
            assert found.high - found.low == pytest.approx(t.high - t.low, rel=0.15)
    assert widths == sorted(widths, reverse=True)
    assert widths[-1] < widths[0] / 4  # about 1 / sqrt(n): 64 times the values, an eighth of the width
    x = rng.normal(size=12)
    assert report.interval(x, method="bootstrap", seed=1) != report.interval(x, method="bootstrap", seed=2)


# ----------------------------------------------------------------------------- paired differences


def test_paired_differences_find_a_steady_difference_that_overlapping_intervals_hide():
    # per pair: a barrier between 1 and 5 (spread between pairs), REPAIR lower by 0.2 (± 0.01) on each
    rng = np.random.default_rng(0)
    base = rng.uniform(1.0, 5.0, 8)
    repaired = base - 0.2 + rng.normal(0, 0.01, 8)
    pairs = pairs_table(method_rows("k", "weight/none", base) + method_rows("k", "weight/repair", repaired))
    summary = report.summarise(pairs).set_index("correction")
    plain, fixed = summary.loc["none"], summary.loc["repair"]
    assert fixed["barrier_test_loss_high"] > plain["barrier_test_loss_low"]  # each method's own interval
    assert plain["barrier_test_loss_high"] > fixed["barrier_test_loss_low"]  # ... overlaps the other's

    diff = report.paired_differences(pairs, ("weight", "repair"), "weight/none")
    assert len(diff) == 1
    r = diff.iloc[0]
    assert (r["a"], r["b"], r["n"]) == ("weight/repair", "weight/none", 8)
    assert r["barrier_test_loss_diff_mean"] == pytest.approx(np.mean(repaired - base))
    assert r["barrier_test_loss_diff_low"] < r["barrier_test_loss_diff_high"] < 0  # excludes 0
    assert r["barrier_test_loss_p_t"] < 1e-6
    assert r["barrier_test_loss_p_t"] == pytest.approx(stats.ttest_rel(repaired, base).pvalue)
    assert r["barrier_test_loss_a_better"] == 8 and r["barrier_test_loss_p_sign"] == pytest.approx(2 / 2**8)
    assert r["barrier_test_error_diff_mean"] == pytest.approx(np.mean(repaired - base) / 10)
    # the other way round: the same numbers, sign flipped, b better
    back = report.paired_differences(pairs, "weight/none", "weight/repair").iloc[0]
    assert back["barrier_test_loss_diff_mean"] == pytest.approx(-r["barrier_test_loss_diff_mean"])
    assert back["barrier_test_loss_a_better"] == 0 and back["barrier_test_loss_p_t"] == pytest.approx(
        r["barrier_test_loss_p_t"]
    )
    with pytest.raises(ValueError, match="align/correction"):
        report.paired_differences(pairs, "weight", "weight/none")


def test_a_better_counts_higher_accuracy_and_lower_barriers_as_better():
    # REPAIR lowers the barrier on 5 of 6 pairs, so its midpoint accuracy (0.9 - loss / 10) is higher there
    repaired, plain = [0.5, 1.0, 1.5, 2.0, 2.5, 9.0], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    pairs = pairs_table(method_rows("k", "weight/repair", repaired) + method_rows("k", "weight/none", plain))
    columns = ["barrier_test_loss", "midpoint_test_acc", "endpoint_test_acc_a"]
    r = report.paired_differences(pairs, "weight/repair", "weight/none", columns).iloc[0]
    assert r["barrier_test_loss_a_better"] == 5 and r["barrier_test_loss_a_lower"] == 5  # lower is better
    assert r["midpoint_test_acc_a_better"] == 5 and r["midpoint_test_acc_a_lower"] == 1  # higher is better
    assert r["endpoint_test_acc_a_a_better"] == 0 and r["endpoint_test_acc_a_a_lower"] == 0  # the same networks
    text = report.compact_differences(
        report.paired_differences(pairs, "weight/repair", "weight/none", columns), columns
    )
    assert text.loc[0, "midpoint_test_acc a better"] == "5/6" and text.loc[0, "test_loss a better"] == "5/6"
    # a column whose name says neither: no count of better unless told which way is better
    pairs["spread"] = pairs["barrier_test_loss"]
    unknown = report.paired_differences(pairs, "weight/repair", "weight/none", ["spread"]).iloc[0]
    assert math.isnan(unknown["spread_a_better"]) and unknown["spread_a_lower"] == 5
    told = report.paired_differences(pairs, "weight/repair", "weight/none", ["spread"], better={"spread": "higher"})
    assert told.iloc[0]["spread_a_better"] == 1
    assert (
        report.compact_differences(
            report.paired_differences(pairs, "weight/repair", "weight/none", ["spread"]), ["spread"]
        ).loc[0, "spread a better"]
        == "?/6"
    )
    assert [
        report.better_direction(c)
        for c in ("midpoint_barrier_test_error", "midpoint_test_loss", "test_acc", "align_seconds", "n")
    ] == ["lower", "lower", "higher", "lower", None]
    with pytest.raises(ValueError, match="lower"):
        report.paired_differences(pairs, "weight/repair", "weight/none", ["spread"], better={"spread": "up"})


def test_paired_differences_count_only_pairs_ok_in_both_methods():
    a = method_rows("k", "none/repair", [1.0, 2.0, 3.0, 100.0, 4.0, 5.0])
    b = method_rows("k", "none/none", [2.0, 4.0, 6.0, 8.0, 100.0])  # no pair 0-6
    a[3]["status"] = "failed"  # pair 0-4 failed under a (its value must not count)
    b[4]["status"] = "failed"  # pair 0-5 failed under b
    diff = repair_ray.paired_differences(pairs_table(a + b), "none/repair", "none/none")
    r = diff.iloc[0]
    assert r["n"] == 3  # pairs 0-1, 0-2, 0-3
    assert r["barrier_test_loss_diff_mean"] == pytest.approx(-2.0)  # (-1 - 2 - 3) / 3
    assert r["barrier_test_loss_a_better"] == 3 and r["barrier_test_loss_p_sign"] == pytest.approx(0.25)
    # no shared ok pair: no row
    assert report.paired_differences(pairs_table(a + b), "none/repair", "weight/none").empty


def test_paired_differences_never_pool_two_analysis_or_model_keys():
    rows = method_rows("k", "weight/repair", [1.0, 2.0, 3.0], analysis_key="x")
    rows += method_rows("k", "weight/none", [2.0, 3.0, 4.0], analysis_key="x")  # repair lower by 1
    rows += method_rows("k", "weight/repair", [5.0, 6.0], analysis_key="y")
    rows += method_rows("k", "weight/none", [4.0, 5.0], analysis_key="y")  # repair higher by 1
    rows += method_rows("m", "weight/repair", [1.0, 1.0], width=32.0)
    rows += method_rows("m", "weight/none", [1.5, 1.5], width=32.0)
    diff = report.paired_differences(pairs_table(rows), "weight/repair", "weight/none").set_index(
        ["model_key", "analysis_key"]
    )
    assert len(diff) == 3
    assert diff.loc[("k", "x"), "n"] == 3 and diff.loc[("k", "x"), "barrier_test_loss_diff_mean"] == pytest.approx(-1)
    assert diff.loc[("k", "y"), "n"] == 2 and diff.loc[("k", "y"), "barrier_test_loss_diff_mean"] == pytest.approx(1)
    assert diff.loc[("m", ""), "barrier_test_loss_diff_mean"] == pytest.approx(-0.5)
    # a constant difference: a zero-width interval, p 0 (the t-test's limit); one pair: no t-test
    assert diff.loc[("m", ""), "barrier_test_loss_diff_low"] == pytest.approx(-0.5)
    assert diff.loc[("m", ""), "barrier_test_loss_p_t"] == 0.0
    single = report.paired_differences(pairs_table(rows[:1] + rows[3:4]), "weight/repair", "weight/none").iloc[0]
    assert single["n"] == 1 and math.isnan(single["barrier_test_loss_p_t"])
    assert math.isnan(single["barrier_test_loss_diff_low"]) and single["barrier_test_loss_p_sign"] == 1.0


def test_paired_differences_of_two_aligns_pair_their_own_analysis_keys_on_the_networks():
    """A learned matching's rows carry their own analysis key (its settings are in it): ste against
    weight still pairs on the two networks, naming both keys; two analyses of one method refuse."""
    rows = method_rows("k", "ste/none", [1.0, 2.0, 3.0], analysis_key="s")
    rows += method_rows("k", "weight/none", [1.5, 2.5, 3.5], analysis_key="w")
    diff = report.paired_differences(pairs_table(rows), "ste/none", "weight/none").iloc[0]
    assert diff["n"] == 3 and diff["barrier_test_loss_diff_mean"] == pytest.approx(-0.5)
    assert diff["analysis_key"] == "s | w"
    # the same align under two keys stays apart (two analyses, never paired with each other)
    same = report.paired_differences(pairs_table(rows), "weight/none", "weight/none")
    assert same.iloc[0]["analysis_key"] == "w" and same.iloc[0]["barrier_test_loss_diff_mean"] == 0
    rows += method_rows("k", "ste/none", [9.0], analysis_key="s2")  # a second generation of ste
    with pytest.raises(ValueError, match="2 analyses of model config 'k'"):
        report.paired_differences(pairs_table(rows), "ste/none", "weight/none")


def test_baseline_differences_compare_each_method_with_its_baseline_only():
    rows = []
    for method, losses in {
        "none/none": [4.0, 5.0, 6.0],
        "none/repair": [3.0, 4.0, 5.0],
        "weight/none": [2.0, 3.0, 4.0],
        "weight/repair": [1.0, 1.5, 2.0],
        "weight/repair_bn": [1.2, 1.4, 1.9],  # a correction this version does not know: after the known ones
    }.items():
        rows += method_rows("k", method, losses)
    diff = report.baseline_differences(pairs_table(rows))
    assert list(zip(diff["a"], diff["b"], strict=True)) == [
        ("none/repair", "none/none"),
        ("weight/repair", "weight/none"),
        ("weight/repair_bn", "weight/none"),
        ("weight/none", "none/none"),
        ("weight/repair", "none/repair"),
    ]  # no weight/repair_bn - none/repair_bn: align none has no repair_bn rows
    assert (diff["n"] == 3).all()
    text = report.compact_differences(diff)
    assert text.loc[0, "a − b"] == "none/repair − none/none" and text.loc[0, "test_loss a better"] == "3/3"


# ----------------------------------------------------------------------------- many tests, one table


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q values written out: p * m / rank, then the running minimum from the largest p."""
    order = np.argsort(p)
    scaled = p[order] * len(p) / np.arange(1, len(p) + 1)
    q = np.empty_like(p)
    q[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    return q


def test_q_values_are_benjamini_hochberg_over_every_test_of_the_table():
    rng = np.random.default_rng(3)
    rows = []
    for key, shift in (("k", -0.3), ("m", 0.0), ("w", -0.05)):
        base = rng.uniform(1.0, 5.0, 6)
        rows += method_rows(key, "none/none", base)
        rows += method_rows(key, "none/repair", base + shift + rng.normal(0, 0.2, 6))
        rows += method_rows(key, "weight/none", base - 0.5 + rng.normal(0, 0.3, 6))
        rows += method_rows(key, "weight/repair", base - 0.5 + shift + rng.normal(0, 0.2, 6))
    pairs = pairs_table(rows)
    pairs["barrier_test_error"] = rng.uniform(0.0, 0.5, len(pairs))  # a column of its own, not loss / 10
    diff = report.baseline_differences(pairs)
    assert len(diff) == 3 * 4  # three model configs, four comparisons each
    columns = ["barrier_test_loss", "barrier_test_error"]
    for test in ("t", "sign"):
        p = diff[[f"{c}_p_{test}" for c in columns]].to_numpy().ravel()  # the family: every row and column
        q = diff[[f"{c}_q_{test}" for c in columns]].to_numpy().ravel()
        assert len(p) == 24 and not np.isnan(p).any()
        np.testing.assert_allclose(q, stats.false_discovery_control(p), rtol=1e-12)
        np.testing.assert_allclose(q, benjamini_hochberg(p), rtol=1e-12)
        assert (q >= p).all() and (q <= 1).all()
        assert (np.diff(q[np.argsort(p, kind="stable")]) >= 0).all()  # monotone in the rank of p
    # adjusted over the whole table, not per comparison: one comparison's own table is a family of its own
    alone = report.paired_differences(pairs, "weight/repair", "weight/none")
    mine = diff[diff["a"].eq("weight/repair") & diff["b"].eq("weight/none")]
    np.testing.assert_allclose(alone["barrier_test_loss_p_t"], mine["barrier_test_loss_p_t"])
    own = alone[[f"{c}_p_t" for c in columns]].to_numpy().ravel()
    np.testing.assert_allclose(alone[[f"{c}_q_t" for c in columns]].to_numpy().ravel(), benjamini_hochberg(own))
    assert not np.allclose(alone["barrier_test_loss_q_t"], mine["barrier_test_loss_q_t"])
    # the compact table shows each q beside its p
    text = report.compact_differences(diff)
    names = list(text.columns)
    assert names.index("test_loss q (t)") == names.index("test_loss p (t)") + 1
    assert names.index("test_error q (sign)") == names.index("test_error p (sign)") + 1


def test_among_many_null_comparisons_only_the_real_difference_survives_the_adjustment():
    # 20 model configs, 8 pairs each; REPAIR changes nothing on 19 (noise only) and lowers the barrier by
    # 0.5 on the last. Seed 17 gives two of the nulls a raw p under 0.05 by chance.
    rng = np.random.default_rng(17)
    base = rng.uniform(1.0, 5.0, (20, 8))
    noise = rng.normal(0.0, 0.2, (20, 8))
    shift = np.where(np.arange(20) == 19, -0.5, 0.0)[:, None]
    rows = []
    for i in range(20):
        rows += method_rows(f"k{i:02d}", "weight/none", base[i])
        rows += method_rows(f"k{i:02d}", "weight/repair", base[i] + shift[i] + noise[i])
    diff = report.paired_differences(pairs_table(rows), "weight/repair", "weight/none").set_index("model_key")
    assert len(diff) == 20
    p, q = diff["barrier_test_loss_p_t"], diff["barrier_test_loss_q_t"]
    lucky = p[(p < 0.05) & (p.index != "k19")]
    assert len(lucky) == 2  # the premise: raw p values call two null comparisons significant
    assert p["k19"] < 0.001 and q["k19"] <= report.FDR_LEVEL
    assert (q.drop("k19") > report.FDR_LEVEL).all()  # no null survives
    verdicts = report.compact_differences(diff.reset_index()).set_index(diff.index)["test_loss verdict"]
    assert verdicts["k19"] == "a better"
    assert (verdicts.drop("k19") == "n.s.").all()
    # the other way round, the same real difference: b better
    back = report.paired_differences(pairs_table(rows), "weight/none", "weight/repair")
    back_verdicts = report.compact_differences(back).set_index(back["model_key"])["test_loss verdict"]
    assert back_verdicts["k19"] == "b better" and (back_verdicts.drop("k19") == "n.s.").all()


def test_a_table_of_one_test_keeps_its_p_value():
    # one model config, one column: the family is that one test
    repaired, plain = [1.0, 1.8, 3.1, 4.0, 4.7, 6.2], [1.5, 2.0, 3.0, 4.6, 5.0, 6.5]
    pairs = pairs_table(method_rows("k", "weight/repair", repaired) + method_rows("k", "weight/none", plain))
    r = report.paired_differences(pairs, "weight/repair", "weight/none", ["barrier_test_loss"]).iloc[0]
    assert 0.01 < r["barrier_test_loss_p_t"] < 0.05
    assert r["barrier_test_loss_q_t"] == r["barrier_test_loss_p_t"]
    assert r["barrier_test_loss_q_sign"] == r["barrier_test_loss_p_sign"]
    one = report.compact_differences(
        report.paired_differences(pairs, "weight/repair", "weight/none", ["barrier_test_loss"]), ["barrier_test_loss"]
    )
    assert one.loc[0, "test_loss verdict"] == "a better"  # q = p <= 0.05
    assert (
        report.compact_differences(
            report.paired_differences(pairs, "weight/repair", "weight/none", ["barrier_test_loss"]),
            ["barrier_test_loss"],
            level=0.01,
        ).loc[0, "test_loss verdict"]
        == "n.s."
    )


def test_tests_without_a_p_value_keep_no_q_value_and_are_not_counted():
    rows = method_rows("k", "weight/repair", [1.0, 2.1, 2.9, 4.2])
    rows += method_rows("k", "weight/none", [1.3, 2.2, 3.4, 4.4])
    rows += method_rows("m", "weight/repair", [1.0, 2.0, 3.0, 4.0], width=32.0)
    rows += method_rows("m", "weight/none", [1.1, 2.3, 3.0, 4.4], width=32.0)
    rows += method_rows("s", "weight/repair", [1.0], width=64.0)  # one pair: no t-test
    rows += method_rows("s", "weight/none", [2.0], width=64.0)
    diff = report.paired_differences(pairs_table(rows), "weight/repair", "weight/none", ["barrier_test_loss"])
    diff = diff.set_index("model_key")
    assert math.isnan(diff.loc["s", "barrier_test_loss_p_t"]) and math.isnan(diff.loc["s", "barrier_test_loss_q_t"])
    p = diff.loc[["k", "m"], "barrier_test_loss_p_t"].to_numpy()
    q = diff.loc[["k", "m"], "barrier_test_loss_q_t"].to_numpy()
    np.testing.assert_allclose(q, stats.false_discovery_control(p), rtol=1e-12)  # a family of 2, not 3
    assert not np.allclose(q, benjamini_hochberg(np.append(p, 1.0))[:2])  # a third test would have changed them
    # the sign test of one pair has a p value (1): it counts in the sign tests' family
    np.testing.assert_allclose(
        diff["barrier_test_loss_q_sign"], stats.false_discovery_control(diff["barrier_test_loss_p_sign"]), rtol=1e-12
    )
    text = report.compact_differences(diff.reset_index(), ["barrier_test_loss"]).set_index(diff.index)
    assert text.loc["s", "test_loss q (t)"] == "" and text.loc["s", "test_loss verdict"] == ""
    # a table of no tests at all, and an old table without q columns: adjusted where it is read
    none = report.adjust_p_values(diff.loc[["s"]])
    assert math.isnan(none["barrier_test_loss_q_t"].iloc[0])
    old = diff.drop(columns=["barrier_test_loss_q_t", "barrier_test_loss_q_sign"]).reset_index()
    assert report.compact_differences(old, ["barrier_test_loss"]).equals(text.reset_index(drop=True))


# ----------------------------------------------------------------------------- summary and small cells


def test_summary_bounds_and_small_cells():
    rows = method_rows("k", "none/none", [1.0, 2.0, 4.0])
    rows += method_rows("k", "weight/none", [1.0, 2.0, 3.0, 4.0, 5.0])
    rows += method_rows("k", "weight/repair", [1.0], status="failed")
    summary = report.summarise(pairs_table(rows))
    for column in ("barrier_test_loss_mean", "barrier_test_loss_std", "barrier_test_loss_ci95", "pairs", "failed"):
        assert column in summary.columns  # what users' code reads is still there
    r = summary[summary["align"] == "none"].iloc[0]
    expected = report.interval([1.0, 2.0, 4.0])
    assert (r["barrier_test_loss_low"], r["barrier_test_loss_high"]) == pytest.approx((expected.low, expected.high))
    boot = report.summarise(pairs_table(rows), interval="bootstrap")
    b = boot[boot["align"] == "none"].iloc[0]
    assert 1.0 <= b["barrier_test_loss_low"] < 7 / 3 < b["barrier_test_loss_high"] <= 4.0
    assert boot.equals(report.summarise(pairs_table(rows), interval="bootstrap"))  # seeded
    small = report.small_cells(summary)  # 3 pairs: yes; 5 pairs: no; 0 pairs (all failed): nothing to warn of
    assert small[["align", "correction", "pairs"]].values.tolist() == [["none", "none", 3]]
    assert report.MIN_PAIRS == 5 and len(report.small_cells(summary, minimum=6)) == 2
    cells = report.compact_summary(summary)
    assert cells.loc[0, "barrier_test_loss"] == f"{7 / 3:.4f} ± {expected.high - expected.mean:.4f} (n=3)"


# ----------------------------------------------------------------------------- children of trunks


def trunk_pairs(losses_per_trunk: dict[int, list[float]], branch_epoch: int = 2) -> pd.DataFrame:
    """Pairs of the children of each trunk (its own model key, as a stability sweep writes them)."""
    frames = []
    for trunk, losses in losses_per_trunk.items():
        rows = method_rows(f"t{trunk}-e{branch_epoch}", "none/none", losses)
        frames.append(pairs_table(rows).assign(trunk_seed=trunk, branch_epoch=branch_epoch))
    return pd.concat(frames, ignore_index=True)


def test_pairs_of_children_of_two_trunks_give_an_interval_over_two_trunks_not_over_their_pairs():
    # 12 pairs per trunk, identical within a trunk: two observations, not 24
    pairs = trunk_pairs({0: [1.0] * 12, 1: [3.0] * 12})
    pooled = report.summarise_over_trunks(pairs)
    assert len(pooled) == 1
    r = pooled.iloc[0]
    assert (r["trunks"], r["pairs"], r["interval_over"]) == (2, 24, "trunks")
    assert r["barrier_test_loss_mean"] == pytest.approx(2.0)
    half = stats.t.ppf(0.975, 1) * np.std([1.0, 3.0], ddof=1) / math.sqrt(2)  # n = 2 trunks
    assert r["barrier_test_loss_ci95"] == pytest.approx(half)
    assert (r["barrier_test_loss_low"], r["barrier_test_loss_high"]) == pytest.approx((2 - half, 2 + half))
    naive = report.interval(pairs["barrier_test_loss"])  # 24 pairs as if independent: far narrower
    assert naive.high - naive.mean < half / 10
    # the instability plot draws the same interval
    from repair_ray.report.plot_data import barrier_panels

    line = barrier_panels(pairs, "branch_epoch", ["barrier_test_loss"]).panels[0].lines[0]
    assert line["barrier_test_loss_ci95"].iloc[0] == pytest.approx(half)
    # unequal numbers of pairs: each trunk weighs the same
    r = report.summarise_over_trunks(trunk_pairs({0: [1.0] * 3, 1: [3.0] * 30})).iloc[0]
    assert r["barrier_test_loss_mean"] == pytest.approx(2.0) and r["pairs"] == 33


def test_one_trunk_keeps_the_interval_over_its_pairs_and_says_so():
    pairs = trunk_pairs({0: [1.0, 2.0, 4.0]})
    r = report.summarise_over_trunks(pairs).iloc[0]
    assert (r["trunks"], r["interval_over"]) == (1, "pairs of one trunk")
    assert r["barrier_test_loss_ci95"] == pytest.approx(report.summarise(pairs).iloc[0]["barrier_test_loss_ci95"])
    # independent seeds have no trunk: nothing to pool
    assert report.summarise_over_trunks(pairs.assign(trunk_seed=pd.NA)).empty
