"""The tune stage's search algorithm: Tune's seeded basic variant generator, whose state, restored
after a kill, agrees with the experiment state restored beside it.

Imported only where a Tuner is made or restored (it imports Ray Tune). The class lives at module
level so that Tune's pickled Tuner (``tuner.pkl``) names it, not a copy of its code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ray.tune.search import BasicVariantGenerator

from .ray_private import resync_variant_generator

# Where a restored generator says that the private API it resyncs with has changed: the tune stage
# points it at its own ``say`` (the generator itself travels pickled in the Tuner, without one)
restore_say: list[Callable[[str], None]] = [print]


class ResumableVariantGenerator(BasicVariantGenerator):
    """``BasicVariantGenerator(random_state=seed, max_concurrent=...)``, remembering its seed and
    where each experiment's trials start, so that :meth:`restore_from_dir` can rebuild what a torn
    snapshot lost (:func:`repair_ray.sweep.ray_private.resync_variant_generator`)."""

    def __init__(self, seed: int, max_concurrent: int = 0) -> None:
        super().__init__(random_state=seed, max_concurrent=max_concurrent)
        self.seed = seed
        self.starts: list[int] = []

    def add_configurations(self, experiments: Any) -> None:
        self.starts.append(self.total_samples)
        super().add_configurations(experiments)

    def restore_from_dir(self, dirpath: str) -> None:
        super().restore_from_dir(dirpath)
        resync_variant_generator(self, dirpath, self.seed, self.starts, restore_say[0])
