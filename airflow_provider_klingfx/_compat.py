"""Imports that moved between Airflow 3.1 and 3.3, resolved once so the rest of the code is plain."""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowException

try:  # Airflow 3.2+ (task SDK 1.2+)
    from airflow.sdk.exceptions import AirflowFailException  # type: ignore[attr-defined,unused-ignore]
except ImportError:  # Airflow 3.1: still only in airflow.exceptions, where 3.3 warns it is deprecated
    from airflow.exceptions import AirflowFailException  # type: ignore[no-redef]

try:  # what the task SDK raises for a connection no secrets backend knows (3.2+)
    from airflow.sdk.exceptions import AirflowNotFoundException  # type: ignore[attr-defined,unused-ignore]
except ImportError:  # Airflow 3.1
    from airflow.exceptions import AirflowNotFoundException  # type: ignore[no-redef,assignment,unused-ignore]

try:
    from airflow.sdk.exceptions import AirflowSensorTimeout  # type: ignore[attr-defined,unused-ignore]
except ImportError:  # Airflow 3.1
    from airflow.exceptions import AirflowSensorTimeout  # type: ignore[no-redef,assignment,unused-ignore]

try:
    from airflow.sdk.exceptions import (  # type: ignore[attr-defined,unused-ignore]
        AirflowSkipException,
        AirflowTaskTimeout,
    )
except ImportError:  # Airflow 3.1
    from airflow.exceptions import (  # type: ignore[no-redef,assignment,unused-ignore]
        AirflowSkipException,
        AirflowTaskTimeout,
    )

__all__ = [
    "AirflowException",
    "AirflowFailException",
    "AirflowNotFoundException",
    "AirflowSensorTimeout",
    "AirflowSkipException",
    "AirflowTaskTimeout",
]
