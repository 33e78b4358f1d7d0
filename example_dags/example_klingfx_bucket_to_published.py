"""From a bucket to a published video: a photo lands, a video is made, a person approves, it is published.

1. A photo is uploaded under ``incoming/`` of an S3 bucket; the bucket notifies an SQS queue.
2. The Asset ``klingfx_photo_uploads`` watches that queue (``AssetWatcher`` with common-messaging's
   ``MessageQueueTrigger``, in the triggerer): each message becomes an asset event, and each asset
   event a run of this DAG.
3. The run reads the S3 records out of the messages (an ``s3:TestEvent``, which S3 sends when the
   notification is set up, has none), makes the video (``KlingFxEffectOperator`` with
   ``generation_registry``) and a GIF preview of it (``KlingFxPreviewOperator``).
4. A person reviews it (``HITLOperator``, in the UI's *Required actions* or through the REST API):
   the request shows the GIF and links to the generation's **Kling video** tab.
5. ``@task.branch`` routes the answer: *Approve* copies the video to ``published/`` and emits an
   event on the Asset ``klingfx_published_videos``; *Reject* writes the reason to ``rejected/``.

**A run per message, not per batch.** ``max_messages=1`` makes each SQS message its own asset event:
one run, one review request and one line in the grid per photo, so a reviewer answers photo by photo
and one slow review holds up nothing else. A batch (``max_messages`` up to 10) saves SQS requests and
runs, but one run would then wait for every review of its batch. Airflow may still hand one run several
events (those that arrive before the scheduler creates the run), so the tasks map over the photos of
the run rather than assuming one: usually there is exactly one (map index 0).

**Delivery: at least once.** S3 notifications and SQS deliver at least once, and by default the
trigger deletes a message when it receives it, *before* the asset event is committed: a triggerer that
dies in between loses the photo (at most once). Here the trigger leaves the message in the queue
(``delete_message_on_reception=False``), hidden for ``visibility_timeout`` seconds, and the run deletes
it once it has claimed its photos; a message that is not deleted in time comes back and starts another
run. Duplicates cost nothing twice:

* a photo version (bucket, key, ETag) gets one review: the first run to claim it creates
  ``reviews/<name>.<etag>.json`` (an S3 create with ``If-None-Match: *``, atomic); a later run for the
  same version (a duplicate message, a redelivery) logs whose review it is and does nothing;
* a photo version is paid for once: ``generation_registry`` delivers the generation an earlier run paid
  for, should one ever ask again (the review claim deleted to review it anew, a cleared run).

Set up (``docs/bucket-to-published.rst`` runs all of it against moto and the emulator):

* a connection ``klingfx_default`` of type ``klingfx``;
* an AWS connection (``KLINGFX_AWS_CONN_ID``, default ``aws_default``) that may read and write the bucket
  and receive and delete the queue's messages;
* the bucket's ``s3:ObjectCreated:*`` notifications for the prefix ``incoming/`` sent to the queue;
* the environment of the DAG processor: ``KLINGFX_PHOTOS_QUEUE_URL`` (the queue's URL),
  ``KLINGFX_PHOTOS_BUCKET`` (the bucket), and optionally ``KLINGFX_QUEUE_WAITER_DELAY`` (seconds
  between two polls of an empty queue, default 5) and ``KLINGFX_QUEUE_VISIBILITY_TIMEOUT`` (default 120).
  They are read when the file is parsed, because the watcher's trigger is serialized then; the defaults
  let the file parse anywhere;
* the Variable ``klingfx_review_scene``: a one-photo scene (default ``squish``);
* ``[klingfx] views_read_prefixes = s3://<aws_conn_id>@<bucket>/videos/``, so the review shows the GIF
  (the api-server serves it; see the views' trust model);
* the ``events``, ``s3`` and ``preview`` extras, and a triggerer (the watcher runs there; on Airflow
  3.1 and 3.2 the review waits there too).

The DAG must be unpaused: a paused DAG's watcher does not run (messages wait in the queue).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any
from urllib.parse import quote, unquote_plus

import pendulum
from airflow.providers.common.messaging.triggers.msg_queue import MessageQueueTrigger
from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import Asset, AssetWatcher, Param, dag, task

from airflow_provider_klingfx.operators.klingfx import KlingFxEffectOperator
from airflow_provider_klingfx.operators.preview import KlingFxPreviewOperator

log = logging.getLogger(__name__)

QUEUE_URL = os.environ.get("KLINGFX_PHOTOS_QUEUE_URL", "http://127.0.0.1:5000/123456789012/klingfx-photos")
BUCKET = os.environ.get("KLINGFX_PHOTOS_BUCKET", "klingfx-photos")
AWS_CONN_ID = os.environ.get("KLINGFX_AWS_CONN_ID", "aws_default")
WAITER_DELAY = int(os.environ.get("KLINGFX_QUEUE_WAITER_DELAY", "5"))
VISIBILITY_TIMEOUT = int(os.environ.get("KLINGFX_QUEUE_VISIBILITY_TIMEOUT", "120"))

INCOMING, VIDEOS, PUBLISHED, REJECTED, REVIEWS = "incoming/", "videos/", "published/", "rejected/", "reviews/"
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
BUCKET_ROOT = f"s3://{AWS_CONN_ID}@{BUCKET}/"

# [START howto_operator_klingfx_bucket_watcher]
PHOTO_UPLOADS = Asset(
    name="klingfx_photo_uploads",
    uri=f"s3://{BUCKET}/{INCOMING}",
    watchers=[
        AssetWatcher(
            name="klingfx_photo_queue",
            trigger=MessageQueueTrigger(
                # scheme + sqs_queue: the form common-messaging 2.x keeps (never queue=...).
                scheme="sqs",
                sqs_queue=QUEUE_URL,
                aws_conn_id=AWS_CONN_ID,
                max_messages=1,  # one message, one asset event, one run
                waiter_delay=WAITER_DELAY,  # after an empty poll; the trigger's default is 60 s
                delete_message_on_reception=False,  # the run deletes it: at least once
                visibility_timeout=VISIBILITY_TIMEOUT,
            ),
        )
    ],
)
# [END howto_operator_klingfx_bucket_watcher]
PUBLISHED_VIDEOS = Asset(name="klingfx_published_videos", uri=f"s3://{BUCKET}/{PUBLISHED}")


def generation_kwargs(photo: dict[str, Any]) -> dict[str, Any]:
    """The photo and the video of one generation, as ``KlingFxEffectOperator`` arguments."""
    return {"image_urls": photo["photo"], "output_path": photo["video"]}


def saved_video(photo: dict[str, Any]) -> str:
    return photo["video"]


@dag(
    schedule=[PHOTO_UPLOADS],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    # No max_active_runs=1: runs wait for people, and photos arriving meanwhile must not wait for them.
    tags=["example", "klingfx", "media", "s3", "review"],
)
def example_klingfx_bucket_to_published():
    # [START howto_operator_klingfx_bucket_messages]
    @task(retries=2)
    def photos_in_messages(triggering_asset_events=None, run_id=None) -> list[dict[str, Any]]:
        """The photos this run reviews: one per new photo version in its messages (usually one).

        Claims each photo version's review, then deletes the messages from the queue (at least once:
        a message not deleted comes back after its visibility timeout, and its photo's claim makes
        that run a no-op).
        """
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook
        from airflow.providers.amazon.aws.hooks.sqs import SqsHook
        from botocore.exceptions import ClientError

        s3 = S3Hook(aws_conn_id=AWS_CONN_ID).get_conn()
        photos, receipts = [], []
        for events in (triggering_asset_events or {}).values():
            for event in events:  # a run can hold several events, an event several messages
                for message in event.extra.get("payload", {}).get("message_batch", []):
                    receipts.append(message["ReceiptHandle"])
                    try:
                        records = json.loads(message["Body"]).get("Records") or []
                    except (ValueError, AttributeError):
                        records = []  # not an S3 notification
                    if not records:
                        log.info("Message %s has no S3 records (e.g. s3:TestEvent)", message["MessageId"])
                    for record in records:
                        photo = _photo_of(record)
                        if photo and photo not in photos and _claim_review(s3, photo, run_id, ClientError):
                            photos.append(photo)
        sqs = SqsHook(aws_conn_id=AWS_CONN_ID).get_conn()
        for receipt in receipts:
            try:
                sqs.delete_message(QueueUrl=QUEUE_URL, ReceiptHandle=receipt)
            except ClientError as exc:  # redelivered meanwhile: that run deletes it
                log.warning("Could not delete a message (%s); its photo's claim absorbs the repeat", exc)
        log.info("Photos to review in this run: %s", [p["key"] for p in photos])
        return photos

    # [END howto_operator_klingfx_bucket_messages]

    photos = photos_in_messages()

    # [START howto_operator_klingfx_bucket_generate]
    generate = KlingFxEffectOperator.partial(
        task_id="generate",
        effect_scene="{{ var.value.get('klingfx_review_scene', 'squish') }}",
        allowed_photo_locations=BUCKET_ROOT + INCOMING,
        # A duplicate message, or two runs for the same photo version: one generation paid for.
        generation_registry=BUCKET_ROOT + "klingfx-registry/",
    ).expand_kwargs(photos.map(generation_kwargs))
    preview = KlingFxPreviewOperator.partial(task_id="preview", max_seconds=3).expand(
        video_path=photos.map(saved_video)
    )
    generate >> preview
    # [END howto_operator_klingfx_bucket_generate]

    # [START howto_operator_klingfx_bucket_review]
    @task
    def review_requests(photos: list[dict[str, Any]], dag_run=None) -> list[dict[str, str]]:
        """One review request per photo: Markdown with the GIF and a link to the Kling video tab."""
        from airflow.configuration import conf

        base = (conf.get("api", "base_url", fallback="") or "").rstrip("/")
        dag_id, run_id = dag_run.dag_id, dag_run.run_id
        requests = []
        for index, photo in enumerate(photos):
            # The UI's own links keep a run id's ":" and "+"; the views' media route takes any quoting.
            tab = f"{base}/dags/{dag_id}/runs/{quote(run_id, safe=':+')}/tasks/generate/mapped/{index}"
            tab += "/plugin/klingfx-video"
            ids = [quote(part, safe="") for part in (dag_id, run_id, "generate", str(index))]
            gif = f"{base}/klingfx/media/{'/'.join(ids)}/gif"
            body = (
                f"**Photo:** `{photo['key']}` (ETag `{photo['etag']}`)\n\n"
                f"![GIF preview of the generated video]({gif})\n\n"
                f"[Watch the video on the task's Kling video tab]({tab})\n\n"
                f"*Approve* publishes it as `{photo['published']}`; *Reject* records your reason "
                f"in `{photo['rejected']}`."
            )
            requests.append({"subject": f"Publish the video of {photo['key']}?", "body": body})
        return requests

    review = HITLOperator.partial(
        task_id="review",
        options=["Approve", "Reject"],
        # Optional: the UI requires a field whose schema does not allow null. Default "", not None:
        # Airflow 3.1's form sends an untouched None-valued field as its whole definition, which then
        # fails the task's validation of the answer.
        params={"reason": Param("", type=["null", "string"], description="Why, when you reject it")},
    ).expand_kwargs(review_requests(photos))
    preview >> review

    @task.branch
    def route(decisions: list[dict[str, Any]]) -> list[str]:
        """Publish what was approved, record what was rejected (a run of several photos may do both)."""
        chosen = {option for decision in decisions for option in decision["chosen_options"]}
        return [task_id for option, task_id in _ROUTES.items() if option in chosen]

    # [END howto_operator_klingfx_bucket_review]

    # [START howto_operator_klingfx_bucket_publish]
    @task(outlets=[PUBLISHED_VIDEOS])
    def publish(photos: list[dict[str, Any]], decisions: list[dict[str, Any]], outlet_events=None) -> list:
        """Copy each approved video to ``published/`` and announce them (one asset event)."""
        from airflow.sdk import ObjectStoragePath

        published = []
        for photo, decision in zip(photos, decisions, strict=True):
            if decision["chosen_options"] == ["Approve"]:
                ObjectStoragePath(photo["video"]).copy(ObjectStoragePath(photo["published"]))
                log.info("Published %s (approved by %s)", photo["published"], _who(decision))
                published.append({"photo": photo["key"], "video": photo["published"], "by": _who(decision)})
        outlet_events[PUBLISHED_VIDEOS].extra.update({"videos": published})
        return published

    @task
    def record_rejection(photos: list[dict[str, Any]], decisions: list[dict[str, Any]]) -> list:
        """Write why each rejected video was rejected to ``rejected/<name>.json``, and log it."""
        from airflow.sdk import ObjectStoragePath

        rejected = []
        for photo, decision in zip(photos, decisions, strict=True):
            if decision["chosen_options"] == ["Reject"]:
                reason = (decision.get("params_input") or {}).get("reason") or "(no reason given)"
                record = {
                    "photo": photo["key"],
                    "etag": photo["etag"],
                    "video": photo["video"],
                    "reason": reason,
                    "rejected_by": _who(decision),
                    "rejected_at": str(decision.get("responded_at")),
                }
                ObjectStoragePath(photo["rejected"]).write_text(json.dumps(record, indent=2))
                log.info("Rejected %s by %s: %s", photo["key"], record["rejected_by"], reason)
                rejected.append(record)
        return rejected

    route(review.output) >> [publish(photos, review.output), record_rejection(photos, review.output)]
    # [END howto_operator_klingfx_bucket_publish]


_ROUTES = {"Approve": "publish", "Reject": "record_rejection"}


def _photo_of(record: dict[str, Any]) -> dict[str, Any] | None:
    """The photo an S3 event record announces, with where its video and decision go; None if it is
    not a new photo under ``incoming/``."""
    if not str(record.get("eventName", "")).startswith("ObjectCreated"):
        return None
    bucket = record["s3"]["bucket"]["name"]
    key = unquote_plus(record["s3"]["object"]["key"])  # S3 URL-encodes keys in notifications
    # Dot segments are refused: the key names the video's, published copy's and decision's paths
    # too, and "incoming/../published/x.png" must not let an uploader write past the review.
    dotted = any(part in {".", ".."} for part in key.split("/"))
    if bucket != BUCKET or not key.startswith(INCOMING) or not key.lower().endswith(PHOTO_SUFFIXES) or dotted:
        log.info("Not a photo to review: s3://%s/%s", bucket, key)
        return None
    name = key.removeprefix(INCOMING).rsplit(".", 1)[0]
    etag = str(record["s3"]["object"].get("eTag") or "").strip('"')
    root = f"s3://{AWS_CONN_ID}@{bucket}/"
    return {
        "key": key,
        "etag": etag,
        "photo": root + key,
        "video": f"{root}{VIDEOS}{name}.mp4",
        "published": f"{root}{PUBLISHED}{name}.mp4",
        "rejected": f"{root}{REJECTED}{name}.json",
        "claim": f"{REVIEWS}{name}.{etag or 'no-etag'}.json",
    }


def _claim_review(s3: Any, photo: dict[str, Any], run_id: str, client_error: type[Exception]) -> bool:
    """Create the photo version's review claim; True if this run holds it (now or from a retry)."""
    body = json.dumps({"run_id": run_id, "photo": photo["key"], "etag": photo["etag"]})
    try:
        s3.put_object(Bucket=BUCKET, Key=photo["claim"], Body=body.encode(), IfNoneMatch="*")
        return True
    except client_error as exc:
        if exc.response.get("Error", {}).get("Code") not in (
            "PreconditionFailed",
            "ConditionalRequestConflict",
        ):
            raise
    holder = json.loads(s3.get_object(Bucket=BUCKET, Key=photo["claim"])["Body"].read()).get("run_id")
    if holder == run_id:
        return True
    log.info("%s (ETag %s) is reviewed in run %s already; skipping it", photo["key"], photo["etag"], holder)
    return False


def _who(decision: dict[str, Any]) -> str:
    user = decision.get("responded_by_user") or {}
    return str(user.get("name") or user.get("id") or "nobody (a default)")


example_klingfx_bucket_to_published()
