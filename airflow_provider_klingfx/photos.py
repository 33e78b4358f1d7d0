"""Photos from where users keep them, checked before anything is paid for.

The API downloads each photo itself, so what it gets must be a URL it can fetch. This module turns
each photo of a request into one:

* an http(s) URL is sent as given (and, when asked, checked first from its header, read with a
  ranged GET);
* an object-storage path (``s3://[conn_id@]bucket/key``, ``gs://…``, any ``ObjectStoragePath``) is
  checked, then sent as a short-lived presigned URL made by the storage provider's own hook (the
  Amazon provider's ``S3Hook``, the Google provider's ``GCSHook``), or by the store's ``sign`` when
  it has one;
* a local file, or a store that cannot presign, is checked, then sent inline as a base64 ``data:``
  URI, only when the caller opts in: the vendor documents base64 photos for its sibling
  image-to-video model ("works in most cases"), not for the effects models.

A presigned URL is a credential: it is never logged, raised or stored. Photos are shown as
``scheme://host/path`` (:func:`~airflow_provider_klingfx.domain.redact_url`).
"""

from __future__ import annotations

import base64
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from airflow_provider_klingfx._api import is_transient
from airflow_provider_klingfx.domain import (
    MAX_PRESIGN_SECONDS,
    PHOTO_LOCAL,
    PHOTO_URL,
    EffectRequest,
    KlingFxAPIError,
    KlingFxError,
    KlingFxInvalidInputError,
    KlingFxUnsafeUrlError,
    photo_kind,
    redact_url,
    redact_urls,
    storage_conn_id,
)
from airflow_provider_klingfx.images import (
    HEADER_BYTES,
    MAX_IMAGE_BYTES,
    RULE_LOCAL,
    RULE_LOCATION,
    RULE_PRESIGN,
    RULE_UNREADABLE,
    HeaderTooShortError,
    ImageInfo,
    KlingFxImageError,
    check_image,
    check_size,
)
from airflow_provider_klingfx.locations import (
    Location,
    LocationError,
    find_prefix,
    parse_location,
    parse_prefixes,
    resolve_local,
)

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_klingfx.hooks.klingfx import KlingFxHook

#: How long a presigned photo URL stays valid by default: the API downloads the photos when the
#: generation starts, which a busy queue can delay well past the two minutes a render takes.
DEFAULT_PRESIGN_SECONDS: Final = 3600


@dataclass(frozen=True)
class PreparedPhoto:
    """One photo, ready to send.

    :param position: 1-based position in the request.
    :param shown: the photo as it may be shown (never a signature).
    :param url: what the API gets: the URL as given, a presigned URL or a ``data:`` URI. A
        credential when presigned: do not log it.
    :param how: ``as given``, ``presigned`` or ``inline``.
    :param info: what its header says, when it was checked.
    """

    position: int
    shown: str
    url: str = dataclasses.field(repr=False)
    how: str
    info: ImageInfo | None

    def describe(self) -> str:
        """One line for the task log, e.g. ``Photo 1: s3://photos/a.jpg (JPEG 1024x768, 312 KB), sent
        as a presigned URL valid 60 min``."""
        checked = f" ({self.info.describe()})" if self.info else " (not checked)"
        return f"Photo {self.position}: {self.shown}{checked}, {self.how}"


class KlingFxPhotoAccessError(KlingFxError):
    """A photo could not be read or presigned for a reason a retry may fix (network, throttling).

    :param position: 1-based position of the photo.
    :param shown: the photo as it may be shown.
    """

    def __init__(self, position: int, shown: str, cause: BaseException) -> None:
        self.position = position
        self.shown = shown
        why = redact_urls(f"{type(cause).__name__}: {cause}"[:500])
        super().__init__(f"image {position} ({shown}) could not be read: {why}")


def parse_allowed_locations(value: object) -> tuple[Location, ...]:
    """The operator's ``allowed_photo_locations``: a list, or one comma-separated string (as a template
    renders it).

    :raises KlingFxInvalidInputError: an entry is unusable.
    """
    if value is None or value == "":
        return ()
    if not isinstance(value, str | list | tuple):
        raise KlingFxInvalidInputError(
            f"allowed_photo_locations must be a list of locations, got {type(value).__name__}"
        )
    try:
        return parse_prefixes(value)
    except LocationError as exc:
        raise KlingFxInvalidInputError(f"allowed_photo_locations has an unusable entry: {exc}") from None


