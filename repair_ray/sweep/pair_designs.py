"""The seeds of a model config and the pairs of them a sweep analyses: its pair design.

``pairs:`` names the design: ``all`` (every two seeds), ``disjoint`` ((s0, s1), (s2, s3), ...),
``{first: k}`` (the first k of all), ``{sample: K, seed: S}`` (K pairs drawn without replacement,
spread over every seed, stable as seeds and K grow: :func:`sampled_pairs`) and ``{star: i}`` (every
seed against seed i, the reference). The rules are collected as problems naming the key, not
raised. This module imports neither Ray nor the sweep's config.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .schema import PairsSection

DESIGNS = ("first", "sample", "star")  # the keys of ``pairs`` as a mapping, one of which names its design


def sweep_seeds(value: int | list[int], problems: list[str]) -> list[int] | None:
    """``seeds``: a count n (seeds 0 .. n-1) or a list of distinct non-negative seeds, at least 2."""
    if isinstance(value, int):
        if value < 2:
            problems.append(f"seeds: need at least 2 seeds to form a pair, got {value}")
            return None
        return list(range(value))
    if len(value) < 2:
        problems.append(f"seeds: need at least 2 seeds to form a pair, got {value}")
        return None
    if len(set(value)) != len(value):
        problems.append(f"seeds: lists a seed twice: {value}")
        return None
    if any(v < 0 for v in value):
        problems.append(f"seeds: must be non-negative integers, got {value}")
        return None
    return list(value)


def check_design(rule: str | PairsSection, problems: list[str]) -> None:
    """The rules of ``pairs`` that hold whatever the seeds: one design, positive counts."""
    if isinstance(rule, str):
        return
    named = [key for key in DESIGNS if getattr(rule, key) is not None]
    if len(named) != 1:
        which = ", ".join(f"pairs.{key}" for key in named) if named else "none"
        problems.append(f"pairs: name exactly one of {', '.join(DESIGNS)} (or write all | disjoint), got {which}")
        return
    if rule.seed is not None and rule.sample is None:
        problems.append("pairs.seed: only with pairs.sample (the seed of the draw)")
    for key in ("first", "sample"):
        value = getattr(rule, key)
        if value is not None and value < 1:
            problems.append(f"pairs.{key}: must be a positive integer, got {value}")


def design_label(rule: str | PairsSection) -> str:
    """The design as the ``pair_design`` column writes it: ``all``, ``disjoint``, ``first:k``,
    ``sample:K:seed=S`` or ``star:i``."""
    if isinstance(rule, str):
        return rule
    if rule.sample is not None:
        return f"sample:{rule.sample}:seed={rule.seed or 0}"
    if rule.star is not None:
        return f"star:{rule.star}"
    return f"first:{rule.first}"


def design_pairs(
    seeds: Sequence[int], rule: str | PairsSection, problems: list[str], where: str = ""
) -> list[tuple[int, int]]:
    """The pairs of ``seeds`` (in their order) that ``rule`` asks for; a seed count or star the seeds
    cannot meet is a problem naming the key (``where``: which model config, for imported networks).
    Orientation: ``(a, b)`` aligns b to a; a comes first in the seeds, or is the star's reference."""
    seeds = list(seeds)
    if isinstance(rule, str) or rule.first is not None:
        return pairing(seeds, rule)
    of = f" of {where}" if where else ""
    if rule.star is not None:
        if rule.star not in seeds:
            shown = seeds if len(seeds) <= 8 else [*seeds[:8], "..."]
            problems.append(f"pairs.star: {rule.star} is not a seed{of} (its seeds: {shown})")
            return []
        return [(rule.star, s) for s in seeds if s != rule.star]
    if rule.sample is None:
        return []
    total = len(seeds) * (len(seeds) - 1) // 2
    if rule.sample > total:
        problems.append(
            f"pairs.sample: {rule.sample} pairs asked, but the {len(seeds)} seeds{of} form only {total} pairs"
        )
        return []
    return sampled_pairs(seeds, rule.sample, rule.seed or 0) if rule.sample > 0 else []


