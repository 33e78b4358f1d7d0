"""Where a file may be read from: allow-lists of locations, matched after normalising.

One implementation for the two places that read a location someone else chose:

* the api-server's views read saved videos, previews and photos only under the prefixes an admin
  lists in ``[klingfx] views_read_prefixes`` (a task or an XCom names the file, and neither is
  trusted by the api-server);
* the operator's ``allowed_photo_locations`` limits which storage connections, buckets and folders a
  photo given by a DAG-run Param may come from (whoever triggers the DAG chooses the Param).

A location is ``scheme://[conn_id@]bucket/path`` for object storage, ``https://host[:port]/path`` for
a URL, and ``file:///path`` (or ``/path``) for a local file. Matching is by whole path segments
(``s3://media/videos/`` covers ``s3://media/videos/a.mp4``, not ``s3://media/videos-old/a.mp4``), after
refusing anything that could step outside a prefix once a filesystem or store resolves it: ``.`` and
``..`` segments (also percent-encoded), backslashes, control characters. Symbolic links are the
caller's to resolve (:func:`resolve_local`), as only the machine that reads the file can.

Pure and import-light: the DAG processor imports it through the operator.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote, urlsplit

#: Schemes of local files.
LOCAL_SCHEMES: Final = frozenset({"file", "local"})
#: Schemes of URLs (matched by host and path; a query is ignored).
URL_SCHEMES: Final = frozenset({"http", "https"})
#: Where no file worth showing lives, whatever a prefix says: process and kernel state, devices.
PSEUDO_FILESYSTEMS: Final = ("/proc", "/sys", "/dev")


class LocationError(ValueError):
    """A location that cannot be matched safely; the message says why."""


@dataclass(frozen=True)
class Location:
    """A location, normalised.

    :param scheme: ``file``, ``s3``, ``gs``, ``https``, ...
    :param conn_id: the Airflow connection named in a storage location (``s3://conn_id@bucket/...``),
        else None (the store's default connection).
    :param host: the bucket of a storage location, ``host[:port]`` of a URL, ``""`` for a local file.
    :param path: the absolute path, starting with ``/``; a prefix's ends with ``/``.
    """

    scheme: str
    conn_id: str | None
    host: str
    path: str

    def __str__(self) -> str:
        user = f"{self.conn_id}@" if self.conn_id else ""
        return f"{self.scheme}://{user}{self.host}{self.path}"

    @property
    def is_local(self) -> bool:
        """A file on the local disk of the machine that reads it."""
        return self.scheme in LOCAL_SCHEMES

    def covers(self, other: Location, *, same_connection: bool = True) -> bool:
        """Whether ``other`` lies under this prefix.

        :param other: a normalised location.
        :param same_connection: also require the same storage connection (for photos: the connection
            decides whose credentials presign). The api-server passes False: it reads with the
            prefix's own connection whatever connection the location names.
        """
        if (self.scheme, self.host) != (other.scheme, other.host):
            return False
        if same_connection and self.conn_id != other.conn_id:
            return False
        return other.path.startswith(self.path)


def parse_location(text: str, *, prefix: bool = False) -> Location:
    """Normalise a location, refusing any that could step outside a prefix.

    :param text: ``scheme://[conn_id@]bucket/path``, ``https://host/path``, ``file:///path`` or
        ``/path``.
    :param prefix: parse it as a folder: its path gets a trailing ``/`` (``s3://media/videos`` covers
        ``s3://media/videos/a.mp4``, never ``s3://media/videos-old/...``).
    :raises LocationError: saying what is wrong.
    """
    raw = str(text).strip()
    if not raw:
        raise LocationError("empty location")
    if any(ord(ch) < 32 or ch == "\x7f" for ch in raw) or "\\" in raw:
        raise LocationError("control characters or backslashes")
    if raw.startswith("/"):
        raw = "file://" + raw
    parts = urlsplit(raw)
    scheme = parts.scheme.lower()
    if not scheme or "://" not in raw:
        raise LocationError("not a URL or an absolute path")
    path = parts.path or "/"
    # Percent-decoded too: a store or a web server may decode %2e%2e into ".." and %2f into "/".
    for form in (path, unquote(path)):
        if "\\" in form or any(segment in (".", "..") for segment in form.split("/")):
            raise LocationError("'.' or '..' path segments")
    conn_id: str | None = None
    if scheme in LOCAL_SCHEMES:
        if parts.netloc not in ("", "localhost"):
            raise LocationError("a file:// location names no host: file:///absolute/path")
        host = ""
        scheme = "file"
    elif scheme in URL_SCHEMES:
        if parts.username is not None or parts.password is not None:
            raise LocationError("credentials in a URL")
        try:
            port = parts.port
        except ValueError:
            raise LocationError("an invalid port") from None
        host = (parts.hostname or "").lower()
        if not host:
            raise LocationError("a URL without a host")
        if port is not None and port != {"http": 80, "https": 443}[scheme]:
            host = f"{host}:{port}"
    else:
        user, _, host = parts.netloc.rpartition("@")
        conn_id = user or None
        if not host:
            raise LocationError(f"a {scheme}:// location without a bucket")
    if prefix and not path.endswith("/"):
        path += "/"
    return Location(scheme=scheme, conn_id=conn_id, host=host, path=path)


def parse_prefixes(entries: Iterable[str] | str | None) -> tuple[Location, ...]:
    """Parse a list of prefixes (or one comma-separated string, as a config option holds them).

    :param entries: the prefixes.
    :raises LocationError: naming the entry that is unusable.
    """
    if entries is None:
        return ()
    items = entries.split(",") if isinstance(entries, str) else list(entries)
    parsed = []
    for item in items:
        if not str(item).strip():
            continue
        try:
            parsed.append(parse_location(str(item), prefix=True))
        except LocationError as exc:
            raise LocationError(f"{str(item).strip()!r}: {exc}") from None
    return tuple(parsed)


def find_prefix(
    location: Location, prefixes: Iterable[Location], *, same_connection: bool = True
) -> Location | None:
    """The first prefix that covers ``location``, or None.

    :param location: a normalised location.
    :param prefixes: normalised prefixes.
    :param same_connection: see :meth:`Location.covers`.
    """
    return next((p for p in prefixes if p.covers(location, same_connection=same_connection)), None)


def resolve_local(location: Location, prefix: Location) -> str:
    """The real path of a local file under ``prefix``, with every symbolic link resolved.

    :param location: a local location that ``prefix`` covers.
    :param prefix: the local prefix.
    :returns: the resolved path, still under the resolved prefix and outside
        :data:`PSEUDO_FILESYSTEMS`.
    :raises LocationError: a link leads out of the prefix, or into process or device state.
    """
    real = os.path.realpath(location.path)
    base = os.path.realpath(prefix.path).rstrip("/") + "/"
    if not real.startswith(base):
        raise LocationError(f"{location} leads out of {prefix} (a symbolic link?)")
    if any(real == p or real.startswith(p + "/") for p in PSEUDO_FILESYSTEMS):
        raise LocationError(f"{location} is process or device state, not a file")
    return real
