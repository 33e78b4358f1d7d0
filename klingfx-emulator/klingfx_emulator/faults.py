"""Between a request and its handler: outages, fault rules, error answers and the request record.

The app's one middleware (:func:`middleware`) gives every request its ``x-request-id``, echoes a
valid ``X-Client-Request-Id``, answers for an outage in force (before anything else: faults neither
fire nor count on what it answers), applies the first :class:`~klingfx_emulator.config.FaultRule`
that fires, turns any other exception into an error in the API's shape, and records what was asked
and answered for ``GET /_emulator/stats`` (requests to ``/_emulator/*`` and ``/health`` are the
observer: neither faulted nor recorded).
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from klingfx_emulator.answers import (
    CLIENT_ID,
    CREATED,
    REQUEST_ID,
    RESETS,
    create_answer,
    envelope,
    reason,
    stamp_headers,
)
from klingfx_emulator.config import API_PATHS
from klingfx_emulator.state import STATE_KEY, GenerationRecord
from klingfx_emulator.videos import truncated_video

log = logging.getLogger(__name__)

_CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
DROPPED_STATUS = 444  # nginx's "connection closed without response": what the access log shows


def route_kind(request: web.Request) -> str | None:
    """What a fault rule calls the request's route: ``create``, ``fetch``, ``video`` or None (others)."""
    if request.path in API_PATHS:
        return {"POST": "create", "GET": "fetch", "HEAD": "fetch"}.get(request.method)
    if request.match_info.route.name == "video":
        return "video"
    return None


def drop_connection(request: web.Request) -> web.Response:
    """Close the connection without an answer; the returned response is never written.

    aiohttp then fails writing it with a connection error, which it treats as the client going
    away: no error is logged and the client sees the connection closed (or reset).
    """
    request.protocol.force_close()
    transport = request.transport
    if transport is not None:
        transport.close()
    return web.Response(status=DROPPED_STATUS)


@web.middleware
async def middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Request ids, the client id echo, fault injection, JSON errors and the request log."""
    state = request.app[STATE_KEY]
    request_id = str(uuid.uuid4())
    request[REQUEST_ID] = request_id
    raw_client_id = request.headers.get("X-Client-Request-Id")
    client_id = raw_client_id if raw_client_id and _CLIENT_ID_RE.match(raw_client_id) else None
    request[CLIENT_ID] = client_id
    request[RESETS] = state.resets
    # Admin and health endpoints are the observer: they are neither faulted nor recorded.
    observed = not (request.path.startswith("/_emulator/") or request.path == "/health")
    kind = route_kind(request)
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
            resp = drop_connection(request)
        elif outage == "503":
            state.outage_rejected += 1
            resp = envelope(request, 503, "Service Unavailable")
        elif fault is None:
            resp = await handler(request)
        elif fault.action == "status":
            assert fault.status is not None
            extra = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else None
            resp = envelope(request, fault.status, reason(fault.status), headers=extra)
        elif fault.action == "drop":
            resp = drop_connection(request)
        elif fault.action == "garbage":
            resp = web.Response(status=200, text="<html>oops</html>", content_type="text/html")
        elif fault.action == "slow":
            await asyncio.sleep(fault.delay)
            # Reset while it waited: it was the previous test's (or run's); its client has likely
            # given up, and the state it would touch is gone.
            resp = drop_connection(request) if is_stale(request) else await handler(request)
        elif fault.action == "truncate":
            resp = await truncated_video(request)
        elif fault.action in ("accept_without_id", "accept_unreadable"):
            # Let the create happen, then answer it without a readable id.
            resp = await handler(request)
            gen = request.get(CREATED)
            if isinstance(gen, GenerationRecord):
                resp = create_answer(
                    request, gen, id_in_body=False, trace_header=fault.action == "accept_without_id"
                )
        else:  # drop_after_accept: let the create happen, then lose the answer
            await handler(request)
            resp = drop_connection(request)
    except web.HTTPException as exc:
        extra = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        resp = envelope(request, exc.status, exc.reason, headers=extra)
    except Exception:
        # An emulator bug: answer in the API's shape so clients show a readable error.
        log.exception("unhandled error answering %s %s", request.method, request.path)
        resp = envelope(request, 500, "Internal Server Error")
    if resp.status != DROPPED_STATUS:
        if not resp.prepared:  # a truncated download stamped its headers before sending them
            stamp_headers(request, resp)
        entry["status"] = resp.status
    if observed and not is_stale(request):
        state.record(entry)
    return resp


def is_stale(request: web.Request) -> bool:
    """Whether the state was reset since ``request`` arrived: then it must leave the state alone.

    :param request: a request the middleware has seen.
    """
    return bool(request.app[STATE_KEY].resets != request[RESETS])
