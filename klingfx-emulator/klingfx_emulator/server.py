"""Serving the emulator: in this process's own thread, or from the command line.

:func:`run_emulator_in_thread` starts it in a background thread with its own event loop and returns
a :class:`RunningEmulator` to talk to it from other threads (tests, scripts); :func:`serve` is what
``klingfx-emulator`` runs. Both go through :func:`start_site`, the only way to start a server that
owns its listening sockets, which ``"refuse"`` outages close and reopen (:class:`Listener`).
:func:`run_app_in_thread` serves any other aiohttp application the same way (the small servers a
test needs next to the emulator, such as a photo host).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future as ConcurrentFuture
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, cast

from aiohttp import web

from klingfx_emulator.routes import create_app
from klingfx_emulator.state import STATE_KEY, EmulatorState

if TYPE_CHECKING:
    from klingfx_emulator.config import EmulatorConfig, FaultRule, Outage

log = logging.getLogger(__name__)

#: Access log format for the emulator's server: no request headers at all, so neither the
#: ``Authorization`` header nor the key can end up in a log. ``%r`` is the request line; the only
#: query the API uses is ``generation_id``.
ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tfs'
#: How often (at most) the refuse-outage timer re-reads the state's clock: it sleeps until the next
#: window edge, but a fake clock a test advances by hand only moves between those sleeps.
_OUTAGE_POLL_SECONDS = 0.5


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


class Listener:
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


async def start_site(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start ``app`` on ``host:port`` with the header-free access log; return (runner, bound port).

    Only a server started here supports ``"refuse"`` outages: it owns its listening socket. If one
    is in force from the start, this returns with the socket already closed.

    :param app: the application from :func:`~klingfx_emulator.routes.create_app`.
    :param host: address to bind.
    :param port: port to bind; 0 picks a free one.
    """
    state = app[STATE_KEY]
    runner = web.AppRunner(app, access_log_format=ACCESS_LOG_FORMAT, handle_signals=False)
    listener = Listener(state, runner, host, port)
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


_Running = TypeVar("_Running", bound="RunningServer")


class RunningServer:
    """An aiohttp application serving from a background thread with its own event loop.

    Use it as a context manager, or call :meth:`stop` when done.

    :param url: base URL, e.g. ``http://127.0.0.1:41234``.
    :param loop: the thread's event loop.
    :param thread: the thread running ``loop``.
    :param runner: the application's runner, cleaned up by :meth:`stop`.
    """

    def __init__(
        self,
        url: str,
        loop: asyncio.AbstractEventLoop,
        thread: threading.Thread,
        runner: web.AppRunner,
    ) -> None:
        self.url = url
        self._loop = loop
        self._thread = thread
        self._runner = runner
        self._stopped = False

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

    def __enter__(self: _Running) -> _Running:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class RunningEmulator(RunningServer):
    """An emulator serving from a background thread with its own event loop.

    Made by :func:`run_emulator_in_thread`. Use it as a context manager, or call :meth:`stop` when
    done.

    :param url: base URL, e.g. ``http://127.0.0.1:41234``.
    :param state: the instance's state (mutated by the server thread: prefer :meth:`stats`, or
        read it inside :meth:`call`).
    :param loop: the thread's event loop.
    :param thread: the thread running ``loop``.
    :param runner: the application's runner, cleaned up by :meth:`stop`.
    """

    def __init__(
        self,
        url: str,
        state: EmulatorState,
        loop: asyncio.AbstractEventLoop,
        thread: threading.Thread,
        runner: web.AppRunner,
    ) -> None:
        super().__init__(url, loop, thread, runner)
        self.state = state

    @property
    def config(self) -> EmulatorConfig:
        """The instance's configuration."""
        return self.state.config

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
        """Same as ``POST /_emulator/reset`` (see :meth:`~klingfx_emulator.state.EmulatorState.reset`)."""
        self.call(self.state.reset)

    def schedule_outage(self, start_in: float, duration: float, mode: str = "503") -> Outage:
        """Schedule an outage window, like ``POST /_emulator/outage`` (which a refuse one makes unreachable).

        :param start_in: seconds from now on the state's clock (>= 0).
        :param duration: seconds (> 0).
        :param mode: ``"503"`` or ``"refuse"``, see :class:`~klingfx_emulator.config.Outage`.
        :returns: the window, its times counted from the state's creation or reset.
        :raises ValueError: on invalid values.
        """
        return cast("Outage", self.call(lambda: self.state.schedule_outage(start_in, duration, mode)))

    def wait_for_renders(self, timeout: float = 60.0) -> None:
        """Block until no render is in flight.

        :param timeout: seconds to wait at most.
        """
        asyncio.run_coroutine_threadsafe(self.state.wait_for_renders(timeout), self._loop).result(timeout + 5)


