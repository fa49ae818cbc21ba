"""The names the tables, the analysis and the report share: one torch-free home.

Imported by :mod:`repair_ray.pair` and :mod:`repair_ray.correction` (what they compute), by
:mod:`repair_ray.io.tables` (the columns) and by :mod:`repair_ray.report` (the display order),
so a new method or lineage column is added here once.
"""

from __future__ import annotations

ALIGNS = ("none", "weight", "activation", "ste", "sinkhorn")
"""Every alignment a pair can be analysed with, in display order."""
DEFAULT_ALIGNS = ("none", "weight", "activation")
CORRECTIONS = ("none", "reset", "repair", "repair_bn")
"""Every correction, in display order (see :func:`repair_ray.correction.correction_plan`)."""
BATCHNORM_ONLY = ("reset", "repair_bn")
"""The corrections that need BatchNorm layers: elsewhere they are skipped (no rows)."""
LINEAGE = ("trunk_seed", "branch_epoch", "imp_round", "sparsity")
"""Which trunk and epoch the children of a stability study branched at, and which round of IMP
(with its sparsity) they are (null for independent seeds)."""

__all__ = ["ALIGNS", "BATCHNORM_ONLY", "CORRECTIONS", "DEFAULT_ALIGNS", "LINEAGE"]
