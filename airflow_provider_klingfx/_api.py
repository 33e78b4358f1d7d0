"""The wire protocol of the AI/ML API, as pure functions shared by the sync and async hook paths.

Everything here is I/O-free: URL building, headers, request bodies, answer parsing, the mapping of
HTTP errors to typed exceptions, and the decision of what may be retried. The hook's two thin I/O
layers (``requests`` and ``aiohttp``) call these, so the two paths cannot drift apart.
"""

from __future__ import annotations

import email.utils
import ipaddress
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import quote, urlsplit

from airflow_provider_klingfx import __version__
from airflow_provider_klingfx.domain import (
    KlingFxAmbiguousSubmissionError,
    KlingFxAPIError,
    KlingFxAuthError,
    KlingFxConnectionConfigError,
    KlingFxError,
    KlingFxMalformedResponseError,
    KlingFxTransportError,
    Submission,
    describe_details,
    parse_usage,
    redact_urls,
)

DEFAULT_BASE_URL: Final = "https://api.aimlapi.com"
UNIVERSAL_PATH: Final = "/v2/video/generations"
LEGACY_PATH: Final = "/v2/generate/video/kling/generation"
#: Endpoint styles a connection's ``endpoint`` extra may name.
ENDPOINT_PATHS: Final[dict[str, str]] = {"universal": UNIVERSAL_PATH, "legacy": LEGACY_PATH}
USER_AGENT: Final = f"airflow-provider-klingfx/{__version__}"
#: A generation id that cannot exist, used to check a key without creating a paid generation.
PROBE_GENERATION_ID: Final = "klingfx-connection-test:probe"
#: Longest ``Retry-After`` honoured; a longer one is capped so the deadline logic stays in charge.
MAX_RETRY_AFTER: Final = 120.0

Method = Literal["GET", "POST"]

#: How a generation is polled: ``fixed`` every poll interval, or ``adaptive`` (connection extra).
POLL_SCHEDULES = ("fixed", "adaptive")
#: Whether the polls of one process share what they learn of the API (rate limits, outages):
#: ``shared`` (default; see :mod:`airflow_provider_klingfx._health`) or ``per_trigger`` (each poll
#: backs off alone, as 0.2 did).
POLL_COORDINATIONS = ("shared", "per_trigger")


class ApiKey:
    """An API key that never shows itself in ``repr``, ``str``, logs or tracebacks.

    :param value: the secret.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself; call only where it goes into the Authorization header."""
        return self._value

    def __repr__(self) -> str:
        return "ApiKey('***')"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        # Pickling would copy the secret into wherever the pickle goes (XCom, trigger rows, ...).
        raise TypeError("ApiKey cannot be pickled")


@dataclass(frozen=True)
class ApiSettings:
    """Where and how to call the API, taken from an Airflow connection.

    :param base_url: scheme and host, without a trailing slash.
    :param api_key: the key, wrapped so it never prints.
    :param endpoint: ``universal`` or ``legacy``.
    :param connect_timeout: seconds to open a connection.
    :param read_timeout: seconds to wait for an answer.
    :param poll_schedule: ``fixed`` (every poll interval) or ``adaptive`` (sparse early, dense near
        ``expected_seconds``; see :func:`airflow_provider_klingfx._polling.adaptive_poll_delay`).
    :param expected_seconds: how long a generation usually takes, for the adaptive schedule.
    :param poll_coordination: ``shared`` (polls of one process share one view of the API's rate
        limit and outages) or ``per_trigger``.
    :param max_polls_per_second: a cap on the polls per second of one process to this API and key
        (``None``: none; throttling still follows the API's 429s).
    :param allow_private_hosts: whether URLs that are not the API (photos checked before paying, the
        vendor's video URL) may lead to loopback, private or link-local addresses. Default: only when
        the API itself is on a loopback address (the local emulator).
    """

    base_url: str
    api_key: ApiKey
    endpoint: str = "universal"
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    poll_schedule: str = "fixed"
    expected_seconds: float = 120.0
    poll_coordination: str = "shared"
    max_polls_per_second: float | None = None
    allow_private_hosts: bool = False

    @property
    def path(self) -> str:
        """The path of both the create and the fetch call for this endpoint style."""
        return ENDPOINT_PATHS[self.endpoint]

    @property
    def create_url(self) -> str:
        """URL of the create (POST) call."""
        return self.base_url + self.path

    def fetch_url(self, generation_id: str) -> str:
        """URL of the fetch (GET) call; the id holds ``:`` and ``/`` so it is fully percent-encoded.

        :param generation_id: the vendor's generation id.
        """
        return f"{self.base_url}{self.path}?generation_id={quote(generation_id, safe='')}"


