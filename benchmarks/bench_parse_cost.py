"""DAG-parse cost: importing the operator module on top of what every Airflow 3 DAG file imports.

Fresh interpreters, one import set each, interleaved (empty, bare, operator, empty, bare, ...), wall
time measured from outside (so interpreter start-up is in it and is subtracted with the empty
interpreter run beside it). Extra = median over the rounds of (operator - bare); the goal compares it
with the median of (bare - empty). The operator interpreters also time both steps from inside and list
the modules the operator module adds, to check that the heavy optional ones are not among them.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import PYTHON, REPO, Figure, Section, child_env, fmt, median, percentile

BARE = "import airflow.sdk, airflow.triggers.base, pendulum"
#: Informational: what the worker and the triggerer import when the task runs (not at parse time).
RUNTIME_MODULES = ("airflow_provider_klingfx.hooks.klingfx", "airflow_provider_klingfx.triggers.klingfx")
OPERATOR_MODULE = "airflow_provider_klingfx.operators.klingfx"
#: Modules a DAG file must not pay for: imported only where a task or trigger uses them.
HEAVY = ("aiohttp", "av", "PIL", "tenacity", "requests", "airflow_provider_klingfx.hooks.klingfx",
         "airflow_provider_klingfx.triggers.klingfx", "klingfx_emulator")  # fmt: skip
INSIDE = f"""
import sys, time, json
t0 = time.perf_counter()
{BARE}
t1 = time.perf_counter()
before = set(sys.modules)
import {OPERATOR_MODULE}
t2 = time.perf_counter()
added = sorted(set(sys.modules) - before)
print(json.dumps({{"bare": t1 - t0, "extra": t2 - t1, "added": added}}))
"""
#: Run apart from the timed ones: what a task or the triggerer imports on top (not the DAG processor).
RUNTIME = f"""
import time, json
{BARE}
import {OPERATOR_MODULE}
runtime = {{}}
for module in {RUNTIME_MODULES!r}:
    t = time.perf_counter()
    __import__(module)
    runtime[module] = time.perf_counter() - t
print(json.dumps(runtime))
"""
LABELS = {
    "empty": "python -c pass",
    "bare": BARE,
    "operator": f"{BARE}; import {OPERATOR_MODULE}",
}
SCRIPTS = {
    "empty": "pass",
    "bare": BARE,
    "operator": INSIDE,
}


def _time(script: str, env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(
        [PYTHON, "-c", script], env=env, cwd=REPO, capture_output=True, text=True, check=False, timeout=120
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{script[:60]!r} failed: {proc.stderr[-2000:]}")
    return elapsed, proc.stdout


def run(out_dir: str, *, budget_seconds: float = 60.0, min_reps: int = 5, max_reps: int = 21) -> Section:
    section = Section("parse", "3. DAG-parse cost of the operator module")
    home = Path(tempfile.mkdtemp(prefix="bench-parse-"))
    env = child_env(AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False")
    _time(SCRIPTS["operator"], env)  # warm-up: config file written, bytecode cached
    times: dict[str, list[float]] = {k: [] for k in SCRIPTS}
    inside: list[dict[str, Any]] = []
    started = time.monotonic()
    reps = 0
    while reps < max_reps and (reps < min_reps or time.monotonic() - started < budget_seconds):
        for name, script in SCRIPTS.items():
            elapsed, out = _time(script, env)
            times[name].append(elapsed)
            if name == "operator":
                inside.append(json.loads(out.strip().splitlines()[-1]))
        reps += 1
    runtime: dict[str, float] = json.loads(_time(RUNTIME, env)[1].strip().splitlines()[-1])

    # Paired: each run of one interpreter against the run of the other right beside it, so a change
    # in the machine's load over the run cancels out.
    bare_cost = median([b - e for b, e in zip(times["bare"], times["empty"], strict=True)])
    extra = median([o - b for o, b in zip(times["operator"], times["bare"], strict=True)])
    share = extra / bare_cost
    inside_extra = median([i["extra"] for i in inside])
    inside_bare = median([i["bare"] for i in inside])
    added = inside[-1]["added"]
    heavy = sorted({m for m in added for h in HEAVY if m == h or m.startswith(h + ".")})
    section.figures = [
        Figure(
            "Extra import time of the operator module (wall, fresh interpreters)",
            extra * 1000,
            "ms",
            bare_cost * 1000,
            "airflow.sdk + airflow.triggers.base + pendulum alone (start-up subtracted)",
            "<= 5 % of the bare imports",
            share <= 0.05,
            note=f"{share:.1%} of the bare imports; median of {reps} paired differences",
        ),
        Figure(
            "Extra import time, timed inside the interpreter",
            inside_extra * 1000,
            "ms",
            inside_bare * 1000,
            "the bare imports, timed inside the same interpreters",
            "<= 5 % of the bare imports",
            inside_extra / inside_bare <= 0.05,
            note=f"{inside_extra / inside_bare:.1%}",
        ),
        Figure(
            "Heavy optional modules imported by the operator module",
            float(len(heavy)),
            "modules",
            goal="0 (deferred to the point of use)",
            met=not heavy,
            note=", ".join(heavy) or f"none of {', '.join(HEAVY[:5])}, the hook, the trigger or the emulator",
        ),
    ]
    section.body += [
        f"{reps} runs of each interpreter, interleaved, {sum(len(v) for v in times.values())} in all "
        f"(a time budget of {budget_seconds:.0f} s decides how many, at least {min_reps}).",
        "",
        "| interpreter | median wall (ms) | p10 (ms) | p90 (ms) |",
        "|---|---|---|---|",
        *(
            f"| `{LABELS[k]}` "
            f"| {median(v) * 1000:.0f} | {percentile(v, 10) * 1000:.0f} | {percentile(v, 90) * 1000:.0f} |"
            for k, v in times.items()
        ),
        "",
        f"Modules the operator module adds to the bare imports ({len(added)}): "
        + ", ".join(f"`{m}`" for m in added)
        + ".",
        "",
        "Imported only when a task runs (not by the DAG processor), for information: "
        + "; ".join(f"`{m}` {ms * 1000:.0f} ms" for m, ms in runtime.items())
        + " (each on top of the previous imports; one separate interpreter).",
    ]
    section.raw = {"times": times, "inside": inside, "runtime_imports": runtime, "added": added}
    return section


if __name__ == "__main__":
    s = run("/tmp", budget_seconds=20, min_reps=3)
    print("\n".join(s.body))
    for f in s.figures:
        print(f.name, fmt(f.value), fmt(f.baseline), f.met, f.note)