def require_allowed(request: EffectRequest, allowed: tuple[Location, ...]) -> None:
    """Fail at once for a photo outside ``allowed`` (nothing read, nothing requested).

    Whoever may trigger a DAG chooses its Params; a photo taken from one could name any connection,
    bucket or file the worker can read, which the vendor would then be handed a presigned URL of. A
    photo must lie under one of the locations, with the same storage connection; a local file must
    stay under it once its symbolic links are resolved.

    :param request: the validated request.
    :param allowed: the normalised locations (:func:`parse_allowed_locations`); empty: no limit.
    :raises KlingFxImageError: rule ``location``, naming the photo and the locations allowed.
    """
    if not allowed:
        return
    for position, ref in enumerate(request.image_urls, start=1):
        try:
            location = parse_location(ref)
            prefix = find_prefix(location, allowed)
            if prefix is not None and location.is_local:
                resolve_local(location, prefix)
        except LocationError as exc:
            why = str(exc)
        else:
            if prefix is not None:
                continue
            connection = f" (connection {location.conn_id!r})" if location.conn_id else ""
            why = f"it is not under any of them{connection}"
        raise KlingFxImageError(
            position,
            redact_url(ref),
            RULE_LOCATION,
            f"is not allowed by allowed_photo_locations ({', '.join(map(str, allowed))}): {why}",
        )


def require_sendable(request: EffectRequest, *, inline_base64: bool) -> None:
    """Fail at once for a local photo when inline upload is off: nothing else could send it.

    Called before anything is read or requested, so the task log's one line says what to do.

    :raises KlingFxImageError: rule ``local``.
    """
    if inline_base64:
        return
    for position, ref in enumerate(request.image_urls, start=1):
        if photo_kind(ref) == PHOTO_LOCAL:
            raise KlingFxImageError(
                position,
                redact_url(ref),
                RULE_LOCAL,
                "is a local file, which the API cannot download: put it in object storage "
                "(s3://…, gs://…) or at an http(s) URL, or pass inline_base64_images=True to send it "
                "in the request as base64 (undocumented for the effects models)",
            )


def prepare_photos(
    request: EffectRequest,
    hook: KlingFxHook,
    *,
    inline_base64: bool = False,
    check_urls: bool = False,
    presign_seconds: int = DEFAULT_PRESIGN_SECONDS,
    log: logging.Logger | Any | None = None,
) -> EffectRequest:
    """Check every photo of ``request`` and return the request the API can be sent.

    Nothing is sent to the AI/ML API here: a photo that breaks a rule raises before any paid call.
    Storage and local photos are always checked (JPEG or PNG by content, at most 10 MB, each side
    at least 300 px, aspect ratio between 1:2.5 and 2.5:1); http(s) URLs only with ``check_urls``.

    :param request: a request whose photos are references (see
        :func:`~airflow_provider_klingfx.domain.validate_image_url`).
    :param hook: the klingfx hook: its HTTP session (no key is sent to photo hosts), timeouts and
        retry policy read http(s) photos.
    :param inline_base64: send local photos, and storage photos whose store cannot presign, as
        base64 ``data:`` URIs in the request (undocumented for the effects models).
    :param check_urls: check http(s) photos too, reading only their header (a ranged GET).
    :param presign_seconds: how long presigned URLs stay valid (at most 7 days).
    :param log: where one line per photo is logged (never a presigned URL).
    :returns: the same request with URLs the API can download, in the same order.
    :raises KlingFxImageError: a photo breaks a rule, or cannot be sent as configured.
    :raises KlingFxPhotoAccessError: a photo could not be read for a reason a retry may fix.
    """
    log = log or logging.getLogger(__name__)
    if not 1 <= presign_seconds <= MAX_PRESIGN_SECONDS:
        raise ValueError(
            f"presign_seconds must be between 1 and {MAX_PRESIGN_SECONDS}, got {presign_seconds}"
        )
    require_sendable(request, inline_base64=inline_base64)
    prepared: list[PreparedPhoto] = []
    for position, ref in enumerate(request.image_urls, start=1):
        if photo_kind(ref) == PHOTO_URL:
            photo = _prepare_url(ref, position, hook, check=check_urls)
        else:
            photo = _prepare_stored(
                ref, position, hook, inline_base64=inline_base64, presign_seconds=presign_seconds
            )
        log.info("%s", photo.describe())
        prepared.append(photo)
    return dataclasses.replace(request, image_urls=tuple(p.url for p in prepared))


