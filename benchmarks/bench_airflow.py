"""One real Airflow deployment for benchmarks 1 (worker time) and 5 (end-to-end latency).

Sequence, each step measured on its own:

1. two emulators (their own processes): ``worker`` with exactly 120 s generations, ``e2e`` with
   generations drawn uniformly between ``E2E_MIN`` and ``E2E_MAX`` seconds;
2. the deployment starts (SQLite, LocalExecutor, api-server, dag-processor, scheduler, triggerer);
3. four no-op DAG runs at once warm up four LocalExecutor workers (a deployment's workers are
   warm most of the time; the first task a fresh worker runs pays its imports);
4. the four worker-time DAGs start together: deferrable, ``deferrable=False``, the vendor's script,
   and a no-op task (what any task run costs a worker slot here);
5. while the three 2-minute generations are pending, the end-to-end DAG runs with 1 generation, and
   ``idle_work`` runs (the streaming benchmark, then the parse-cost benchmark once the 1-generation
   run is over: they need no Airflow, and the window is long);
6. once the worker-time DAGs are done, the end-to-end DAG runs with ``n_many`` generations.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.airflow_deploy import Deployment
from benchmarks.common import EmulatorProcess, connection_json

WT_DAGS = ("bench_wt_deferrable", "bench_wt_blocking", "bench_wt_vendor", "bench_wt_noop")
E2E_DAG = "bench_e2e"
GENERATION_SECONDS = 120.0
E2E_MIN, E2E_MAX = 20.0, 40.0
E2E_RANGE = f"{E2E_MIN:.0f}-{E2E_MAX:.0f}"
PARALLELISM = 8


#: The two DAGs whose worker time is partly chance (the supervisor's wait), the deferrable operator and
#: the no-op task, run this many times more ("wt-1", ...), one at a time.
REPEATS = 3
REPEATED = ("bench_wt_deferrable", "bench_wt_noop")
EXPECTED_RUNS = {"bench_wt_deferrable": 2, "bench_wt_blocking": 1, "bench_wt_vendor": 1, "bench_wt_noop": 1}


def _sample_one_at_a_time(dep: Deployment, run_ids: list[str], photo: Callable[[int], str]) -> None:
    """Run the deferrable and the no-op DAG once per run id, each alone on the machine's cores.

    Several at once would measure the CPU contention of 2 cores, not the task: the next starts once
    the deferrable task has deferred and the no-op one has finished.
    """
    for i, run_id in enumerate(run_ids):
        dep.trigger("bench_wt_deferrable", {"photo": photo(i)}, run_id)

        def deferred(run_id: str = run_id) -> bool:
            states = [ti["state"] for ti in dep.task_instances("bench_wt_deferrable", run_id)]
            return bool(states) and all(s in ("deferred", "success", "failed") for s in states)

        dep.wait_for(f"bench_wt_deferrable {run_id} to defer", deferred, 120)
        dep.trigger("bench_wt_noop", {"photo": ""}, run_id)
        dep.wait_run("bench_wt_noop", run_id, 120)


def _all_logged(dep: Deployment, runs: dict[str, list[str]]) -> Callable[[], bool]:
    """A predicate: every task run of these DAG runs has its supervisor's 'Workload finished' line."""

    def logged() -> bool:
        w = dep.workloads()
        return all(
            len(w.get(ti["id"], [])) >= EXPECTED_RUNS[d]
            for d, run_ids in runs.items()
            for run_id in run_ids
            for ti in dep.task_instances(d, run_id)
        )

    return logged


def _collect(dep: Deployment, runs: dict[str, list[str]]) -> dict[str, list[dict[str, Any]]]:
    """The task instance of each DAG run, with its workloads (slot seconds) and task log."""
    workloads = dep.workloads()
    return {
        d: [
            {**ti, "run_id": run_id, "workloads": workloads.get(ti["id"], []),
             "log": dep.task_log(d, run_id, ti["task_id"])}
            for run_id in run_ids
            for ti in dep.task_instances(d, run_id)
        ]
        for d, run_ids in runs.items()
    }  # fmt: skip


