"""The deferrable operator that renders a Kling v1.6 effects video from one or two photos.

Kept light at import time: the DAG processor imports DAG files constantly, so the hook (requests,
aiohttp, tenacity) and the trigger are imported only when a task runs.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, BaseOperatorLink

from airflow_provider_klingfx._compat import (
    AirflowFailException,
    AirflowSkipException,
    AirflowTaskTimeout,
)
from airflow_provider_klingfx.domain import (
    DEFAULT_DURATION,
    MAX_PRESIGN_SECONDS,
    PHOTO_URL,
    STANDARD_EFFECTS_MODEL,
    TWO_PERSON_SCENES,
    EffectRequest,
    GenerationError,
    KlingFxAmbiguousSubmissionError,
    KlingFxAPIError,
    KlingFxAuthError,
    KlingFxConnectionConfigError,
    KlingFxError,
    KlingFxGenerationFailedError,
    KlingFxInvalidInputError,
    KlingFxReattachElsewhereError,
    KlingFxRetryWouldResubmitError,
    KlingFxTimeoutError,
    Usage,
    Video,
    abandoned_notice,
    client_request_id,
    merge_usage,
    photo_kind,
    redact_url,
    redact_urls,
)

if TYPE_CHECKING:
    from airflow.sdk import Context, ObjectStoragePath
    from airflow.sdk.types import TaskInstanceKey  # type: ignore[attr-defined]  # 3.1 keeps it elsewhere

    from airflow_provider_klingfx.hooks.klingfx import KlingFxHook

#: XCom keys this provider pushes.
XCOM_GENERATION_ID = "generation_id"
XCOM_VIDEO = "video"
XCOM_USAGE = "usage"
XCOM_OUTPUT_PATH = "output_path"
#: What was asked (scene, model, duration, photos as they may be shown), pushed before anything else.
XCOM_REQUEST = "request"
#: Why the task failed (``{"type", "message", "reason"}``; ``reason``: the vendor's own words for a
#: generation it failed, else None), pushed as it fails.
XCOM_ERROR = "error"
#: Key in ``task_state_store`` (Airflow 3.3+) under which the generation id survives task retries.
STATE_STORE_KEY = "klingfx_generation"
#: Extra time the framework's defer timeout allows past the trigger's own deadline, so the
#: trigger (which reports the generation id and last status) normally ends the wait, not Airflow.
DEFER_TIMEOUT_GRACE = timedelta(minutes=5)


class KlingFxVideoLink(BaseOperatorLink):
    """ "Kling video" button on the task page: opens the generated video."""

    name = "Kling video"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        """The video URL from XCom ``video``; empty (no button) until the generation completes."""
        from airflow.sdk.execution_time.xcom import XCom

        video = XCom.get_value(ti_key=ti_key, key=XCOM_VIDEO)
        if isinstance(video, dict) and isinstance(video.get("url"), str):
            return video["url"]
        return ""


def _seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _task_state_store(context: Context) -> Any:
    # Airflow 3.3+ only; absent on 3.1/3.2, where a retry cannot find what an earlier try paid for.
    return context.get("task_state_store")  # type: ignore[call-overload]


def raise_for_event(event: dict[str, Any] | None) -> tuple[str, Video, Usage | None]:
    """Turn a trigger event into the finished generation's id, video and usage, or its typed error.

    :param event: the event the trigger yielded.
    :raises KlingFxGenerationFailedError: the vendor failed the generation.
    :raises KlingFxTimeoutError: the deadline passed.
    :raises KlingFxAPIError: the API refused the fetch (e.g. the key was revoked meanwhile).
    """
    if not isinstance(event, dict):
        raise KlingFxError(f"unexpected trigger event: {event!r}")
    status = event.get("status")
    gen_id = str(event.get("generation_id", "?"))
    if status == "success":
        return gen_id, Video.from_dict(event["video"]), Usage.from_dict(event.get("usage"))
    if status == "timeout":
        raise KlingFxTimeoutError(gen_id, float(event.get("waited_seconds") or 0.0), event.get("last_status"))
    if status == "error":
        kind = event.get("error_kind")
        if kind == "generation_failed":
            raise KlingFxGenerationFailedError(gen_id, str(event.get("reason")), event.get("error_type"))
        message = str(event.get("message") or "unknown error")
        if kind == "connection_config":
            raise KlingFxConnectionConfigError(message)
        if isinstance(event.get("status_code"), int):
            cls = KlingFxAuthError if kind == "auth" else KlingFxAPIError
            raise cls(
                event["status_code"],
                str(event.get("vendor_message") or message),
                request_id=event.get("request_id"),
                method="GET",
                path=str(event.get("path") or ""),
            )
        raise KlingFxError(f"polling generation {gen_id} failed: {message}")
    raise KlingFxError(f"unexpected trigger event status {status!r} for generation {gen_id}")


def request_summary(request: EffectRequest, *, checked: bool = False) -> dict[str, Any]:
    """What XCom ``request`` holds: the scene, model, duration and photos of a request.

    Each photo as it may be shown (``scheme://host/path``), and, where the views can show a
    thumbnail without a credential, where it is: an http(s) URL that has no query (the browser shows
    it from there), or, once ``checked``, a storage or local path (which the api-server reads only
    under the prefixes its admin allows).

    :param request: the validated request.
    :param checked: every photo passed the checks before paying (JPEG or PNG, within Kling's limits).
    """
    photos = []
    for ref in request.image_urls:
        shown = redact_url(ref)
        is_url = photo_kind(ref) == PHOTO_URL
        thumbnail = ref if (is_url and shown == ref) or (checked and not is_url) else None
        photos.append({"shown": shown, "thumbnail": thumbnail})
    return {
        "effect_scene": request.effect_scene,
        "model": request.model,
        "duration": request.duration,
        "photos": photos,
    }


class KlingFxResultMixin:
    """Delivers a finished generation, alike for the operator and the sensor: its XComs, the log line
    with its cost, the saved copy at ``output_path`` and the Asset outlets' events."""

    log: Any
    hook: Any
    output_path: Any
    outlets: Any
    delivered: Delivered | None

    def _push_result(self, context: Context, generation_id: str, video: Video, usage: Usage | None) -> str:
        ti = context["ti"]
        ti.xcom_push(key=XCOM_VIDEO, value=video.to_dict())
        size = f"{video.file_size / 1e6:.1f} MB" if video.file_size else "size not reported"
        if usage is not None:
            ti.xcom_push(key=XCOM_USAGE, value=usage.to_dict())
            self.log.info(
                "Generation %s completed: %s (%s); cost: %s credits%s",
                generation_id,
                video.url,
                size,
                "unknown" if usage.credits_used is None else f"{usage.credits_used:g}",
                "" if usage.usd_spent is None else f", ${usage.usd_spent:g}",
            )
        else:
            self.log.info(
                "Generation %s completed: %s (%s); the API reported no usage", generation_id, video.url, size
            )
        return video.url

    def _deliver(self, context: Context, generation_id: str, video: Video, usage: Usage | None) -> str:
        url = self._push_result(context, generation_id, video, usage)
        saved: str | None = None
        if self.output_path:
            from airflow_provider_klingfx.media import save_video

            saved = save_video(self.hook, generation_id, video, self.output_path, log=self.log)
            context["ti"].xcom_push(key=XCOM_OUTPUT_PATH, value=saved)
        self._describe_outlets(context, generation_id, video, saved)
        self.delivered = Delivered(generation_id, video.url, saved)
        return url

    def _describe_outlets(
        self, context: Context, generation_id: str, video: Video, saved: str | None
    ) -> None:
        """Attach the new video to each Asset outlet's event, for DAGs scheduled on that Asset."""
        if not self.outlets:
            return
        from airflow.sdk import Asset

        extra = {"generation_id": generation_id, "video_url": video.url, "output_path": saved}
        for outlet in self.outlets:
            if isinstance(outlet, Asset):
                context["outlet_events"][outlet].extra.update(extra)


@dataclass(frozen=True)
class Delivered:
    """What a successful run of :class:`KlingFxEffectOperator` delivered (for OpenLineage).

    :param generation_id: the vendor's generation id.
    :param video_url: the vendor's video URL.
    :param output_path: where the video was saved, if it was.
    """

    generation_id: str
    video_url: str
    output_path: str | None


@dataclass
class _Claim:
    """This run's hold on a request in the generation registry, or what it found there (``reused``)."""

    registry: Any
    key: str
    owner: str
    reused: dict[str, Any] | None = None

    def record(self, generation_id: str) -> None:
        self.registry.record(self.key, self.owner, generation_id)

    def release(self) -> None:
        self.registry.release(self.key, self.owner)


class KlingFxEffectOperator(KlingFxResultMixin, BaseOperator):
    """Render a Kling v1.6 effects video (hug, kiss, squish, ...) from one or two photos.

    Validates the inputs (before any paid call), submits the generation, pushes XCom
    ``generation_id``, then waits for the video: in the triggerer (``deferrable=True``, the
    default, which frees the worker slot for the ~2 minutes a generation takes) or on the worker.
    Returns the video URL (XCom ``return_value``) and pushes XCom ``video`` (url, content_type,
    file_name, file_size) and ``usage`` when the API reports it. XComs ``request`` (what was asked)
    and, on failure, ``error`` (why) feed the Kling video tab and gallery.

    A vendor-side failure (``status: error``, e.g. no face found) fails the task without retries:
    the same photos would fail again.

    :param effect_scene: the scene, e.g. ``hug``, ``kiss``, ``heart_gesture`` (two photos), ``squish``,
        ``expansion`` (one photo), or any of the 80 names in
        :data:`airflow_provider_klingfx.domain.EFFECT_SCENES`. Templated.
    :param image_urls: one photo or a list of one or two; for two-person scenes the first is placed
        on the left. A photo is an http(s) URL (sent as given), an object-storage path
        (``s3://[conn_id@]bucket/key``, ``gs://…`` or any ``ObjectStoragePath``: checked, then sent
        as a short-lived presigned URL), or a local file (absolute path or ``file://`` URL: needs
        ``inline_base64_images``). Templated (a rendered ``"['https://…', …]"`` string is accepted).
    :param inline_base64_images: send local photos, and storage photos whose store cannot presign,
        inside the request as base64 ``data:`` URIs. The vendor documents base64 photos for its
        image-to-video model, not for the effects models, hence opt-in. Default False: a local photo
        fails the task before any request, saying so.
    :param check_image_urls: also check http(s) photos against Kling's limits before paying,
        reading only their header (a ranged GET). Storage and local photos are always checked.
    :param presign_expires: how long presigned photo URLs stay valid, seconds or a timedelta
        (default one hour; at most 7 days).
    :param duration: video length in seconds, 5 or 10. Templated.
    :param model: ``klingai/kling-video-v1.6-standard-effects`` (default) or
        ``klingai/kling-video-v1.6-pro-effects``. Templated.
    :param klingfx_conn_id: the ``klingfx`` connection holding the API key.
    :param deferrable: wait in the triggerer (default). Pass ``False`` if your deployment runs no
        triggerer; the task then polls on the worker with the same semantics.
    :param poll_interval: seconds between status checks.
    :param timeout: seconds (or a timedelta) from submission to completion before the task fails.
    :param output_path: where to save the video (``str`` or ``ObjectStoragePath``, any scheme Airflow's
        object storage supports; ``s3://<conn_id>@bucket/key`` picks a connection). Templated. When
        set, the video is streamed there after completion and XCom ``output_path`` names it.
    :param durable: durable execution, as Airflow's own operators name it (default True): the
        generation's id is kept in the task state store (Airflow 3.3+), and a retry of the task
        reattaches to the generation an earlier try paid for, if it was made from the same request at
        the same API, instead of submitting (and paying for) a new one. Before Airflow 3.3 there is no
        store, so a failure after the submission fails the task without retries, naming the
        generation. ``False``: every try submits a new generation and failures are retried like any
        other, each retry paying again.
    :param wait_for_completion: wait for the video (default). ``False``: submit, push XCom
        ``generation_id`` (also the return value) and end, for a
        :class:`~airflow_provider_klingfx.sensors.klingfx.KlingFxGenerationSensor` to wait for it
        elsewhere in the DAG ("submit and sense").
    :param generation_registry: never pay twice for the same photos across DAG runs (event-driven
        pipelines deliver at least once): a folder (``s3://[conn_id@]bucket/prefix/``, ``gs://…`` or
        ``file:///…``) with one record per request paid for, keyed by the scene, model, duration and
        each photo's version (an object's version id or ETag, a local file's content). A run asking
        for the same photos delivers the generation recorded there instead of submitting; of two runs
        starting at once, the store lets one create the record (see
        :mod:`~airflow_provider_klingfx.registry`). Templated. Default: none.
    :param allowed_photo_locations: where photos may come from: storage prefixes with their
        connection (``s3://aws_photos@people/inbox/``), URL prefixes (``https://cdn.example.com/p/``)
        or local folders (``file:///data/photos/``). A photo outside them fails the task before
        anything is read or paid. Set it whenever photos come from a DAG-run Param: whoever may
        trigger the DAG chooses the Param, and could otherwise name any connection and object the
        worker can read, whose presigned URL the vendor would get. Templated (from an admin's Variable,
        say; never from Params); a list or one comma-separated string. Default: no limit.

    Give the operator ``outlets=[Asset(...)]`` to announce each new video: the asset event's extra
    holds ``generation_id``, ``video_url`` and ``output_path``, so a DAG scheduled on that Asset
    finds the file in ``triggering_asset_events``.
    """

    template_fields: Sequence[str] = (
        "effect_scene",
        "image_urls",
        "duration",
        "model",
        "output_path",
        "allowed_photo_locations",
        "generation_registry",
    )
    operator_extra_links = (KlingFxVideoLink(),)
    ui_color = "#f6d1ff"

    def __init__(
        self,
        *,
        effect_scene: str,
        image_urls: str | list[str],
        duration: int = DEFAULT_DURATION,
        model: str = STANDARD_EFFECTS_MODEL,
        klingfx_conn_id: str = "klingfx_default",
        deferrable: bool = True,
        poll_interval: float = 10,
        timeout: float | timedelta = 1800,
        output_path: str | ObjectStoragePath | None = None,
        inline_base64_images: bool = False,
        check_image_urls: bool = False,
        presign_expires: float | timedelta = 3600,
        allowed_photo_locations: str | Sequence[str] | None = None,
        durable: bool = True,
        wait_for_completion: bool = True,
        generation_registry: str | ObjectStoragePath | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.effect_scene = effect_scene
        self.image_urls = image_urls
        self.duration = duration
        self.model = model
        self.klingfx_conn_id = klingfx_conn_id
        self.deferrable = deferrable
        self.poll_interval = float(poll_interval)
        self.timeout = _seconds(timeout)
        self.output_path = output_path
        self.inline_base64_images = inline_base64_images
        self.check_image_urls = check_image_urls
        self.presign_expires = _seconds(presign_expires)
        self.allowed_photo_locations = allowed_photo_locations
        self.durable = durable
        self.wait_for_completion = wait_for_completion
        self.generation_registry = generation_registry
        self._generation_id: str | None = None
        #: Set when this run delivered its video (the OpenLineage output).
        self.delivered: Delivered | None = None
        if self.poll_interval <= 0:
            raise KlingFxInvalidInputError(f"poll_interval must be positive, got {poll_interval!r}")
        if self.timeout <= 0:
            raise KlingFxInvalidInputError(f"timeout must be positive, got {timeout!r}")
        if not 60 <= self.presign_expires <= MAX_PRESIGN_SECONDS:
            raise KlingFxInvalidInputError(
                f"presign_expires must be between 60 seconds and 7 days, got {presign_expires!r}"
            )

    @property
    def hook(self) -> KlingFxHook:
        """A hook on this operator's connection (created per call: hooks are cheap, sessions pooled)."""
        from airflow_provider_klingfx.hooks.klingfx import KlingFxHook

        return KlingFxHook(self.klingfx_conn_id)

    def _client_request_id(self, context: Context) -> str:
        ti = context["ti"]
        return client_request_id(
            ti.dag_id, ti.run_id, ti.task_id, getattr(ti, "map_index", -1), getattr(ti, "try_number", 1)
        )

    def _reattach(self, context: Context, hook: KlingFxHook, request: EffectRequest) -> dict[str, Any] | None:
        """Durable execution: find a generation an earlier try (or run before a clear) submitted for
        the same request.

        Airflow 3.3+ keeps ``task_state_store`` across retries and clears of a task instance. The
        stored generation is reused only if it was made from the same request (same fingerprint) at
        the same API, and is still running or done; otherwise a new one is submitted, and the log
        says why. Airflow 3.3's ``ResumableJobMixin`` builds the same on the same store, for the sync
        path only; it is not used here: the deferrable path (the default) is outside it, its record
        is a bare job id where reattaching safely needs the request's fingerprint and the API's URL
        beside it, and Airflow 3.1/3.2 do not have it.

        :returns: the stored record (``generation_id``, ``submitted_at``, ``usage``), or None.
        """
        store = _task_state_store(context) if self.durable else None
        stored = store.get(STATE_STORE_KEY) if store is not None else None
        if not isinstance(stored, dict) or not stored.get("generation_id"):
            return None
        gen_id = str(stored["generation_id"])
        made_at, now_at = stored.get("api"), hook.settings.create_url
        if made_at and made_at != now_at:
            # The API there would not know the id (404), which would look like a reason to pay again.
            raise KlingFxReattachElsewhereError(gen_id, str(made_at), now_at, self.klingfx_conn_id)
        if stored.get("request") != request.fingerprint():
            self.log.info(
                "Not reusing generation %s from an earlier try: the request changed since (scene, "
                "photos, duration or model); submitting a new generation",
                gen_id,
            )
            return None
        try:
            generation = hook.get_generation(gen_id)
        except KlingFxAPIError as exc:
            # Only an API that no longer knows the id justifies paying again; any other failure
            # propagates, and the next retry looks again.
            if exc.status_code != 404:
                raise
            self.log.warning(
                "A previous try's generation %s is unknown to the API (%s); submitting anew", gen_id, exc
            )
            return None
        if generation.is_failed:
            reason = (generation.error or GenerationError("no reason given")).reason
            self.log.warning(
                "A previous try's generation %s failed at the vendor (%s); submitting anew", gen_id, reason
            )
            return None
        self.log.info(
            "Reattaching to generation %s submitted by a previous try (status %s); not submitting again",
            gen_id,
            generation.status,
        )
        return stored

    def _submit(self, context: Context, hook: KlingFxHook, request: EffectRequest) -> dict[str, Any]:
        from airflow_provider_klingfx.photos import prepare_photos

        # Every photo is checked (and storage photos presigned) before the paid call; the record
        # keeps the fingerprint of the photos as given, so a retry reattaches whatever the URLs.
        sendable = prepare_photos(
            request,
            hook,
            inline_base64=self.inline_base64_images,
            check_urls=self.check_image_urls,
            presign_seconds=int(self.presign_expires),
            log=self.log,
        )
        # Only photos that passed the checks are offered to the views as thumbnails.
        context["ti"].xcom_push(key=XCOM_REQUEST, value=request_summary(request, checked=True))
        trace_id = self._client_request_id(context)
        self.log.info(
            "Submitting %s %s (%ss) with %d image(s); X-Client-Request-Id %s",
            request.model,
            request.effect_scene,
            request.duration,
            len(request.image_urls),
            trace_id,
        )
        submission = hook.submit(sendable, client_request_id=trace_id)
        self.log.info("Submitted generation %s", submission.id)
        return {
            "generation_id": submission.id,
            "submitted_at": time.time(),
            "request": request.fingerprint(),
            "usage": submission.usage.to_dict() if submission.usage else None,
            # Where it was made: a retry whose connection points elsewhere must not pay again.
            "api": hook.settings.create_url,
        }

    def _claim(self, context: Context, request: EffectRequest) -> _Claim | None:
        """With ``generation_registry``: claim this request's record, or find the generation another
        run (or try) recorded for the same photos; None without a registry."""
        if not self.generation_registry:
            return None
        from airflow_provider_klingfx.registry import GenerationRegistry, photo_version, request_key

        ti = context["ti"]
        owner = client_request_id(ti.dag_id, ti.run_id, ti.task_id, getattr(ti, "map_index", -1))
        registry = GenerationRegistry(self.generation_registry)
        key = request_key(request, [photo_version(ref) for ref in request.image_urls])
        found = registry.claim(key, owner)
        if found is None:
            return _Claim(registry, key, owner)
        gen_id = str(found["generation_id"])
        self.log.info(
            "Delivering generation %s, paid for by %s for the same photos, scene, model and duration "
            "(generation registry %s); not submitting again",
            gen_id,
            found.get("claimed_by"),
            key,
        )
        reused = {
            "generation_id": gen_id,
            "submitted_at": found.get("recorded_at"),
            "request": request.fingerprint(),
            "api": self.hook.settings.create_url,
        }
        return _Claim(registry, key, owner, reused)

    def execute(self, context: Context) -> str:
        """Validate, submit (or reattach), then wait for the video."""
        with self._failure_reported(context):
            return self._execute(context)

    def _execute(self, context: Context) -> str:
        from airflow_provider_klingfx.photos import parse_allowed_locations, require_allowed, require_sendable

        request = EffectRequest.build(self.effect_scene, self.image_urls, self.duration, self.model)
        context["ti"].xcom_push(key=XCOM_REQUEST, value=request_summary(request))
        require_allowed(request, parse_allowed_locations(self.allowed_photo_locations))
        require_sendable(request, inline_base64=self.inline_base64_images)
        if request.duration == 10 and request.effect_scene not in TWO_PERSON_SCENES:
            self.log.warning(
                "Kling's spec allows 10 s only for the two-photo scenes (hug, kiss, heart_gesture); the "
                "AI/ML API's schema allows it for %s too, but the vendor may fail it: use 5 if it does",
                request.effect_scene,
            )
        hook = self.hook
        hook.settings  # noqa: B018 - validate the connection (key, URL) before any HTTP call
        claim = self._claim(context, request)
        record = claim.reused if claim else None
        record = record or self._reattach(context, hook, request)
        submitted = record is None
        if record is not None:
            # Whoever paid for it checked these very photos (same fingerprint, or same versions).
            context["ti"].xcom_push(key=XCOM_REQUEST, value=request_summary(request, checked=True))
        else:
            try:
                record = self._submit(context, hook, request)
            except BaseException as exc:
                if claim and not isinstance(exc, KlingFxAmbiguousSubmissionError):
                    claim.release()  # nothing was paid: the next run may claim these photos
                raise
        gen_id = str(record["generation_id"])
        self._generation_id = gen_id
        with self._paid_generation(context, gen_id):
            store = _task_state_store(context) if self.durable else None
            if (submitted or (claim and claim.reused)) and store is not None:
                # Inside the guard: if the record cannot be written, a retry could not find this paid
                # generation, so the failure must not be retried (the guard says so, naming it).
                store.set(STATE_STORE_KEY, record)
            if claim and not claim.reused:
                claim.record(gen_id)
            started_at = time.time()
            submitted_at = float(record.get("submitted_at") or started_at)
            submission_usage = Usage.from_dict(record.get("usage"))
            ti = context["ti"]
            ti.xcom_push(key=XCOM_GENERATION_ID, value=gen_id)
            # The extra link is evaluated after a run that ends by deferring too; clear what it reads
            # so it never shows a previous try's video.
            ti.xcom_push(key=XCOM_VIDEO, value=None)
            if not self.wait_for_completion:
                self.log.info(
                    "Not waiting for generation %s (wait_for_completion=False): a "
                    "KlingFxGenerationSensor on this task's return value delivers its video",
                    gen_id,
                )
                return gen_id
            if not self.deferrable:
                generation = hook.wait_for_generation(
                    gen_id,
                    poll_interval=self.poll_interval,
                    timeout=self.timeout,
                    submitted_at=submitted_at,
                    started_at=started_at,
                )
                # wait_for_generation returns only a done generation (it raises for a failed one).
                assert generation.video is not None
                return self._deliver(
                    context, gen_id, generation.video, merge_usage(submission_usage, generation.usage)
                )
            from airflow_provider_klingfx.triggers.klingfx import KlingFxGenerationTrigger

            self.defer(
                trigger=KlingFxGenerationTrigger(
                    generation_id=gen_id,
                    deadline=started_at + self.timeout,
                    klingfx_conn_id=self.klingfx_conn_id,
                    poll_interval=self.poll_interval,
                    submitted_at=submitted_at,
                    usage=record.get("usage"),
                ),
                method_name="execute_complete",
                timeout=timedelta(seconds=self.timeout) + DEFER_TIMEOUT_GRACE,
            )
        raise AssertionError("defer() raises")  # pragma: no cover

    @staticmethod
    def _recorded(context: Context, generation_id: str) -> bool:
        """Whether a retry will find ``generation_id`` in ``task_state_store`` (Airflow 3.3+)."""
        store = _task_state_store(context)
        if store is None:
            return False
        try:
            stored = store.get(STATE_STORE_KEY)
        except Exception:
            return False  # the store itself fails: a retry could not read it either
        return isinstance(stored, dict) and str(stored.get("generation_id")) == generation_id

    @contextmanager
    def _paid_generation(self, context: Context, generation_id: str | None) -> Iterator[None]:
        """Wrap what happens after a paid submission: no failure may be retried unless the retry can
        find what was paid for.

        A retry reattaches only to a generation recorded in ``task_state_store`` (Airflow 3.3+). Where
        it is not recorded (Airflow 3.1/3.2 have no store; or writing the record failed), a retry would
        submit and pay for a new one, so a failure Airflow would retry (a timeout, a download error, an
        API error, ``execution_timeout``, the trigger's own failure) fails the task without retries,
        naming the generation. Where it is recorded, failures pass unchanged: the retry reattaches.

        :param context: the task's context.
        :param generation_id: the paid generation, when known.
        """
        try:
            yield
        except (Exception, AirflowTaskTimeout) as exc:
            retryable = not isinstance(exc, AirflowFailException | AirflowSkipException)
            if not retryable or generation_id is None or not self.durable:
                raise  # (not durable: the user asked for every retry to submit, and pay, again)
            if self._recorded(context, generation_id):
                raise
            if isinstance(exc, AirflowTaskTimeout):
                self.on_kill()  # Airflow calls it for the timeout it sees; it will see this error instead
            raise KlingFxRetryWouldResubmitError(generation_id, exc) from exc

    def on_kill(self) -> None:
        """Killed while polling on the worker (``execution_timeout``, marked failed): say what is left."""
        if self._generation_id:
            self.log.warning(abandoned_notice(self._generation_id))

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Context) -> Any:
        """Resume after deferral, under the same no-second-payment rule as :meth:`execute`.

        Airflow itself may resume the task to fail it (its defer timeout, or the trigger crashed);
        that failure is retryable, so on Airflow 3.1/3.2 it too must not lead to a new submission.
        The generation id comes from the event, else from this try's XCom, pushed before deferring.
        """
        event = (next_kwargs or {}).get("event")
        gen_id = event.get("generation_id") if isinstance(event, dict) else None
        if gen_id is None:
            ti = context["ti"]
            gen_id = ti.xcom_pull(
                task_ids=ti.task_id, key=XCOM_GENERATION_ID, map_indexes=getattr(ti, "map_index", -1)
            )
        with self._failure_reported(context), self._paid_generation(context, str(gen_id) if gen_id else None):
            return super().resume_execution(next_method, next_kwargs, context)

    @contextmanager
    def _failure_reported(self, context: Context) -> Iterator[None]:
        """Push XCom ``error`` when the task fails, for the Kling gallery: the error's type, its
        message and, for a generation the vendor failed, the vendor's reason alone.

        The message is the exception's own line, which never holds a key or a presigned URL.
        """
        try:
            yield
        except AirflowSkipException:
            raise
        except (Exception, AirflowTaskTimeout) as exc:
            reason = getattr(exc, "reason", None)
            value = {
                "type": type(exc).__name__,
                "message": redact_urls(str(exc))[:2000],
                "reason": redact_urls(reason)[:2000] if isinstance(reason, str) else None,
            }
            with contextlib.suppress(Exception):  # reporting must not hide the failure itself
                context["ti"].xcom_push(key=XCOM_ERROR, value=value)
            raise

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> str:
        """Resume after the trigger: return the video URL, or raise the typed error the event names."""
        return self._deliver(context, *raise_for_event(event))

    def get_openlineage_facets_on_start(self) -> Any:
        """OpenLineage (called by its provider, if enabled): the photos as input datasets, as given
        (``s3://bucket`` + key, never a presigned URL), and ``output_path`` (if set) as the output.

        :returns: an ``OperatorLineage``; empty, with a warning in the log, if it cannot be made.
        """
        from airflow_provider_klingfx._lineage import lineage_on_start

        return lineage_on_start(self)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: the photos as inputs; the saved video, else the vendor's video URL without
        its query, as the output; the generation id as a run facet.

        :param task_instance: the finished task instance.
        :returns: an ``OperatorLineage``; empty, with a warning in the log, if it cannot be made.
        """
        from airflow_provider_klingfx._lineage import lineage_on_complete

        return lineage_on_complete(self, task_instance)