def _serve_in_thread(
    start: Callable[[], Awaitable[tuple[web.AppRunner, int]]], *, name: str, startup_timeout: float
) -> tuple[asyncio.AbstractEventLoop, threading.Thread, web.AppRunner, int]:
    """Run ``start()`` on a new event loop in a daemon thread, then that loop until it is stopped.

    :param start: starts the server on the thread's loop; returns its runner and bound port.
    :param name: the thread's name.
    :param startup_timeout: seconds to wait for ``start()``.
    :returns: the loop, the thread, the runner and the bound port, once ``start()`` returned.
    """
    loop = asyncio.new_event_loop()
    started: ConcurrentFuture[tuple[web.AppRunner, int]] = ConcurrentFuture()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            started.set_result(loop.run_until_complete(start()))
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

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    runner, bound = started.result(startup_timeout)
    return loop, thread, runner, bound


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
    :param clock: the state machine's clock (see :func:`~klingfx_emulator.routes.create_app`).
    :param host: address to bind (default loopback only).
    :param port: port to bind; 0 (default) picks a free one, see :attr:`RunningEmulator.url`.
    :param startup_timeout: seconds to wait for the server to listen.
    :raises RuntimeError: if PyAV or Pillow is missing.
    :raises OSError: if the address can't be bound.
    """
    app = create_app(config, clock=clock)
    loop, thread, runner, bound = _serve_in_thread(
        lambda: start_site(app, host, port), name="klingfx-emulator", startup_timeout=startup_timeout
    )
    return RunningEmulator(format_url(host, bound), app[STATE_KEY], loop, thread, runner)


def run_app_in_thread(
    app: web.Application, *, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 30.0
) -> RunningServer:
    """Serve another aiohttp application the way :func:`run_emulator_in_thread` serves the emulator.

    For the servers a test needs beside the emulator (a photo host, say), so that one piece of code
    runs servers in threads. Logs requests with the emulator's header-free access log format.

    :param app: the application.
    :param host: address to bind (default loopback only).
    :param port: port to bind; 0 (default) picks a free one, see :attr:`RunningServer.url`.
    :param startup_timeout: seconds to wait for the server to listen.
    :raises OSError: if the address can't be bound.
    """

    async def start() -> tuple[web.AppRunner, int]:
        runner = web.AppRunner(app, access_log_format=ACCESS_LOG_FORMAT, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        return runner, int(runner.addresses[0][1])

    loop, thread, runner, bound = _serve_in_thread(start, name="aiohttp-app", startup_timeout=startup_timeout)
    return RunningServer(format_url(host, bound), loop, thread, runner)


async def serve(config: EmulatorConfig, host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM (what ``klingfx-emulator`` runs).

    Prints one line on stdout once listening, ``KLINGFX EMULATOR LISTENING http://HOST:PORT``.

    :param config: the behaviour.
    :param host: address to bind.
    :param port: port to bind (0: any free one).
    """
    runner, bound = await start_site(create_app(config), host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows' loop has no signal handlers
            loop.add_signal_handler(sig, stop.set)
    # The one line scripts wait for: printed only once the socket is listening.
    print(f"KLINGFX EMULATOR LISTENING {format_url(host, bound)}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
