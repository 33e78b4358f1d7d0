"""A secrets backend that fails to start once, as a Vault or a cloud secrets manager behind a network
hiccup does; otherwise it knows no connection, so lookups fall through to the next backend.

Airflow's task SDK swallows the errors of a backend's *lookups* (the connection then looks
"not defined"), but an error while *starting* the backend reaches the caller: that is the hiccup a
hook must not mistake for a missing connection. Configured as the workers' backend::

    AIRFLOW__WORKERS__SECRETS_BACKEND=tests.flaky_secrets.OnceBrokenBackend
    AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS='{"armed": "/tmp/armed"}'

While the file ``armed`` exists, the next start deletes it and raises ``ConnectionError``.
"""

from __future__ import annotations

from pathlib import Path

from airflow.secrets import BaseSecretsBackend


class OnceBrokenBackend(BaseSecretsBackend):
    """Raises ``ConnectionError`` from its constructor once per arming."""

    def __init__(self, armed: str, **kwargs: object) -> None:
        super().__init__(**kwargs)
        marker = Path(armed)
        if marker.exists():
            marker.unlink()
            raise ConnectionError("secrets backend unreachable: connect timeout to vault.internal:8200")

    def get_conn_value(self, conn_id: str) -> str | None:
        return None

    def get_variable(self, key: str) -> str | None:
        return None
