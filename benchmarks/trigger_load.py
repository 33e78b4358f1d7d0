"""N trigger instances in one event loop, run the way Airflow's triggerer runs them; a JSON report.

``python -m benchmarks.trigger_load --variant package --interval 10 --ramp 10 --window 30
--out report.json`` with ``AIRFLOW_CONN_KLINGFX_DEFAULT`` pointing at an emulator in another
process; once its imports are done it reads the generation ids to poll (one JSON list) from
stdin. Like ``TriggerRunner.run_trigger`` it gives each trigger a greenback portal and
iterates ``trigger.run()`` in its own asyncio task, on a plain ``asyncio.run`` loop (what the
triggerer uses). The triggers start spread evenly over ``--ramp`` seconds (generations are not all
submitted in the same millisecond); each trigger makes its first poll (connection lookup, session)
when it starts, so once the last one has, the steady state begins and the measurement window
opens: CPU seconds of this process,
the event loop's lag (a 100 ms ticker, like the triggerer's own watchdog), and the RSS (sampled every
50 ms) against the RSS before the first trigger was created. At the end every trigger is cancelled,
as a triggerer does when it stops or hands triggers to another triggerer, and what is left open is
counted.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import sys
import threading
import time
from typing import Any

import aiohttp  # noqa: F401 - imported before the RSS baseline, as a running triggerer has it
import greenback

from airflow_provider_klingfx.hooks.klingfx import KlingFxHook  # noqa: F401 - idem
from benchmarks.trigger_variants import VARIANTS

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


def socket_fds() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:
            pass
    return count


def cpu_seconds() -> float:
    return time.process_time()  # user + system of the whole process, nanosecond clock


class GcPauses:
    """Durations of the garbage collector's passes (they stop the event loop), by generation."""

    def __init__(self) -> None:
        self.pauses: list[tuple[float, int, float]] = []  # (end monotonic, generation, seconds)
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.pauses.append((time.monotonic(), int(info["generation"]), time.perf_counter() - self._start))


class RssSampler(threading.Thread):
    """Samples the RSS every ``period`` seconds; keeps the series and the peak."""

    def __init__(self, period: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.period = period
        self.samples: list[tuple[float, int]] = []
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            value = rss_bytes()
            self.peak = max(self.peak, value)
            self.samples.append((time.monotonic(), value))
            self.stop.wait(self.period)


async def run_load(args: argparse.Namespace, ids: list[str], report: dict[str, Any]) -> None:
    trigger_cls = VARIANTS[args.variant]
    loop = asyncio.get_running_loop()
    loop_errors: list[str] = []
    loop.set_exception_handler(lambda _loop, ctx: loop_errors.append(str(ctx.get("message"))))
    events: list[Any] = []
    lags: list[tuple[float, float]] = []
    stop_ticker = asyncio.Event()

    async def ticker() -> None:
        while not stop_ticker.is_set():
            before = time.monotonic()
            await asyncio.sleep(0.1)
            after = time.monotonic()
            lags.append((after, after - before - 0.1))

    async def run_trigger(trigger: Any) -> None:
        await greenback.ensure_portal()
        async for event in trigger.run():
            events.append(event.payload)

    n = len(ids)
    gc_pauses = GcPauses()
    gc.callbacks.append(gc_pauses)
    tasks: list[asyncio.Task[None]] = []
    ticker_task = asyncio.create_task(ticker())
    # The harness alone (ticker, RSS sampler, idle loop): subtracted from the CPU per poll.
    idle0, idle_cpu0 = time.monotonic(), cpu_seconds()
    await asyncio.sleep(args.idle)
    report["idle_cpu_rate"] = (cpu_seconds() - idle_cpu0) / (time.monotonic() - idle0)
    start = time.monotonic()
    deadline = time.time() + 7200
    for i, gid in enumerate(ids):
        due = start + args.ramp * i / n
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        trigger = trigger_cls(
            generation_id=gid, deadline=deadline, poll_interval=args.interval, submitted_at=time.time()
        )
        tasks.append(asyncio.create_task(run_trigger(trigger), name=f"trigger-{i}"))
    started_all = time.monotonic()
    # Every trigger has made its first poll (connection lookup, session) when it started; half a
    # second more for the last ones to finish it. From here on every trigger polls every interval.
    await asyncio.sleep(0.5)
    w0_mono, w0_wall, cpu0, times0 = time.monotonic(), time.time(), cpu_seconds(), os.times()
    await asyncio.sleep(args.window)
    w1_mono, w1_wall, cpu1, times1 = time.monotonic(), time.time(), cpu_seconds(), os.times()
    gc.callbacks.remove(gc_pauses)
    full_gc = [d for t, g, d in gc_pauses.pauses if g == 2 and w0_mono <= t <= w1_mono]
    sockets_in_window = socket_fds()
    # Cancel every trigger, as a stopping triggerer does, and see what stays open.
    cancel_start = time.monotonic()
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    cancel_seconds = time.monotonic() - cancel_start
    stop_ticker.set()
    await ticker_task
    await asyncio.sleep(0.2)  # let closed transports finish closing
    gc.collect()
    report.update(
        {
            "ramp_seconds_actual": started_all - start,
            "window": [w0_wall, w1_wall],
            "window_seconds": w1_mono - w0_mono,
            "cpu_window": cpu1 - cpu0,
            # The kernel's share (system time: sockets, epoll, waking the server on loopback).
            "cpu_user_window": times1.user - times0.user,
            "cpu_system_window": times1.system - times0.system,
            "lags_window": [lag for t, lag in lags if w0_mono <= t <= w1_mono],
            "gc_full_count": len(full_gc),
            "gc_full_max": max(full_gc, default=0.0),
            "gc_all_seconds": sum(d for t, _, d in gc_pauses.pauses if w0_mono <= t <= w1_mono),
            "lag_series": [(t - start, lag) for t, lag in lags],
            "events": len(events),
            "event_statuses": sorted({str(e.get("status")) for e in events}),
            "trigger_errors": sorted(
                {type(r).__name__ for r in results if isinstance(r, BaseException)} - {"CancelledError"}
            ),
            "cancel_seconds": cancel_seconds,
            "sockets_in_window": sockets_in_window,
            "sockets_after_cancel": socket_fds(),
            "loop_errors": loop_errors[:20],
            "loop_error_count": len(loop_errors),
            "start_mono": start,
            "window_mono": [w0_mono, w1_mono],
        }
    )


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.trigger_load")
    p.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    p.add_argument("--interval", type=float, default=10.0)
    p.add_argument("--ramp", type=float, default=10.0)
    p.add_argument("--window", type=float, default=30.0)
    p.add_argument("--idle", type=float, default=2.0, help="seconds of harness-only CPU measured first")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    ids = json.loads(sys.stdin.readline())
    gc.collect()
    rss_base = rss_bytes()
    sockets_base = socket_fds()
    sampler = RssSampler()
    sampler.start()
    report: dict[str, Any] = {"variant": args.variant, "n": len(ids), "interval": args.interval}
    asyncio.run(run_load(args, ids, report))
    sampler.stop.set()
    sampler.join()
    w0, w1 = report.pop("window_mono")
    start = report.pop("start_mono")
    report.update(
        {
            "rss_base": rss_base,
            "rss_peak": max(sampler.peak, rss_base),
            "rss_in_window_max": max((v for t, v in sampler.samples if w0 <= t <= w1), default=0),
            "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "rss_series": [(t - start, v) for t, v in sampler.samples[::4]],
            "rss_end": rss_bytes(),
            "sockets_base": sockets_base,
        }
    )
    with open(args.out, "w") as fh:
        json.dump(report, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
