"""Writes benchmarks/RESULTS.md (and results.json) from the sections the benchmarks return."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.common import Figure, Section, fmt

ORDER = ("worker", "scale", "parse", "polls", "e2e", "streaming", "polite", "views")


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def busy_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def machine() -> dict[str, str]:
    import sys

    return {
        "uname -a": subprocess.run(
            ["uname", "-a"], capture_output=True, text=True, check=False
        ).stdout.strip(),
        "CPUs": f"{os.cpu_count()} ({_cpu_model()})",
        "memory": _mem_total(),
        "Python": sys.version.split()[0],
        "apache-airflow": _version("apache-airflow"),
        "apache-airflow-task-sdk": _version("apache-airflow-task-sdk"),
        "aiohttp": _version("aiohttp"),
        "requests": _version("requests"),
        "tenacity": _version("tenacity"),
        "pendulum": _version("pendulum"),
        "greenback": _version("greenback"),
        "matplotlib": _version("matplotlib"),
        "airflow-provider-klingfx": _version("airflow-provider-klingfx"),
    }


def status(f: Figure) -> str:
    if f.met is None:
        return "-"
    return "**MET**" if f.met else "**NOT MET**"


def ratio_text(f: Figure) -> str:
    r = f.ratio
    if r is None or math.isnan(r):
        return "-"
    return f"{r:.2f}x" if r < 100 else f"{r:,.0f}x"


def figure_row(f: Figure, number: str = "") -> str:
    baseline = "-" if f.baseline is None else f"{fmt(f.baseline)} {f.unit} ({f.baseline_name})"
    note = f" ({f.note})" if f.note else ""
    lead = f"| {number} |" if number else "|"
    return (
        f"{lead} {f.name}{note} | {fmt(f.value)} {f.unit} | {baseline} | {ratio_text(f)} | "
        f"{f.goal or '-'} | "
        f"{status(f)} |"
    )


def write(
    out_dir: Path,
    sections: dict[str, Section],
    *,
    command: str,
    wall_seconds: float,
    context: dict[str, Any],
    notes: Sequence[str],
) -> Path:
    info = machine()
    ordered = [sections[k] for k in ORDER if k in sections]
    lines = [
        "# Benchmark results",
        "",
        f"Written by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"**total wall time {wall_seconds / 60:.1f} min** (budget: 30 min on 2 cores). "
        "Every comparison ran its baseline in the same run; ratios are candidate / baseline. "
        "Regenerate with `make bench`.",
        "",
        "## Machine and versions",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | `{v}` |" for k, v in info.items()),
        f"| load average at start / end | {context.get('load_start', '?')} / "
        f"{context.get('load_end', '?')} |",
        f"| CPU busy before the run (other users of the machine) | {context.get('busy_before', '?')} of "
        f"{context.get('cpus', '?')} cores |",
        "",
        "## Command",
        "",
        "```",
        "make bench        # = .venv/bin/python benchmarks/run.py",
        "```",
        "",
        "`benchmarks/run.py` runs every benchmark (one module each under `benchmarks/`), writes this file, "
        "`results.json` (the raw figures) and the PNG plots beside it.",
        "",
        "## Every goal at a glance",
        "",
        "| # | figure | value | baseline (same run) | ratio | goal | status |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in ordered:
        number = s.title.split(".")[0]
        for f in s.figures:
            lines.append(figure_row(f, number))
        if s.error:
            lines.append(
                f"| {number} | {s.title}: **the benchmark failed**: {s.error.splitlines()[-1]} "
                "| | | | | **NOT MET** |"
            )
    missed = [(s, f) for s in ordered for f in s.figures if f.met is False]
    lines += ["", "## Where a goal is not met yet", ""]
    if missed:
        lines += [
            f"- **{s.title.split('. ', 1)[1]}**: {f.name}: {fmt(f.value)} {f.unit}, goal {f.goal}."
            for s, f in missed
        ]
    else:
        lines.append("Every goal is met.")
    lines += [
        f"- **{s.title}**: the benchmark failed ({s.error.splitlines()[-1]})." for s in ordered if s.error
    ]
    if notes:
        lines += ["", "## Notes", "", *(f"- {n}" for n in notes)]
    for s in ordered:
        load = ""
        if s.machine_load is not None:
            busy, mine = s.machine_load
            load = (
                f" Meanwhile the machine's {os.cpu_count()} cores were busy {busy:.2f} cores on average, "
                f"{mine:.2f} of them with this section's own processes."
            )
        lines += ["", f"## {s.title}", "", f"_{s.wall_seconds:.0f} s of wall time.{load}_", ""]
        if s.error:
            lines += ["**This benchmark failed:**", "", "```", s.error[-3000:], "```", ""]
        if s.figures:
            lines += [
                "| figure | value | baseline (same run) | ratio | goal | status |",
                "|---|---|---|---|---|---|",
                *(figure_row(f) for f in s.figures),
                "",
            ]
        lines += s.body
        for plot in s.plots:
            lines += ["", f"![{s.title}]({plot})"]
    lines.append("")
    path = out_dir / "RESULTS.md"
    path.write_text("\n".join(lines))
    data = {
        "command": command,
        "wall_seconds": wall_seconds,
        "machine": info,
        "context": context,
        "sections": {
            s.key: {
                "title": s.title,
                "wall_seconds": s.wall_seconds,
                "error": s.error,
                "figures": [{**f.__dict__, "ratio": f.ratio} for f in s.figures],
                "raw": s.raw,
            }
            for s in ordered
        },
    }
    (out_dir / "results.json").write_text(json.dumps(data, indent=1, default=str))
    return path
