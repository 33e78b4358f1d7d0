"""Helpers the tests (and the benchmarks) share that are not fixtures: the one fake clock, the one
free-port helper, and a self-signed TLS certificate.

No pytest import here: the benchmarks import this module too.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path


class FakeTime:
    """Stands in for ``time.sleep``, ``asyncio.sleep`` and the epoch clock, in virtual time.

    Every wait is recorded in :attr:`calls` and moves :meth:`clock` on by exactly its length (once
    it is over: a wait cancelled midway moves nothing), and nothing else moves it. Code given the
    sleeps and the clock sees deadlines, back-off and rate pacing as they would be, while the test
    does not wait for them, and a loaded machine sees the same times as an idle one.

    Made for one sleeper at a time (a poll loop, a retry, the gate's dispatcher): two tasks sleeping
    at once would each move the clock by their own wait.

    :param start: the clock's first reading; default: the wall clock's now, so deadlines a test
        computes from ``time.time()`` stay close to it.
    :param real: at most this many seconds of each wait are really slept (default: none). For a
        test whose code waits on something that moves in real time, as the session emulator's
        generations do: a poll loop then asks every ``real`` seconds instead of in a tight loop.
        The clock still moves by the whole wait, never by the real time that passed.
    """

    def __init__(self, start: float | None = None, *, real: float = 0.0) -> None:
        self.now = time.time() if start is None else start
        self.real = real
        #: Every wait asked for, in order (negative ones as given).
        self.calls: list[float] = []

    def clock(self) -> float:
        """The virtual epoch clock."""
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock on without a sleep (the test's own passing of time)."""
        self.now += seconds

    def __call__(self, seconds: float) -> None:
        """The sync sleep."""
        self.calls.append(seconds)
        if self.real > 0:
            time.sleep(min(max(0.0, seconds), self.real))
        self.now += max(0.0, seconds)

    async def asleep(self, seconds: float) -> None:
        """The async sleep: yields to the loop as a real sleep does, even when it waits for nothing."""
        self.calls.append(seconds)
        await asyncio.sleep(min(max(0.0, seconds), self.real))
        self.now += max(0.0, seconds)


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
