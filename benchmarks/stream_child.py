"""One download of the streaming benchmark, in a fresh process: prints its peak RSS growth as JSON.

``python -m benchmarks.stream_child --variant save_video|requests_content --url URL --size BYTES
--out PATH --warmup-url URL``. Everything either variant needs is imported, and a tiny file is
downloaded the same way first, before the RSS baseline is taken; the growth is then the peak RSS
(sampled every 5 ms, and the kernel's ``ru_maxrss``) minus that baseline.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import threading
import time

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


def maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--variant", choices=("save_video", "requests_content"), required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--warmup-url", required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    import requests

    from airflow_provider_klingfx.domain import Video
    from airflow_provider_klingfx.hooks.klingfx import KlingFxHook
    from airflow_provider_klingfx.media import save_video

    hook = KlingFxHook("klingfx_default")

    def download(url: str, size: int | None, out: str) -> None:
        if args.variant == "save_video":
            save_video(hook, "bench-generation", Video(url=url, file_size=size), out)
        else:
            data = requests.get(url, timeout=60).content
            with open(out, "wb") as fh:
                fh.write(data)
            del data

    download(args.warmup_url, None, args.out + ".warmup")
    os.unlink(args.out + ".warmup")
    gc.collect()
    base = rss()
    base_max = maxrss()
    peak = base
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, rss())
            stop.wait(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    download(args.url, args.size, args.out)
    seconds = time.perf_counter() - start
    stop.set()
    sampler.join()
    written = os.path.getsize(args.out)
    os.unlink(args.out)
    print(
        json.dumps(
            {
                "variant": args.variant,
                "rss_base": base,
                "peak_sampled": max(peak, rss()),
                "ru_maxrss_before": base_max,
                "ru_maxrss_after": maxrss(),
                "seconds": seconds,
                "written": written,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
