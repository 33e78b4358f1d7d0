"""Locations an allow-list covers, after normalising: the one matcher of the views and the operator."""

from __future__ import annotations

import os

import pytest

from airflow_provider_klingfx.locations import (
    LocationError,
    find_prefix,
    parse_location,
    parse_prefixes,
    resolve_local,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("s3://aws_media@media/videos/a.mp4", ("s3", "aws_media", "media", "/videos/a.mp4")),
        ("s3://media/videos/a.mp4", ("s3", None, "media", "/videos/a.mp4")),
        ("/data/klingfx/a.mp4", ("file", None, "", "/data/klingfx/a.mp4")),
        ("file:///data/klingfx/a.mp4", ("file", None, "", "/data/klingfx/a.mp4")),
        ("local:///data/a.mp4", ("file", None, "", "/data/a.mp4")),
        ("HTTPS://CDN.Example.com:443/p/a.png?sig=1", ("https", None, "cdn.example.com", "/p/a.png")),
        ("http://cdn.example.com:8080/p/a.png", ("http", None, "cdn.example.com:8080", "/p/a.png")),
    ],
    ids=["s3-conn", "s3-default", "path", "file-url", "local-scheme", "https-default-port", "http-port"],
)
def test_locations_are_normalised(text, expected):
    loc = parse_location(text)
    assert (loc.scheme, loc.conn_id, loc.host, loc.path) == expected


@pytest.mark.parametrize(
    "text",
    [
        "s3://media/videos/../secrets/a.mp4",
        "s3://media/videos/./a.mp4",
        "s3://media/videos/%2e%2e/a.mp4",
        "s3://media/videos%2F..%2Fsecrets/a.mp4",
        "file:///data/klingfx/..",
        "/data/klingfx/a\\..\\b.mp4",
        "/data/klingfx/a\x00.mp4",
        "https://user:pw@cdn.example.com/a.png",
        "file://otherhost/data/a.mp4",
        "s3:///no-bucket",
        "relative/path.mp4",
        "",
    ],
    ids=[
        "dotdot",
        "dot",
        "encoded-dotdot",
        "encoded-slash-dotdot",
        "trailing-dotdot",
        "backslash",
        "nul",
        "credentials",
        "file-host",
        "no-bucket",
        "relative",
        "empty",
    ],
)
def test_locations_that_could_step_out_are_refused(text):
    with pytest.raises(LocationError):
        parse_location(text)


def test_a_prefix_covers_whole_segments_of_its_own_store_and_connection():
    videos = parse_location("s3://aws_media@media/videos", prefix=True)
    assert str(videos) == "s3://aws_media@media/videos/"
    assert videos.covers(parse_location("s3://aws_media@media/videos/run/a.mp4"))
    assert not videos.covers(parse_location("s3://aws_media@media/videos-old/a.mp4"))
    assert not videos.covers(parse_location("s3://aws_media@other/videos/a.mp4"))
    assert not videos.covers(parse_location("gs://aws_media@media/videos/a.mp4"))
    other_conn = parse_location("s3://aws_admin@media/videos/a.mp4")
    assert not videos.covers(other_conn)
    # The api-server reads with the prefix's own connection, whatever the location names.
    assert videos.covers(other_conn, same_connection=False)


def test_prefixes_parse_from_a_config_string_and_name_a_bad_entry():
    prefixes = parse_prefixes(" s3://aws_media@media/videos/ , file:///data/klingfx,, ")
    assert [str(p) for p in prefixes] == ["s3://aws_media@media/videos/", "file:///data/klingfx/"]
    assert find_prefix(parse_location("/data/klingfx/a.mp4"), prefixes) == prefixes[1]
    assert find_prefix(parse_location("/data/klingfx2/a.mp4"), prefixes) is None
    assert parse_prefixes("") == parse_prefixes(None) == ()
    with pytest.raises(LocationError, match=r"'s3://media/\.\./x': '\.' or '\.\.' path segments"):
        parse_prefixes("file:///data/, s3://media/../x")


def test_a_local_file_must_stay_under_its_prefix_once_links_are_resolved(tmp_path):
    base = tmp_path / "allowed"
    base.mkdir()
    (base / "ok.mp4").write_bytes(b"x")
    (tmp_path / "secret.txt").write_text("secret")
    (base / "link.mp4").symlink_to(tmp_path / "secret.txt")
    (base / "proc").symlink_to("/proc/self")
    prefix = parse_location(str(base), prefix=True)
    assert resolve_local(parse_location(str(base / "ok.mp4")), prefix) == os.path.realpath(base / "ok.mp4")
    with pytest.raises(LocationError, match="leads out of"):
        resolve_local(parse_location(str(base / "link.mp4")), prefix)
    with pytest.raises(LocationError, match="leads out of"):
        resolve_local(parse_location(str(base / "proc" / "environ")), prefix)
    everything = parse_location("/", prefix=True)
    with pytest.raises(LocationError, match="process or device state"):
        resolve_local(parse_location("/proc/self/environ"), everything)