def _prepare_url(url: str, position: int, hook: KlingFxHook, *, check: bool) -> PreparedPhoto:
    shown = redact_url(url)
    info = _check_url(url, position, shown, hook) if check else None
    return PreparedPhoto(position, shown, url, "sent as given", info)


def _check_url(
    url: str, position: int, shown: str, hook: KlingFxHook, *, presigned_with: str = ""
) -> ImageInfo:
    """Read the header of the photo at ``url`` as the API would download it (a ranged GET, no key
    sent), and check it against Kling's limits.

    :param presigned_with: the storage connection that presigned ``url``, if it did: a URL that does
        not work then means a signing setting is wrong (region, signature version, key).
    :raises KlingFxImageError: the photo breaks a rule, or the URL does not serve it (the API would
        fail alike; no retry).
    :raises KlingFxPhotoAccessError: a failure a retry may fix (network, throttling, 5xx).
    """
    try:
        return _read_checked(lambda n: hook.read_image_head(url, n), position, shown)
    except KlingFxImageError:
        raise
    except KlingFxUnsafeUrlError as exc:
        raise KlingFxImageError(position, shown, RULE_LOCATION, f"is not checked: {exc}") from None
    except KlingFxAPIError as exc:
        if is_transient(exc):
            raise KlingFxPhotoAccessError(position, shown, exc) from None
        if presigned_with:
            raise KlingFxImageError(
                position,
                shown,
                RULE_PRESIGN,
                f"was presigned with connection {presigned_with!r}, but its presigned URL does not work "
                f"(HTTP {exc.status_code}: {exc.vendor_message[:200]}); the API would fail to download it "
                "the same way: check the connection's region and signature settings",
            ) from None
        raise KlingFxImageError(
            position,
            shown,
            RULE_UNREADABLE,
            f"could not be downloaded (HTTP {exc.status_code}); the API downloads it the same way and would "
            "fail too: check the URL, or that it is public or presigned",
        ) from None
    except KlingFxError as exc:
        raise KlingFxPhotoAccessError(position, shown, exc) from None


def _read_checked(
    read: Callable[[int | None], tuple[bytes, int | None, bool]], position: int, shown: str
) -> ImageInfo:
    """Check a photo from its header, reading the rest only when the header is longer.

    :param read: ``read(n)`` returns ``(first n bytes or fewer, total size or None, whether that
        is the whole file)``; ``read(None)`` the whole file (never more than the size limit + 1).
    """
    head, size, complete = read(HEADER_BYTES)
    try:
        return check_image(head, size, position, shown, complete=complete)
    except HeaderTooShortError:
        whole, size, _ = read(None)
        return check_image(whole, size if size is not None else len(whole), position, shown, complete=True)


