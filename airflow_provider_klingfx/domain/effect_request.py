"""A request for one effects generation: the photos (URLs, storage paths, local files), checked
without calling the API, and the create body."""

from __future__ import annotations

import ast
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from airflow_provider_klingfx.domain.errors import KlingFxInvalidInputError
from airflow_provider_klingfx.domain.privacy import redact_url
from airflow_provider_klingfx.domain.scenes import (
    DEFAULT_DURATION,
    STANDARD_EFFECTS_MODEL,
    TWO_PERSON_SCENES,
    image_count_range,
    validate_duration,
    validate_effect_scene,
    validate_model,
)


def _coerce_image_list(image_urls: object) -> list[object]:
    if isinstance(image_urls, str):
        text = image_urls.strip()
        # A Jinja template renders an XCom list as its string form unless the DAG renders native
        # objects; accept that form rather than send "['https://…']" as a URL.
        if text.startswith("["):
            for parse in (json.loads, ast.literal_eval):
                try:
                    parsed = parse(text)
                except (ValueError, SyntaxError):
                    continue
                if isinstance(parsed, list):
                    return parsed
        return [image_urls]
    if isinstance(image_urls, Sequence) and not isinstance(image_urls, bytes | bytearray):
        return list(image_urls)
    if image_urls is None:
        return []
    if _is_storage_path(image_urls):
        return [image_urls]
    raise KlingFxInvalidInputError(
        f"image_urls must be a photo (URL, storage path, local file) or a list of them, got "
        f"{type(image_urls).__name__}"
    )


#: S3 (SigV4) and GCS (V4) refuse a presigned URL valid for longer than seven days.
MAX_PRESIGN_SECONDS: Final = 7 * 24 * 3600

#: Where a photo is: a URL the API downloads itself, an object-storage path (``s3://``, ``gs://``,
#: any scheme Airflow's object storage knows), or a file on the worker's disk.
PHOTO_URL: Final = "url"
PHOTO_STORAGE: Final = "storage"
PHOTO_LOCAL: Final = "local"


def photo_kind(ref: str) -> str:
    """Where a photo reference (as :func:`validate_image_url` returns it) points.

    :param ref: ``https://…``, ``s3://[conn_id@]bucket/key`` (or another storage scheme), or
        ``file:///absolute/path``.
    :returns: :data:`PHOTO_URL`, :data:`PHOTO_STORAGE` or :data:`PHOTO_LOCAL`.
    """
    if ref[:5].lower() == "data:":  # a photo prepare_photos put inline
        return PHOTO_URL
    scheme = ref.split("://", 1)[0].lower() if "://" in ref else ""
    if scheme in ("http", "https"):
        return PHOTO_URL
    if scheme in ("file", "local"):
        return PHOTO_LOCAL
    return PHOTO_STORAGE


def _is_storage_path(value: object) -> bool:
    # An ObjectStoragePath, told by its class: reading ``value.fs`` would build its filesystem
    # (and cache it, for the connection as it is now) just to validate the DAG's arguments.
    return not isinstance(value, str) and hasattr(type(value), "protocol") and hasattr(type(value), "fs")


def storage_conn_id(path: object) -> str | None:
    """The Airflow connection an ``ObjectStoragePath`` was made with, on every Airflow line.

    Airflow 3.3 has ``path.conn_id``; 3.1 keeps it in ``path.storage_options["conn_id"]``.

    :param path: an ``ObjectStoragePath``.
    """
    conn_id = getattr(path, "conn_id", None)
    if conn_id is None:
        conn_id = (getattr(path, "storage_options", None) or {}).get("conn_id")
    return str(conn_id) if conn_id else None


def _storage_ref(path: object) -> str:
    # An ObjectStoragePath, read without importing it (the DAG processor imports this module): its
    # URL, with the connection it was made with, in the ``s3://conn_id@bucket/key`` form that
    # ObjectStoragePath parses back.
    text = str(path)
    conn_id = storage_conn_id(path)
    if conn_id and "://" in text and "@" not in text.split("://", 1)[1].split("/", 1)[0]:
        scheme, rest = text.split("://", 1)
        text = f"{scheme}://{conn_id}@{rest}"
    return text


