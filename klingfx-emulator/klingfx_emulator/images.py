"""The input photos of a generation: downloaded (or taken from a ``data:`` URI) and checked.

Every photo the emulator obtains is checked, with ``check_images`` (the default), by
:func:`airflow_provider_klingfx.images.check_image`, the code the operator runs before paying: one
implementation of Kling's limits (JPEG or PNG by content, at most 10 MB, each side at least 300 px,
aspect ratio within 2.5:1), shared on purpose. A photo that cannot be downloaded at all is not
checked: it gets the placeholder frame, so offline tests with unreachable example URLs keep working.

Photos are downloaded with their URLs sent byte for byte, so presigned URLs (S3, GCS...) work as
they do with the vendor; they reach the logs only as ``redact_url`` shows them (never a query, a
presigned URL's signature, nor user info).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import ClientError
from yarl import URL

from airflow_provider_klingfx.domain import redact_url, redact_urls
from airflow_provider_klingfx.images import HeaderTooShortError, KlingFxImageError, check_image
from klingfx_emulator.state import EmulatorState, GenerationRecord, ImageProblem
from klingfx_emulator.validation import show_url

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Download:
    """What the emulator got of one input photo.

    :param data: the photo, or only its first bytes when it is over ``max_image_bytes``.
    :param size: its size in bytes: the announced ``Content-Length``, else the bytes read (then a
        lower bound when ``complete`` is false: the download stopped one byte past the limit).
    :param complete: whether ``data`` is the whole photo.
    """

    data: bytes
    size: int
    complete: bool


async def download_image(state: EmulatorState, url: str) -> Download | None:
    """Download one input image, reading at most ``max_image_bytes`` + 1 bytes of it.

    :param state: the emulator's state (its HTTP client, download slots and config).
    :param url: the photo's URL, sent byte for byte.
    :returns: what was read (see :class:`Download`), or None if it can't be had at all (not
        http(s), unreachable, an HTTP status other than 200, a timeout): the render uses a
        placeholder then, and no rule is checked.
    """
    if state.http is None or urlsplit(url).scheme not in ("http", "https"):
        return None
    limit = state.config.max_image_bytes
    try:
        # encoded=True: the URL goes out byte for byte as given (validated as a URI at create), as
        # a presigned URL must; yarl would otherwise rewrite escapes in its query (%2F to /).
        target = URL(url, encoded=True)
        async with state.download_slots, state.http.get(target, allow_redirects=True) as resp:
            if resp.status != 200:
                raise ValueError(f"HTTP {resp.status}")
            announced = resp.content_length
            if announced is not None and announced > limit:
                return Download(b"", announced, complete=False)  # not a byte read
            data = bytearray()
            while len(data) <= limit:
                chunk = await resp.content.read(min(64 * 1024, limit + 1 - len(data)))
                if not chunk:
                    break
                data += chunk
            return Download(bytes(data), len(data), complete=len(data) <= limit)
    except (ClientError, asyncio.TimeoutError, ValueError, OSError) as exc:
        # Client errors may quote the URL, query included (a presigned URL's signature): scrubbed.
        log.warning(
            "input image %s unusable (%s); using a placeholder frame",
            redact_url(url),
            redact_urls(str(exc) or type(exc).__name__),
        )
        return None


async def _obtain_photo(state: EmulatorState, gen: GenerationRecord, index: int) -> Download | None:
    """The photo at ``index``: a data: URI's decoded bytes (handed over once), else downloaded."""
    data = gen.data_photos.pop(index, None)
    if data is not None:
        return Download(data, len(data), complete=True)
    return await download_image(state, gen.image_urls[index])


async def prepare_photos(state: EmulatorState, gen: GenerationRecord) -> None:
    """Obtain the photos and, with ``check_images``, check them against Kling's limits.

    Sets ``gen.inputs`` (the photos to render, None for a placeholder) or, when a photo breaks a
    rule, ``gen.image_error`` (the first such photo in request order; nothing is kept then).

    :param state: the emulator's state.
    :param gen: the generation whose photos to obtain.
    """
    got = await asyncio.gather(*(_obtain_photo(state, gen, i) for i in range(len(gen.image_urls))))
    gen.data_photos.clear()
    limit = state.config.max_image_bytes
    photos: list[bytes | None] = []
    for index, (url, photo) in enumerate(zip(gen.image_urls, got, strict=True)):
        if photo is None:
            photos.append(None)
            continue
        if photo.complete and index < len(gen.image_sha256):
            gen.image_sha256[index] = hashlib.sha256(photo.data).hexdigest()
        shown = show_url(url)
        if state.config.check_images:
            try:
                check_image(photo.data, photo.size, index + 1, shown=shown, complete=photo.complete)
            except KlingFxImageError as exc:
                gen.image_error = ImageProblem(index, exc.rule, str(exc), exc.shown)
                log.info("generation %s ends in error: %s", gen.id, exc)
                return
            except HeaderTooShortError:
                pass  # over the download limit, header cut short: the placeholder below
        if not photo.complete:
            log.warning(
                "input image %s is over the emulator's %d byte download limit (max_image_bytes); "
                "using a placeholder frame",
                shown,
                limit,
            )
            photos.append(None)
        else:
            photos.append(photo.data)
    gen.inputs = tuple(photos)
