"""The domain of Kling v1.6 effects generations: models, scenes, requests, generations and errors.

This module is the provider's vocabulary. It imports neither ``requests`` nor ``aiohttp`` nor
Airflow's task runtime (only Airflow's exception base classes), so the hook, the trigger, the
operator and the emulator can all share it, and the DAG processor can import it cheaply.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import urlsplit

from airflow_provider_klingfx._compat import AirflowException, AirflowFailException

# ---------------------------------------------------------------------------------------------
# Privacy: what of a photo's URL may be shown
# ---------------------------------------------------------------------------------------------

# Everything up to whitespace or a quote: stopping earlier (at a comma, say) could leave part of a
# signature behind.
_URL_IN_TEXT = re.compile(r"\b(?:https?|s3|gs|gcs|file|data):[^\s'\"<>]+", re.IGNORECASE)


def redact_url(url: str) -> str:
    """Show a URL as ``scheme://host/path``: never its query, fragment or user info.

    A presigned URL carries its signature in the query (a credential), and face photos are
    personal data, so this is the only form in which an image URL reaches a log, an exception, a
    trigger event or XCom. A ``data:`` URI is shown as its media type and length.

    :param url: the URL to show.
    """
    text = url.strip()
    if text[:5].lower() == "data:":
        return f"{text.split(',', 1)[0][:60]},… ({len(text)} chars)"
    try:
        parts = urlsplit(text)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "(unreadable URL)"
    if not parts.scheme:
        return text.split("?", 1)[0].split("#", 1)[0][:200]
    if port is not None:
        host = f"{host}:{port}"
    return f"{parts.scheme}://{host}{parts.path}"[:300]


# Query parameters that carry a signature or a token (S3, GCS, Azure SAS, CloudFront, OAuth), for
# what is left after a URL was cut short in free text (at a space, say).
_SIGNED_PARAM = re.compile(
    r"(?i)([?&](?:x-amz-[\w-]*|x-goog-[\w-]*|signature|sig|se|sp|sv|st|skoid|sktid|key-pair-id|policy|"
    r"googleaccessid|expires|token|access_token|auth|key)=)[^&\s'\"<>]*"
)


def redact_urls(text: str) -> str:
    """Replace every URL inside free text (a vendor message, say) by :func:`redact_url` of it, and
    blank the value of any signature-like query parameter left over.

    :param text: the text to clean.
    """
    return _SIGNED_PARAM.sub(r"\1…", _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text))


# ---------------------------------------------------------------------------------------------
# Models, scenes, durations
# ---------------------------------------------------------------------------------------------

STANDARD_EFFECTS_MODEL: Final = "klingai/kling-video-v1.6-standard-effects"
PRO_EFFECTS_MODEL: Final = "klingai/kling-video-v1.6-pro-effects"
#: The two effects models. Both accept the same scenes and durations.
MODELS: Final[tuple[str, ...]] = (STANDARD_EFFECTS_MODEL, PRO_EFFECTS_MODEL)

#: The 80 effect scenes of the vendor schema, in the schema's order (same list for both models).
EFFECT_SCENES: Final[tuple[str, ...]] = (
    "magic_fireball", "pet_moto_rider", "media_interview", "pet_lion", "pet_delivery", "pet_chef",
    "santa_gifts", "santa_hug", "girlfriend", "boyfriend", "heart_gesture_1", "pet_wizard",
    "smoke_smoke", "thumbs_up", "instant_kid", "dollar_rain", "cry_cry", "building_collapse",
    "gun_shot", "mushroom", "double_gun", "pet_warrior", "lightning_power", "jesus_hug",
    "shark_alert", "long_hair", "lie_flat", "polar_bear_hug", "brown_bear_hug", "jazz_jazz",
    "office_escape_plow", "fly_fly", "watermelon_bomb", "pet_dance", "boss_coming", "wool_curly",
    "iron_warrior", "pet_bee", "marry_me", "swing_swing", "day_to_night", "piggy_morph", "wig_out",
    "car_explosion", "ski_ski", "tiger_hug", "siblings", "construction_worker", "let's_ride",
    "snatched", "magic_broom", "felt_felt", "jumpdrop", "celebration", "splashsplash", "hula",
    "surfsurf", "fairy_wing", "angel_wing", "dark_wing", "skateskate", "plushcut", "jelly_press",
    "jelly_slice", "jelly_squish", "jelly_jiggle", "pixelpixel", "yearbook", "instant_film",
    "anime_figure", "rocketrocket", "bloombloom", "dizzydizzy", "fuzzyfuzzy", "squish", "expansion",
    "hug", "kiss", "heart_gesture", "fight",
)  # fmt: skip

#: Scenes that place two people side by side: exactly two images, the first on the left. Kling's
#: effects spec has only these three as dual-image effects; every other scene takes one photo.
TWO_PERSON_SCENES: Final = frozenset({"hug", "kiss", "heart_gesture"})
#: The single-subject scenes the AI/ML API's page names (every scene outside
#: :data:`TWO_PERSON_SCENES` takes one photo too).
ONE_SUBJECT_SCENES: Final = frozenset({"squish", "expansion"})
#: Allowed video lengths in seconds.
DURATIONS: Final[tuple[int, ...]] = (5, 10)
DEFAULT_DURATION: Final = 5

_SCENE_SET: Final = frozenset(EFFECT_SCENES)


def image_count_range(effect_scene: str) -> tuple[int, int]:
    """Return the (minimum, maximum) number of images a scene takes.

    Kling's effects spec: two photos for the dual-image effects (:data:`TWO_PERSON_SCENES`), one for
    every other scene, including names that sound like two people (``santa_hug``, ``siblings``,
    ``fight``). The AI/ML API's page names the count only for five scenes; Kling's rule is followed.

    :param effect_scene: a name from :data:`EFFECT_SCENES`.
    """
    return (2, 2) if effect_scene in TWO_PERSON_SCENES else (1, 1)


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


class KlingFxError(AirflowException):
    """Base class of every error this provider raises."""


class KlingFxInvalidInputError(KlingFxError, AirflowFailException):
    """The request or the connection is invalid; nothing was sent to the API.

    A retry cannot fix it, so it fails the task without retries.
    """


class KlingFxConnectionConfigError(KlingFxInvalidInputError):
    """The Airflow connection is missing, has no API key, or points somewhere unsafe."""


class KlingFxAPIError(KlingFxError):
    """The API answered a request with an HTTP error.

    :param status_code: the HTTP status code.
    :param vendor_message: the API's own words, taken from its error body.
    :param request_id: the vendor's request id, when it gave one (quote it to their support).
    :param method: the HTTP method of the request.
    :param path: the path of the request (never the query, never a header).
    :param retry_after: seconds the API asked us to wait (``Retry-After``), if any.
    """

    def __init__(
        self,
        status_code: int,
        vendor_message: str,
        *,
        request_id: str | None = None,
        method: str = "",
        path: str = "",
        retry_after: float | None = None,
    ) -> None:
        self.status_code = status_code  # type: ignore[assignment]  # AirflowException types it HTTPStatus
        vendor_message = redact_urls(vendor_message)
        self.vendor_message = vendor_message
        self.request_id = request_id
        self.method = method
        self.path = path
        self.retry_after = retry_after
        hint = _STATUS_HINTS.get(status_code, "")
        text = f"AI/ML API answered {status_code} to {method} {path}: {vendor_message}".replace("  ", " ")
        if request_id:
            text += f" (request id {request_id})"
        if hint:
            text += f". {hint}"
        super().__init__(text)


class KlingFxAuthError(KlingFxAPIError, AirflowFailException):
    """The API refused the key (401) or the account (403, e.g. out of credits). Retrying won't help."""


