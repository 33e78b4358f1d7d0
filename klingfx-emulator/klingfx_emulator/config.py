"""How an emulator behaves: its configuration, fault rules and outage windows.

Also the constants of the API it emulates (paths, status words, the price of a credit), which the
configuration's validation and the rest of the package share. Nothing here touches aiohttp: a
configuration can be built (by the command line, by a test) without starting anything.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from airflow_provider_klingfx.images import MAX_IMAGE_BYTES

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


def as_number(value: object, name: str) -> float:
    """``value`` as a float, if it is a finite int or float (JSON booleans are not numbers here,
    though Python would take them for 0 and 1).

    :param value: the value to check.
    :param name: what it is, for the error message.
    :raises ValueError: if it is not a finite number.
    """
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
        server started by :func:`~klingfx_emulator.server.start_site`
        (:func:`~klingfx_emulator.server.run_emulator_in_thread`, the CLI).
    """

    start: float
    end: float
    mode: OutageMode = "503"

    def __post_init__(self) -> None:
        self.start = as_number(self.start, "outage start")
        self.end = as_number(self.end, "outage end")
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
        :meth:`~klingfx_emulator.server.RunningEmulator.schedule_outage`). Where a ``"refuse"`` and
        a ``"503"`` window overlap, refuse wins.
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
        if self.rate_limit is not None and as_number(self.rate_limit, "rate_limit") <= 0:
            raise ValueError(f"rate_limit must be > 0 requests per second, got {self.rate_limit!r}")
        if self.rate_limit_burst is not None:
            if self.rate_limit is None:
                raise ValueError("rate_limit_burst needs a rate_limit")
            if as_number(self.rate_limit_burst, "rate_limit_burst") < 1:
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
