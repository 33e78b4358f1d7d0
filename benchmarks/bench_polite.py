"""Polite at scale: 5,000 deferred generations in one triggerer, an API rate limit, an outage.

Two scenarios, each run with the connection's ``poll_coordination`` set to ``per_trigger`` (the
baseline: every trigger backs off alone, as version 0.2 did) and to ``shared`` (the default: one
view of the API per event loop, :mod:`airflow_provider_klingfx._health`), each against a fresh
emulator in its own process:

* **rate limit**: the emulator allows 100 requests/s for the key (``Retry-After`` on its 429s);
  5,000 triggers polling every 10 s ask for 500. Counted: 429s received, polls sent, and the time from
  each generation's completion (the emulator's ``ready_at``) to its trigger's event, median and p90.
* **outage**: the API answers 503 to everything for 2 minutes while the generations are pending.
  Counted: requests sent and log lines written (INFO and above, every logger: what a triggerer at its
  default level writes) during the outage, the time until every generation still waited for is
  polled again once the API is back, and detection latency as above.

The generations are submitted before the load starts (the rate limit is switched on after), so only
polls are measured. ``benchmarks/polite_load.py`` runs the triggers.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.bench_triggerer_scale import _submit
from benchmarks.common import (
    PYTHON,
    REPO,
    EmulatorProcess,
    Figure,
    Section,
    child_env,
    connection_json,
    fmt,
    median,
    percentile,
)

VARIANTS = ("per_trigger", "shared")
#: A log line as Airflow's console logging writes it: ``2026-12-05T05:45:47.524723Z [warning  ] ...``.
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z \[(\w+)\s*\]")
LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


def log_lines(path: Path) -> list[tuple[float, int]]:
    """(epoch seconds, level) of every log line the load process wrote."""
    from datetime import datetime, timezone

    found = []
    with open(path, errors="replace") as fh:
        for line in fh:
            m = LOG_LINE.match(line)
            if m:
                when = datetime.fromisoformat(m.group(1)).replace(tzinfo=timezone.utc).timestamp()
                found.append((when, LEVELS.get(m.group(2), 20)))
    return found


LABELS = {"per_trigger": "per trigger (0.2 baseline)", "shared": "shared (this version)"}
INTERVAL = 10.0
RAMP = 10.0


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read() or b"{}")  # type: ignore[no-any-return]


def _get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=60) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def run_one(
    scenario: str,
    variant: str,
    *,
    n: int,
    work: Path,
    rate_limit: float,
    outage_at: float,
    outage_seconds: float,
    generating: tuple[float, float],
    log: Any = print,
) -> dict[str, Any]:
    """One scenario with one variant; returns the raw figures."""
    emu = EmulatorProcess(generating_seconds=generating[0], generating_seconds_max=generating[1], seed=7)
    try:
        ids = asyncio.run(_submit(emu.url, n, None))
        if scenario == "rate":
            _post(f"{emu.url}/_bench/rate_limit", {"rate_limit": rate_limit})
        out = work / f"polite-{scenario}-{variant}.json"
        env = child_env(
            AIRFLOW_CONN_KLINGFX_DEFAULT=connection_json(emu.url, poll_coordination=variant),
        )
        with open(work / f"polite-{scenario}-{variant}.log", "wb") as fh:
            proc = subprocess.Popen(
                [
                    PYTHON,
                    "-m",
                    "benchmarks.polite_load",
                    "--interval",
                    str(INTERVAL),
                    "--ramp",
                    str(RAMP),
                    "--timeout",
                    "900",
                    "--out",
                    str(out),
                ],
                cwd=REPO,
                env=env,
                stdin=subprocess.PIPE,
                stdout=fh,
                stderr=subprocess.STDOUT,
                text=True,
            )
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(ids) + "\n")
            proc.stdin.close()
            load_start = time.time()
            window: tuple[float, float] | None = None
            if scenario == "outage":
                time.sleep(max(0.0, load_start + outage_at - time.time()))
                answer = _post(
                    f"{emu.url}/_emulator/outage",
                    {"start_in": 0, "duration": outage_seconds, "mode": "503"},
                )
                log(f"polite: outage scheduled: {answer}")
                t1 = time.time()
                window = (t1, t1 + outage_seconds)
            rc = proc.wait(timeout=1200)
        if rc != 0:
            raise RuntimeError(
                f"polite load failed: {(work / f'polite-{scenario}-{variant}.log').read_text()[-3000:]}"
            )
        report = json.loads(out.read_text())
        report["logs"] = log_lines(work / f"polite-{scenario}-{variant}.log")
        bench = emu.stats()
        emulator = _get(f"{emu.url}/_emulator/stats")
    finally:
        emu.stop()
    return analyse(scenario, variant, ids, report, bench, emulator, window)


def analyse(
    scenario: str,
    variant: str,
    ids: list[str],
    report: dict[str, Any],
    bench: dict[str, Any],
    emulator: dict[str, Any],
    window: tuple[float, float] | None,
) -> dict[str, Any]:
    events: dict[str, list[Any]] = report["events"]
    gens = bench["generations"]
    latencies = [events[g][0] - gens[g]["ready_at"] for g in ids if g in events and events[g][1] == "success"]
    fetch_times = [t for t, gid in bench["fetches"]]  # requests that reached the handlers
    logs = report["logs"]
    result: dict[str, Any] = {
        "scenario": scenario,
        "variant": variant,
        "n": len(ids),
        "succeeded": sum(1 for e in events.values() if e[1] == "success"),
        "unfinished": report["unfinished"],
        "errors": report["errors"],
        "rate_limited": emulator.get("rate_limited", 0),
        "outage_rejected": emulator.get("outage_rejected", 0),
        "polls_answered": len(fetch_times),
        "requests": len(fetch_times) + emulator.get("rate_limited", 0) + emulator.get("outage_rejected", 0),
        "latency_median": median(latencies),
        "latency_p90": percentile(latencies, 90),
        "log_lines": len(logs),
        "log_warnings": sum(1 for _, level in logs if level >= 30),
        "duration": max((e[0] for e in events.values()), default=math.nan)
        - min((gens[g]["submitted_at"] for g in ids), default=math.nan),
    }
    if window is not None:
        t1, t2 = window
        result["outage_requests"] = emulator.get("outage_rejected", 0) + sum(
            1 for t in fetch_times if t1 <= t < t2
        )
        result["outage_log_lines"] = sum(1 for t, _ in logs if t1 <= t < t2 + 1.0)
        # Every generation still waited for when the API came back: when was it polled again?
        waiting = [g for g in ids if g not in events or events[g][0] >= t2]
        first_after: dict[str, float] = {}
        for t, gid in bench["fetches"]:
            if t >= t2 and gid not in first_after:
                first_after[gid] = t
        gaps = [first_after.get(g, math.inf) - t2 for g in waiting]
        result["waiting_at_return"] = len(waiting)
        result["all_polled_again"] = max(gaps, default=0.0)
        result["median_polled_again"] = median(gaps) if gaps else 0.0
        result["outage_window"] = [t1, t2]
        after = [
            events[g][0] - gens[g]["ready_at"]
            for g in ids
            if g in events and events[g][1] == "success" and gens[g]["ready_at"] >= t2 + INTERVAL
        ]
        result["latency_after_median"] = median(after)
        result["latency_after_p90"] = percentile(after, 90)
        result["latency_after_count"] = len(after)
    return result


def run(
    out_dir: str,
    *,
    n: int = 5000,
    rate_limit: float = 100.0,
    outage_seconds: float = 120.0,
    quick: bool = False,
    log: Any = print,
) -> Section:
    """Both scenarios, both variants (baseline first); the section for RESULTS.md."""
    # The load processes' reports and output (tens of MB): scratch, not results.
    work = Path(tempfile.mkdtemp(prefix="bench-polite-"))
    if quick:
        n, rate_limit, outage_seconds = 300, 10.0, 20.0
    raw: dict[str, dict[str, Any]] = {}
    for variant in VARIANTS:
        raw[f"rate/{variant}"] = run_one(
            "rate",
            variant,
            n=n,
            work=work,
            rate_limit=rate_limit,
            outage_at=0,
            outage_seconds=0,
            generating=(30.0, 90.0) if not quick else (10.0, 20.0),
            log=log,
        )
        log(f"polite: rate/{variant}: {summary(raw[f'rate/{variant}'])}")
    for variant in VARIANTS:
        raw[f"outage/{variant}"] = run_one(
            "outage",
            variant,
            n=n,
            work=work,
            rate_limit=0,
            outage_at=RAMP + 10,
            outage_seconds=outage_seconds,
            generating=(40.0, 200.0) if not quick else (10.0, 30.0),
            log=log,
        )
        log(f"polite: outage/{variant}: {summary(raw[f'outage/{variant}'])}")
    return section(raw, n=n, rate_limit=rate_limit, outage_seconds=outage_seconds, out_dir=out_dir)


def summary(r: dict[str, Any]) -> str:
    keys = ("succeeded", "requests", "rate_limited", "latency_median", "latency_p90", "log_lines")
    extra = ("outage_requests", "outage_log_lines", "all_polled_again", "latency_after_median")
    return ", ".join(
        f"{k}={fmt(r[k]) if isinstance(r[k], float) else r[k]}" for k in (*keys, *extra) if k in r
    )


def section(
    raw: dict[str, dict[str, Any]], *, n: int, rate_limit: float, outage_seconds: float, out_dir: str
) -> Section:
    s = Section("polite", "7. Polite at scale: a rate limit and an outage, shared or per trigger", raw=raw)
    rb, rs = raw["rate/per_trigger"], raw["rate/shared"]
    ob, os_ = raw["outage/per_trigger"], raw["outage/shared"]

    def fewer(name: str, b: float, v: float, unit: str, note: str = "") -> Figure:
        return Figure(
            name,
            v,
            unit,
            baseline=b,
            baseline_name="per trigger",
            goal="<= 1/10 of the baseline",
            met=v * 10 <= b,
            note=note,
        )

    s.figures += [
        fewer(
            f"429s received (N={n:,}, limit {rate_limit:g} req/s)",
            rb["rate_limited"],
            rs["rate_limited"],
            "429s",
        ),
        Figure(
            "polls sent under the rate limit",
            rs["requests"],
            "requests",
            baseline=rb["requests"],
            baseline_name="per trigger",
        ),
        Figure(
            "median completion-to-detection latency under the rate limit",
            rs["latency_median"],
            "s",
            baseline=rb["latency_median"],
            baseline_name="per trigger",
            goal="<= 1.5x the baseline",
            met=rs["latency_median"] <= 1.5 * rb["latency_median"],
        ),
        Figure(
            "p90 completion-to-detection latency under the rate limit",
            rs["latency_p90"],
            "s",
            baseline=rb["latency_p90"],
            baseline_name="per trigger",
        ),
        fewer(
            f"requests sent during a {outage_seconds:g} s outage",
            ob["outage_requests"],
            os_["outage_requests"],
            "requests",
        ),
        fewer(
            "log lines written during the outage and the second after it",
            ob["outage_log_lines"],
            os_["outage_log_lines"],
            "lines",
        ),
        Figure(
            "time until every waiting generation is polled again after the outage",
            os_["all_polled_again"],
            "s",
            baseline=ob["all_polled_again"],
            baseline_name="per trigger",
        ),
        Figure(
            "median completion-to-detection latency once the API is back",
            os_["latency_after_median"],
            "s",
            baseline=ob["latency_after_median"],
            baseline_name="per trigger",
            goal="<= 1.5x the baseline",
            met=os_["latency_after_median"] <= 1.5 * ob["latency_after_median"],
            note="generations completing at least one poll interval after the outage",
        ),
    ]
    rows = [
        "| run | succeeded | requests | 429s | 503s | log lines (warnings) | detection median / p90 (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, r in raw.items():
        rows.append(
            f"| {key.split('/')[0]}, {LABELS[r['variant']]} | {r['succeeded']:,} of {r['n']:,} "
            f"| {r['requests']:,} | {r['rate_limited']:,} | {r['outage_rejected']:,} "
            f"| {r['log_lines']:,} ({r['log_warnings']:,}) "
            f"| {fmt(r['latency_median'])} / {fmt(r['latency_p90'])} |"
        )
    s.body += [
        f"N = {n:,} generations in one event loop (the triggerer's way: a task and a greenback portal per "
        f"trigger), polling every {INTERVAL:g} s, started over {RAMP:g} s; each scenario against a fresh "
        "emulator process. Rate limit: a token bucket of "
        f"{rate_limit:g} requests/s for the key, a `Retry-After` on each 429. Outage: every request "
        f"answered 503 for {outage_seconds:g} s, from {RAMP + 10:g} s after the load started.",
        "",
        *rows,
        "",
    ]
    s.plots.append(_plot(raw, out_dir))
    return s


def _plot(raw: dict[str, dict[str, Any]], out_dir: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    names = [LABELS[v] for v in VARIANTS]
    colours = ["#b0b0b0", "#2a7ab0"]
    panels = [
        ("429s under a 100 req/s limit", [raw[f"rate/{v}"]["rate_limited"] for v in VARIANTS]),
        ("requests during the outage", [raw[f"outage/{v}"]["outage_requests"] for v in VARIANTS]),
        ("log lines during the outage", [raw[f"outage/{v}"]["outage_log_lines"] for v in VARIANTS]),
    ]
    for ax, (title, values) in zip(axes, panels, strict=True):
        ax.bar(names, [max(v, 0.5) for v in values], color=colours)
        ax.set_yscale("log")
        ax.set_title(title)
        for i, v in enumerate(values):
            ax.text(i, max(v, 0.5), f"{v:,}", ha="center", va="bottom")
    fig.suptitle("5,000 deferred generations in one triggerer (log scale)")
    fig.tight_layout()
    path = Path(out_dir) / "polite.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name
