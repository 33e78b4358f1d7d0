"""What every benchmark shares: paths, the emulator process, statistics and the result records."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import make_tls_cert

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
BIN = Path(sys.executable).parent
PYTHON = sys.executable
API_KEY = "bench-key"


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a benchmark subprocess: no inherited Airflow settings, the repo importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONWARNINGS", "ignore")
    env.update(extra)
    return env


def connection_json(url: str, **extra: Any) -> str:
    """An ``AIRFLOW_CONN_*`` value (JSON) for a ``klingfx`` connection to the benchmark emulator."""
    conn: dict[str, Any] = {"conn_type": "klingfx", "host": url, "password": API_KEY}
    if extra:
        conn["extra"] = extra
    return json.dumps(conn)


class EmulatorProcess:
    """``python -m benchmarks.bench_emulator`` in its own process (so its CPU is not the client's).

    :param queued_seconds: time in ``queued``.
    :param generating_seconds: time in ``generating`` (lower bound when ``generating_seconds_max``).
    :param generating_seconds_max: draw each generating time uniformly up to this.
    :param seed: seed of that draw.
    :param tls: also serve HTTPS (``tls_url``) with a fresh self-signed certificate (``ca_file`` is
        what clients trust).
    """

    def __init__(
        self,
        *,
        queued_seconds: float = 0.0,
        generating_seconds: float = 120.0,
        generating_seconds_max: float | None = None,
        seed: int | None = None,
        tls: bool = False,
    ) -> None:
        args = [
            PYTHON,
            "-m",
            "benchmarks.bench_emulator",
            "--api-key",
            API_KEY,
            "--queued-seconds",
            str(queued_seconds),
            "--generating-seconds",
            str(generating_seconds),
        ]
        if generating_seconds_max is not None:
            args += ["--generating-seconds-max", str(generating_seconds_max)]
        if seed is not None:
            args += ["--seed", str(seed)]
        self.ca_file: Path | None = None
        self.ssl_context: ssl.SSLContext | None = None
        if tls:
            cert, key = make_tls_cert(Path(tempfile.mkdtemp(prefix="bench-tls-")))
            args += ["--tls-cert", str(cert), "--tls-key", str(key)]
            self.ca_file = cert
            self.ssl_context = ssl.create_default_context(cafile=str(cert))
        self.proc = subprocess.Popen(
            args, cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("KLINGFX EMULATOR LISTENING "):
            self.proc.kill()
            raise RuntimeError(f"benchmark emulator did not start: {line!r}")
        self.url = line.rsplit(" ", 1)[1]
        self.tls_url = ""
        if tls:
            line = self.proc.stdout.readline().strip()
            if not line.startswith("BENCH TLS LISTENING "):
                self.proc.kill()
                raise RuntimeError(f"benchmark emulator did not serve TLS: {line!r}")
            self.tls_url = line.rsplit(" ", 1)[1]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stats(self) -> dict[str, Any]:
        """``GET /_bench/stats``: arrival stamps of fetches, creates and connections, generations."""
        with urllib.request.urlopen(f"{self.url}/_bench/stats", timeout=60) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]

    def reset(self) -> None:
        """``POST /_emulator/reset``: forget generations (the benchmark's stamps are kept)."""
        req = urllib.request.Request(f"{self.url}/_emulator/reset", data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=60) as resp:
            resp.read()

    def client_env(self, *, tls: bool = False) -> dict[str, str]:
        """What a client process needs: the connection (to ``tls_url`` if ``tls``) and trust in the cert."""
        if not tls:
            return {"AIRFLOW_CONN_KLINGFX_DEFAULT": connection_json(self.url)}
        assert self.ca_file is not None
        return {
            "AIRFLOW_CONN_KLINGFX_DEFAULT": connection_json(self.tls_url),
            "SSL_CERT_FILE": str(self.ca_file),
        }

    def photo(self, i: int = 0) -> str:
        """A photo URL the emulator accepts (never downloaded: rendering is off)."""
        return f"{self.url}/samples/person-{i % 3 + 1}.png?i={i}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)

    def __enter__(self) -> EmulatorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def emulator(**kwargs: Any) -> Iterator[EmulatorProcess]:
    """An :class:`EmulatorProcess` for the duration of a ``with`` block."""
    emu = EmulatorProcess(**kwargs)
    try:
        yield emu
    finally:
        emu.stop()


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    data = sorted(values)
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def ratio(value: float, baseline: float) -> float:
    return value / baseline if baseline else math.nan


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


@dataclass
class Figure:
    """One reported number, beside its baseline and goal.

    :param name: what it is.
    :param value: the candidate's (the package's) measurement.
    :param unit: unit of ``value`` and ``baseline``.
    :param baseline: the baseline measured in the same run, if the figure has one.
    :param baseline_name: what the baseline is.
    :param goal: the goal in words, e.g. ``"< 1 s"``.
    :param met: whether the goal is met (``None``: no goal).
    :param note: anything a reader needs to interpret it.
    """

    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    goal: str = ""
    met: bool | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or not self.baseline or math.isnan(self.baseline):
            return None
        return self.value / self.baseline


@dataclass
class Section:
    """One benchmark's results: its figures, tables and plots, rendered in RESULTS.md."""

    key: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    body: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    wall_seconds: float = 0.0
    error: str | None = None
    #: (cores the whole machine was busy on average, cores of that used by this benchmark's processes)
    machine_load: tuple[float, float] | None = None


def fmt(value: float | None, digits: int = 3) -> str:
    """A number for a table: significant digits, thousands separators, '-' for none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    decimals = max(0, digits - 1 - math.floor(math.log10(magnitude)))
    return f"{value:.{decimals}f}"


def now() -> float:
    return time.monotonic()
