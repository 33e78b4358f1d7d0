"""Keeping generated videos: stream them to any Airflow object storage path.

The vendor's CDN URL is not a place to keep a video (its lifetime is undocumented), so the
operator's ``output_path`` copies it, streamed chunk by chunk, to ``file://``, ``s3://``, ``gs://``...
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from typing import TYPE_CHECKING, Any

from airflow_provider_klingfx.domain import KlingFxError, KlingFxMalformedResponseError, Video, redact_urls

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_klingfx.hooks.klingfx import KlingFxHook


class KlingFxDownloadError(KlingFxError):
    """The video could not be saved. The generation is done and paid: fetch it again, don't regenerate.

    :param generation_id: the vendor's generation id.
    :param destination: where it was to be saved.
    """

    def __init__(self, generation_id: str, destination: str, cause: Exception) -> None:
        self.generation_id = generation_id
        self.destination = destination
        why = redact_urls(f"{type(cause).__name__}: {cause}"[:500])
        super().__init__(
            f"could not save the video of generation {generation_id} to {destination}: {why}. "
            "The generation itself succeeded; download it again without paying with "
            f"KlingFxHook().get_generation({generation_id!r}) and save_video(...), or a "
            "KlingFxGenerationSensor on that id"
        )


def as_storage_path(output_path: str | ObjectStoragePath) -> ObjectStoragePath:
    """An ``ObjectStoragePath`` for a URL (``s3://...``), a ``file://`` URL or a plain local path.

    :param output_path: the destination.
    """
    from airflow.sdk import ObjectStoragePath

    if isinstance(output_path, ObjectStoragePath):
        return output_path
    text = str(output_path).strip()
    if "://" not in text:
        text = "file://" + os.path.abspath(text)
    return ObjectStoragePath(text)


def save_video(
    hook: KlingFxHook,
    generation_id: str,
    video: Video,
    output_path: str | ObjectStoragePath,
    *,
    log: logging.Logger | Any | None = None,
    chunk_size: int = 1 << 20,
) -> str:
    """Stream ``video`` to ``output_path``, atomically: whole and size-checked, or not at all.

    The bytes go to a temporary name beside the destination (``.<name>.<random>.part``) and are
    moved into place only after the size check, so a reader never sees half a video, on
    ``file://`` as on S3; the temporary file is deleted on failure. Transient HTTP failures are
    retried with the hook's policy; a storage error is not.

    :param hook: supplies the HTTP session, timeouts and retry policy.
    :param generation_id: for messages.
    :param video: the completed generation's video.
    :param output_path: destination (see :func:`as_storage_path`).
    :param log: where progress is logged.
    :param chunk_size: bytes per chunk; memory use stays around this, whatever the video's size.
    :returns: the destination as a URL string (what XCom ``output_path`` holds).
    :raises KlingFxDownloadError: naming the generation, whatever failed (HTTP or storage).
    """
    log = log or logging.getLogger(__name__)
    dest: ObjectStoragePath | None = None
    part: ObjectStoragePath | None = None
    try:
        dest = as_storage_path(output_path)
        if dest.protocol in ("file", "local", ""):
            dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:12]}.part"

        def attempt() -> int:
            assert part is not None
            written = 0
            # "wb" starts a retried attempt afresh on the same temporary name.
            with part.open("wb") as fh:
                for chunk in hook.iter_video(video.url, chunk_size=chunk_size):
                    fh.write(chunk)
                    written += len(chunk)
            if video.file_size is not None and written != video.file_size:
                raise KlingFxMalformedResponseError(
                    f"downloaded {written} bytes but the API announced {video.file_size}"
                )
            return written

        retrying = hook.retry_policy.retrying(
            idempotent=True, what=f"download of generation {generation_id}", sleep=hook._sleep, logger=log
        )
        size = retrying(attempt)
        part.rename(dest)
    except BaseException as exc:
        # One clean-up for every way out, execution_timeout (a BaseException) included.
        if part is not None:
            _remove_quietly(part)
        if not isinstance(exc, Exception):
            raise
        shown = str(dest) if dest is not None else str(output_path)
        raise KlingFxDownloadError(generation_id, shown, exc) from None
    log.info("Saved the video of generation %s to %s (%d bytes)", generation_id, dest, size)
    return str(dest)


def _remove_quietly(path: ObjectStoragePath) -> None:
    # Cleaning up after a failure must not hide the failure itself.
    with contextlib.suppress(Exception):
        if path.exists():
            path.unlink()
