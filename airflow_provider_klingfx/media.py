"""Keeping generated videos: stream them to any Airflow object storage path.

The vendor's CDN URL is not a place to keep a video (its lifetime is undocumented), so the
operator's ``output_path`` copies it, streamed chunk by chunk, to ``file://``, ``s3://``, ``gs://``...
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from airflow_provider_klingfx.domain import KlingFxError, KlingFxMalformedResponseError, Video

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
        super().__init__(
            f"could not save the video of generation {generation_id} to {destination}: {cause}. "
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
    """Stream ``video`` to ``output_path``, checking its size; retry transient failures.

    :param hook: supplies the HTTP session, timeouts and retry policy.
    :param generation_id: for messages.
    :param video: the completed generation's video.
    :param output_path: destination (see :func:`as_storage_path`).
    :param log: where progress is logged.
    :param chunk_size: bytes per chunk; memory use stays around this, whatever the video's size.
    :returns: the destination as a URL string (what XCom ``output_path`` holds).
    :raises KlingFxDownloadError: when it keeps failing.
    """
    log = log or logging.getLogger(__name__)
    dest = as_storage_path(output_path)
    if dest.protocol in ("file", "local", ""):
        dest.parent.mkdir(parents=True, exist_ok=True)

    def attempt() -> int:
        written = 0
        with dest.open("wb") as fh:
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
    try:
        size = retrying(attempt)
    except KlingFxError as exc:
        raise KlingFxDownloadError(generation_id, str(dest), exc) from None
    log.info("Saved the video of generation %s to %s (%d bytes)", generation_id, dest, size)
    return str(dest)
