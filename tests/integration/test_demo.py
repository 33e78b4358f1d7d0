"""`make demo`'s script, run for real: it must end with a playable MP4 of the requested length."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.airflow_harness import REPO

pytestmark = pytest.mark.airflow_run


def test_demo_leaves_a_playable_mp4():
    import av

    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW") and k != "AIMLAPI_KEY"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    saved = re.search(r"saved MP4\s+: (\S+\.mp4)", proc.stdout)
    assert saved, proc.stdout[-2000:]
    assert re.search(r"video URL\s+: http://127\.0\.0\.1:\d+/files/", proc.stdout)
    # It says which model it runs before the run, and which one the run used after it.
    pro = "klingai/kling-video-v1.6-pro-effects"
    assert f"    model: {pro}\n" in proc.stdout.split("'airflow dags test'", 1)[1]
    assert re.search(rf"model\s+: {re.escape(pro)}\n", proc.stdout)
    path = Path(saved.group(1))
    with av.open(str(path)) as container:
        frames = sum(1 for _ in container.decode(video=0))
        seconds = float(container.duration or 0) / 1_000_000
    assert abs(seconds - 5.0) < 0.25
    assert frames >= 100
    gif = re.search(r"GIF preview\s+: (\S+\.gif) \((\d+) frames\)", proc.stdout)
    assert gif, proc.stdout[-2000:]
    from PIL import Image

    with Image.open(gif.group(1)) as image:
        assert image.format == "GIF"
        assert image.n_frames == int(gif.group(2)) > 1
