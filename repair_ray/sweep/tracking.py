"""Optional MLflow tracking (``tracking: {mlflow: URI}``): one MLflow run per trained network, live.

The driver logs from the epoch reports it already receives: a network's run is created (with its
params) when its first epoch report arrives, each epoch's metrics are logged as they arrive
(``step`` = the epoch), and the run ends ``FINISHED``, or ``FAILED`` with the error as a tag, when
the network's trial ends. So a researcher watching MLflow sees the curves grow, workers need
neither mlflow nor a route to the tracking server, and the tables stay the record of truth.

A network is one run across resumes: a trial that resumed after a crash continues the run that
its tags (``sweep_root``, ``model_key``, ``seed``) find, and no epoch is logged twice. The epochs a
run still lacks when its network ends (trained before a resume by a sweep run without tracking,
or reported while no driver listened) are backfilled from the network's history in its ``models``
row. A re-run that trains nothing logs nothing. Trunks (they have no row) and imported networks
(not trained here; their evaluation is in their row) get no run.

MLflow calls run in order in a thread of their own, so a slow or unreachable server never holds up
the driver's loop; the stage waits for them when it ends. A failure of MLflow is one warning, after
which the stage logs nothing more: it never fails a trial or the sweep.

Params are the model and train configs, the dataset, the seed and the model key: settings, never
credentials (the tracking URI itself is not logged, as it may carry some).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..io.tables import read_table
from .messages import EpochReport, Network, Trial
from .rows import models_row

__all__ = ["LiveTracking", "params_of"]

MAX_PARAMS_PER_CALL, MAX_METRICS_PER_CALL = 100, 1000  # MLflow's log_batch limits


def params_of(row: dict[str, Any]) -> dict[str, str]:
    """The MLflow params of a ``models`` row: ``model.*``, ``train.*``, ``dataset.*``, seed, model_key."""
    config = json.loads(row["config_json"])
    params = {"model_key": str(row["model_key"]), "seed": str(int(row["seed"])), "sweep": str(row["sweep"])}
    for section in ("model", "train", "dataset"):
        for key, value in _flat(config.get(section) or {}, section):
            if value is not None:
                params[key] = value if isinstance(value, str) else json.dumps(value)
    return {k: v[:6000] for k, v in params.items()}


def _flat(data: dict[str, Any], prefix: str) -> Iterable[tuple[str, Any]]:
    for key, value in data.items():
        if isinstance(value, dict) and value:
            yield from _flat(value, f"{prefix}.{key}")
        else:
            yield f"{prefix}.{key}", value


@dataclass
class _Run:
    """A network's MLflow run: its id, the epochs it holds, and whether an earlier sweep run made it."""

    run_id: str
    logged: set[int]
    continued: bool = False
    has_error_tag: bool = False


