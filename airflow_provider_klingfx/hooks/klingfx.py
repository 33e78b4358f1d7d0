"""Hook for the Kling v1.6 effects models of the AI/ML API.

Sync methods use a pooled ``requests`` session (the worker path); their ``a``-prefixed twins use
``aiohttp`` (the triggerer path). Both call the same pure pieces in ``_api`` (URLs, headers, bodies,
parsing, error mapping, the transport-failure table) and the same retry policy, and both return
domain objects, never raw responses.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow.sdk import BaseHook

from airflow_provider_klingfx import _api, _health
from airflow_provider_klingfx._compat import AirflowNotFoundException
from airflow_provider_klingfx._polling import GenerationWatch
from airflow_provider_klingfx._retry import RetryPolicy
from airflow_provider_klingfx.domain import (
    EffectRequest,
    Generation,
    KlingFxAuthError,
    KlingFxConnectionConfigError,
    KlingFxConnectionLookupError,
    KlingFxError,
    KlingFxTimeoutError,
    KlingFxUnsafeUrlError,
    Submission,
    redact_urls,
)

if TYPE_CHECKING:
    import aiohttp
    import requests


def _airflow_at_least(major: int, minor: int) -> bool:
    from airflow import __version__

    found = tuple(int(p) for p in __version__.split(".")[:2])
    return found >= (major, minor)


#: Airflow 3.2+ builds the connection form from provider info (``conn-fields``/``ui-field-behaviour``).
_DECLARATIVE_CONNECTION_FORMS = _airflow_at_least(3, 2)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps: requests and urllib3 nest the real reason in args and ``reason``."""
    seen: set[int] = set()
    todo = [exc]
    while todo and len(seen) < 16:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        nested = [getattr(current, "reason", None), current.__cause__, current.__context__, *current.args]
        todo.extend(n for n in nested if isinstance(n, BaseException))


def _content_total(status: int, headers: Mapping[str, str]) -> int | None:
    """The whole file's size from a 206's ``Content-Range: bytes 0-65535/123456``, or a 200's
    ``Content-Length``; None when the server does not say."""
    text = headers.get("Content-Range", "") if status == 206 else headers.get("Content-Length", "")
    total = text.rsplit("/", 1)[-1].strip() if status == 206 else text.strip()
    return int(total) if total.isdigit() else None


def requests_transport_kind(exc: Exception) -> _api.TransportKind:
    """The :data:`~airflow_provider_klingfx._api.TRANSPORT_KINDS` entry of a ``requests`` failure.

    :param exc: what ``requests`` raised.
    """
    import requests
    from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError

    causes = list(_causes(exc))
    if isinstance(exc, requests.exceptions.ProxyError):
        return "proxy"
    if isinstance(exc, requests.exceptions.SSLError):
        # urllib3 wraps TLS errors of the handshake and of a later read alike; an EOF or a reset
        # may come after the request was sent, everything else (certificate, protocol version,
        # handshake alerts) can only happen before it.
        mid_stream = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)
        return "lost" if any(isinstance(c, mid_stream) for c in causes) else "tls"
    if any(isinstance(c, NameResolutionError) for c in causes):
        return "dns"
    # urllib3's NewConnectionError subclasses ConnectTimeoutError; requests tells them apart.
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "connect_timeout"
    if any(isinstance(c, NewConnectionError) for c in causes):
        return "refused"
    if any(isinstance(c, ConnectTimeoutError) for c in causes):
        return "connect_timeout"
    if isinstance(exc, requests.exceptions.Timeout):
        return "read_timeout"
    return "lost"


def aiohttp_transport_kind(exc: BaseException) -> _api.TransportKind:
    """The :data:`~airflow_provider_klingfx._api.TRANSPORT_KINDS` entry of an ``aiohttp`` failure.

    :param exc: what ``aiohttp`` raised (a ``ClientError`` or a timeout).
    """
    import aiohttp

    if isinstance(exc, aiohttp.ClientProxyConnectionError | aiohttp.ClientHttpProxyError):
        return "proxy"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientConnectorSSLError):
        return "tls"
    if isinstance(exc, getattr(aiohttp, "ClientConnectorDNSError", ())):
        return "dns"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "refused"
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return "connect_timeout"
    # asyncio.TimeoutError, not the builtin: on Python 3.10 they are different classes, and aiohttp
    # raises the asyncio one for its total timeout.
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return "read_timeout"
    return "lost"