def validate_image_url(url: object, position: int = 1) -> str:
    """Check one photo reference and return it in its canonical form, or raise saying what is wrong.

    Accepted: an absolute http(s) URL (the API downloads it); an object-storage URL or
    ``ObjectStoragePath`` (``s3://[conn_id@]bucket/key``, ``gs://bucket/key``, …); a local file as
    an absolute path or ``file://`` URL (returned as ``file:///…``). Whether the photo exists and
    obeys Kling's limits is checked later, by :func:`airflow_provider_klingfx.photos.prepare_photos`.

    :param url: the photo: a string or an ``ObjectStoragePath``.
    :param position: 1-based position of the image, for the message.
    """
    if _is_storage_path(url):
        url = _storage_ref(url)
    if not isinstance(url, str) or not url.strip():
        raise KlingFxInvalidInputError(
            f"image {position} is empty ({url!r}); give an http(s) URL, a storage path or a local file"
        )
    text = url.strip()
    if text.startswith("/"):
        return "file://" + text
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        if not parts.netloc or any(ch.isspace() for ch in text):
            raise KlingFxInvalidInputError(
                f"image {position} must be a public http(s) URL the API can download, "
                f"got {redact_url(text)!r}"
            )
        return text
    if scheme == "data":
        raise KlingFxInvalidInputError(
            f"image {position} is a data: URI; give the file's path with inline_base64_images=True instead "
            "(base64 photos are undocumented for the effects models)"
        )
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise KlingFxInvalidInputError(
                f"image {position} ({redact_url(text)}) must be a file:///absolute/path URL"
            )
        return "file://" + parts.path
    if len(scheme) > 1 and "://" in text:
        if not parts.hostname or parts.path in ("", "/") or parts.path.endswith("/"):
            raise KlingFxInvalidInputError(
                f"image {position} ({redact_url(text)}) must name one object: {scheme}://bucket/path/photo.jpg"
            )
        return text
    raise KlingFxInvalidInputError(
        f"image {position} ({redact_url(text)!r}) is neither a URL nor an absolute path: give an http(s) "
        "URL, a storage path such as s3://bucket/photo.jpg, or an absolute local path"
    )


@dataclass(frozen=True)
class EffectRequest:
    """A validated request for one effects generation.

    Build it with :meth:`build`, which checks everything that can be known without calling the API.

    :param effect_scene: the scene to render, one of :data:`EFFECT_SCENES`.
    :param image_urls: one or two photo references (see :func:`validate_image_url`): http(s) URLs,
        storage paths or local files; for two-person scenes the first is on the left. Only a request
        of URLs can be sent (:meth:`to_body`); :func:`airflow_provider_klingfx.photos.prepare_photos`
        turns the others into URLs.
    :param duration: video length in seconds, 5 or 10.
    :param model: one of :data:`MODELS`.
    """

    effect_scene: str
    image_urls: tuple[str, ...]
    duration: int = DEFAULT_DURATION
    model: str = STANDARD_EFFECTS_MODEL

    @classmethod
    def build(
        cls,
        effect_scene: object,
        image_urls: object,
        duration: object = DEFAULT_DURATION,
        model: object = STANDARD_EFFECTS_MODEL,
    ) -> EffectRequest:
        """Validate raw (possibly templated) values and return a request.

        :raises KlingFxInvalidInputError: with one line saying what to fix.
        """
        scene = validate_effect_scene(effect_scene)
        model_name = validate_model(model)
        seconds = validate_duration(duration)
        raw = _coerce_image_list(image_urls)
        low, high = image_count_range(scene)
        if not low <= len(raw) <= high:
            want = str(low) if low == high else f"{low} or {high}"
            if scene in TWO_PERSON_SCENES:
                why = " (two people: the first image is placed on the left, the second on the right)"
            else:
                why = " (only hug, kiss and heart_gesture take two)" if raw else ""
            raise KlingFxInvalidInputError(
                f"effect_scene {scene!r} takes {want} image{'s' if high > 1 else ''}{why}, got {len(raw)}"
            )
        urls = tuple(validate_image_url(u, i) for i, u in enumerate(raw, start=1))
        return cls(effect_scene=scene, image_urls=urls, duration=seconds, model=model_name)

    def to_body(self) -> dict[str, Any]:
        """The JSON body of the create call, as the vendor schema names the fields.

        :raises KlingFxInvalidInputError: a photo is still a storage path or a local file.
        """
        for position, ref in enumerate(self.image_urls, start=1):
            if photo_kind(ref) != PHOTO_URL:
                raise KlingFxInvalidInputError(
                    f"image {position} ({redact_url(ref)}) is not a URL the API can download: turn it "
                    "into one with airflow_provider_klingfx.photos.prepare_photos (the operator does)"
                )
        return self._body()

    def _body(self) -> dict[str, Any]:
        image: str | list[str] = self.image_urls[0] if len(self.image_urls) == 1 else list(self.image_urls)
        return {
            "model": self.model,
            "effect_scene": self.effect_scene,
            "image_url": image,
            "duration": self.duration,
        }

    def fingerprint(self) -> str:
        """A digest of the create body (model, scene, photo references in order, duration).

        Stored beside a submitted generation's id, it tells a later try of the same task whether
        that generation was made from the same request (reattach) or from other inputs (submit
        anew). A digest rather than the body: the store must not keep the photos' URLs. Taken
        before :func:`~airflow_provider_klingfx.photos.prepare_photos`: a storage photo counts by
        its path, not by the presigned URL, which differs at every try.
        """
        canonical = json.dumps(self._body(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]


_CLIENT_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._:-]+")


def client_request_id(*parts: object, max_length: int = 128) -> str:
    """Build an ``X-Client-Request-Id`` (1-128 chars of ``[A-Za-z0-9._:-]``) from readable parts.

    Parts are joined with ``:``; characters the API would reject become ``_``. Past the length
    limit the id keeps its head and ends with a hash of the whole, so it stays unique.

    :param parts: e.g. dag_id, run_id, task_id, map_index, try_number.
    """
    text = ":".join(_CLIENT_ID_UNSAFE.sub("_", str(p)) for p in parts if p is not None and p != "")
    text = text or "klingfx"
    if len(text) <= max_length:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return f"{text[: max_length - len(digest) - 1]}.{digest}"
