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
from benchmarks.common import Figure, Section

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


def analyze(raw: dict[str, Any], out_dir: str) -> Section:
    section = Section("worker", "1. Worker time per generation")
    rows = []
    slot: dict[str, float] = {}
    runs: dict[str, int] = {}
    operator: dict[str, float] = {}
    process: dict[str, float] = {}
    for dag_id, tis in raw["wt"].items():
        ti = tis[0]
        durations = [d for _, d in ti["workloads"]]
        slot[dag_id] = sum(durations)
        runs[dag_id] = len(durations)
        phases = _run_phases(ti["log"])
        operator[dag_id] = sum(p["operator"] for p in phases)
        process[dag_id] = sum(p["startup"] + p["operator"] + p["wrap_up"] for p in phases)
        phase_text = "; ".join(
            f"run {i + 1}: startup {p['startup']:.2f} s, operator {p['operator']:.2f} s, "
            f"wrap-up {p['wrap_up']:.2f} s"
            for i, p in enumerate(phases)
        )
        db_span = (ti["end"] or 0) - (ti["start"] or 0)
        rows.append(
            f"| {LABELS[dag_id]} | {ti['state']} | {len(durations)} | "
            f"{' + '.join(f'{d:.2f}' for d in durations)} = **{slot[dag_id]:.2f}** | {db_span:.1f} | "
            f"{phase_text} |"
        )
    d, b, v, n = (
        slot[k] for k in ("bench_wt_deferrable", "bench_wt_blocking", "bench_wt_vendor", "bench_wt_noop")
    )
    section.figures = [
        Figure(
            "Worker-slot seconds per 120 s generation, deferrable",
            d,
            "s",
            b,
            "deferrable=False",
            "< 1 s",
            d < 1.0,
            note=f"{runs['bench_wt_deferrable']} task runs; one no-op task run costs {n:.2f} s here",
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
            "Task-process seconds per generation, deferrable (both runs, first to last task-log line)",
            process["bench_wt_deferrable"],
            "s",
            process["bench_wt_blocking"],
            "deferrable=False, same span",
            "< 1 s",
            process["bench_wt_deferrable"] < 1.0,
            note=f"the worker-slot time above has {d - process['bench_wt_deferrable']:.2f} s more: the "
            "supervisor noticing each run's exit, up to its 5 s heartbeat wait per run",
        ),
        Figure(
            "Operator code on the worker per generation (execute + execute_complete), deferrable",
            operator["bench_wt_deferrable"],
            "s",
            operator["bench_wt_blocking"],
            "deferrable=False, same phase",
            "< 1 s (the provider's share of the worker time)",
            operator["bench_wt_deferrable"] < 1.0,
            note="from the task log: end of `Pre Execute` to `Post Execute`, both runs",
        ),
        Figure(
            "Worker-slot seconds of one no-op task run (Airflow's floor per task run here)",
            n,
            "s",
            note="start a task process, parse the DAG file, report to the API server, let the supervisor "
            "notice the exit; every task run pays it, whatever the operator",
        ),
    ]
    probe = raw.get("heartbeat_probe")
    probe_rows: list[str] = []
    if probe:
        hb = probe["heartbeat"]
        p_slot, p_process = {}, {}
        for dag_id, tis in probe["wt"].items():
            durations = [dur for _, dur in tis[0]["workloads"]]
            p_slot[dag_id] = sum(durations)
            p_process[dag_id] = sum(
                ph["startup"] + ph["operator"] + ph["wrap_up"] for ph in _run_phases(tis[0]["log"])
            )
            probe_rows.append(
                f"| {LABELS[dag_id]} | {tis[0]['state']} | {len(durations)} | "
                f"{' + '.join(f'{x:.2f}' for x in durations)} = **{p_slot[dag_id]:.2f}** | "
                f"{p_process[dag_id]:.2f} |"
            )
        pd = p_slot["bench_wt_deferrable"]
        section.figures.append(
            Figure(
                f"Worker-slot seconds per generation, deferrable, with `[workers] min_heartbeat_interval` "
                f"= {hb} s (a second, small deployment)",
                pd,
                "s",
                d,
                "the same task with Airflow's default of 5 s (above)",
                "< 1 s",
                pd < 1.0,
                note=f"task processes {p_process['bench_wt_deferrable']:.2f} s of it; a no-op task run "
                f"costs {p_slot['bench_wt_noop']:.2f} s there",
            )
        )
    section.body += [
        "One 120 s generation each (emulator: `queued_seconds=0, generating_seconds=120`), the four DAG runs "
        f"started together on a deployment with LocalExecutor parallelism {raw['parallelism']}, after four "
        "no-op runs warmed up four workers. Worker-slot seconds = the sum, over the task instance's runs, of "
        "the supervisor's `Workload finished` duration (the time a LocalExecutor worker was busy with that "
        "run). *DB span* = `end_date - start_date` of the task instance (for a deferred task it includes the "
        "time in the triggerer). The phases come from the task log: *startup* until the end of the `Pre "
        "Execute` group (DAG file parsed, task started), *operator* until `Post Execute` (the operator's "
        "`execute` / `execute_complete`), *wrap-up* to the last line; what the slot time has beyond them is "
        "the supervisor's own start and its noticing the task process exit: Airflow's supervisor waits "
        "on the task's sockets for up to `[workers] min_heartbeat_interval` (5 s) at a time, so a run "
        "that ends between two log lines can hold its slot up to 5 s longer (0-5 s per run, by chance; "
        "Airflow's default, not the operator's doing).",
        "",
        "| task | state | runs | worker-slot seconds | DB span (s) | phases (task log) |",
        "|---|---|---|---|---|---|",
        *rows,
    ]
    if probe_rows:
        section.body += [
            "",
            f"The same deferrable operator (a {probe.get('generation_seconds', 15):.0f} s generation: a "
            "deferred task's worker time does not depend on the generation's length) and the no-op task, "
            f"in a second deployment with `AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL={probe['heartbeat']}`, "
            "after two warm-up runs. The supervisor then looks at its task process every second instead "
            "of every five, so the slot is released sooner after the task exits; the price is one "
            "heartbeat request to the API server per running task per second instead of per five "
            "seconds.",
            "",
            "| task | state | runs | worker-slot seconds | task-process seconds (task log) |",
            "|---|---|---|---|---|",
            *probe_rows,
        ]
    section.plots.append(_plot(raw, out_dir))
    section.raw = {
        "slot_seconds": slot,
        "runs": runs,
        "operator_seconds": operator,
        "process_seconds": process,
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
        ti = raw["wt"][dag_id][0]
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
