"""Never paying twice for the same photos across DAG runs: a registry of the generations paid for.

Event-driven pipelines deliver *at least once*: an S3 notification can arrive twice, and every
message starts a DAG run. A task's own retries reattach through the task state store (durable
execution), but a second run is a new task instance with an empty store. With
``generation_registry`` set, the operator keeps one small JSON record per request in a folder of
object storage (or a local folder), named by the request's key: the scene, model and duration, and
each photo *as a version* (an object's version id or ETag, a local file's content hash; an http(s)
URL as given, so a presigned URL, new at every run, never matches). A run that finds the record of
the same request delivers that generation (waiting for it, saving it, failing with its reason)
instead of submitting.

Two runs for the same photo that start at the same moment: each tries to *create* the record, and
the store lets exactly one succeed (S3 ``PutObject`` with ``If-None-Match: *``, GCS
``ifGenerationMatch=0``, a local ``O_CREAT | O_EXCL``). The winner submits and writes the
generation's id into its record; the other reads the record, waits (up to :data:`CLAIM_WAIT_SECONDS`)
for the id to appear, and delivers that generation. A record that never gets an id (its run died
between claiming and paying, or while paying) is not taken over, for the generation may exist: the
task fails, naming the record to delete once the vendor's dashboard shows nothing was made.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from airflow_provider_klingfx.domain import (
    PHOTO_LOCAL,
    PHOTO_URL,
    EffectRequest,
    KlingFxError,
    KlingFxInvalidInputError,
    photo_kind,
    redact_url,
    storage_conn_id,
)

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

#: How long a run waits for another run, which claimed the same request, to record its generation.
CLAIM_WAIT_SECONDS: Final = 120.0
#: Between two reads of a claim waited on.
CLAIM_POLL_SECONDS: Final = 2.0


class KlingFxRegistryError(KlingFxError):
    """The registry could not be read or written (a retry may fix it), or a claim has no generation."""


def photo_version(ref: str) -> str:
    """What identifies this version of a photo: its location and the store's version of it.

    :param ref: a photo reference (see :func:`~airflow_provider_klingfx.domain.validate_image_url`).
    """
    kind = photo_kind(ref)
    if kind == PHOTO_URL:
        return ref  # no version to ask for; a presigned URL differs at every run, and never matches
    from airflow.sdk import ObjectStoragePath

    path = ObjectStoragePath(ref)
    if kind == PHOTO_LOCAL:
        with path.open("rb") as fh:
            return f"{ref}#sha256={hashlib.sha256(fh.read()).hexdigest()}"
    info = path.fs.info(path.path)
    version = next(
        (str(info[k]) for k in ("VersionId", "generation", "ETag", "etag", "md5Hash") if info.get(k)),
        f"{info.get('size')}:{info.get('LastModified') or info.get('mtime')}",
    )
    return f"{ref}#{version}"


def request_key(request: EffectRequest, versions: list[str]) -> str:
    """The registry's name for a request: scene, model, duration and the photos' versions, hashed.

    :param request: the validated request.
    :param versions: :func:`photo_version` of each photo, in order.
    """
    text = json.dumps([request.effect_scene, request.model, request.duration, versions])
    return hashlib.sha256(text.encode()).hexdigest()[:40]


class GenerationRegistry:
    """A folder of records, one per request paid for.

    :param location: ``s3://[conn_id@]bucket/prefix/``, ``gs://…`` or ``file:///path/``.
    :param sleep: how to wait for another run's record (tests pass a recorder).
    :param clock: the clock the wait is measured on.
    """

    def __init__(
        self,
        location: str | ObjectStoragePath,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from airflow.sdk import ObjectStoragePath

        text = str(location).rstrip("/")
        self.folder = ObjectStoragePath(text if "://" in text else f"file://{os.path.abspath(text)}")
        if self.folder.protocol not in ("file", "local", "s3", "gs", "gcs"):
            raise KlingFxInvalidInputError(
                f"generation_registry must be on S3, GCS or a local disk (it needs an atomic create), "
                f"got {redact_url(text)}"
            )
        self._sleep = sleep
        self._clock = clock

    def _path(self, key: str) -> ObjectStoragePath:
        return self.folder / f"{key}.json"

    def claim(self, key: str, owner: str) -> dict[str, Any] | None:
        """Create the record of ``key`` if there is none. Atomic: of two runs, one creates it.

        :param key: :func:`request_key`.
        :param owner: who claims it (the task instance), written into the record.
        :returns: None when this call created it, or an earlier try of the same task instance did
            (submit, then :meth:`record`); else the record another run made, once it names a
            generation (which may be this task instance's own, from an earlier try).
        :raises KlingFxRegistryError: the store failed, or the record got no generation in time.
        """
        body = json.dumps({"generation_id": None, "claimed_by": owner, "claimed_at": time.time()})
        try:
            if self._create(self._path(key), body.encode()):
                return None
        except Exception as exc:
            raise KlingFxRegistryError(f"could not write to the generation registry: {exc!r}"[:500]) from None
        return self._wait_for_generation(key, owner)

    def release(self, key: str, owner: str) -> None:
        """Remove this run's claim, when it failed before anything could be paid for."""
        try:
            path = self._path(key)
            stored = json.loads(path.read_bytes())
            if (
                isinstance(stored, dict)
                and stored.get("claimed_by") == owner
                and not stored.get("generation_id")
            ):
                path.unlink()
        except Exception:  # noqa: S110 - a claim left behind makes the next run wait, then say so
            pass

    def record(self, key: str, owner: str, generation_id: str) -> None:
        """Write the generation this run paid for into its own record.

        :raises KlingFxRegistryError: the store failed.
        """
        body = json.dumps({"generation_id": generation_id, "claimed_by": owner, "recorded_at": time.time()})
        try:
            self._path(key).write_bytes(body.encode())
        except Exception as exc:
            raise KlingFxRegistryError(f"could not write to the generation registry: {exc!r}"[:500]) from None

    def _wait_for_generation(self, key: str, owner: str) -> dict[str, Any] | None:
        path = self._path(key)
        give_up = self._clock() + CLAIM_WAIT_SECONDS
        while True:
            try:
                stored = json.loads(path.read_bytes())
            except Exception as exc:
                raise KlingFxRegistryError(f"could not read the generation registry: {exc!r}"[:500]) from None
            if isinstance(stored, dict) and stored.get("generation_id"):
                return stored
            if isinstance(stored, dict) and stored.get("claimed_by") == owner:
                return None  # an earlier try of this very task claimed it: its retry carries on
            if self._clock() >= give_up:
                claimer = stored.get("claimed_by") if isinstance(stored, dict) else "another run"
                raise KlingFxRegistryError(
                    f"{claimer} claimed these photos in the generation registry but recorded no "
                    f"generation within {CLAIM_WAIT_SECONDS:.0f}s; it may have died while paying. Not "
                    f"paying again: if the AI/ML API dashboard shows no generation made then, delete "
                    f"{path} and retry"
                )
            self._sleep(CLAIM_POLL_SECONDS)

    def _create(self, path: ObjectStoragePath, body: bytes) -> bool:
        """Write ``body`` to ``path`` unless something is there; True when this call wrote it."""
        protocol = path.protocol
        if protocol in ("file", "local"):
            os.makedirs(os.path.dirname(path.path), exist_ok=True)
            try:
                fd = os.open(path.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as fh:
                fh.write(body)
            return True
        # From the URL, not path.bucket/path.path: on Airflow 3.1 those keep the "conn_id@".
        parts = urlsplit(str(path))
        bucket, key = parts.netloc.rpartition("@")[2], parts.path.lstrip("/")
        conn_id = storage_conn_id(path)
        if protocol == "s3":
            from airflow.providers.amazon.aws.hooks.s3 import S3Hook
            from botocore.exceptions import ClientError

            try:
                S3Hook(aws_conn_id=conn_id).get_conn().put_object(
                    Bucket=bucket, Key=key, Body=body, IfNoneMatch="*", ContentType="application/json"
                )
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in (
                    "PreconditionFailed",
                    "ConditionalRequestConflict",
                ):
                    return False
                raise
            return True
        from airflow.providers.google.cloud.hooks.gcs import GCSHook
        from google.api_core.exceptions import PreconditionFailed

        blob = GCSHook(gcp_conn_id=conn_id or "google_cloud_default").get_conn().bucket(bucket).blob(key)
        try:
            blob.upload_from_string(body, content_type="application/json", if_generation_match=0)
        except PreconditionFailed:
            return False
        return True
