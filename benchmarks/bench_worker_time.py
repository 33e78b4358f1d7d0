"""Worker time per generation: worker-slot seconds of one 2-minute generation, three ways.

Measured in a real deployment (:mod:`benchmarks.bench_airflow`) from the supervisor's ``Workload
finished ... duration=`` line, logged once per run of a task instance by the LocalExecutor worker
that ran it: the deferrable task has two runs (submit and defer; resume), the others one. The DAG
runs are started together against an emulator whose generations take exactly 120 s. A no-op task
in the same deployment shows what any task run costs a worker slot there (start a process, parse the
DAG file, talk to the API server), which no operator can avoid.
"""

from __future__ import annotations

from typing import Any

from benchmarks.airflow_deploy import parse_ts
from benchmarks.common import Figure, Section, median

LABELS = {
    "bench_wt_deferrable": "KlingFxEffectOperator (deferrable, the default)",
    "bench_wt_blocking": "KlingFxEffectOperator(deferrable=False)",
    "bench_wt_vendor": "vendor's script in a @task (POST, then sleep 10 s between GETs)",
    "bench_wt_noop": "no-op @task (one task run, nothing in it)",
}

SHORT = {
    "bench_wt_deferrable": "deferrable",
    "bench_wt_blocking": "deferrable=False",
    "bench_wt_vendor": "vendor script",
    "bench_wt_noop": "no-op task",
}


