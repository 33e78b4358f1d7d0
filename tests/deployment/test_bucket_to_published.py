"""From a bucket to a published video, on real processes: ``example_klingfx_bucket_to_published``.

Airflow's api-server, dag-processor, scheduler and triggerer (SQLite, LocalExecutor: the harness of
test_deployment.py), a moto server with S3 and SQS on 127.0.0.1 that sends real S3 → SQS notifications,
and the emulator. Three photos are uploaded under ``incoming/`` and one of moto's own S3 event
messages is delivered a second time (as SQS may); then:

* exactly 3 generations are paid for (the emulator's count of paid submissions), and the duplicate
  message's run reviews nothing (the photo version's review claim is taken);
* one review is approved in Chromium on Airflow's *Required actions* page of the task, one through the
  REST API, one rejected through the REST API with a reason;
* exactly the two approved videos land in ``published/`` (and an event on the published Asset each),
  and the rejection's reason is recorded in ``rejected/``;
* the API key is in no log, XCom, table (but the connection's) or page.

Airflow 3.1 runs it too: the watcher and HITL exist there, the review just waits in the triggerer
(deferred to ``HITLTrigger``) instead of ``awaiting_input``; its REST API wants a token, which the
all-admins SimpleAuthManager hands out at ``GET /auth/token``.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote_plus

import pytest

from klingfx_emulator import EmulatorConfig, run_emulator_in_thread
from tests.airflow_harness import airflow_version
from tests.conftest import API_KEY
from tests.deployment.harness import Deployment, assert_key_only_in_connections
from tests.support import MotoServer

# About 4 minutes alone on 2 cores (most of it task start-ups); more beside another deployment test.
pytestmark = [
    pytest.mark.deployment,
    pytest.mark.browser,
    pytest.mark.timeout(900),
]

REPO = Path(__file__).resolve().parents[2]
DAG_FILE = REPO / "example_dags" / "example_klingfx_bucket_to_published.py"
DAG_ID = "example_klingfx_bucket_to_published"
BUCKET = "klingfx-photos"
QUEUE = "klingfx-photos"
AWS_CONN = "aws_moto"
PHOTOS = {
    "incoming/anna.png": "person-1.png",
    "incoming/ben.png": "person-2.png",
    "incoming/cleo.png": "person-3.png",
}
CHROMIUM = Path("/usr/bin/chromium")
GIF_SHOWN = """() => {
    const img = document.querySelector("img[alt='GIF preview of the generated video']");
    return img !== null && img.complete && img.naturalWidth > 0;
}"""
REJECT_REASON = "the background is cut off on the left"


class Api:
    """The REST API with a token from ``GET /auth/token`` (all-admins SimpleAuthManager): 3.1 wants one."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._token: str | None = None
        self.bodies: list[str] = []  # every answer, for the key search

    @property
    def token(self) -> str:
        if self._token is None:
            with urllib.request.urlopen(f"{self.url}/auth/token", timeout=30) as resp:
                self._token = json.loads(resp.read())["access_token"]
        return self._token

    def page(self, path: str) -> str:
        req = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            return str(resp.read().decode())

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        req = urllib.request.Request(
            self.url + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"},
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                status, text = resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read().decode()
        self.bodies.append(text)
        return status, json.loads(text) if text else None


def moto_s3_sqs() -> tuple[MotoServer, Any, Any, str]:
    """A moto server on 127.0.0.1: the bucket, the queue, and the bucket's notifications to it."""
    server = MotoServer()
    s3, sqs = server.client("s3"), server.client("sqs")
    s3.create_bucket(Bucket=BUCKET)
    queue_url = sqs.create_queue(QueueName=QUEUE)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(
        Bucket=BUCKET,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "Id": "photo-created",
                    "QueueArn": arn,
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "incoming/"}]}},
                }
            ]
        },
    )
    return server, s3, sqs, queue_url


