"""Triggerer scale: N generations polled by N trigger instances in one event loop, per session strategy.

For each N and variant, an emulator in its own process (rendering off, generations lasting an hour so
every trigger keeps polling) accepts N real submissions, then :mod:`benchmarks.trigger_load` runs N
trigger instances in one process at a 10 s poll interval and measures CPU, RSS and event-loop lag
over a fixed window; the emulator's stamps give the polls and the TCP connections opened in that
window. Variants (see :mod:`benchmarks.trigger_variants`): ``package`` (the candidate), ``baseline``
(session per request, like ``HttpAsyncHook``), ``shared`` (one connector per event loop, prototype)
and ``lean`` (shared connector and tenacity only after a failed first attempt, prototype).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.common import (
    API_KEY,
    PYTHON,
    REPO,
    EmulatorProcess,
    Figure,
    Section,
    child_env,
    fmt,
    percentile,
)

VARIANTS = ("package", "baseline", "floor", "per_trigger")
#: Run at the largest N only, against the emulator over HTTPS too (the real API is HTTPS only), in this
#: order, as long as the time budget allows. (0.1.0's session per trigger is left out: it holds one TLS
#: connection per trigger, 1.6 GB at N=5,000 in 0.1.0's results.)
TLS_VARIANTS = ("baseline", "package", "floor")
LABELS = {
    "package": "package (one shared session per event loop)",
    "baseline": "baseline (session per request)",
    "floor": "floor (bare GET + sleep on the shared session)",
    "per_trigger": "0.1.0 (session per trigger)",
    "package+tls": "package, over HTTPS",
    "baseline+tls": "baseline, over HTTPS",
    "floor+tls": "floor, over HTTPS",
}
#: Rough seconds one run takes at the largest N (start-up, ramp, window, cancel), for the deadline.
RUN_OVERHEAD = 22.0
INTERVAL = 10.0
RAMP = 10.0
MB = 1e6


async def _submit(url: str, n: int, ssl_context: ssl.SSLContext | None) -> list[str]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    sem = asyncio.Semaphore(32)
    connector = aiohttp.TCPConnector(ssl=ssl_context if ssl_context is not None else True)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> str:
            body = {
                "model": "klingai/kling-video-v1.6-standard-effects",
                "effect_scene": "squish",
                "image_url": f"{url}/samples/person-{i % 3 + 1}.png?i={i}",
                "duration": 5,
            }
            async with sem, session.post(f"{url}/v2/video/generations", json=body, headers=headers) as resp:
                resp.raise_for_status()
                return str((await resp.json())["id"])

        return await asyncio.gather(*(one(i) for i in range(n)))


def run_one(
    variant: str,
    n: int,
    window: float,
    emu: EmulatorProcess,
    work: Path,
    *,
    tls: bool = False,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One variant at one N: N submissions, the load process, then the emulator's view of the window.

    The load process starts first and imports while the generations are being submitted; it reads
    their ids from stdin. ``env`` adds to its environment (``compare_revisions`` puts another
    revision's package first on its ``PYTHONPATH``).
    """
    t0 = time.monotonic()
    key = f"{variant}+tls" if tls else variant
    out = work / f"report-{key}-{n}.json"
    log = work / f"load-{key}-{n}.log"
    before = emu.stats()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [
                PYTHON, "-m", "benchmarks.trigger_load", "--variant", variant, "--interval", str(INTERVAL),
                "--ramp", str(RAMP), "--window", str(window), "--out", str(out),
            ],
            cwd=REPO, env=child_env(**emu.client_env(tls=tls), **(env or {})),
            stdin=subprocess.PIPE, stdout=fh, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        assert proc.stdin is not None
        ids = asyncio.run(_submit(emu.tls_url if tls else emu.url, n, emu.ssl_context if tls else None))
        t1 = time.monotonic()
        proc.stdin.write(json.dumps(ids) + "\n")
        proc.stdin.close()
        rc = proc.wait(timeout=600)
    t2 = time.monotonic()
    if rc != 0:
        raise RuntimeError(f"trigger load {variant} N={n} failed: {log.read_text()[-3000:]}")
    stats = emu.stats()
    emu.reset()
    report: dict[str, Any] = json.loads(out.read_text())
    w0, w1 = report["window"]
    mine = set(ids)
    fetches = [t for t, gid in stats["fetches"] if gid in mine]
    polls = sum(1 for t in fetches if w0 <= t <= w1)
    lags = report["lags_window"]
    cpu_harness = report["idle_cpu_rate"] * report["window_seconds"]
    report.update(
        variant=key,
        polls=polls,
        polls_total=len(fetches),
        connections_window=sum(1 for t in stats["connections"] if w0 <= t <= w1),
        # Minus the one connection of the benchmark's own submission session.
        connections_total=len(stats["connections"]) - len(before["connections"]) - 1,
        cpu_per_poll=max(0.0, report["cpu_window"] - cpu_harness) / polls if polls else float("nan"),
        cpu_per_poll_raw=report["cpu_window"] / polls if polls else float("nan"),
        core_fraction=report["cpu_window"] / report["window_seconds"],
        rss_extra=report["rss_peak"] - report["rss_base"],
        lag_p50=percentile(lags, 50),
        lag_p99=percentile(lags, 99),
        lag_max=max(lags) if lags else float("nan"),
        emulator_cpu=stats["cpu_seconds"] - before["cpu_seconds"],
        phase_seconds={"submit": t1 - t0, "load_process": t2 - t0},
    )
    report.pop("lags_window")
    return report


