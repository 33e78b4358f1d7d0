"""Previews of a saved video: the animated GIF, the poster frame, and the operator that makes them.

No mocks: the videos are real files encoded with PyAV, decoded back by the code under test, and the
outputs are read back with Pillow.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import pytest
from airflow.sdk import ObjectStoragePath
from PIL import Image, ImageStat

from airflow_provider_klingfx.domain import KlingFxError, KlingFxInvalidInputError
from airflow_provider_klingfx.operators.preview import KlingFxPreviewOperator
from airflow_provider_klingfx.preview import KlingFxPreviewError, PreviewResult, make_preview
from klingfx_emulator.render import pick_codec, render_tiny_video, sample_image_png

#: The test video: 2 s at 12 fps, 96x64 (not square, to check the aspect ratio is kept).
FPS = 12
N_FRAMES = 24
SIZE = (96, 64)
#: Background by frame: red for the first third, green for the second, blue for the last.
RED, GREEN, BLUE = (230, 20, 20), (20, 200, 20), (20, 20, 230)


def colour_at(index: int, n_frames: int = N_FRAMES) -> tuple[int, int, int]:
    third = index * 3 // n_frames
    return (RED, GREEN, BLUE)[third]


def draw(index: int, n_frames: int = N_FRAMES, size: tuple[int, int] = SIZE) -> Image.Image:
    """A solid background with a white square moving along the top, so that no two frames are equal."""
    img = Image.new("RGB", size, colour_at(index, n_frames))
    x = (index * 3) % (size[0] - 8)
    img.paste((255, 255, 255), (x, 2, x + 8, 10))
    return img


def encode(
    path: Path,
    *,
    n_frames: int = N_FRAMES,
    fps: int = FPS,
    size: tuple[int, int] = SIZE,
    container_format: str = "mp4",
    codec: str | None = None,
) -> Path:
    codec = codec or pick_codec()  # H.264 when this PyAV build has it, as Kling's videos are
    with av.open(str(path), mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "crf": "18"}
        for index in range(n_frames):
            frame = av.VideoFrame.from_image(draw(index, n_frames, size))
            frame.pts = index
            frame.time_base = Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


_IMPORT_CHECK = (
    "import sys\n"
    "import airflow_provider_klingfx.preview\n"
    "import airflow_provider_klingfx.operators.preview\n"
    "print(sorted(m for m in sys.modules if m.split('.')[0] in ('av', 'PIL')))\n"
)


@pytest.fixture(scope="module", autouse=True)
def import_check() -> Iterator[subprocess.Popen[str]]:
    """A fresh interpreter importing the modules, started first: importing Airflow there takes seconds,
    which pass while the other tests run. The last test reads its answer."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _IMPORT_CHECK], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return encode(tmp_path_factory.mktemp("videos") / "clip.mp4")


@pytest.fixture
def clip(tmp_path: Path, video: Path) -> Path:
    """A copy of the video in this test's own directory, so default output paths don't collide."""
    dest = tmp_path / "clip.mp4"
    dest.write_bytes(video.read_bytes())
    return dest


