"""``repair-ray``: run, validate and inspect sweeps.

Exit status of every command: 0 done; 1 the sweep (or job) ran but some trials or pairs failed;
2 a bad config or usage; 3 infrastructure: storage, the Ray cluster or its dashboard could not be
reached (one line naming the place; ``--debug`` or ``REPAIR_RAY_DEBUG=1`` adds the traceback).

The command group and what every command shares are in :mod:`.app`; the commands about one sweep
in :mod:`.sweep_commands`, those about Ray Jobs in :mod:`.job_commands`. Heavy imports (torch,
scipy, Ray, pyarrow) happen inside the commands, so ``--help`` is instant.
"""

from __future__ import annotations

from . import job_commands, sweep_commands, tune_commands  # noqa: F401 - registers the commands on main
from .app import (
    EXIT_FAILED,
    EXIT_INFRASTRUCTURE,
    EXIT_OK,
    EXIT_USAGE,
    allowed_imports,
    example_names,
    example_text,
    infrastructure_problem,
    main,
    stamped,
)
from .sweep_commands import method_lines

__all__ = [
    "EXIT_FAILED",
    "EXIT_INFRASTRUCTURE",
    "EXIT_OK",
    "EXIT_USAGE",
    "allowed_imports",
    "example_names",
    "example_text",
    "infrastructure_problem",
    "main",
    "method_lines",
    "stamped",
]