def deliver_one_message_twice(sqs: Any, queue_url: str) -> str:
    """Receive moto's messages, send one S3 event's body again (a duplicate delivery), put them all back."""
    received: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while len(received) < 1 + len(PHOTOS) and time.monotonic() < deadline:  # s3:TestEvent + photos
        got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        received += got.get("Messages", [])
    events = [m for m in received if "Records" in json.loads(m["Body"])]
    assert len(events) == len(PHOTOS), [m["Body"] for m in received]
    duplicate = events[0]["Body"]
    sqs.send_message(QueueUrl=queue_url, MessageBody=duplicate)
    for message in received:
        sqs.change_message_visibility(
            QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
        )
    return unquote_plus(json.loads(duplicate)["Records"][0]["s3"]["object"]["key"])


def queue_empty(sqs: Any, queue_url: str) -> bool:
    attrs = sqs.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return (
        int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"]) == 0
    )


def bucket_keys(s3: Any, prefix: str) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []))


def pending_reviews(api: Api) -> list[dict[str, Any]]:
    status, body = api.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/~/hitlDetails?response_received=false")
    assert status == 200, body
    return list(body["hitl_details"])


def answer_path(detail: dict[str, Any]) -> str:
    ti = detail["task_instance"]
    return (
        f"/api/v2/dags/{ti['dag_id']}/dagRuns/{quote(ti['dag_run_id'], safe='')}/taskInstances/"
        f"{ti['task_id']}/{ti['map_index']}/hitlDetails"
    )


def photo_of(detail: dict[str, Any]) -> str:
    """The photo key a review is about (its subject: ``Publish the video of <key>?``)."""
    return str(detail["subject"]).removeprefix("Publish the video of ").removesuffix("?")