_STATUS_HINTS: Final[dict[int, str]] = {
    401: "Check the API key in the connection's password field (Admin > Connections)",
    403: "The key was accepted but the account may not call this model or may be out of credits",
    404: "The generation id is unknown to this API endpoint",
    429: "Rate limited by the API",
}


class KlingFxTransportError(KlingFxError):
    """The request did not get an HTTP answer: connection refused or dropped, or a timeout.

    :param reached_server: False when the request provably never reached the API (connection
        refused, DNS failure, connect timeout); True when it may have been received.
    """

    def __init__(self, message: str, *, reached_server: bool) -> None:
        self.reached_server = reached_server
        super().__init__(message)


class KlingFxConnectionLookupError(KlingFxError):
    """Reading the Airflow connection failed for a reason other than "not found".

    A secrets backend or Airflow's API that hiccups is not a configuration error: the read is
    retried (in the triggerer) or the task is retried (before anything was paid for).
    """


class KlingFxMalformedResponseError(KlingFxError):
    """The API answered 200 but the body was not the JSON this provider expects."""


class KlingFxUnsafeUrlError(KlingFxError, AirflowFailException):
    """A URL that is not the API (a photo, a video) leads to a loopback, private or link-local
    address, or redirects where a photo check does not follow. Nothing was read from it.

    Whoever chose the URL (a DAG-run Param, an XCom, the vendor's answer) must not make a worker
    read from the worker's own network. The connection's extra ``allow_private_hosts`` allows it.
    """


