"""Optional MLflow tracking (``tracking: {mlflow: URI}``): one MLflow run per trained network.

The runs are logged by the driver when the train stage ends, from the ``models`` table: each row
already holds the network's settings and its per-epoch history (``history_json``), complete even
for a trial that resumed from a checkpoint (its streamed epochs would miss the ones before the
resume). So workers need neither mlflow nor access to the tracking server, a tracking server that
is down costs a warning, never a trial, and the tables stay the record of truth.

Params are the model and train configs, the dataset, the seed and the model key: settings, never
credentials (the tracking URI itself is not logged, as it may carry some).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

from ..io.tables import read_table

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


def log_trials(
    uri: str, root: str, experiment: str, trials: Iterable[tuple[str, int]], say: Callable[[str], None]
) -> int:
    """Log one MLflow run per ``(model_key, seed)`` of ``trials`` that has a row in the ``models``
    table of the sweep at ``root``, in the experiment ``experiment`` of the tracking server ``uri``;
    returns how many. A failure of MLflow is a warning (the tables hold everything)."""
    wanted = set(trials)
    if not wanted:
        return 0
    try:
        from mlflow import MlflowClient
        from mlflow.entities import Metric, Param

        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(experiment)
        rows = read_table(root, "models")
        rows = [r for r in rows.to_dict("records") if (r["model_key"], int(r["seed"])) in wanted]
        for row in rows:
            ok = row["status"] == "ok"
            tags = {"model_key": row["model_key"], "seed": str(int(row["seed"])), "status": row["status"]}
            tags["sweep_root"] = root
            if not ok and isinstance(row.get("error"), str):
                tags["error"] = row["error"][:5000]
            run = client.create_run(experiment_id, run_name=f"{row['model_key']} seed {int(row['seed'])}", tags=tags)
            now = int(time.time() * 1000)
            history = row.get("history_json")  # none in a failed trial's row or an imported network's
            epochs = json.loads(history) if isinstance(history, str) else []
            metrics = [
                Metric(name, float(value), now, int(epoch["epoch"]))
                for epoch in epochs
                for name, value in epoch.items()
                if name != "epoch" and isinstance(value, (int, float)) and math.isfinite(value)
            ]
            params = [Param(k, v) for k, v in params_of(row).items()]
            calls = max(-(-len(params) // MAX_PARAMS_PER_CALL), -(-len(metrics) // MAX_METRICS_PER_CALL), 1)
            for i in range(calls):
                client.log_batch(
                    run.info.run_id,
                    metrics=metrics[i * MAX_METRICS_PER_CALL : (i + 1) * MAX_METRICS_PER_CALL],
                    params=params[i * MAX_PARAMS_PER_CALL : (i + 1) * MAX_PARAMS_PER_CALL],
                )
            client.set_terminated(run.info.run_id, status="FINISHED" if ok else "FAILED")
    except Exception as error:  # noqa: BLE001 - tracking is a copy: it never fails the sweep
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        say(f"[tracking] warning: MLflow logging failed: {type(error).__name__}: {reason}")
        return 0
    say(f"[tracking] logged {len(rows)} trial(s) to MLflow experiment {experiment!r}")
    return len(rows)
