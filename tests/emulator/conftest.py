"""Fixtures of the emulator's tests: emulators in aiohttp's test server, on a fake clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from klingfx_emulator import ACCESS_LOG_FORMAT, STATE_KEY, EmulatorConfig, create_app
from tests.emulator.helpers import API_KEY, Emu, FakeClock, MakeEmu


@pytest.fixture
def emulator_api_key() -> str:
    """The key ``make_emulator`` configures; a test module may override this fixture."""
    return API_KEY


@pytest.fixture
async def make_emulator(emulator_api_key: str) -> AsyncIterator[MakeEmu]:
    """Factory: ``await make_emulator(**config)``; render defaults to "off" to keep tests fast.

    The fake clock starts at 1000; ``api_key`` defaults to ``emulator_api_key``.
    """
    clients: list[TestClient] = []

    async def factory(**overrides: Any) -> Emu:
        clock = FakeClock()
        settings: dict[str, Any] = {"api_key": emulator_api_key, "render": "off", **overrides}
        app = create_app(EmulatorConfig(**settings), clock=clock)
        server = TestServer(app, host="127.0.0.1")
        # The emulator's own header-free access log (TestServer's constructor would drop it).
        await server.start_server(access_log_format=ACCESS_LOG_FORMAT)
        client = TestClient(server)
        await client.start_server()
        clients.append(client)
        return Emu(client=client, clock=clock, state=app[STATE_KEY], api_key=settings["api_key"])

    yield factory
    for client in clients:
        await client.close()


@pytest.fixture
async def emu(make_emulator: MakeEmu) -> Emu:
    """A default emulator (render off) on a fake clock."""
    return await make_emulator()
