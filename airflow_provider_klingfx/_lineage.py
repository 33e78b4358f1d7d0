"""OpenLineage for :class:`~airflow_provider_klingfx.operators.klingfx.KlingFxEffectOperator`.

The photos are the inputs and the video the output, each named as the OpenLineage dataset naming
spec names a location (https://openlineage.io/docs/spec/naming), so a generation joins the lineage
of whatever wrote the photos or reads the video:

=================================  ==========================  ==========================
reference                          namespace                   name
=================================  ==========================  ==========================
``s3://[conn_id@]bucket/key``      ``s3://bucket``             ``key``
``gs://bucket/key`` (``gcs://``)   ``gs://bucket``             ``key``
other storage ``scheme://b/key``   ``scheme://b``              ``key``
``file:///abs/path`` or ``/abs``   ``file``                    ``/abs/path``
``https://host:port/path?query``   ``https://host:port``       ``/path``
=================================  ==========================  ==========================

The ``conn_id@`` of an object-storage path is an Airflow connection, not part of the location, and
is dropped; so are a URL's user info, query and fragment: a presigned URL carries its credentials
in the query, and only the photos as given (never their presigned URLs) are described. Local files
are named as Airflow's own ``file`` assets are (``common.io``): namespace ``file``, absolute path.
The storage names match what the Amazon and Google providers give ``s3://`` and ``gs://`` assets.

Imported only by the operator's ``get_openlineage_facets_*`` methods, i.e. only when the
OpenLineage provider is installed and enabled; OpenLineage itself is imported inside functions.
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from airflow_provider_klingfx.domain import EffectRequest, KlingFxInvalidInputError, redact_url

if TYPE_CHECKING:
    from airflow.providers.common.compat.openlineage.facet import Dataset
    from airflow.providers.openlineage.extractors import OperatorLineage


#: Storage schemes named differently by the spec than by fsspec / Airflow's object storage.
_SCHEME_ALIASES = {"gcs": "gs"}
#: Facet name of :func:`_run_facets` in the run's facets.
RUN_FACET_NAME = "klingfx"


class KlingFxEffectOperator(Protocol):
    """What lineage reads of the effects operator (a protocol: the operator module imports this one)."""

    effect_scene: Any
    image_urls: Any
    duration: Any
    model: Any
    output_path: Any
    delivered: Any
    log: Any


def dataset_naming(ref: object) -> tuple[str, str] | None:
    """The OpenLineage ``(namespace, name)`` of a photo or video location, or None if it has none.

    :param ref: a photo reference as :meth:`EffectRequest.build` gives it, an ``output_path``
        (string, plain local path or ``ObjectStoragePath``) or a video URL.
    :returns: None for a ``data:`` URI or anything unreadable.
    """
    text = str(ref).strip()
    if not text:
        return None
    if "://" not in text:
        if text.lower().startswith("data:"):
            return None
        return "file", os.path.abspath(text)  # a plain local path, as the operator saves to it
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        host = parts.hostname or ""
        if not host:
            return None
        if ":" in host:  # IPv6
            host = f"[{host}]"
        return f"{scheme}://{host}{f':{port}' if port is not None else ''}", parts.path or "/"
    # The authority without a connection id (s3://conn_id@bucket) or user info.
    authority = parts.netloc.rpartition("@")[2]
    if scheme in ("file", "local"):
        if not parts.path:
            return None
        host = "" if authority in ("", "localhost") else authority
        return (f"file://{host}" if host else "file"), parts.path
    scheme = _SCHEME_ALIASES.get(scheme, scheme)
    if not authority:
        return scheme, parts.path or "/"
    return f"{scheme}://{authority}", parts.path.lstrip("/") or "/"


def to_dataset(ref: object, *, redact: bool = False) -> Dataset | None:
    """An OpenLineage dataset for a location (see :func:`dataset_naming`).

    :param ref: the location.
    :param redact: pass the URL through :func:`~airflow_provider_klingfx.domain.redact_url` first
        (for the vendor's video URL, which may be signed).
    """
    from airflow.providers.common.compat.openlineage.facet import Dataset

    naming = dataset_naming(redact_url(str(ref)) if redact else ref)
    return None if naming is None else Dataset(namespace=naming[0], name=naming[1])


@functools.cache
def _run_facet_class() -> Any:
    from airflow.providers.common.compat.openlineage.facet import RunFacet
    from attrs import define

    @define
    class KlingFxRunFacet(RunFacet):  # type: ignore[misc,valid-type]
        """The Kling generation a task run made: its id at the AI/ML API, scene, model, duration."""

        effectScene: str
        model: str
        duration: int
        generationId: str | None = None

        # Not secrets: keep the redactor of the OpenLineage provider off them.
        _additional_skip_redact = ["effectScene", "model", "duration", "generationId"]

    return KlingFxRunFacet


def _run_facets(request: EffectRequest, generation_id: str | None) -> dict[str, Any]:
    facet = _run_facet_class()(
        effectScene=request.effect_scene,
        model=request.model,
        duration=request.duration,
        generationId=generation_id,
    )
    return {RUN_FACET_NAME: facet}


def _inputs(request: EffectRequest) -> list[Dataset]:
    return [ds for ref in request.image_urls if (ds := to_dataset(ref)) is not None]


def _request(operator: KlingFxEffectOperator) -> EffectRequest:
    return EffectRequest.build(operator.effect_scene, operator.image_urls, operator.duration, operator.model)


def _empty(operator: KlingFxEffectOperator, when: str, exc: Exception) -> OperatorLineage:
    from airflow.providers.openlineage.extractors import OperatorLineage

    if isinstance(exc, KlingFxInvalidInputError):
        # The task itself fails (or failed) on the same inputs, saying so; no need to repeat it.
        operator.log.debug("OpenLineage %s: no lineage for invalid inputs: %s", when, exc)
    else:
        operator.log.warning(
            "OpenLineage %s: could not describe the photos and video of this task (%s: %s); "
            "sending no inputs or outputs. The task itself is not affected.",
            when,
            type(exc).__name__,
            exc,
        )
    return OperatorLineage()


def lineage_on_start(operator: KlingFxEffectOperator) -> OperatorLineage:
    """The photos as inputs and ``output_path`` (if set) as the output; never raises.

    :param operator: the operator, its template fields rendered.
    """
    from airflow.providers.openlineage.extractors import OperatorLineage

    try:
        request = _request(operator)
        output = to_dataset(operator.output_path) if operator.output_path else None
        return OperatorLineage(
            inputs=_inputs(request),
            outputs=[output] if output is not None else [],
            run_facets=_run_facets(request, None),
        )
    except Exception as exc:
        return _empty(operator, "start", exc)


def lineage_on_complete(operator: KlingFxEffectOperator, task_instance: Any) -> OperatorLineage:
    """The photos as inputs; the saved video (else the vendor's video URL, redacted) as the output.

    The video is what this run of the operator delivered (:attr:`delivered`, set when the task
    succeeded, in the same process the OpenLineage listener runs in or forks from), not read back
    from XCom: under ``airflow dags test`` the listener's fork cannot read XComs. The provider also
    calls this for a failed task (the operator has no ``get_openlineage_facets_on_failure``): then
    only the photos are named. Never raises.

    :param operator: the operator, its template fields rendered.
    :param task_instance: the finished task instance (unused: see above).
    """
    from airflow.providers.openlineage.extractors import OperatorLineage

    try:
        request = _request(operator)
        delivered = operator.delivered
        output = None
        if delivered is not None:
            output = to_dataset(delivered.output_path) if delivered.output_path else None
            output = output or to_dataset(delivered.video_url, redact=True)
        return OperatorLineage(
            inputs=_inputs(request),
            outputs=[output] if output is not None else [],
            run_facets=_run_facets(request, delivered.generation_id if delivered else None),
        )
    except Exception as exc:
        return _empty(operator, "complete", exc)
