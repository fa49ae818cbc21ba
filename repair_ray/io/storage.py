"""URI-aware file helpers for checkpoints and tables: local paths, ``file://``, ``s3://``, ``gs://``.

Everything goes through :mod:`pyarrow.fs`, which reads credentials and endpoints from the
standard environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...). Local paths are made
absolute, so a URI means the same file from any working directory (Ray workers change theirs).

A process keeps one object-store filesystem per bucket and environment (:func:`resolve`), so every
read and write of a sweep reuses its client and its connections instead of building new ones.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import re
import secrets
import threading
from urllib.parse import unquote, urlsplit

from pyarrow import fs as pafs


def _scheme(uri: str) -> str:
    # A one-letter "scheme" is a Windows drive (C:\...), not a URI.
    scheme = urlsplit(uri).scheme if "://" in uri else ""
    return "" if len(scheme) == 1 else scheme.lower()


SCHEMES = {"": "a local path", "file": "file://", "s3": "s3://", "gs": "gs://"}


# Where storage options and credentials go instead of the URI (the message of a refused URI says so).
_OPTIONS_HINT = (
    "set the region and endpoint in the environment (AWS_DEFAULT_REGION, AWS_ENDPOINT_URL; they travel to "
    "the workers) or in ~/.aws/config"
)
_CREDENTIALS_HINT = (
    "give credentials the standard way instead: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE "
    "(~/.aws/credentials) or an instance role for s3://, GOOGLE_APPLICATION_CREDENTIALS or workload identity "
    "for gs://; a URI is saved in sweep.yaml, printed and logged"
)
_SECRET_QUERY_KEY = re.compile(r"secret|token|password|passwd|key|credential|signature|session|auth", re.IGNORECASE)


class StorageURIError(ValueError):
    """A storage URI that cannot be used as it is; the message never holds a credential of it."""


def _split_credentials(uri: str) -> tuple[str, str] | None:
    """``(scheme, rest after the credentials)`` when ``uri`` carries credentials before its bucket
    (``s3://KEY:SECRET@bucket/...``, ``gs://user@bucket``), else None. A secret may hold ``/``, so
    an authority with ``:`` (never part of a bucket name) counts too."""
    scheme = _scheme(uri)
    if scheme == "":
        return None
    rest = uri.split("://", 1)[1]
    before_query = re.split(r"[?#]", rest, maxsplit=1)[0]
    authority = before_query.split("/", 1)[0]
    if "@" not in authority and ":" not in authority:
        return None
    if "@" in before_query:
        return scheme, before_query.rsplit("@", 1)[1] + rest[len(before_query) :]
    return scheme, ""


def redact(uri: str | os.PathLike[str]) -> str:
    """``uri`` safe to print: credentials before the bucket and every query value replaced by ``***``."""
    uri = os.fspath(uri)
    if _scheme(uri) == "":
        return uri
    credentials = _split_credentials(uri)
    if credentials is not None:
        scheme, rest = credentials
        uri = f"{scheme}://***@{rest}" if rest else f"{scheme}://***"
    head, mark, query = uri.partition("?")
    if mark:
        query, hash_mark, fragment = query.partition("#")
        query = "&".join(f"{item.split('=', 1)[0]}=***" if "=" in item else item for item in query.split("&"))
        uri = f"{head}?{query}{hash_mark}{'***' if fragment else ''}"
    elif "#" in uri:
        uri = uri.split("#", 1)[0] + "#***"
    return uri


def refused(uri: str | os.PathLike[str]) -> str | None:
    """Why ``uri`` is refused as it is (credentials, query options), with the URI redacted; None if fine.

    Local paths may hold any character. A URI's query would be joined after (``s3://b/p?region=x/sweep``)
    and its credentials saved in ``sweep.yaml`` and printed, so both are refused before anything is written.
    """
    uri = os.fspath(uri)
    if _scheme(uri) == "":
        return None
    shown = redact(uri)
    query = urlsplit(uri).query if _split_credentials(uri) is None else ""
    secret_keys = [
        k for k in (item.split("=", 1)[0] for item in query.split("&") if item) if _SECRET_QUERY_KEY.search(k)
    ]
    if _split_credentials(uri) is not None or secret_keys:
        return f"storage URI {shown} holds credentials; {_CREDENTIALS_HINT}"
    if "?" in uri or "#" in uri:
        return f"storage URI {shown} has a query or fragment, which repair_ray does not pass on; {_OPTIONS_HINT}"
    return None


def check(uri: str | os.PathLike[str]) -> None:
    """Raise :class:`StorageURIError` when :func:`refused` refuses ``uri``."""
    if (reason := refused(uri)) is not None:
        raise StorageURIError(reason)


def unsupported(uri: str | os.PathLike[str]) -> str | None:
    """Why ``uri`` cannot be a storage location (None when it can): its scheme, credentials or query."""
    scheme = _scheme(os.fspath(uri))
    if scheme not in SCHEMES:
        return f"unsupported storage scheme {scheme + '://'!r}; use {', '.join(SCHEMES.values())}"
    return refused(uri)


def is_local(uri: str | os.PathLike[str]) -> bool:
    """Whether ``uri`` names a file on this machine (a plain path or ``file://``)."""
    return _scheme(os.fspath(uri)) in ("", "file")


def normalize(uri: str | os.PathLike[str]) -> str:
    """``uri`` with a plain local path made absolute (``~`` expanded); other URIs unchanged.

    Every helper here goes through this: a URI with credentials or a query raises
    :class:`StorageURIError` (redacted) before anything is read or written.
    """
    uri = os.fspath(uri)
    check(uri)
    return os.path.abspath(os.path.expanduser(uri)) if _scheme(uri) == "" else uri


# Attempts of one S3 request (AWS standard retry mode's own default): throttling and 5xx answers are
# retried with backoff, while an endpoint where nothing listens fails in about a second, not after
# the 6 s that pyarrow's default (a URI's filesystem) spends retrying a refused connection.
S3_MAX_ATTEMPTS = 3

# What makes two filesystems of a scheme differ, from the environment: where they connect, in which
# region, as whom. Values of _SECRET_ENVIRONMENT only ever enter a cache key as a digest.
_S3_ENVIRONMENT = (
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_EC2_METADATA_DISABLED",
    "AWS_CA_BUNDLE",
)
_GS_ENVIRONMENT = ("GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CONFIG")
_SECRET_ENVIRONMENT = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")

_filesystems: dict[tuple[str, ...], pafs.FileSystem] = {}
_filesystems_lock = threading.Lock()


def _forget_filesystems() -> None:
    """Drop every cached filesystem (a forked child builds its own; at exit, before pyarrow finalizes S3)."""
    global _filesystems_lock
    _filesystems_lock = threading.Lock()  # a thread of the parent may have held it at the fork
    _filesystems.clear()


os.register_at_fork(after_in_child=_forget_filesystems)
atexit.register(_forget_filesystems)  # runs before pyarrow's own handler, registered at its import


def _environment_key(names: tuple[str, ...]) -> tuple[str, ...]:
    """The values of ``names`` in the environment now, and a digest of the credentials in it."""
    digest = hashlib.sha256("\0".join(os.environ.get(name, "") for name in _SECRET_ENVIRONMENT).encode())
    return (*(os.environ.get(name, "") for name in names), digest.hexdigest())


def _new_s3(bucket: str) -> pafs.FileSystem:
    """The filesystem ``pafs.FileSystem.from_uri("s3://bucket")`` builds (endpoint from
    ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``; without one, the bucket's own region), with
    :data:`S3_MAX_ATTEMPTS` attempts per request and small files written in one request."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    region = None if endpoint else pafs.resolve_s3_region(bucket)
    return pafs.S3FileSystem(
        region=region,
        endpoint_override=endpoint,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=S3_MAX_ATTEMPTS),
        # a file smaller than a part (checkpoints, table parts, markers) is one PutObject, not a
        # multipart upload's three requests; a failed write raises when its stream closes
        allow_delayed_open=True,
    )


def _object_store(scheme: str, bucket: str) -> pafs.FileSystem:
    """This process's filesystem for ``bucket`` on ``scheme`` (s3, gs) in the environment as it is now:
    built once, then shared by every call and thread. A changed endpoint, region or credential in
    the environment keys another one."""
    if scheme == "s3":
        key = ("s3", bucket, *_environment_key(_S3_ENVIRONMENT))
    else:  # a GCS filesystem does not depend on the bucket
        key = ("gs", *_environment_key(_GS_ENVIRONMENT))
    with _filesystems_lock:
        filesystem = _filesystems.get(key)
        if filesystem is None:
            filesystem = _new_s3(bucket) if scheme == "s3" else pafs.FileSystem.from_uri(f"gs://{bucket}")[0]
            _filesystems[key] = filesystem
        return filesystem


def resolve(uri: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem that holds ``uri`` and the path of ``uri`` inside it.

    Local paths get a new (stateless) local filesystem; ``s3://`` and ``gs://`` get this process's
    filesystem of the bucket (:func:`_object_store`). Paths inside a bucket are read as pyarrow
    reads a URI's: ``bucket/key`` with %-escapes decoded and no trailing ``/``.
    """
    uri = normalize(uri)
    scheme = _scheme(uri)
    if scheme == "":
        return pafs.LocalFileSystem(), uri
    if scheme not in ("s3", "gs"):
        return pafs.FileSystem.from_uri(uri)
    parts = urlsplit(uri)
    bucket = parts.netloc
    if not bucket:
        raise StorageURIError(f"storage URI {redact(uri)} names no bucket")
    return _object_store(scheme, bucket), (bucket + unquote(parts.path)).rstrip("/")


def join(base: str | os.PathLike[str], *parts: str) -> str:
    """``base`` and ``parts`` joined with ``/`` (URIs) or the OS separator (local paths)."""
    base = normalize(base)
    cleaned = [part.strip("/") for part in parts if part.strip("/")]
    if _scheme(base) == "":
        return os.path.join(base, *cleaned)
    return "/".join([base.rstrip("/"), *cleaned])


def exists(uri: str | os.PathLike[str]) -> bool:
    """Whether a file or folder exists at ``uri``."""
    filesystem, path = resolve(uri)
    return filesystem.get_file_info(path).type != pafs.FileType.NotFound


def is_relative(uri: str | os.PathLike[str]) -> bool:
    """Whether ``uri`` is a path relative to some folder (no scheme, no leading ``/`` or ``~``)."""
    uri = os.fspath(uri)
    return _scheme(uri) == "" and not os.path.isabs(os.path.expanduser(uri))


def size(uri: str | os.PathLike[str]) -> int:
    """Bytes of the file at ``uri``; FileNotFoundError when there is none."""
    filesystem, path = resolve(uri)
    info = filesystem.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(f"no such file: {uri}")
    return int(info.size)


def file_sizes(folder: str | os.PathLike[str]) -> dict[str, int]:
    """Name -> bytes of every file directly in ``folder`` (one listing; empty when there is no folder)."""
    filesystem, path = resolve(folder)
    infos = filesystem.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return {info.base_name: int(info.size) for info in infos if info.type == pafs.FileType.File}


def makedirs(uri: str | os.PathLike[str]) -> None:
    """Create the folder ``uri`` and its parents (no-op if it exists)."""
    filesystem, path = resolve(uri)
    filesystem.create_dir(path, recursive=True)


def read_bytes(uri: str | os.PathLike[str]) -> bytes:
    """The whole content of file ``uri``; FileNotFoundError when there is none."""
    filesystem, path = resolve(uri)
    try:
        with filesystem.open_input_stream(path) as stream:
            return stream.read()
    except OSError as error:
        if filesystem.get_file_info(path).type != pafs.FileType.File:
            raise FileNotFoundError(f"no such file: {uri}") from error
        raise


def write_bytes_atomic(uri: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``uri`` so that readers see either the old file or the whole new one.

    Locally: write a temporary file in the same folder, flush it to disk, then rename it over
    the target. Object stores: write the key directly, as an object only appears once its upload
    completes.
    """
    filesystem, path = resolve(uri)
    if not isinstance(filesystem, pafs.LocalFileSystem):
        with filesystem.open_output_stream(path) as stream:
            stream.write(data)
        return
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    # a leading dot hides the partial file from readers of the folder (pyarrow datasets skip it)
    temp = os.path.join(folder, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(temp, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.remove(temp)
        raise


def check_writable(uri: str | os.PathLike[str]) -> None:
    """Create the folder ``uri`` and write and delete a small file in it; an
    :class:`~repair_ray.errors.InfrastructureError` with one line if not.

    Run before a sweep starts, so a wrong bucket, missing credentials or an unreachable endpoint
    fail at once, naming the place, instead of in every worker.
    """
    from ..errors import InfrastructureError

    probe = join(uri, f".write-probe-{secrets.token_hex(4)}")
    try:
        makedirs(uri)
        write_bytes_atomic(probe, b"repair_ray")
        remove(probe, missing_ok=True)
    except Exception as error:  # noqa: BLE001 - pyarrow raises OSError, ArrowException, ... all mean "not here"
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise InfrastructureError(f"storage {normalize(uri)} unreachable: cannot write to it: {reason}") from None


def remove(uri: str | os.PathLike[str], *, missing_ok: bool = False) -> None:
    """Delete the file (or the folder with everything in it) at ``uri``."""
    filesystem, path = resolve(uri)
    kind = filesystem.get_file_info(path).type
    if kind == pafs.FileType.NotFound:
        if missing_ok:
            return
        raise FileNotFoundError(f"no such file: {uri}")
    if kind == pafs.FileType.Directory:
        filesystem.delete_dir(path)
    else:
        filesystem.delete_file(path)


def move(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Move a file (on object stores: copy, then delete), creating the target's folder."""
    filesystem, source_path = resolve(source)
    _, target_path = resolve(target)
    if isinstance(filesystem, pafs.LocalFileSystem):
        os.makedirs(os.path.dirname(target_path), exist_ok=True)
    filesystem.move(source_path, target_path)


def parent(uri: str | os.PathLike[str]) -> str:
    """The folder that holds ``uri``."""
    uri = normalize(uri)
    if _scheme(uri) == "":
        return os.path.dirname(uri.rstrip(os.sep)) or os.sep
    return uri.rstrip("/").rsplit("/", 1)[0]


def basename(uri: str | os.PathLike[str]) -> str:
    """The last component of ``uri``."""
    return normalize(uri).rstrip("/").rstrip(os.sep).replace(os.sep, "/").rsplit("/", 1)[-1]
