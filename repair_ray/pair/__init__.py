"""Everything measured for one pair of trained networks: align, correct, interpolate, evaluate.

This is the science of one pair, free of Ray: the sweep's pair stage calls :func:`analyse_pair`
and only adds identifiers to the rows it returns. The modules, in the order a pair meets them:

- :mod:`.settings`: :class:`PairSettings` (checked on construction), the published presets and
  the analysis version the sweep keys its rows by;
- :mod:`.align`: one align method's permutation, and B's statistics seen through it;
- :mod:`.curve`: one correction's curve, the interpolated network evaluated at every α;
- :mod:`.analyse`: :func:`analyse_pair`, which runs them all and returns the rows;
- :mod:`.cost`: the samples a pair pushes through a network (the planner's estimate).
"""

from ..names import ALIGNS, CORRECTIONS
from .align import align_permutation, learned_data, learned_steps, permute_moments
from .analyse import PairResult, analyse_pair, float_precision
from .cost import sample_forwards
from .settings import (
    ANALYSIS_VERSION,
    LATER_FIELDS,
    MAX_ALPHAS,
    METHOD_FIELDS,
    PRECISIONS,
    PRESETS,
    PairSettings,
    alpha_grid,
    correction_applies,
)

__all__ = [
    "ALIGNS",
    "ANALYSIS_VERSION",
    "CORRECTIONS",
    "LATER_FIELDS",
    "MAX_ALPHAS",
    "METHOD_FIELDS",
    "PRECISIONS",
    "PRESETS",
    "PairResult",
    "PairSettings",
    "align_permutation",
    "alpha_grid",
    "analyse_pair",
    "correction_applies",
    "float_precision",
    "learned_data",
    "learned_steps",
    "permute_moments",
    "sample_forwards",
]
