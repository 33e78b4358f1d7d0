"""Provider metadata read by Airflow through the ``apache_airflow_provider`` entry point.

Airflow reads the connection form (``conn-fields``, ``ui-field-behaviour``) from here without
importing the hook, so this module must stay import-free.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_klingfx import __version__

DEFAULT_BASE_URL = "https://api.aimlapi.com"


def get_provider_info() -> dict[str, Any]:
    """Return the provider's metadata for Airflow's providers manager."""
    return {
        # Must equal the distribution name exactly, or `airflow providers list` breaks for everyone.
        "package-name": "airflow-provider-klingfx",
        "name": "Kling Effects (AI/ML API)",
        "description": "Kling v1.6 effects video generation through the AI/ML API "
        "(hug, kiss, heart_gesture, squish, expansion and 75 more scenes).",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Kling Effects (AI/ML API)",
                "external-doc-url": "https://docs.aimlapi.com/api-references/video-models/kling-ai/v1.6-standard-effects",
                "tags": ["service"],
            }
        ],
        "hooks": [
            {
                "integration-name": "Kling Effects (AI/ML API)",
                "python-modules": ["airflow_provider_klingfx.hooks.klingfx"],
            }
        ],
        "operators": [
            {
                "integration-name": "Kling Effects (AI/ML API)",
                "python-modules": [
                    "airflow_provider_klingfx.operators.klingfx",
                    "airflow_provider_klingfx.operators.preview",
                ],
            }
        ],
        "sensors": [
            {
                "integration-name": "Kling Effects (AI/ML API)",
                "python-modules": ["airflow_provider_klingfx.sensors.klingfx"],
            }
        ],
        "triggers": [
            {
                "integration-name": "Kling Effects (AI/ML API)",
                "python-modules": ["airflow_provider_klingfx.triggers.klingfx"],
            }
        ],
        "extra-links": ["airflow_provider_klingfx.operators.klingfx.KlingFxVideoLink"],
        # Settings of the views in Airflow's UI (`airflow config list` shows them; AIRFLOW__KLINGFX__*).
        "config": {
            "klingfx": {
                "description": "The provider's views in Airflow's UI (the Kling video tab and galleries).",
                "options": {
                    "views_enabled": {
                        "description": "Show the views. False leaves them out of Airflow's UI and "
                        "the api-server, without uninstalling the provider.",
                        "version_added": "0.3.0",
                        "type": "boolean",
                        "example": "False",
                        "default": "True",
                    },
                    "views_read_prefixes": {
                        "description": "Comma-separated folders the api-server may read saved "
                        "videos, GIF previews, posters and photos from, to show them: "
                        "file:///path/ or scheme://[conn_id@]bucket/path/ (read with that "
                        "connection). Empty (the default): the views play the vendor's copy of each "
                        "video and show no stored picture. Anyone who may write an XCom can make the "
                        "views show any video or picture under these folders: list only folders "
                        "every user of the views may see.",
                        "version_added": "0.3.0",
                        "type": "string",
                        "example": "s3://aws_media@media/klingfx/, file:///data/klingfx/",
                        "default": "",
                    },
                },
            }
        },
        "connection-types": [
            {
                "connection-type": "klingfx",
                "hook-class-name": "airflow_provider_klingfx.hooks.klingfx.KlingFxHook",
                "hook-name": "Kling Effects (AI/ML API)",
                "conn-fields": {
                    "endpoint": {
                        "label": "Endpoint style",
                        "description": "'universal' (/v2/video/generations, the default) or "
                        "'legacy' (/v2/generate/video/kling/generation).",
                        "schema": {
                            "type": ["string", "null"],
                            "default": "universal",
                            "enum": ["universal", "legacy"],
                        },
                    },
                    "read_timeout": {
                        "label": "Read timeout (s)",
                        "description": "Seconds to wait for an answer from the API (default 30).",
                        "schema": {"type": ["number", "null"], "default": 30},
                    },
                    "connect_timeout": {
                        "label": "Connect timeout (s)",
                        "description": "Seconds to open a connection to the API (default 10).",
                        "schema": {"type": ["number", "null"], "default": 10},
                    },
                    "poll_schedule": {
                        "label": "Poll schedule",
                        "description": "'fixed' (every poll interval, the default) or 'adaptive' "
                        "(no poll until 82% of the expected duration, then every 0.7 x the poll "
                        "interval: about half the polls).",
                        "schema": {
                            "type": ["string", "null"],
                            "default": "fixed",
                            "enum": ["fixed", "adaptive"],
                        },
                    },
                    "expected_seconds": {
                        "label": "Expected generation time (s)",
                        "description": "How long a generation usually takes, for the adaptive "
                        "schedule (default 120).",
                        "schema": {"type": ["number", "null"], "default": 120},
                    },
                    "poll_coordination": {
                        "label": "Poll coordination",
                        "description": "'shared' (the default: the polls of one triggerer or worker "
                        "slow down together on the API's 429s and hold during an outage, probing "
                        "with one request) or 'per_trigger' (each poll backs off on its own).",
                        "schema": {
                            "type": ["string", "null"],
                            "default": "shared",
                            "enum": ["shared", "per_trigger"],
                        },
                    },
                    "max_polls_per_second": {
                        "label": "Max polls per second",
                        "description": "Cap on the polls per second one triggerer (or worker) sends "
                        "with this key; empty for none (429s still slow polls down).",
                        "schema": {"type": ["number", "null"], "default": None},
                    },
                    "allow_private_hosts": {
                        "label": "Allow private hosts",
                        "description": "Let photo checks and video downloads reach loopback, "
                        "private and link-local addresses (URLs chosen by DAG Params, XComs or the "
                        "vendor's answer). Empty: only when the Base URL is a loopback address "
                        "(the local emulator).",
                        "schema": {"type": ["boolean", "null"], "default": None},
                    },
                },
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "login", "extra"],
                    "relabeling": {"host": "Base URL", "password": "API key"},
                    "placeholders": {
                        "host": DEFAULT_BASE_URL,
                        "port": "the Base URL's (443 for https)",
                        "password": "your AI/ML API key",
                    },
                },
            }
        ],
    }
