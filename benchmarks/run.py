"""``make bench``: every benchmark of the provider, then benchmarks/RESULTS.md with the plots.

Order (the first three within 15 minutes on 2 cores; the fourth adds about 13, the fifth about 5):

1. the poll-schedule simulation (a virtual clock, a second);
2. one real Airflow deployment: worker time (three 2-minute generations, started together) and the
   end-to-end latency for 1 and ``--e2e-n`` generations; while the 2-minute generations are pending
   and the deployment idles, the parse-cost and streaming benchmarks run (they need no Airflow);
3. the triggerer scale benchmark (N = 100, 1,000, 5,000), alone on the machine;
4. politeness at scale: 5,000 triggers under an API rate limit and through a 2-minute outage, shared
   and per trigger (``--only polite`` runs it alone);
5. the views on a busy deployment: a real api-server on PostgreSQL with 10,000 generations among
   50,000 other runs, gallery response times and SQL statements per media request
   (``--only views`` runs it alone).

``--quick`` shrinks everything for a smoke test (the figures are then not the reported ones).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable as a package root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import (
    bench_airflow,
    bench_e2e_latency,
    bench_parse_cost,
    bench_polite,
    bench_polls,
    bench_streaming,
    bench_triggerer_scale,
    bench_views,
    bench_worker_time,
    report,
)
from benchmarks.common import BENCH, Section

#: ``make bench`` must finish within 15 minutes; it aims at 13.5 so a busier machine still makes it
#: (the HTTPS extras of the scale benchmark, run last, give way to that).
TARGET = 13.5 * 60

TITLES = {
    "worker": "1. Worker time per generation",
    "scale": "2. Triggerer scale: N generations polled in one event loop",
    "parse": "3. DAG-parse cost of the operator module",
    "polls": "4. Polls per generation and detection latency",
    "e2e": "5. End-to-end latency in a real Airflow (scheduler + triggerer)",
    "streaming": "6. Streaming a 200 MB video to disk",
    "polite": "7. Polite at scale: a rate limit and an outage, shared or per trigger",
    "views": "8. The views on a busy deployment (PostgreSQL)",
}


def log(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)


def own_cpu() -> float:
    """CPU seconds of this process and of every child process it has waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def guarded(key: str, title: str, fn: Callable[[], Section]) -> Section:
    """Run one benchmark; a failure becomes a section that says so instead of stopping the others.

    Also notes how busy the machine was meanwhile, and how much of that was this benchmark's own
    processes (the rest: other users of the machine).
    """
    started = time.monotonic()
    busy0, total0 = report.busy_jiffies()
    cpu0 = own_cpu()
    log(f"{title} ...")
    try:
        section = fn()
    except Exception:
        section = Section(key, title, error=traceback.format_exc())
        log(f"{title} FAILED:\n{section.error}")
    section.wall_seconds = time.monotonic() - started
    busy1, total1 = report.busy_jiffies()
    cores = os.cpu_count() or 1
    busy = (busy1 - busy0) / max(1, total1 - total0) * cores
    mine = (own_cpu() - cpu0) / max(1e-9, section.wall_seconds)
    section.machine_load = (busy, min(busy, mine))
    log(f"{title} done in {section.wall_seconds:.0f} s (machine busy {busy:.2f} cores, this run {mine:.2f})")
    return section


def busy_cores(seconds: float = 2.0) -> float:
    b0, t0 = report.busy_jiffies()
    time.sleep(seconds)
    b1, t1 = report.busy_jiffies()
    return (b1 - b0) / max(1, t1 - t0) * (os.cpu_count() or 1)


