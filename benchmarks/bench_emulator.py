"""The emulator (klingfx-emulator) in its own process, instrumented for the benchmarks (no change to it).

``python -m benchmarks.bench_emulator [emulator options]`` serves :func:`create_app` exactly as
``python -m klingfx_emulator`` does, with three additions that only observe:

* the state machine runs on the epoch clock (``time.time``), so a generation's completion time
  (``ready_at``) can be compared with timestamps in Airflow's metadata database;
* a middleware stamps the arrival time of every API request (create and fetch) and the generation
  it asks about;
* the server's ``connection_made`` is wrapped to stamp every TCP connection a client opens.

``POST /_bench/rate_limit`` switches the per-key rate limit at run time. ``GET /_bench/stats``
returns those stamps, each generation's ``submitted_at``/``ready_at`` and the
process's CPU seconds. It prints ``KLINGFX EMULATOR LISTENING <url>`` once listening, like the CLI;
with ``--tls-cert``/``--tls-key`` it also serves HTTPS on a second port (the real API is HTTPS only)
and prints ``BENCH TLS LISTENING <url>`` after it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from klingfx_emulator import ACCESS_LOG_FORMAT, STATE_KEY, EmulatorConfig, create_app
from klingfx_emulator.config import API_PATHS


class Recorder:
    """Timestamps of what the emulator saw (only touched from its event loop)."""

    def __init__(self) -> None:
        self.fetches: list[tuple[float, str]] = []
        self.creates: list[float] = []
        self.connections: list[float] = []
        self.video_downloads: list[float] = []


RECORDER = web.AppKey("bench_recorder", Recorder)


@web.middleware
async def _stamp(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    now = time.time()
    rec = request.app[RECORDER]
    if request.path in API_PATHS:
        if request.method == "GET":
            rec.fetches.append((now, request.query.get("generation_id", "")))
        elif request.method == "POST":
            rec.creates.append(now)
    elif request.path.startswith("/files/"):
        rec.video_downloads.append(now)
    return await handler(request)


async def _bench_stats(request: web.Request) -> web.Response:
    rec = request.app[RECORDER]
    state = request.app[STATE_KEY]
    cpu = os.times()
    return web.json_response(
        {
            "now": time.time(),
            "cpu_seconds": cpu.user + cpu.system,
            "fetches": rec.fetches,
            "creates": rec.creates,
            "connections": rec.connections,
            "video_downloads": rec.video_downloads,
            "generations": {
                gid: {
                    "submitted_at": g.submitted_at,
                    "ready_at": g.ready_at,
                    "client_request_id": g.client_request_id,
                }
                for gid, g in state.generations.items()
            },
        }
    )


async def _bench_rate_limit(request: web.Request) -> web.Response:
    """``POST /_bench/rate_limit {"rate_limit": r}``: switch the per-key limit on (or off with null)
    after the benchmark's generations are submitted, so only polls meet it."""
    body = await request.json()
    state = request.app[STATE_KEY]
    state.config.rate_limit = body.get("rate_limit")
    return web.json_response({"rate_limit": state.config.rate_limit})


def build_app(config: EmulatorConfig) -> web.Application:
    """The package's app on the epoch clock, plus the recorder middleware and ``/_bench/stats``."""
    app = create_app(config, clock=time.time)
    app[RECORDER] = Recorder()
    app.middlewares.append(_stamp)
    app.router.add_get("/_bench/stats", _bench_stats)
    app.router.add_post("/_bench/rate_limit", _bench_rate_limit)
    return app


async def serve(config: EmulatorConfig, host: str, port: int, tls: ssl.SSLContext | None = None) -> None:
    """Serve until SIGINT/SIGTERM, counting the TCP connections clients open."""
    app = build_app(config)
    runner = web.AppRunner(app, access_log_format=ACCESS_LOG_FORMAT, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    bound = runner.addresses[0][1]
    if tls is not None:
        await web.TCPSite(runner, host, 0, ssl_context=tls).start()
    server = runner.server
    assert server is not None
    rec = app[RECORDER]
    original = server.connection_made

    def connection_made(handler: Any, transport: Any) -> None:
        rec.connections.append(time.time())
        original(handler, transport)

    server.connection_made = connection_made  # type: ignore[method-assign]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    print(f"KLINGFX EMULATOR LISTENING http://{host}:{bound}", flush=True)
    if tls is not None:
        print(f"BENCH TLS LISTENING https://{host}:{runner.addresses[1][1]}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_emulator")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--api-key", default="bench-key")
    p.add_argument("--queued-seconds", type=float, default=0.0)
    p.add_argument("--generating-seconds", type=float, default=120.0)
    p.add_argument("--generating-seconds-max", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--render", choices=("eager", "lazy", "off"), default="off")
    p.add_argument("--tls-cert", default=None, help="PEM certificate: serve HTTPS")
    p.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    args = p.parse_args()
    tls = None
    if args.tls_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, force=True)
    config = EmulatorConfig(
        api_key=args.api_key,
        queued_seconds=args.queued_seconds,
        generating_seconds=args.generating_seconds,
        generating_seconds_max=args.generating_seconds_max,
        seed=args.seed,
        render=args.render,
        max_recorded_requests=1000,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(config, args.host, args.port, tls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
