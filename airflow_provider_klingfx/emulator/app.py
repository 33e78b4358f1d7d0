"""The emulator's aiohttp application: routes, request validation, state machine, faults.

Behaviour, in short (the package docstring has the user-facing version):

* create (``POST /v2/video/generations`` or the legacy ``POST /v2/generate/video/kling/generation``)
  checks the bearer key, validates the body like the vendor schema plus the documented image-count
  rule, charges the optional credit budget and answers ``{"id", "status": "queued", "meta":
  {"usage": ...}}`` (200; 201 on the legacy path) with ``x-inference-id`` and the cost headers;
* fetch (``GET`` on the same paths with ``?generation_id=``) computes the status lazily from the
  injected clock: ``queued`` for ``queued_seconds``, ``generating`` for the generation's generating
  time, then ``completed`` (only once its video is rendered) or ``error``; answers say these
  canonical words, or others (``status_words``, ``legacy_statuses``);
* HTTP errors have the documented body or the one seen live (``error_body``), built in one place;
* face detection is faked: an image "has no face" when its URL contains ``noface``
  (case-insensitive); a two-person scene (hug, kiss, heart_gesture) given such an image ends in
  ``error`` with a face-detection error; other scenes render it normally;
* input photos are downloaded (or, with ``accept_data_uris``, decoded from ``data:`` URIs) and,
  with ``check_images`` (default), checked against Kling's limits by
  :func:`airflow_provider_klingfx.images.check_image`, the one implementation of them: a photo
  breaking one makes the generation end in ``error`` with an image-validation error; a photo that
  cannot be downloaded at all gets a placeholder frame; ``render="off"`` downloads nothing, so
  checks nothing. A ``data:`` URI is refused with 422 unless ``accept_data_uris``, and is only ever
  shown (answers, logs, state) as ``redact_url`` shows it;
* videos are real MP4s served by the emulator itself under ``/files/<uuid>/output.mp4``;
* faults (HTTP errors, dropped connections, id-less create answers, cut downloads, slow or
  non-JSON answers) are injected by rules;
* an optional rate limit per key on create and fetch: a token bucket per hash of the key, checked
  after the key, answering 429 (with ``Retry-After`` unless turned off);
* outage windows on the injected clock: ``503`` ones answer create and fetch with 503 before
  anything else (faults and the rate limit included); ``refuse`` ones close the listening socket
  and the open connections and reopen the same port at the end, switched by a timer task on the
  server's loop (:class:`_Listener`), so only servers started by :func:`start_site` have them.

Every lookup a request does is a dict access: no request scans all generations, so thousands of
generations polled concurrently cost the same per request as one. Only the admin stats walk them.
The rate limit is one hash and one dict access; the outage check is a cached answer, recomputed
from the (few) windows once per window edge.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import difflib
import hashlib
import hmac
import json
import logging
import math
import os
import random
import re
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from concurrent.futures import Future as ConcurrentFuture
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from http import HTTPStatus
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Literal, cast
from urllib.parse import urlsplit

from aiohttp import ClientError, ClientSession, ClientTimeout, web
from yarl import URL

from airflow_provider_klingfx.domain import (
    DURATIONS,
    EFFECT_SCENES,
    MODELS,
    PRO_EFFECTS_MODEL,
    TWO_PERSON_SCENES,
    image_count_range,
    redact_url,
    redact_urls,
)
from airflow_provider_klingfx.images import (
    MAX_IMAGE_BYTES,
    HeaderTooShortError,
    KlingFxImageError,
    check_image,
)

log = logging.getLogger("airflow_provider_klingfx.emulator")

#: Access log format for the emulator's server: no request headers at all, so neither the
#: ``Authorization`` header nor the key can end up in a log. ``%r`` is the request line; the only
#: query the API uses is ``generation_id``.
ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tfs'

DEFAULT_API_KEY = "emulator-key"
API_KEY_ENV = "KLINGFX_EMULATOR_API_KEY"
#: The two path styles of the vendor API; both accept create (POST) and fetch (GET).
UNIVERSAL_API_PATH = "/v2/video/generations"
#: The legacy path; its create answers 201 (the universal one 200), as the vendor's docs say.
LEGACY_API_PATH = "/v2/generate/video/kling/generation"
API_PATHS: tuple[str, ...] = (UNIVERSAL_API_PATH, LEGACY_API_PATH)

#: Fault actions that process a create and then alter its answer: they only ever match creates.
CREATE_ONLY_ACTIONS = frozenset({"drop_after_accept", "accept_without_id", "accept_unreadable"})
#: Fault actions about the MP4 download: they only ever match the video route.
VIDEO_ONLY_ACTIONS = frozenset({"truncate"})
FAULT_ACTIONS = frozenset({"status", "drop", "slow", "garbage"}) | CREATE_ONLY_ACTIONS | VIDEO_ONLY_ACTIONS
FAULT_ROUTES = frozenset({"create", "fetch", "video", "*"})
#: The statuses of the vendor's fetch schema: what the state machine works with.
CANONICAL_STATUSES: tuple[str, ...] = ("queued", "generating", "completed", "error")
#: What ``legacy_statuses=True`` means: the words of older API versions.
LEGACY_STATUS_WORDS: Mapping[str, str] = MappingProxyType({"queued": "waiting", "generating": "active"})
#: USD per credit: the vendor's request-tracing page gives 2480 credits as $0.00124, i.e. 2,000,000
#: credits per dollar (so a 120,000-credit generation is $0.06).
DEFAULT_USD_PER_CREDIT = 0.0000005
ErrorShape = Literal["detail", "name_message"]
RenderMode = Literal["eager", "lazy", "off"]
UsageIn = Literal["both", "create", "fetch", "none"]
UsageField = Literal["credits_used", "tokens_used"]
ErrorBody = Literal["documented", "live"]
OutageMode = Literal["503", "refuse"]
OUTAGE_MODES: tuple[str, ...] = ("503", "refuse")
#: How often (at most) the refuse-outage timer re-reads the state's clock: it sleeps until the next
#: window edge, but a fake clock a test advances by hand only moves between those sleeps.
_OUTAGE_POLL_SECONDS = 0.5

_CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# An id this emulator could have issued. The vendor's tracing page: on a poll, ``x-inference-id``
# is the id polled with, left out when it does not look like an id the API could have issued.
_GENERATION_ID_RE = re.compile(
    r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}:kling-video/v1\.6/(?:standard|pro)/effects$"
)
# RFC 3986 "URI" as the schema's ``format: uri`` means it: an absolute URI (scheme ":" ...), with
# no characters that must be percent-encoded (spaces, quotes, angle brackets...) and well-formed
# percent escapes. Deliberately not limited to http(s): that is what the schema says.
# The same language as ``scheme:(?:<char>|%XX)*``, written so that a 15 MB data: URI takes tens of
# milliseconds, not seconds (one alternation per character), whether it matches or not: runs of
# characters between escapes, each run atomic (the lookahead-and-backreference idiom, as Python
# 3.10 has no possessive quantifiers), so a failed match does not backtrack through them.
_URI_CHAR = r"[A-Za-z0-9\-._~!$&'()*+,;=:@/?#\[\]]"
_URI_RE = re.compile(
    rf"^[A-Za-z][A-Za-z0-9+.\-]*:(?=({_URI_CHAR}*))\1(?:%[0-9A-Fa-f]{{2}}(?=({_URI_CHAR}*))\2)*$"
)
_SCENE_SET = frozenset(EFFECT_SCENES)
#: The largest request body the API routes read (aiohttp's default is 1 MiB): room for two photos
#: as ``data:`` URIs even past the 10 MB limit (base64 adds a third), so that an over-size photo is
#: answered by the size rule rather than a 413.
MAX_BODY_BYTES = 64 * 1024 * 1024
# A data: URI inside free text (a validation message): only ever shown through redact_url. Not one
# redact_url has shown already ("data:image/png;base64,… (123 chars)"): its length must stay.
_DATA_URI_IN_TEXT = re.compile(r"(?i)\bdata:(?![^\s'\"<>,]*,…)[^\s'\"<>]+")
# A data: URI as redact_url shows it (a real one can't contain "…": it is not a URI character).
_SHOWN_DATA_URI = re.compile(r"(?i)data:[^,]*,… \(\d+ chars\)")
_DROPPED_STATUS = 444  # nginx's "connection closed without response": what the access log shows


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


@dataclass
class FaultRule:
    """One fault-injection rule.

    A rule matches requests of its ``method`` and ``route``; it lets the first ``skip`` matching
    requests through, then applies to the next ``times`` ones (``-1``: all of them). Every rule
    counts every request it matches, even when an earlier rule is the one that fires; when several
    rules fire on the same request, the first in the list wins.

    :param action: ``"status"`` answer ``status`` with the JSON error body (create: no
        generation is made); ``"drop"`` close the connection without answering, before the request
        is processed; ``"drop_after_accept"`` (create only) process the request (a valid one creates
        and charges a generation), then close the connection without answering: the ambiguous case;
        ``"accept_without_id"`` (create only) process the request, then, if it was accepted, answer
        the create's 2xx with the body ``{"status": "queued"}`` (no ``id``, no ``generation_id``,
        no ``meta``) but the usual headers, ``x-inference-id`` included; ``"accept_unreadable"``
        (create only) the same without the ``x-inference-id`` header either (a rejected create's
        error answer goes out unchanged with both); ``"truncate"`` (video only) answer 200 with the
        full ``Content-Length`` but send only the first half of the MP4's bytes, then close the
        connection (a 404 or 500 the download would get goes out unchanged); ``"slow"`` wait
        ``delay`` seconds, then answer normally; ``"garbage"`` answer 200 with an HTML body instead
        of JSON. ``status``, ``drop`` and ``garbage`` skip the request entirely (auth included): a
        faulted create makes no generation.
    :param method: HTTP method to match (``GET``, ``POST``...), or ``"*"``.
    :param route: ``"create"``, ``"fetch"``, ``"video"`` (the MP4 download) or ``"*"``.
        ``drop_after_accept``, ``accept_without_id`` and ``accept_unreadable`` only ever match
        create requests, ``truncate`` only video downloads, whatever the route says.
    :param times: how many matching requests get the fault after the skipped ones; ``-1``: forever.
    :param skip: how many matching requests to let through first.
    :param status: HTTP status for ``"status"`` (required there), e.g. 429, 500, 502, 503.
    :param retry_after: if set, sent as the ``Retry-After`` header (seconds) with ``"status"``.
    :param delay: seconds to wait for ``"slow"``.
    """

    action: str
    method: str = "*"
    route: str = "*"
    times: int = 1
    skip: int = 0
    status: int | None = None
    retry_after: float | None = None
    delay: float = 0.0

    def __post_init__(self) -> None:
        if self.action not in FAULT_ACTIONS:
            raise ValueError(f"fault action must be one of {sorted(FAULT_ACTIONS)}, got {self.action!r}")
        if self.route not in FAULT_ROUTES:
            raise ValueError(f"fault route must be one of {sorted(FAULT_ROUTES)}, got {self.route!r}")
        self.method = self.method.upper()
        if self.action in CREATE_ONLY_ACTIONS and self.route not in ("create", "*"):
            raise ValueError(f"{self.action} applies to the create route only")
        if self.action in VIDEO_ONLY_ACTIONS and self.route not in ("video", "*"):
            raise ValueError(f"{self.action} applies to the video route only")
        if self.action == "status" and (self.status is None or not 100 <= self.status <= 599):
            raise ValueError(f"a 'status' fault needs an HTTP status 100-599, got {self.status!r}")
        if self.times < -1 or self.skip < 0 or self.delay < 0:
            raise ValueError("fault times must be >= -1, skip and delay >= 0")

    def matches(self, method: str, route: str) -> bool:
        """Whether this rule is about a request of ``method`` on ``route``.

        :param method: the request's HTTP method.
        :param route: ``create``, ``fetch`` or ``video``.
        """
        if self.action in CREATE_ONLY_ACTIONS and route != "create":
            return False
        if self.action in VIDEO_ONLY_ACTIONS and route != "video":
            return False
        return self.method in ("*", method.upper()) and self.route in ("*", route)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FaultRule:
        """Build a rule from JSON-like data (the CLI's ``--fault`` and ``POST /_emulator/faults``).

        :param data: keys are this class's fields; ``action`` is required.
        :raises ValueError: on unknown keys, wrong types or invalid values.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a fault rule must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown fault rule keys {sorted(unknown)}; known: {sorted(known)}")
        if "action" not in data:
            raise ValueError("a fault rule needs an 'action'")
        try:
            return cls(
                action=str(data["action"]),
                method=str(data.get("method", "*")),
                route=str(data.get("route", "*")),
                times=_as_int(data.get("times", 1)),
                skip=_as_int(data.get("skip", 0)),
                status=None if data.get("status") is None else _as_int(data["status"]),
                retry_after=None if data.get("retry_after") is None else float(data["retry_after"]),
                delay=float(data.get("delay", 0.0)),
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"invalid fault rule {dict(data)!r}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """This rule as JSON-able data (inverse of :meth:`from_dict`)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _as_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str | float):
        raise ValueError(f"expected an integer, got {value!r}")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"expected an integer, got {value!r}")
    return int(value)