def is_public_address(address: str) -> bool:
    """Whether an IP address is on the public internet: not loopback, private, link-local, shared,
    reserved or multicast (an IPv4 address mapped into IPv6 counts as that IPv4 address).

    :param address: an IPv4 or IPv6 address.
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def normalise_base_url(host: str | None, schema: str | None = None, port: int | None = None) -> str:
    """Turn a connection's host (and optional schema and port) into a safe base URL.

    ``http://`` is refused unless the host is loopback: the key would travel in clear.

    :param host: the connection's host; empty means the public API.
    :param schema: the connection's schema field, used as scheme when host has none.
    :param port: the connection's port field, used when the host names no port.
    :raises KlingFxConnectionConfigError: for an unusable or unsafe URL.
    """
    text = (host or "").strip().rstrip("/")
    if not text:
        text = DEFAULT_BASE_URL
    if "://" not in text:
        text = f"{(schema or 'https').strip()}://{text}"
    parts = urlsplit(text)
    try:
        url_port = parts.port
    except ValueError:
        raise KlingFxConnectionConfigError(f"connection host has an invalid port: {text[:100]!r}") from None
    if port is not None:
        if not 0 < port < 65536:
            raise KlingFxConnectionConfigError(f"connection port must be 1-65535, got {port}")
        if url_port is not None and url_port != port:
            raise KlingFxConnectionConfigError(
                f"connection host names port {url_port} but the port field says {port}; keep one"
            )
        if url_port is None and parts.hostname:
            host_part = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
            parts = parts._replace(netloc=f"{host_part}:{port}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise KlingFxConnectionConfigError(
            f"connection host must be a base URL like {DEFAULT_BASE_URL}, got {text[:100]!r}"
        )
    if parts.username or parts.password:
        raise KlingFxConnectionConfigError(
            "connection host must not embed credentials; put the API key in the password field"
        )
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise KlingFxConnectionConfigError(
            f"refusing plain http:// to {parts.hostname}: the API key would travel unencrypted; "
            "use https:// (http:// is allowed only for loopback hosts such as the local emulator)"
        )
    if parts.path not in ("", "/"):
        raise KlingFxConnectionConfigError(
            f"connection host must be a base URL without a path (the provider adds /v2/...), "
            f"got path {parts.path!r}"
        )
    return f"{parts.scheme}://{parts.netloc}"


def settings_from_connection(
    conn_id: str,
    host: str | None,
    schema: str | None,
    password: str | None,
    extra: Mapping[str, Any] | None,
    port: int | None = None,
) -> ApiSettings:
    """Validate the fields of a ``klingfx`` connection.

    :param conn_id: the connection id, for messages.
    :param host: base URL (default: the public API).
    :param schema: optional scheme when host has none.
    :param password: the API key.
    :param extra: extras: ``endpoint`` is ``universal`` (default) or ``legacy``; ``connect_timeout``
        and ``read_timeout`` in seconds (defaults 10 and 30); ``poll_schedule`` is ``fixed``
        (default) or ``adaptive``, with ``expected_seconds`` (default 120); ``poll_coordination``
        is ``shared`` (default) or ``per_trigger``; ``max_polls_per_second`` caps a process's polls;
        ``allow_private_hosts`` (true/false) lets photo checks and video downloads reach private
        addresses (default: only for an API on a loopback address, the local emulator).
    :param port: the connection's port field, when the host names none.
    :raises KlingFxConnectionConfigError: with what to fix.
    """
    if not password or not password.strip():
        raise KlingFxConnectionConfigError(
            f"connection {conn_id!r} has no API key: put your AI/ML API key in its password field"
        )
    raw_extra = extra or {}
    # The UI forms store fields under their plain name; Airflow 2's form used a prefixed one.
    extra = {
        name: raw_extra.get(name, raw_extra.get(f"extra__klingfx__{name}"))
        for name in (
            "endpoint",
            "poll_schedule",
            "connect_timeout",
            "read_timeout",
            "expected_seconds",
            "poll_coordination",
            "max_polls_per_second",
            "allow_private_hosts",
        )
    }
    endpoint = str(extra.get("endpoint") or "universal").strip().lower()
    if endpoint not in ENDPOINT_PATHS:
        raise KlingFxConnectionConfigError(
            f"connection {conn_id!r} has endpoint={endpoint!r} in extra; use 'universal' or 'legacy'"
        )
    try:
        base_url = normalise_base_url(host, schema, port)
    except KlingFxConnectionConfigError as exc:
        raise KlingFxConnectionConfigError(f"connection {conn_id!r}: {exc}") from None
    schedule = str(extra.get("poll_schedule") or "fixed").strip().lower()
    if schedule not in POLL_SCHEDULES:
        raise KlingFxConnectionConfigError(
            f"connection {conn_id!r} has poll_schedule={schedule!r} in extra; use 'fixed' or 'adaptive'"
        )
    seconds = {}
    for name, default in (("connect_timeout", 10.0), ("read_timeout", 30.0), ("expected_seconds", 120.0)):
        raw = extra.get(name)
        try:
            value = default if raw in (None, "") else float(raw)
        except (TypeError, ValueError):
            value = -1.0
        if value <= 0:
            raise KlingFxConnectionConfigError(
                f"connection {conn_id!r} has {name}={raw!r} in extra; give a positive number of seconds"
            )
        seconds[name] = value
    coordination = str(extra.get("poll_coordination") or "shared").strip().lower()
    if coordination not in POLL_COORDINATIONS:
        raise KlingFxConnectionConfigError(
            f"connection {conn_id!r} has poll_coordination={coordination!r} in extra; "
            "use 'shared' or 'per_trigger'"
        )
    raw_cap = extra.get("max_polls_per_second")
    try:
        cap = None if raw_cap in (None, "") else float(raw_cap)
    except (TypeError, ValueError):
        cap = -1.0
    if cap is not None and not cap > 0:
        raise KlingFxConnectionConfigError(
            f"connection {conn_id!r} has max_polls_per_second={raw_cap!r} in extra; "
            "give a positive number, or leave it empty for no cap"
        )
    raw_private = extra.get("allow_private_hosts")
    if raw_private in (None, ""):
        allow_private = _is_loopback(urlsplit(base_url).hostname or "")
    elif str(raw_private).strip().lower() in ("true", "1", "yes", "false", "0", "no"):
        allow_private = str(raw_private).strip().lower() in ("true", "1", "yes")
    else:
        raise KlingFxConnectionConfigError(
            f"connection {conn_id!r} has allow_private_hosts={raw_private!r} in extra; use true or false"
        )
    return ApiSettings(
        base_url=base_url,
        api_key=ApiKey(password.strip()),
        endpoint=endpoint,
        poll_schedule=schedule,
        poll_coordination=coordination,
        max_polls_per_second=cap,
        allow_private_hosts=allow_private,
        **seconds,
    )


def env_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url`` (``HTTPS_PROXY``/``HTTP_PROXY``, minus ``NO_PROXY``).

    ``requests`` reads these for every request on the worker; the triggerer's aiohttp session must
    send through the same proxy, or it could not reach the API the worker just submitted to. The
    hook resolves it once: aiohttp's ``trust_env`` would do it (and read ``~/.netrc``) per request,
    which ``make bench`` measured at about 0.3 ms of a 0.5 ms poll.

    :param url: the API's base URL.
    """
    import urllib.request

    parts = urlsplit(url)
    if urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return urllib.request.getproxies().get(parts.scheme)


