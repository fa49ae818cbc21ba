"""A sweep's status: what its current config expects, what is done, failed and missing.

Counts by the same definition of "done" as ``run`` (:mod:`repair_ray.sweep.planning`), so the
models ``status`` calls trained are exactly the trials a run skips, and the pairs it calls done
exactly the pairs a run skips. Reads storage only: no Ray, no network is built.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..io.tables import read_table
from .config import SweepConfig
from .planning import analysis_keys, model_outcomes, pair_gaps, plan_trials, read_pair_state
from .stored import load_sweep_config


@dataclass
class SweepStatus:
    models_expected: int
    models_ok: int  # done: a run skips them (row ok, checkpoint whole and loadable)
    models_failed: int
    pairs_expected: int
    pairs_ok: int
    pairs_failed: int

    @property
    def models_missing(self) -> int:
        """Not trained yet, or trained but their checkpoint is gone or damaged (a run retrains them)."""
        return self.models_expected - self.models_ok - self.models_failed

    @property
    def pairs_missing(self) -> int:
        return self.pairs_expected - self.pairs_ok - self.pairs_failed


def sweep_status(root: str) -> SweepStatus:
    """Counts of trained / failed / missing models and done / failed / missing pairs of the current config.

    A model is trained when a run would skip it (:func:`~repair_ray.sweep.planning.plan_trials`);
    failed when its newest row says so. A pair is done when every (align, correction) of the
    current config has its rows under the current analysis key; failed when one of them failed.
    Unreadable table files are skipped (with a warning naming each), so their rows count as missing.
    """
    return status_of(load_sweep_config(root))


def status_of(config: SweepConfig) -> SweepStatus:
    """The :class:`SweepStatus` of ``config`` against what its sweep folder holds (see :func:`sweep_status`)."""
    expected_models = {(p.model_key, s) for p in config.models for s in p.seeds}
    model_status = model_outcomes(read_table(config.root, "models"))
    done = plan_trials(config).done
    state = read_pair_state(config.root, analysis_keys(config.pair_settings, config.dataset.as_dict()))
    lacking = pair_gaps(config, state)  # the pair stage's own rule of what is not done
    failed = sum(1 for pair in lacking if pair in state.failed)
    return SweepStatus(
        models_expected=len(expected_models),
        models_ok=sum(m in done for m in expected_models),
        models_failed=sum(model_status.get(m) == "failed" for m in expected_models),
        pairs_expected=config.n_pairs,
        pairs_ok=config.n_pairs - len(lacking),
        pairs_failed=failed,
    )