def run_deployment(
    idle_work: Callable[[float, Callable[[], str]], None] | None = None,
    *,
    n_many: int = 200,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the sequence above; return everything the two analyses need.

    :param idle_work: called as ``idle_work(deadline, wait_e2e_1)`` in the idle window: it must be done
        by ``deadline`` (epoch seconds) and call ``wait_e2e_1()`` (which waits for the 1-generation run)
        before anything CPU-heavy.
    """
    home = Path(tempfile.mkdtemp(prefix="bench-airflow-")) / "airflow"
    raw: dict[str, Any] = {
        "home": str(home),
        "parallelism": PARALLELISM,
        "n_many": n_many,
        "e2e_range": E2E_RANGE,
    }
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    with contextlib.ExitStack() as stack:
        w_emu = stack.enter_context(EmulatorProcess(queued_seconds=0, generating_seconds=GENERATION_SECONDS))
        e_emu = stack.enter_context(
            EmulatorProcess(
                queued_seconds=0, generating_seconds=E2E_MIN, generating_seconds_max=E2E_MAX, seed=11
            )
        )
        dep = Deployment(
            home,
            {"klingfx_worker": connection_json(w_emu.url), "klingfx_e2e": connection_json(e_emu.url)},
            parallelism=PARALLELISM,
        )
        stack.enter_context(dep)
        dep.start_all()
        dep.wait_parsed(*WT_DAGS, E2E_DAG)
        timings["deployment_ready"] = time.monotonic() - t0
        log(f"airflow: deployment ready after {timings['deployment_ready']:.0f} s")

        # -- warm-up ---------------------------------------------------------------------------
        for i in range(4):
            dep.trigger("bench_wt_noop", {"photo": ""}, f"warmup-{i}")
        for i in range(4):
            dep.wait_run("bench_wt_noop", f"warmup-{i}", 120)
        timings["warm_up_done"] = time.monotonic() - t0

        # -- worker time ----------------------------------------------------------------------
        wt_sent = {d: dep.trigger(d, {"photo": w_emu.photo(i)}, "wt") for i, d in enumerate(WT_DAGS)}
        raw["wt_sent"] = wt_sent

        def started() -> bool:
            states = {d: [ti["state"] for ti in dep.task_instances(d, "wt")] for d in WT_DAGS}
            return (
                states["bench_wt_deferrable"] == ["deferred"]
                and states["bench_wt_blocking"] == ["running"]
                and states["bench_wt_vendor"] == ["running"]
                and dep.run_state("bench_wt_noop", "wt") == "success"
            )

        dep.wait_for("the worker-time tasks to start", started, 120)
        timings["worker_time_started"] = time.monotonic() - t0
        # More samples of the two DAGs whose slot time is partly chance, once the first wave is in.
        repeat_ids = [f"wt-{i}" for i in range(1, REPEATS + 1)]
        _sample_one_at_a_time(dep, repeat_ids, lambda i: w_emu.photo(10 + i))
        timings["worker_time_repeats_started"] = time.monotonic() - t0

        # -- idle window: end to end with 1 generation, and the benchmarks that need no Airflow --
        # The 2-minute generations complete GENERATION_SECONDS after submission; stop 15 s before.
        deadline = min(wt_sent.values()) + GENERATION_SECONDS - 15
        raw["e2e_1_sent"] = dep.trigger(E2E_DAG, {"photos": [e_emu.photo(0)]}, "e2e-1")

        def e2e_1_done() -> str:
            if "e2e_1_state" not in raw:
                raw["e2e_1_state"] = dep.wait_run(E2E_DAG, "e2e-1", E2E_MAX + 120)
                timings["e2e_1_done"] = time.monotonic() - t0
                log(f"airflow: e2e N=1 {raw['e2e_1_state']} after {timings['e2e_1_done']:.0f} s")
            return str(raw["e2e_1_state"])

        if idle_work is not None and deadline - time.time() > 10:
            idle_work(deadline, e2e_1_done)
        e2e_1_done()
        timings["idle_work_done"] = time.monotonic() - t0
        if time.time() > deadline + 10:
            log("airflow: the idle-window work overran; the 2-minute generations completed during it")
        raw["idle_work_overran"] = time.time() > deadline + 10

        raw["wt_states"] = {d: dep.wait_run(d, "wt", GENERATION_SECONDS + 240) for d in WT_DAGS}
        for d in REPEATED:
            for run_id in repeat_ids:
                dep.wait_run(d, run_id, GENERATION_SECONDS + 240)
        wt_runs = {d: ["wt", *(repeat_ids if d in REPEATED else [])] for d in WT_DAGS}
        dep.wait_for("the supervisors' 'Workload finished' lines", _all_logged(dep, wt_runs), 60)
        timings["worker_time_done"] = time.monotonic() - t0
        log(f"airflow: worker-time DAGs {raw['wt_states']} after {timings['worker_time_done']:.0f} s")

        # -- end to end, many generations -------------------------------------------------------
        photos = [e_emu.photo(i) for i in range(n_many)]
        raw["e2e_many_sent"] = dep.trigger(E2E_DAG, {"photos": photos}, "e2e-many")
        raw["e2e_many_state"] = dep.wait_run(E2E_DAG, "e2e-many", 900)
        timings["e2e_many_done"] = time.monotonic() - t0
        log(f"airflow: e2e N={n_many} {raw['e2e_many_state']} after {timings['e2e_many_done']:.0f} s")

        # -- collect ----------------------------------------------------------------------------
        raw["wt"] = _collect(dep, wt_runs)
        raw["e2e"] = {}
        for run_id in ("e2e-1", "e2e-many"):
            raw["e2e"][run_id] = {
                "tis": dep.task_instances(E2E_DAG, run_id),
                "generation_ids": dep.xcom(E2E_DAG, run_id, "one.effect", "generation_id"),
            }
        raw["e2e_emulator"] = e_emu.stats()
        raw["worker_emulator"] = w_emu.stats()
    raw["timings"] = timings
    raw["wall_seconds"] = time.monotonic() - t0
    return raw


#: The supervisor's wait between two looks at its task process; Airflow's default is 5 s.
PROBE_HEARTBEAT = 1
PROBE_GENERATION_SECONDS = 15.0


def run_heartbeat_probe(*, log: Callable[[str], None] = print) -> dict[str, Any]:
    """A second, small deployment with ``[workers] min_heartbeat_interval`` = 1 s.

    It runs the deferrable DAG (a 15 s generation: a deferred task's worker time does not depend on
    how long the generation takes) and the no-op DAG ``REPEATS + 1`` times each, one at a time, after
    two warm-up runs, to show how much of the worker-slot time is the supervisor's wait rather than the
    task.
    """
    home = Path(tempfile.mkdtemp(prefix="bench-airflow-hb-")) / "airflow"
    t0 = time.monotonic()
    with contextlib.ExitStack() as stack:
        emu = stack.enter_context(
            EmulatorProcess(queued_seconds=0, generating_seconds=PROBE_GENERATION_SECONDS)
        )
        dep = Deployment(
            home,
            {"klingfx_worker": connection_json(emu.url)},
            parallelism=PARALLELISM,
            extra_env={"AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": str(PROBE_HEARTBEAT)},
        )
        stack.enter_context(dep)
        dep.start_all()
        dep.wait_parsed(*REPEATED)
        for i in range(2):
            dep.trigger("bench_wt_noop", {"photo": ""}, f"warmup-{i}")
        for i in range(2):
            dep.wait_run("bench_wt_noop", f"warmup-{i}", 120)
        run_ids = ["wt", *(f"wt-{i}" for i in range(1, REPEATS + 1))]
        _sample_one_at_a_time(dep, run_ids, emu.photo)
        states = {
            f"{d}/{run_id}": dep.wait_run(d, run_id, PROBE_GENERATION_SECONDS + 180)
            for d in REPEATED
            for run_id in run_ids
        }
        runs = {d: run_ids for d in REPEATED}
        dep.wait_for("the supervisors' 'Workload finished' lines", _all_logged(dep, runs), 60)
        wt = _collect(dep, runs)
    wall = time.monotonic() - t0
    log(f"airflow: heartbeat probe {sorted(set(states.values()))} after {wall:.0f} s")
    return {
        "wt": wt,
        "states": states,
        "heartbeat": PROBE_HEARTBEAT,
        "generation_seconds": PROBE_GENERATION_SECONDS,
        "wall_seconds": wall,
    }