def _default_api_key() -> str:
    return os.environ.get(API_KEY_ENV) or DEFAULT_API_KEY


def _as_number(value: object, name: str) -> float:
    # JSON booleans are not numbers here, though Python would take them for 0 and 1.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


@dataclass
class Outage:
    """One outage window of the emulator.

    :param start: when it starts, in seconds on the state's clock since the state was created (or
        last reset).
    :param end: when it ends (exclusive), same clock; must be after ``start``.
    :param mode: ``"503"``: the API routes (create and fetch) answer 503 in the configured error
        body, without ``Retry-After``; the video, sample, health and admin routes keep working.
        ``"refuse"``: the emulator stops listening (new connections get ECONNREFUSED) and closes
        the connections already open; nothing answers, not even the admin routes. Refuse needs a
        server started by :func:`start_site` (:func:`run_emulator_in_thread`, the CLI).
    """

    start: float
    end: float
    mode: OutageMode = "503"

    def __post_init__(self) -> None:
        self.start = _as_number(self.start, "outage start")
        self.end = _as_number(self.end, "outage end")
        if self.start < 0 or self.end <= self.start:
            raise ValueError(f"an outage needs 0 <= start < end, got {self.start:g}..{self.end:g}")
        if self.mode not in OUTAGE_MODES:
            raise ValueError(f"outage mode must be one of {list(OUTAGE_MODES)}, got {self.mode!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Outage:
        """Build a window from JSON-like data ``{"start", "end"[, "mode"]}``.

        :param data: keys are this class's fields.
        :raises ValueError: on unknown keys, missing or invalid values.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"an outage must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown or "start" not in data or "end" not in data:
            raise ValueError(
                f"an outage has the keys {sorted(known)} (start and end required), got {sorted(data)}"
            )
        return cls(start=data["start"], end=data["end"], mode=data.get("mode", "503"))

    def to_dict(self) -> dict[str, Any]:
        """This window as JSON-able data (inverse of :meth:`from_dict`)."""
        return {"start": self.start, "end": self.end, "mode": self.mode}


@dataclass
class EmulatorConfig:
    """How an emulator instance behaves.

    :param api_key: the bearer key clients must send (default: ``$KLINGFX_EMULATOR_API_KEY`` or
        ``emulator-key``).
    :param queued_seconds: how long a generation reports ``queued``.
    :param generating_seconds: how long it then reports ``generating`` (the real API takes ~120 s).
    :param generating_seconds_max: if set, each generation draws its generating time uniformly
        from ``[generating_seconds, generating_seconds_max]``.
    :param seed: seed of the random generator used for that draw (reproducible runs).
    :param legacy_statuses: report ``waiting`` instead of ``queued`` and ``active`` instead of
        ``generating``, as older API versions did (same as those two ``status_words``).
    :param error_shape: shape of the ``error`` member of failed generations: ``"detail"`` (the
        validation shape seen in practice) or ``"name_message"`` (the schema's ``{name, message}``).
    :param faults: fault-injection rules, see :class:`FaultRule` (dicts are converted with
        :meth:`FaultRule.from_dict`).
    :param credits: credit budget; ``None`` means unlimited. A create the budget can't cover gets 403.
    :param credits_per_generation: cost of a 5 s generation (a 10 s one costs double).
    :param render: ``"eager"`` renders each video at submission and reports ``completed`` only once
        it is rendered; ``"lazy"`` renders on the first download (``file_size`` is then ``null``);
        ``"off"`` serves one tiny fixed MP4 rendered at startup (load tests).
    :param video_dir: if set, rendered videos are written there (``<uuid>.mp4``) instead of being
        kept in memory.
    :param render_concurrency: how many videos render at the same time (each in a worker thread).
    :param image_timeout: seconds allowed to download one input image.
    :param max_image_bytes: the most the emulator downloads of one input image: it stops reading
        one byte past it (or at once, when ``Content-Length`` says more). A bigger photo fails the
        generation by the size rule when ``check_images`` is on and it is over Kling's 10 MB (with
        the default, 10 MB, it always is); otherwise it gets the placeholder frame.
    :param check_images: check every input photo the emulator obtains against Kling's published
        limits (:func:`airflow_provider_klingfx.images.check_image`: JPEG or PNG by content, at most
        10 MB, each side at least 300 px, aspect ratio within 2.5:1), as the vendor does. A photo
        breaking one makes the generation end in ``error`` (after ``queued`` and ``generating``, as
        usual; no video) with an image-validation error in ``error_shape``. Photos are only
        checked once obtained: a photo that cannot be downloaded at all (refused connection,
        unknown host, timeout, an HTTP status other than 200) keeps the placeholder frame, since
        offline tests use unreachable example URLs; with ``render="off"`` nothing is downloaded,
        so nothing is checked. ``lazy`` renders still download and check the photos at submission
        (the status stays ``generating`` until they are checked). Default on.
    :param accept_data_uris: accept ``data:image/...;base64,...`` URIs in ``image_url`` (the vendor
        documents them for a sibling model only; for effects it is unknown). Off (default): a
        create with one is refused with 422 in the configured error body, charging nothing. On:
        the decoded bytes are the photo (checked and rendered like a downloaded one); a malformed
        data URI (no comma, not base64, not an image media type) gets 422. Either way the URI is
        only ever shown as :func:`airflow_provider_klingfx.domain.redact_url` shows it (media type
        and length), in answers, logs and the admin endpoints alike.
    :param max_recorded_requests: how many request records the stats keep (the oldest are dropped).
    :param status_words: other words for the canonical statuses (``queued``, ``generating``,
        ``completed``, ``error``) in create and fetch answers, e.g. ``{"completed": "succeeded",
        "error": "failed"}`` (words other models of the same fetch URL use) or ``{"error":
        "cancelled"}``; they win over ``legacy_statuses``. Only the wire changes: the state
        machine, the video route and the stats keep the canonical words. Default: none.
    :param usage_in: where usage is reported: ``"both"`` (default; the create answer and the
        completed fetch answer), ``"create"``, ``"fetch"`` or ``"none"``. Reported means
        ``meta.usage`` in the body plus the ``x-aimlapi-credits-used`` (integer) and
        ``x-aimlapi-usd-spent`` headers. A failed generation never reports usage on fetch.
    :param usage_field: name of the credit count in ``meta.usage``: ``"credits_used"`` (default,
        the schema's) or ``"tokens_used"`` (older answers).
    :param usd_per_credit: price of one credit in USD, for ``meta.usage.usd_spent`` and the
        ``x-aimlapi-usd-spent`` header. Default ``0.0000005`` (the vendor's tracing page: 2480
        credits = $0.00124), so a 120,000-credit generation is $0.06.
    :param error_body: shape of HTTP error bodies: ``"documented"`` (default; the vendor's errors
        page: ``{message, path, requestId, statusCode, timestamp}`` plus ``errors: [{path,
        message}]`` for validation errors) or ``"live"`` (seen live: ``{title, status, message,
        instance, requestId, timestamp, error: {name, message}}`` plus ``detail: [{loc, msg, type,
        input}]`` for validation errors).
    :param rate_limit: requests per second allowed per API key on the API routes (create and fetch,
        both path styles; not the video download, the samples, ``/health`` or ``/_emulator/*``);
        ``None`` (default): no limit. A token bucket per key, refilled at ``rate_limit`` tokens a
        second from the state's clock. The key is checked first: a 401 consumes nothing. Over the
        limit the answer is 429 in the configured error body (a limited create makes no generation
        and charges nothing). Only a hash of the key is kept.
    :param rate_limit_burst: the bucket's capacity, i.e. how many requests may come at once;
        default ``max(1, rate_limit)``, one second's worth. Must be >= 1.
    :param rate_limit_retry_after: send ``Retry-After`` with a 429 (default): whole seconds until a
        token is available, rounded up, at least 1. ``False``: no header.
    :param outages: outage windows, see :class:`Outage` (dicts are converted with
        :meth:`Outage.from_dict`); their times count from the creation (or reset) of the state.
        More can be scheduled at run time (``POST /_emulator/outage``,
        :meth:`RunningEmulator.schedule_outage`). Where a ``"refuse"`` and a ``"503"`` window
        overlap, refuse wins.
    """

    api_key: str = field(default_factory=_default_api_key)
    queued_seconds: float = 1.0
    generating_seconds: float = 3.0
    generating_seconds_max: float | None = None
    seed: int | None = None
    legacy_statuses: bool = False
    error_shape: ErrorShape = "detail"
    faults: list[FaultRule] = field(default_factory=list)
    credits: int | None = None
    credits_per_generation: int = 120_000
    render: RenderMode = "eager"
    video_dir: str | Path | None = None
    render_concurrency: int = 2
    image_timeout: float = 5.0
    max_image_bytes: int = MAX_IMAGE_BYTES
    check_images: bool = True
    accept_data_uris: bool = False
    max_recorded_requests: int = 20_000
    status_words: dict[str, str] = field(default_factory=dict)
    usage_in: UsageIn = "both"
    usage_field: UsageField = "credits_used"
    usd_per_credit: float = DEFAULT_USD_PER_CREDIT
    error_body: ErrorBody = "documented"
    rate_limit: float | None = None
    rate_limit_burst: float | None = None
    rate_limit_retry_after: bool = True
    outages: list[Outage] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.api_key:
            raise ValueError("api_key must not be empty")
        if self.error_shape not in ("detail", "name_message"):
            raise ValueError(f"error_shape must be 'detail' or 'name_message', got {self.error_shape!r}")
        if self.render not in ("eager", "lazy", "off"):
            raise ValueError(f"render must be 'eager', 'lazy' or 'off', got {self.render!r}")
        if self.queued_seconds < 0 or self.generating_seconds < 0:
            raise ValueError("queued_seconds and generating_seconds must be >= 0")
        if self.generating_seconds_max is not None and self.generating_seconds_max < self.generating_seconds:
            raise ValueError("generating_seconds_max must be >= generating_seconds")
        if self.render_concurrency < 1:
            raise ValueError("render_concurrency must be >= 1")
        if isinstance(self.max_image_bytes, bool) or not isinstance(self.max_image_bytes, int):
            raise ValueError(f"max_image_bytes must be an integer, got {self.max_image_bytes!r}")
        if self.max_image_bytes < 1:
            raise ValueError(f"max_image_bytes must be >= 1, got {self.max_image_bytes!r}")
        self.faults = [f if isinstance(f, FaultRule) else FaultRule.from_dict(f) for f in self.faults]
        if not isinstance(self.status_words, Mapping):
            raise ValueError(f"status_words must be a mapping, got {type(self.status_words).__name__}")
        self.status_words = dict(self.status_words)
        for canonical, word in self.status_words.items():
            if canonical not in CANONICAL_STATUSES:
                raise ValueError(
                    f"status_words keys must be among {list(CANONICAL_STATUSES)}, got {canonical!r}"
                )
            if not isinstance(word, str) or not word.strip():
                raise ValueError(f"status_words[{canonical!r}] must be a non-empty string, got {word!r}")
        if self.usage_in not in ("both", "create", "fetch", "none"):
            raise ValueError(f"usage_in must be 'both', 'create', 'fetch' or 'none', got {self.usage_in!r}")
        if self.usage_field not in ("credits_used", "tokens_used"):
            raise ValueError(f"usage_field must be 'credits_used' or 'tokens_used', got {self.usage_field!r}")
        if (
            isinstance(self.usd_per_credit, bool)
            or not isinstance(self.usd_per_credit, int | float)
            or not math.isfinite(self.usd_per_credit)
            or self.usd_per_credit < 0
        ):
            raise ValueError(f"usd_per_credit must be a number >= 0, got {self.usd_per_credit!r}")
        if self.error_body not in ("documented", "live"):
            raise ValueError(f"error_body must be 'documented' or 'live', got {self.error_body!r}")
        if self.rate_limit is not None and _as_number(self.rate_limit, "rate_limit") <= 0:
            raise ValueError(f"rate_limit must be > 0 requests per second, got {self.rate_limit!r}")
        if self.rate_limit_burst is not None:
            if self.rate_limit is None:
                raise ValueError("rate_limit_burst needs a rate_limit")
            if _as_number(self.rate_limit_burst, "rate_limit_burst") < 1:
                raise ValueError(f"rate_limit_burst must be >= 1, got {self.rate_limit_burst!r}")
        self.outages = [o if isinstance(o, Outage) else Outage.from_dict(o) for o in self.outages]

    @property
    def rate_limit_capacity(self) -> float:
        """The rate-limit bucket's capacity: ``rate_limit_burst`` or one second's worth (at least 1)."""
        if self.rate_limit_burst is not None:
            return self.rate_limit_burst
        return max(1.0, self.rate_limit or 0.0)

    def wire_status(self, status: str) -> str:
        """The word the answers use for a canonical status (``status_words``, legacy ones, or itself).

        Read at each answer, so a test may change the configuration of a running emulator.

        :param status: ``queued``, ``generating``, ``completed`` or ``error``.
        """
        word = self.status_words.get(status)
        if word is not None:
            return word
        if self.legacy_statuses:
            return LEGACY_STATUS_WORDS.get(status, status)
        return status

    def reports_usage(self, answer: Literal["create", "fetch"]) -> bool:
        """Whether usage goes on that answer (``usage_in``).

        :param answer: ``create`` or a completed ``fetch``.
        """
        return self.usage_in in ("both", answer)

    def __repr__(self) -> str:
        # Never show the key, even in a debugger or a failing test's output.
        shown = ", ".join(
            f"{f.name}={'***' if f.name == 'api_key' else repr(getattr(self, f.name))}" for f in fields(self)
        )
        return f"EmulatorConfig({shown})"


# ---------------------------------------------------------------------------------------------
# State
# ---------------------------------------------------------------------------------------------


@dataclass
class GenerationRecord:
    """One generation the emulator accepted (internal, but readable from tests via the state).

    :param id: the vendor-style id, ``<uuid4>:kling-video/v1.6/<tier>/effects``.
    :param file_id: the uuid in the video's URL (``/files/<file_id>/output.mp4``).
    :param submitted_at: clock time of the create.
    :param queued_until: clock time it stops being ``queued``.
    :param ready_at: clock time it may report a terminal status.
    :param fails: whether it ends in ``error`` (the face rule).
    :param image_urls: the image URLs as sent, except ``data:`` URIs, kept as
        :func:`~airflow_provider_klingfx.domain.redact_url` shows them (their bytes are in
        ``data_photos`` until used).
    :param image_url_list: whether ``image_url`` was sent as an array (error ``loc`` then names
        the position).
    :param render_task: the background render, if one was started.
    :param video: the MP4 bytes when kept in memory.
    :param video_path: the MP4 file when ``video_dir`` is set.
    :param file_size: size of the MP4 in bytes, once rendered.
    :param fallback_images: positions of inputs replaced by a placeholder frame.
    :param render_error: why rendering failed, if it did (then the generation reports ``error``).
    :param image_error: the photo that broke one of Kling's limits (``check_images``), if one did
        (then the generation reports ``error`` and nothing is rendered).
    :param prepare_task: the background download and check of the photos, when it runs apart from
        the render (``lazy`` renders with ``check_images``).
    :param data_photos: the decoded bytes of ``data:`` URIs by 0-based position, until used.
    :param image_sha256: by position, the SHA-256 (hex) of each photo the emulator got whole: a
        ``data:`` URI's bytes from the create on (whatever ``render`` says), a downloaded photo's
        once downloaded; ``None`` otherwise. How a test tells which bytes reached the emulator.
    :param inputs: the photos obtained and checked, until rendered (``None``: a placeholder).
    """

    id: str
    file_id: str
    model: str
    effect_scene: str
    image_urls: tuple[str, ...]
    duration: int
    credits: int
    submitted_at: float
    queued_until: float
    ready_at: float
    fails: bool
    client_request_id: str | None = None
    render_task: asyncio.Task[None] | None = field(default=None, repr=False)
    video: bytes | None = field(default=None, repr=False)
    video_path: Path | None = None
    file_size: int | None = None
    fallback_images: tuple[int, ...] = ()
    render_error: str | None = None
    image_url_list: bool = False
    image_error: ImageProblem | None = None
    prepare_task: asyncio.Task[None] | None = field(default=None, repr=False)
    data_photos: dict[int, bytes] = field(default_factory=dict, repr=False)
    inputs: tuple[bytes | None, ...] | None = field(default=None, repr=False)
    image_sha256: list[str | None] = field(default_factory=list)

    @property
    def rendered(self) -> bool:
        """Whether the video is ready to serve."""
        return self.video is not None or self.video_path is not None

    def describe(self, status: str) -> dict[str, Any]:
        """What ``GET /_emulator/generation`` answers about it (image URLs as ``redact_url`` shows them).

        :param status: its canonical status now.
        """
        problem = self.image_error
        return {
            "id": self.id,
            "status": status,
            "model": self.model,
            "effect_scene": self.effect_scene,
            "duration": self.duration,
            "image_urls": [_show_url(u) for u in self.image_urls],
            "rendered": self.rendered,
            "file_size": self.file_size,
            "fallback_images": list(self.fallback_images),
            "image_sha256": list(self.image_sha256),
            "image_error": None
            if problem is None
            else {"index": problem.index, "rule": problem.rule, "message": problem.message},
            "render_error": self.render_error,
        }


@dataclass(frozen=True)
class ImageProblem:
    """An input photo that broke one of Kling's limits (``check_images``).

    :param index: its 0-based position in ``image_url``.
    :param rule: the rule (``format``, ``size``, ``side``, ``aspect``, ``unreadable``), as
        :class:`~airflow_provider_klingfx.images.KlingFxImageError` names it.
    :param message: the one-line message, ``image N (shown) is ...``.
    :param shown: the photo as :func:`~airflow_provider_klingfx.domain.redact_url` shows it.
    """

    index: int
    rule: str
    message: str
    shown: str


class EmulatorState:
    """Everything an emulator instance knows; lives in the app under :data:`STATE_KEY`.

    Only touched from the event loop's thread (use :meth:`RunningEmulator.stats` from others).

    :param config: the instance's configuration.
    :param clock: monotonic clock used for the state machine (injectable for tests).
    """

    def __init__(self, config: EmulatorConfig, clock: Callable[[], float]) -> None:
        self.config = config
        self.clock = clock
        self.render_slots = asyncio.Semaphore(config.render_concurrency)
        self.download_slots = asyncio.Semaphore(16)
        self.executor: ThreadPoolExecutor | None = None
        self.http: ClientSession | None = None
        self.tiny_video: bytes | None = None
        self.samples: dict[str, bytes] = {}
        #: The listening sockets refuse outages close and reopen; set by :func:`start_site` only.
        self.listener: _Listener | None = None
        #: Set whenever the outage windows change, to wake the refuse-outage timer.
        self.outages_changed = asyncio.Event()
        self._reset_data()

    def _reset_data(self) -> None:
        self.generations: dict[str, GenerationRecord] = {}
        self.files: dict[str, GenerationRecord] = {}
        self.requests: deque[dict[str, Any]] = deque(maxlen=self.config.max_recorded_requests)
        self.requests_total = 0
        self.submissions = 0
        self.faults_injected = 0
        self.credits_remaining: int | None = self.config.credits
        self.credits_spent = 0
        self.random = random.Random(self.config.seed)
        self.fault_rules: list[FaultRule] = list(self.config.faults)
        self._fault_seen: list[int] = [0] * len(self.fault_rules)
        self.pending_renders: set[asyncio.Task[None]] = set()
        # Rate limit: sha256(key) -> [tokens, clock time of the last update]. A hash, so the key
        # itself is not kept around (nor shown by a debugger walking the state).
        self.rate_buckets: dict[bytes, list[float]] = {}
        self.rate_limited = 0
        # Outage windows count from here: the creation (or reset) of the state.
        self.epoch = self.clock()
        self.outages: list[Outage] = list(self.config.outages)
        self.outage_rejected = 0
        self.outage_connections_dropped = 0
        self._forget_outage_span()

    def reset(self) -> None:
        """Forget every generation, video, request record and counter; re-arm the configured faults.

        Renders in flight are cancelled. The credit budget is back to ``config.credits``, the
        rate-limit buckets are full again and the outage windows are the configured ones, counted
        from now.
        """
        for task in list(self.pending_renders):
            task.cancel()
        self._reset_data()
        self.outages_changed.set()

    def set_faults(self, rules: Sequence[FaultRule]) -> None:
        """Replace the fault rules (their counters start from zero).

        :param rules: the new rules, in priority order.
        """
        self.fault_rules = list(rules)
        self._fault_seen = [0] * len(self.fault_rules)

    def take_fault(self, method: str, route: str) -> FaultRule | None:
        """Count this request against every matching rule; return the rule that fires, if any.

        Runs without awaiting, so concurrent requests can't both take a ``times=1`` fault.

        :param method: the request's HTTP method.
        :param route: ``create``, ``fetch`` or ``video``.
        """
        fired: FaultRule | None = None
        for i, rule in enumerate(self.fault_rules):
            if not rule.matches(method, route):
                continue
            seen = self._fault_seen[i]
            self._fault_seen[i] = seen + 1
            in_window = seen >= rule.skip and (rule.times == -1 or seen < rule.skip + rule.times)
            if in_window and fired is None:
                fired = rule
        if fired is not None:
            self.faults_injected += 1
        return fired

    def take_token(self, key: str, now: float | None = None) -> float | None:
        """Take one request from ``key``'s rate-limit bucket (``config.rate_limit`` must be set).

        O(1): one hash and one dict access; the bucket is refilled lazily from the time elapsed.

        :param key: the (authorized) bearer key.
        :param now: clock time; default: read the clock.
        :returns: ``None`` if the request may go, else the seconds until it could.
        """
        rate = cast("float", self.config.rate_limit)
        capacity = self.config.rate_limit_capacity
        now = self.clock() if now is None else now
        digest = hashlib.sha256(key.encode()).digest()
        bucket = self.rate_buckets.get(digest)
        tokens = capacity if bucket is None else min(capacity, bucket[0] + max(0.0, now - bucket[1]) * rate)
        # The tolerance: a refill of exactly 1/rate seconds must give a whole token despite floats.
        if tokens >= 1 - 1e-9:
            self.rate_buckets[digest] = [max(0.0, tokens - 1), now]
            return None
        self.rate_buckets[digest] = [tokens, now]
        return (1 - tokens) / rate

    def _forget_outage_span(self) -> None:
        # Cache of outage_window(): its answer holds for clock times in [lo, hi).
        self._outage_span: tuple[float, float, OutageMode | None] = (math.inf, -math.inf, None)

    def outage_window(self, now: float) -> tuple[OutageMode | None, float]:
        """The outage in force at clock time ``now`` and the clock time it may change.

        Amortized O(1): the answer is cached until the next window edge, so requests don't scan
        the windows (they only do so once per edge).

        :param now: clock time.
        :returns: ``(mode or None, clock time of the next edge or inf)``.
        """
        lo, hi, mode = self._outage_span
        if lo <= now < hi:
            return mode, hi
        t = now - self.epoch
        lo, hi, mode = -math.inf, math.inf, None
        for window in self.outages:
            if window.start <= t < window.end:
                if mode != "refuse":
                    mode = window.mode
                lo, hi = max(lo, window.start), min(hi, window.end)
            elif t < window.start:
                hi = min(hi, window.start)
            else:
                lo = max(lo, window.end)
        self._outage_span = (lo + self.epoch, hi + self.epoch, mode)
        return mode, hi + self.epoch

    def outage_at(self, now: float | None = None) -> OutageMode | None:
        """The outage in force now (``"503"``, ``"refuse"``) or ``None``.

        :param now: clock time; default: read the clock.
        """
        if not self.outages:
            return None
        return self.outage_window(self.clock() if now is None else now)[0]

    def schedule_outage(self, start_in: float, duration: float, mode: str = "503") -> Outage:
        """Add an outage window starting ``start_in`` seconds from now on the state's clock.

        :param start_in: seconds from now (>= 0).
        :param duration: seconds (> 0).
        :param mode: ``"503"`` or ``"refuse"`` (see :class:`Outage`).
        :returns: the window, its times counted like the configured ones.
        :raises ValueError: on invalid values, or ``"refuse"`` on a server :func:`start_site` did
            not start (aiohttp's test server: its socket is not the emulator's to close).
        """
        start_in = _as_number(start_in, "start_in")
        duration = _as_number(duration, "duration")
        if start_in < 0 or duration <= 0:
            raise ValueError(
                f"an outage needs start_in >= 0 and duration > 0, got {start_in:g}, {duration:g}"
            )
        if mode not in OUTAGE_MODES:
            raise ValueError(f"outage mode must be one of {list(OUTAGE_MODES)}, got {mode!r}")
        if mode == "refuse" and self.listener is None:
            raise ValueError(_REFUSE_UNSUPPORTED)
        start = self.clock() - self.epoch + start_in
        window = Outage(start, start + duration, cast("OutageMode", mode))
        self.outages.append(window)
        self._forget_outage_span()
        self.outages_changed.set()
        return window

    def status_of(self, gen: GenerationRecord, now: float | None = None) -> str:
        """The generation's canonical status now: ``queued``, ``generating``, ``completed`` or ``error``.

        Answers rename it with :meth:`EmulatorConfig.wire_status`; everything else uses this word.

        :param gen: the generation.
        :param now: clock time; default: read the clock.
        """
        now = self.clock() if now is None else now
        if now < gen.queued_until:
            return "queued"
        if now < gen.ready_at:
            return "generating"
        if gen.fails or gen.render_error or gen.image_error:
            return "error"
        # Eager mode: the video must exist before the generation may say it is completed.
        if self.config.render == "eager" and not gen.rendered:
            return "generating"
        # Lazy mode with check_images: the photos must have been checked.
        if gen.prepare_task is not None and not gen.prepare_task.done():
            return "generating"
        return "completed"

    def record(self, entry: dict[str, Any]) -> None:
        """Append a request record to the stats.

        :param entry: the record (method, path, query_generation_id, client_request_id, status, fault).
        """
        self.requests_total += 1
        self.requests.append(entry)

    def stats(self) -> dict[str, Any]:
        """The stats document served by ``GET /_emulator/stats``."""
        now = self.clock()
        return {
            "submissions": self.submissions,
            "requests": list(self.requests),
            "requests_total": self.requests_total,
            "faults_injected": self.faults_injected,
            "generations": {gid: self.status_of(g, now) for gid, g in self.generations.items()},
            "renders_pending": len(self.pending_renders),
            "credits_spent": self.credits_spent,
            "credits_remaining": self.credits_remaining,
            "fault_rules": [r.to_dict() for r in self.fault_rules],
            "rate_limited": self.rate_limited,
            "outages": [o.to_dict() for o in self.outages],
            "outage_active": self.outage_at(now),
            "outage_rejected": self.outage_rejected,
            "outage_connections_dropped": self.outage_connections_dropped,
        }

    async def wait_for_renders(self, timeout: float = 60.0) -> None:
        """Wait until no render is in flight (tests use it instead of sleeping).

        :param timeout: seconds to wait at most.
        :raises TimeoutError: if renders are still running after ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while self.pending_renders:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{len(self.pending_renders)} renders still running after {timeout}s")
            await asyncio.wait(set(self.pending_renders), timeout=remaining)


_REFUSE_UNSUPPORTED = (
    "refuse outages need a server started by start_site() (run_emulator_in_thread or the CLI), "
    "which can close and reopen its listening socket; this one (e.g. aiohttp's test server) can't: "
    "use mode '503' here"
)

STATE_KEY = web.AppKey("klingfx_emulator_state", EmulatorState)
# Typed request-storage keys where aiohttp has them (3.12+: plain strings there warn); plain
# strings on older versions.
_RequestKey: Any = getattr(web, "RequestKey", None)
_REQUEST_ID: Any = _RequestKey("klingfx_request_id", str) if _RequestKey else "klingfx_request_id"
_CLIENT_ID: Any = (
    _RequestKey("klingfx_client_request_id", object) if _RequestKey else "klingfx_client_request_id"
)
# The generation a create made, for the fault actions that rewrite the create's answer.
_CREATED: Any = _RequestKey("klingfx_created", object) if _RequestKey else "klingfx_created"


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class _Problem:
    """One thing wrong with a request, for both error body shapes.

    :param path: where, as the documented ``errors[].path`` says it (``image_url[1]``; ``""``: the body).
    :param message: what is wrong (``errors[].message``; ``detail[].msg``).
    :param loc: where, as the live ``detail[].loc`` says it (``("body", "image_url", 1)``).
    :param input: the offending value as sent (``None`` when it is missing).
    """

    path: str
    message: str
    loc: tuple[str | int, ...]
    input: Any = None

    def scrubbed(self) -> _Problem:
        """This problem with every ``data:`` URI in its message and input shown by ``redact_url``."""
        return _Problem(self.path, _scrub_text(self.message), self.loc, _scrub_value(self.input))


def _show_url(url: str) -> str:
    """``redact_url(url)``, except for a data: URI ``redact_url`` has shown already (kept as it is)."""
    return url if _SHOWN_DATA_URI.fullmatch(url) else redact_url(url)


def _scrub_text(text: str) -> str:
    # A data: URI is a photo (personal data, megabytes long): never echoed, only described.
    return _DATA_URI_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)


def _scrub_value(value: Any) -> Any:
    """``value`` with every string in it that is (or contains) a ``data:`` URI shown by ``redact_url``."""
    if isinstance(value, str):
        return _show_url(value) if _is_data_uri(value) else _scrub_text(value)
    if isinstance(value, list):
        return [_scrub_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _scrub_value(v) for k, v in value.items()}
    return value


def _is_data_uri(url: str) -> bool:
    return url.lstrip()[:5].lower() == "data:"


def _decode_data_uri(url: str) -> bytes | None:
    """The bytes of a ``data:image/<type>[;param...];base64,<data>`` URI; None if it is not one."""
    head, comma, payload = url.strip().partition(",")
    if not comma:
        return None
    media_type, *params = head[5:].split(";")
    if not media_type.strip().lower().startswith("image/") or not params or params[-1].lower() != "base64":
        return None
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return None


def _data_uri_problems(
    urls: Sequence[str], as_list: bool, accept: bool
) -> tuple[dict[int, bytes], list[_Problem]]:
    """Decode the ``data:`` URIs among ``urls`` (``accept_data_uris``); 422 problems if refused or malformed.

    :returns: ``({0-based position: bytes}, [])`` or ``({}, problems)``.
    """
    photos: dict[int, bytes] = {}
    problems: list[_Problem] = []
    for i, url in enumerate(urls):
        if not _is_data_uri(url):
            continue
        path = f"image_url[{i}]" if as_list else "image_url"
        loc: tuple[str | int, ...] = ("body", "image_url", i) if as_list else ("body", "image_url")
        if not accept:
            message = (
                f"{path} is a data URI; data URIs are not accepted (emulator switch accept_data_uris is "
                "off): give an http(s) URL the API can download"
            )
            problems.append(_Problem(path, message, loc, redact_url(url)))
            continue
        data = _decode_data_uri(url)
        if data is None:
            message = f"{path} is not a valid data URI: expected data:image/<type>;base64,<base64 data>"
            problems.append(_Problem(path, message, loc, redact_url(url)))
        else:
            photos[i] = data
    return ({}, problems) if problems else (photos, [])


def _exception_name(status: int) -> str:
    # The live body names the server's exception class after the reason phrase, NestJS style:
    # 400 BadRequestException, 404 NotFoundException, 503 ServiceUnavailableException...
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        return "HttpException"
    return re.sub(r"[^A-Za-z0-9]", "", phrase.title()) + "Exception"


def _envelope(
    request: web.Request,
    status: int,
    message: str,
    *,
    problems: Sequence[_Problem] | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """An HTTP error answer in the configured ``error_body`` shape (every error goes through here).

    ``documented``: ``{message, path, requestId, statusCode, timestamp}`` plus ``errors: [{path,
    message}]`` when there are problems. ``live``: ``{title, status, message, instance, requestId,
    timestamp, error: {name, message}}`` plus ``detail: [{loc, msg, type, input}]``.
    """
    request_id = request[_REQUEST_ID]
    if problems is not None:
        problems = [p.scrubbed() for p in problems]
    body: dict[str, Any]
    if request.app[STATE_KEY].config.error_body == "live":
        body = {
            "title": _reason(status),
            "status": status,
            "message": message,
            "instance": request.path,
            "requestId": request_id,
            "timestamp": _now_iso(),
            "error": {"name": _exception_name(status), "message": message},
        }
        if problems is not None:
            body["detail"] = [
                {"loc": list(p.loc), "msg": p.message, "type": "value_error", "input": p.input}
                for p in problems
            ]
    else:
        body = {
            "message": message,
            "path": request.path,
            "requestId": request_id,
            "statusCode": status,
            "timestamp": _now_iso(),
        }
        if problems is not None:
            body["errors"] = [{"path": p.path, "message": p.message} for p in problems]
    return web.json_response(body, status=status, headers=headers)


def _bearer_token(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def _authorized(request: web.Request, api_key: str) -> bool:
    token = _bearer_token(request)
    # Constant-time comparison: the emulator may listen beyond localhost in someone's setup.
    return token is not None and hmac.compare_digest(token.encode(), api_key.encode())


def _rate_limited(request: web.Request) -> web.Response | None:
    """The 429 answer if the (authorized) key is over ``rate_limit``, else None (a token is taken)."""
    state = request.app[STATE_KEY]
    config = state.config
    # Read at each request, so tests may change it on a running emulator; bypassing the config's
    # validation that way, 0 (or less) means no limit, like None.
    if config.rate_limit is None or config.rate_limit <= 0:
        return None
    wait = state.take_token(cast("str", _bearer_token(request)))
    if wait is None:
        return None
    state.rate_limited += 1
    headers = {"Retry-After": str(max(1, math.ceil(wait)))} if config.rate_limit_retry_after else None
    return _envelope(request, 429, "Too Many Requests", headers=headers)


def _route_kind(request: web.Request) -> str | None:
    if request.path in API_PATHS:
        return {"POST": "create", "GET": "fetch", "HEAD": "fetch"}.get(request.method)
    if request.match_info.route.name == "video":
        return "video"
    return None


def _drop_connection(request: web.Request) -> web.Response:
    """Close the connection without an answer; the returned response is never written.

    aiohttp then fails writing it with a connection error, which it treats as the client going
    away: no error is logged and the client sees the connection closed (or reset).
    """
    request.protocol.force_close()
    transport = request.transport
    if transport is not None:
        transport.close()
    return web.Response(status=_DROPPED_STATUS)


def validate_create_body(body: object) -> tuple[dict[str, Any] | None, list[dict[str, str]]]:
    """Validate a create body like the vendor: the schema's ``oneOf`` plus the image-count rule.

    Unknown extra properties are ignored, as the schema allows them.

    :param body: the decoded JSON body.
    :returns: ``(normalized, [])`` with keys model, effect_scene, image_urls (tuple), duration; or
        ``(None, errors)`` with errors as ``{"path", "message"}``.
    """
    valid, problems = _check_create_body(body)
    return valid, [{"path": p.path, "message": _scrub_text(p.message)} for p in problems]


def _check_create_body(body: object) -> tuple[dict[str, Any] | None, list[_Problem]]:
    """:func:`validate_create_body` with the offending values kept for the live error body."""
    if not isinstance(body, dict):
        return None, [_Problem("", f"body must be a JSON object, got {type(body).__name__}", ("body",), body)]
    errors: list[_Problem] = []

    model = body.get("model")
    if "model" not in body:
        errors.append(_Problem("model", "model is required", ("body", "model")))
    elif not isinstance(model, str) or model not in MODELS:
        errors.append(
            _Problem("model", f"model must be one of {list(MODELS)}, got {model!r}", ("body", "model"), model)
        )

    scene = body.get("effect_scene")
    if "effect_scene" not in body:
        errors.append(_Problem("effect_scene", "effect_scene is required", ("body", "effect_scene")))
    elif not isinstance(scene, str) or scene not in _SCENE_SET:
        hint = ""
        if isinstance(scene, str):
            close = difflib.get_close_matches(scene, EFFECT_SCENES, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
        errors.append(
            _Problem(
                "effect_scene",
                f"effect_scene must be one of the {len(EFFECT_SCENES)} effect scenes, got {scene!r}{hint}",
                ("body", "effect_scene"),
                scene,
            )
        )

    urls: list[str] | None = None
    raw_urls = body.get("image_url")
    if "image_url" not in body:
        errors.append(_Problem("image_url", "image_url is required", ("body", "image_url")))
    elif isinstance(raw_urls, str):
        if _URI_RE.match(raw_urls):
            urls = [raw_urls]
        else:
            errors.append(
                _Problem(
                    "image_url",
                    f"image_url must be a URI, got {raw_urls[:200]!r}",
                    ("body", "image_url"),
                    raw_urls,
                )
            )
    elif isinstance(raw_urls, list):
        bad = False
        for i, item in enumerate(raw_urls):
            if not isinstance(item, str) or not _URI_RE.match(item):
                shown = item[:200] if isinstance(item, str) else item
                errors.append(
                    _Problem(
                        f"image_url[{i}]",
                        f"image_url[{i}] must be a URI, got {shown!r}",
                        ("body", "image_url", i),
                        item,
                    )
                )
                bad = True
        urls = None if bad else list(raw_urls)
    else:
        errors.append(
            _Problem(
                "image_url",
                f"image_url must be a URI or an array of URIs, got {type(raw_urls).__name__}",
                ("body", "image_url"),
                raw_urls,
            )
        )

    duration = body.get("duration", DURATIONS[0])
    # JSON booleans and floats are not integers for the schema, though Python would compare them.
    if isinstance(duration, bool) or not isinstance(duration, int) or duration not in DURATIONS:
        errors.append(
            _Problem(
                "duration",
                f"duration must be one of {list(DURATIONS)} (seconds), got {duration!r}",
                ("body", "duration"),
                duration,
            )
        )

    if urls is not None and isinstance(scene, str) and scene in _SCENE_SET:
        low, high = image_count_range(scene)
        if not low <= len(urls) <= high:
            want = f"exactly {low}" if low == high else f"{low} or {high}"
            errors.append(
                _Problem(
                    "image_url",
                    f"effect_scene {scene!r} takes {want} image URL{'s' if high > 1 else ''}, "
                    f"got {len(urls)}",
                    ("body", "image_url"),
                    raw_urls,
                )
            )
    if errors:
        return None, errors
    return {
        "model": model,
        "effect_scene": scene,
        "image_urls": tuple(cast("list[str]", urls)),
        "duration": duration,
    }, []


def _error_object(shape: ErrorShape, gen: GenerationRecord) -> dict[str, Any]:
    problem = gen.image_error
    if problem is not None and not gen.fails:
        if shape == "name_message":
            return {"name": "ImageValidationError", "message": problem.message}
        loc: list[str | int] = ["body", "image_url"]
        if gen.image_url_list:
            loc.append(problem.index)
        return {
            "detail": [
                {"loc": loc, "msg": problem.message, "type": "image_validation_error", "input": problem.shown}
            ]
        }
    if gen.render_error and not gen.fails:
        return {"name": "RenderError", "message": gen.render_error}
    if shape == "name_message":
        return {"name": "FaceDetectionError", "message": "Could not detect face in the image"}
    culprit = next((u for u in gen.image_urls if "noface" in u.lower()), gen.image_urls[0])
    return {
        "detail": [
            {
                "loc": ["body", "image_url"],
                "msg": "Could not detect face in the image",
                "type": "face_detection_error",
                "input": culprit,
            }
        ]
    }


# ---------------------------------------------------------------------------------------------
# Rendering pipeline
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Download:
    """What the emulator got of one input photo.

    :param data: the photo, or only its first bytes when it is over ``max_image_bytes``.
    :param size: its size in bytes: the announced ``Content-Length``, else the bytes read (then a
        lower bound when ``complete`` is false: the download stopped one byte past the limit).
    :param complete: whether ``data`` is the whole photo.
    """

    data: bytes
    size: int
    complete: bool


async def _download_image(state: EmulatorState, url: str) -> _Download | None:
    """Download one input image, reading at most ``max_image_bytes`` + 1 bytes of it.

    :returns: what was read (see :class:`_Download`), or None if it can't be had at all (not
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
                return _Download(b"", announced, complete=False)  # not a byte read
            data = bytearray()
            while len(data) <= limit:
                chunk = await resp.content.read(min(64 * 1024, limit + 1 - len(data)))
                if not chunk:
                    break
                data += chunk
            return _Download(bytes(data), len(data), complete=len(data) <= limit)
    except (ClientError, asyncio.TimeoutError, ValueError, OSError) as exc:
        # Client errors may quote the URL, query included (a presigned URL's signature): scrubbed.
        log.warning(
            "input image %s unusable (%s); using a placeholder frame",
            redact_url(url),
            redact_urls(str(exc) or type(exc).__name__),
        )
        return None


async def _obtain_photo(state: EmulatorState, gen: GenerationRecord, index: int) -> _Download | None:
    """The photo at ``index``: a data: URI's decoded bytes (handed over once), else downloaded."""
    data = gen.data_photos.pop(index, None)
    if data is not None:
        return _Download(data, len(data), complete=True)
    return await _download_image(state, gen.image_urls[index])


async def _prepare(state: EmulatorState, gen: GenerationRecord) -> None:
    """Obtain the photos and, with ``check_images``, check them against Kling's limits.

    Sets ``gen.inputs`` (the photos to render, None for a placeholder) or, when a photo breaks a
    rule, ``gen.image_error`` (the first such photo in request order; nothing is kept then).
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
        shown = _show_url(url)
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


async def _render(state: EmulatorState, gen: GenerationRecord) -> None:
    """Obtain and check the inputs (unless done at submission), then render the video in the executor."""
    from airflow_provider_klingfx.emulator.render import render_video

    loop = asyncio.get_running_loop()
    try:
        if gen.prepare_task is not None:
            await gen.prepare_task
        else:
            await _prepare(state, gen)
        if gen.image_error is not None:
            return  # the generation ends in error: nothing to render
        images = list(gen.inputs or ())
        gen.inputs = None  # the render's list holds them now; freed when it ends
        async with state.render_slots:
            result = await loop.run_in_executor(
                state.executor, render_video, images, gen.effect_scene, gen.duration
            )
            if state.config.video_dir is not None:
                path = Path(state.config.video_dir) / f"{gen.file_id}.mp4"
                await loop.run_in_executor(state.executor, path.write_bytes, result.data)
                gen.video_path = path
            else:
                gen.video = result.data
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        # An emulator bug or a broken PyAV build: fail the generation visibly instead of leaving it
        # "generating" forever.
        log.exception("rendering the video of generation %s failed", gen.id)
        gen.render_error = f"the emulator could not render the video: {exc}"
        return
    gen.file_size = len(result.data)
    gen.fallback_images = result.fallback_images


def _track(state: EmulatorState, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    # Renders and checks in flight: reset and shutdown cancel them, wait_for_renders waits for them.
    task = asyncio.get_running_loop().create_task(coro)
    state.pending_renders.add(task)
    task.add_done_callback(state.pending_renders.discard)
    return task


def _start_prepare(state: EmulatorState, gen: GenerationRecord) -> None:
    """Obtain and check the photos now, apart from the render (``lazy`` with ``check_images``)."""
    if gen.prepare_task is None and gen.render_task is None:
        gen.prepare_task = _track(state, _prepare(state, gen))


def _start_render(state: EmulatorState, gen: GenerationRecord) -> asyncio.Task[None]:
    if gen.render_task is None:
        gen.render_task = _track(state, _render(state, gen))
    return gen.render_task


# ---------------------------------------------------------------------------------------------
# Handlers
# ---------------------------------------------------------------------------------------------


@web.middleware
async def _middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Request ids, the client id echo, fault injection, JSON errors and the request log."""
    state = request.app[STATE_KEY]
    request_id = str(uuid.uuid4())
    request[_REQUEST_ID] = request_id
    raw_client_id = request.headers.get("X-Client-Request-Id")
    client_id = raw_client_id if raw_client_id and _CLIENT_ID_RE.match(raw_client_id) else None
    request[_CLIENT_ID] = client_id
    # Admin and health endpoints are the observer: they are neither faulted nor recorded.
    observed = not (request.path.startswith("/_emulator/") or request.path == "/health")
    kind = _route_kind(request)
    # An outage comes before everything else: faults neither fire nor count on what it answers.
    outage = state.outage_at()
    if outage == "503" and kind not in ("create", "fetch"):
        outage = None  # a 503 outage is the API's: the other routes keep working
    fault = state.take_fault(request.method, kind) if kind and outage is None else None
    entry: dict[str, Any] = {
        "method": request.method,
        "path": request.path,
        "query_generation_id": request.query.get("generation_id"),
        "client_request_id": client_id,
        "status": None,
        "fault": fault.action if fault else None,
    }
    try:
        resp: web.StreamResponse
        if outage == "refuse":
            # The listener is closed at the window's start; this request got in just before (or a
            # fake clock moved between two checks of the timer): nothing answers in a refuse outage.
            state.outage_connections_dropped += 1
            resp = _drop_connection(request)
        elif outage == "503":
            state.outage_rejected += 1
            resp = _envelope(request, 503, "Service Unavailable")
        elif fault is None:
            resp = await handler(request)
        elif fault.action == "status":
            assert fault.status is not None
            extra = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else None
            resp = _envelope(request, fault.status, _reason(fault.status), headers=extra)
        elif fault.action == "drop":
            resp = _drop_connection(request)
        elif fault.action == "garbage":
            resp = web.Response(status=200, text="<html>oops</html>", content_type="text/html")
        elif fault.action == "slow":
            await asyncio.sleep(fault.delay)
            resp = await handler(request)
        elif fault.action == "truncate":
            resp = await _truncated_video(request)
        elif fault.action in ("accept_without_id", "accept_unreadable"):
            # Let the create happen, then answer it without a readable id.
            resp = await handler(request)
            gen = request.get(_CREATED)
            if isinstance(gen, GenerationRecord):
                resp = _create_answer(
                    request, gen, id_in_body=False, trace_header=fault.action == "accept_without_id"
                )
        else:  # drop_after_accept: let the create happen, then lose the answer
            await handler(request)
            resp = _drop_connection(request)
    except web.HTTPException as exc:
        extra = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        resp = _envelope(request, exc.status, exc.reason, headers=extra)
    except Exception:
        # An emulator bug: answer in the API's shape so clients show a readable error.
        log.exception("unhandled error answering %s %s", request.method, request.path)
        resp = _envelope(request, 500, "Internal Server Error")
    if resp.status != _DROPPED_STATUS:
        if not resp.prepared:  # a truncated download stamped its headers before sending them
            _stamp_headers(request, resp)
        entry["status"] = resp.status
    if observed:
        state.record(entry)
    return resp


def _stamp_headers(request: web.Request, resp: web.StreamResponse) -> None:
    """The headers every answer carries: ``x-request-id`` and the valid client id, echoed."""
    resp.headers["x-request-id"] = request[_REQUEST_ID]
    client_id = request.get(_CLIENT_ID)
    if client_id is not None:
        resp.headers["X-Client-Request-Id"] = client_id


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _usage(config: EmulatorConfig, credits: int) -> tuple[dict[str, Any], dict[str, str]]:
    """``meta`` and the cost headers for ``credits`` (an integer count, as the vendor reports it)."""
    usd = round(credits * config.usd_per_credit, 9)
    meta = {"usage": {config.usage_field: credits, "usd_spent": usd}}
    headers = {"x-aimlapi-credits-used": str(credits), "x-aimlapi-usd-spent": f"{usd:.9f}"}
    return meta, headers


def _create_answer(
    request: web.Request, gen: GenerationRecord, *, id_in_body: bool = True, trace_header: bool = True
) -> web.Response:
    """A create's 2xx answer: 200 on the universal path, 201 on the legacy one (the vendor's docs).

    :param id_in_body: ``{"id", "status"[, "meta"]}``; else only ``{"status"}`` (the id-less faults).
    :param trace_header: send ``x-inference-id`` (the generation id).
    """
    config = request.app[STATE_KEY].config
    status = config.wire_status(request.app[STATE_KEY].status_of(gen))
    answer: dict[str, Any] = {"id": gen.id, "status": status} if id_in_body else {"status": status}
    headers: dict[str, str] = {"x-inference-id": gen.id} if trace_header else {}
    if config.reports_usage("create"):
        meta, cost_headers = _usage(config, gen.credits)
        if id_in_body:
            answer["meta"] = meta
        headers.update(cost_headers)
    code = 201 if request.path == LEGACY_API_PATH else 200
    return web.json_response(answer, status=code, headers=headers)


async def _create(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    config = state.config
    if not _authorized(request, config.api_key):
        return _envelope(request, 401, "Unauthorized")
    limited = _rate_limited(request)
    if limited is not None:
        return limited
    raw = await request.read()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        text = raw[:800].decode("utf-8", "replace")[:200]  # not the whole of a 64 MB body
        return _envelope(
            request,
            400,
            "Body validation error!",
            problems=[_Problem("", "body is not valid JSON", ("body",), text)],
        )
    valid, problems = _check_create_body(body)
    if valid is None:
        return _envelope(request, 400, "Body validation error!", problems=problems)
    as_list = isinstance(body["image_url"], list)
    data_photos, problems = _data_uri_problems(valid["image_urls"], as_list, config.accept_data_uris)
    if problems:
        return _envelope(request, 422, "Body validation error!", problems=problems)
    duration: int = valid["duration"]
    cost = config.credits_per_generation * duration // DURATIONS[0]
    if state.credits_remaining is not None:
        if cost > state.credits_remaining:
            return _envelope(request, 403, "Insufficient credits: top up your AI/ML API balance")
        state.credits_remaining -= cost
    state.credits_spent += cost
    state.submissions += 1

    tier = "pro" if valid["model"] == PRO_EFFECTS_MODEL else "standard"
    gen_id = f"{uuid.uuid4()}:kling-video/v1.6/{tier}/effects"
    generating = config.generating_seconds
    if config.generating_seconds_max is not None:
        generating = state.random.uniform(config.generating_seconds, config.generating_seconds_max)
    now = state.clock()
    scene: str = valid["effect_scene"]
    # data: URIs are kept as redact_url shows them (their bytes go in data_photos): neither the
    # state nor a repr holds them, and the face rule does not look for "noface" in base64 (about
    # one 10 MB photo in a hundred would contain the word, case aside, by chance).
    urls = tuple(redact_url(u) if _is_data_uri(u) else u for u in valid["image_urls"])
    gen = GenerationRecord(
        id=gen_id,
        file_id=str(uuid.uuid4()),
        model=valid["model"],
        effect_scene=scene,
        image_urls=urls,
        duration=duration,
        credits=cost,
        submitted_at=now,
        queued_until=now + config.queued_seconds,
        ready_at=now + config.queued_seconds + generating,
        fails=scene in TWO_PERSON_SCENES and any("noface" in u.lower() for u in urls),
        client_request_id=request.get(_CLIENT_ID),
        image_url_list=as_list,
        image_sha256=[
            hashlib.sha256(data_photos[i]).hexdigest() if i in data_photos else None for i in range(len(urls))
        ],
    )
    state.generations[gen_id] = gen
    state.files[gen.file_id] = gen
    request[_CREATED] = gen
    # render="off" downloads (and so checks) nothing: the photos given inline are not kept either.
    if config.render != "off" and not gen.fails:
        gen.data_photos = data_photos
        if config.render == "eager":
            _start_render(state, gen)
        elif config.check_images:
            _start_prepare(state, gen)
    return _create_answer(request, gen)


async def _fetch(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    config = state.config
    gen_id = request.query.get("generation_id", "").strip()
    # x-inference-id on a poll is the id polled with, when it is one the API could have issued.
    headers: dict[str, str] = {}
    if gen_id and (gen_id in state.generations or _GENERATION_ID_RE.match(gen_id)):
        headers["x-inference-id"] = gen_id
    if not _authorized(request, config.api_key):
        return _envelope(request, 401, "Unauthorized", headers=headers)
    # Like a gateway's 429: before the API looks at the request, so without x-inference-id.
    limited = _rate_limited(request)
    if limited is not None:
        return limited
    if not gen_id:
        return _envelope(
            request,
            400,
            "Query validation error!",
            problems=[
                _Problem(
                    "generation_id",
                    "generation_id is required",
                    ("query", "generation_id"),
                    request.query.get("generation_id"),
                )
            ],
        )
    gen = state.generations.get(gen_id)
    if gen is None:
        return _envelope(request, 404, "Generation not found", headers=headers)
    status = state.status_of(gen)
    answer: dict[str, Any] = {
        "id": gen.id,
        "status": config.wire_status(status),
        "video": None,
        "error": None,
        "meta": None,
    }
    if status == "completed":
        # The URL is built from the origin the client used, so it works behind port mappings.
        answer["video"] = {
            "url": f"{request.scheme}://{request.host}/files/{gen.file_id}/output.mp4",
            "content_type": "video/mp4",
            "file_name": "output.mp4",
            "file_size": _served_size(state, gen),
        }
        if config.reports_usage("fetch"):
            answer["meta"], cost_headers = _usage(config, gen.credits)
            headers.update(cost_headers)
    elif status == "error":
        answer["error"] = _error_object(config.error_shape, gen)
    return web.json_response(answer, headers=headers)


def _served_size(state: EmulatorState, gen: GenerationRecord) -> int | None:
    if state.config.render == "off":
        return len(state.tiny_video) if state.tiny_video is not None else None
    return gen.file_size


async def _video_source(request: web.Request) -> bytes | Path | web.Response:
    """What a download serves: the MP4's bytes or file, or the error answer (404, 500)."""
    state = request.app[STATE_KEY]
    gen = state.files.get(request.match_info["file_id"])
    # Like a CDN: nothing to serve until the generation is completed.
    if gen is None or state.status_of(gen) != "completed":
        return _envelope(request, 404, "Not Found")
    if state.config.render == "off":
        data = state.tiny_video
    else:
        if not gen.rendered:
            # Lazy mode (or a render still running): wait for it; shielded so that a client giving
            # up does not cancel a render other downloads will need.
            await asyncio.shield(_start_render(state, gen))
        if gen.render_error:
            return _envelope(request, 500, "Internal Server Error")
        if gen.video_path is not None:
            return gen.video_path
        data = gen.video
    assert data is not None
    return data


async def _video(request: web.Request) -> web.StreamResponse:
    source = await _video_source(request)
    if isinstance(source, web.Response):
        return source
    if isinstance(source, Path):
        return web.FileResponse(source, headers={"Content-Type": "video/mp4"})
    return web.Response(body=source, content_type="video/mp4")


async def _truncated_video(request: web.Request) -> web.StreamResponse:
    """The ``truncate`` fault: announce the whole MP4, send its first half, close the connection.

    The client gets the status line and headers (``Content-Length`` of the full file), then
    ``len // 2`` bytes of the body, then the end of the connection: a short read, as when a CDN
    stream breaks. Error answers (not completed, render failed) and ``HEAD`` go out as usual.
    """
    source = await _video_source(request)
    if isinstance(source, web.Response):
        return source
    if isinstance(source, Path):
        state = request.app[STATE_KEY]
        source = await asyncio.get_running_loop().run_in_executor(state.executor, source.read_bytes)
    if request.method == "HEAD":
        return web.Response(body=source, content_type="video/mp4")
    resp = web.StreamResponse(status=200, headers={"Content-Type": "video/mp4"})
    resp.content_length = len(source)
    _stamp_headers(request, resp)
    await resp.prepare(request)
    await resp.write(source[: len(source) // 2])
    # Closing (not aborting) the transport flushes what was written, then ends the connection.
    request.protocol.force_close()
    transport = request.transport
    if transport is not None:
        transport.close()
    return resp


async def _sample(request: web.Request) -> web.Response:
    from airflow_provider_klingfx.emulator.render import SAMPLE_NAMES, sample_image_png

    state = request.app[STATE_KEY]
    name = request.match_info["name"]
    if name not in SAMPLE_NAMES:
        return _envelope(request, 404, "Not Found")
    data = state.samples.get(name)
    if data is None:
        data = await asyncio.get_running_loop().run_in_executor(state.executor, sample_image_png, name)
        state.samples[name] = data
    return web.Response(body=data, content_type="image/png", headers={"Cache-Control": "max-age=3600"})


async def _health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE_KEY].stats())


async def _generation(request: web.Request) -> web.Response:
    """``GET /_emulator/generation?generation_id=``: what the emulator did with one generation."""
    state = request.app[STATE_KEY]
    gen = state.generations.get(request.query.get("generation_id", "").strip())
    if gen is None:
        return _envelope(request, 404, "Generation not found")
    return web.json_response(gen.describe(state.status_of(gen)))


async def _set_faults(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        body = json.loads(await request.read())
        raw = body["rules"] if isinstance(body, dict) else None
        if not isinstance(raw, list):
            raise ValueError('expected {"rules": [...]}')
        rules = [FaultRule.from_dict(r) for r in raw]
    except (ValueError, KeyError, UnicodeDecodeError) as exc:
        return _envelope(
            request, 400, "Body validation error!", problems=[_Problem("rules", str(exc), ("body", "rules"))]
        )
    state.set_faults(rules)
    return web.json_response({"rules": [r.to_dict() for r in rules]})


async def _set_outage(request: web.Request) -> web.Response:
    """``POST /_emulator/outage`` ``{"start_in", "duration"[, "mode"]}``: schedule a window."""
    state = request.app[STATE_KEY]
    try:
        body = json.loads(await request.read())
        if (
            not isinstance(body, dict)
            or "duration" not in body
            or set(body) - {"start_in", "duration", "mode"}
        ):
            raise ValueError('expected {"start_in": seconds, "duration": seconds, "mode": "503" or "refuse"}')
        window = state.schedule_outage(body.get("start_in", 0), body["duration"], body.get("mode", "503"))
    except (ValueError, UnicodeDecodeError) as exc:
        return _envelope(request, 400, "Body validation error!", problems=[_Problem("", str(exc), ("body",))])
    return web.json_response(window.to_dict())


async def _reset(request: web.Request) -> web.Response:
    request.app[STATE_KEY].reset()
    return web.json_response({"reset": True})


# ---------------------------------------------------------------------------------------------
# App
# ---------------------------------------------------------------------------------------------


def _check_extras() -> None:
    import importlib.util

    missing = [m for m in ("av", "PIL") if importlib.util.find_spec(m) is None]
    if missing:
        raise RuntimeError(
            f"the emulator needs {' and '.join(missing)} to render videos and sample images: "
            "pip install 'airflow-provider-klingfx[emulator]'"
        )


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    """Create the executor, the HTTP client and (render off) the fixed video; tear them down."""
    state = app[STATE_KEY]
    # start_site() attached the listener before this runs; any other server can't refuse.
    if state.listener is None and any(o.mode == "refuse" for o in state.config.outages):
        raise RuntimeError(_REFUSE_UNSUPPORTED)
    state.executor = ThreadPoolExecutor(
        max_workers=state.config.render_concurrency + 1, thread_name_prefix="klingfx-emulator-render"
    )
    state.http = ClientSession(timeout=ClientTimeout(total=state.config.image_timeout))
    if state.config.video_dir is not None:
        video_dir = Path(state.config.video_dir)
        await asyncio.get_running_loop().run_in_executor(
            state.executor, lambda: video_dir.mkdir(parents=True, exist_ok=True)
        )
    if state.config.render == "off":
        from airflow_provider_klingfx.emulator.render import render_tiny_video

        state.tiny_video = await asyncio.get_running_loop().run_in_executor(state.executor, render_tiny_video)
    try:
        yield
    finally:
        tasks = list(state.pending_renders)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await state.http.close()
        state.executor.shutdown(wait=False, cancel_futures=True)


def create_app(
    config: EmulatorConfig | None = None, *, clock: Callable[[], float] = time.monotonic
) -> web.Application:
    """Build the emulator's aiohttp application.

    :param config: the behaviour; default :class:`EmulatorConfig()`.
    :param clock: a monotonic clock in seconds driving the state machine; tests pass a fake one
        they advance by hand, so they never sleep for state changes.
    :raises RuntimeError: if PyAV or Pillow is not installed.
    """
    config = config or EmulatorConfig()
    _check_extras()
    app = web.Application(middlewares=[_middleware], client_max_size=MAX_BODY_BYTES)
    app[STATE_KEY] = EmulatorState(config, clock)
    for path in API_PATHS:
        app.router.add_post(path, _create)
        app.router.add_get(path, _fetch)
    app.router.add_get("/files/{file_id}/output.mp4", _video, name="video")
    app.router.add_get("/samples/{name}", _sample)
    app.router.add_get("/health", _health)
    app.router.add_get("/_emulator/stats", _stats)
    app.router.add_get("/_emulator/generation", _generation)
    app.router.add_post("/_emulator/faults", _set_faults)
    app.router.add_post("/_emulator/reset", _reset)
    app.router.add_post("/_emulator/outage", _set_outage)
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_stop_listener)
    return app


# ---------------------------------------------------------------------------------------------
# Running in a thread
# ---------------------------------------------------------------------------------------------


def format_url(host: str, port: int) -> str:
    """``http://host:port``, with brackets around IPv6 addresses.

    :param host: the host or address.
    :param port: the port.
    """
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def _listening_sockets(host: str, port: int) -> list[socket.socket]:
    """Sockets bound to every address of ``host`` (as asyncio's ``create_server`` binds them)."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    socks: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            # The port was ours a moment ago: connections of before, in TIME_WAIT, must not keep
            # the new socket from binding it. (Not on Windows, where it lets others take the port.)
            if os.name == "posix":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


class _Listener:
    """The listening sockets of a server :func:`start_site` started, and the refuse-outage timer.

    A refuse outage is one at the TCP level: the sockets are closed (connecting gets ECONNREFUSED)
    and so are the open connections, then at the window's end new sockets listen on the same host
    and port. A task on the server's loop does the switching at the window edges, whether requests
    arrive or not. The listener binds the sockets itself (served by ``SockSite``) so that it can
    stop accepting before it closes them.
    """

    def __init__(self, state: EmulatorState, runner: web.AppRunner, host: str, port: int) -> None:
        self.state = state
        self.runner = runner
        self.host = host
        self.port = port
        self.sockets: list[socket.socket] = []
        self.sites: list[web.SockSite] = []
        self._task: asyncio.Task[None] | None = None

    async def listen(self) -> None:
        """Start listening (again) on ``host:port``."""
        socks = await _listening_sockets(self.host, self.port)
        sites = [web.SockSite(self.runner, sock) for sock in socks]
        try:
            for site in sites:
                await site.start()
        except BaseException:
            for site in sites:
                if site in self.runner.sites:
                    await site.stop()
            for sock in socks:
                sock.close()
            raise
        self.sockets, self.sites = socks, sites

    async def _stop_sites(self) -> None:
        sites, self.sites, self.sockets = self.sites, [], []
        for site in sites:
            if site in self.runner.sites:  # the runner's cleanup may have stopped it already
                await site.stop()  # closes its socket

    async def refuse(self) -> None:
        """Stop listening and close every open connection (keep-alive or in the middle of a request)."""
        loop = asyncio.get_running_loop()
        for sock in self.sockets:
            with contextlib.suppress(NotImplementedError):  # Windows' proactor loop
                loop.remove_reader(sock.fileno())
        # Stop accepting first, then let the connections accepted just now finish their setup, so
        # they are closed below like the others: asyncio's server, once closed, fails to set them
        # up and leaves their sockets open with no one reading (the client would hang).
        for _ in range(3):
            await asyncio.sleep(0)
        await self._stop_sites()
        server = self.runner.server
        dropped = 0
        for handler in server.connections if server is not None else []:
            # force_close: close() would leave an idle keep-alive connection open.
            handler.force_close()
            dropped += 1
        self.state.outage_connections_dropped += dropped
        log.info("outage: refusing connections on port %s; closed %d open connections", self.port, dropped)

    async def apply(self) -> float | None:
        """Listen or refuse as the outage windows say now.

        :returns: the clock time of the next window edge, or None if no refuse window lies ahead.
        """
        state = self.state
        now = state.clock()
        mode, edge = state.outage_window(now)
        if mode == "refuse" and self.sites:
            await self.refuse()
        elif mode != "refuse" and not self.sites:
            await self.listen()
            log.info("outage over: listening on port %s again", self.port)
        # Judged at the same clock reading as the switch: a clock moving meanwhile must not make
        # the timer sleep through an edge.
        ahead = any(o.mode == "refuse" and o.end > now - state.epoch for o in state.outages)
        return edge if ahead else None

    def start(self) -> None:
        """Start the timer that applies the outage windows at their edges."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        state = self.state
        while True:
            state.outages_changed.clear()  # before reading the windows: a change now wakes us up
            edge: float | None
            try:
                edge = await self.apply()
            except Exception:  # e.g. the port was taken during the outage: keep trying
                log.exception("could not apply the outage windows on port %s; retrying", self.port)
                edge = state.clock() + 0.1
            # Sleep until the next edge (the clock may be a fake one that only moves between
            # looks: hence the cap), or, without a refuse window ahead, until the windows change.
            timeout = None if edge is None else min(max(0.0, edge - state.clock()), _OUTAGE_POLL_SECONDS)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(state.outages_changed.wait(), timeout)

    async def close(self) -> None:
        """Stop the timer; stop the sites it may have reopened after the runner stopped its sites."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._stop_sites()


async def _stop_listener(app: web.Application) -> None:
    listener = app[STATE_KEY].listener
    if listener is not None:
        await listener.close()


async def start_site(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start ``app`` on ``host:port`` with the header-free access log; return (runner, bound port).

    Only a server started here supports ``"refuse"`` outages: it owns its listening socket. If one
    is in force from the start, this returns with the socket already closed.

    :param app: the application from :func:`create_app`.
    :param host: address to bind.
    :param port: port to bind; 0 picks a free one.
    """
    state = app[STATE_KEY]
    runner = web.AppRunner(app, access_log_format=ACCESS_LOG_FORMAT, handle_signals=False)
    listener = _Listener(state, runner, host, port)
    state.listener = listener  # before setup: the app's startup checks it is there for refuse windows
    await runner.setup()
    try:
        await listener.listen()
        bound = int(listener.sockets[0].getsockname()[1])
        listener.port = bound  # reopen on the port actually bound (port 0)
        await listener.apply()
        listener.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, bound


class RunningEmulator:
    """An emulator serving from a background thread with its own event loop.

    Use it as a context manager, or call :meth:`stop` when done.

    :param url: base URL, e.g. ``http://127.0.0.1:41234``.
    :param state: the instance's state (mutated by the server thread: prefer :meth:`stats`).
    """

    def __init__(
        self,
        url: str,
        state: EmulatorState,
        loop: asyncio.AbstractEventLoop,
        thread: threading.Thread,
        runner: web.AppRunner,
    ) -> None:
        self.url = url
        self.state = state
        self._loop = loop
        self._thread = thread
        self._runner = runner
        self._stopped = False

    @property
    def config(self) -> EmulatorConfig:
        """The instance's configuration."""
        return self.state.config

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn()`` on the server's loop thread and return its result (thread-safe access).

        :param fn: a plain callable; it must not block.
        """
        future: ConcurrentFuture[Any] = ConcurrentFuture()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return future.result(timeout=30)

    def stats(self) -> dict[str, Any]:
        """A consistent snapshot of the stats (same document as ``GET /_emulator/stats``)."""
        return cast("dict[str, Any]", self.call(self.state.stats))

    def generation(self, generation_id: str) -> dict[str, Any] | None:
        """What ``GET /_emulator/generation?generation_id=`` answers, or None for an unknown id.

        :param generation_id: the generation's id.
        """

        def describe() -> dict[str, Any] | None:
            gen = self.state.generations.get(generation_id)
            return None if gen is None else gen.describe(self.state.status_of(gen))

        return cast("dict[str, Any] | None", self.call(describe))

    def set_faults(self, rules: Sequence[FaultRule]) -> None:
        """Replace the fault rules.

        :param rules: the new rules.
        """
        self.call(lambda: self.state.set_faults(rules))

    def reset(self) -> None:
        """Same as ``POST /_emulator/reset``."""
        self.call(self.state.reset)

    def schedule_outage(self, start_in: float, duration: float, mode: str = "503") -> Outage:
        """Schedule an outage window, like ``POST /_emulator/outage`` (which a refuse one makes unreachable).

        :param start_in: seconds from now on the state's clock (>= 0).
        :param duration: seconds (> 0).
        :param mode: ``"503"`` or ``"refuse"``, see :class:`Outage`.
        :returns: the window, its times counted from the state's creation or reset.
        :raises ValueError: on invalid values.
        """
        return cast("Outage", self.call(lambda: self.state.schedule_outage(start_in, duration, mode)))

    def wait_for_renders(self, timeout: float = 60.0) -> None:
        """Block until no render is in flight.

        :param timeout: seconds to wait at most.
        """
        asyncio.run_coroutine_threadsafe(self.state.wait_for_renders(timeout), self._loop).result(timeout + 5)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop serving, clean up and join the thread. Safe to call twice.

        :param timeout: seconds to wait for the shutdown.
        """
        if self._stopped:
            return
        self._stopped = True
        try:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)

    def __enter__(self) -> RunningEmulator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def run_emulator_in_thread(
    config: EmulatorConfig | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
    host: str = "127.0.0.1",
    port: int = 0,
    startup_timeout: float = 30.0,
) -> RunningEmulator:
    """Start an emulator in a background thread and return once it is listening.

    :param config: the behaviour; default :class:`EmulatorConfig()`.
    :param clock: the state machine's clock (see :func:`create_app`).
    :param host: address to bind (default loopback only).
    :param port: port to bind; 0 (default) picks a free one, see :attr:`RunningEmulator.url`.
    :param startup_timeout: seconds to wait for the server to listen.
    :raises RuntimeError: if PyAV or Pillow is missing.
    :raises OSError: if the address can't be bound.
    """
    app = create_app(config, clock=clock)
    loop = asyncio.new_event_loop()
    started: ConcurrentFuture[tuple[web.AppRunner, int]] = ConcurrentFuture()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            started.set_result(loop.run_until_complete(start_site(app, host, port)))
        except BaseException as exc:
            started.set_exception(exc)
            loop.close()
            return
        try:
            loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    thread = threading.Thread(target=serve, name="klingfx-emulator", daemon=True)
    thread.start()
    runner, bound = started.result(startup_timeout)
    return RunningEmulator(format_url(host, bound), app[STATE_KEY], loop, thread, runner)


def parse_status_words(raw: Sequence[str]) -> dict[str, str]:
    """Parse ``--status-word STATUS=WORD`` strings into ``status_words`` (a later one wins).

    :param raw: the strings, e.g. ``["completed=succeeded", "error=failed"]``.
    :raises ValueError: on a string without ``=``, an unknown status or an empty word.
    """
    words: dict[str, str] = {}
    for text in raw:
        status, sep, word = text.partition("=")
        status, word = status.strip(), word.strip()
        if not sep or not word:
            raise ValueError(f"--status-word must look like STATUS=WORD, got {text!r}")
        if status not in CANONICAL_STATUSES:
            raise ValueError(
                f"--status-word STATUS must be one of {list(CANONICAL_STATUSES)}, got {status!r}"
            )
        words[status] = word
    return words


def parse_outages(raw: Sequence[str]) -> list[Outage]:
    """Parse ``--outage START:END[:MODE]`` strings into outage windows.

    :param raw: the strings, e.g. ``["10:20", "30:35:refuse"]`` (MODE defaults to ``503``).
    :raises ValueError: on a malformed string or invalid window.
    """
    outages: list[Outage] = []
    for text in raw:
        parts = text.split(":")
        try:
            if len(parts) not in (2, 3):
                raise ValueError("expected START:END or START:END:MODE")
            mode = parts[2].strip() if len(parts) == 3 else "503"
            outages.append(Outage(float(parts[0]), float(parts[1]), cast("OutageMode", mode)))
        except ValueError as exc:
            raise ValueError(
                f"--outage must look like START:END[:MODE] (MODE 503 or refuse), got {text!r}: {exc}"
            ) from exc
    return outages


def iter_fault_rules(raw: Sequence[str]) -> Iterator[FaultRule]:
    """Parse ``--fault`` JSON strings (each an object, or an array of objects) into rules.

    :param raw: the strings.
    :raises ValueError: on invalid JSON or rules.
    """
    for text in raw:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"--fault is not valid JSON: {text!r} ({exc})") from exc
        for item in data if isinstance(data, list) else [data]:
            yield FaultRule.from_dict(item)
