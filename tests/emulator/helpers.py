"""Helpers the emulator's tests share: a fake clock, and an emulator in aiohttp's test server."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from klingfx_emulator import EmulatorState
from klingfx_emulator.cli import main

# The key ``make_emulator`` configures unless a test module overrides the ``emulator_api_key`` fixture.
API_KEY = "test-key-1c0ffee"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
CREATE_PATH = "/v2/video/generations"
LEGACY_PATH = "/v2/generate/video/kling/generation"
STANDARD = "klingai/kling-video-v1.6-standard-effects"
REPO_ROOT = Path(__file__).parents[2]


class FakeClock:
    """A clock tests move by hand, so state transitions never need a sleep.

    Thread-safe enough for an emulator running in a thread: a float read and written whole.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Emu:
    """An emulator served by aiohttp's test server on 127.0.0.1, on a fake clock, with helpers.

    ``create`` and ``fetch`` send ``api_key`` (the emulator's own) unless given another ``key``,
    and read the answer's body before returning it.
    """

    client: TestClient
    clock: FakeClock
    state: EmulatorState
    api_key: str = API_KEY

    def url(self, path: str) -> str:
        return str(self.client.make_url(path))

    def _headers(self, key: str | None, headers: dict[str, str] | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key if key is None else key}", **(headers or {})}

    async def create(
        self,
        body: Any = None,
        *,
        path: str = CREATE_PATH,
        key: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> aiohttp.ClientResponse:
        """POST ``body`` (``self.body()`` if None) to ``path``."""
        resp = await self.client.post(
            path, json=self.body() if body is None else body, headers=self._headers(key, headers)
        )
        await resp.read()
        return resp

    async def submit(self, body: dict[str, Any] | None = None, *, path: str = CREATE_PATH) -> str:
        resp = await self.create(body or self.body(), path=path)
        assert resp.status == (201 if path == LEGACY_PATH else 200), await resp.text()
        return str((await resp.json())["id"])

    async def fetch(
        self,
        gen_id: str = "x",
        *,
        path: str = CREATE_PATH,
        key: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> aiohttp.ClientResponse:
        resp = await self.client.get(
            path, params={"generation_id": gen_id}, headers=self._headers(key, headers)
        )
        await resp.read()
        return resp

    async def fetch_json(self, gen_id: str, *, path: str = CREATE_PATH) -> dict[str, Any]:
        resp = await self.fetch(gen_id, path=path)
        assert resp.status == 200, await resp.text()
        return dict(await resp.json())

    def body(
        self, scene: str = "magic_fireball", images: list[str] | None = None, **extra: Any
    ) -> dict[str, Any]:
        urls = images or [self.url("/samples/person-1.png")]
        return {
            "model": STANDARD,
            "effect_scene": scene,
            "image_url": urls[0] if len(urls) == 1 else urls,
            **extra,
        }

    async def stats(self) -> dict[str, Any]:
        resp = await self.client.get("/_emulator/stats")
        assert resp.status == 200
        return dict(await resp.json())


MakeEmu = Callable[..., Awaitable[Emu]]


def assert_cli_rejects(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """The command line refuses ``argv`` as argparse does: exit status 2 and an ``error:`` line.

    And it leaves the root logger's handlers alone: one left on capsys's stream would fail every
    later log line of the process once the stream is closed.
    """
    handlers = list(logging.getLogger().handlers)
    with pytest.raises(SystemExit) as exc:
        main(["--port", "0", *argv])
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err
    assert logging.getLogger().handlers == handlers


def cli_help_text(capsys: pytest.CaptureFixture[str]) -> str:
    """What ``--help`` prints, its whitespace collapsed."""
    with pytest.raises(SystemExit):
        main(["--help"])
    return " ".join(capsys.readouterr().out.split())


def start_cli(*args: str, api_key: str) -> subprocess.Popen[str]:
    """Start ``python -m klingfx_emulator --port 0 *args`` with ``api_key``.

    The key goes in through the environment; stdout and stderr are text pipes.
    """
    env = {**os.environ, "KLINGFX_EMULATOR_API_KEY": api_key}
    return subprocess.Popen(
        [sys.executable, "-m", "klingfx_emulator", "--port", "0", *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
