"""A local emulator of the AI/ML API for the Kling v1.6 effects models (like moto for AWS).

An aiohttp server that answers like the vendor API: for the demo, for the test-suite (over real
HTTP on 127.0.0.1) and for testing DAGs offline. Start it with::

    klingfx-emulator --port 0          # or: python -m klingfx_emulator --port 0

which prints one line ``KLINGFX EMULATOR LISTENING http://HOST:PORT``, or in-process with
:func:`run_emulator_in_thread`, or mount :func:`create_app` in aiohttp's test server.

It is a distribution of its own (``klingfx-emulator``), apart from the provider
(``airflow-provider-klingfx``) that every Airflow worker, triggerer and api-server imports. It
reuses the provider's rules of the vendor API: the scenes, models, durations and image counts of
:mod:`airflow_provider_klingfx.domain` and the photo checks of
:mod:`airflow_provider_klingfx.images`, one implementation of them, shared on purpose.

Where things are: :mod:`~klingfx_emulator.config` (how it behaves), :mod:`~klingfx_emulator.state`
(generations, their status clock, credits, counters), :mod:`~klingfx_emulator.validation` and
:mod:`~klingfx_emulator.answers` (the wire format, in and out), :mod:`~klingfx_emulator.routes` (the
handlers and :func:`create_app`), :mod:`~klingfx_emulator.faults` (outages, fault rules and the
request record), :mod:`~klingfx_emulator.images` (input photos), :mod:`~klingfx_emulator.videos`
and :mod:`~klingfx_emulator.render` (the MP4s), :mod:`~klingfx_emulator.server` (threads, sockets,
refuse outages) and :mod:`~klingfx_emulator.cli`.

What it emulates:

* ``POST /v2/video/generations`` (and the legacy ``/v2/generate/video/kling/generation``): bearer
  key (default ``emulator-key`` or ``$KLINGFX_EMULATOR_API_KEY``), the vendor schema's validation
  plus Kling's image counts (hug, kiss, heart_gesture: exactly 2; every other scene: 1), an
  optional credit budget (403 when spent); it answers 200 (201 on the legacy
  path) with ``{"id", "status": "queued", "meta": {"usage": {"credits_used", "usd_spent"}}}``;
* ``GET`` on the same paths with ``?generation_id=``: ``queued`` -> ``generating`` -> ``completed``
  or ``error``, computed from a clock you can inject, with a real MP4 served under
  ``/files/<uuid>/output.mp4`` once completed; a completed answer carries ``meta.usage``, the
  others ``"meta": null``;
* the status words on the wire: the schema's by default, ``waiting``/``active`` for queued and
  generating with ``legacy_statuses``, any others with ``status_words`` (``succeeded``,
  ``failed``, ``cancelled``...);
* usage where the vendor reports it (``usage_in``: create, fetch, both or none; ``usage_field``:
  ``credits_used`` or the older ``tokens_used``; ``usd_per_credit``), always with the headers
  ``x-aimlapi-credits-used`` (integer) and ``x-aimlapi-usd-spent``;
* the tracing headers: ``x-inference-id`` (the generation id: on a create's answer, and on a
  poll's answer, its 401 and 404 included, when the polled id is one the API could have issued;
  not on answers a fault rule makes up), ``x-request-id`` (also ``requestId`` in error bodies)
  and the valid ``X-Client-Request-Id`` echoed;
* HTTP errors in the documented body ``{message, path, requestId, statusCode, timestamp}`` (plus
  ``errors: [{path, message}]`` for validation errors) or, with ``error_body="live"``, the one seen
  live ``{title, status, message, instance, requestId, timestamp, error: {name, message}}`` (plus
  ``detail: [{loc, msg, type, input}]``);
* sample photos at ``/samples/person-1.png`` .. ``person-3.png`` and ``/samples/landscape-noface.png``;
* fault injection (:class:`FaultRule`): HTTP errors with ``Retry-After``, dropped connections
  (also after a create was accepted: the ambiguous case), a create accepted with an answer that
  has no id (``accept_without_id``: the id only in ``x-inference-id``; ``accept_unreadable``: not
  even there), a video download cut halfway (``truncate``), slow answers, non-JSON answers;
* a per-key rate limit (``rate_limit``, ``rate_limit_burst``): a token bucket per API key on
  create and fetch (both path styles; not the video, samples, health or admin routes), checked
  after the key (a 401 consumes nothing); over it a 429 in the configured error body with
  ``Retry-After`` (whole seconds until the next token, at least 1; off with
  ``rate_limit_retry_after=False``); a limited create makes no generation and charges nothing;
* timed outages (:class:`Outage`; seconds on the state's clock since its creation or reset; from
  the config, the CLI's ``--outage START:END[:MODE]``, ``POST /_emulator/outage`` or
  :meth:`RunningEmulator.schedule_outage`): ``"503"`` makes create and fetch answer 503 (no
  ``Retry-After``) while the other routes work; ``"refuse"`` is an outage at the TCP level: the
  port stops listening (connecting gets ECONNREFUSED) and the open connections, keep-alive ones
  included, are closed, then the same port listens again at the window's end. Nothing answers
  during it, not even ``/health`` or ``/_emulator/*`` (use :meth:`RunningEmulator.stats`).
  Refuse needs a server that owns its socket: :func:`run_emulator_in_thread` or the CLI
  (anything started by :func:`~klingfx_emulator.server.start_site`); with aiohttp's test server it
  is an error;
* Kling's limits on photos (``check_images``, default on; the CLI's ``--no-check-images`` turns
  it off): every photo the emulator obtains is checked by
  :func:`airflow_provider_klingfx.images.check_image`, the same code the operator uses: JPEG or PNG
  by content, at most 10 MB (10,000,000 bytes), each side at least 300 px, aspect ratio within 2.5:1. A photo
  breaking one makes the generation report ``queued``, ``generating``, then ``error`` (no video)
  with ``{"detail": [{"loc": ["body", "image_url"(, index when image_url was an array)], "msg":
  "image N (<url>) is ...", "type": "image_validation_error", "input": <url>}]}`` or, with
  ``error_shape="name_message"``, ``{"name": "ImageValidationError", "message": ...}``; ``<url>``
  is shown as ``redact_url`` shows it (no query). A photo that cannot be downloaded at all
  (refused, unknown host, timeout, 404...) is not checked: it gets the placeholder frame, so offline
  tests with unreachable example URLs keep working. ``render="off"`` downloads nothing, so checks
  nothing; ``lazy`` (with the check on) downloads and checks at submission, reports ``generating``
  until that is done, and renders on the first download;
* ``data:`` URIs in ``image_url`` (``accept_data_uris``, default off; the CLI's
  ``--accept-data-uris``): off, a create with one is refused with 422 in the configured error body
  (path/loc at the element; nothing charged); on, ``data:image/<type>;base64,<data>`` is accepted
  and its bytes are the photo (checked and rendered), a malformed one gets 422. Request bodies up
  to 64 MiB are read. A data URI is never echoed: answers, logs, the state and the admin endpoints
  show it as its media type and length;
* admin endpoints without auth: ``GET /_emulator/stats``, ``GET /_emulator/generation?generation_id=``
  (what the emulator did with one generation: ``{"id", "status", "model", "effect_scene",
  "duration", "image_urls" (shown without query), "rendered", "file_size", "fallback_images" (0-based
  positions of photos replaced by the placeholder frame), "image_sha256" (by position, the SHA-256
  of each photo it got whole, or null: tells which bytes reached it), "image_error" (null or
  ``{"index", "rule", "message"}``), "render_error"}``; 404 for an unknown id; also
  :meth:`RunningEmulator.generation`), ``POST /_emulator/faults``,
  ``POST /_emulator/outage`` (``{"start_in": s, "duration": s, "mode": "503"|"refuse"}``, answers
  the window ``{"start", "end", "mode"}``; 400 on bad input), ``POST /_emulator/reset``, and
  ``GET /health``.

``GET /_emulator/stats`` answers ``{"submissions": <accepted creates>, "requests": [{"method",
"path", "query_generation_id", "client_request_id", "status", "fault"}, ...], "faults_injected": n,
"generations": {id: status}}`` plus ``requests_total``, ``renders_pending``, ``credits_spent``,
``credits_remaining``, ``fault_rules``, ``rate_limited`` (429s the rate limit sent), ``outages``
(the windows, ``[{"start", "end", "mode"}]``), ``outage_active`` (``"503"``, ``"refuse"`` or
null), ``outage_rejected`` (503s a 503 outage sent) and ``outage_connections_dropped`` (connections
a refuse outage closed); its statuses are always the canonical words, whatever the answers say.
Requests to ``/_emulator/*`` and ``/health`` are not recorded; a dropped connection is recorded
with ``"status": null``. ``POST /_emulator/reset`` forgets generations, videos, records and
counters, restores the credit budget, refills the rate-limit buckets, re-arms the configured fault
rules and brings back the configured outage windows, counted from the reset. A request still in
flight across a reset (a ``slow`` fault's) is closed without an answer and leaves no trace: no
record, no generation, no charge.

Face detection rule: the emulator has no face detector. An image "has no face" when its URL
contains ``noface`` (case-insensitive). A two-person scene (``hug``, ``kiss``, ``heart_gesture``)
given such an image ends in status ``error`` with the face-detection error, in the configured
shape: ``{"detail": [{"loc": ["body", "image_url"], "msg": "Could not detect face in the image",
"type": "face_detection_error", "input": <url>}]}`` (default, as seen in practice) or the schema's
``{"name": "FaceDetectionError", "message": "Could not detect face in the image"}``. Other scenes
render such an image normally.

Input images are downloaded by the emulator over http(s), their URLs sent byte for byte (5 s
timeout; it reads no more than ``max_image_bytes``, 10 MB, plus one byte of each), so presigned
URLs (S3, GCS...) work as they do with the vendor; one that can't be downloaded, or (with
``check_images`` off) can't be decoded, is replaced by a placeholder frame naming the scene. Image
URLs reach its logs as ``redact_url`` shows them: never a query (a presigned URL's signature) nor
user info. Only run it where the clients are trusted: it fetches whatever image URL it is given.
It never logs request headers, so neither the ``Authorization`` header nor the key reach a log;
it records no request bodies.

Importing this package imports aiohttp but neither PyAV nor Pillow: they are loaded when the first
video or sample image is rendered.
"""

from __future__ import annotations

from klingfx_emulator.config import API_KEY_ENV, DEFAULT_API_KEY, EmulatorConfig, FaultRule, Outage
from klingfx_emulator.routes import create_app
from klingfx_emulator.server import (
    ACCESS_LOG_FORMAT,
    RunningEmulator,
    RunningServer,
    run_app_in_thread,
    run_emulator_in_thread,
)
from klingfx_emulator.state import STATE_KEY, EmulatorState, GenerationRecord, ImageProblem
from klingfx_emulator.validation import validate_create_body

__version__ = "0.3.0"

__all__ = [
    "ACCESS_LOG_FORMAT",
    "API_KEY_ENV",
    "DEFAULT_API_KEY",
    "STATE_KEY",
    "EmulatorConfig",
    "EmulatorState",
    "FaultRule",
    "GenerationRecord",
    "ImageProblem",
    "Outage",
    "RunningEmulator",
    "RunningServer",
    "create_app",
    "run_app_in_thread",
    "run_emulator_in_thread",
    "validate_create_body",
]
