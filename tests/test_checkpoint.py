"""Checkpoints and the storage helpers under them, on local disk and on S3 (moto's server)."""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from repair_ray.io import storage
from repair_ray.io.checkpoint import FORMAT, Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from repair_ray.models import build_model

from .helpers import list_names


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("mlp", width=16, depth=2, norm="batch")


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = _model()
    training_state = {
        "epoch": 3,
        "name": "sgd",
        "lr": 0.05,
        "generator": torch.Generator().manual_seed(1).get_state(),
        "optimizer": {
            "state": {0: {"momentum_buffer": torch.ones(3)}},
            "param_groups": [{"betas": (0.9, 0.99)}],
        },
    }
    uri = str(tmp_path / "run" / "model.pt")
    save_checkpoint(uri, model, {"epoch": 3, "metrics": {"test_acc": 0.5}}, training_state=training_state)
    checkpoint = load_checkpoint(uri)
    assert isinstance(checkpoint, Checkpoint)
    assert checkpoint.state_dict.keys() == model.state_dict().keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(checkpoint.state_dict[name], tensor)
    assert checkpoint.meta["epoch"] == 3 and checkpoint.meta["metrics"] == {"test_acc": 0.5}
    assert set(checkpoint.meta["versions"]) == {"torch", "repair_ray", "python"}
    assert checkpoint.training_state is not None
    assert torch.equal(checkpoint.training_state["generator"], training_state["generator"])
    assert checkpoint.training_state["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.99)
    assert checkpoint.training_state["name"] == "sgd"
    fresh = build_model("mlp", width=16, depth=2, norm="batch")
    fresh.load_state_dict(checkpoint.state_dict)


def test_checkpoint_without_training_state(tmp_path: Path) -> None:
    uri = tmp_path / "plain.pt"
    save_checkpoint(uri, {"w": torch.arange(3.0)}, {})
    checkpoint = load_checkpoint(uri)
    assert checkpoint.training_state is None and torch.equal(checkpoint.state_dict["w"], torch.arange(3.0))


def test_meta_must_be_json(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="JSON"):
        save_checkpoint(tmp_path / "x.pt", {}, {"tensor": torch.ones(1)})
    assert not (tmp_path / "x.pt").exists()


def test_missing_checkpoint_error(tmp_path: Path) -> None:
    uri = str(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match=f"checkpoint not found: {uri}"):
        load_checkpoint(uri)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_checkpoint_error(tmp_path: Path, damage: str) -> None:
    uri = tmp_path / "model.pt"
    save_checkpoint(uri, _model(), {"epoch": 1})
    data = uri.read_bytes()
    uri.write_bytes({"truncated": data[: len(data) // 2], "garbage": os.urandom(1000), "empty": b""}[damage])
    with pytest.raises(CheckpointError, match="is corrupt or not a repair_ray checkpoint"):
        load_checkpoint(uri)


def test_file_of_another_format_is_refused(tmp_path: Path) -> None:
    uri = tmp_path / "foreign.pt"
    torch.save({"format": "someone-else/3", "state_dict": {}, "meta": "{}"}, uri)
    with pytest.raises(CheckpointError, match="format tag"):
        load_checkpoint(uri)
    torch.save(_model().state_dict(), uri)  # a bare state dict is not a checkpoint either
    with pytest.raises(CheckpointError, match="format tag"):
        load_checkpoint(uri)


class _Payload:
    """Unpickling this would write a file: the proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (Path(self.marker), "code ran"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_objects_are_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    uri = tmp_path / "evil.pt"
    payload = {
        "format": FORMAT,
        "state_dict": {},
        "meta": "{}",
        "training_state": {"x": _Payload(str(marker))},
    }
    torch.save(payload, uri)
    with pytest.raises(CheckpointError, match="corrupt or not a repair_ray checkpoint"):
        load_checkpoint(uri)
    assert not marker.exists()
    buffer = io.BytesIO()
    pickle.dump(_Payload(str(marker)), buffer)  # a plain pickle, not a torch file
    uri.write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError):
        load_checkpoint(uri)
    assert not marker.exists()


def test_atomic_write_leaves_no_temporary_files(tmp_path: Path) -> None:
    for epoch in range(3):
        save_checkpoint(tmp_path / "model.pt", _model(), {"epoch": epoch})
    assert os.listdir(tmp_path) == ["model.pt"]
    assert load_checkpoint(tmp_path / "model.pt").meta["epoch"] == 2


def test_failed_write_keeps_the_old_file_and_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = tmp_path / "model.pt"
    save_checkpoint(uri, _model(), {"epoch": 1})

    def crash(src: str, dst: str) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        save_checkpoint(uri, _model(), {"epoch": 2})
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["model.pt"]
    assert load_checkpoint(uri).meta["epoch"] == 1


def test_local_storage_helpers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert storage.is_local("runs/a") and storage.is_local("file:///tmp/a") and not storage.is_local("s3://b/k")
    assert storage.join("runs", "sweep", "model.pt") == str(tmp_path / "runs" / "sweep" / "model.pt")
    assert storage.join("s3://bucket/prefix/", "sweep/", "model.pt") == "s3://bucket/prefix/sweep/model.pt"
    assert storage.join("/base", "/abs", "x") == os.path.join("/base", "abs", "x")
    filesystem, path = storage.resolve("runs/x")
    assert path == str(tmp_path / "runs" / "x")
    assert list_names("runs") == [] and not storage.exists("runs")
    storage.makedirs("runs/sweep")
    storage.write_bytes_atomic("runs/sweep/b.bin", b"bee")
    storage.write_bytes_atomic(f"file://{tmp_path}/runs/sweep/a.bin", b"ay")
    assert list_names("runs/sweep") == ["a.bin", "b.bin"]
    assert storage.read_bytes("runs/sweep/a.bin") == b"ay"
    assert storage.exists("runs/sweep/b.bin")
    storage.remove("runs/sweep/b.bin")
    assert not storage.exists("runs/sweep/b.bin")
    with pytest.raises(FileNotFoundError):
        storage.read_bytes("runs/sweep/b.bin")
    with pytest.raises(FileNotFoundError):
        storage.remove("runs/sweep/b.bin")
    storage.remove("runs/sweep/b.bin", missing_ok=True)
    storage.remove("runs")
    assert not storage.exists("runs")


@pytest.fixture
def s3_bucket(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real S3 API on loopback (moto's server), reached through the standard AWS environment."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for key, value in {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(key, value)
    boto3.client("s3").create_bucket(Bucket="repair-ray-test")
    try:
        yield "s3://repair-ray-test"
    finally:
        server.stop()


def test_checkpoint_round_trip_on_s3(s3_bucket: str) -> None:
    uri = storage.join(s3_bucket, "sweep", "models", "seed0.pt")
    assert not storage.is_local(uri) and not storage.exists(uri)
    model = _model()
    save_checkpoint(uri, model, {"epoch": 2}, training_state={"step": 7})
    assert storage.exists(uri)
    assert list_names(storage.join(s3_bucket, "sweep", "models")) == ["seed0.pt"]
    checkpoint = load_checkpoint(uri)
    assert checkpoint.meta["epoch"] == 2 and checkpoint.training_state == {"step": 7}
    assert all(torch.equal(checkpoint.state_dict[k], v) for k, v in model.state_dict().items())
    storage.remove(uri)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(uri)
    assert list_names(storage.join(s3_bucket, "nothing-here")) == []