def build_headers(settings: ApiSettings, *, client_request_id: str | None = None) -> dict[str, str]:
    """Headers for every call: bearer auth, JSON, the package's User-Agent, and a trace id.

    :param settings: the connection settings.
    :param client_request_id: sent as ``X-Client-Request-Id`` when given.
    """
    headers = {
        "Authorization": f"Bearer {settings.api_key.reveal()}",
        "Accept": "application/json",
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
    }
    if client_request_id:
        headers["X-Client-Request-Id"] = client_request_id
    return headers


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), capped.

    :param value: the header value.
    :param now: the current epoch time (for HTTP dates); defaults to ``time.time()``.
    """
    if not value:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def _vendor_message(body: bytes) -> tuple[str, str | None]:
    """The vendor's words and request id from an error body, whatever its shape.

    Shapes: the documented ``{message, path, requestId, statusCode, timestamp}`` (with ``errors``);
    the one seen live, ``{title, status, message, instance, requestId, timestamp, error: {name,
    message}}``; and for "Body validation error!" the details that follow in the body
    (``detail: [{loc, msg, type, input}]``), which are the part a user can act on. URLs are shown
    without their query.
    """
    try:
        data = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace").strip()
        return redact_urls(" ".join(text.split())[:300] or "(empty body)"), None
    if not isinstance(data, Mapping):
        return redact_urls(json.dumps(data)[:300]), None
    request_id = data.get("requestId") or data.get("request_id")
    error = data.get("error")
    parts: list[str] = []
    for candidate in (data.get("message"), error.get("message") if isinstance(error, Mapping) else error):
        if isinstance(candidate, str) and candidate.strip() and not any(candidate in p for p in parts):
            parts.append(candidate.strip())
    if not parts and isinstance(data.get("title"), str):
        parts.append(data["title"])  # the reason phrase, when there is nothing better
    details: list[str] = []
    for key in ("detail", "errors"):
        items = data.get(key)
        if isinstance(items, list):
            details += describe_details(items[:5])[0]
        elif isinstance(items, str) and items.strip():
            details.append(items.strip())
    text = "; ".join(parts) or json.dumps(data)[:300]
    if details:
        text = f"{text} ({'; '.join(details)})"
    return redact_urls(text[:1000]), str(request_id) if request_id else None


def error_from_response(
    status: int, body: bytes, headers: Mapping[str, str], *, method: str, path: str
) -> KlingFxAPIError:
    """Map an HTTP error answer to a typed error carrying the vendor's message and request id.

    :param status: HTTP status code (>= 400).
    :param body: raw body.
    :param headers: response headers.
    :param method: request method.
    :param path: request path (no query).
    """
    message, request_id = _vendor_message(body)
    request_id = request_id or _header(headers, "x-request-id")
    cls = KlingFxAuthError if status in (401, 403) else KlingFxAPIError
    return cls(
        status,
        message,
        request_id=request_id,
        method=method,
        path=path,
        retry_after=parse_retry_after(_header(headers, "retry-after")),
    )


def parse_answer(status: int, body: bytes, headers: Mapping[str, str], *, method: str, path: str) -> Any:
    """Return the decoded JSON of a successful answer, or raise the matching typed error.

    :raises KlingFxAPIError: for HTTP errors.
    :raises KlingFxMalformedResponseError: for a 2xx body that is not JSON.
    """
    if status >= 400:
        raise error_from_response(status, body, headers, method=method, path=path)
    try:
        return json.loads(body)
    except ValueError:
        snippet = redact_urls(" ".join(body.decode("utf-8", "replace").split())[:120])
        raise KlingFxMalformedResponseError(
            f"{method} {path} answered {status} with a body that is not JSON: {snippet!r}"
        ) from None


def parse_submission(payload: Any, headers: Mapping[str, str]) -> Submission:
    """The new generation from a 2xx create answer.

    The id is ``id`` (or ``generation_id``) in the body; failing that, the ``x-inference-id``
    header, which the vendor documents as the same id for an asynchronous generation.

    :param payload: the decoded body.
    :param headers: the answer's headers.
    :raises KlingFxAmbiguousSubmissionError: when no id can be read. The API accepted the request
        (it answered 2xx), so a generation may exist and be billed: sending it again could pay twice.
    """
    body = payload if isinstance(payload, Mapping) else {}
    gen_id = body.get("id") or body.get("generation_id") or _header(headers, "x-inference-id")
    if not isinstance(gen_id, str) or not gen_id.strip():
        shown = redact_urls(json.dumps(payload, default=str)[:200])
        raise KlingFxAmbiguousSubmissionError(
            f"the API accepted the create request but its answer has no generation id ({shown}); "
            "not resubmitting, because the request may have started (and will bill) a generation. "
            "Check the AI/ML API dashboard for a generation created now, then clear the task to submit again."
        )
    status = body.get("status")
    return Submission(
        id=gen_id.strip(),
        status=status.strip().lower() if isinstance(status, str) else None,
        usage=parse_usage(payload, headers),
    )


# ---------------------------------------------------------------------------------------------
# Transport failures: one table for the requests and aiohttp paths
# ---------------------------------------------------------------------------------------------

TransportKind = Literal["refused", "dns", "connect_timeout", "tls", "proxy", "read_timeout", "lost"]

#: How each kind of transport failure reads, and whether the request may have reached the API
#: (which decides whether a create may be sent again). Each HTTP library's exceptions are mapped to
#: a kind by the hook; the wording and the decision live only here, so the worker and the triggerer
#: cannot disagree. A TLS handshake or a proxy that fails happens before the request is sent.
TRANSPORT_KINDS: Final[dict[str, tuple[str, bool]]] = {
    "refused": ("could not connect (connection refused)", False),
    "dns": ("could not connect (the host name does not resolve)", False),
    "connect_timeout": ("could not connect (connect timeout)", False),
    "tls": ("could not connect (TLS handshake failed)", False),
    "proxy": ("could not connect through the proxy", False),
    "read_timeout": ("no answer in time", True),
    "lost": ("connection lost", True),
}


def transport_error(kind: TransportKind, method: str, path: str, detail: str = "") -> KlingFxTransportError:
    """The typed error for a request that got no HTTP answer.

    :param kind: a key of :data:`TRANSPORT_KINDS`.
    :param method: the request method.
    :param path: the request path (no query).
    :param detail: the library's exception name or reason, appended for diagnosis.
    """
    words, reached = TRANSPORT_KINDS[kind]
    suffix = f" [{redact_urls(detail)[:200]}]" if detail else ""
    return KlingFxTransportError(f"{method} {path}: {words}{suffix}", reached_server=reached)


# ---------------------------------------------------------------------------------------------
# What may be retried
# ---------------------------------------------------------------------------------------------

_TRANSIENT_STATUSES: Final = frozenset({408, 429, 500, 502, 503, 504})
# Statuses that say the API accepted nothing, so a create may be sent again without paying twice.
_NOT_ACCEPTED_STATUSES: Final = frozenset({429, 503})


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is worth retrying for a read (GET): network trouble, 408/429/5xx, garbage 200.

    :param exc: the error raised by a request.
    """
    if isinstance(exc, KlingFxAuthError):
        return False
    if isinstance(exc, KlingFxAPIError):
        return exc.status_code in _TRANSIENT_STATUSES
    return isinstance(exc, KlingFxTransportError | KlingFxMalformedResponseError)