class LiveTracking:
    """The train stage's MLflow logging: ``epoch_done`` and ``seed_done`` as the driver gets them,
    ``close`` when the stage ends. Runs go to the experiment ``experiment`` of the server ``uri``."""

    def __init__(self, uri: str, experiment: str, say: Callable[[str], None]) -> None:
        self.uri, self.experiment, self.say = uri, experiment, say
        self.failed = False  # after MLflow's first failure nothing more is tried
        self.ended = 0  # runs ended (FINISHED or FAILED) by this stage
        self._runs: dict[Network, _Run] = {}
        self._client: Any = None
        self._experiment_id = ""
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow")

    def epoch_done(self, trial: Trial, report: EpochReport) -> None:
        """Log one epoch of a network (its run is created, or continued, at its first)."""
        if trial.role == "trial":
            self._submit(self._log_epoch, trial, report)

    def seed_done(self, trial: Trial, seed: int, error: str | None) -> None:
        """A network ended (``error`` None: trained): backfill what its run lacks, then end the run."""
        if trial.role == "trial":
            self._submit(self._end, trial, seed, error)

    def flush(self) -> None:
        """Wait until everything submitted so far is logged (or given up)."""
        self._thread.submit(lambda: None).result()

    def close(self, *, wait: bool = True) -> None:
        """Stop: wait for the calls still queued (``wait``), or drop them (an interrupted stage: the
        runs in flight stay ``RUNNING``, and the next sweep run continues them)."""
        self._thread.shutdown(wait=wait, cancel_futures=not wait)
        if wait and self.ended and not self.failed:
            self.say(f"[tracking] logged {self.ended} trial(s) to MLflow experiment {self.experiment!r}")

    # everything below runs in the tracking thread, one call at a time

    def _submit(self, call: Callable[..., None], *args: Any) -> None:
        if not self.failed:
            self._thread.submit(self._guarded, call, *args)

    def _guarded(self, call: Callable[..., None], *args: Any) -> None:
        if self.failed:
            return
        try:
            call(*args)
        except Exception as error:  # noqa: BLE001 - tracking is a copy: it never fails the sweep
            self.failed = True
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            self.say(
                f"[tracking] warning: MLflow logging failed: {type(error).__name__}: {reason}"
                " (nothing more is logged to MLflow by this stage; the tables hold everything)"
            )

    def _log_epoch(self, trial: Trial, report: EpochReport) -> None:
        run = self._run(trial, report.seed)
        if report.epoch not in run.logged:
            self._log(run, {report.epoch: report.metrics})

    def _end(self, trial: Trial, seed: int, error: str | None) -> None:
        from mlflow.entities import RunTag

        run = self._run(trial, seed)
        first = int(trial.lineage.get("branch_epoch") or 0) + 1  # a child of a branch starts after it
        if run.continued or min(run.logged, default=None) != first:  # epochs before this stage's first
            history = _history(trial.root, trial.model_key, seed)
            self._log(run, {int(e["epoch"]): e for e in history if int(e["epoch"]) not in run.logged})
        tags = [RunTag("status", "ok" if error is None else "failed")]
        if error is not None:
            tags.append(RunTag("error", error[:5000]))
        elif run.has_error_tag:  # an earlier failure of this network, trained now
            self._client.delete_tag(run.run_id, "error")
        self._client.log_batch(run.run_id, tags=tags)
        self._client.set_terminated(run.run_id, status="FINISHED" if error is None else "FAILED")
        self.ended += 1

    def _run(self, trial: Trial, seed: int) -> _Run:
        """The network's run: this stage's, an earlier sweep run's (continued), or a new one."""
        network = Network(trial.model_key, seed)
        if network in self._runs:
            return self._runs[network]
        client = self._connect()
        found = self._find(trial.root, network)
        if found is not None:
            run = _Run(found.info.run_id, self._steps(found), continued=True)
            run.has_error_tag = "error" in found.data.tags
            if found.info.status != "RUNNING":
                client.update_run(run.run_id, status="RUNNING")
        else:
            from mlflow.entities import Param

            tags = {"model_key": trial.model_key, "seed": str(seed), "sweep_root": trial.root}
            created = client.create_run(self._experiment_id, run_name=f"{trial.model_key} seed {seed}", tags=tags)
            run = _Run(created.info.run_id, set())
            params = [Param(k, v) for k, v in params_of(models_row(trial, seed)).items()]
            for start in range(0, len(params), MAX_PARAMS_PER_CALL):
                client.log_batch(run.run_id, params=params[start : start + MAX_PARAMS_PER_CALL])
        self._runs[network] = run
        return run

    def _connect(self) -> Any:
        if self._client is None:
            from mlflow import MlflowClient

            client = MlflowClient(tracking_uri=self.uri)
            found = client.get_experiment_by_name(self.experiment)
            self._experiment_id = found.experiment_id if found else client.create_experiment(self.experiment)
            self._client = client
        return self._client

    def _find(self, root: str, network: Network) -> Any:
        """The newest run of ``network`` in this sweep (same storage root), or None."""
        runs = self._client.search_runs(
            [self._experiment_id],
            filter_string=f"tags.model_key = '{network.model_key}' and tags.seed = '{network.seed}'",
            order_by=["attributes.start_time DESC"],
            max_results=100,
        )
        return next((r for r in runs if r.data.tags.get("sweep_root") == root), None)

    def _steps(self, run: Any) -> set[int]:
        """The epochs (steps) of which an existing run holds metrics."""
        return {m.step for key in run.data.metrics for m in self._client.get_metric_history(run.info.run_id, key)}

    def _log(self, run: _Run, epochs: Mapping[int, Mapping[str, Any]]) -> None:
        """Log the metrics of ``epochs`` (epoch -> metrics) as steps of ``run``."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(name, float(value), now, epoch)
            for epoch, values in epochs.items()
            for name, value in values.items()
            if name != "epoch" and isinstance(value, (int, float)) and math.isfinite(value)
        ]
        for start in range(0, len(metrics), MAX_METRICS_PER_CALL):
            self._client.log_batch(run.run_id, metrics=metrics[start : start + MAX_METRICS_PER_CALL])
        run.logged.update(epochs)


def _history(root: str, model_key: str, seed: int) -> list[dict[str, Any]]:
    """The per-epoch metrics in a network's newest ``models`` row (none in a row without them)."""
    rows = read_table(root, "models", columns=["model_key", "seed", "history_json"])
    mine = rows[(rows["model_key"] == model_key) & (rows["seed"] == seed)]
    history = mine["history_json"].iloc[-1] if len(mine) else None
    return json.loads(history) if isinstance(history, str) else []
