"""One object-store filesystem per bucket and environment (repair_ray.io.storage.resolve)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from pyarrow import fs as pafs

from repair_ray.io import storage

URIS = [
    "s3://bucket",
    "s3://bucket/",
    "s3://bucket/runs/sweep/tables/pairs/part-0.parquet",
    "s3://bucket/a//b/",
    "s3://bucket/name%20with%20space/x",
    "gs://bucket/runs/sweep/",
]


def _options(filesystem: pafs.FileSystem) -> dict:
    """What a filesystem connects to and how (its pickled options), less its credentials and the
    small-file writes repair_ray asks for."""
    options = filesystem.__reduce__()[1][0]
    secret = ("access_key", "secret_key", "session_token", "access_token", "allow_delayed_open")
    return {key: value for key, value in options.items() if key not in secret}


@pytest.fixture
def endpoint(monkeypatch, closed_port):
    """An endpoint in the environment where nothing listens (resolving connects to nothing)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port}")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    return f"http://127.0.0.1:{closed_port}"


@pytest.mark.parametrize("uri", URIS)
def test_a_uri_resolves_to_the_filesystem_and_path_pyarrow_reads_in_it(uri, endpoint):
    filesystem, path = storage.resolve(uri)
    theirs, their_path = pafs.FileSystem.from_uri(uri)
    assert path == their_path
    assert type(filesystem) is type(theirs) and _options(filesystem) == _options(theirs)


def test_a_bucket_resolves_to_one_filesystem_until_its_environment_changes(endpoint, monkeypatch):
    first, path = storage.resolve("s3://bucket/runs/a.parquet")
    assert path == "bucket/runs/a.parquet"
    assert storage.resolve("s3://bucket/other/b.pt")[0] is first
    assert storage.resolve("s3://another-bucket/x")[0] is not first

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    moved = storage.resolve("s3://bucket/runs/a.parquet")[0]
    assert moved is not first and not moved.equals(first)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    assert storage.resolve("s3://bucket/runs/a.parquet")[0] is first

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "someone-else")
    assert storage.resolve("s3://bucket/runs/a.parquet")[0] is not first

    gcs = storage.resolve("gs://bucket/a")[0]
    assert storage.resolve("gs://other/b")[0] is gcs


def test_threads_share_one_filesystem(endpoint):
    with ThreadPoolExecutor(8) as pool:
        found = list(pool.map(lambda i: storage.resolve(f"s3://threads/key-{i}")[0], range(64)))
    assert all(filesystem is found[0] for filesystem in found)


def test_no_credential_is_kept_in_the_cache(endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEYID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-example-value")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session-token-example-value")
    storage.resolve("s3://bucket/x")
    keys = repr(list(storage._filesystems))
    for secret in ("AKIAEXAMPLEKEYID", "very-secret-example-value", "session-token-example-value"):
        assert secret not in keys


def test_a_bucket_without_a_name_is_refused():
    with pytest.raises(storage.StorageURIError, match="names no bucket"):
        storage.resolve("s3:///runs/sweep")


def test_reads_and_writes_on_s3_share_one_filesystem_and_follow_a_changed_endpoint(s3_bucket, closed_port, monkeypatch):
    folder = storage.join(s3_bucket, "cached", "sweep")
    uri = storage.join(folder, "a.bin")
    storage.write_bytes_atomic(uri, b"first")
    assert storage.read_bytes(uri) == b"first" and storage.size(uri) == 5
    storage.move(uri, storage.join(folder, "b.bin"))
    assert storage.file_sizes(folder) == {"b.bin": 5}
    assert storage.resolve(uri)[0] is storage.resolve(folder)[0]

    # the same bucket at an endpoint where nothing listens: that filesystem fails, this one still works
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port}")
    with pytest.raises(OSError):
        storage.exists(uri)
    monkeypatch.undo()
    assert storage.read_bytes(storage.join(folder, "b.bin")) == b"first"
    storage.remove(folder)
    assert not storage.exists(folder)


def test_a_small_file_on_s3_is_one_put_not_a_multipart_upload(s3_bucket):
    import boto3

    uri = storage.join(s3_bucket, "small", "checkpoint.pt")
    storage.write_bytes_atomic(uri, b"x" * 1000)
    bucket, key = storage.resolve(uri)[1].split("/", 1)
    etag = boto3.client("s3").head_object(Bucket=bucket, Key=key)["ETag"]
    assert "-" not in etag  # a multipart upload's ETag ends in -<parts>
    assert storage.read_bytes(uri) == b"x" * 1000
    storage.remove(uri)
