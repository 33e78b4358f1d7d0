"""Photos from storage, local disks and URLs: checked against Kling's limits, turned into URLs the API
can download (presigned, or inline base64 when asked), over real HTTP and a real (moto) S3."""

from __future__ import annotations

import base64
import io
import os
import urllib.request
from collections.abc import Iterator

import pytest
from aiohttp import web
from PIL import Image

from airflow_provider_klingfx.domain import EffectRequest, KlingFxInvalidInputError
from airflow_provider_klingfx.images import HEADER_BYTES, MAX_IMAGE_BYTES, KlingFxImageError
from airflow_provider_klingfx.photos import KlingFxPhotoAccessError, prepare_photos
from klingfx_emulator import run_app_in_thread
from tests.support import free_port
from tests.test_hook import make_hook


def image_bytes(size: tuple[int, int], fmt: str = "PNG", **save: object) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 120, 40)).save(out, fmt, **save)
    return out.getvalue()


def oversized_png() -> bytes:
    # Noise does not compress: 2,000 x 1,900 RGB pixels stored make a PNG over 10 MiB.
    noise = Image.frombytes("RGB", (2000, 1900), os.urandom(2000 * 1900 * 3))
    out = io.BytesIO()
    noise.save(out, "PNG", compress_level=0)
    assert len(out.getvalue()) > MAX_IMAGE_BYTES
    return out.getvalue()


GOOD_PNG = image_bytes((512, 400))
#: Stored uncompressed: a 1000x300 PNG of 900 KB, its header in the first bytes.
BIG_PANORAMA = image_bytes((1000, 300), "PNG", compress_level=0)
#: A photo per rule, and the words its one-line error must contain.
BAD_PHOTOS = {
    "animated.gif": (image_bytes((640, 480), "GIF"), "format", "is a GIF image: Kling takes JPEG or PNG"),
    "narrow.png": (image_bytes((299, 600)), "side", "is 299x600 px: Kling takes photos at least 300 px"),
    "panorama.png": (image_bytes((1000, 300)), "aspect", "aspect ratio of 3.33:1: Kling takes between 1:2.5"),
    "page.jpg": (b"<!DOCTYPE html><html>Access denied</html>", "format", "it looks like an HTML or XML page"),
}


def squish(photo: object) -> EffectRequest:
    return EffectRequest.build("squish", photo)


# -- local files ------------------------------------------------------------------------------


def test_a_local_photo_goes_inline_as_base64_only_when_asked(tmp_path, connection, sleeps, caplog):
    photo = tmp_path / "me.png"
    photo.write_bytes(GOOD_PNG)
    hook = make_hook(sleeps)
    with pytest.raises(KlingFxImageError) as info:
        prepare_photos(squish(str(photo)), hook)
    assert info.value.rule == "local"
    assert str(info.value) == (
        f"image 1 (file://{photo}) is a local file, which the API cannot download: put it in object "
        "storage (s3://…, gs://…) or at an http(s) URL, or pass inline_base64_images=True to send it in "
        "the request as base64 (undocumented for the effects models)"
    )
    caplog.set_level("INFO")
    sendable = prepare_photos(squish(str(photo)), hook, inline_base64=True)
    (uri,) = sendable.image_urls
    assert uri.startswith("data:image/png;base64,")
    assert base64.b64decode(uri.split(",", 1)[1]) == GOOD_PNG
    assert sendable.to_body()["image_url"] == uri
    assert (
        f"Photo 1: file://{photo} (PNG 512x400, {len(GOOD_PNG) / 1e3:.0f} KB), sent inline as base64"
        in caplog.text
    )
    assert uri.split(",", 1)[1][:40] not in caplog.text


@pytest.mark.parametrize("name", sorted(BAD_PHOTOS))
def test_each_rule_rejects_a_photo_in_one_line_naming_it(tmp_path, connection, sleeps, name):
    data, rule, words = BAD_PHOTOS[name]
    photo = tmp_path / name
    photo.write_bytes(data)
    with pytest.raises(KlingFxImageError) as info:
        prepare_photos(squish(str(photo)), make_hook(sleeps), inline_base64=True)
    assert info.value.rule == rule
    assert str(info.value).startswith(f"image 1 (file://{photo}) ")
    assert words in str(info.value)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, KlingFxInvalidInputError)  # fails the task without retries