def colour_name(img: Image.Image) -> str:
    """Which of red, green and blue dominates the frame below the moving square."""
    rgb = img.convert("RGB")
    mean = ImageStat.Stat(rgb.crop((0, rgb.height // 2, rgb.width, rgb.height))).mean
    return ("red", "green", "blue")[max(range(3), key=lambda channel: mean[channel])]


def gif_frames(path: str | Path) -> list[tuple[Image.Image, int]]:
    """Each GIF frame (composited, RGB) with its delay in ms."""
    frames = []
    with Image.open(path) as gif:
        for index in range(gif.n_frames):
            gif.seek(index)
            frames.append((gif.convert("RGB"), gif.info["duration"]))
    return frames


def local(url: str) -> Path:
    assert url.startswith("file://"), url
    return Path(url.removeprefix("file://"))


def test_gif_is_an_animated_looping_downscaled_sample_of_the_video(clip: Path):
    result = make_preview(clip, width=48)

    gif = local(result.gif_path)
    with Image.open(gif) as img:
        assert img.format == "GIF"
        assert img.is_animated
        assert img.info["loop"] == 0  # loops forever
        assert img.size == (48, 32)  # the requested width, the video's 3:2 aspect ratio
    frames = gif_frames(gif)
    # 2 s sampled at 10 fps; the delays add up to the video's length.
    assert len(frames) == result.frames == 20
    assert sum(delay for _, delay in frames) == 2000
    assert colour_name(frames[0][0]) == "red"
    assert colour_name(frames[10][0]) == "green"
    assert colour_name(frames[-1][0]) == "blue"
    assert (result.width, result.height) == (48, 32)
    assert result.duration_seconds == pytest.approx(2.0)
    assert result.gif_bytes == gif.stat().st_size
    assert result.poster_bytes == local(result.poster_path).stat().st_size


@pytest.mark.parametrize(
    ("poster_at", "colour"), [(0.5, "green"), (0.1, "red"), (0.0, "red"), (0.9, "blue"), (1.0, "blue")]
)
def test_poster_is_the_frame_at_poster_at_at_the_videos_size(clip: Path, poster_at: float, colour: str):
    result = make_preview(clip, poster_at=poster_at, width=16)

    with Image.open(local(result.poster_path)) as poster:
        assert poster.size == SIZE
        assert colour_name(poster) == colour


def test_poster_frame_is_the_exact_frame_on_screen(clip: Path):
    # 0.5 of 2 s is 1.0 s: frame 12 starts exactly there, its square at x = 36.
    result = make_preview(clip, poster_path=clip.with_name("exact.png"), width=16)

    with Image.open(local(result.poster_path)) as poster:
        square = poster.convert("L").crop((0, 2, SIZE[0], 10))
        assert square.getbbox() is not None
        columns = [x for x in range(SIZE[0]) if square.getpixel((x, 4)) > 200]
        assert columns[0] == pytest.approx(36, abs=1)


def test_max_seconds_limits_the_gif_but_not_the_poster(clip: Path):
    result = make_preview(clip, max_seconds=0.5, width=32)

    frames = gif_frames(local(result.gif_path))
    assert len(frames) == result.frames == 5
    assert sum(delay for _, delay in frames) == 500
    assert {colour_name(img) for img, _ in frames} == {"red"}
    # The poster is still the middle of the whole video (found by seeking past the GIF's part).
    with Image.open(local(result.poster_path)) as poster:
        assert colour_name(poster) == "green"
    assert result.duration_seconds == pytest.approx(2.0)


def test_max_seconds_longer_than_the_video_takes_it_all(clip: Path):
    assert make_preview(clip, max_seconds=60).frames == 20


def test_fps_sets_the_sampling(clip: Path):
    result = make_preview(clip, fps=4)

    frames = gif_frames(local(result.gif_path))
    assert len(frames) == 8
    assert [delay for _, delay in frames] == [250] * 8


def test_default_paths_are_next_to_the_video(clip: Path):
    result = make_preview(clip)

    assert result.gif_path == f"file://{clip.with_name('clip.preview.gif')}"
    assert result.poster_path == f"file://{clip.with_name('clip.poster.jpg')}"
    with Image.open(local(result.poster_path)) as poster:
        assert poster.format == "JPEG"
    assert result.width == 320  # the default width


@pytest.mark.parametrize(("name", "image_format"), [("p.jpg", "JPEG"), ("p.JPEG", "JPEG"), ("p.png", "PNG")])
def test_poster_format_follows_the_extension(clip: Path, tmp_path: Path, name: str, image_format: str):
    result = make_preview(clip, poster_path=tmp_path / name, width=16)

    with Image.open(tmp_path / name) as poster:
        assert poster.format == image_format
    assert result.poster_path == f"file://{tmp_path / name}"


def test_unsupported_poster_extension_is_refused_before_reading(tmp_path: Path):
    with pytest.raises(KlingFxInvalidInputError, match=r"poster_path must end with one of \.jpg"):
        make_preview(tmp_path / "not-even-there.mp4", poster_path=tmp_path / "poster.bmp")
    assert list(tmp_path.iterdir()) == []


def test_plain_paths_file_urls_and_object_storage_paths_all_work(clip: Path, tmp_path: Path):
    out = tmp_path / "deep" / "er"  # parent directories are created
    by_path = make_preview(str(clip), gif_path=str(out / "a.gif"), poster_path=str(out / "a.jpg"))
    by_url = make_preview(f"file://{clip}", gif_path=f"file://{out}/b.gif", poster_path=f"file://{out}/b.png")
    by_osp = make_preview(
        ObjectStoragePath(f"file://{clip}"),
        gif_path=ObjectStoragePath(f"file://{out}/c.gif"),
        poster_path=ObjectStoragePath(f"file://{out}/c.jpg"),
    )

    assert by_path.gif_path == f"file://{out}/a.gif"
    assert by_url.poster_path == f"file://{out}/b.png"
    assert by_osp.gif_path == f"file://{out}/c.gif"
    assert by_path.frames == by_url.frames == by_osp.frames == 20
    for name in ("a.gif", "a.jpg", "b.gif", "b.png", "c.gif", "c.jpg"):
        assert (out / name).stat().st_size > 0


def test_a_relative_path_is_resolved_against_the_working_directory(
    clip: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(clip.parent)

    result = make_preview("clip.mp4", gif_path="previews/x.gif")

    assert result.gif_path == f"file://{clip.parent}/previews/x.gif"


def test_result_is_json_able_for_xcom(clip: Path):
    result = make_preview(clip, width=16)

    data = result.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert set(data) == {
        "gif_path",
        "poster_path",
        "frames",
        "width",
        "height",
        "duration_seconds",
        "gif_bytes",
        "poster_bytes",
    }
    assert PreviewResult(**data) == result
    with pytest.raises(AttributeError):
        result.frames = 1  # type: ignore[misc]  # frozen


def test_the_emulators_video_and_the_reported_frame_count(tmp_path: Path):
    # The emulator's render="off" clip: a still gradient for 1 s, encoded like its effect videos.
    # Pillow merges consecutive frames that quantise alike, so the count is read from the GIF written.
    path = tmp_path / "still.mp4"
    path.write_bytes(render_tiny_video(1))

    result = make_preview(path, width=32)

    frames = gif_frames(local(result.gif_path))
    assert result.frames == len(frames) <= 10
    assert sum(delay for _, delay in frames) == 1000
    assert result.duration_seconds == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("container_format", "codec"),
    [
        ("m4v", "mpeg4"),  # timestamps, but no declared duration
        ("h264", "libx264"),  # raw H.264: neither timestamps nor a duration
    ],
)
def test_videos_that_declare_no_duration(tmp_path: Path, container_format: str, codec: str):
    if codec not in av.codecs_available:
        pytest.skip(f"this PyAV build has no {codec} encoder")
    path = encode(tmp_path / f"clip.{container_format}", container_format=container_format, codec=codec)

    result = make_preview(path, width=48, max_seconds=1.0)

    assert result.duration_seconds == pytest.approx(2.0)
    frames = gif_frames(local(result.gif_path))
    assert len(frames) == 10
    assert colour_name(frames[0][0]) == "red"
    with Image.open(local(result.poster_path)) as poster:
        assert colour_name(poster) == "green"


def _truncated(data: bytes) -> bytes:
    return data[: len(data) * 2 // 3]


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.mp4", lambda _v: b"", "the file is empty"),
        ("binary.mp4", lambda _v: bytes(range(256)) * 20, "not a video FFmpeg can read"),
        ("data.json", lambda _v: json.dumps({"not": "a video"}).encode(), "not a video FFmpeg can read"),
        # FFmpeg itself "decodes" a .txt file as ANSI art, and a photo as a one-frame stream.
        ("notes.txt", lambda _v: b"meeting notes, not a video\n" * 40, "'tty': a picture or text"),
        ("photo.png", lambda _v: sample_image_png("person-1.png"), "'png_pipe': a picture or text"),
        # Index at the end (as most encoders write it): cut off, FFmpeg cannot even open it.
        ("cut.mp4", lambda v: _truncated(v.read_bytes()), "not a video FFmpeg can read, or a truncated"),
        # Index at the front (faststart, as the emulator writes it): opens, then decoding comes short
        # of the index's frame count ("the file is truncated: it holds ..."); the FFmpeg of PyAV 17
        # (Python 3.10) stops with an error instead ("... corrupt or truncated").
        ("cut-faststart.mp4", lambda _v: _truncated(render_tiny_video(1)), "truncated"),
    ],
    ids=["empty", "binary", "json", "text", "png", "truncated", "truncated-faststart"],
)
def test_not_a_video_raises_a_preview_error_naming_the_path(
    tmp_path: Path, video: Path, name: str, content, reason: str
):
    bad = tmp_path / name
    bad.write_bytes(content(video))

    with pytest.raises(KlingFxPreviewError) as excinfo:
        make_preview(bad)

    assert f"file://{bad}:" in str(excinfo.value)
    assert reason in str(excinfo.value)
    assert excinfo.value.path == f"file://{bad}"
    assert isinstance(excinfo.value, KlingFxError)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no half-written preview


def test_a_missing_video_raises_a_preview_error_naming_the_path(tmp_path: Path):
    missing = tmp_path / "nowhere.mp4"

    with pytest.raises(KlingFxPreviewError, match=r"nowhere\.mp4: no such file"):
        make_preview(missing)


@pytest.mark.parametrize(
    "options",
    [
        {"width": 0},
        {"width": 12.5},
        {"fps": 0},
        {"fps": 60},
        {"fps": float("nan")},
        {"max_seconds": 0},
        {"max_seconds": -1},
        {"poster_at": 1.5},
        {"poster_at": -0.1},
    ],
)
def test_invalid_options_are_refused(clip: Path, options: dict):
    with pytest.raises(KlingFxInvalidInputError):
        make_preview(clip, **options)
    with pytest.raises(KlingFxInvalidInputError):
        KlingFxPreviewOperator(task_id="preview", video_path=str(clip), **options)


def test_outputs_may_not_overwrite_the_video(clip: Path):
    with pytest.raises(KlingFxInvalidInputError, match="must all differ"):
        make_preview(clip, gif_path=f"file://{clip}")
    with pytest.raises(KlingFxInvalidInputError, match="must all differ"):
        make_preview(clip, gif_path=clip.with_suffix(".png"), poster_path=clip.with_suffix(".png"))
    assert clip.read_bytes()[4:8] == b"ftyp"  # still the MP4


# -- the operator --------------------------------------------------------------------------------


def test_operator_execute_returns_the_result_for_xcom(clip: Path, tmp_path: Path, caplog, capsys):
    op = KlingFxPreviewOperator(
        task_id="preview",
        video_path=str(clip),
        gif_path=str(tmp_path / "out" / "preview.gif"),
        width=32,
        fps=5,
        max_seconds=1,
    )

    ti = XComRecorder()
    with caplog.at_level("INFO"):
        value = op.execute({"ti": ti})  # type: ignore[arg-type]  # execute reads only "ti"

    assert value["gif_path"] == f"file://{tmp_path}/out/preview.gif"
    assert value["poster_path"] == f"file://{clip.with_name('clip.poster.jpg')}"
    assert value["frames"] == 5
    assert (value["width"], value["height"]) == (32, 21)
    assert json.loads(json.dumps(value)) == value
    # What the Kling gallery finds the preview of a saved video by.
    assert ti.pushed == {
        "preview": {
            "video_path": str(clip),
            "gif_path": value["gif_path"],
            "poster_path": value["poster_path"],
        }
    }
    # Outside a task runner, Airflow's structlog may print the line rather than hand it to logging.
    logged = [r.getMessage() for r in caplog.records] + capsys.readouterr().out.splitlines()
    [line] = [text for text in logged if "Preview of" in text]
    assert value["gif_path"] in line and value["poster_path"] in line and "5 frames" in line


class XComRecorder:
    """The part of a task instance the operator uses: ``xcom_push``."""

    def __init__(self) -> None:
        self.pushed: dict[str, object] = {}

    def xcom_push(self, key: str, value: object) -> None:
        self.pushed[key] = value


def test_operator_template_fields_render(clip: Path, tmp_path: Path):
    op = KlingFxPreviewOperator(
        task_id="preview",
        video_path="{{ folder }}/clip.mp4",
        gif_path="{{ folder }}/{{ name }}.gif",
        poster_path="{{ folder }}/{{ name }}.png",
        width=16,
    )
    assert tuple(op.template_fields) == ("video_path", "gif_path", "poster_path")

    op.render_template_fields({"folder": str(clip.parent), "name": "rendered"})  # type: ignore[arg-type]
    value = op.execute({"ti": XComRecorder()})  # type: ignore[arg-type]

    assert value["gif_path"] == f"file://{clip.parent}/rendered.gif"
    assert value["poster_path"] == f"file://{clip.parent}/rendered.png"


def test_operator_empty_output_templates_mean_the_default_paths(clip: Path):
    # A pulled XCom that does not exist renders "None": it means "no path given", not a file named None.
    op = KlingFxPreviewOperator(task_id="preview", video_path=str(clip), gif_path="None", poster_path=" ")

    value = op.execute({"ti": XComRecorder()})  # type: ignore[arg-type]

    assert value["gif_path"].endswith("/clip.preview.gif")
    assert value["poster_path"].endswith("/clip.poster.jpg")


@pytest.mark.parametrize("rendered", ["None", "", "  "])
def test_operator_with_no_video_says_what_to_check(rendered: str):
    op = KlingFxPreviewOperator(task_id="preview", video_path=rendered)

    with pytest.raises(KlingFxInvalidInputError, match="did the upstream task save the video"):
        op.execute({})  # type: ignore[arg-type]


def test_gif_frames_are_palette_images_pillow_decodes(clip: Path):
    result = make_preview(clip, width=24)

    data = local(result.gif_path).read_bytes()
    with Image.open(io.BytesIO(data)) as gif:
        gif.seek(gif.n_frames - 1)
        gif.load()
    assert data[:6] == b"GIF89a"


def test_importing_the_modules_imports_neither_pyav_nor_pillow(import_check: subprocess.Popen[str]):
    # The DAG processor imports operator modules constantly: FFmpeg and Pillow wait for a task to run.
    out, err = import_check.communicate(timeout=120)
    assert import_check.returncode == 0, err
    assert out.strip() == "[]"
