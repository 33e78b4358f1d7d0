"""One classification of transport failures for the worker (requests) and the triggerer (aiohttp).

Each case makes a real failure on 127.0.0.1 and sends the create call through both paths: they must
agree on the words, on whether the request may have reached the API, and so on whether it is sent
again (provably not reached) or fails as ambiguous (it may have been billed).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_provider_klingfx.domain import KlingFxAmbiguousSubmissionError, KlingFxTransportError
from tests.conftest import faults
from tests.support import free_port, make_tls_cert
from tests.test_hook import FAST, make_hook, posts_seen, squish


@contextlib.contextmanager
def tls_server(directory: Path) -> Iterator[int]:
    """A TLS server with a self-signed certificate nobody trusts: handshakes fail on the client."""
    cert, key = make_tls_cert(directory)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with contextlib.suppress(OSError), conn, context.wrap_socket(conn, server_side=True):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(5)
        listener.close()


#: case -> (expected words in the message, reached the API?)
CASES = {
    "refused": ("could not connect (connection refused)", False),
    "dns": ("could not connect (the host name does not resolve)", False),
    "tls-to-plain-http": ("could not connect (TLS handshake failed)", False),
    "untrusted-certificate": ("could not connect (TLS handshake failed)", False),
    "proxy-refused": ("could not connect through the proxy", False),
    "read-timeout": ("no answer in time", True),
    "dropped-after-accept": ("connection lost", True),
}


@pytest.fixture
def failing(request, emulator, connection, monkeypatch, tmp_path):
    """Point ``klingfx_default`` (or the proxy, or the emulator's faults) at the case's failure."""
    case = request.param
    host = emulator.url
    extra: dict = {}
    if case == "refused":
        host = f"http://127.0.0.1:{free_port()}"
    elif case == "dns":
        host = "https://klingfx-nowhere.invalid"
    elif case == "tls-to-plain-http":
        host = emulator.url.replace("http://", "https://")
    elif case == "proxy-refused":
        for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{free_port()}")
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
    elif case == "read-timeout":
        emulator.set_faults(faults({"action": "slow", "route": "create", "delay": 3}))
    elif case == "dropped-after-accept":
        emulator.set_faults(faults({"action": "drop_after_accept", "route": "create"}))
    with contextlib.ExitStack() as stack:
        if case == "untrusted-certificate":
            port = stack.enter_context(tls_server(tmp_path))
            host = f"https://127.0.0.1:{port}"
        connection("klingfx_default", host=host, extra=extra)
        yield case


@pytest.mark.parametrize("failing", list(CASES), indirect=True)
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_both_paths_classify_a_transport_failure_alike(emulator, failing, sleeps, mode):
    words, reached = CASES[failing]
    hook = make_hook(sleeps)
    try:
        with pytest.raises((KlingFxTransportError, KlingFxAmbiguousSubmissionError)) as info:
            hook.submit(squish(emulator)) if mode == "sync" else await hook.asubmit(squish(emulator))
    finally:
        await hook.aclose()
    assert words in str(info.value)
    if reached:
        # It may have been received (and billed): never sent again, and the task must not retry.
        assert isinstance(info.value, KlingFxAmbiguousSubmissionError)
        assert sleeps.calls == []
        assert len(posts_seen(emulator)) == 1
    else:
        # Provably never reached the API: sent again, with the policy's attempts, then a retryable error.
        assert type(info.value) is KlingFxTransportError
        assert info.value.reached_server is False
        assert len(sleeps.calls) == FAST.max_attempts - 1
