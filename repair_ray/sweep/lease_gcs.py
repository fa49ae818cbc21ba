"""The sweep's lease on ``gs://``: a Cloud Storage object changed only with generation preconditions.

Every write names the generation it expects (``ifGenerationMatch``): ``0`` to create (no live
object may exist), the generation last read to renew, take over or delete. Cloud Storage applies
the condition atomically on its side, so of two runs racing for the lease exactly one wins, as on
S3 with ``If-None-Match`` / ``If-Match``.

It needs the ``google-cloud-storage`` client, the optional ``gcs`` extra
(``pip install 'repair-ray[gcs]'``); without it a command that would take the lease of a ``gs://``
sweep stops (exit 2) naming the extra. Credentials are the client's defaults (Application Default
Credentials: ``GOOGLE_APPLICATION_CREDENTIALS``, workload identity, ``gcloud auth
application-default login``); ``STORAGE_EMULATOR_HOST`` points it at an emulator.
"""

from __future__ import annotations

from typing import Any

from ..errors import InfrastructureError, MissingExtraError

EXTRA = "gcs"
INSTALL = f"pip install 'repair-ray[{EXTRA}]'"


def installed() -> bool:
    """Whether the client library that gs:// leases need (``google-cloud-storage``) is installed."""
    try:
        import google.cloud.storage  # noqa: F401
    except ImportError:
        return False
    return True


def missing_message(root: str) -> str:
    """What a command says when it would take the lease of the gs:// sweep at ``root`` without the extra."""
    return (
        f"the sweep {root} is on gs://, whose lease (one writer per sweep, taken with Cloud Storage's "
        "generation preconditions) needs the google-cloud-storage package, which is not installed here; "
        f"install the `{EXTRA}` extra: {INSTALL} (wherever `repair-ray run` or `tune` runs: a cluster's image too)"
    )


def require(root: str) -> None:
    """Raise :class:`~repair_ray.errors.MissingExtraError` when gs:// leases cannot be taken here."""
    if not installed():
        raise MissingExtraError(missing_message(root))


class GCSStore:
    """The lease object ``gs://bucket/key``: read with its generation, written only against one."""

    def __init__(self, uri: str, root: str) -> None:
        require(root)
        import google.auth.exceptions
        from google.api_core import exceptions
        from google.cloud import storage as gcs

        bucket, self.key = uri.split("://", 1)[1].split("/", 1)
        try:
            client = gcs.Client()  # default credentials, never read or shown here
        except google.auth.exceptions.DefaultCredentialsError as error:
            reason = (str(error).strip().splitlines() or ["none found"])[0]
            raise InfrastructureError(f"storage {root}: no Google Cloud credentials for its lease: {reason}") from None
        self.bucket = client.bucket(bucket)
        self._precondition_failed = exceptions.PreconditionFailed
        self._not_found = exceptions.NotFound

    def read(self) -> tuple[bytes, Any] | None:
        blob = self.bucket.blob(self.key)
        try:
            data = blob.download_as_bytes()  # one request: the content and its generation agree
        except self._not_found:
            return None
        return data, blob.generation

    def _upload(self, data: bytes, generation: int) -> Any | None:
        blob = self.bucket.blob(self.key)
        try:
            blob.upload_from_string(data, content_type="application/json", if_generation_match=generation)
        except self._precondition_failed:  # someone else's write came first (or the lease is gone)
            return None
        return blob.generation

    def create(self, data: bytes) -> Any | None:
        return self._upload(data, 0)  # 0: only if no live object exists

    def replace(self, data: bytes, version: Any) -> Any | None:
        return self._upload(data, int(version))

    def delete(self, version: Any) -> bool:
        try:
            self.bucket.blob(self.key).delete(if_generation_match=int(version))
        except (self._precondition_failed, self._not_found):
            return False
        return True