class KlingFxAmbiguousSubmissionError(KlingFxError, AirflowFailException):
    """A submission failed in a way that may have created (and billed) a generation anyway.

    The provider never resubmits in that case: a second try could pay twice. The task fails
    without retries; look for the generation on the vendor's dashboard.
    """


class KlingFxGenerationFailedError(KlingFxError, AirflowFailException):
    """The vendor ran the generation and reported ``status: error`` (e.g. no face in a photo).

    The same inputs would fail again, so it fails the task without retries.

    :param generation_id: the vendor's generation id.
    :param reason: the vendor's reason, readable.
    :param error_type: the vendor's error type or name, when it gave one.
    """

    def __init__(self, generation_id: str, reason: str, error_type: str | None = None) -> None:
        self.generation_id = generation_id
        self.reason = reason
        self.error_type = error_type
        kind = f" [{error_type}]" if error_type else ""
        super().__init__(f"Kling generation {generation_id} failed at the vendor: {reason}{kind}")


class KlingFxTimeoutError(KlingFxError):
    """The generation did not finish before the deadline. It may still finish at the vendor.

    :param generation_id: the vendor's generation id.
    :param waited_seconds: how long it was waited for, from submission.
    :param last_status: the last status seen.
    """

    def __init__(self, generation_id: str, waited_seconds: float, last_status: str | None = None) -> None:
        self.generation_id = generation_id
        self.waited_seconds = waited_seconds
        self.last_status = last_status
        seen = f" (last status: {last_status})" if last_status else ""
        super().__init__(
            f"Kling generation {generation_id} did not finish within {waited_seconds:.0f}s{seen}; "
            "it may still complete at the vendor: raise `timeout` or watch it with KlingFxGenerationSensor"
        )


class KlingFxRetryWouldResubmitError(KlingFxError, AirflowFailException):
    """A failure after a paid submission that a retry could not reattach to.

    A retry finds an earlier try's generation only in ``task_state_store``: Airflow 3.1 and 3.2 have
    none, and on 3.3+ writing the record can fail. Then a retry would submit and pay for a new one, so
    the task fails without retries instead, naming the generation so its video can still be fetched.

    :param generation_id: the paid generation.
    :param cause: the failure that would otherwise have been retried.
    """

    def __init__(self, generation_id: str, cause: BaseException) -> None:
        self.generation_id = generation_id
        self.cause = cause
        super().__init__(
            f"{type(cause).__name__}: {cause}. Not retrying: a retry could not find this generation (no "
            "task_state_store before Airflow 3.3, or its record could not be written), so it would submit "
            f"and pay for a new one. Generation {generation_id} is paid for; fetch its video with "
            f"KlingFxGenerationSensor(generation_id={generation_id!r}), or clear the task to pay anew"
        )