def _prepare_stored(
    ref: str, position: int, hook: KlingFxHook, *, inline_base64: bool, presign_seconds: int
) -> PreparedPhoto:
    from airflow.sdk import ObjectStoragePath

    shown = redact_url(ref)
    try:
        path = ObjectStoragePath(ref)
        path.fs  # noqa: B018 - the store's filesystem, made from its connection
    except (ValueError, ImportError) as exc:
        raise KlingFxImageError(
            position,
            shown,
            RULE_UNREADABLE,
            f"is in a store this Airflow cannot open ({_why(exc)}): install its provider, e.g. "
            "airflow-provider-klingfx[s3] for s3:// or [gcs] for gs://",
        ) from None
    try:
        size = int(path.stat().st_size)
        check_size(size, position, shown)
        with path.open("rb") as fh:
            head = fh.read(HEADER_BYTES)
            complete = len(head) >= size
            try:
                info = check_image(head, size, position, shown, complete=complete)
            except HeaderTooShortError:
                head += fh.read(MAX_IMAGE_BYTES + 1 - len(head))
                info = check_image(head, size, position, shown, complete=True)
            url = None
            if photo_kind(ref) != PHOTO_LOCAL:
                try:
                    url = _presign(ref, path, presign_seconds)
                except Exception as exc:
                    # Signing is local work on the connection's settings: another try fails alike.
                    raise KlingFxImageError(
                        position,
                        shown,
                        RULE_PRESIGN,
                        f"could not be presigned with connection {_signer(path)!r}: {_why(exc)}; check its "
                        "credentials (a GCS connection needs a service-account key to sign URLs)",
                    ) from None
            if url is None and inline_base64:
                data = head if len(head) >= size else head + fh.read(MAX_IMAGE_BYTES + 1 - len(head))
    except KlingFxImageError:
        raise
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        # Another try would find the same: fail the task, saying which photo.
        raise KlingFxImageError(position, shown, RULE_UNREADABLE, f"cannot be read: {_why(exc)}") from None
    except Exception as exc:
        raise KlingFxPhotoAccessError(position, shown, exc) from None
    if url is not None:
        # The URL the API will get, read as the API will read it: a region or signature mismatch
        # shows here, before paying, not as a generation failed at the vendor.
        info = _check_url(url, position, shown, hook, presigned_with=_signer(path))
        valid = (
            f"{presign_seconds / 3600:g} h"
            if presign_seconds % 3600 == 0
            else f"{presign_seconds / 60:.0f} min"
        )
        return PreparedPhoto(position, shown, url, f"sent as a presigned URL valid {valid}", info)
    if not inline_base64:
        raise KlingFxImageError(
            position,
            shown,
            RULE_LOCAL,
            f"is in a store ({path.protocol}) that cannot make a presigned URL: put it in S3, GCS or at an "
            "http(s) URL, or pass inline_base64_images=True to send it in the request as base64 "
            "(undocumented for the effects models)",
        )
    encoded = base64.b64encode(data).decode("ascii")
    return PreparedPhoto(
        position, shown, f"data:{info.mime_type};base64,{encoded}", "sent inline as base64", info
    )


def _signer(path: ObjectStoragePath) -> str:
    """The connection that presigns ``path``'s URLs, as a user would name it."""
    return storage_conn_id(path) or f"{path.protocol} default"


def _why(exc: BaseException) -> str:
    return redact_urls(f"{type(exc).__name__}: {exc}"[:300])


def _presign(ref: str, path: ObjectStoragePath, seconds: int) -> str | None:
    """A presigned GET URL for ``path``, or None when its store cannot make one.

    S3 and GCS go through their provider's hook, so the connection's settings (role, endpoint,
    region, key file) apply as they do for every other task using that connection; any other
    store through its filesystem's ``sign``, where it has one.
    """
    protocol = path.protocol
    # From the reference, not path.bucket: on Airflow 3.1 that keeps the "conn_id@".
    parts = urlsplit(ref)
    bucket, key = parts.netloc.rpartition("@")[2], parts.path.lstrip("/")
    if protocol in ("s3", "s3a", "s3n"):
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook
        from botocore.config import Config

        hook = S3Hook(aws_conn_id=storage_conn_id(path))
        config = hook.config
        if config.signature_version is None:
            # Left to itself botocore may presign with SigV2, which regions opened since 2014 and
            # buckets made since mid-2020 refuse; a SigV4 URL works everywhere.
            config = config.merge(Config(signature_version="s3v4"))
        client = hook.get_client_type(config=config)
        return str(
            client.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=seconds
            )
        )
    if protocol in ("gs", "gcs"):
        from datetime import timedelta

        from airflow.providers.google.cloud.hooks.gcs import GCSHook

        hook = GCSHook(gcp_conn_id=storage_conn_id(path) or "google_cloud_default")
        blob = hook.get_conn().bucket(bucket).blob(key)
        return str(
            blob.generate_signed_url(version="v4", expiration=timedelta(seconds=seconds), method="GET")
        )
    try:
        return str(path.fs.sign(path.path, expiration=seconds))
    except NotImplementedError:
        return None
