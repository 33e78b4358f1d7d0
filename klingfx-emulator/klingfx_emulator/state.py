"""What an emulator instance knows: its generations, their status clock, credits, counters.

:class:`EmulatorState` lives in the aiohttp application under :data:`STATE_KEY`; the handlers, the
fault middleware and the admin endpoints all read and change it, from the event loop's thread only.
Every lookup a request does is a dict access: no request scans all generations, so thousands of
generations polled concurrently cost the same per request as one. Only the admin stats walk them.
The rate limit is one hash and one dict access; the outage check is a cached answer, recomputed
from the (few) windows once per window edge.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from aiohttp import ClientSession, web

from klingfx_emulator.config import (
    OUTAGE_MODES,
    EmulatorConfig,
    FaultRule,
    Outage,
    OutageMode,
    as_number,
)
from klingfx_emulator.validation import show_url

if TYPE_CHECKING:
    from klingfx_emulator.server import Listener


@dataclass
class GenerationRecord:
    """One generation the emulator accepted (internal, but readable from tests via the state).

    :param id: the vendor-style id, ``<uuid4>:kling-video/v1.6/<tier>/effects``.
    :param file_id: the uuid in the video's URL (``/files/<file_id>/output.mp4``).
    :param submitted_at: clock time of the create.
    :param queued_until: clock time it stops being ``queued``.
    :param ready_at: clock time it may report a terminal status.
    :param fails: whether it ends in ``error`` (the face rule).
    :param image_urls: the image URLs as sent, except ``data:`` URIs, kept as
        :func:`~airflow_provider_klingfx.domain.redact_url` shows them (their bytes are in
        ``data_photos`` until used).
    :param image_url_list: whether ``image_url`` was sent as an array (error ``loc`` then names
        the position).
    :param render_task: the background render, if one was started.
    :param video: the MP4 bytes when kept in memory.
    :param video_path: the MP4 file when ``video_dir`` is set.
    :param file_size: size of the MP4 in bytes, once rendered.
    :param fallback_images: positions of inputs replaced by a placeholder frame.
    :param render_error: why rendering failed, if it did (then the generation reports ``error``).
    :param image_error: the photo that broke one of Kling's limits (``check_images``), if one did
        (then the generation reports ``error`` and nothing is rendered).
    :param prepare_task: the background download and check of the photos, when it runs apart from
        the render (``lazy`` renders with ``check_images``).
    :param data_photos: the decoded bytes of ``data:`` URIs by 0-based position, until used.
    :param image_sha256: by position, the SHA-256 (hex) of each photo the emulator got whole: a
        ``data:`` URI's bytes from the create on (whatever ``render`` says), a downloaded photo's
        once downloaded; ``None`` otherwise. How a test tells which bytes reached the emulator.
    :param inputs: the photos obtained and checked, until rendered (``None``: a placeholder).
    """

    id: str
    file_id: str
    model: str
    effect_scene: str
    image_urls: tuple[str, ...]
    duration: int
    credits: int
    submitted_at: float
    queued_until: float
    ready_at: float
    fails: bool
    client_request_id: str | None = None
    render_task: asyncio.Task[None] | None = field(default=None, repr=False)
    video: bytes | None = field(default=None, repr=False)
    video_path: Path | None = None
    file_size: int | None = None
    fallback_images: tuple[int, ...] = ()
    render_error: str | None = None
    image_url_list: bool = False
    image_error: ImageProblem | None = None
    prepare_task: asyncio.Task[None] | None = field(default=None, repr=False)
    data_photos: dict[int, bytes] = field(default_factory=dict, repr=False)
    inputs: tuple[bytes | None, ...] | None = field(default=None, repr=False)
    image_sha256: list[str | None] = field(default_factory=list)

    @property
    def rendered(self) -> bool:
        """Whether the video is ready to serve."""
        return self.video is not None or self.video_path is not None

    def describe(self, status: str) -> dict[str, Any]:
        """What ``GET /_emulator/generation`` answers about it (image URLs as ``redact_url`` shows them).

        :param status: its canonical status now.
        """
        problem = self.image_error
        return {
            "id": self.id,
            "status": status,
            "model": self.model,
            "effect_scene": self.effect_scene,
            "duration": self.duration,
            "image_urls": [show_url(u) for u in self.image_urls],
            "rendered": self.rendered,
            "file_size": self.file_size,
            "fallback_images": list(self.fallback_images),
            "image_sha256": list(self.image_sha256),
            "image_error": None
            if problem is None
            else {"index": problem.index, "rule": problem.rule, "message": problem.message},
            "render_error": self.render_error,
        }


@dataclass(frozen=True)
class ImageProblem:
    """An input photo that broke one of Kling's limits (``check_images``).

    :param index: its 0-based position in ``image_url``.
    :param rule: the rule (``format``, ``size``, ``side``, ``aspect``, ``unreadable``), as
        :class:`~airflow_provider_klingfx.images.KlingFxImageError` names it.
    :param message: the one-line message, ``image N (shown) is ...``.
    :param shown: the photo as :func:`~airflow_provider_klingfx.domain.redact_url` shows it.
    """

    index: int
    rule: str
    message: str
    shown: str


class EmulatorState:
    """Everything an emulator instance knows; lives in the app under :data:`STATE_KEY`.

    Only touched from the event loop's thread (from others, use
    :meth:`~klingfx_emulator.server.RunningEmulator.stats` or
    :meth:`~klingfx_emulator.server.RunningEmulator.call`).

    :param config: the instance's configuration.
    :param clock: monotonic clock used for the state machine (injectable for tests).
    """

    def __init__(self, config: EmulatorConfig, clock: Callable[[], float]) -> None:
        self.config = config
        self.clock = clock
        self.render_slots = asyncio.Semaphore(config.render_concurrency)
        self.download_slots = asyncio.Semaphore(16)
        self.executor: ThreadPoolExecutor | None = None
        self.http: ClientSession | None = None
        self.tiny_video: bytes | None = None
        self.samples: dict[str, bytes] = {}
        #: The listening sockets refuse outages close and reopen; set by
        #: :func:`~klingfx_emulator.server.start_site` only.
        self.listener: Listener | None = None
        #: Set whenever the outage windows change, to wake the refuse-outage timer.
        self.outages_changed = asyncio.Event()
        #: How many times the state was reset. A request notes it on arrival; one still in flight
        #: after a reset (a slow fault's, a big body's) belongs to the world before it: it changes
        #: nothing and is not recorded, so a test never sees the previous test's requests.
        self.resets = 0
        self._reset_data()

    def _reset_data(self) -> None:
        self.generations: dict[str, GenerationRecord] = {}
        self.files: dict[str, GenerationRecord] = {}
        self.requests: deque[dict[str, Any]] = deque(maxlen=self.config.max_recorded_requests)
        self.requests_total = 0
        self.submissions = 0
        self.faults_injected = 0
        self.credits_remaining: int | None = self.config.credits
        self.credits_spent = 0
        self.random = random.Random(self.config.seed)
        self.fault_rules: list[FaultRule] = list(self.config.faults)
        self._fault_seen: list[int] = [0] * len(self.fault_rules)
        self.pending_renders: set[asyncio.Task[None]] = set()
        # Rate limit: sha256(key) -> [tokens, clock time of the last update]. A hash, so the key
        # itself is not kept around (nor shown by a debugger walking the state).
        self.rate_buckets: dict[bytes, list[float]] = {}
        self.rate_limited = 0
        # Outage windows count from here: the creation (or reset) of the state.
        self.epoch = self.clock()
        self.outages: list[Outage] = list(self.config.outages)
        self.outage_rejected = 0
        self.outage_connections_dropped = 0
        self._forget_outage_span()

    def reset(self) -> None:
        """Forget every generation, video, request record and counter; re-arm the configured faults.

        Renders in flight are cancelled. The credit budget is back to ``config.credits``, the
        rate-limit buckets are full again and the outage windows are the configured ones, counted
        from now. Requests in flight are not waited for (a slow fault may hold one for minutes):
        they end without an answer and leave nothing behind (see :attr:`resets`).
        """
        for task in list(self.pending_renders):
            task.cancel()
        self.resets += 1
        self._reset_data()
        self.outages_changed.set()

    def set_faults(self, rules: Sequence[FaultRule]) -> None:
        """Replace the fault rules (their counters start from zero).

        :param rules: the new rules, in priority order.
        """
        self.fault_rules = list(rules)
        self._fault_seen = [0] * len(self.fault_rules)

    def take_fault(self, method: str, route: str) -> FaultRule | None:
        """Count this request against every matching rule; return the rule that fires, if any.

        Runs without awaiting, so concurrent requests can't both take a ``times=1`` fault.

        :param method: the request's HTTP method.
        :param route: ``create``, ``fetch`` or ``video``.
        """
        fired: FaultRule | None = None
        for i, rule in enumerate(self.fault_rules):
            if not rule.matches(method, route):
                continue
            seen = self._fault_seen[i]
            self._fault_seen[i] = seen + 1
            in_window = seen >= rule.skip and (rule.times == -1 or seen < rule.skip + rule.times)
            if in_window and fired is None:
                fired = rule
        if fired is not None:
            self.faults_injected += 1
        return fired

    def take_token(self, key: str, now: float | None = None) -> float | None:
        """Take one request from ``key``'s rate-limit bucket (``config.rate_limit`` must be set).

        O(1): one hash and one dict access; the bucket is refilled lazily from the time elapsed.

        :param key: the (authorized) bearer key.
        :param now: clock time; default: read the clock.
        :returns: ``None`` if the request may go, else the seconds until it could.
        """
        rate = cast("float", self.config.rate_limit)
        capacity = self.config.rate_limit_capacity
        now = self.clock() if now is None else now
        digest = hashlib.sha256(key.encode()).digest()
        bucket = self.rate_buckets.get(digest)
        tokens = capacity if bucket is None else min(capacity, bucket[0] + max(0.0, now - bucket[1]) * rate)
        # The tolerance: a refill of exactly 1/rate seconds must give a whole token despite floats.
        if tokens >= 1 - 1e-9:
            self.rate_buckets[digest] = [max(0.0, tokens - 1), now]
            return None
        self.rate_buckets[digest] = [tokens, now]
        return (1 - tokens) / rate

    def _forget_outage_span(self) -> None:
        # Cache of outage_window(): its answer holds for clock times in [lo, hi).
        self._outage_span: tuple[float, float, OutageMode | None] = (math.inf, -math.inf, None)

    def outage_window(self, now: float) -> tuple[OutageMode | None, float]:
        """The outage in force at clock time ``now`` and the clock time it may change.

        Amortized O(1): the answer is cached until the next window edge, so requests don't scan
        the windows (they only do so once per edge).

        :param now: clock time.
        :returns: ``(mode or None, clock time of the next edge or inf)``.
        """
        lo, hi, mode = self._outage_span
        if lo <= now < hi:
            return mode, hi
        t = now - self.epoch
        lo, hi, mode = -math.inf, math.inf, None
        for window in self.outages:
            if window.start <= t < window.end:
                if mode != "refuse":
                    mode = window.mode
                lo, hi = max(lo, window.start), min(hi, window.end)
            elif t < window.start:
                hi = min(hi, window.start)
            else:
                lo = max(lo, window.end)
        self._outage_span = (lo + self.epoch, hi + self.epoch, mode)
        return mode, hi + self.epoch

    def outage_at(self, now: float | None = None) -> OutageMode | None:
        """The outage in force now (``"503"``, ``"refuse"``) or ``None``.

        :param now: clock time; default: read the clock.
        """
        if not self.outages:
            return None
        return self.outage_window(self.clock() if now is None else now)[0]

    def schedule_outage(self, start_in: float, duration: float, mode: str = "503") -> Outage:
        """Add an outage window starting ``start_in`` seconds from now on the state's clock.

        :param start_in: seconds from now (>= 0).
        :param duration: seconds (> 0).
        :param mode: ``"503"`` or ``"refuse"`` (see :class:`Outage`).
        :returns: the window, its times counted like the configured ones.
        :raises ValueError: on invalid values, or ``"refuse"`` on a server
            :func:`~klingfx_emulator.server.start_site` did not start (aiohttp's test server: its
            socket is not the emulator's to close).
        """
        start_in = as_number(start_in, "start_in")
        duration = as_number(duration, "duration")
        if start_in < 0 or duration <= 0:
            raise ValueError(
                f"an outage needs start_in >= 0 and duration > 0, got {start_in:g}, {duration:g}"
            )
        if mode not in OUTAGE_MODES:
            raise ValueError(f"outage mode must be one of {list(OUTAGE_MODES)}, got {mode!r}")
        if mode == "refuse" and self.listener is None:
            raise ValueError(REFUSE_UNSUPPORTED)
        start = self.clock() - self.epoch + start_in
        window = Outage(start, start + duration, cast("OutageMode", mode))
        self.outages.append(window)
        self._forget_outage_span()
        self.outages_changed.set()
        return window

    def status_of(self, gen: GenerationRecord, now: float | None = None) -> str:
        """The generation's canonical status now: ``queued``, ``generating``, ``completed`` or ``error``.

        Answers rename it with :meth:`EmulatorConfig.wire_status`; everything else uses this word.

        :param gen: the generation.
        :param now: clock time; default: read the clock.
        """
        now = self.clock() if now is None else now
        if now < gen.queued_until:
            return "queued"
        if now < gen.ready_at:
            return "generating"
        if gen.fails or gen.render_error or gen.image_error:
            return "error"
        # Eager mode: the video must exist before the generation may say it is completed.
        if self.config.render == "eager" and not gen.rendered:
            return "generating"
        # Lazy mode with check_images: the photos must have been checked.
        if gen.prepare_task is not None and not gen.prepare_task.done():
            return "generating"
        return "completed"

    def record(self, entry: dict[str, Any]) -> None:
        """Append a request record to the stats.

        :param entry: the record (method, path, query_generation_id, client_request_id, status, fault).
        """
        self.requests_total += 1
        self.requests.append(entry)

    def stats(self) -> dict[str, Any]:
        """The stats document served by ``GET /_emulator/stats``."""
        now = self.clock()
        return {
            "submissions": self.submissions,
            "requests": list(self.requests),
            "requests_total": self.requests_total,
            "faults_injected": self.faults_injected,
            "generations": {gid: self.status_of(g, now) for gid, g in self.generations.items()},
            "renders_pending": len(self.pending_renders),
            "credits_spent": self.credits_spent,
            "credits_remaining": self.credits_remaining,
            "fault_rules": [r.to_dict() for r in self.fault_rules],
            "rate_limited": self.rate_limited,
            "outages": [o.to_dict() for o in self.outages],
            "outage_active": self.outage_at(now),
            "outage_rejected": self.outage_rejected,
            "outage_connections_dropped": self.outage_connections_dropped,
        }

    async def wait_for_renders(self, timeout: float = 60.0) -> None:
        """Wait until no render is in flight (tests use it instead of sleeping).

        :param timeout: seconds to wait at most.
        :raises TimeoutError: if renders are still running after ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while self.pending_renders:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{len(self.pending_renders)} renders still running after {timeout}s")
            await asyncio.wait(set(self.pending_renders), timeout=remaining)


REFUSE_UNSUPPORTED = (
    "refuse outages need a server started by start_site() (run_emulator_in_thread or the CLI), "
    "which can close and reopen its listening socket; this one (e.g. aiohttp's test server) can't: "
    "use mode '503' here"
)

STATE_KEY = web.AppKey("klingfx_emulator_state", EmulatorState)