class KlingFxReattachElsewhereError(KlingFxError, AirflowFailException):
    """A retry found its paid generation, made at another API URL than the connection now names.

    The API the connection points at would not know the id (404), which would look like a reason to
    submit and pay again; the task fails instead, naming both URLs.

    :param generation_id: the paid generation.
    :param made_at: the create URL it was made at.
    :param now_at: the create URL the connection names now.
    :param conn_id: the connection.
    """

    def __init__(self, generation_id: str, made_at: str, now_at: str, conn_id: str) -> None:
        self.generation_id = generation_id
        self.made_at = made_at
        self.now_at = now_at
        super().__init__(
            f"Generation {generation_id} was made at {made_at}, but connection {conn_id!r} now points at "
            f"{now_at}; not submitting (and paying) again. Point the connection back, or fetch it with "
            f"KlingFxGenerationSensor(generation_id={generation_id!r}) on a connection to {made_at}"
        )


def abandoned_notice(generation_id: str) -> str:
    """What to tell a user whose task stopped watching a generation that may still be running."""
    return (
        f"Stopped watching Kling generation {generation_id}; the API has no cancel call, so it may still "
        f"finish (and be billed) at the vendor. Fetch it later with "
        f"KlingFxGenerationSensor(generation_id={generation_id!r})."
    )


# ---------------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------------


def _suggest(value: str, choices: Iterable[str]) -> list[str]:
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    if value.lower() in lowered:
        return [lowered[value.lower()]]
    return difflib.get_close_matches(value.lower().strip(), choices, n=3, cutoff=0.6)


def validate_effect_scene(effect_scene: object) -> str:
    """Return ``effect_scene`` if it is a known scene, else raise with the closest names.

    :param effect_scene: the scene name to check.
    :raises KlingFxInvalidInputError: when the scene is unknown.
    """
    if not isinstance(effect_scene, str) or not effect_scene:
        raise KlingFxInvalidInputError(f"effect_scene must be a non-empty string, got {effect_scene!r}")
    if effect_scene in _SCENE_SET:
        return effect_scene
    close = _suggest(effect_scene, EFFECT_SCENES)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise KlingFxInvalidInputError(
        f"Unknown effect_scene {effect_scene!r}{hint} (see airflow_provider_klingfx.domain.EFFECT_SCENES "
        f"for all {len(EFFECT_SCENES)})"
    )


def validate_model(model: object) -> str:
    """Return ``model`` if it is one of :data:`MODELS`, else raise with the valid names.

    :param model: the model name to check.
    """
    if isinstance(model, str) and model in MODELS:
        return model
    close = _suggest(str(model), MODELS)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise KlingFxInvalidInputError(f"Unknown model {model!r}{hint} (valid: {', '.join(MODELS)})")


def validate_duration(duration: object) -> int:
    """Return the duration as an int if it is 5 or 10 (ints or their string forms, as templates give).

    :param duration: the requested video length in seconds.
    """
    value: object = duration
    if isinstance(duration, str) and duration.strip().isdigit():
        value = int(duration.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value not in DURATIONS:
        raise KlingFxInvalidInputError(
            f"duration must be one of {', '.join(map(str, DURATIONS))} seconds, got {duration!r}"
        )
    return value


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


# ---------------------------------------------------------------------------------------------
# Generations
# ---------------------------------------------------------------------------------------------

PENDING: Final = "pending"
DONE: Final = "done"
FAILED: Final = "failed"

#: What each status word of the fetch answer means: the one table the trigger, the worker-side
#: wait, the sensor and a retry's reattach all read. The effects schema lists queued, generating,
#: completed and error; the vendor's example loops also wait on waiting and active; the same fetch
#: URL answers succeeded (and failed) for other models, and its SDK ends every wait that is not
#: queued or generating. A word not listed here is logged once and polled on; an answer carrying a
#: video URL counts as done whatever its word (see :func:`status_phase`).
STATUS_PHASES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "queued": PENDING,
        "generating": PENDING,
        "waiting": PENDING,
        "active": PENDING,
        "processing": PENDING,
        "completed": DONE,
        "succeeded": DONE,
        "success": DONE,
        "error": FAILED,
        "failed": FAILED,
        "cancelled": FAILED,
        "canceled": FAILED,
    }
)