def _public_only_adapter() -> Any:
    """A ``requests`` adapter whose connections refuse a peer that is not on the public internet.

    The address is checked once connected, before a byte of the request is sent, so a name that
    resolves to a private address (at first, or only by the time of the connection: DNS rebinding)
    is refused alike, and so is each hop of a redirect. Through a proxy the proxy fetches, and its
    own rules apply.
    """
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    def check(conn: Any) -> None:
        if getattr(conn, "proxy", None) is not None or getattr(conn, "_tunnel_host", None) is not None:
            return
        peer = conn.sock.getpeername()[0] if conn.sock is not None else ""
        if not _api.is_public_address(peer):
            conn.close()
            raise KlingFxUnsafeUrlError(
                f"{conn.host} is at {peer}, a loopback, private or link-local address: not read. Set the "
                "klingfx connection's extra allow_private_hosts to true if such hosts are meant"
            )

    class _HTTP(HTTPConnection):
        def connect(self) -> None:
            super().connect()
            check(self)

    class _HTTPS(HTTPSConnection):
        def connect(self) -> None:
            super().connect()
            check(self)

    class _HTTPPool(HTTPConnectionPool):
        ConnectionCls = _HTTP

    class _HTTPSPool(HTTPSConnectionPool):
        ConnectionCls = _HTTPS

    class _Adapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}

    return _Adapter(pool_connections=2, pool_maxsize=4, max_retries=0)


@contextmanager
def _submission_errors(method: _api.Method) -> Iterator[None]:
    """A create's failure, once its retries are spent, as the error that says whether it may have
    been made anyway (see :func:`airflow_provider_klingfx._api.submission_failure`)."""
    try:
        yield
    except KlingFxError as exc:
        if method != "POST":
            raise
        raise _api.submission_failure(exc) from None


