"""Hook for the Kling v1.6 effects models of the AI/ML API.

Sync methods use a pooled ``requests`` session (the worker path); their ``a``-prefixed twins use
``aiohttp`` (the triggerer path). Both call the same pure pieces in ``_api`` (URLs, headers, bodies,
parsing, error mapping) and the same retry policy, and both return domain objects, never raw
responses.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow.sdk import BaseHook

from airflow_provider_klingfx import _api
from airflow_provider_klingfx._polling import GenerationWatch
from airflow_provider_klingfx._retry import RetryPolicy
from airflow_provider_klingfx.domain import (
    EffectRequest,
    Generation,
    KlingFxAuthError,
    KlingFxConnectionConfigError,
    KlingFxError,
    KlingFxTimeoutError,
    KlingFxTransportError,
)

if TYPE_CHECKING:
    import aiohttp
    import requests
    import yarl


def _mask(secret: str) -> None:
    """Register the key with Airflow's log masker, as a second line of defence (we never log it)."""
    try:
        from airflow.sdk.log import mask_secret
    except ImportError:  # pragma: no cover - Airflow without the task SDK's log module
        return
    mask_secret(secret)


def _airflow_at_least(major: int, minor: int) -> bool:
    from airflow import __version__

    found = tuple(int(p) for p in __version__.split(".")[:2])
    return found >= (major, minor)


#: Airflow 3.2+ builds the connection form from provider info (``conn-fields``/``ui-field-behaviour``).
_DECLARATIVE_CONNECTION_FORMS = _airflow_at_least(3, 2)


