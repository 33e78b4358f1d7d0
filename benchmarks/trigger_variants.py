"""The trigger variants the triggerer benchmark compares; each differs from the package only in sessions.

* ``package``: :class:`KlingFxGenerationTrigger` as shipped: one ``aiohttp.ClientSession`` (with its own
  ``TCPConnector``, so one keep-alive connection) per trigger, reused by every poll of that trigger.
* ``baseline``: the same trigger, hook, retry policy, polling decisions and parsing, but a new
  ``aiohttp.ClientSession()`` for every request, opened and closed around it, the way Airflow's
  generic ``HttpAsyncHook.run()`` does (``async with aiohttp.ClientSession() as session: ...``).
* ``shared``: a prototype of sharing one ``TCPConnector`` by every trigger of an event loop: each
  trigger still has its own ``ClientSession`` (its timeouts, closed in ``run()``'s ``finally``), but
  built with ``connector_owner=False`` on the loop's connector, so closing a session or cancelling a
  trigger never closes the pool other triggers use; the connector is reference-counted and the last
  trigger to leave closes it.
* ``lean``: ``shared``, plus no cookie jar and no tenacity object on a poll whose first attempt
  succeeds.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass
from typing import Any

import aiohttp

from airflow_provider_klingfx import _api
from airflow_provider_klingfx.domain import KlingFxError
from airflow_provider_klingfx.hooks.klingfx import KlingFxHook
from airflow_provider_klingfx.triggers.klingfx import KlingFxGenerationTrigger


def _timeout(hook: KlingFxHook) -> aiohttp.ClientTimeout:
    # The package's timeouts, so the variants differ in connection handling only.
    return aiohttp.ClientTimeout(total=None, sock_connect=hook.connect_timeout, sock_read=hook.read_timeout)


class SessionPerRequestHook(KlingFxHook):
    """The package's hook with ``HttpAsyncHook``'s session handling: a new session per request."""

    async def aget_conn(self) -> aiohttp.ClientSession:
        self._async_session = aiohttp.ClientSession(timeout=_timeout(self))
        return self._async_session

    async def _asend(self, method: Any, url: str, path: str, headers: dict[str, str], body: Any) -> Any:
        try:
            return await super()._asend(method, url, path, headers, body)
        finally:
            await self.aclose()  # like leaving ``async with aiohttp.ClientSession() as session``


class BaselineTrigger(KlingFxGenerationTrigger):
    """The package's trigger polling through :class:`SessionPerRequestHook` (the baseline)."""

    def _make_hook(self) -> Any:
        return SessionPerRequestHook(self.klingfx_conn_id, async_sleep=self._sleep)


# -- one connector per event loop ----------------------------------------------------------------

#: Connections the shared pool keeps at most (aiohttp's default); polls queue for a free one beyond.
SHARED_LIMIT = 100


@dataclass
class _LoopPool:
    connector: aiohttp.TCPConnector
    users: int = 0


_POOLS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopPool] = weakref.WeakKeyDictionary()


def acquire_connector() -> aiohttp.TCPConnector:
    """The running loop's shared connector (created on first use), counted as used once more."""
    loop = asyncio.get_running_loop()
    pool = _POOLS.get(loop)
    if pool is None or pool.connector.closed:
        pool = _LoopPool(aiohttp.TCPConnector(limit=SHARED_LIMIT, ttl_dns_cache=300))
        _POOLS[loop] = pool
    pool.users += 1
    return pool.connector


async def release_connector(connector: aiohttp.TCPConnector) -> None:
    """One user fewer; the last one closes the pool, so nothing stays open once no trigger runs."""
    loop = asyncio.get_running_loop()
    pool = _POOLS.get(loop)
    if pool is None or pool.connector is not connector:
        return
    pool.users -= 1
    if pool.users <= 0:
        del _POOLS[loop]
        await connector.close()


class SharedConnectorHook(KlingFxHook):
    """The package's hook with its session on the loop's shared connector (``connector_owner=False``).

    The trigger's ``run()`` closes the hook in ``finally`` (also when cancelled), which releases the
    connector; a request cancelled mid-flight has its connection closed by aiohttp, not pooled.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._shared: aiohttp.TCPConnector | None = None

    def _new_session(self) -> aiohttp.ClientSession:
        assert self._shared is not None
        return aiohttp.ClientSession(timeout=_timeout(self), connector=self._shared, connector_owner=False)

    async def aget_conn(self) -> aiohttp.ClientSession:
        if self._async_session is None or self._async_session.closed:
            if self._shared is None:
                self._shared = acquire_connector()
            self._async_session = self._new_session()
        return self._async_session

    async def aclose(self) -> None:
        await super().aclose()  # the session only: connector_owner=False
        shared, self._shared = self._shared, None
        if shared is not None:
            await release_connector(shared)


class SharedConnectorTrigger(KlingFxGenerationTrigger):
    """The package's trigger polling through :class:`SharedConnectorHook`."""

    def _make_hook(self) -> Any:
        return SharedConnectorHook(self.klingfx_conn_id, async_sleep=self._sleep)


class LeanHook(SharedConnectorHook):
    """Prototype: the shared connector, no cookie jar, and tenacity only once a first attempt failed.

    On the happy path (a poll that succeeds first time) no ``AsyncRetrying`` is built; a failed first
    attempt that may be retried falls through to the package's full retry loop (so a failing poll
    gets at most one attempt more than today, with the same policy).
    """

    def _new_session(self) -> aiohttp.ClientSession:
        assert self._shared is not None
        return aiohttp.ClientSession(
            timeout=_timeout(self),
            connector=self._shared,
            connector_owner=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def _acall(
        self, method: Any, url_for: Any, *, body: Any = None, client_request_id: Any = None
    ) -> Any:
        settings = await self.aget_settings()
        headers = _api.build_headers(settings, client_request_id=client_request_id)
        try:
            return await self._asend(method, url_for(settings), settings.path, headers, body)
        except KlingFxError as exc:
            if not _api.is_retryable(exc, idempotent=method == "GET"):
                if method == "POST":
                    raise _api.submission_failure(exc) from None
                raise
        return await super()._acall(method, url_for, body=body, client_request_id=client_request_id)


class LeanTrigger(KlingFxGenerationTrigger):
    """The package's trigger polling through :class:`LeanHook`."""

    def _make_hook(self) -> Any:
        return LeanHook(self.klingfx_conn_id, async_sleep=self._sleep)


VARIANTS: dict[str, type[KlingFxGenerationTrigger]] = {
    "package": KlingFxGenerationTrigger,
    "baseline": BaselineTrigger,
    "shared": SharedConnectorTrigger,
    "lean": LeanTrigger,
}
