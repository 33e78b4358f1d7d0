"""Tests of the emulator's per-key rate limit and timed outages, over real HTTP on 127.0.0.1.

The rate limit and the 503 outages run on an injected fake clock (no sleeping); refuse outages
close a real listening socket, so those tests use short real windows (or wait for the outage timer
to notice a fake clock that moved).
"""

from __future__ import annotations

import http.client
import json
import select
import signal
import socket
import sys
import time
from typing import Any

import pytest

from klingfx_emulator import (
    EmulatorConfig,
    EmulatorState,
    FaultRule,
    Outage,
    run_emulator_in_thread,
)
from klingfx_emulator.cli import build_parser, config_from_args, parse_outages
from tests.emulator.helpers import (
    CREATE_PATH,
    LEGACY_PATH,
    STANDARD,
    Emu,
    FakeClock,
    MakeEmu,
    assert_cli_rejects,
    cli_help_text,
    start_cli,
)

API_KEY = "test-key-ra7e"  # this module's emulators use this key (see emulator_api_key below)
OTHER_KEY = "test-key-0th3r"
BODY = {"model": STANDARD, "effect_scene": "squish", "image_url": "https://example.com/alice.jpg"}


@pytest.fixture
def emulator_api_key() -> str:
    """``make_emulator`` (tests/emulator/conftest.py) configures this module's key."""
    return API_KEY


def _assert_error(body: dict[str, Any], status: int, path: str) -> None:
    assert body["statusCode"] == status
    assert body["path"] == path
    assert body["message"]
    assert set(body) == {"message", "path", "requestId", "statusCode", "timestamp"}


# ---------------------------------------------------------------------------------------------
# Rate limit
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("route", "path"), [("create", CREATE_PATH), ("create", LEGACY_PATH),
                                             ("fetch", CREATE_PATH), ("fetch", LEGACY_PATH)])  # fmt: skip
async def test_rate_limit_answers_429_with_retry_after(make_emulator: MakeEmu, route: str, path: str) -> None:
    emu = await make_emulator(rate_limit=0.5)  # capacity max(1, 0.5) = 1, a token every 2 s
    call = emu.create if route == "create" else emu.fetch
    assert (await call(path=path)).status in (200, 201, 404)
    resp = await call(path=path)
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "2"
    _assert_error(await resp.json(), 429, path)
    assert "x-inference-id" not in resp.headers
    emu.clock.advance(1.5)  # half a token short: 0.5 s, rounded up
    assert (await call(path=path)).headers["Retry-After"] == "1"
    emu.clock.advance(0.5)
    assert (await call(path=path)).status in (200, 201, 404)
    stats = await emu.stats()
    assert stats["rate_limited"] == 2
    assert [r["status"] for r in stats["requests"]][1:3] == [429, 429]


async def test_rate_limit_without_retry_after_in_the_live_body(make_emulator: MakeEmu) -> None:
    emu = await make_emulator(rate_limit=1, rate_limit_retry_after=False, error_body="live")
    assert (await emu.create()).status == 200
    resp = await emu.create()
    assert resp.status == 429
    assert "Retry-After" not in resp.headers
    body = await resp.json()
    assert body["status"] == 429
    assert body["title"] == "Too Many Requests"
    assert body["error"]["name"] == "TooManyRequestsException"


async def test_rate_limit_refills_up_to_the_burst(make_emulator: MakeEmu) -> None:
    emu = await make_emulator(rate_limit=1, rate_limit_burst=3)
    assert [(await emu.fetch()).status for _ in range(4)] == [404, 404, 404, 429]
    emu.clock.advance(0.5)
    assert (await emu.fetch()).status == 429
    emu.clock.advance(0.5)
    assert [(await emu.fetch()).status for _ in range(2)] == [404, 429]
    emu.clock.advance(3600)  # the bucket holds 3 at most, however long the wait
    assert [(await emu.fetch()).status for _ in range(4)] == [404, 404, 404, 429]
    assert emu.state.rate_limited == 4


async def test_rate_limited_create_makes_and_charges_nothing(make_emulator: MakeEmu) -> None:
    emu = await make_emulator(rate_limit=1, credits=360_000)
    assert (await emu.create()).status == 200
    assert (await emu.create()).status == 429
    stats = await emu.stats()
    assert stats["submissions"] == 1
    assert len(stats["generations"]) == 1
    assert stats["credits_spent"] == 120_000
    assert stats["credits_remaining"] == 240_000