def _parallel(jobs: list[tuple[str, int, float, EmulatorProcess]], work: Path) -> list[dict[str, Any]]:
    results: list[dict[str, Any] | BaseException] = [RuntimeError("not run")] * len(jobs)

    def target(i: int, job: tuple[str, int, float, EmulatorProcess]) -> None:
        try:
            results[i] = run_one(*job, work)
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=target, args=(i, job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return [r for r in results if isinstance(r, dict)]


def _start_emulators(names: tuple[str, ...]) -> dict[str, EmulatorProcess]:
    """One emulator per name (serving HTTP and HTTPS), started in parallel."""
    started: dict[str, EmulatorProcess] = {}
    errors: list[BaseException] = []

    def start(name: str) -> None:
        try:
            started[name] = EmulatorProcess(queued_seconds=0, generating_seconds=3600, tls=True)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        for emu in started.values():
            emu.stop()
        raise errors[0]
    return started


def run(
    out_dir: str,
    *,
    sizes: tuple[int, ...] = (100, 1000, 5000),
    window: float = 15.0,
    top_window: float = 15.0,
    concurrent_up_to: int = 1000,
    deadline: float | None = None,
) -> Section:
    section = Section("scale", "2. Triggerer scale: N generations polled in one event loop")
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    results: dict[int, dict[str, dict[str, Any]]] = {}
    schedule_notes = []
    # One emulator per variant (each in its own process), reset between runs.
    tls_keys = tuple(f"{v}+tls" for v in TLS_VARIANTS)
    emulators = _start_emulators(VARIANTS)
    top = max(sizes)
    try:
        for n in sizes:
            started = time.monotonic()
            if n <= concurrent_up_to:
                reports = _parallel([(v, n, window, emulators[v]) for v in VARIANTS], work)
                schedule_notes.append(f"N={n:,}: the {len(VARIANTS)} variants at the same time")
            else:
                reports = [run_one(v, n, top_window, emulators[v], work) for v in VARIANTS]
                schedule_notes.append(f"N={n:,}: one variant at a time")
            schedule_notes[-1] += f" ({time.monotonic() - started:.0f} s)"
            if n == top:
                started = time.monotonic()
                done = []
                for v in TLS_VARIANTS:
                    if (
                        deadline is not None
                        and time.monotonic() + RAMP + top_window + RUN_OVERHEAD > deadline
                    ):
                        break
                    reports.append(run_one(v, n, top_window, emulators[v], work, tls=True))
                    done.append(v)
                skipped = [v for v in TLS_VARIANTS if v not in done]
                schedule_notes.append(
                    f"N={n:,} over HTTPS: {', '.join(done) or 'none'}, one at a time "
                    f"({time.monotonic() - started:.0f} s)"
                    + (f"; skipped for the time budget: {', '.join(skipped)}" if skipped else "")
                )
            results[n] = {r["variant"]: r for r in reports}
    finally:
        for emu in emulators.values():
            emu.stop()

    figures: list[Figure] = []
    for suffix, how in (("", "HTTP, the emulator as it is"), ("+tls", "over HTTPS")):
        by = results[top]
        if f"package{suffix}" not in by or f"baseline{suffix}" not in by:
            continue
        figures += _goal_figures(by, suffix, how, top)
    section.figures = figures
    rows = []
    for n, by_variant in results.items():
        for v in (*VARIANTS, *tls_keys):
            if v not in by_variant:
                continue
            r = by_variant[v]
            rows.append(
                f"| {n:,} | {LABELS[v]} | {r['polls']:,} | {r['cpu_per_poll'] * 1000:.3f} | "
                f"{r['cpu_per_poll_raw'] * 1000:.3f} | {r['core_fraction']:.3f} | "
                f"{r['rss_extra'] / MB:.1f} | "
                f"{r['rss_extra'] / n / 1e3:.1f} | {r['lag_p50'] * 1000:.1f} / {r['lag_p99'] * 1000:.1f} / "
                f"{r['lag_max'] * 1000:.0f} | {r['connections_window']:,} | {r['connections_total']:,} | "
                f"{r['sockets_in_window']:,} | {r['sockets_after_cancel'] - r['sockets_base']} | "
                f"{r['gc_full_count']} / {r['gc_full_max'] * 1000:.0f} | "
                f"{r['emulator_cpu'] / max(1, r['polls_total']) * 1000:.2f} |"
            )
    section.body += [
        *reading(results[top], top),
        f"Poll interval {INTERVAL:.0f} s; triggers started evenly over {RAMP:.0f} s (each polls once at "
        f"start), then a {window:.0f} s measurement window ({top_window:.0f} s at N={top:,}: "
        f"{top * top_window / INTERVAL:,.0f} polls). Real `KlingFxGenerationTrigger.run()` instances "
        "(or the variant subclass), each in its own asyncio task with a greenback portal, like the "
        "triggerer's `run_trigger`, on `asyncio.run`; the connection comes from "
        "`AIRFLOW_CONN_KLINGFX_DEFAULT`; "
        "the emulator runs in another process. Run sizes and windows are scaled to fit the 15-minute "
        "budget: " + "; ".join(schedule_notes) + ".",
        "",
        "CPU per poll = process CPU in the window, less the harness's own idle CPU (the 100 ms lag ticker "
        "and the RSS sampler, measured for 2 s before the triggers start), divided by the polls the "
        "emulator received in the window; *raw* keeps the harness CPU in. *Cores* is the raw process CPU "
        "over the window. *Open after cancel*: sockets still open once every trigger was cancelled (a "
        "stopping triggerer cancels its triggers). *Full GC passes*: the garbage collector's generation-2 "
        "collections in the window; each stops the event loop for its duration, and they are what the "
        "loop-lag maximum shows at large N.",
        "",
        "| N | variant | polls in window | CPU/poll (ms) | raw CPU/poll (ms) | cores | extra RSS (MB) | "
        "kB/trigger | loop lag p50 / p99 / max (ms) | TCP conns opened in window | opened in run | "
        "sockets held | open after cancel | full GC passes in window / longest (ms) | "
        "emulator CPU/request (ms) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    section.plots.append(_plot(results, out_dir))
    section.raw = {
        str(n): {
            v: {k: val for k, val in r.items() if k not in ("rss_series", "lag_series")}
            for v, r in by.items()
        }
        for n, by in results.items()
    }
    return section


def reading(by: dict[str, dict[str, Any]], top: int) -> list[str]:
    """How to read the goals at the largest N: the package against the floor, in this run's numbers."""
    lines = []
    for suffix, how in (("", "plain HTTP"), ("+tls", "HTTPS")):
        pkg, floor, base = (by.get(f"{v}{suffix}") for v in ("package", "floor", "baseline"))
        if pkg is None or floor is None or base is None:
            continue
        lines.append(
            f"- Over {how} at N={top:,}: the package {pkg['core_fraction']:.3f} cores, "
            f"{pkg['cpu_per_poll'] * 1000:.3f} ms per poll, {pkg['rss_extra'] / MB:.0f} MB; the floor (a "
            f"bare GET-and-sleep loop on the same session) {floor['core_fraction']:.3f} cores, "
            f"{floor['cpu_per_poll'] * 1000:.3f} ms, {floor['rss_extra'] / MB:.0f} MB, which is "
            f"{floor['cpu_per_poll'] / base['cpu_per_poll']:.2f}x the baseline's CPU per poll."
        )
    if lines:
        lines = [
            "Reading the goals: no trigger that polls with aiohttp in the triggerer's event loop (with its "
            "greenback portal) can cost less than the floor, so where the floor misses a goal, what "
            "is left is aiohttp, asyncio and greenback on this machine, not the provider's code:",
            "",
            *lines,
            "",
        ]
    return lines


def _goal_figures(by: dict[str, dict[str, Any]], suffix: str, how: str, top: int) -> list[Figure]:
    """The goals at the largest N for one transport, then the floor and 0.1.0 for comparison."""
    pkg, base = by[f"package{suffix}"], by[f"baseline{suffix}"]
    cpu_ratio = pkg["cpu_per_poll"] / base["cpu_per_poll"]
    figures = [
        Figure(
            f"CPU per poll, N={top:,}, {how}",
            pkg["cpu_per_poll"] * 1000,
            "ms",
            base["cpu_per_poll"] * 1000,
            LABELS[f"baseline{suffix}"],
            "<= 1/3 of the baseline",
            cpu_ratio <= 1 / 3,
            note=f"ratio {cpu_ratio:.2f}",
        ),
        Figure(
            f"Triggerer CPU for N={top:,} at a 10 s interval, {how}",
            pkg["core_fraction"],
            "cores",
            base["core_fraction"],
            LABELS[f"baseline{suffix}"],
            "<= 0.25 core",
            pkg["core_fraction"] <= 0.25,
        ),
        Figure(
            f"Extra memory for N={top:,}, {how} (peak RSS - RSS before the triggers)",
            pkg["rss_extra"] / MB,
            "MB",
            base["rss_extra"] / MB,
            LABELS[f"baseline{suffix}"],
            "<= 100 MB",
            pkg["rss_extra"] / MB <= 100,
            note=f"{pkg['rss_extra'] / top / 1e3:.1f} kB per trigger",
        ),
    ]
    if not suffix:
        figures += [
            Figure(
                f"Event-loop lag p99, N={top:,}, {how}",
                pkg["lag_p99"] * 1000,
                "ms",
                base["lag_p99"] * 1000,
                LABELS["baseline"],
                note=f"max {pkg['lag_max'] * 1000:.0f} ms vs {base['lag_max'] * 1000:.0f} ms; longest "
                f"full GC pass {pkg['gc_full_max'] * 1000:.0f} ms",
            ),
            Figure(
                f"TCP connections opened per poll, N={top:,}, {how}",
                pkg["connections_window"] / max(1, pkg["polls"]),
                "conn/poll",
                base["connections_window"] / max(1, base["polls"]),
                LABELS["baseline"],
                note=f"{pkg['connections_total']:,} vs {base['connections_total']:,} in the whole run",
            ),
        ]
    floor = by.get(f"floor{suffix}")
    if floor is not None:
        figures.append(
            Figure(
                f"CPU per poll of the floor, N={top:,}, {how}: a bare GET-and-sleep loop on the same "
                "shared session (no parsing, retry or status logic)",
                floor["cpu_per_poll"] * 1000,
                "ms",
                base["cpu_per_poll"] * 1000,
                LABELS[f"baseline{suffix}"],
                note=f"{floor['core_fraction']:.3f} cores; the package costs "
                f"{pkg['cpu_per_poll'] / floor['cpu_per_poll']:.2f}x the floor",
            )
        )
    old = by.get(f"per_trigger{suffix}")
    if old is not None:
        figures.append(
            Figure(
                f"Extra memory for N={top:,}, {how}, package vs 0.1.0 (session per trigger)",
                pkg["rss_extra"] / MB,
                "MB",
                old["rss_extra"] / MB,
                LABELS["per_trigger"],
                note=f"CPU per poll {pkg['cpu_per_poll'] * 1000:.3f} vs {old['cpu_per_poll'] * 1000:.3f} ms; "
                f"sockets held {pkg['sockets_in_window']:,} vs {old['sockets_in_window']:,}",
            )
        )
    return figures


def _plot(results: dict[int, dict[str, dict[str, Any]]], out_dir: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(results)
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    metrics = (
        ("cpu_per_poll", 1000, "CPU per poll (ms)", axes[0][0]),
        ("rss_extra", 1 / MB, "extra RSS (MB)", axes[0][1]),
        ("lag_p99", 1000, "event-loop lag p99 (ms)", axes[1][0]),
    )
    top = sizes[-1]
    colors = {v: f"C{i}" for i, v in enumerate(VARIANTS)}
    for key, scale, label, ax in metrics:
        for v in VARIANTS:
            ax.plot(
                sizes, [results[n][v][key] * scale for n in sizes], "o-", color=colors[v], label=LABELS[v]
            )
            if f"{v}+tls" in results[top]:
                ax.plot([top], [results[top][f"{v}+tls"][key] * scale], "x", ms=9, mew=2, color=colors[v])
        ax.set_xscale("log")
        ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
        ax.minorticks_off()
        ax.set_xlabel("concurrent generations (N)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    axes[1][0].set_yscale("log")
    axes[0][1].axhline(100, color="grey", ls=":", lw=1)
    axes[0][1].text(sizes[0], 102, "goal at N=5,000: 100 MB", fontsize=7, color="grey")
    axes[0][0].plot([], [], "x", color="grey", label=f"same variant over HTTPS (N={top:,})")
    ax = axes[1][1]
    for key in results[top]:
        series = results[top][key]["rss_series"]
        base = results[top][key]["rss_base"]
        v = key.split("+")[0]
        ax.plot(
            [t for t, _ in series],
            [(b - base) / MB for _, b in series],
            "--" if key.endswith("+tls") else "-",
            color=colors[v],
            label=LABELS[key],
        )
    ax.legend(fontsize=6)
    ax.set_xlabel("seconds since the first trigger")
    ax.set_ylabel("RSS above baseline (MB); dashed: over HTTPS")
    ax.set_title(f"RSS over the run, N={top:,}", fontsize=9)
    ax.grid(alpha=0.3)
    fig.suptitle("Triggerer scale (10 s poll interval)")
    fig.tight_layout()
    path = f"{out_dir}/triggerer_scale.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return "triggerer_scale.png"


if __name__ == "__main__":
    s = run("/tmp", sizes=(100, 1000), window=10)
    print("\n".join(s.body))
    for f in s.figures:
        print(f.name, fmt(f.value), fmt(f.baseline), f.met, f.note)
