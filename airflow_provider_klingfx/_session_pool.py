"""One aiohttp session (one connection pool) per event loop, shared by every hook in that loop.

The triggerer runs all its triggers in one event loop. With a session per trigger, 5,000 deferred
generations keep 5,000 idle keep-alive connections (over TLS about 256 KiB each) and 5,000 session
objects; with a session per request (Airflow's generic ``HttpAsyncHook``) every poll pays a new
connection and TLS handshake. Sharing one session per loop keeps a small pool of warm connections
that every poll reuses (``benchmarks/RESULTS.md`` §2 has the figures).

Sharing is safe because nothing per-request lives in the session: headers and timeouts are passed
with each request, and the cookie jar is a :class:`aiohttp.DummyCookieJar`, so no answer can leak
state into another trigger's request. A request cancelled mid-flight (a trigger cancelled when a
task is cleared or the triggerer stops) has its connection closed by aiohttp, never returned to the
pool half-read. Users are counted: the last hook to release the session closes it, so a triggerer
with no trigger left holds no socket.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import aiohttp

#: Connections the shared pool keeps open at most (aiohttp's default). At 500 polls a second and a
#: 200 ms round trip to the API a poll needs about 100 in flight; beyond that polls wait for a free
#: connection rather than open more.
POOL_LIMIT = 100

#: Seconds a resolved address is cached (aiohttp's default is 10 s; the API's address is stable).
DNS_CACHE_SECONDS = 300


@dataclass
class _Lease:
    session: aiohttp.ClientSession
    users: int = 0


# Keyed weakly by loop: a loop that is closed and dropped takes its entry with it.
_LEASES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Lease] = weakref.WeakKeyDictionary()


def acquire() -> aiohttp.ClientSession:
    """The running loop's shared session, created on first use; counts one more user.

    Every call must be matched by one :func:`release` of the returned session.
    """
    import aiohttp

    loop = asyncio.get_running_loop()
    lease = _LEASES.get(loop)
    if lease is None or lease.session.closed:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=POOL_LIMIT, ttl_dns_cache=DNS_CACHE_SECONDS),
            cookie_jar=aiohttp.DummyCookieJar(),
            # Per-request timeouts come from each hook; none here, so no default can cut a poll short.
            timeout=aiohttp.ClientTimeout(total=None),
        )
        lease = _LEASES[loop] = _Lease(session)
    lease.users += 1
    return lease.session


async def release(session: aiohttp.ClientSession) -> None:
    """One user fewer; the last one closes the session and its connections."""
    loop = asyncio.get_running_loop()
    lease = _LEASES.get(loop)
    if lease is None or lease.session is not session:
        # A session replaced after someone closed it: close this stale one if it is still open.
        if not session.closed:
            await session.close()
        return
    # Counted down before any await, so a release cancelled while closing cannot be counted twice.
    lease.users -= 1
    if lease.users <= 0:
        del _LEASES[loop]
        await session.close()


def users() -> int:
    """Hooks currently holding the running loop's session (0 when there is none); for tests."""
    lease = _LEASES.get(asyncio.get_running_loop())
    return lease.users if lease is not None and not lease.session.closed else 0