async def test_unauthorized_requests_consume_nothing(make_emulator: MakeEmu) -> None:
    emu = await make_emulator(rate_limit=1)
    for _ in range(5):
        assert (await emu.create(key="wrong")).status == 401
        assert (await emu.fetch(key="wrong")).status == 401
    assert (await emu.create()).status == 200
    assert (await emu.create()).status == 429
    assert emu.state.rate_limited == 1


async def test_rate_limit_is_per_key_and_keeps_only_a_hash(make_emulator: MakeEmu) -> None:
    emu = await make_emulator(rate_limit=1)
    assert [(await emu.fetch()).status for _ in range(2)] == [404, 429]
    # The emulator accepts one key; switching it on the running config shows a second key gets
    # a bucket of its own, and the first key's bucket is still empty when it comes back.
    emu.state.config.api_key = OTHER_KEY
    assert [(await emu.fetch(key=OTHER_KEY)).status for _ in range(2)] == [404, 429]
    emu.state.config.api_key = API_KEY
    assert (await emu.fetch()).status == 429
    assert len(emu.state.rate_buckets) == 2
    assert all(isinstance(k, bytes) and len(k) == 32 for k in emu.state.rate_buckets)
    assert API_KEY not in repr(emu.state.rate_buckets)
    assert API_KEY.encode() not in b"".join(emu.state.rate_buckets)


async def test_rate_limit_spares_the_video_samples_health_and_admin(make_emulator: MakeEmu) -> None:
    emu = await make_emulator(rate_limit=1, queued_seconds=0, generating_seconds=0)
    gen_id = await emu.submit()
    emu.clock.advance(1)
    resp = await emu.fetch(gen_id)
    assert resp.status == 200
    video_url = (await resp.json())["video"]["url"]
    assert (await emu.fetch(gen_id)).status == 429
    for _ in range(5):
        async with emu.client.session.get(video_url) as video:
            assert video.status == 200
        assert (await emu.client.get("/samples/person-1.png")).status == 200
        assert (await emu.client.get("/health")).status == 200
        assert (await emu.client.get("/_emulator/stats")).status == 200
    assert (await emu.fetch(gen_id)).status == 429
    assert emu.state.rate_limited == 2


async def test_rate_limit_follows_a_running_emulators_config(emu: Emu) -> None:
    assert [(await emu.fetch()).status for _ in range(3)] == [404] * 3
    emu.state.config.rate_limit = 1
    assert [(await emu.fetch()).status for _ in range(2)] == [404, 429]
    emu.state.config.rate_limit = 0  # off again, as None is
    assert [(await emu.fetch()).status for _ in range(3)] == [404] * 3


async def test_faults_come_before_the_rate_limit(make_emulator: MakeEmu) -> None:
    emu = await make_emulator(rate_limit=1, faults=[FaultRule("status", route="create", status=500, times=3)])
    assert [(await emu.create()).status for _ in range(5)] == [500, 500, 500, 200, 429]


async def test_reset_refills_the_buckets(make_emulator: MakeEmu) -> None:
    emu = await make_emulator(rate_limit=1)
    assert [(await emu.create()).status for _ in range(2)] == [200, 429]
    assert (await emu.client.post("/_emulator/reset")).status == 200
    assert (await emu.stats())["rate_limited"] == 0
    assert [(await emu.create()).status for _ in range(2)] == [200, 429]


@pytest.mark.parametrize(
    "bad",
    [
        {"rate_limit": 0},
        {"rate_limit": -1},
        {"rate_limit": True},
        {"rate_limit": float("inf")},
        {"rate_limit": 5, "rate_limit_burst": 0.5},
        {"rate_limit_burst": 5},
    ],
    ids=["zero", "negative", "bool", "inf", "burst-below-one", "burst-without-limit"],
)
def test_rate_limit_settings_are_validated(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="rate_limit"):
        EmulatorConfig(**bad)


def test_rate_limit_capacity_defaults_to_one_seconds_worth() -> None:
    assert EmulatorConfig(rate_limit=0.2).rate_limit_capacity == 1
    assert EmulatorConfig(rate_limit=50).rate_limit_capacity == 50
    assert EmulatorConfig(rate_limit=50, rate_limit_burst=5).rate_limit_capacity == 5


# ---------------------------------------------------------------------------------------------
# 503 outages
# ---------------------------------------------------------------------------------------------


