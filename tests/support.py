"""Helpers the tests (and the benchmarks) share that are not fixtures: the one fake clock, the one
free-port helper, and a self-signed TLS certificate.

No pytest import here: the benchmarks import this module too.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class FakeTime:
    """Stands in for ``time.sleep``, ``asyncio.sleep`` and the epoch clock, in virtual time.

    Every wait is recorded in :attr:`calls` and moves :meth:`clock` on by exactly its length (once
    it is over: a wait cancelled midway moves nothing), and nothing else moves it but
    :meth:`advance`. Code given the sleeps and the clock sees deadlines, back-off and rate pacing as
    they would be, while the test does not wait for them, and a loaded machine sees the same times
    as an idle one.

    A wait is over at once, which suits one sleeper at a time (a poll loop, a retry). Where another
    task must act first (the answer to a probe in flight, while the gate's dispatcher sleeps until
    a deadline), ``hold=True`` holds every async wait until the test lets time pass
    (:meth:`advance`, :meth:`run_until`), and the clock then moves to where the wait ends.

    :param start: the clock's first reading; default: the wall clock's now, so deadlines a test
        computes from ``time.time()`` stay close to it.
    :param real: at most this many seconds of each wait are really slept (default: none). For a
        test whose code waits on something that moves in real time, as the session emulator's
        generations do: a poll loop then asks every ``real`` seconds instead of in a tight loop.
        The clock still moves by the whole wait, never by the real time that passed.
    :param hold: hold async waits until the test moves the clock past their end.
    """

    def __init__(self, start: float | None = None, *, real: float = 0.0, hold: bool = False) -> None:
        self.now = time.time() if start is None else start
        self.real = real
        self.hold = hold
        #: Every wait asked for, in order (negative ones as given).
        self.calls: list[float] = []
        self._held: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._wait_begun: asyncio.Event | None = None

    def clock(self) -> float:
        """The virtual epoch clock."""
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock on by ``seconds`` (the test's own passing of time); with ``hold``, the
        waits that end by then are over."""
        self.now += seconds
        while self._held and self._held[0][0] <= self.now:
            _, _, future = heapq.heappop(self._held)
            if not future.done():
                future.set_result(None)

    def __call__(self, seconds: float) -> None:
        """The sync sleep."""
        self.calls.append(seconds)
        if self.real > 0:
            time.sleep(min(max(0.0, seconds), self.real))
        self.now += max(0.0, seconds)

    async def asleep(self, seconds: float) -> None:
        """The async sleep: yields to the loop as a real sleep does, even when it waits for nothing."""
        self.calls.append(seconds)
        if not self.hold:
            await asyncio.sleep(min(max(0.0, seconds), self.real))
            self.now += max(0.0, seconds)
            return
        future = asyncio.get_running_loop().create_future()
        entry = (self.now + max(0.0, seconds), next(self._seq), future)
        heapq.heappush(self._held, entry)
        self._begun().set()
        try:
            await future
        finally:
            if entry in self._held:  # cancelled while held: it never ended
                self._held.remove(entry)
                heapq.heapify(self._held)

    async def run_until(self, *aws: asyncio.Future[Any]) -> set[asyncio.Future[Any]]:
        """With ``hold``: let time pass until one of ``aws`` is done; returns those done.

        Each step waits until a task begins a wait (the code under test going back to sleep after
        what woke it) or one of ``aws`` is done; if none is, the clock moves to the end of the
        earliest wait still held, which ends it. So whatever can go on at the current time does
        before the clock moves. Call it right after what wakes the code under test (starting it,
        answering its probe): a wait begun before the call and never woken is not ended by it.
        """
        while True:
            begun = self._begun()
            begun.clear()
            waiting = asyncio.ensure_future(begun.wait())
            try:
                await asyncio.wait({*aws, waiting}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiting.cancel()
            await asyncio.sleep(0)  # what ended at the same time completes first
            done = {aw for aw in aws if aw.done()}
            if done:
                return done
            held = [end for end, _, future in self._held if not future.done()]
            if held:
                self.advance(min(held) - self.now)

    def _begun(self) -> asyncio.Event:
        if self._wait_begun is None:
            self._wait_begun = asyncio.Event()
        return self._wait_begun


@contextmanager
def seeded_random(seed: int) -> Iterator[None]:
    """The ``random`` module's generator seeded for the block, and put back as it was after.

    The retry policy's back-off jitter (tenacity) and the API health's probe jitter draw from it,
    so a test that counts retries or probes sees the same draws on every run.
    """
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on now (for a server started on it next, or as a
    port whose connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_tls_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed ECDSA P-256 certificate for 127.0.0.1 (cert.pem, key.pem) in ``directory``.

    Clients trust it through ``SSL_CERT_FILE`` (``ssl.create_default_context()``, which aiohttp uses,
    reads it), so the package's code runs unchanged over HTTPS.
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


class MotoServer:
    """A moto server (S3, SQS, ...) on 127.0.0.1 and a free port: the one way the tests start one.

    :attr:`endpoint` is its URL, :meth:`client` makes a boto3 client of it, and :meth:`connection` is
    an Airflow ``aws`` connection to it (a dict, for ``AIRFLOW_CONN_...`` as JSON).
    """

    CREDENTIALS: dict[str, str] = {"aws_access_key_id": "moto", "aws_secret_access_key": "moto"}

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"

    def client(self, service: str) -> Any:
        import boto3

        return boto3.client(service, endpoint_url=self.endpoint, region_name="us-east-1", **self.CREDENTIALS)

    def connection(self) -> dict[str, Any]:
        return {
            "conn_type": "aws",
            "login": self.CREDENTIALS["aws_access_key_id"],
            "password": self.CREDENTIALS["aws_secret_access_key"],
            "extra": {"endpoint_url": self.endpoint, "region_name": "us-east-1"},
        }

    def stop(self) -> None:
        self._server.stop()
