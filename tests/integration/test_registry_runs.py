"""Two DAG runs for the same photo, started at the same moment (as a message delivered twice would):
exactly one generation is paid for, and both runs deliver it. Two Airflow homes, two real
``airflow dags test`` processes, one registry in an S3 bucket on moto (a local folder's atomic create
is tested in tests/test_registry.py)."""

from __future__ import annotations

import threading

import pytest

from klingfx_emulator import RunningEmulator
from tests.airflow_harness import AirflowEnv
from tests.conftest import API_KEY

pytestmark = pytest.mark.airflow_run


def test_two_runs_for_the_same_photo_at_once_pay_once(tmp_path, dag_emulator: RunningEmulator, s3):
    store = "s3"
    dag_emulator.reset()
    client = s3["client"]
    client.create_bucket(Bucket=f"photos-{store}")
    client.put_object(Bucket=f"photos-{store}", Key="in/me.png", Body=sample(dag_emulator))
    client.create_bucket(Bucket="registry-s3")
    registry = "s3://aws_moto@registry-s3/klingfx/"
    conf = {"photo": f"s3://aws_moto@photos-{store}/in/me.png", "registry": registry}
    conn = {"conn_type": "klingfx", "host": dag_emulator.url, "password": API_KEY}
    homes = [AirflowEnv(tmp_path / f"home-{i}", conn) for i in (1, 2)]
    for home in homes:
        home.env |= s3["env"]
        home.migrate()
    results = [None, None]

    def run(i: int) -> None:
        results[i] = homes[i].dags_test("test_klingfx_registry", conf)

    threads = [threading.Thread(target=run, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for result in results:
        assert result.state == "success", result.output[-5000:]
    assert dag_emulator.stats()["submissions"] == 1
    gen_ids = {result.xcom("squish", "generation_id") for result in results}
    assert len(gen_ids) == 1
    delivered = [r for r in results if "paid for by" in r.output]
    assert len(delivered) == 1  # the other run said whose generation it delivered
    # A third run later, the same photo version: delivered again, nothing paid.
    third = homes[0].dags_test("test_klingfx_registry", conf)
    assert third.state == "success" and third.xcom("squish", "generation_id") in gen_ids
    # The photo replaced under the same key (a new ETag): a new generation is paid for.
    client.put_object(Bucket=f"photos-{store}", Key="in/me.png", Body=sample(dag_emulator, "person-2.png"))
    fourth = homes[1].dags_test("test_klingfx_registry", conf)
    assert fourth.state == "success" and fourth.xcom("squish", "generation_id") not in gen_ids
    assert dag_emulator.stats()["submissions"] == 2


def sample(emulator: RunningEmulator, name: str = "person-1.png") -> bytes:
    import urllib.request

    with urllib.request.urlopen(f"{emulator.url}/samples/{name}", timeout=30) as resp:
        return resp.read()