def status_phase(status: str, *, has_video: bool = False) -> str:
    """The phase (:data:`PENDING`, :data:`DONE` or :data:`FAILED`) a status word puts a generation in.

    A failure word wins; otherwise an answer that carries a video URL is done (a finished, paid
    video must never be polled past); an unknown word is pending.

    :param status: the status word, lower-cased.
    :param has_video: whether the answer carries ``video.url``.
    """
    phase = STATUS_PHASES.get(status, PENDING)
    if has_video and phase != FAILED:
        return DONE
    return phase


@dataclass(frozen=True)
class Video:
    """The generated video.

    :param url: where to download it (the vendor's CDN; its lifetime is not documented).
    :param content_type: MIME type, e.g. ``video/mp4``.
    :param file_name: the vendor's file name.
    :param file_size: size in bytes, when the API gives it.
    """

    url: str
    content_type: str | None = None
    file_name: str | None = None
    file_size: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict, as pushed to XCom ``video``."""
        return {
            "url": self.url,
            "content_type": self.content_type,
            "file_name": self.file_name,
            "file_size": self.file_size,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Video:
        """Inverse of :meth:`to_dict`."""
        size = data.get("file_size")
        return cls(
            url=str(data["url"]),
            content_type=data.get("content_type"),
            file_name=data.get("file_name"),
            file_size=int(size) if isinstance(size, int | float) and not isinstance(size, bool) else None,
        )


@dataclass(frozen=True)
class Usage:
    """What a generation cost, as far as the API reports it.

    The API reports it on the create answer (``meta.usage``, and the ``x-aimlapi-*`` headers of
    every JSON answer) and may repeat it on the status answer; :meth:`merged` combines them.

    :param credits_used: ``meta.usage.credits_used`` (``tokens_used`` in older answers) or the
        ``x-aimlapi-credits-used`` header.
    :param usd_spent: ``meta.usage.usd_spent`` or the ``x-aimlapi-usd-spent`` header.
    """

    credits_used: float | None = None
    usd_spent: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict, as pushed to XCom ``usage``."""
        return {"credits_used": self.credits_used, "usd_spent": self.usd_spent}

    @classmethod
    def from_dict(cls, data: object) -> Usage | None:
        """Inverse of :meth:`to_dict`; None for anything that is not such a dict."""
        if not isinstance(data, Mapping):
            return None
        return cls(credits_used=_number(data.get("credits_used")), usd_spent=_number(data.get("usd_spent")))

    def merged(self, later: Usage | None) -> Usage:
        """This usage with every figure ``later`` reports taking precedence (the same charge, not a sum).

        :param later: usage from a later answer (the status answer after the create answer).
        """
        if later is None:
            return self
        return Usage(
            credits_used=later.credits_used if later.credits_used is not None else self.credits_used,
            usd_spent=later.usd_spent if later.usd_spent is not None else self.usd_spent,
        )


def merge_usage(*reports: Usage | None) -> Usage | None:
    """Combine usage reports in the order they arrived; None when none reported anything.

    :param reports: e.g. the create answer's usage, then the status answer's.
    """
    merged: Usage | None = None
    for report in reports:
        if report is not None:
            merged = report if merged is None else merged.merged(report)
    return merged


