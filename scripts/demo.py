"""`make demo`: one real DAG run, end to end, against the built-in emulator (or the real API).

1. Starts the emulator on 127.0.0.1 (skipped when AIMLAPI_KEY is set: then the real API is used).
2. Prepares a throw-away Airflow home (.airflow-demo/, SQLite) and migrates its database.
3. Runs the example DAG ``example_klingfx_hug`` with ``airflow dags test`` on the pro effects model
   (``MODEL``; said before the run, and the model the run used after it): the operator submits,
   defers, the trigger polls, the video URL lands in XCom and the MP4 is saved to demo-output/.
4. Checks the saved MP4 with PyAV, makes its GIF preview and poster frame, prints where everything
   is, and stops the emulator.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HOME = ROOT / ".airflow-demo"
OUT = ROOT / "demo-output"
DAG_ID = "example_klingfx_hug"
# The model the demo asks for: the pro one, which costs more than the standard one with a real key.
MODEL = "klingai/kling-video-v1.6-pro-effects"
# The vendor's own example photos, used with the real API.
REAL_PHOTOS = (
    "https://images.pexels.com/photos/733872/pexels-photo-733872.jpeg",
    "https://storage.googleapis.com/falserverless/juggernaut_examples/QEW5VrzccxGva7mPfEXjf.png",
)
EMULATOR_KEY = "demo-emulator-key"


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def start_emulator() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "klingfx_emulator",
            "--port",
            "0",
            "--api-key",
            EMULATOR_KEY,
            "--queued-seconds",
            "2",
            "--generating-seconds",
            "8",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("KLINGFX EMULATOR LISTENING "):
        proc.kill()
        raise SystemExit(f"the emulator did not start: {line!r}")
    return proc, line.rsplit(" ", 1)[1]


def airflow(args: list[str], env: dict[str, str], *, quiet: bool = False) -> int:
    return subprocess.run(
        [str(BIN / "airflow"), *args],
        env=env,
        check=False,
        stdout=subprocess.DEVNULL if quiet else None,
        stderr=subprocess.STDOUT if quiet else None,
    ).returncode


def xcoms(run_id: str) -> dict[str, object]:
    with sqlite3.connect(HOME / "airflow.db") as db:
        rows = db.execute(
            "SELECT key, value FROM xcom WHERE dag_id = ? AND run_id = ? AND task_id = 'hug'",
            (DAG_ID, run_id),
        ).fetchall()
    return {key: json.loads(value) if isinstance(value, str) else value for key, value in rows}


def last_run() -> tuple[str, str]:
    with sqlite3.connect(HOME / "airflow.db") as db:
        row = db.execute(
            "SELECT run_id, state FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (DAG_ID,)
        ).fetchone()
    return (row[0], row[1]) if row else ("", "missing")


def probe_mp4(path: Path) -> str:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        seconds = float(container.duration or 0) / 1_000_000
        size = f"{stream.codec_context.width}x{stream.codec_context.height}"
        return f"{seconds:.1f} s, {frames} frames decoded, {size}"


def main() -> int:
    real_key = os.environ.get("AIMLAPI_KEY", "").strip()
    emulator = None
    if real_key:
        say("AIMLAPI_KEY is set: using the real AI/ML API (this generation is billed to your account)")
        conn = {"conn_type": "klingfx", "host": "https://api.aimlapi.com", "password": real_key}
        photos = REAL_PHOTOS
    else:
        say("Starting the emulator of the AI/ML API (no key given, nothing is billed)")
        emulator, url = start_emulator()
        print(f"    emulator at {url}")
        conn = {"conn_type": "klingfx", "host": url, "password": EMULATOR_KEY}
        photos = (f"{url}/samples/person-1.png", f"{url}/samples/person-2.png")
    try:
        shutil.rmtree(HOME, ignore_errors=True)
        OUT.mkdir(exist_ok=True)
        target = OUT / f"hug-{time.strftime('%Y%m%d-%H%M%S')}.mp4"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")},
            "AIRFLOW_HOME": str(HOME),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "example_dags"),
            "AIRFLOW_CONN_KLINGFX_DEFAULT": json.dumps(conn),
            # Where the example DAG may save videos; the trigger only names the file.
            "AIRFLOW_VAR_KLINGFX_OUTPUT_BASE": OUT.resolve().as_uri(),
        }
        if emulator is not None:
            # Where the example DAG may read photos from (its default allows the vendor's sample hosts).
            env["AIRFLOW_VAR_KLINGFX_PHOTO_LOCATIONS"] = f"{url}/samples/"
        say(f"Preparing Airflow in {HOME} (SQLite)")
        if airflow(["db", "migrate"], env, quiet=True) != 0:
            raise SystemExit("airflow db migrate failed")
        say(f"Running DAG {DAG_ID} with 'airflow dags test' (hug: two photos, first on the left)")
        print(f"    model: {MODEL}", flush=True)
        conf = {"left_photo": photos[0], "right_photo": photos[1], "output_name": target.name, "model": MODEL}
        code = airflow(["dags", "test", DAG_ID, "-c", json.dumps(conf)], env)
        run_id, state = last_run()
        if code != 0 or state != "success":
            raise SystemExit(f"the DAG run ended {state} (exit {code}); see the log above")
        values = xcoms(run_id)
        request = values.get("request")
        used = request.get("model") if isinstance(request, dict) else None
        if used != MODEL:
            raise SystemExit(f"the run used the model {used!r}, not {MODEL!r}")
        say("Done")
        print(f"    model         : {used}")
        print(f"    generation id : {values.get('generation_id')}")
        print(f"    video URL     : {values.get('return_value')}")
        print(f"    saved MP4     : {target} ({target.stat().st_size} bytes; {probe_mp4(target)})")
        from airflow_provider_klingfx.preview import make_preview

        preview = make_preview(str(target))
        print(f"    GIF preview   : {preview.gif_path.removeprefix('file://')} ({preview.frames} frames)")
        print(f"    poster frame  : {preview.poster_path.removeprefix('file://')}")
        usage = values.get("usage")
        if usage:
            print(f"    usage         : {usage}")
        return 0
    finally:
        if emulator is not None:
            emulator.terminate()
            try:
                emulator.wait(timeout=10)
            except subprocess.TimeoutExpired:
                emulator.kill()


if __name__ == "__main__":
    sys.exit(main())
