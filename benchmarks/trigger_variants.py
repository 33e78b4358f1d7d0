"""The trigger variants the triggerer benchmark compares; each differs from the package only in sessions.

* ``package``: :class:`KlingFxGenerationTrigger` as shipped: every hook of the event loop sends through
  the loop's one shared ``aiohttp.ClientSession`` (:mod:`airflow_provider_klingfx._session_pool`), so
  polls reuse a small pool of keep-alive connections.
* ``baseline``: the same trigger, hook, retry policy, polling decisions and parsing, but a new
  ``aiohttp.ClientSession()`` for every request, opened and closed around it, the way Airflow's
  generic ``HttpAsyncHook.run()`` does (``async with aiohttp.ClientSession() as session: ...``).
* ``floor``: not a usable trigger, the least any aiohttp-based trigger can do per poll: a bare GET on
  the loop's shared session, the body read, then ``asyncio.sleep``; no status check, parsing, retry or
  logging. How far ``package`` is above it is what the provider's own code costs.
* ``per_trigger``: what version 0.1.0 shipped: one session (with its own ``TCPConnector``, so one
  keep-alive connection) per trigger, reused by every poll of that trigger.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from airflow_provider_klingfx import _api, _session_pool
from airflow_provider_klingfx.hooks.klingfx import KlingFxHook
from airflow_provider_klingfx.triggers.klingfx import KlingFxGenerationTrigger


class _OwnSessionHook(KlingFxHook):
    """The package's hook, but with a session of its own instead of the loop's shared one."""

    async def aget_conn(self) -> aiohttp.ClientSession:
        if self._async_session is None or self._async_session.closed:
            self._async_session = self._new_session()
        return self._async_session

    def _new_session(self) -> aiohttp.ClientSession:
        # Timeouts travel with each request (see KlingFxHook._asend), as with the shared session.
        return aiohttp.ClientSession()

    async def aclose(self) -> None:
        session, self._async_session = self._async_session, None
        if session is not None and not session.closed:
            await session.close()


class SessionPerRequestHook(_OwnSessionHook):
    """``HttpAsyncHook``'s session handling: a new session per request, closed after it."""

    async def _asend(
        self, method: Any, url: Any, path: str, headers: dict[str, str], body: Any, deadline: Any
    ) -> Any:
        try:
            return await super()._asend(method, url, path, headers, body, deadline)
        finally:
            await self.aclose()  # like leaving ``async with aiohttp.ClientSession() as session``


class SessionPerTriggerHook(_OwnSessionHook):
    """Version 0.1.0's session handling: one session and connector per hook, for all its polls."""

    def _new_session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16, ttl_dns_cache=300))


class BaselineTrigger(KlingFxGenerationTrigger):
    """The package's trigger polling through :class:`SessionPerRequestHook` (the baseline)."""

    def _make_hook(self) -> Any:
        return SessionPerRequestHook(self.klingfx_conn_id, async_sleep=self._sleep)


class PerTriggerSessionTrigger(KlingFxGenerationTrigger):
    """The package's trigger polling through :class:`SessionPerTriggerHook` (version 0.1.0)."""

    def _make_hook(self) -> Any:
        return SessionPerTriggerHook(self.klingfx_conn_id, async_sleep=self._sleep)


class FloorTrigger(KlingFxGenerationTrigger):
    """A bare GET-and-sleep loop on the shared session, forever (the cost floor; see the module doc)."""

    async def run(self) -> AsyncIterator[Any]:  # type: ignore[override]
        hook = KlingFxHook(self.klingfx_conn_id)
        settings = await hook.aget_settings()
        url, headers = settings.fetch_url(self.generation_id), _api.build_headers(settings)
        session = _session_pool.acquire()
        try:
            while True:
                async with session.get(url, headers=headers) as resp:
                    await resp.read()
                await asyncio.sleep(self.poll_interval)
        finally:
            await _session_pool.release(session)
        yield  # pragma: no cover - an async generator, like the real trigger


VARIANTS: dict[str, type[KlingFxGenerationTrigger]] = {
    "package": KlingFxGenerationTrigger,
    "baseline": BaselineTrigger,
    "per_trigger": PerTriggerSessionTrigger,
    "floor": FloorTrigger,
}
