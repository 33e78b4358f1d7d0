"""Triggerer CPU per poll of this checkout against earlier revisions of the package, in one run.

``.venv/bin/python -m benchmarks.compare_revisions --rev 2799c0e^ --rev 879eaa7^ --out DIR``

"Did this change cost CPU per poll?" cannot be answered from RESULTS.md alone: the same code measures
10 % apart on two days of the same machine. So each revision's ``airflow_provider_klingfx`` (taken with
``git archive``, nothing else of it) runs the triggerer-scale load of ``bench_triggerer_scale`` (N
triggers, one event loop, 10 s interval, 15 s window, the emulator in its own process) one after
another with this checkout's and with the floor (a bare GET-and-sleep loop), in alternating rounds;
the harness, the emulator and the installed dependencies are this checkout's for every revision. The
table gives each round and the median; the spread between rounds is the noise to read a difference
against.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import benchmarks.bench_triggerer_scale as scale
from benchmarks.common import REPO, EmulatorProcess


def _extract(rev: str, into: Path) -> Path:
    """The package as it was at ``rev``, alone, under ``into``; returns the directory for PYTHONPATH."""
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "airflow_provider_klingfx"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", action="append", default=[], help="a git revision to compare (repeatable)")
    parser.add_argument("--n", type=int, default=5000, help="triggers in the event loop")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", required=True, help="directory for results.json and RESULTS.md")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="klingfx-revs-"))
    # (label, variant, PYTHONPATH head or None for this checkout)
    runs: list[tuple[str, str, str | None]] = [
        (rev, "package", str(_extract(rev, work / f"rev{i}"))) for i, rev in enumerate(args.rev)
    ]
    runs += [("this checkout", "package", None), ("floor", "floor", None)]
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    rows: list[dict[str, Any]] = []
    emu = EmulatorProcess(queued_seconds=0, generating_seconds=3600, tls=False)
    try:
        for round_no in range(args.rounds):
            for label, variant, path in runs:
                # The revision's package first on the path; the harness (benchmarks/) is this checkout's.
                env = None if path is None else {"PYTHONPATH": f"{path}:{REPO}"}
                report = scale.run_one(variant, args.n, 15.0, emu, work, env=env)
                # The collector's passes land in a 15 s window or not (a full pass over 5,000
                # triggers' objects takes 0.1-0.3 s): the figure without them shows the code's own.
                per_poll, gc_seconds = report["cpu_per_poll"], report["gc_all_seconds"]
                row = {"round": round_no, "label": label, "polls": report["polls"],
                       "cpu_per_poll_ms": per_poll * 1000, "gc_seconds": gc_seconds,
                       "gc_full": report["gc_full_count"],
                       "cpu_per_poll_no_gc_ms": (per_poll - gc_seconds / report["polls"]) * 1000}  # fmt: skip
                print(json.dumps(row), flush=True)
                rows.append(row)
    finally:
        emu.stop()
    (out / "results.json").write_text(json.dumps({"head": head, "n": args.n, "rows": rows}, indent=1))
    labels = [label for label, _, _ in runs]

    def median_of(label: str, key: str) -> float:
        return statistics.median(r[key] for r in rows if r["label"] == label)

    floor, floor_no_gc = median_of("floor", "cpu_per_poll_ms"), median_of("floor", "cpu_per_poll_no_gc_ms")
    lines = [
        f"# CPU per poll by revision (HEAD {head}), N={args.n:,}, {args.rounds} alternating rounds",
        "",
        f"`python -m benchmarks.compare_revisions {' '.join(f'--rev {r}' for r in args.rev)} "
        f"--n {args.n} --rounds {args.rounds} --out {args.out}`",
        "",
        "CPU per poll in ms, each round's figure (and, in brackets, without the garbage collector's time "
        "in the window); medians over the rounds; x floor: the median over the floor's.",
        "",
        "| revision | " + " | ".join(f"round {i + 1}" for i in range(args.rounds))
        + " | median | x floor | median without GC | x floor |",
        "|---|" + "---|" * (args.rounds + 4),
    ]  # fmt: skip
    for label in labels:
        cells = [
            f"{r['cpu_per_poll_ms']:.3f} ({r['cpu_per_poll_no_gc_ms']:.3f})"
            for r in rows
            if r["label"] == label
        ]
        median, no_gc = median_of(label, "cpu_per_poll_ms"), median_of(label, "cpu_per_poll_no_gc_ms")
        lines.append(
            f"| {label} | " + " | ".join(cells)
            + f" | {median:.3f} | {median / floor:.2f} | {no_gc:.3f} | {no_gc / floor_no_gc:.2f} |"
        )  # fmt: skip
    (out / "RESULTS.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