def test_a_photo_over_10_mb_is_rejected_from_its_size_alone(tmp_path, connection, sleeps):
    photo = tmp_path / "huge.png"
    photo.write_bytes(oversized_png())
    size = photo.stat().st_size
    with pytest.raises(KlingFxImageError) as info:
        prepare_photos(squish(str(photo)), make_hook(sleeps), inline_base64=True)
    assert info.value.rule == "size"
    assert f"is {size:,} bytes: Kling takes photos of at most 10 MB (10,000,000 bytes)" in str(info.value)


def test_the_size_limit_is_10_000_000_bytes_not_10_mib():
    from airflow_provider_klingfx.images import check_size

    check_size(10_000_000, 1, "x")
    with pytest.raises(KlingFxImageError, match=r"is 10,000,001 bytes"):
        check_size(10_000_001, 1, "x")
    with pytest.raises(KlingFxImageError):
        check_size(10 * 1024 * 1024, 1, "x")  # 10 MiB: over Kling's 10 MB


def test_a_jpeg_whose_header_is_longer_than_the_first_read_is_read_further(tmp_path, connection, sleeps):
    # Phones write EXIF and ICC segments of tens of KB before the pixel size.
    photo = tmp_path / "phone.jpg"
    photo.write_bytes(image_bytes((400, 900), "JPEG", exif=b"Exif\x00\x00" + b"\x00" * 65_000))
    sendable = prepare_photos(squish(photo.as_uri()), make_hook(sleeps), inline_base64=True)
    assert sendable.image_urls[0].startswith("data:image/jpeg;base64,")


def test_a_missing_local_photo_fails_naming_it(tmp_path, connection, sleeps):
    with pytest.raises(
        KlingFxImageError, match=r"image 1 \(file://.*/gone.png\) cannot be read: FileNotFound"
    ):
        prepare_photos(squish(str(tmp_path / "gone.png")), make_hook(sleeps), inline_base64=True)


def test_a_store_that_cannot_presign_needs_inline_upload(connection, sleeps):
    from airflow.sdk import ObjectStoragePath
    from airflow.sdk.io import attach
    from fsspec.implementations.memory import MemoryFileSystem

    attach("memory", fs=MemoryFileSystem())  # a store fsspec knows but that has no signed URLs
    ref = "memory://klingfx-test/photos/me.png"
    ObjectStoragePath(ref).write_bytes(GOOD_PNG)
    with pytest.raises(KlingFxImageError, match=r"is in a store \(memory\) that cannot make a presigned URL"):
        prepare_photos(squish(ref), make_hook(sleeps))
    sendable = prepare_photos(squish(ref), make_hook(sleeps), inline_base64=True)
    assert base64.b64decode(sendable.image_urls[0].split(",", 1)[1]) == GOOD_PNG


def test_a_store_airflow_cannot_open_says_which_provider_to_install(connection, sleeps):
    with pytest.raises(
        KlingFxImageError,
        match=r"image 1 \(nosuchstore://album/me.png\) is in a store this Airflow cannot open",
    ) as info:
        prepare_photos(squish("nosuchstore://album/me.png"), make_hook(sleeps))
    assert "airflow-provider-klingfx[s3] for s3:// or [gcs] for gs://" in str(info.value)


def test_a_request_of_storage_paths_cannot_be_sent_unprepared(connection, sleeps, emulator):
    with pytest.raises(KlingFxInvalidInputError, match=r"image 1 \(s3://photos/me.png\) is not a URL"):
        make_hook(sleeps).submit(squish("s3://aws_moto@photos/me.png"))
    assert emulator.stats()["requests"] == []


# -- S3 -----------------------------------------------------------------------------------------


@pytest.fixture
def s3_photos(s3, monkeypatch) -> dict:
    for name, value in s3["env"].items():
        monkeypatch.setenv(name, value)
    s3["client"].create_bucket(Bucket="photos")
    s3["client"].put_object(Bucket="photos", Key="people/me.png", Body=GOOD_PNG)
    for name, (data, _, _) in BAD_PHOTOS.items():
        s3["client"].put_object(Bucket="photos", Key=f"people/{name}", Body=data)
    return s3


def test_an_s3_photo_becomes_a_presigned_url_that_serves_it(s3_photos, connection, sleeps, caplog):
    caplog.set_level("INFO")
    sendable = prepare_photos(
        squish("s3://aws_moto@photos/people/me.png"), make_hook(sleeps), presign_seconds=600
    )
    (url,) = sendable.image_urls
    endpoint = s3_photos["client"].meta.endpoint_url
    assert url.startswith(f"{endpoint}/photos/people/me.png?")
    assert "X-Amz-Signature=" in url and "X-Amz-Expires=600" in url
    with urllib.request.urlopen(url, timeout=10) as resp:  # what the API will do
        assert resp.read() == GOOD_PNG
    shown = f"Photo 1: s3://photos/people/me.png (PNG 512x400, {len(GOOD_PNG) / 1e3:.0f} KB)"
    assert f"{shown}, sent as a presigned URL valid 10 min" in caplog.text
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name != "werkzeug")  # not moto's own
    assert "X-Amz" not in ours