@dataclass(frozen=True)
class GenerationError:
    """Why the vendor failed a generation.

    :param reason: readable reason, e.g. ``Could not detect face in the image``.
    :param error_type: the vendor's error name or type, e.g. ``face_detection_error``.
    """

    reason: str
    error_type: str | None = None


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def describe_details(items: Sequence[object]) -> tuple[list[str], list[str]]:
    """Readable lines and error types from a list of validation details, whatever their shape.

    Items are ``{"loc", "msg", "type", "input"}`` (the validation shape the API uses for failed
    generations and for "Body validation error!") or ``{"path"|"field", "message"}``. An ``input``
    that is a photo URL is shown as scheme://host/path only (see :func:`redact_url`).

    :param items: the ``detail`` or ``errors`` list of an answer.
    """
    reasons: list[str] = []
    types: list[str] = []
    for item in items:
        if not isinstance(item, Mapping):
            reasons.append(redact_urls(str(item)))
            continue
        msg = str(item.get("msg") or item.get("message") or "unspecified error")
        loc = item.get("loc") or item.get("path") or item.get("field")
        where = []
        if isinstance(loc, list) and loc:
            where.append(str(loc[-1]))
        elif isinstance(loc, str) and loc:
            where.append(loc)
        inp = item.get("input")
        if isinstance(inp, str) and inp:
            where.append(redact_url(inp) if _URL_IN_TEXT.match(inp) else inp[:200])
        reasons.append(redact_urls(f"{msg} ({': '.join(where)})" if where else msg))
        if item.get("type"):
            types.append(str(item["type"]))
    return reasons, types


def parse_generation_error(error: object, status: str = "error") -> GenerationError:
    """Turn any error shape the API uses into a readable :class:`GenerationError`.

    Shapes: ``{"name", "message"}`` (the schema) and
    ``{"detail": [{"loc", "msg", "type", "input"}]}`` (seen in practice); anything else is shown
    as compact JSON rather than lost. URLs are shown without their query (:func:`redact_urls`).

    :param error: the ``error`` member of a fetch answer.
    :param status: the status word, named when the API gave no reason (``cancelled``, say).
    """
    if isinstance(error, str) and error.strip():
        return GenerationError(reason=redact_urls(error.strip()))
    if isinstance(error, Mapping):
        detail = error.get("detail")
        if isinstance(detail, list) and detail:
            reasons, types = describe_details(detail)
            return GenerationError(reason="; ".join(reasons), error_type=", ".join(types) or None)
        if isinstance(detail, str) and detail:
            return GenerationError(reason=redact_urls(detail))
        message = error.get("message")
        name = error.get("name")
        if message or name:
            return GenerationError(
                reason=redact_urls(str(message or name)), error_type=str(name) if name else None
            )
    if error is None or error == {}:
        return GenerationError(reason=f"the API reported status {status!r} without a reason")
    return GenerationError(reason=f"unrecognised error: {redact_urls(json.dumps(error, default=str)[:500])}")


