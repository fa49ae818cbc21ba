"""What the driver sends to Ray workers and what they send back: small frozen dataclasses.

As open_lth's ``desc`` classes name a run, each message names one piece of work completely, so a
worker needs nothing else (no shared memory, no driver state) and a retried task is the same
message again. They pickle for Ray (frozen dataclasses of plain data) and import neither Ray nor
torch: the model, training and dataset configs travel as the plain dicts that
``ModelConfig(**model)``, ``TrainConfig(**train)`` and ``load_dataset`` take.

- :class:`Trial`: one task of the train stage (a trial: seeds of one model config; a trunk; or a
  network file to import).
- :class:`ImportedNetwork`: a network file a model config imports instead of training.
- :class:`TrialStarted`, :class:`EpochReport` and :class:`TrialOutcome`: what a trial task streams back
  (the first only from a trial of several workers, once they all run).
- :class:`TrialEnded`: the train stage tells the pair stage (in the driver) that a network ended.
- :class:`PairContext`: what every pair task of a stage shares (sent to the object store once).
- :class:`PairJob`: one pair task: which two networks, and which methods its rows still lack.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from .layout import pair_stem

Role = Literal["trial", "trunk", "import"]
"""``trial``: train seeds of a model config, each with its checkpoint and ``models`` row;
``trunk``: train (or check) a trunk's snapshots, which the children of a branch start from (no row);
``import``: check and evaluate a network trained elsewhere (its file stays where it is) and write its row."""


class Network(NamedTuple):
    """One trained network of the sweep: a seed of a model config."""

    model_key: str
    seed: int


@dataclass(frozen=True)
class ImportedNetwork:
    """A network file that a model config imports (``models[i].checkpoints``) instead of training it.

    ``seed`` is its number in the tables, derived from its content
    (:func:`repair_ray.io.networks.content_id` of ``sha256``), so renaming or moving the file keeps
    it and rewriting its bytes makes another network. ``mtime`` and ``bytes`` let a later run reuse
    the hash of a file that has not changed.
    """

    seed: int
    uri: str
    sha256: str
    bytes: int
    mtime: float | None = None


@dataclass(frozen=True)
class Trial:
    """One task of the train stage: train (or resume, or find finished) ``seeds`` of ``model_key``.

    ``model``, ``train`` and ``dataset`` are the configs as dicts; ``lineage`` the plan's lineage
    columns (:meth:`~repair_ray.sweep.plans.ModelPlan.lineage`). A child of a branch starts from
    the snapshot ``branch_from`` of its ``trunk``; an IMP round >= 1 prunes ``imp_rate`` of the
    weights of the network ``prune_key`` (checkpoint ``prune_from``). Both wait for that network.
    """

    role: Role
    sweep: str
    root: str
    model_key: str
    seeds: tuple[int, ...]
    model: dict[str, Any]
    train: dict[str, Any]
    dataset: dict[str, Any]
    threads: float
    allow_import: tuple[str, ...] = ()  # what the driver was allowed to import, not the worker's env
    together: bool = False  # the seeds train together in the vectorised loop
    checkpoint_every: int = 1
    compile: bool = False
    lineage: dict[str, Any] = field(default_factory=dict)
    branch_from: str | None = None  # a child of a branch: the trunk's snapshot URI it starts from
    trunk: Network | None = None  # ... and the trunk it waits for
    prune_from: str | None = None  # an IMP round >= 1: the checkpoint URI whose weights its mask prunes
    prune_key: Network | None = None  # ... the network that checkpoint is
    imp_rate: float | None = None  # ... and the fraction of surviving weights pruned
    epochs: tuple[int, ...] = ()  # a trunk: the epochs it keeps snapshots of
    workers: int = 1  # workers that train each network data-parallel (Ray Train), each with threads CPUs
    worker_gpu: float = 0.0  # ... and this many GPUs (the trial task of several workers holds none itself)
    source: ImportedNetwork | None = None  # an import: the network file
    # an import: how its row's metrics are measured, as the pair stage measures endpoints: train_samples,
    # test_samples, seed (of both subsets), flip (test-time flips on the test split), batch_size
    evaluation: dict[str, Any] = field(default_factory=dict)
    train_override: str | None = None  # models[i].train as written (JSON), for the rows' train_override column

    @property
    def is_trunk(self) -> bool:
        return self.role == "trunk"

    @property
    def kind(self) -> str:
        """``trunk``, ``seed`` or ``network`` (an import): what each of its seeds is, in messages."""
        return {"trunk": "trunk", "import": "network"}.get(self.role, "seed")

    @property
    def name(self) -> str:
        """The trial in log lines: ``<model_key> seed 0, 1`` (``<model_key> trunk 0``)."""
        return f"{self.model_key} {self.kind} {', '.join(str(s) for s in self.seeds)}"

    @property
    def task_name(self) -> str:
        """The trial's name in the Ray dashboard, state API and log prefixes: ``train <model_key> seeds 0,1``
        (``trunk <model_key> seed 0`` for a trunk)."""
        if self.is_trunk:
            return f"trunk {self.model_key} seed {self.seeds[0]}"
        if self.role == "import":
            return f"import {self.model_key} network {self.seeds[0]}"
        seeds = ",".join(str(s) for s in self.seeds)
        return f"train {self.model_key} seed{'s' if len(self.seeds) > 1 else ''} {seeds}"


@dataclass(frozen=True)
class TrialStarted:
    """A trial of several workers has all of them (its placement group is placed) and starts training."""

    model_key: str
    seeds: tuple[int, ...]


@dataclass(frozen=True)
class EpochReport:
    """A trial task's report after one epoch of one seed: its number and the epoch's metrics."""

    seed: int
    epoch: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class TrialOutcome:
    """The last message of a trial task: each seed's error (None: trained)."""

    errors: dict[int, str | None]