@pytest.mark.parametrize("name", sorted(BAD_PHOTOS))
def test_an_s3_photo_is_checked_before_it_is_presigned(s3_photos, connection, sleeps, name):
    _, rule, words = BAD_PHOTOS[name]
    with pytest.raises(KlingFxImageError) as info:
        prepare_photos(squish(f"s3://aws_moto@photos/people/{name}"), make_hook(sleeps))
    assert (info.value.rule, info.value.shown) == (rule, f"s3://photos/people/{name}")
    assert words in str(info.value)


def test_a_missing_s3_photo_fails_naming_it(s3_photos, connection, sleeps):
    with pytest.raises(KlingFxImageError, match=r"image 1 \(s3://photos/people/nobody.png\) cannot be read"):
        prepare_photos(squish("s3://aws_moto@photos/people/nobody.png"), make_hook(sleeps))


# -- http(s) URLs -------------------------------------------------------------------------------


@pytest.fixture
def photo_host() -> Iterator[dict]:
    """A photo host on 127.0.0.1 that honours byte ranges (or not) and records what it was asked."""
    files = {
        "/me.png": GOOD_PNG,
        "/big-panorama.png": BIG_PANORAMA,
        **{f"/{n}": d for n, (d, _, _) in BAD_PHOTOS.items()},
    }
    seen: list[dict] = []

    async def serve(request: web.Request) -> web.StreamResponse:
        seen.append(
            {
                "path": request.path,
                "range": request.headers.get("Range"),
                "auth": request.headers.get("Authorization"),
            }
        )
        if request.path == "/private.png":
            return web.Response(status=403, text="AccessDenied")
        if request.path == "/moved.png":
            raise web.HTTPFound("/me.png")
        data = files.get(request.path)
        if data is None:
            return web.Response(status=404)
        if request.query.get("ranges") == "no":
            return web.Response(body=data, content_type="application/octet-stream")
        # aiohttp's FileResponse would do ranges; a plain body here keeps the server honest about them.
        spec = request.headers.get("Range", "")
        if spec.startswith("bytes=0-"):
            end = min(int(spec.removeprefix("bytes=0-")), len(data) - 1)
            return web.Response(
                status=206, body=data[: end + 1], headers={"Content-Range": f"bytes 0-{end}/{len(data)}"}
            )
        return web.Response(body=data)

    app = web.Application()
    app.router.add_get("/{name}", serve)
    with run_app_in_thread(app) as host:
        yield {"url": host.url, "seen": seen, "files": files}


def test_url_photos_are_sent_unread_by_default(photo_host, connection, sleeps):
    url = f"{photo_host['url']}/animated.gif?sig=abc"
    assert prepare_photos(squish(url), make_hook(sleeps)).image_urls == (url,)
    assert photo_host["seen"] == []


def test_a_url_photo_is_checked_from_a_ranged_read_when_asked(photo_host, connection, sleeps):
    url = f"{photo_host['url']}/me.png?X-Amz-Signature=s3cr3t"
    assert prepare_photos(squish(url), make_hook(sleeps), check_urls=True).image_urls == (url,)
    assert photo_host["seen"] == [{"path": "/me.png", "range": "bytes=0-65535", "auth": None}]


@pytest.mark.parametrize("name", sorted(BAD_PHOTOS))
def test_a_bad_url_photo_is_rejected_when_checked(photo_host, connection, sleeps, name):
    _, rule, words = BAD_PHOTOS[name]
    with pytest.raises(KlingFxImageError) as info:
        prepare_photos(squish(f"{photo_host['url']}/{name}?token=s3cr3t"), make_hook(sleeps), check_urls=True)
    assert info.value.rule == rule and words in str(info.value)
    assert "s3cr3t" not in str(info.value)


