"""Streaming a 200 MB video to disk: ``save_video`` (``KlingFxHook.iter_video``) vs reading it whole.

A tiny aiohttp server on 127.0.0.1 (in a thread of this process) serves a 200 MB file from disk with
``web.FileResponse``. Each variant runs in its own fresh process (:mod:`benchmarks.stream_child`):
the package's ``save_video(hook, generation_id, Video(url, file_size), path)``, and the baseline
``requests.get(url).content`` written at once. Each variant runs twice, alternating.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

from aiohttp import web

from benchmarks.common import PYTHON, REPO, Figure, Section, child_env, connection_json, fmt, median

SIZE = 200 * 1024 * 1024
MB = 1024 * 1024


class FileServer:
    """``web.FileResponse`` for every file of ``root``, on an ephemeral port of 127.0.0.1."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.url = ""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        self.ready.wait(30)

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def handler(request: web.Request) -> web.StreamResponse:
            return web.FileResponse(self.root / request.match_info["name"])

        app = web.Application()
        app.router.add_get("/{name}", handler)
        self.runner = web.AppRunner(app, access_log=None)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        self.ready.set()
        self.loop.run_forever()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


def run(out_dir: str, *, repeats: int = 2) -> Section:
    section = Section("streaming", "6. Streaming a 200 MB video to disk")
    work = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    block = os.urandom(MB)
    with open(work / "video.mp4", "wb") as fh:
        for _ in range(SIZE // MB):
            fh.write(block)
    (work / "tiny.mp4").write_bytes(os.urandom(4096))
    server = FileServer(work)
    results: dict[str, list[dict[str, Any]]] = {"save_video": [], "requests_content": []}
    try:
        env = child_env(
            AIRFLOW_HOME=str(work / "airflow"),
            AIRFLOW_CONN_KLINGFX_DEFAULT=connection_json(server.url),
        )
        for _ in range(repeats):
            for variant in results:
                proc = subprocess.run(
                    [
                        PYTHON, "-m", "benchmarks.stream_child", "--variant", variant,
                        "--url", f"{server.url}/video.mp4", "--warmup-url", f"{server.url}/tiny.mp4",
                        "--size", str(SIZE), "--out", str(work / f"out-{variant}.mp4"),
                    ],
                    cwd=REPO, env=env, capture_output=True, text=True, check=False, timeout=300,
                )  # fmt: skip
                if proc.returncode != 0:
                    raise RuntimeError(f"{variant} failed: {proc.stderr[-3000:]}")
                results[variant].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    finally:
        server.stop()
        for f in work.glob("*.mp4"):
            f.unlink()

    def growth(r: dict[str, Any]) -> float:
        # The kernel's maximum counts only if the download raised it: a child started by a large
        # parent (as under benchmarks/run.py) inherits the parent's high-water mark through exec.
        kernel_peak = r["ru_maxrss_after"] if r["ru_maxrss_after"] > r["ru_maxrss_before"] else 0
        return (max(r["peak_sampled"], kernel_peak) - r["rss_base"]) / MB

    g_cand = median([growth(r) for r in results["save_video"]])
    g_base = median([growth(r) for r in results["requests_content"]])
    ok = all(r["written"] == SIZE for rs in results.values() for r in rs)
    section.figures = [
        Figure(
            "Peak RSS growth saving a 200 MB video with save_video",
            g_cand,
            "MB",
            g_base,
            "requests.get(url).content written at once",
            "far less than the video's size: < 10 % of 200 MB (20 MB)",
            g_cand < 0.1 * SIZE / MB and ok,
            note=f"{g_cand / (SIZE / MB):.1%} of the video's size; every file written whole: {ok}",
        ),
        Figure(
            "Time to save the 200 MB video",
            median([r["seconds"] for r in results["save_video"]]),
            "s",
            median([r["seconds"] for r in results["requests_content"]]),
            "requests.get(url).content written at once",
        ),
    ]
    section.body += [
        f"Fresh process per variant and run ({repeats} runs each, alternating), median shown. Growth = peak "
        "RSS during the download (max of a 5 ms sampler and `ru_maxrss` when the download raised it) "
        "minus the RSS after imports and a warm-up download of a 4 KB file the same way.",
        "",
        "| variant | run | peak RSS growth (MB) | seconds | bytes written |",
        "|---|---|---|---|---|",
        *(
            f"| {v} | {i + 1} | {growth(r):.1f} | {r['seconds']:.2f} | {r['written']:,} |"
            for v, rs in results.items()
            for i, r in enumerate(rs)
        ),
    ]
    section.raw = results
    return section


if __name__ == "__main__":
    s = run("/tmp")
    print("\n".join(s.body))
    for f in s.figures:
        print(f.name, fmt(f.value), fmt(f.baseline), f.met, f.note)