async def test_outage_503_window_follows_the_clock(make_emulator: MakeEmu) -> None:
    emu = await make_emulator(
        outages=[Outage(10, 20, "503")], faults=[FaultRule("status", route="fetch", status=502)]
    )
    gen_id = await emu.submit()
    emu.clock.advance(9.999)
    assert (await emu.create()).status == 200
    emu.clock.advance(0.001)
    for path in (CREATE_PATH, LEGACY_PATH):
        for resp in (await emu.create(path=path), await emu.fetch(gen_id, path=path),
                     await emu.create(path=path, key="wrong")):  # fmt: skip
            assert resp.status == 503
            assert "Retry-After" not in resp.headers
            assert "x-inference-id" not in resp.headers
            _assert_error(await resp.json(), 503, path)
    # The other routes keep working, the observer's included.
    assert (await emu.client.get("/samples/person-2.png")).status == 200
    assert (await emu.client.get("/health")).status == 200
    stats = await emu.stats()
    assert stats["outage_active"] == "503"
    assert stats["outages"] == [{"start": 10.0, "end": 20.0, "mode": "503"}]
    assert stats["outage_rejected"] == 6
    assert stats["faults_injected"] == 0  # the fetch fault did not fire, nor count, in the outage
    assert stats["submissions"] == 2
    emu.clock.advance(10)
    assert (await emu.fetch(gen_id)).status == 502  # the fault rule is still armed
    assert (await emu.fetch(gen_id)).status == 200
    assert (await emu.create()).status == 200
    stats = await emu.stats()
    assert stats["outage_active"] is None
    statuses = [(r["path"].split("/")[1], r["status"]) for r in stats["requests"]]
    assert (
        statuses
        == [("v2", 200)] * 2 + [("v2", 503)] * 6 + [("samples", 200), ("v2", 502)] + [("v2", 200)] * 2
    )


async def test_outage_503_in_the_live_body_and_before_the_rate_limit(make_emulator: MakeEmu) -> None:
    emu = await make_emulator(error_body="live", rate_limit=1, outages=[{"start": 0, "end": 5}])
    resp = await emu.create()
    assert resp.status == 503
    assert (await resp.json())["title"] == "Service Unavailable"
    emu.clock.advance(5)
    assert [(await emu.create()).status for _ in range(2)] == [200, 429]  # the 503 took no token


async def test_outage_admin_endpoint_schedules_from_now(make_emulator: MakeEmu) -> None:
    emu = await make_emulator()
    emu.clock.advance(3)
    resp = await emu.client.post("/_emulator/outage", json={"start_in": 5, "duration": 10, "mode": "503"})
    assert resp.status == 200
    assert await resp.json() == {"start": 8.0, "end": 18.0, "mode": "503"}
    resp = await emu.client.post("/_emulator/outage", json={"duration": 1})  # start_in 0, mode 503
    assert await resp.json() == {"start": 3.0, "end": 4.0, "mode": "503"}
    assert (await emu.fetch()).status == 503
    emu.clock.advance(4)  # t = 7
    assert (await emu.fetch()).status == 404
    emu.clock.advance(1)  # t = 8
    assert (await emu.fetch()).status == 503
    emu.clock.advance(10)  # t = 18
    assert (await emu.fetch()).status == 404
    assert len((await emu.stats())["outages"]) == 2


@pytest.mark.parametrize(
    "raw",
    [
        '{"start_in": 1}',
        '{"duration": 0}',
        '{"duration": -1}',
        '{"start_in": -1, "duration": 1}',
        '{"duration": true}',
        '{"duration": "5"}',
        '{"duration": 1e999}',
        '{"duration": 1, "mode": "down"}',
        '{"duration": 1, "mode": 503}',
        '{"duration": 1, "extra": 1}',
        "[1, 2]",
        "nope",
    ],
)
async def test_outage_admin_endpoint_validates(emu: Emu, raw: str) -> None:
    resp = await emu.client.post("/_emulator/outage", data=raw, headers={"Content-Type": "application/json"})
    assert resp.status == 400
    body = await resp.json()
    assert body["message"] == "Body validation error!"
    assert body["errors"][0]["message"]
    assert emu.state.outages == []


async def test_refuse_needs_a_server_that_owns_its_socket(make_emulator: MakeEmu, emu: Emu) -> None:
    resp = await emu.client.post("/_emulator/outage", json={"duration": 1, "mode": "refuse"})
    assert resp.status == 400
    assert "start_site" in (await resp.json())["errors"][0]["message"]
    with pytest.raises(ValueError, match="run_emulator_in_thread or the CLI"):
        emu.state.schedule_outage(0, 1, "refuse")
    assert emu.state.outages == []
    with pytest.raises(RuntimeError, match="refuse outages need a server started by start_site"):
        await make_emulator(outages=[Outage(5, 10, "refuse")])