class KlingFxHook(BaseHook):
    """Talks to the AI/ML API for the Kling v1.6 effects models.

    Connection (type ``klingfx``): *Base URL* (host; default ``https://api.aimlapi.com``), *Port*
    (when the Base URL names none), *API key* (password), and extras: ``endpoint``, ``universal``
    (``/v2/video/generations``, default) or ``legacy`` (``/v2/generate/video/kling/generation``);
    ``connect_timeout`` and ``read_timeout``; ``poll_schedule``, ``fixed`` (default) or
    ``adaptive``, with ``expected_seconds``; ``poll_coordination``, ``shared`` (default: the polls of
    one process slow down together on 429s and wait behind one probe during an outage, see
    :mod:`airflow_provider_klingfx._health`) or ``per_trigger``; ``max_polls_per_second``, a cap.
    Proxies come from the usual environment variables (``HTTPS_PROXY``, ``HTTP_PROXY``,
    ``NO_PROXY``) on both the worker and the triggerer (read once per hook there).

    :param klingfx_conn_id: the Airflow connection to use.
    :param connect_timeout: seconds to open a connection (default: the connection's extra
        ``connect_timeout``, else 10).
    :param read_timeout: seconds to wait for an answer (default: the connection's extra
        ``read_timeout``, else 30).
    :param retry_policy: how transient failures of one call are retried.
    :param sleep: sync sleep used between retries and polls (tests inject a recorder).
    :param async_sleep: async sleep used between retries (tests inject a recorder).
    :param clock: epoch clock that deadlines are read against (tests inject one).
    """

    conn_name_attr = "klingfx_conn_id"
    default_conn_name = "klingfx_default"
    conn_type = "klingfx"
    hook_name = "Kling Effects (AI/ML API)"

    def __init__(
        self,
        klingfx_conn_id: str = default_conn_name,
        *,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        retry_policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        async_sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.klingfx_conn_id = klingfx_conn_id
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self.retry_policy = retry_policy or RetryPolicy()
        self._sleep = sleep
        self._async_sleep = async_sleep
        self._clock = clock
        self._settings: _api.ApiSettings | None = None
        self._session: requests.Session | None = None
        self._fetch_session: requests.Session | None = None
        self._async_session: aiohttp.ClientSession | None = None
        self._async_proxy: tuple[str | None] | None = None  # (proxy,) once resolved
        self._sync_health_gate: _health.SyncGate | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(klingfx_conn_id={self.klingfx_conn_id!r})"

    if not _DECLARATIVE_CONNECTION_FORMS:
        # Airflow 3.1 builds the form from the hook (the UI stands in for wtforms and Flask-AppBuilder
        # when they are not installed); 3.2+ reads provider info and warns if the hook defines these.
        @classmethod
        def get_connection_form_widgets(cls) -> dict[str, Any]:
            """Connection form fields for Airflow 3.1, the same as the provider info declares."""
            import importlib
            import sys

            from flask_appbuilder.fieldwidgets import BS3TextFieldWidget
            from flask_babel import lazy_gettext
            from wtforms import StringField

            # Without FAB installed, Airflow 3.1 stands mocks in for wtforms and patches
            # "wtforms.validators.any_of" with mock.patch, which on Python 3.10 patches the attribute
            # `wtforms.validators` of the mocked `wtforms`, and on 3.11+ the module in sys.modules.
            # Read any_of where the patch went, or the form loses its choices on 3.10. With the real
            # wtforms both are the same module.
            checks = (
                importlib.import_module("wtforms").validators
                if sys.version_info < (3, 11)
                else importlib.import_module("wtforms.validators")
            )
            Optional, any_of = checks.Optional, checks.any_of

            from airflow_provider_klingfx.get_provider_info import get_provider_info

            fields = get_provider_info()["connection-types"][0]["conn-fields"]
            widgets = {}
            for name, spec in fields.items():
                validators: list[Any] = [Optional()]
                if "enum" in spec["schema"]:
                    validators.append(any_of(spec["schema"]["enum"]))
                widgets[name] = StringField(
                    lazy_gettext(spec["label"]),
                    widget=BS3TextFieldWidget(),
                    validators=validators,
                    description=spec["description"],
                    default="" if spec["schema"]["default"] is None else str(spec["schema"]["default"]),
                )
            return widgets

        @classmethod
        def get_ui_field_behaviour(cls) -> dict[str, Any]:
            """Connection form behaviour for Airflow 3.1, the same as the provider info declares."""
            from airflow_provider_klingfx.get_provider_info import get_provider_info

            behaviour = get_provider_info()["connection-types"][0]["ui-field-behaviour"]
            return {
                "hidden_fields": behaviour["hidden-fields"],
                "relabeling": behaviour["relabeling"],
                "placeholders": behaviour["placeholders"],
            }

    # -- connection -------------------------------------------------------------------------

    def _settings_from(self, conn: Any) -> _api.ApiSettings:
        # Airflow masks the connection's password in logs as it hands the connection out.
        return _api.settings_from_connection(
            self.klingfx_conn_id, conn.host, conn.schema, conn.password, conn.extra_dejson, conn.port
        )

    def _lookup_failed(self, exc: Exception) -> KlingFxError:
        """Only "not found" is a configuration error; anything else is a hiccup worth retrying."""
        if isinstance(exc, AirflowNotFoundException):
            return KlingFxConnectionConfigError(
                f"connection {self.klingfx_conn_id!r} is not defined: create a connection of type "
                f"'klingfx' (Admin > Connections, or AIRFLOW_CONN_{self.klingfx_conn_id.upper()})"
            )
        return KlingFxConnectionLookupError(
            f"could not read connection {self.klingfx_conn_id!r}: {type(exc).__name__}: "
            f"{redact_urls(str(exc))[:200]}"
        )

    @property
    def settings(self) -> _api.ApiSettings:
        """The validated connection settings, read once per hook.

        :raises KlingFxConnectionConfigError: the connection is missing or unusable.
        :raises KlingFxConnectionLookupError: reading it failed for another reason (retryable).
        """
        if self._settings is None:
            try:
                conn = self.get_connection(self.klingfx_conn_id)
            except Exception as exc:
                raise self._lookup_failed(exc) from None
            self._settings = self._settings_from(conn)
        return self._settings

    async def aget_settings(self) -> _api.ApiSettings:
        """The async twin of :attr:`settings`: reads the connection without blocking the event loop."""
        if self._settings is None:
            try:
                conn = await self.aget_connection(self.klingfx_conn_id)
            except Exception as exc:
                raise self._lookup_failed(exc) from None
            self._settings = self._settings_from(conn)
        return self._settings

    @property
    def connect_timeout(self) -> float:
        """Seconds to open a connection: the hook's argument, else the connection's."""
        return self._connect_timeout if self._connect_timeout is not None else self.settings.connect_timeout

    @property
    def read_timeout(self) -> float:
        """Seconds to wait for an answer: the hook's argument, else the connection's."""
        return self._read_timeout if self._read_timeout is not None else self.settings.read_timeout

    def _timeouts(self, deadline: float | None) -> tuple[float, float, float | None]:
        """(connect, read, total) seconds for one attempt, none of them reaching past ``deadline``."""
        connect, read = self.connect_timeout, self.read_timeout
        if deadline is None:
            return connect, read, None
        left = max(0.05, deadline - self._clock())
        return min(connect, left), min(read, left), left

    def _retry_args(
        self, method: _api.Method, settings: _api.ApiSettings, deadline: float | None
    ) -> dict[str, Any]:
        """The retry policy's arguments for a one-off call (a create, a read), sync or async alike."""
        return {
            "idempotent": method == "GET",
            "what": f"{method} {settings.path}",
            "logger": self.log,
            "deadline": deadline,
            "clock": self._clock,
        }

    # -- the shared view of the API's health (rate limits, outages) -------------------------

    def _hold_limit(self, deadline: float | None) -> float:
        # A poll with no deadline of its own waits at the gate at most one read timeout.
        return deadline if deadline is not None else self._clock() + self.read_timeout

    def _sync_gate(self, settings: _api.ApiSettings) -> _health.SyncGate | None:
        """This hook's gate for its polls (a worker or a sensor follows one generation)."""
        if settings.poll_coordination != "shared":
            return None
        if self._sync_health_gate is None:
            health = _health.ApiHealth(
                name=settings.base_url,
                emit=lambda level, message: self.log.log(level, message),
                max_rate=settings.max_polls_per_second,
            )
            self._sync_health_gate = _health.SyncGate(health, self._sleep, self._clock)
        return self._sync_health_gate

    def _async_gate(self, settings: _api.ApiSettings) -> _health.AsyncGate | None:
        """The running event loop's gate for this API and key, shared with every other hook."""
        if settings.poll_coordination != "shared":
            return None
        return _health.async_gate(
            settings.base_url,
            settings.api_key.reveal(),
            max_rate=settings.max_polls_per_second,
            clock=self._clock,
            sleep=self._async_sleep,
        )

    # -- sync I/O ---------------------------------------------------------------------------

    def get_conn(self) -> requests.Session:
        """The pooled ``requests`` session used by the sync methods."""
        if self._session is None:
            import requests
            from requests.adapters import HTTPAdapter

            session = requests.Session()
            # urllib3 must not retry on its own: the provider's policy decides what is safe to resend.
            adapter = HTTPAdapter(pool_connections=4, pool_maxsize=16, max_retries=0)
            session.mount("https://", adapter)
            session.mount("http://", adapter)
            self._session = session
        return self._session

    def _fetcher(self) -> requests.Session:
        """The session for URLs that are not the API (photos, videos): someone else chose them, so
        it reaches only public addresses unless the connection's ``allow_private_hosts`` says so."""
        if self.settings.allow_private_hosts:
            return self.get_conn()
        if self._fetch_session is None:
            import requests

            session = requests.Session()
            adapter = _public_only_adapter()
            session.mount("https://", adapter)
            session.mount("http://", adapter)
            self._fetch_session = session
        return self._fetch_session

    def _send(
        self,
        method: _api.Method,
        url: str,
        path: str,
        headers: dict[str, str],
        body: Any,
        deadline: float | None,
    ) -> tuple[Any, Mapping[str, str]]:
        import requests

        connect, read, _ = self._timeouts(deadline)
        try:
            resp = self.get_conn().request(
                method,
                url,
                json=body,
                headers=headers,
                timeout=(connect, read),
                allow_redirects=False,
            )
        except requests.exceptions.RequestException as exc:
            raise _api.transport_error(
                requests_transport_kind(exc), method, path, type(exc).__name__
            ) from None
        return _api.parse_answer(
            resp.status_code, resp.content, resp.headers, method=method, path=path
        ), resp.headers

    def _call(
        self,
        method: _api.Method,
        url: str,
        settings: _api.ApiSettings,
        *,
        body: Any = None,
        client_request_id: str | None = None,
        deadline: float | None = None,
        poll: bool = False,
    ) -> tuple[Any, Mapping[str, str]]:
        headers = _api.build_headers(settings, client_request_id=client_request_id)
        gate = self._sync_gate(settings) if poll else None

        def attempt() -> tuple[Any, Mapping[str, str]]:
            if gate is None:
                return self._send(method, url, settings.path, headers, body, deadline)
            with gate.outcome(gate.acquire(self._hold_limit(deadline), settings.path)):
                return self._send(method, url, settings.path, headers, body, deadline)

        if poll:
            return attempt()  # one attempt: the watch and the gate answer its failures (see _retry)
        with _submission_errors(method):
            retrying = self.retry_policy.retrying(
                sleep=self._sleep, **self._retry_args(method, settings, deadline)
            )
            return retrying(attempt)

    def submit(self, request: EffectRequest, *, client_request_id: str | None = None) -> Submission:
        """Create a generation. Never sends the create twice unless it provably did not reach the API
        (see :func:`airflow_provider_klingfx._api.is_safe_to_resubmit`).

        :param request: the validated request.
        :param client_request_id: sent as ``X-Client-Request-Id`` to trace the submission.
        :returns: the new generation's id, and its cost when the API reports it.
        :raises KlingFxAmbiguousSubmissionError: when it may have been created despite the error,
            or when the API accepted it but its answer names no generation.
        """
        settings = self.settings
        payload, headers = self._call(
            "POST", settings.create_url, settings, body=request.to_body(), client_request_id=client_request_id
        )
        return _api.parse_submission(payload, headers)

    def get_generation(
        self, generation_id: str, *, deadline: float | None = None, poll: bool = False
    ) -> Generation:
        """Fetch a generation's current state.

        :param generation_id: the vendor's generation id.
        :param deadline: epoch seconds; retries and request timeouts never reach past it.
        :param poll: one poll of a wait (one attempt, through the shared gate; the caller's
            :class:`~airflow_provider_klingfx._polling.GenerationWatch` answers its failures), rather
            than a one-off read (retried by the hook's policy). See :mod:`~airflow_provider_klingfx._retry`.
        """
        settings = self.settings
        payload, headers = self._call(
            "GET", settings.fetch_url(generation_id), settings, deadline=deadline, poll=poll
        )
        return Generation.from_api(payload, headers)

    def wait_for_generation(
        self,
        generation_id: str,
        poll_interval: float = 10.0,
        timeout: float = 1800.0,
        *,
        submitted_at: float | None = None,
        started_at: float | None = None,
    ) -> Generation:
        """Poll until the generation completes, on this thread (the non-deferrable path).

        Transient API errors are waited out until the deadline. The connection's ``poll_schedule``
        extra decides when to poll (``poll_interval`` is its scale).

        :param generation_id: the vendor's generation id.
        :param poll_interval: seconds between polls.
        :param timeout: seconds from ``started_at`` to give up.
        :param submitted_at: epoch seconds of submission (elapsed time and the adaptive schedule
            count from it; default: now).
        :param started_at: epoch seconds the wait started (default: now).
        :raises KlingFxGenerationFailedError: when the vendor fails it.
        :raises KlingFxTimeoutError: when the deadline passes.
        """
        now = self._clock()
        start = now if started_at is None else started_at
        watch = GenerationWatch.for_settings(
            self.settings,
            generation_id,
            deadline=start + timeout,
            poll_interval=poll_interval,
            submitted_at=now if submitted_at is None else submitted_at,
        )
        while True:
            result: Generation | KlingFxError
            try:
                result = self.get_generation(generation_id, deadline=watch.deadline, poll=True)
            except KlingFxError as exc:
                result = exc
            step = watch.observe(result, self._clock())
            for level, message in step.messages:
                self.log.log(level, message)
            if step.finished is not None:
                step.finished.raise_for_failure()
                return step.finished
            if step.timed_out:
                raise KlingFxTimeoutError(generation_id, watch.elapsed(self._clock()), watch.last_status)
            self._sleep(step.sleep)

    def iter_video(self, url: str, *, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """Stream a video's bytes from its (CDN) URL, chunk by chunk, never holding it whole.

        No ``Authorization`` header is sent: the video URL is not the API, and the key must not
        travel to another host.

        :param url: the video URL from a completed generation.
        :param chunk_size: bytes per chunk.
        """
        import requests

        path = urlsplit(url).path
        try:
            # Redirects are followed (CDNs use them); each hop's address is checked (see _fetcher).
            with self._fetcher().get(
                url,
                stream=True,
                headers={"User-Agent": _api.USER_AGENT},
                timeout=(self.connect_timeout, self.read_timeout),
            ) as resp:
                if resp.status_code >= 400:
                    raise _api.error_from_response(
                        resp.status_code, resp.raw.read(2000), resp.headers, method="GET", path=path
                    )
                yield from resp.iter_content(chunk_size)
        except requests.exceptions.RequestException as exc:
            raise _api.transport_error(
                requests_transport_kind(exc), "GET", path, type(exc).__name__
            ) from None

    def read_image_head(self, url: str, max_bytes: int | None) -> tuple[bytes, int | None, bool]:
        """Read the first bytes of a photo at an http(s) URL, as the API would download it.

        Asks for a byte range, so a large photo costs one header's worth of transfer; a server that
        ignores ranges answers the whole file, of which only ``max_bytes`` are read. No
        ``Authorization`` header is sent: the photo host is not the API. Transient failures are
        retried with the hook's policy.

        :param url: the photo's URL.
        :param max_bytes: how many bytes to read; None: the whole file, up to the 10 MB limit + 1.
        :returns: ``(bytes read, the file's size when the server says it, whether that is the
            whole file)``.
        :raises KlingFxAPIError: the host answered an HTTP error (its status in ``status_code``).
        :raises KlingFxTransportError: the host could not be reached.
        """
        import requests

        from airflow_provider_klingfx.images import MAX_IMAGE_BYTES

        limit = MAX_IMAGE_BYTES + 1 if max_bytes is None else max_bytes
        headers = {"User-Agent": _api.USER_AGENT}
        if max_bytes is not None:
            headers["Range"] = f"bytes=0-{max_bytes - 1}"
        path = urlsplit(url).path

        def attempt() -> tuple[bytes, int | None, bool]:
            try:
                with self._fetcher().get(
                    url,
                    stream=True,
                    headers=headers,
                    timeout=(self.connect_timeout, self.read_timeout),
                    allow_redirects=False,
                ) as resp:
                    if resp.is_redirect:
                        raise KlingFxUnsafeUrlError(
                            f"{urlsplit(url).hostname} answered HTTP {resp.status_code} (a redirect), which "
                            "the photo check does not follow: give the URL it redirects to"
                        )
                    if resp.status_code >= 400:
                        # The start of the body: a store says there why (SignatureDoesNotMatch, ...).
                        raise _api.error_from_response(
                            resp.status_code, resp.raw.read(2000), resp.headers, method="GET", path=path
                        )
                    data = bytearray()
                    for chunk in resp.iter_content(64 * 1024):
                        data += chunk
                        if len(data) >= limit:
                            break
                    data = data[:limit]
                    total = _content_total(resp.status_code, resp.headers)
                    complete = (total is not None and len(data) >= total) or (
                        resp.status_code == 200 and len(data) < limit
                    )
                    return bytes(data), total, complete
            except requests.exceptions.RequestException as exc:
                raise _api.transport_error(
                    requests_transport_kind(exc), "GET", path, type(exc).__name__
                ) from None

        retrying = self.retry_policy.retrying(
            idempotent=True, what="read of a photo's header", sleep=self._sleep, logger=self.log
        )
        return retrying(attempt)

    def test_connection(self) -> tuple[bool, str]:
        """Check the key with a fetch of a generation that cannot exist: no paid call is made."""
        try:
            self.get_generation(_api.PROBE_GENERATION_ID)
        except KlingFxAuthError as exc:
            return False, str(exc)
        except KlingFxError as exc:
            status = getattr(exc, "status_code", None)
            if status in (400, 404, 422):
                return True, f"Connection successful: the API accepted the key ({self.settings.base_url})"
            return False, str(exc)
        return True, f"Connection successful ({self.settings.base_url})"

    def close(self) -> None:
        """Close the pooled sync sessions."""
        for session in (self._session, self._fetch_session):
            if session is not None:
                session.close()
        self._session = self._fetch_session = None

    # -- async I/O --------------------------------------------------------------------------

    async def aget_conn(self) -> aiohttp.ClientSession:
        """The aiohttp session this hook sends with: the running event loop's shared session.

        Every hook in one event loop (every trigger of a triggerer) shares one session and its
        pool of keep-alive connections (see :mod:`airflow_provider_klingfx._session_pool`), so
        polls reuse warm connections instead of each trigger holding one. Do not close it: call
        :meth:`aclose` when done with the hook, which gives it back.
        """
        if self._async_session is None or self._async_session.closed:
            from airflow_provider_klingfx import _session_pool

            if self._async_session is not None:
                await _session_pool.release(self._async_session)
            self._async_session = _session_pool.acquire()
        return self._async_session

    async def _asend(
        self,
        method: _api.Method,
        url: str,
        path: str,
        headers: dict[str, str],
        body: Any,
        deadline: float | None,
    ) -> tuple[Any, Mapping[str, str]]:
        import aiohttp

        session = await self.aget_conn()
        connect, read, total = self._timeouts(deadline)
        # Per request, as the session is shared; ``total`` also bounds the wait for a pooled connection.
        timeout = aiohttp.ClientTimeout(total=total, sock_connect=connect, sock_read=read)
        if self._async_proxy is None:
            self._async_proxy = (_api.env_proxy(url),)
        try:
            async with session.request(
                method,
                url,
                json=body,
                headers=headers,
                allow_redirects=False,
                timeout=timeout,
                proxy=self._async_proxy[0],
            ) as resp:
                raw = await resp.read()
                return _api.parse_answer(
                    resp.status, raw, resp.headers, method=method, path=path
                ), resp.headers
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:  # see aiohttp_transport_kind
            raise _api.transport_error(
                aiohttp_transport_kind(exc), method, path, type(exc).__name__
            ) from None

    async def _acall(
        self,
        method: _api.Method,
        url: str,
        settings: _api.ApiSettings,
        *,
        body: Any = None,
        client_request_id: str | None = None,
        deadline: float | None = None,
        poll: bool = False,
        spread: float = 0.0,
    ) -> tuple[Any, Mapping[str, str]]:
        headers = _api.build_headers(settings, client_request_id=client_request_id)
        gate = self._async_gate(settings) if poll else None

        async def attempt() -> tuple[Any, Mapping[str, str]]:
            if gate is None:
                return await self._asend(method, url, settings.path, headers, body, deadline)
            with gate.outcome(await gate.acquire(self._hold_limit(deadline), settings.path, spread)):
                return await self._asend(method, url, settings.path, headers, body, deadline)

        if poll:
            return await attempt()  # one attempt: the watch and the gate answer its failures (see _retry)
        with _submission_errors(method):
            retrying = self.retry_policy.async_retrying(
                sleep=self._async_sleep, **self._retry_args(method, settings, deadline)
            )
            return await retrying(attempt)

    async def asubmit(self, request: EffectRequest, *, client_request_id: str | None = None) -> Submission:
        """Async twin of :meth:`submit`."""
        settings = await self.aget_settings()
        payload, headers = await self._acall(
            "POST", settings.create_url, settings, body=request.to_body(), client_request_id=client_request_id
        )
        return _api.parse_submission(payload, headers)

    async def aget_generation(
        self, generation_id: str, *, deadline: float | None = None, poll_interval: float = 0.0
    ) -> Generation:
        """One poll of a generation (the trigger's): the async twin of ``get_generation(poll=True)``.

        One attempt, through the event loop's shared view of the API (see
        :mod:`airflow_provider_klingfx._health`): it may wait for its turn while the API rate-limits
        the key or is down, never past ``deadline``. The caller's watch answers its failures.

        :param generation_id: the vendor's generation id.
        :param deadline: epoch seconds; retries, request timeouts and waiting for a turn never
            reach past it.
        :param poll_interval: the caller's poll interval: polls held during an outage resume spread
            over it.
        """
        settings = await self.aget_settings()
        payload, headers = await self._acall(
            "GET",
            settings.fetch_url(generation_id),
            settings,
            deadline=deadline,
            poll=True,
            spread=poll_interval,
        )
        return Generation.from_api(payload, headers)

    async def aclose(self) -> None:
        """Give back the shared aiohttp session (the last hook of the event loop closes it)."""
        session, self._async_session = self._async_session, None
        if session is not None:
            from airflow_provider_klingfx import _session_pool

            await _session_pool.release(session)
