"""N provider triggers in one event loop, as a triggerer runs them, counting what they log; a JSON report.

``python -m benchmarks.polite_load --interval 10 --ramp 10 --timeout 600 --out report.json`` with
``AIRFLOW_CONN_KLINGFX_DEFAULT`` pointing at an emulator in another process (its extra
``poll_coordination`` picks ``shared`` or the per-trigger baseline). Once its imports are done it
reads the generation ids to poll (one JSON list) from stdin, starts one
:class:`~airflow_provider_klingfx.triggers.klingfx.KlingFxGenerationTrigger` per id spread over
``--ramp`` seconds (each in its own task with a greenback portal, like ``TriggerRunner``), and runs
until every trigger has yielded its event or ``--timeout`` passes.

The report has each trigger's event (wall time, status). The log lines go to stdout as Airflow
configures them (INFO and above, structlog's console format): what a triggerer at its default level
writes, the per-trigger task logs and the process log together; the parent counts them there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import greenback

from airflow_provider_klingfx.triggers.klingfx import KlingFxGenerationTrigger


async def run(args: argparse.Namespace, ids: list[str]) -> dict[str, Any]:
    events: dict[str, tuple[float, str]] = {}

    async def one(trigger: KlingFxGenerationTrigger) -> None:
        await greenback.ensure_portal()
        async for event in trigger.run():
            events[trigger.generation_id] = (time.time(), str(event.payload.get("status")))

    deadline = time.time() + args.timeout
    start = time.monotonic()
    tasks = []
    for i, gid in enumerate(ids):
        delay = start + args.ramp * i / len(ids) - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        trigger = KlingFxGenerationTrigger(
            generation_id=gid, deadline=deadline, poll_interval=args.interval, submitted_at=time.time()
        )
        tasks.append(asyncio.create_task(one(trigger)))
    done, pending = await asyncio.wait(tasks, timeout=max(1.0, deadline - time.time() + 5))
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    errors = sorted({repr(t.exception()) for t in done if t.exception() is not None})
    return {"events": events, "unfinished": len(pending), "errors": errors[:10]}


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.polite_load")
    p.add_argument("--interval", type=float, default=10.0)
    p.add_argument("--ramp", type=float, default=10.0)
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    ids = json.loads(sys.stdin.readline())
    report = asyncio.run(run(args, ids))
    with open(args.out, "w") as fh:
        json.dump(report, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