def _run_phases(log: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Per run of the task (each starts with '::group::Pre Execute'): startup, operator code, wrap-up."""
    runs: list[list[tuple[float, str]]] = []
    for line in log:
        ts = parse_ts(str(line.get("timestamp", "")))
        event = str(line.get("event", ""))
        if ts is None:
            continue
        if event.startswith("::group::Pre Execute") or not runs:
            runs.append([])
        runs[-1].append((ts, event))
    phases = []
    for events in runs:
        start = events[0][0]
        end = events[-1][0]
        pre_end = next((t for t, e in events if e == "::endgroup::"), start)
        post_start = next((t for t, e in events if e.startswith("::group::Post Execute")), end)
        phases.append(
            {"startup": pre_end - start, "operator": post_start - pre_end, "wrap_up": end - post_start}
        )
    return phases


def _samples(tis: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One sample per DAG run: slot seconds per task run, and the task-log phases of each run."""
    out = []
    for ti in tis:
        phases = _run_phases(ti["log"])
        out.append(
            {
                "ti": ti,
                "durations": [d for _, d in ti["workloads"]],
                "slot": sum(d for _, d in ti["workloads"]),
                "process": sum(p["startup"] + p["operator"] + p["wrap_up"] for p in phases),
                "operator": sum(p["operator"] for p in phases),
                "phases": phases,
            }
        )
    return out


def _listing(samples: list[dict[str, Any]], key: str = "slot") -> str:
    return ", ".join(f"{s[key]:.2f}" for s in sorted(samples, key=lambda s: s[key]))


def _late_runs(samples: list[dict[str, Any]]) -> tuple[int, int]:
    """Task runs that held their slot more than 1 s beyond their task process (a missed exit)."""
    late = total = 0
    for s in samples:
        for slot, phase in zip(s["durations"], s["phases"], strict=False):
            total += 1
            late += slot - (phase["startup"] + phase["operator"] + phase["wrap_up"]) > 1.0
    return late, total


def analyze(raw: dict[str, Any], out_dir: str) -> Section:
    section = Section("worker", "1. Worker time per generation")
    samples = {dag_id: _samples(tis) for dag_id, tis in raw["wt"].items()}
    slot = {k: median([s["slot"] for s in v]) for k, v in samples.items()}
    process = {k: median([s["process"] for s in v]) for k, v in samples.items()}
    operator = {k: median([s["operator"] for s in v]) for k, v in samples.items()}
    rows = []
    for dag_id, dag_samples in samples.items():
        for smp in dag_samples:
            ti = smp["ti"]
            phase_text = "; ".join(
                f"run {i + 1}: startup {p['startup']:.2f} s, operator {p['operator']:.2f} s, "
                f"wrap-up {p['wrap_up']:.2f} s"
                for i, p in enumerate(smp["phases"])
            )
            db_span = (ti["end"] or 0) - (ti["start"] or 0)
            rows.append(
                f"| {LABELS[dag_id]} | {ti.get('run_id', 'wt')} | {ti['state']} | {len(smp['durations'])} | "
                f"{' + '.join(f'{d:.2f}' for d in smp['durations'])} = **{smp['slot']:.2f}** | "
                f"{db_span:.1f} | {phase_text} |"
            )
    dfr, noop = samples["bench_wt_deferrable"], samples["bench_wt_noop"]
    d, b, v, n = (
        slot[k] for k in ("bench_wt_deferrable", "bench_wt_blocking", "bench_wt_vendor", "bench_wt_noop")
    )
    late, total = _late_runs(dfr)
    section.figures = [
        Figure(
            f"Worker-slot seconds per 120 s generation, deferrable (median of {len(dfr)} generations)",
            d,
            "s",
            b,
            "deferrable=False",
            "< 1 s",
            d < 1.0,
            note=f"each: {_listing(dfr)} s; {late} of their {total} task runs held the slot over 1 s past "
            "the task's exit",
        ),
        Figure(
            "Worker-slot seconds per 120 s generation, deferrable vs the vendor's script",
            d,
            "s",
            v,
            "vendor's POST + sleep(10) loop in a @task",
            "< 1 s",
            d < 1.0,
        ),
        Figure(
            "Task-process seconds per generation, deferrable (both runs, first to last log line; median)",
            process["bench_wt_deferrable"],
            "s",
            process["bench_wt_blocking"],
            "deferrable=False, same span",
            "< 1 s",
            process["bench_wt_deferrable"] < 1.0,
            note=f"each: {_listing(dfr, 'process')} s",
        ),
        Figure(
            "Operator code on the worker per generation (execute + execute_complete), deferrable (median)",
            operator["bench_wt_deferrable"],
            "s",
            operator["bench_wt_blocking"],
            "deferrable=False, same phase",
            "< 1 s (the provider's share of the worker time)",
            operator["bench_wt_deferrable"] < 1.0,
            note="from the task log: end of `Pre Execute` to `Post Execute`, both runs",
        ),
        Figure(
            f"Worker-slot seconds of one no-op task run (median of {len(noop)})",
            n,
            "s",
            note=f"each: {_listing(noop)} s; start a task process, parse the DAG file, report to the API "
            "server, let the supervisor notice the exit: every task run pays it, whatever the operator",
        ),
    ]
    probe = raw.get("heartbeat_probe")
    probe_rows: list[str] = []
    if probe:
        hb = probe["heartbeat"]
        p_samples = {dag_id: _samples(tis) for dag_id, tis in probe["wt"].items()}
        for dag_id, dag_samples in p_samples.items():
            for smp in dag_samples:
                probe_rows.append(
                    f"| {LABELS[dag_id]} | {smp['ti'].get('run_id', 'wt')} | {smp['ti']['state']} | "
                    f"{len(smp['durations'])} | {' + '.join(f'{x:.2f}' for x in smp['durations'])} = "
                    f"**{smp['slot']:.2f}** | {smp['process']:.2f} |"
                )
        p_dfr, p_noop = p_samples["bench_wt_deferrable"], p_samples["bench_wt_noop"]
        pd = median([s["slot"] for s in p_dfr])
        p_late, p_total = _late_runs(p_dfr)
        section.figures.append(
            Figure(
                f"Worker-slot seconds per generation, deferrable, with `[workers] min_heartbeat_interval` "
                f"= {hb} s (a second, small deployment; median of {len(p_dfr)} generations)",
                pd,
                "s",
                d,
                "the same task with Airflow's default of 5 s (above)",
                "< 1 s",
                pd < 1.0,
                note=f"each: {_listing(p_dfr)} s; {p_late} of {p_total} task runs held the slot over 1 s "
                f"past the task's exit; a no-op task run there: {_listing(p_noop)} s",
            )
        )
    section.body += [
        "One 120 s generation each (emulator: `queued_seconds=0, generating_seconds=120`), the four DAG runs "
        f"started together on a deployment with LocalExecutor parallelism {raw['parallelism']}, after four "
        "no-op runs warmed up four workers; once they had started, the deferrable and the no-op DAG ran "
        f"{len(dfr) - 1} more times each (run ids `wt-1`...; one at a time, so that they do not compete for "
        "the 2 cores), because their slot time is partly chance (see below); the figures give the "
        "median. Worker-slot seconds = the sum, over the task "
        "instance's runs, of the supervisor's `Workload finished` duration (the time a LocalExecutor "
        "worker was busy with that run). *DB span* = `end_date - start_date` of the task instance (for a "
        "deferred task it includes the time in the triggerer). The phases come from the task log: "
        "*startup* until the end of the `Pre Execute` group (DAG file parsed, task started), *operator* "
        "until `Post Execute` (the operator's `execute` / `execute_complete`), *wrap-up* to the last "
        "line; what the slot time has beyond them is the supervisor's own start and its noticing the "
        "task process exit. Airflow's supervisor waits on the task's sockets for up to `[workers] "
        "min_heartbeat_interval` (5 s) at a time; when the task closes them a moment before the "
        "process is gone, the supervisor's check finds it still alive and waits out the rest of that "
        "interval, so a task run holds its slot either about its own length or up to 5 s more, by "
        "chance (Airflow's behaviour, the same for a no-op task).",
        "",
        "| task | run | state | runs | worker-slot seconds | DB span (s) | phases (task log) |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]
    if probe and probe_rows:
        section.body += [
            "",
            f"The same deferrable operator (a {probe.get('generation_seconds', 15):.0f} s generation: a "
            "deferred task's worker time does not depend on the generation's length) and the no-op task, "
            f"{len(p_dfr)} runs each, one at a time, in a second deployment with "
            f"`AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL={probe['heartbeat']}`, after two warm-up runs. The "
            "supervisor then looks at its task process every second instead of every five, so a missed "
            "exit costs at most a second; the price is one heartbeat request to the API server per "
            "running task per second instead of per five seconds.",
            "",
            "| task | run | state | runs | worker-slot seconds | task-process seconds (task log) |",
            "|---|---|---|---|---|---|",
            *probe_rows,
        ]
    section.plots.append(_plot(raw, out_dir))
    section.raw = {
        "slot_seconds": slot,
        "process_seconds": process,
        "operator_seconds": operator,
        "slot_samples": {k: [s["slot"] for s in v] for k, v in samples.items()},
    }
    return section


def _plot(raw: dict[str, Any], out_dir: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = min(raw["wt_sent"].values())
    fig, ax = plt.subplots(figsize=(10, 3.2))
    order = ["bench_wt_noop", "bench_wt_deferrable", "bench_wt_blocking", "bench_wt_vendor"]
    for y, dag_id in enumerate(order):
        ti = next(t for t in raw["wt"][dag_id] if t.get("run_id", "wt") == "wt")
        bars = [(end - dur - t0, dur) for end, dur in ti["workloads"]]
        total = sum(d for _, d in bars)
        ax.broken_barh(
            bars, (y - 0.3, 0.6), color="tab:red" if dag_id == "bench_wt_deferrable" else "tab:blue"
        )
        ax.text(max(s + w for s, w in bars) + 1.5, y, f"{total:.1f} s", va="center", fontsize=8)
    ax.set_yticks(range(len(order)), [SHORT[d] for d in order], fontsize=8)
    for gen in raw["worker_emulator"]["generations"].values():
        ax.axvline(gen["ready_at"] - t0, color="grey", ls=":", lw=1)
    ax.set_xlabel(
        "seconds since the DAG runs were triggered "
        "(bars: a worker slot is held; dotted: generations complete)"
    )
    ax.set_title("Worker slots held for one 120 s generation", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(f"{out_dir}/worker_time.png", dpi=110)
    plt.close(fig)
    return "worker_time.png"