async def test_reset_brings_back_the_configured_outages_counted_from_the_reset(
    make_emulator: MakeEmu,
) -> None:
    emu = await make_emulator(outages=[Outage(10, 20)])
    await emu.client.post("/_emulator/outage", json={"start_in": 0, "duration": 1000})
    assert (await emu.fetch()).status == 503
    emu.clock.advance(100)
    assert (await emu.fetch()).status == 503  # the scheduled window
    assert (await emu.client.post("/_emulator/reset")).status == 200
    stats = await emu.stats()
    assert stats["outages"] == [{"start": 10.0, "end": 20.0, "mode": "503"}]
    assert stats["outage_rejected"] == 0
    assert (await emu.fetch()).status == 404
    emu.clock.advance(10)
    assert (await emu.fetch()).status == 503


def test_outage_window_edges_overlaps_and_cache() -> None:
    clock = FakeClock(500.0)
    config = EmulatorConfig(outages=[Outage(10, 30), Outage(20, 25, "refuse"), Outage(40, 50)])
    state = EmulatorState(config, clock)
    # Deliberately out of order: the cached answer must not outlive its span either way.
    expected = {0: None, 9.99: None, 10: "503", 19.9: "503", 20: "refuse", 24.9: "refuse",
                25: "503", 29.9: "503", 30: None, 45: "503", 50: None, 1e6: None}  # fmt: skip
    for t in [*expected, *reversed(expected), 20, 0, 45, 10, 30]:
        assert state.outage_at(500.0 + t) == expected[t], t
    assert state.outage_window(500.0 + 12) == ("503", 520.0)
    assert state.outage_window(500.0 + 32) == (None, 540.0)
    assert state.outage_window(500.0 + 60) == (None, float("inf"))


@pytest.mark.parametrize(
    "bad",
    [
        {"start": 5, "end": 5},
        {"start": 5, "end": 1},
        {"start": -1, "end": 1},
        {"start": 0, "end": 1, "mode": "down"},
        {"start": 0, "end": float("nan")},
        {"start": 0},
        {"start": 0, "end": 1, "extra": 1},
    ],
)
def test_outage_windows_are_validated(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="outage"):
        EmulatorConfig(outages=[bad])  # type: ignore[list-item]


# ---------------------------------------------------------------------------------------------
# Refuse outages (real sockets)
# ---------------------------------------------------------------------------------------------


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _connect(port: int) -> None:
    socket.create_connection(("127.0.0.1", port), timeout=5).close()