def test_a_host_that_ignores_ranges_is_read_only_as_far_as_the_header(photo_host, connection, sleeps):
    # A photo far larger than the header read, answered whole (200, no range): the bytes the
    # client takes off the connection are counted (urllib3's tell()), not what the server sent.
    served = photo_host["files"]["/big-panorama.png"]
    assert len(served) > 10 * HEADER_BYTES
    url = f"{photo_host['url']}/big-panorama.png?ranges=no"
    hook = make_hook(sleeps)
    answers: list = []
    hook.get_conn().hooks["response"].append(lambda resp, *args, **kwargs: answers.append(resp))
    with pytest.raises(KlingFxImageError, match=r"aspect ratio of 3\.33:1"):
        prepare_photos(squish(url), hook, check_urls=True)
    (answer,) = answers
    assert answer.status_code == 200  # the whole file was offered
    assert 0 < answer.raw.tell() <= HEADER_BYTES
    assert photo_host["seen"] == [{"path": "/big-panorama.png", "range": "bytes=0-65535", "auth": None}]


def test_a_url_the_api_could_not_download_fails_before_paying(photo_host, connection, sleeps, emulator):
    with pytest.raises(
        KlingFxImageError, match=r"could not be downloaded \(HTTP 403\); the API downloads it"
    ):
        prepare_photos(squish(f"{photo_host['url']}/private.png"), make_hook(sleeps), check_urls=True)
    assert emulator.stats()["requests"] == []


def test_an_unreachable_photo_host_is_a_retryable_error(connection, sleeps):
    with pytest.raises(
        KlingFxPhotoAccessError, match=r"image 1 \(http://127.0.0.1:\d+/me.png\) could not be read"
    ):
        prepare_photos(squish(f"http://127.0.0.1:{free_port()}/me.png"), make_hook(sleeps), check_urls=True)
    assert len(sleeps.calls) == 3  # the hook's policy: 4 attempts


# -- what a photo URL may lead to -------------------------------------------------------------


def test_a_photo_check_does_not_follow_a_redirect(photo_host, connection, sleeps):
    with pytest.raises(KlingFxImageError) as info:
        prepare_photos(squish(f"{photo_host['url']}/moved.png"), make_hook(sleeps), check_urls=True)
    assert info.value.rule == "location"
    assert "answered HTTP 302 (a redirect), which the photo check does not follow" in str(info.value)
    assert [s["path"] for s in photo_host["seen"]] == ["/moved.png"]  # /me.png was never asked for


def test_a_photo_check_reaches_no_private_address_unless_the_connection_allows_it(
    photo_host, connection, sleeps, emulator
):
    # The emulator is on 127.0.0.1, so a connection to it allows private hosts unless told otherwise.
    connection(extra={"allow_private_hosts": "false"})
    with pytest.raises(KlingFxImageError) as info:
        prepare_photos(squish(f"{photo_host['url']}/me.png"), make_hook(sleeps), check_urls=True)
    assert info.value.rule == "location"
    assert "is at 127.0.0.1, a loopback, private or link-local address: not read" in str(info.value)
    assert "allow_private_hosts" in str(info.value)
    assert photo_host["seen"] == []  # refused once connected, before a byte of the request was sent
    assert sleeps.calls == []  # not retried: another try would meet the same address
    assert emulator.stats()["requests"] == []


def test_allowed_photo_locations_refuse_another_connection_bucket_or_folder(tmp_path, connection, sleeps):
    from airflow_provider_klingfx.photos import parse_allowed_locations, require_allowed

    allowed = parse_allowed_locations("s3://aws_photos@people/inbox, file://" + str(tmp_path / "photos"))
    require_allowed(squish("s3://aws_photos@people/inbox/a.png"), allowed)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "me.png").write_bytes(GOOD_PNG)
    require_allowed(squish(str(tmp_path / "photos" / "me.png")), allowed)
    (tmp_path / "secret.png").write_bytes(GOOD_PNG)
    (tmp_path / "photos" / "link.png").symlink_to(tmp_path / "secret.png")
    for photo, why in (
        ("s3://aws_admin@people/inbox/a.png", "it is not under any of them (connection 'aws_admin')"),
        ("s3://people/inbox/a.png", "it is not under any of them"),
        ("s3://aws_photos@people/inbox-old/a.png", "it is not under any of them"),
        ("s3://aws_photos@people/inbox/../secrets/a.png", "'.' or '..' path segments"),
        ("s3://aws_photos@people/inbox/%2e%2e/secrets/a.png", "'.' or '..' path segments"),
        ("https://cdn.example.com/a.png", "it is not under any of them"),
        (str(tmp_path / "photos" / "link.png"), "leads out of"),
        (str(tmp_path / "secret.png"), "it is not under any of them"),
    ):
        with pytest.raises(KlingFxImageError) as info:
            require_allowed(squish(photo), allowed)
        assert info.value.rule == "location", photo
        assert "is not allowed by allowed_photo_locations (s3://aws_photos@people/inbox/, file://" in str(
            info.value
        )
        assert why in str(info.value), (photo, str(info.value))
    with pytest.raises(KlingFxInvalidInputError, match="allowed_photo_locations has an unusable entry"):
        parse_allowed_locations(["s3://people/../x"])