def pairing(seeds: list[int], rule: str | PairsSection) -> list[tuple[int, int]]:
    """The pairs of seeds of ``all``, ``disjoint`` or the first k of all (no checks: see :func:`design_pairs`)."""
    every = list(itertools.combinations(seeds, 2))
    if rule == "disjoint":  # (s0, s1), (s2, s3), ...: pairs that share no network
        return [(seeds[i], seeds[i + 1]) for i in range(0, len(seeds) - 1, 2)]
    if isinstance(rule, str):  # all
        return every
    return every[: rule.first or 0]


def sample_rounds(n: int, k: int) -> tuple[int, int]:
    """(complete rounds, pairs of the round begun) of a sample of ``k`` pairs of ``n`` seeds: round r
    holds one pair of each seed after the r-th (n - 1 - r pairs)."""
    rounds = 0
    while k >= n - 1 - rounds > 0:
        k -= n - 1 - rounds
        rounds += 1
    return rounds, k


def sampled_pairs(seeds: Sequence[int], k: int, seed: int) -> list[tuple[int, int]]:
    """``k`` distinct pairs of ``seeds`` drawn without replacement, spread over every seed, seeded by ``seed``.

    The draw is the first ``k`` pairs of a sequence in rounds: in round r, each seed in turn (in the
    order of ``seeds``) is paired with one seed before it that it is not yet paired with, the one
    with the fewest pairs of rounds 0 .. r so far (ties broken at random from ``seed`` and the seed's
    number). So every seed is in about 2k/n pairs, the draw is deterministic, and what a pair of
    round r is depends only on the seeds before its later seed and on rounds 0 .. r. Hence:

    - raising ``k`` only adds pairs;
    - appending seeds (``seeds: n`` -> ``seeds: m``, or new seeds at the end of a list) keeps every
      pair drawn before when ``k`` grows by R per added seed, R the complete rounds of the old draw
      (:func:`sample_rounds`; about k/n). The same ``k`` over more seeds is another draw.
    """
    seeds = list(seeds)
    n = len(seeds)
    if k >= n * (n - 1) // 2:
        return list(itertools.combinations(seeds, 2))
    complete, begun = sample_rounds(n, k)
    rounds = complete + (begun > 0)
    degree = np.zeros((rounds, n), dtype=np.float64)  # degree[r, i]: pairs of seed i in rounds 0 .. r so far
    by_round: list[list[tuple[int, int]]] = [[] for _ in range(rounds)]
    for j in range(1, n):
        ties = _ties(seed, seeds[j], j)
        free = np.ones(j, dtype=bool)
        for r in range(min(j, rounds)):
            i = int(np.argmin(np.where(free, degree[r, :j] + ties, np.inf)))
            free[i] = False
            degree[r:, i] += 1
            degree[r:, j] += 1
            by_round[r].append((seeds[i], seeds[j]))
    return [pair for pairs in by_round for pair in pairs][:k]


def _ties(seed: int, number: int, before: int) -> np.ndarray:
    """``before`` numbers in [0, 1) for seed ``number``'s partners, from the draw's ``seed`` alone:
    the i-th is the same whatever comes after (a Philox stream keyed by a hash of the two)."""
    digest = hashlib.blake2b(f"{seed}:{number}".encode(), digest_size=16).digest()
    stream = np.random.Generator(np.random.Philox(key=int.from_bytes(digest, "little")))
    return stream.random(before)


def sample_note(n: int, k: int) -> str:
    """What a sample of ``k`` pairs of ``n`` seeds is, and how it grows keeping its pairs (``validate``)."""
    total = n * (n - 1) // 2
    complete, begun = sample_rounds(n, min(k, total))
    rounds = f"{complete} complete round{'s' if complete != 1 else ''}" + (f" + {begun} pairs" if begun else "")
    return (
        f"  pairs.sample: {k:,} of the {total:,} pairs of {n} seeds ({rounds}: each seed paired with about "
        f"{2 * k / n:.1f} others); appending seeds keeps these pairs when pairs.sample grows by {complete} "
        "per seed added"
    )