def is_safe_to_resubmit(exc: BaseException) -> bool:
    """Whether a failed create provably did not reach the API, so sending it again cannot pay twice.

    :param exc: the error raised by a create request.
    """
    if isinstance(exc, KlingFxTransportError):
        return not exc.reached_server
    if isinstance(exc, KlingFxAPIError):
        return exc.status_code in _NOT_ACCEPTED_STATUSES
    return False


def is_retryable(exc: BaseException, *, idempotent: bool) -> bool:
    """The one retry predicate of both paths: reads retry transient errors; creates only safe ones.

    :param exc: the error.
    :param idempotent: True for fetches, False for creates.
    """
    return is_transient(exc) if idempotent else is_safe_to_resubmit(exc)


def submission_failure(exc: KlingFxError) -> KlingFxError:
    """The error to raise when a create gave up: an ambiguous failure becomes a no-retry error.

    A create that failed after it may have reached the API (a read timeout, a dropped connection,
    a 500/502/504, a garbage 200) must not be sent again by anyone, Airflow's task retries
    included, so it is turned into :class:`KlingFxAmbiguousSubmissionError`.

    :param exc: the last error.
    """
    if is_transient(exc) and not is_safe_to_resubmit(exc):
        return KlingFxAmbiguousSubmissionError(
            f"the create request may have reached the API before it failed ({exc}); not resubmitting, "
            "because a second request could start and bill a second generation. Check the AI/ML API "
            "dashboard for a generation created now, then clear the task to submit again."
        )
    return exc
