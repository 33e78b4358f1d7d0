"""What the views' api-server may read: the one place the trust model is enforced.

The views show files a task saved (the video, its GIF and poster, the photos), and the task instance's
XComs say where they are. An XCom is written by task code or, through the REST API, by any user with
XCom write access, and the api-server runs with its own disk and connections: so the api-server
reads nothing because an XCom names it. It reads only

* under the prefixes an admin lists in ``[klingfx] views_read_prefixes`` (empty by default: then the
  views play the vendor's copy of a video and show no stored picture), matched after normalising
  (:mod:`airflow_provider_klingfx.locations`): no ``..``, no symbolic link leading out, regular
  files only, nothing under /proc, /sys or /dev; an object store is read with the connection the
  *prefix* names, never one an XCom names;
* what its bytes say it is: MP4/MOV (an ``ftyp`` box) as a video, GIF as a GIF, JPEG/PNG as a
  picture. Anything else is refused before a byte of it is sent.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal

from airflow_provider_klingfx.images import MAX_IMAGE_BYTES
from airflow_provider_klingfx.locations import (
    Location,
    LocationError,
    find_prefix,
    parse_location,
    parse_prefixes,
    resolve_local,
)

#: The config section and options (also declared in provider info, so ``airflow config list`` shows them).
SECTION: Final = "klingfx"
OPTION_ENABLED: Final = "views_enabled"
OPTION_PREFIXES: Final = "views_read_prefixes"

Kind = Literal["video", "gif", "picture"]
#: The media types each kind may be served as, by what the first bytes say.
_SERVED_AS: Final[dict[Kind, tuple[str, ...]]] = {
    "video": ("video/mp4", "video/quicktime"),
    "gif": ("image/gif",),
    "picture": ("image/jpeg", "image/png"),
}
#: Pictures (photos, posters, GIFs) larger than this are not served: they are thumbnails.
MAX_PICTURE_BYTES: Final = 5 * MAX_IMAGE_BYTES
_HEAD: Final = 16


class NotServed(Exception):
    """The api-server will not read this file; the message says why, in words for the page."""


def views_enabled() -> bool:
    """``[klingfx] views_enabled`` (default True): False leaves the views out of Airflow's UI."""
    from airflow.configuration import conf

    return conf.getboolean(SECTION, OPTION_ENABLED, fallback=True)


def read_prefixes() -> tuple[Location, ...]:
    """The prefixes of ``[klingfx] views_read_prefixes`` (read at each call: it is a few strings).

    :raises NotServed: the option holds an unusable entry (nothing is read until it is fixed).
    """
    from airflow.configuration import conf

    raw = conf.get(SECTION, OPTION_PREFIXES, fallback="") or ""
    try:
        return parse_prefixes(raw)
    except LocationError as exc:
        raise NotServed(f"[{SECTION}] {OPTION_PREFIXES} has an unusable entry ({exc})") from None


def _allowed(url: str, prefixes: tuple[Location, ...]) -> tuple[Location, Location]:
    try:
        location = parse_location(url)
    except LocationError as exc:
        raise NotServed(f"not a location the views read ({exc})") from None
    prefix = find_prefix(location, prefixes, same_connection=False)
    if prefix is None:
        setting = f"[{SECTION}] {OPTION_PREFIXES}"
        if not prefixes:
            raise NotServed(f"the api-server reads no saved files: {setting} is empty")
        raise NotServed(f"it is outside {setting}")
    return location, prefix


def may_read(url: str | None) -> str | None:
    """Why the api-server would not read ``url``, or None if a prefix allows it (no I/O).

    The pages ask this to choose what to show; the media routes still check everything again.

    :param url: where a task saved a file, as its XCom says.
    """
    if not url:
        return "nothing was saved"
    try:
        _allowed(url, read_prefixes())
    except NotServed as exc:
        return str(exc)
    return None


def sniff(head: bytes) -> str | None:
    """The media type of a file by its first bytes, for the kinds the views serve; None otherwise.

    :param head: at least the first 12 bytes.
    """
    if head[4:8] == b"ftyp":
        return "video/quicktime" if head[8:12] == b"qt  " else "video/mp4"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    return None


@dataclass
class Media:
    """An open file the views may serve.

    :param size: its size in bytes.
    :param media_type: what its bytes say it is.
    """

    size: int
    media_type: str
    _fh: Any

    def chunks(self, start: int, end: int, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """Bytes ``start`` to ``end`` (inclusive), then close the file."""
        try:
            self._fh.seek(start)
            left = end - start + 1
            while left > 0:
                chunk = self._fh.read(min(chunk_size, left))
                if not chunk:
                    break
                left -= len(chunk)
                yield chunk
        finally:
            self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._fh.close()


def open_media(url: str, kind: Kind) -> Media:
    """Open a file a task saved, if the trust model allows it (see the module docstring).

    :param url: where the XCom says it is.
    :param kind: what the route serves: ``video``, ``gif`` or ``picture``.
    :raises NotServed: saying why not (outside the prefixes, missing, not a regular file, not the
        kind of file the route serves, too large for a picture).
    """
    location, prefix = _allowed(url, read_prefixes())
    media = _open_local(location, prefix) if location.is_local else _open_stored(location, prefix)
    try:
        media.media_type = sniff(media._fh.read(_HEAD)) or ""
        if media.media_type not in _SERVED_AS[kind]:
            raise NotServed(f"it is not a {'video' if kind == 'video' else kind} by its content")
        if kind != "video" and media.size > MAX_PICTURE_BYTES:
            raise NotServed("it is too large to show")
    except BaseException:
        media.close()
        raise
    return media


def _open_local(location: Location, prefix: Location) -> Media:
    try:
        real = resolve_local(location, prefix)
        before = os.stat(real)
        if not stat.S_ISREG(before.st_mode):
            raise NotServed("it is not a regular file")
        # O_NONBLOCK: nothing (a FIFO swapped in after the check) can make the open wait; the fstat
        # then proves the file opened is the regular file that was checked.
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except LocationError as exc:
        raise NotServed(str(exc)) from None
    except FileNotFoundError:
        raise NotServed("the file is not on the api-server's machine (saved on a worker's disk?)") from None
    except OSError as exc:
        raise NotServed(f"it cannot be read ({type(exc).__name__})") from None
    after = os.fstat(fd)
    if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino) or not stat.S_ISREG(after.st_mode):
        os.close(fd)
        raise NotServed("it changed while it was opened")
    return Media(size=after.st_size, media_type="", _fh=os.fdopen(fd, "rb"))


def _open_stored(location: Location, prefix: Location) -> Media:
    from airflow.sdk import ObjectStoragePath

    # The prefix's connection, whatever connection the XCom's URL names.
    user = f"{prefix.conn_id}@" if prefix.conn_id else ""
    path = ObjectStoragePath(f"{location.scheme}://{user}{location.host}{location.path}")
    try:
        info = path.fs.info(path.path)
        if info.get("type") != "file":
            raise NotServed("it is not a file")
        fh = path.open("rb")
    except NotServed:
        raise
    except FileNotFoundError:
        raise NotServed("the object is gone") from None
    except Exception as exc:
        raise NotServed(f"it cannot be read ({type(exc).__name__})") from None
    return Media(size=int(info.get("size") or 0), media_type="", _fh=fh)
