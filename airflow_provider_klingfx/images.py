"""Kling's published limits for effects photos, checked from the first bytes of a photo.

One implementation of the rules, used by the operator before any paid call (on storage and local
photos always, on http(s) URLs when asked) and by the emulator, which fails a generation whose
photo breaks them as the vendor does. Pillow reads only the header: the format is known by content,
never by the file's name, and the pixel size without decoding the image.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Final

from airflow_provider_klingfx.domain import KlingFxInvalidInputError

#: The largest photo Kling takes for effects: "cannot exceed 10MB", 10,000,000 bytes (not MiB).
MAX_IMAGE_BYTES: Final = 10_000_000
#: The shortest side Kling takes, in pixels.
MIN_IMAGE_SIDE: Final = 300
#: The most elongated photo Kling takes: long side / short side (1:2.5 to 2.5:1).
MAX_ASPECT_RATIO: Final = 2.5
#: Pillow's names for the formats Kling takes. MPO is how Pillow names the JPEG files some phones
#: and cameras write (a JPEG with a second, embedded picture); the API sees a JPEG.
ACCEPTED_FORMATS: Final = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png"}
#: How much of a photo is read first to find its header. A JPEG's pixel size follows its EXIF and
#: ICC segments, which phones make tens of KB long; a longer header is read in full (see callers).
HEADER_BYTES: Final = 64 * 1024

#: ``rule`` values of :class:`KlingFxImageError`.
RULE_FORMAT: Final = "format"
RULE_SIZE: Final = "size"
RULE_SIDE: Final = "side"
RULE_ASPECT: Final = "aspect"
RULE_UNREADABLE: Final = "unreadable"
RULE_LOCAL: Final = "local"
RULE_LOCATION: Final = "location"
RULE_PRESIGN: Final = "presign"


class KlingFxImageError(KlingFxInvalidInputError):
    """A photo breaks one of Kling's limits, or cannot be sent; nothing was sent to the API.

    :param position: 1-based position of the photo in ``image_urls``.
    :param shown: the photo as it may be shown (``scheme://host/path``, never a signature).
    :param rule: which rule it broke (``format``, ``size``, ``side``, ``aspect``, ``unreadable``,
        ``local``, ``location``, ``presign``).
    :param message: what is wrong and what to do.
    """

    def __init__(self, position: int, shown: str, rule: str, message: str) -> None:
        self.position = position
        self.shown = shown
        self.rule = rule
        super().__init__(f"image {position} ({shown}) {message}")


@dataclass(frozen=True)
class ImageInfo:
    """What the header of an accepted photo says.

    :param format: Pillow's format name (``JPEG``, ``MPO`` or ``PNG``).
    :param width: width in pixels.
    :param height: height in pixels.
    :param size: the file's size in bytes, when known.
    """

    format: str
    width: int
    height: int
    size: int | None

    @property
    def mime_type(self) -> str:
        """The photo's media type, as a ``data:`` URI names it."""
        return ACCEPTED_FORMATS[self.format]

    def describe(self) -> str:
        """E.g. ``JPEG 1024x768, 312 KB``."""
        if self.size is None:
            size = ""
        elif self.size < 1_000_000:
            size = f", {self.size / 1e3:.0f} KB"
        else:
            size = f", {self.size / 1e6:.1f} MB"
        return f"{'JPEG' if self.format == 'MPO' else self.format} {self.width}x{self.height}{size}"


class HeaderTooShortError(Exception):
    """The bytes read end before the header does: read more of the photo and ask again."""


def check_size(size: int | None, position: int, shown: str) -> None:
    """Reject a photo larger than :data:`MAX_IMAGE_BYTES` (``None``: size unknown, not checked).

    :raises KlingFxImageError: rule ``size``.
    """
    if size is not None and size > MAX_IMAGE_BYTES:
        raise KlingFxImageError(
            position,
            shown,
            RULE_SIZE,
            f"is {size:,} bytes: Kling takes photos of at most 10 MB (10,000,000 bytes); "
            "save it smaller (e.g. as a JPEG at quality 90)",
        )


def check_image(head: bytes, size: int | None, position: int, shown: str, *, complete: bool) -> ImageInfo:
    """Check a photo against Kling's limits from its first bytes.

    :param head: the photo's first bytes (at least its header; the whole file is fine).
    :param size: the whole file's size in bytes, when known.
    :param position: 1-based position of the photo, for the message.
    :param shown: the photo as it may be shown, for the message.
    :param complete: whether ``head`` is the whole file. If it is not and the header is longer than
        ``head``, :class:`HeaderTooShortError` asks the caller for more.
    :raises KlingFxImageError: naming the photo and the rule it breaks, in one line.
    :raises HeaderTooShortError: ``head`` ends inside the header and is not the whole file.
    """
    from PIL import Image, UnidentifiedImageError

    check_size(size, position, shown)
    try:
        with Image.open(io.BytesIO(head)) as image:
            fmt = image.format or "unknown"
            width, height = image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        # Cut inside its header, a JPEG or PNG is "unidentified" too: only the whole file tells.
        if not complete:
            raise HeaderTooShortError from None
        if isinstance(exc, UnidentifiedImageError):
            raise KlingFxImageError(
                position,
                shown,
                RULE_FORMAT,
                f"is not an image Kling takes ({_sniff(head)}): give a JPEG or PNG",
            ) from None
        raise KlingFxImageError(
            position, shown, RULE_UNREADABLE, f"is not a readable image ({exc}): give a JPEG or PNG"
        ) from None
    if fmt not in ACCEPTED_FORMATS:
        raise KlingFxImageError(
            position, shown, RULE_FORMAT, f"is a {fmt} image: Kling takes JPEG or PNG; convert it"
        )
    short, long = sorted((width, height))
    if short < MIN_IMAGE_SIDE:
        raise KlingFxImageError(
            position,
            shown,
            RULE_SIDE,
            f"is {width}x{height} px: Kling takes photos at least {MIN_IMAGE_SIDE} px on each side",
        )
    if long > MAX_ASPECT_RATIO * short:
        raise KlingFxImageError(
            position,
            shown,
            RULE_ASPECT,
            f"is {width}x{height} px, an aspect ratio of {long / short:.2f}:1: Kling takes between "
            "1:2.5 and 2.5:1; crop it",
        )
    return ImageInfo(format=fmt, width=width, height=height, size=size)


def _sniff(head: bytes) -> str:
    # What the first bytes look like, for a rejected file: enough to see an HTML error page or a
    # HEIC photo for what it is.
    stripped = head.lstrip()[:64].lower()
    if stripped.startswith((b"<!doctype html", b"<html", b"<?xml")):
        return "it looks like an HTML or XML page"
    if head[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftyphevc"):
        return "it looks like a HEIC photo"
    if not head:
        return "it is empty"
    return f"its first bytes are {head[:8].hex(' ')}"