def test_a_video_download_reaches_no_private_address_unless_allowed(tmp_path, connection, emulator, sleeps):
    from airflow_provider_klingfx.domain import Video
    from airflow_provider_klingfx.media import KlingFxDownloadError, save_video

    video = Video(url=f"{emulator.url}/files/anything.mp4")
    connection(extra={"allow_private_hosts": "false"})
    with pytest.raises(KlingFxDownloadError, match=r"is at 127\.0\.0\.1, a loopback, private or link-local"):
        save_video(make_hook(sleeps), "gen-1", video, str(tmp_path / "v.mp4"))
    assert emulator.stats()["requests"] == []
    assert list(tmp_path.iterdir()) == []


# -- presigned URLs are read before paying ------------------------------------------------------


def _signing_store_class() -> type:
    from fsspec.implementations.memory import MemoryFileSystem

    class SigningStore(MemoryFileSystem):
        """fsspec's memory store with a ``sign()`` that hands out the URL (or raises) the test sets."""

        protocol = ("signtest",)
        signed: str | Exception = ""

        def sign(self, path, expiration=100, **kwargs):
            if isinstance(self.signed, Exception):
                raise self.signed
            return self.signed

    return SigningStore


@pytest.fixture(scope="module")
def signing_store_class() -> type:
    import fsspec
    from airflow.sdk import ObjectStoragePath
    from airflow.sdk.io import attach

    # Once per module: fsspec and Airflow cache a store's filesystem by its protocol.
    cls = _signing_store_class()
    fsspec.register_implementation("signtest", cls, clobber=True)
    attach("signtest", fs=cls())
    ObjectStoragePath("signtest://album/me.png").write_bytes(GOOD_PNG)
    return cls


@pytest.fixture
def signing_store(signing_store_class):
    signing_store_class.signed = ""
    return signing_store_class


def test_a_presigned_url_is_read_and_checked_before_paying(signing_store, photo_host, connection, sleeps):
    signing_store.signed = f"{photo_host['url']}/me.png?signature=s3cr3t"
    (url,) = prepare_photos(squish("signtest://album/me.png"), make_hook(sleeps)).image_urls
    assert url == signing_store.signed
    # One ranged read of the URL the API will get, no key sent.
    assert photo_host["seen"] == [{"path": "/me.png", "range": "bytes=0-65535", "auth": None}]


def test_a_presigned_url_that_does_not_work_fails_before_paying(
    signing_store, photo_host, connection, sleeps, emulator
):
    # As S3 answers a URL signed for another region: 403. The API would fail to download it too.
    signing_store.signed = f"{photo_host['url']}/private.png?X-Amz-Signature=s3cr3t"
    with pytest.raises(KlingFxImageError) as info:
        prepare_photos(squish("signtest://album/me.png"), make_hook(sleeps))
    assert info.value.rule == "presign"
    assert str(info.value) == (
        "image 1 (signtest://album/me.png) was presigned with connection 'signtest default', but its "
        "presigned URL does not work (HTTP 403: AccessDenied); the API would fail to download it the same "
        "way: check the connection's region and signature settings"
    )
    assert sleeps.calls == []  # a configuration error: not retried
    assert emulator.stats()["requests"] == []
    # What the URL serves is checked like any photo: a GIF behind it is refused.
    signing_store.signed = f"{photo_host['url']}/animated.gif?X-Amz-Signature=s3cr3t"
    with pytest.raises(KlingFxImageError, match="is a GIF image: Kling takes JPEG or PNG") as info:
        prepare_photos(squish("signtest://album/me.png"), make_hook(sleeps))
    assert "s3cr3t" not in str(info.value)


def test_a_signing_error_is_a_configuration_error_naming_the_connection(signing_store, connection, sleeps):
    # As a GCS connection without a private key fails to sign.
    signing_store.signed = AttributeError("you need a private key to sign credentials")
    with pytest.raises(KlingFxImageError) as info:
        prepare_photos(squish("signtest://album/me.png"), make_hook(sleeps))
    assert info.value.rule == "presign"
    assert isinstance(info.value, KlingFxInvalidInputError)  # fails the task without retries
    assert (
        "could not be presigned with connection 'signtest default': AttributeError: you need a private "
        in str(info.value)
    )
