"""A newcomer's first hour (issue 34 §6): a re-run with nothing to do starts no Ray; a dataset that
is missing fails once, as a usage error, before Ray when it can, and leaves no folder behind."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from repair_ray import load_tables
from repair_ray.cli import main
from repair_ray.datasets import DatasetNotFoundError
from repair_ray.sweep.config import parse_config
from repair_ray.sweep.runner import run_sweep

from .helpers import tiny_sweep, write_yaml


def test_a_rerun_with_nothing_to_do_starts_no_ray_and_says_so(ray_session, tmp_path, closed_port):
    config = parse_config(tiny_sweep("done", str(tmp_path), seeds=2, align=["none"], correction=["none"]))
    run_sweep(config, say=lambda line: None)
    before = load_tables(config.root)
    lines: list[str] = []
    # the address of a closed port: joining it would fail, so the re-run must not try
    again = run_sweep(config, address=f"127.0.0.1:{closed_port}", say=lines.append)
    assert (again.train.ran, again.pairs.ran, again.train.already_done, again.pairs.already_done) == (0, 0, 2, 1)
    assert lines == [f"[sweep] done: nothing to do: all 2 trials and 1 pairs are done ({config.root})"]
    after = load_tables(config.root)
    for table in ("models", "pairs", "curves"):
        assert after[table].equals(before[table]), table
    # one method more is something to do: that re-run joins the cluster (here: a closed port, an error)
    grown = parse_config(tiny_sweep("done", str(tmp_path), seeds=2, align=["none", "weight"], correction=["none"]))
    with pytest.raises(Exception, match=f"no Ray cluster at 127.0.0.1:{closed_port}"):
        run_sweep(grown, address=f"127.0.0.1:{closed_port}", say=lambda line: None)


def test_a_missing_mnist_that_cannot_be_downloaded_is_exit_2_before_ray_and_creates_no_folder(
    tmp_path, monkeypatch, closed_port
):
    import torchvision

    nowhere = tmp_path / "nowhere" / "data"
    # torchvision's mirrors pointed at a closed port: a download that fails at once, online or not
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", [f"http://127.0.0.1:{closed_port}/"])
    config = tiny_sweep("mnist", str(tmp_path / "runs"), dataset="mnist", seeds=2)
    result = CliRunner().invoke(
        main,
        ["run", write_yaml(tmp_path / "sweep.yaml", config)],
        env={"REPAIR_RAY_DATA": str(nowhere), "RAY_ADDRESS": None},
    )
    assert result.exit_code == 2, result.output
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith(f"error: dataset mnist not found in {nowhere / 'MNIST'}"), errors
    assert "downloading it before the workers start" in result.stdout
    assert "Ray cluster" not in result.stdout  # no Ray was started or joined
    assert not (tmp_path / "nowhere").exists()  # the failed download left no folder behind


def test_workers_without_the_dataset_fail_once_without_retries_as_a_usage_error(ray_session, tmp_path):
    """On a joined cluster the driver cannot know what the workers' disks hold: the first trial
    that finds no files ends the stage (no retry would find them), and the run is a usage error."""
    missing = tmp_path / "not-here"
    data = tiny_sweep(
        "nodata", str(tmp_path / "runs"), seeds=4, dataset={"name": f"imagefolder:{missing}", "image_size": 8}
    )
    data["train_retries"] = 2  # what a failed trial would get: none of it for missing files
    config = parse_config(data, check_files=False)  # as a driver without the folder would let it through
    lines: list[str] = []
    with pytest.raises(
        DatasetNotFoundError, match=r"^on a worker: DatasetNotFoundError: .*the trials left were not started"
    ):
        run_sweep(config, say=lines.append)
    assert not any("retrying from its checkpoint" in line for line in lines), lines
    models = load_tables(config.root)["models"]
    assert len(models) <= 2 and (models["status"] != "ok").all()  # the trials in flight at most, none retried
    assert models["error"].str.contains("DatasetNotFoundError").all()


def test_a_fresh_local_cluster_says_nothing_of_token_auth_the_user_cannot_act_on():
    """Ray's own warning (its logger and text, pinned here against this Ray) is dropped while our
    local cluster starts; Ray's other warnings pass."""
    import logging

    from ray._private.authentication import authentication_token_setup as ray_auth

    from repair_ray.sweep.cluster import TOKEN_AUTH_LOGGER, _quiet_token_auth_notice

    assert ray_auth.logger.name == TOKEN_AUTH_LOGGER
    seen: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: seen.append(record.getMessage())  # Ray's loggers do not propagate to the root
    ray_auth.logger.addHandler(handler)
    try:
        ray_auth._warn_token_auth_enabled()
        assert any("Token authentication is enabled" in line for line in seen)  # what a user saw before
        seen.clear()
        with _quiet_token_auth_notice():
            ray_auth._warn_token_auth_enabled()
            ray_auth._warn_token_auth_disabled()
            ray_auth.logger.warning("something else")
        assert seen == ["something else"]
    finally:
        ray_auth.logger.removeHandler(handler)