@dataclass(frozen=True)
class TrialEnded:
    """A network of the train stage ended: its checkpoint URI, or None when it failed."""

    network: Network
    checkpoint: str | None


@dataclass(frozen=True)
class PairContext:
    """What every pair task of a stage shares, sent to the object store once (not once per task).

    ``settings`` is the sweep's :class:`~repair_ray.pair.PairSettings` as a dict; ``models``,
    ``batchnorm`` and ``lineage`` are per model key; ``memory_share`` is the share of a GPU each
    task gets (its α per pass are sized to that share of the memory).
    """

    sweep: str
    dataset: dict[str, Any]
    settings: dict[str, Any]
    alphas_per_pass: int | None
    memory_share: float
    analysis_keys: dict[str, str]  # align -> the analysis key of its rows
    threads: float
    models: dict[str, dict[str, Any]]
    batchnorm: dict[str, bool]
    allow_import: tuple[str, ...]  # what the driver was allowed to import, not the worker's env
    lineage: dict[str, dict[str, Any]]
    # per model key, its recipe (TrainConfig) as a dict: how its networks' inputs were augmented (eval.stat_augment)
    train: dict[str, dict[str, Any]] = field(default_factory=dict)
    # per model key, models[i].train as written (JSON; absent: none), for the rows' train_override column
    train_override: dict[str, str] = field(default_factory=dict)
    pair_design: str = "all"  # the sweep's `pairs` (all, disjoint, first:k, sample:K:seed=S, star:i), for its rows


@dataclass(frozen=True)
class PairJob:
    """One pair task: the two networks of a pair (their checkpoint URIs) and the methods to compute,
    ``aligns`` x ``corrections`` (what the pair's rows lack; the product may recompute some)."""

    model_key: str
    seed_a: int
    seed_b: int
    checkpoint_a: str
    checkpoint_b: str
    aligns: tuple[str, ...]
    corrections: tuple[str, ...]
    sha256_a: str | None = None  # an imported network's content hash (None: trained by the sweep)
    sha256_b: str | None = None

    @property
    def stem(self) -> str:
        return pair_stem(self.model_key, self.seed_a, self.seed_b)

    @property
    def checkpoints(self) -> tuple[tuple[int, str, str | None], tuple[int, str, str | None]]:
        """(seed, checkpoint URI, content hash of an imported network or None) of network A, then of network B."""
        return (self.seed_a, self.checkpoint_a, self.sha256_a), (self.seed_b, self.checkpoint_b, self.sha256_b)
