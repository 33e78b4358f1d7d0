"""Imports that moved between Airflow 3.1 and 3.3, resolved once so the rest of the code is plain."""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowException

try:  # Airflow 3.2+ (task SDK 1.2+)
    from airflow.sdk.exceptions import AirflowFailException  # type: ignore[attr-defined,unused-ignore]
except ImportError:  # Airflow 3.1: still only in airflow.exceptions, where 3.3 warns it is deprecated
    from airflow.exceptions import AirflowFailException  # type: ignore[no-redef]

__all__ = ["AirflowException", "AirflowFailException"]
