"""Test-only auth manager: Airflow's SimpleAuthManager, plus a list of readable DAGs per user.

``KLINGFX_TEST_DAG_ACL="alice:dag_a|dag_c;bob:dag_b"``: alice may read only ``dag_a`` and
``dag_c``, bob only ``dag_b``; users not listed keep SimpleAuthManager's role-based rights.
``KLINGFX_TEST_NO_XCOM="carol"``: carol may read DAGs but none of their XComs. This is
the per-DAG access control a real deployment gets from FAB or Keycloak, in a few lines, so the
tests can check the views never show a user a DAG the auth manager hides from them.

The api-server loads it through ``AIRFLOW__CORE__AUTH_MANAGER=tests.ui.acl_auth_manager
.DagAclSimpleAuthManager`` with the repository's root on ``PYTHONPATH`` (tests/ui/conftest.py).
"""

from __future__ import annotations

import os
from typing import Any

from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

ACL_ENV = "KLINGFX_TEST_DAG_ACL"
#: ``KLINGFX_TEST_NO_XCOM="carol"``: users who may read DAGs but not their XComs.
NO_XCOM_ENV = "KLINGFX_TEST_NO_XCOM"


def dag_acl() -> dict[str, set[str]]:
    """User name -> the DAG ids that user may read, from ``$KLINGFX_TEST_DAG_ACL``."""
    acl: dict[str, set[str]] = {}
    for part in filter(None, os.environ.get(ACL_ENV, "").split(";")):
        user, _, dags = part.partition(":")
        acl[user.strip()] = {d.strip() for d in dags.split("|") if d.strip()}
    return acl


class DagAclSimpleAuthManager(SimpleAuthManager):
    """SimpleAuthManager whose listed users may read only their listed DAGs."""

    def is_authorized_dag(
        self,
        *,
        method: Any,
        user: Any,
        access_entity: Any = None,
        details: Any = None,
    ) -> bool:
        from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity

        no_xcom = set(filter(None, os.environ.get(NO_XCOM_ENV, "").split(",")))
        if access_entity == DagAccessEntity.XCOM and user.get_name() in no_xcom:
            return False
        allowed = dag_acl().get(user.get_name())
        # No DAG id means "DAGs in general" (the list endpoints, which then filter through
        # get_authorized_dag_ids): allowed, as FAB allows a role with access to some DAG.
        dag_id = getattr(details, "id", None)
        if allowed is not None and dag_id is not None and dag_id not in allowed:
            return False
        return super().is_authorized_dag(
            method=method, user=user, access_entity=access_entity, details=details
        )