def _get_health(port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/health")
        assert conn.getresponse().read() == b"ok"
    finally:
        conn.close()


def _wait_until(accepting: bool, port: int, timeout: float) -> float:
    """Poll connecting until the port accepts (or refuses); return the monotonic time it did."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            _connect(port)
            if accepting:
                return time.monotonic()
        except ConnectionRefusedError:
            if not accepting:
                return time.monotonic()
        if time.monotonic() > deadline:
            raise AssertionError(
                f"port {port} still {'refusing' if accepting else 'accepting'} after {timeout}s"
            )
        time.sleep(0.02)


def test_refuse_outage_closes_the_port_and_keep_alive_connections_then_reopens() -> None:
    config = EmulatorConfig(api_key=API_KEY, render="off")
    with run_emulator_in_thread(config) as running:  # the state's clock is time.monotonic
        port = _port(running.url)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/health")
        resp = conn.getresponse()
        assert resp.read() == b"ok"
        assert not resp.will_close  # a keep-alive connection, as a pooled client holds
        window = running.schedule_outage(0.2, 0.5, "refuse")
        assert window.mode == "refuse"
        assert window.end - window.start == pytest.approx(0.5)
        start = running.state.epoch + window.start
        end = running.state.epoch + window.end
        # No request arrives: the server's own timer closes the idle connection at the start.
        assert conn.sock is not None
        ready, _, _ = select.select([conn.sock], [], [], 5)
        assert ready
        assert conn.sock.recv(1) == b""  # the server closed it
        assert time.monotonic() >= start
        with pytest.raises(ConnectionRefusedError):
            _connect(port)
        assert running.stats()["outage_active"] == "refuse"
        back = _wait_until(True, port, timeout=10)
        assert back >= end
        conn.close()
        conn.request("GET", "/health")  # http.client reconnects: same port, listening again
        assert conn.getresponse().read() == b"ok"
        conn.close()
        stats = running.stats()
        assert stats["outage_connections_dropped"] >= 1
        assert stats["outage_active"] is None
        assert stats["outages"] == [window.to_dict()]


def test_refuse_outage_follows_an_injected_clock_without_requests() -> None:
    clock = FakeClock()
    config = EmulatorConfig(api_key=API_KEY, render="off", outages=[Outage(10, 20, "refuse")])
    with run_emulator_in_thread(config, clock=clock) as running:
        port = _port(running.url)
        _get_health(port)
        clock.advance(10)
        _wait_until(False, port, timeout=10)  # the timer re-reads the clock at least twice a second
        clock.advance(10)
        _wait_until(True, port, timeout=10)
        running.reset()  # the configured window is back, counted from the reset
        clock.advance(15)
        _wait_until(False, port, timeout=10)
        running.reset()  # a reset during the window: listening again at once
        _wait_until(True, port, timeout=10)
        # Over HTTP, starting at once: the answer still gets out before the port closes.
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/_emulator/outage", json.dumps({"duration": 5, "mode": "refuse"}))
        resp = conn.getresponse()
        assert (resp.status, json.loads(resp.read())) == (200, {"start": 0.0, "end": 5.0, "mode": "refuse"})
        conn.close()
        _wait_until(False, port, timeout=10)
        clock.advance(5)
        _wait_until(True, port, timeout=10)
        _get_health(port)  # the server has seen the probes' connections before it stops
        assert running.stats()["outages"] == [
            {"start": 10.0, "end": 20.0, "mode": "refuse"},
            {"start": 0.0, "end": 5.0, "mode": "refuse"},
        ]


@pytest.mark.skipif(sys.platform == "win32", reason="uses select() on a pipe and SIGTERM")
def test_cli_outage_refuses_from_startup_then_listens() -> None:
    proc = start_cli(
        "--render", "lazy", "--outage", "0:3:refuse", "--outage", "3:1000", "--rate-limit", "100",
        api_key=API_KEY,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "no LISTENING line within 60s"
        line = proc.stdout.readline()
        assert line.startswith("KLINGFX EMULATOR LISTENING http://127.0.0.1:"), line
        port = _port(line.split()[-1])
        with pytest.raises(ConnectionRefusedError):  # closed before the line was printed
            _connect(port)
        _wait_until(True, port, timeout=30)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", CREATE_PATH, json.dumps(BODY), {"Authorization": f"Bearer {API_KEY}"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 503  # the 503 window that follows
        conn.request("GET", "/_emulator/stats")
        stats = json.loads(conn.getresponse().read())
        conn.close()
        assert stats["outages"] == [
            {"start": 0.0, "end": 3.0, "mode": "refuse"},
            {"start": 3.0, "end": 1000.0, "mode": "503"},
        ]
        assert stats["outage_rejected"] == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out == ""
    assert "outage over: listening on port" in err
    assert API_KEY not in err


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def test_cli_flags_for_rate_limit_and_outages() -> None:
    config = config_from_args(build_parser().parse_args([]))
    assert (config.rate_limit, config.rate_limit_burst, config.rate_limit_retry_after) == (None, None, True)
    assert config.outages == []
    argv = ["--rate-limit", "5", "--rate-limit-burst", "10", "--rate-limit-no-retry-after",
            "--outage", "10:20", "--outage", "30.5:35:refuse"]  # fmt: skip
    config = config_from_args(build_parser().parse_args(argv))
    assert (config.rate_limit, config.rate_limit_burst, config.rate_limit_retry_after) == (5, 10, False)
    assert config.outages == [Outage(10, 20, "503"), Outage(30.5, 35, "refuse")]
    assert parse_outages([" 1 : 2 : 503 "]) == [Outage(1, 2)]


@pytest.mark.parametrize(
    "argv",
    [
        ["--outage", "10"],
        ["--outage", "20:10"],
        ["--outage", "1:2:down"],
        ["--outage", "a:b"],
        ["--outage", "1:2:503:x"],
        ["--rate-limit", "0"],
        ["--rate-limit", "1", "--rate-limit-burst", "0.5"],
    ],
)
def test_cli_rejects_bad_rate_limits_and_outages(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert_cli_rejects(argv, capsys)


def test_cli_help_documents_rate_limit_and_outages(capsys: pytest.CaptureFixture[str]) -> None:
    text = cli_help_text(capsys)
    for flag in ("--rate-limit", "--rate-limit-burst", "--rate-limit-no-retry-after", "--outage"):
        assert flag in text
    for word in ("START:END[:MODE]", "refuse", "Retry-After", "/_emulator/outage"):
        assert word in text
