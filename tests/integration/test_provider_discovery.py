"""Airflow discovers the provider through its entry point, with the declarative connection form."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from airflow_provider_klingfx import _api
from airflow_provider_klingfx.get_provider_info import get_provider_info
from airflow_provider_klingfx.hooks.klingfx import _DECLARATIVE_CONNECTION_FORMS

pytestmark = pytest.mark.airflow_run


def test_package_name_matches_the_distribution():
    from importlib.metadata import distribution

    info = get_provider_info()
    assert info["package-name"] == distribution("airflow-provider-klingfx").metadata["Name"]
    (conn,) = info["connection-types"]
    assert conn["connection-type"] == "klingfx"
    behaviour = conn["ui-field-behaviour"]
    assert behaviour["relabeling"] == {"host": "Base URL", "password": "API key"}
    assert behaviour["placeholders"]["host"] == "https://api.aimlapi.com"
    # The port is honoured (a Base URL without one takes it), so the form shows it.
    assert set(behaviour["hidden-fields"]) == {"schema", "login", "extra"}
    assert conn["conn-fields"]["endpoint"]["schema"]["enum"] == ["universal", "legacy"]
    # The form offers exactly the schedules the connection parser accepts.
    assert conn["conn-fields"]["poll_schedule"]["schema"]["enum"] == list(_api.POLL_SCHEDULES)


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("list", "airflow-provider-klingfx"),
        ("hooks", "airflow_provider_klingfx.hooks.klingfx.KlingFxHook"),
        ("behaviours", "klingfx"),
        ("links", "airflow_provider_klingfx.operators.klingfx.KlingFxVideoLink"),
        ("triggers", "airflow_provider_klingfx.triggers.klingfx"),
    ],
)
def test_airflow_providers_commands_show_the_provider(airflow, command, expected):
    if command == "behaviours" and not _DECLARATIVE_CONNECTION_FORMS:
        pytest.skip(
            "Airflow 3.1 reads connection-form behaviour from hook methods only with wtforms installed"
        )
    proc = airflow.run("providers", command)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert expected in out
    ours = [line for line in out.splitlines() if "warn" in line.lower() and "klingfx" in line.lower()]
    assert ours == []


def test_hook_defines_no_deprecated_form_methods_where_provider_info_is_read():
    """On 3.2+ the form comes from provider info; the hook methods would emit deprecation warnings."""
    from airflow_provider_klingfx.hooks.klingfx import KlingFxHook

    for method in ("get_connection_form_widgets", "get_ui_field_behaviour"):
        assert (method in KlingFxHook.__dict__) is (not _DECLARATIVE_CONNECTION_FORMS)


FORM_SCRIPT = """
import json
from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService

(meta,) = [m for m in HookMetaService.hook_meta_data() if m.connection_type == "klingfx"]
print("FORM " + meta.model_dump_json())
"""


def test_the_ui_connection_form_shows_every_field_on_this_airflow(airflow):
    """What the UI's connection form is built from (the API server's hook metadata): on 3.1 from the
    hook's widget methods, on 3.2+ from provider info. Every field must be there on both."""
    proc = subprocess.run(
        [sys.executable, "-c", FORM_SCRIPT], env=airflow.env, capture_output=True, text=True, check=False
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("FORM ")]
    assert len(lines) == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    form = json.loads(lines[0].removeprefix("FORM "))
    extra = form["extra_fields"]
    assert set(extra) == {
        "endpoint",
        "read_timeout",
        "connect_timeout",
        "poll_schedule",
        "expected_seconds",
        "poll_coordination",
        "max_polls_per_second",
        "allow_private_hosts",
    }
    assert extra["endpoint"]["schema"]["enum"] == ["universal", "legacy"]
    assert extra["poll_schedule"]["schema"]["enum"] == list(_api.POLL_SCHEDULES)
    assert extra["poll_coordination"]["schema"]["enum"] == list(_api.POLL_COORDINATIONS)
    standard = form["standard_fields"]
    assert standard["host"]["title"] == "Base URL"
    assert standard["password"]["title"] == "API key"
    assert standard["port"] is None or standard["port"]["hidden"] is False
    assert standard["login"]["hidden"] is True