class KlingFxHook(BaseHook):
    """Talks to the AI/ML API for the Kling v1.6 effects models.

    Connection (type ``klingfx``): *Base URL* (host; default ``https://api.aimlapi.com``), *API key*
    (password), and extras: ``endpoint``, ``universal`` (``/v2/video/generations``, default) or
    ``legacy`` (``/v2/generate/video/kling/generation``); ``connect_timeout`` and ``read_timeout``;
    ``poll_schedule``, ``fixed`` (default) or ``adaptive``, with ``expected_seconds``.

    :param klingfx_conn_id: the Airflow connection to use.
    :param connect_timeout: seconds to open a connection (default: the connection's extra
        ``connect_timeout``, else 10).
    :param read_timeout: seconds to wait for an answer (default: the connection's extra
        ``read_timeout``, else 30).
    :param retry_policy: how transient failures of one call are retried.
    :param sleep: sync sleep used between retries and polls (tests inject a recorder).
    :param async_sleep: async sleep used between retries (tests inject a recorder).
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
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.klingfx_conn_id = klingfx_conn_id
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self.retry_policy = retry_policy or RetryPolicy()
        self._sleep = sleep
        self._async_sleep = async_sleep
        self._settings: _api.ApiSettings | None = None
        self._session: requests.Session | None = None
        self._async_session: aiohttp.ClientSession | None = None
        self._async_timeout: aiohttp.ClientTimeout | None = None
        self._fetch_target: tuple[str, yarl.URL] | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(klingfx_conn_id={self.klingfx_conn_id!r})"

    if not _DECLARATIVE_CONNECTION_FORMS:
        # Airflow 3.1 reads the form only from the hook (and only with wtforms installed, e.g. by the
        # FAB provider); 3.2+ reads provider info and warns if the hook defines this, hence the guard.
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
        settings = _api.settings_from_connection(
            self.klingfx_conn_id, conn.host, conn.schema, conn.password, conn.extra_dejson
        )
        _mask(settings.api_key.reveal())
        return settings

    def _missing(self, exc: Exception) -> KlingFxConnectionConfigError:
        return KlingFxConnectionConfigError(
            f"connection {self.klingfx_conn_id!r} is not defined: create a connection of type 'klingfx' "
            f"(Admin > Connections, or AIRFLOW_CONN_{self.klingfx_conn_id.upper()}) ({type(exc).__name__})"
        )

    @property
    def settings(self) -> _api.ApiSettings:
        """The validated connection settings, read once per hook."""
        if self._settings is None:
            try:
                conn = self.get_connection(self.klingfx_conn_id)
            except Exception as exc:  # Airflow raises AirflowNotFoundException, or a 404 from the API
                raise self._missing(exc) from None
            self._settings = self._settings_from(conn)
        return self._settings

    async def aget_settings(self) -> _api.ApiSettings:
        """The async twin of :attr:`settings`: reads the connection without blocking the event loop."""
        if self._settings is None:
            try:
                conn = await self.aget_connection(self.klingfx_conn_id)
            except Exception as exc:
                raise self._missing(exc) from None
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

    def _transport_error(self, exc: Exception, method: str, path: str) -> KlingFxTransportError:
        """Map a ``requests`` failure to a typed error that says whether the API may have seen it."""
        import requests
        from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

        if isinstance(exc, requests.exceptions.ConnectTimeout):
            return KlingFxTransportError(f"{method} {path}: connect timeout", reached_server=False)
        if isinstance(exc, requests.exceptions.ConnectionError):
            reason = getattr(exc.args[0] if exc.args else None, "reason", None)
            if isinstance(reason, NewConnectionError | ConnectTimeoutError):
                return KlingFxTransportError(f"{method} {path}: could not connect", reached_server=False)
            return KlingFxTransportError(f"{method} {path}: connection lost", reached_server=True)
        if isinstance(exc, requests.exceptions.Timeout):
            return KlingFxTransportError(
                f"{method} {path}: no answer within {self.read_timeout:g}s", reached_server=True
            )
        return KlingFxTransportError(f"{method} {path}: {type(exc).__name__}", reached_server=True)

    def _send(
        self, method: _api.Method, url: str, path: str, headers: dict[str, str], body: Any
    ) -> tuple[Any, Mapping[str, str]]:
        import requests

        try:
            resp = self.get_conn().request(
                method,
                url,
                json=body,
                headers=headers,
                timeout=(self.connect_timeout, self.read_timeout),
                allow_redirects=False,
            )
        except requests.exceptions.RequestException as exc:
            raise self._transport_error(exc, method, path) from None
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
    ) -> tuple[Any, Mapping[str, str]]:
        headers = _api.build_headers(settings, client_request_id=client_request_id)
        try:
            return self.retry_policy.call(
                lambda: self._send(method, url, settings.path, headers, body),
                idempotent=method == "GET",
                what=f"{method} {settings.path}",
                sleep=self._sleep,
                logger=self.log,
            )
        except KlingFxError as exc:
            if method == "POST":
                raise _api.submission_failure(exc) from None
            raise

    def submit(self, request: EffectRequest, *, client_request_id: str | None = None) -> str:
        """Create a generation and return its id. Never sends the create twice unless it provably
        did not reach the API (see :func:`airflow_provider_klingfx._api.is_safe_to_resubmit`).

        :param request: the validated request.
        :param client_request_id: sent as ``X-Client-Request-Id`` to trace the submission.
        :raises KlingFxAmbiguousSubmissionError: when it may have been created despite the error.
        """
        settings = self.settings
        payload, _ = self._call(
            "POST",
            settings.create_url,
            settings,
            body=request.to_body(),
            client_request_id=client_request_id,
        )
        return _api.parse_submission(payload)

    def get_generation(self, generation_id: str) -> Generation:
        """Fetch a generation's current state.

        :param generation_id: the vendor's generation id.
        """
        settings = self.settings
        payload, headers = self._call("GET", settings.fetch_url(generation_id), settings)
        return Generation.from_api(payload, headers)

    def wait_for_generation(
        self,
        generation_id: str,
        poll_interval: float = 10.0,
        timeout: float = 1800.0,
        *,
        submitted_at: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> Generation:
        """Poll until the generation completes, on this thread (the non-deferrable path).

        Transient API errors are waited out until the deadline. The connection's ``poll_schedule``
        extra decides when to poll (``poll_interval`` is its scale).

        :param generation_id: the vendor's generation id.
        :param poll_interval: seconds between polls.
        :param timeout: seconds from ``submitted_at`` (default: now) to give up.
        :param submitted_at: epoch seconds of submission.
        :param clock: epoch clock (tests inject a fake one).
        :raises KlingFxGenerationFailedError: when the vendor fails it.
        :raises KlingFxTimeoutError: when the deadline passes.
        """
        start = clock() if submitted_at is None else submitted_at
        watch = GenerationWatch(
            generation_id,
            deadline=start + timeout,
            poll_interval=poll_interval,
            submitted_at=start,
            schedule=self.settings.poll_schedule,
            expected_seconds=self.settings.expected_seconds,
        )
        while True:
            result: Generation | KlingFxError
            try:
                result = self.get_generation(generation_id)
            except KlingFxError as exc:
                result = exc
            step = watch.observe(result, clock())
            for level, message in step.messages:
                self.log.log(level, message)
            if step.finished is not None:
                step.finished.raise_for_failure()
                return step.finished
            if step.timed_out:
                raise KlingFxTimeoutError(generation_id, clock() - start, watch.last_status)
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
            with self.get_conn().get(
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
            raise self._transport_error(exc, "GET", path) from None

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
        """Close the pooled sync session."""
        if self._session is not None:
            self._session.close()
            self._session = None

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

    @property
    def _request_timeout(self) -> aiohttp.ClientTimeout:
        # Built once per hook: the session is shared, so each request carries its hook's timeouts.
        if self._async_timeout is None:
            import aiohttp

            self._async_timeout = aiohttp.ClientTimeout(
                total=None, sock_connect=self.connect_timeout, sock_read=self.read_timeout
            )
        return self._async_timeout

    async def _asend(
        self, method: _api.Method, url: str | yarl.URL, path: str, headers: dict[str, str], body: Any
    ) -> Any:
        import aiohttp

        session = await self.aget_conn()
        try:
            async with session.request(
                method,
                url,
                json=body,
                headers=headers,
                allow_redirects=False,
                timeout=self._request_timeout,
            ) as resp:
                raw = await resp.read()
                return _api.parse_answer(
                    resp.status, raw, resp.headers, method=method, path=path
                ), resp.headers
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise KlingFxTransportError(
                f"{method} {path}: could not connect ({type(exc).__name__})", reached_server=False
            ) from None
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise KlingFxTransportError(
                f"{method} {path}: no answer within {self.read_timeout:.0f}s", reached_server=True
            ) from None
        except aiohttp.ClientError as exc:
            raise KlingFxTransportError(
                f"{method} {path}: connection lost ({type(exc).__name__})", reached_server=True
            ) from None

    async def _acall(
        self,
        method: _api.Method,
        url: str | yarl.URL,
        settings: _api.ApiSettings,
        *,
        body: Any = None,
        client_request_id: str | None = None,
    ) -> tuple[Any, Mapping[str, str]]:
        headers = _api.build_headers(settings, client_request_id=client_request_id)
        try:
            return await self.retry_policy.acall(
                lambda: self._asend(method, url, settings.path, headers, body),
                idempotent=method == "GET",
                what=f"{method} {settings.path}",
                sleep=self._async_sleep,
                logger=self.log,
            )
        except KlingFxError as exc:
            if method == "POST":
                raise _api.submission_failure(exc) from None
            raise

    async def asubmit(self, request: EffectRequest, *, client_request_id: str | None = None) -> str:
        """Async twin of :meth:`submit`."""
        settings = await self.aget_settings()
        payload, _ = await self._acall(
            "POST",
            settings.create_url,
            settings,
            body=request.to_body(),
            client_request_id=client_request_id,
        )
        return _api.parse_submission(payload)

    async def aget_generation(self, generation_id: str) -> Generation:
        """Async twin of :meth:`get_generation`.

        :param generation_id: the vendor's generation id.
        """
        settings = await self.aget_settings()
        # A trigger fetches the same URL every poll: build it once, already percent-encoded, so
        # neither we nor aiohttp quote and parse it again (a triggerer makes ~500 polls a second).
        cached = self._fetch_target
        if cached is None or cached[0] != generation_id:
            import yarl

            cached = (generation_id, yarl.URL(settings.fetch_url(generation_id), encoded=True))
            self._fetch_target = cached
        payload, headers = await self._acall("GET", cached[1], settings)
        return Generation.from_api(payload, headers)

    async def aclose(self) -> None:
        """Give back the shared aiohttp session (the last hook of the event loop closes it)."""
        session, self._async_session = self._async_session, None
        if session is not None:
            from airflow_provider_klingfx import _session_pool

            await _session_pool.release(session)