def approve_in_chromium(url: str, api: Api, detail: dict[str, Any], shots: Path) -> dict[str, Any]:
    """Open the task's Required actions page in Chromium, check the GIF shows, click Approve."""
    from playwright.sync_api import sync_playwright

    ti = detail["task_instance"]
    page_url = (
        f"{url}/dags/{ti['dag_id']}/runs/{quote(ti['dag_run_id'], safe='')}/tasks/{ti['task_id']}"
        f"/mapped/{ti['map_index']}/required_actions"
    )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu", "--no-first-run"]
        )
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.set_default_timeout(60_000)
            context.add_cookies([{"name": "_token", "value": api.token, "url": url}])
            page = context.new_page()
            page.goto(page_url)
            try:
                page.get_by_role("button", name="Approve").wait_for()
                gif = page.locator("img[alt='GIF preview of the generated video']")
                gif.wait_for()
                page.wait_for_function(GIF_SHOWN)
                shown = {
                    "gif_width": gif.evaluate("i => i.naturalWidth"),
                    "tab_link": page.get_by_role(
                        "link", name="Watch the video on the task's Kling video tab"
                    ).first.get_attribute("href"),
                }
                page.screenshot(path=str(shots / "review.png"))
                html = page.content()
                page.get_by_role("button", name="Approve").click()
                deadline = time.monotonic() + 60
                while not api.call("GET", answer_path(detail))[1].get("response_received"):
                    assert time.monotonic() < deadline, "the click on Approve never reached Airflow"
                    time.sleep(0.5)
                page.screenshot(path=str(shots / "approved.png"))
            except Exception:
                page.screenshot(path=str(shots / "failed.png"))
                (shots / "failed.html").write_text(page.content())
                raise
            return {**shown, "html": html + page.content()}
        finally:
            browser.close()


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian's chromium: `make browser`")
def test_bucket_to_published(tmp_path, record_property):
    started = time.monotonic()
    moto, s3, sqs, queue_url = moto_s3_sqs()
    aws_conn = moto.connection()
    config = EmulatorConfig(api_key=API_KEY, queued_seconds=0.2, generating_seconds=1, render="eager")
    home = tmp_path / "airflow"
    deployment = Deployment(home, shape="local", dags=[DAG_FILE], parallelism=8)
    deployment.env |= {
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{deployment.api_port}",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "2",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
        "AIRFLOW__KLINGFX__VIEWS_READ_PREFIXES": f"s3://{AWS_CONN}@{BUCKET}/videos/",
        f"AIRFLOW_CONN_{AWS_CONN.upper()}": json.dumps(aws_conn),
        "KLINGFX_PHOTOS_QUEUE_URL": queue_url,
        "KLINGFX_PHOTOS_BUCKET": BUCKET,
        "KLINGFX_AWS_CONN_ID": AWS_CONN,
        "KLINGFX_QUEUE_WAITER_DELAY": "1",
        "KLINGFX_QUEUE_VISIBILITY_TIMEOUT": "60",
    }
    url = f"http://127.0.0.1:{deployment.api_port}"
    api = Api(url)
    try:
        with run_emulator_in_thread(config) as emulator, deployment:
            for key, sample in PHOTOS.items():
                with urllib.request.urlopen(f"{emulator.url}/samples/{sample}", timeout=30) as resp:
                    s3.put_object(Bucket=BUCKET, Key=key, Body=resp.read(), ContentType="image/png")
            # The DAG is paused until it is parsed and unpaused: moto's messages wait in the queue.
            duplicated = deliver_one_message_twice(sqs, queue_url)
            deployment.migrate()
            # The key lives in the metadata DB's connection table, as in production.
            deployment.cli(
                "connections", "add", "klingfx_default", "--conn-type", "klingfx",
                "--conn-host", emulator.url, "--conn-password", API_KEY,
            )  # fmt: skip
            deployment.start_processes()
            deployment.wait_parsed(DAG_ID, timeout=180)
            status, _ = api.call("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})
            assert status == 200
            unpaused = time.monotonic()

            def three_reviews_and_nothing_else() -> bool:
                # Every message taken and acknowledged, every run either done or waiting for a person.
                pending = pending_reviews(api)
                busy = deployment.query(
                    "SELECT count(*) FROM task_instance WHERE dag_id = ? AND task_id != 'review' "
                    "AND state NOT IN ('success', 'skipped', 'failed', 'upstream_failed')",
                    DAG_ID,
                )[0][0]
                return len(pending) == len(PHOTOS) and busy == 0 and queue_empty(sqs, queue_url)

            deployment.wait_for("three reviews waiting", three_reviews_and_nothing_else, 300, period=1)
            in_review = time.monotonic()
            reviews = {photo_of(d): d for d in pending_reviews(api)}
            assert sorted(reviews) == sorted(PHOTOS)
            paid = emulator.stats()["submissions"]
            events = deployment.query(
                "SELECT count(*) FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.name = ?",
                "klingfx_photo_uploads",
            )[0][0]
            # What a reviewer sees: the GIF (served by the views) and a link to the Kling video tab.
            body = reviews["incoming/anna.png"]["body"]
            assert "![GIF preview of the generated video](" in body and "/plugin/klingfx-video)" in body

            # One approved in Chromium, one through the REST API, one rejected with a reason.
            shown = approve_in_chromium(url, api, reviews["incoming/anna.png"], tmp_path)
            status, answer = api.call(
                "PATCH", answer_path(reviews["incoming/ben.png"]), {"chosen_options": ["Approve"]}
            )
            assert status == 200, answer
            status, answer = api.call(
                "PATCH",
                answer_path(reviews["incoming/cleo.png"]),
                {"chosen_options": ["Reject"], "params_input": {"reason": REJECT_REASON}},
            )
            assert status == 200, answer

            def all_runs_done() -> bool:
                rows = deployment.query("SELECT state FROM dag_run WHERE dag_id = ?", DAG_ID)
                return bool(rows) and all(state in ("success", "failed") for (state,) in rows)

            deployment.wait_for("every run to finish", all_runs_done, 180, period=1)
            finished = time.monotonic()
            runs = deployment.query("SELECT run_id, state FROM dag_run WHERE dag_id = ?", DAG_ID)
            decisions = {
                photo_of(d): d["chosen_options"]
                for d in api.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/~/hitlDetails")[1]["hitl_details"]
            }
            published_events = deployment.query(
                "SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.name = ?",
                "klingfx_published_videos",
            )
            xcoms = deployment.query("SELECT value FROM xcom WHERE dag_id = ?", DAG_ID)
            anna = reviews["incoming/anna.png"]["task_instance"]
            ti_html = api.page(
                f"/klingfx/ti/{DAG_ID}/{quote(anna['dag_run_id'], safe='')}/generate/{anna['map_index']}"
            )
            paid_at_end = emulator.stats()["submissions"]
            logs = "".join(p.read_text(errors="replace") for p in (home / "logs").rglob("*") if p.is_file())
            published, rejected, claims = (
                bucket_keys(s3, "published/"),
                bucket_keys(s3, "rejected/"),
                bucket_keys(s3, "reviews/"),
            )
            rejection = (
                json.loads(s3.get_object(Bucket=BUCKET, Key=rejected[0])["Body"].read()) if rejected else {}
            )
            bucket_text = b"".join(
                s3.get_object(Bucket=BUCKET, Key=k)["Body"].read()
                for k in bucket_keys(s3, "")
                if k.endswith(".json")
            )
    finally:
        moto.stop()

    summary = (
        f"bucket to published: airflow={'.'.join(map(str, airflow_version()))} photos={len(PHOTOS)} "
        f"messages=1 s3:TestEvent + {len(PHOTOS)} uploads + 1 duplicate ({duplicated}); "
        f"asset_events={events} runs={len(runs)} paid_submissions={paid} (after the reviews: {paid_at_end}) "
        f"unpause_to_3_reviews={in_review - unpaused:.1f}s reviews_to_done={finished - in_review:.1f}s "
        f"wall={finished - started:.1f}s published={published} rejected={rejected}"
    )
    print(summary)
    record_property("summary", summary)

    # Exactly three generations paid for: the duplicate delivery cost nothing.
    assert paid == paid_at_end == len(PHOTOS), summary
    assert events >= 1 + len(PHOTOS) + 1, summary  # the test event, three uploads, the duplicate
    assert "is reviewed in run" in logs or events > len(runs), "the duplicate never reached a run"
    assert len(claims) == len(PHOTOS), claims
    assert all(state == "success" for _, state in runs), runs
    # The reviews: Chromium saw the GIF (served by the views) and the Kling video tab's link.
    assert shown["gif_width"] > 0, shown
    assert "/tasks/generate/mapped/" in shown["tab_link"] and shown["tab_link"].endswith(
        "/plugin/klingfx-video"
    )
    assert decisions == {
        "incoming/anna.png": ["Approve"],
        "incoming/ben.png": ["Approve"],
        "incoming/cleo.png": ["Reject"],
    }, decisions
    # Exactly the two approved videos are published, each announced on the published Asset.
    assert published == ["published/anna.mp4", "published/ben.mp4"], published
    announced = sorted(
        v["video"].rsplit("/", 1)[1] for (e,) in published_events for v in json.loads(e)["videos"]
    )
    assert announced == ["anna.mp4", "ben.mp4"], published_events
    assert rejected == ["rejected/cleo.json"]
    assert rejection["reason"] == REJECT_REASON and rejection["photo"] == "incoming/cleo.png", rejection
    assert "Rejected incoming/cleo.png by" in logs and REJECT_REASON in logs

    # The key: in no log, XCom, page or answer; in the DB only in the connection table.
    assert not any(API_KEY in str(v) for (v,) in xcoms)
    assert API_KEY not in shown["html"] and API_KEY not in ti_html
    assert not any(API_KEY in b for b in api.bodies)
    assert API_KEY.encode() not in bucket_text
    assert_key_only_in_connections(home, API_KEY)