def main() -> int:
    p = argparse.ArgumentParser(prog="benchmarks/run.py", description=__doc__.splitlines()[0])
    p.add_argument(
        "--out", default=str(BENCH), help="where RESULTS.md and the plots go (default: benchmarks/)"
    )
    p.add_argument("--e2e-n", type=int, default=200, help="generations of the large end-to-end run")
    p.add_argument("--scale-sizes", default="100,1000,5000", help="N values of the triggerer benchmark")
    p.add_argument("--scale-window", type=float, default=15.0, help="measurement window (s) per scale run")
    p.add_argument("--scale-top-window", type=float, default=15.0, help="the same at the largest N")
    p.add_argument("--parse-budget", type=float, default=45.0, help="seconds of parse-cost sampling")
    p.add_argument(
        "--only",
        default="",
        help="comma-separated subset of polls,airflow,parse,scale,polite,views (default: all)",
    )
    p.add_argument(
        "--views-source",
        default="",
        help="views benchmark: serve the views from the airflow_provider_klingfx package in this directory "
        "(e.g. an older commit's, from git archive) instead of the installed one",
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    args = p.parse_args()
    if args.quick:
        args.e2e_n, args.scale_sizes, args.scale_window, args.parse_budget = 5, "50,200", 5.0, 5.0
        args.scale_top_window = 5.0
    only = set(filter(None, args.only.split(",")))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    context = {
        "load_start": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "busy_before": f"{busy_cores():.2f}",
        "cpus": str(os.cpu_count()),
    }
    sections: dict[str, Section] = {}
    notes: list[str] = []

    if not only or "polls" in only:
        sections["polls"] = guarded("polls", TITLES["polls"], lambda: bench_polls.run(str(out)))

    if not only or "airflow" in only:

        def idle_work(deadline: float, wait_e2e_1: Callable[[], str]) -> None:
            # Streaming (~25 s, mostly I/O) beside the 1-generation end-to-end run; then parse-cost
            # sampling, alone, for what is left of the window.
            sections["streaming"] = guarded(
                "streaming", TITLES["streaming"], lambda: bench_streaming.run(str(out))
            )
            wait_e2e_1()
            budget = min(args.parse_budget, max(5.0, deadline - time.time() - 25))
            sections["parse"] = guarded(
                "parse",
                TITLES["parse"],
                lambda: bench_parse_cost.run(
                    str(out), budget_seconds=budget, min_reps=3 if args.quick else 5
                ),
            )

        holder: dict[str, object] = {}

        def airflow() -> Section:
            raw = bench_airflow.run_deployment(idle_work, n_many=args.e2e_n, log=log)
            holder["raw"] = raw
            try:
                raw["heartbeat_probe"] = bench_airflow.run_heartbeat_probe(log=log)
            except Exception as exc:  # the main figures stand without it
                log(f"airflow: heartbeat probe failed: {exc!r}")
            return Section("airflow", "Airflow deployment")

        dep = guarded("airflow", "Airflow deployment (worker time, end-to-end latency)", airflow)
        raw = holder.get("raw")
        if isinstance(raw, dict):
            sections["worker"] = guarded(
                "worker", TITLES["worker"], lambda: bench_worker_time.analyze(raw, str(out))
            )
            sections["e2e"] = guarded("e2e", TITLES["e2e"], lambda: bench_e2e_latency.analyze(raw, str(out)))
            t = raw["timings"]
            notes.append(
                f"Airflow deployment: ready after {t['deployment_ready']:.0f} s, worker-time runs done after "
                f"{t['worker_time_done']:.0f} s, {args.e2e_n}-generation run done after "
                f"{t['e2e_many_done']:.0f} s; "
                f"the parse-cost and streaming benchmarks ran in the idle window while the three 2-minute "
                f"generations were pending (the deployment idling on the other core)"
                + (" and overran it" if raw.get("idle_work_overran") else "")
                + "."
            )
            for key in ("worker", "e2e"):
                sections[key].wall_seconds = dep.wall_seconds
                sections[key].machine_load = dep.machine_load
        else:
            for key in ("worker", "e2e"):
                sections[key] = Section(key, TITLES[key], error=dep.error or "the deployment did not run")
            if "streaming" not in sections:
                sections["streaming"] = guarded(
                    "streaming", TITLES["streaming"], lambda: bench_streaming.run(str(out))
                )
            if "parse" not in sections:
                sections["parse"] = guarded("parse", TITLES["parse"], lambda: bench_parse_cost.run(str(out)))

    if only and "parse" in only and "airflow" not in only:
        # The import cost of the operator module alone (without it, it runs in the deployment's idle window).
        sections["parse"] = guarded("parse", TITLES["parse"], lambda: bench_parse_cost.run(str(out)))

    if not only or "scale" in only:
        sizes = tuple(int(x) for x in args.scale_sizes.split(","))
        sections["scale"] = guarded(
            "scale",
            TITLES["scale"],
            lambda: bench_triggerer_scale.run(
                str(out),
                sizes=sizes,
                window=args.scale_window,
                top_window=args.scale_top_window,
                deadline=started + TARGET,
            ),
        )

    if not only or "polite" in only:
        sections["polite"] = guarded(
            "polite", TITLES["polite"], lambda: bench_polite.run(str(out), quick=args.quick, log=log)
        )

    if not only or "views" in only:
        sections["views"] = guarded(
            "views",
            TITLES["views"],
            lambda: bench_views.run(str(out), quick=args.quick, source=args.views_source or None, log=log),
        )

    wall = time.monotonic() - started
    context["load_end"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    if args.quick:
        notes.insert(0, "**--quick smoke run: tiny sizes; these are not the reported figures.**")
    command = "make bench" if not sys.argv[1:] else "benchmarks/run.py " + " ".join(sys.argv[1:])
    path = report.write(out, sections, command=command, wall_seconds=wall, context=context, notes=notes)
    log(f"wrote {path} after {wall / 60:.1f} min")
    return 1 if any(s.error for s in sections.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
