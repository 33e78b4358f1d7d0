"""The event loop's shared aiohttp session: shared by hooks, counted, closed by the last, safe to cancel."""

from __future__ import annotations

import asyncio
import time

import psutil

from airflow_provider_klingfx import _session_pool
from airflow_provider_klingfx.triggers.klingfx import KlingFxGenerationTrigger
from tests.conftest import configured
from tests.support import FakeTime
from tests.test_hook import make_hook, squish


def sockets_to(port: int) -> int:
    """This process's open TCP connections to ``port``."""
    return sum(
        1
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


def emulator_port(emulator) -> int:
    return int(emulator.url.rsplit(":", 1)[1].split("/")[0])


async def test_hooks_of_one_loop_share_one_session_and_the_last_closes_it(emulator, connection, sleeps):
    hooks = [make_hook(sleeps) for _ in range(3)]
    sessions = {id(await h.aget_conn()) for h in hooks}
    assert len(sessions) == 1
    assert _session_pool.users() == 3
    session = await hooks[0].aget_conn()
    gen_id = (await hooks[0].asubmit(squish(emulator))).id
    await asyncio.gather(*(h.aget_generation(gen_id) for h in hooks))
    await hooks[0].aclose()
    await hooks[1].aclose()
    assert not session.closed
    assert (await hooks[2].aget_generation(gen_id)).id == gen_id
    await hooks[2].aclose()
    assert session.closed
    assert _session_pool.users() == 0


async def test_a_session_closed_by_someone_else_is_replaced(emulator, connection, sleeps):
    first, second = make_hook(sleeps), make_hook(sleeps)
    try:
        gen_id = (await first.asubmit(squish(emulator))).id
        await (await first.aget_conn()).close()  # what user code must not do, but might
        assert (await second.aget_generation(gen_id)).id == gen_id
        assert (await first.aget_generation(gen_id)).id == gen_id
        assert await first.aget_conn() is await second.aget_conn()
    finally:
        await first.aclose()
        await second.aclose()
    assert _session_pool.users() == 0


def test_each_event_loop_has_its_own_session(emulator, connection):
    async def used_session():
        hook = make_hook(FakeTime())
        session = await hook.aget_conn()
        await hook.aclose()
        return session

    loop_a, loop_b = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        a = loop_a.run_until_complete(used_session())
        b = loop_b.run_until_complete(used_session())
    finally:
        loop_a.close()
        loop_b.close()
    assert a is not b
    assert a.closed and b.closed


async def test_many_triggers_reuse_few_connections_and_cancelling_them_leaves_none(emulator, connection):
    """40 triggers polling every 20 ms share the pool; cancelling them all (a triggerer stopping,
    or tasks cleared) mid-request closes every connection instead of leaking it."""
    port = emulator_port(emulator)
    submitter = make_hook(FakeTime())
    # Generations pending for the whole test (a generation takes its duration when it is created).
    with configured(emulator, generating_seconds=600.0):
        try:
            ids = [submitter.submit(squish(emulator, f"person-{i % 3 + 1}.png")).id for i in range(40)]
        finally:
            submitter.close()
    # Idle keep-alive connections of sync hooks that earlier tests in this process left open.
    others = sockets_to(port)

    # Forty pollers of the real clock: each wait is really slept, 20 ms at most.
    short_sleep = FakeTime(real=0.02).asleep
    triggers = [
        KlingFxGenerationTrigger(gid, deadline=time.time() + 600, poll_interval=0.02, sleep=short_sleep)
        for gid in ids
    ]
    tasks = [asyncio.create_task(_drain(t)) for t in triggers]
    try:
        deadline = time.monotonic() + 20
        # Waits on the emulator's request count (another thread's state), not on this loop.
        while _polls(emulator, ids) < 400 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        assert _polls(emulator, ids) >= 400
        assert _session_pool.users() == 40
        assert 0 < sockets_to(port) - others <= 40
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    # Closed transports finish closing in the next loop iterations: waited for, not timed.
    deadline = time.monotonic() + 10
    while sockets_to(port) > others and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    assert _session_pool.users() == 0
    assert sockets_to(port) <= others


async def _drain(trigger: KlingFxGenerationTrigger) -> None:
    async for _ in trigger.run():
        pass


def _polls(emulator, ids: list[str]) -> int:
    mine = set(ids)
    return sum(1 for r in emulator.stats()["requests"] if r.get("query_generation_id") in mine)