@dataclass(frozen=True)
class Generation:
    """One generation as the fetch endpoint reports it.

    :param id: the vendor's generation id (contains ``:`` and ``/``).
    :param status: the status word, lower-cased (see :data:`STATUS_PHASES`).
    :param phase: :data:`PENDING`, :data:`DONE` or :data:`FAILED` (see :func:`status_phase`).
    :param video: the video, once done.
    :param error: why it failed, once failed.
    :param usage: what it cost, when reported.
    """

    id: str
    status: str
    phase: str = PENDING
    video: Video | None = None
    error: GenerationError | None = None
    usage: Usage | None = None
    raw_status: str = field(default="", repr=False)

    @property
    def is_pending(self) -> bool:
        """Still running: queued, generating, a legacy word, or a word this provider does not know."""
        return self.phase == PENDING

    @property
    def is_completed(self) -> bool:
        """Finished with a video."""
        return self.phase == DONE

    @property
    def is_failed(self) -> bool:
        """Finished without a video (error, failed, cancelled)."""
        return self.phase == FAILED

    @property
    def is_known_status(self) -> bool:
        """Whether the status word is in :data:`STATUS_PHASES` (others are logged once and polled on)."""
        return self.status in STATUS_PHASES

    @classmethod
    def from_api(cls, payload: object, headers: Mapping[str, str] | None = None) -> Generation:
        """Parse a fetch answer.

        :param payload: the decoded JSON body.
        :param headers: response headers, for the usage headers.
        :raises KlingFxMalformedResponseError: if the body is not a generation, or says it is done
            without a video URL.
        """
        if not isinstance(payload, Mapping):
            raise KlingFxMalformedResponseError(
                f"expected a JSON object, got {type(payload).__name__}: {redact_urls(str(payload)[:200])!r}"
            )
        gen_id = payload.get("id") or payload.get("generation_id")
        status = payload.get("status")
        if not isinstance(gen_id, str) or not gen_id or not isinstance(status, str) or not status:
            raise KlingFxMalformedResponseError(
                f"expected 'id' and 'status' in the answer, got keys {sorted(map(str, payload))[:10]}"
            )
        norm = status.strip().lower()
        video = _parse_video(payload.get("video"))
        phase = status_phase(norm, has_video=video is not None)
        if phase == DONE and video is None:
            raise KlingFxMalformedResponseError(f"generation {gen_id} is {norm} but has no video.url")
        error = parse_generation_error(payload.get("error"), norm) if phase == FAILED else None
        return cls(
            id=gen_id,
            status=norm,
            phase=phase,
            video=video,
            error=error,
            usage=parse_usage(payload, headers),
            raw_status=status,
        )

    def raise_for_failure(self) -> None:
        """Raise :class:`KlingFxGenerationFailedError` if the vendor failed this generation."""
        if self.is_failed:
            err = self.error or GenerationError("no reason given")
            raise KlingFxGenerationFailedError(self.id, err.reason, err.error_type)


def _is_http_url(value: object) -> bool:
    return isinstance(value, str) and value[:8].lower().startswith(("http://", "https://"))


def _parse_video(raw: object) -> Video | None:
    # Only an http(s) URL is a video: the URL lands in XCom, in the extra link's button and in the
    # views, so a vendor answer must not turn it into javascript: or file: (it counts as no video).
    if isinstance(raw, Mapping) and _is_http_url(raw.get("url")):
        return Video.from_dict(raw)
    if _is_http_url(raw):
        return Video(url=str(raw))  # some models answer a bare URL
    return None


@dataclass(frozen=True)
class Submission:
    """What the create call answered: the new generation's id, and what it cost when reported.

    :param id: the vendor's generation id.
    :param status: the status word of the create answer (usually ``queued``), if any.
    :param usage: ``meta.usage`` of the create answer merged with its ``x-aimlapi-*`` headers.
    """

    id: str
    status: str | None = None
    usage: Usage | None = None


def parse_usage(payload: object, headers: Mapping[str, str] | None = None) -> Usage | None:
    """Read usage from ``meta.usage`` and the ``x-aimlapi-*`` headers; None if neither reports it.

    ``meta.usage.credits_used`` (``tokens_used`` in older answers) and ``meta.usage.usd_spent``
    come first; the headers fill what the body leaves out.

    :param payload: the decoded answer.
    :param headers: response headers (case-insensitive mapping or plain dict).
    """
    credits: float | None = None
    usd: float | None = None
    meta = payload.get("meta") if isinstance(payload, Mapping) else None
    usage = meta.get("usage") if isinstance(meta, Mapping) else None
    if isinstance(usage, Mapping):
        credits = _number(usage.get("credits_used"))
        if credits is None:
            credits = _number(usage.get("tokens_used"))
        usd = _number(usage.get("usd_spent"))
    if headers:
        lowered = {str(k).lower(): v for k, v in headers.items()}
        if credits is None:
            credits = _number(lowered.get("x-aimlapi-credits-used"))
        if usd is None:
            usd = _number(lowered.get("x-aimlapi-usd-spent"))
    if credits is None and usd is None:
        return None
    return Usage(credits_used=credits, usd_spent=usd)
