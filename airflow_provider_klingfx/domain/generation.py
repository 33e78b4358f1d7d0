"""A generation as the fetch endpoint reports it: status words, the video, usage and failures."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from airflow_provider_klingfx.domain.errors import KlingFxGenerationFailedError, KlingFxMalformedResponseError
from airflow_provider_klingfx.domain.privacy import _URL_IN_TEXT, redact_url, redact_urls

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
