"""Every error the provider raises, typed by what the user can do about it."""

from __future__ import annotations

from typing import Final

from airflow_provider_klingfx._compat import AirflowException, AirflowFailException
from airflow_provider_klingfx.domain.privacy import redact_urls


class KlingFxError(AirflowException):
    """Base class of every error this provider raises."""


class KlingFxInvalidInputError(KlingFxError, AirflowFailException):
    """The request or the connection is invalid; nothing was sent to the API.

    A retry cannot fix it, so it fails the task without retries.
    """


class KlingFxConnectionConfigError(KlingFxInvalidInputError):
    """The Airflow connection is missing, has no API key, or points somewhere unsafe."""


class KlingFxAPIError(KlingFxError):
    """The API answered a request with an HTTP error.

    :param status_code: the HTTP status code.
    :param vendor_message: the API's own words, taken from its error body.
    :param request_id: the vendor's request id, when it gave one (quote it to their support).
    :param method: the HTTP method of the request.
    :param path: the path of the request (never the query, never a header).
    :param retry_after: seconds the API asked us to wait (``Retry-After``), if any.
    """

    def __init__(
        self,
        status_code: int,
        vendor_message: str,
        *,
        request_id: str | None = None,
        method: str = "",
        path: str = "",
        retry_after: float | None = None,
    ) -> None:
        self.status_code = status_code  # type: ignore[assignment]  # AirflowException types it HTTPStatus
        vendor_message = redact_urls(vendor_message)
        self.vendor_message = vendor_message
        self.request_id = request_id
        self.method = method
        self.path = path
        self.retry_after = retry_after
        hint = _STATUS_HINTS.get(status_code, "")
        text = f"AI/ML API answered {status_code} to {method} {path}: {vendor_message}".replace("  ", " ")
        if request_id:
            text += f" (request id {request_id})"
        if hint:
            text += f". {hint}"
        super().__init__(text)


class KlingFxAuthError(KlingFxAPIError, AirflowFailException):
    """The API refused the key (401) or the account (403, e.g. out of credits). Retrying won't help."""


_STATUS_HINTS: Final[dict[int, str]] = {
    401: "Check the API key in the connection's password field (Admin > Connections)",
    403: "The key was accepted but the account may not call this model or may be out of credits",
    404: "The generation id is unknown to this API endpoint",
    429: "Rate limited by the API",
}


class KlingFxTransportError(KlingFxError):
    """The request did not get an HTTP answer: connection refused or dropped, or a timeout.

    :param reached_server: False when the request provably never reached the API (connection
        refused, DNS failure, connect timeout); True when it may have been received.
    """

    def __init__(self, message: str, *, reached_server: bool) -> None:
        self.reached_server = reached_server
        super().__init__(message)


class KlingFxConnectionLookupError(KlingFxError):
    """Reading the Airflow connection failed for a reason other than "not found".

    A secrets backend or Airflow's API that hiccups is not a configuration error: the read is
    retried (in the triggerer) or the task is retried (before anything was paid for).
    """


class KlingFxMalformedResponseError(KlingFxError):
    """The API answered 200 but the body was not the JSON this provider expects."""


class KlingFxUnsafeUrlError(KlingFxError, AirflowFailException):
    """A URL that is not the API (a photo, a video) leads to a loopback, private or link-local
    address, or redirects where a photo check does not follow. Nothing was read from it.

    Whoever chose the URL (a DAG-run Param, an XCom, the vendor's answer) must not make a worker
    read from the worker's own network. The connection's extra ``allow_private_hosts`` allows it.
    """


class KlingFxAmbiguousSubmissionError(KlingFxError, AirflowFailException):
    """A submission failed in a way that may have created (and billed) a generation anyway.

    The provider never resubmits in that case: a second try could pay twice. The task fails
    without retries; look for the generation on the vendor's dashboard.
    """


class KlingFxGenerationFailedError(KlingFxError, AirflowFailException):
    """The vendor ran the generation and reported ``status: error`` (e.g. no face in a photo).

    The same inputs would fail again, so it fails the task without retries.

    :param generation_id: the vendor's generation id.
    :param reason: the vendor's reason, readable.
    :param error_type: the vendor's error type or name, when it gave one.
    """

    def __init__(self, generation_id: str, reason: str, error_type: str | None = None) -> None:
        self.generation_id = generation_id
        self.reason = reason
        self.error_type = error_type
        kind = f" [{error_type}]" if error_type else ""
        super().__init__(f"Kling generation {generation_id} failed at the vendor: {reason}{kind}")


class KlingFxTimeoutError(KlingFxError):
    """The generation did not finish before the deadline. It may still finish at the vendor.

    :param generation_id: the vendor's generation id.
    :param waited_seconds: how long it was waited for, from submission.
    :param last_status: the last status seen.
    """

    def __init__(self, generation_id: str, waited_seconds: float, last_status: str | None = None) -> None:
        self.generation_id = generation_id
        self.waited_seconds = waited_seconds
        self.last_status = last_status
        seen = f" (last status: {last_status})" if last_status else ""
        super().__init__(
            f"Kling generation {generation_id} did not finish within {waited_seconds:.0f}s{seen}; "
            "it may still complete at the vendor: raise `timeout` or watch it with KlingFxGenerationSensor"
        )


class KlingFxRetryWouldResubmitError(KlingFxError, AirflowFailException):
    """A failure after a paid submission that a retry could not reattach to.

    A retry finds an earlier try's generation only in ``task_state_store``: Airflow 3.1 and 3.2 have
    none, and on 3.3+ writing the record can fail. Then a retry would submit and pay for a new one, so
    the task fails without retries instead, naming the generation so its video can still be fetched.

    :param generation_id: the paid generation.
    :param cause: the failure that would otherwise have been retried.
    """

    def __init__(self, generation_id: str, cause: BaseException) -> None:
        self.generation_id = generation_id
        self.cause = cause
        super().__init__(
            f"{type(cause).__name__}: {cause}. Not retrying: a retry could not find this generation (no "
            "task_state_store before Airflow 3.3, or its record could not be written), so it would submit "
            f"and pay for a new one. Generation {generation_id} is paid for; fetch its video with "
            f"KlingFxGenerationSensor(generation_id={generation_id!r}), or clear the task to pay anew"
        )


class KlingFxReattachElsewhereError(KlingFxError, AirflowFailException):
    """A retry found its paid generation, made at another API URL than the connection now names.

    The API the connection points at would not know the id (404), which would look like a reason to
    submit and pay again; the task fails instead, naming both URLs.

    :param generation_id: the paid generation.
    :param made_at: the create URL it was made at.
    :param now_at: the create URL the connection names now.
    :param conn_id: the connection.
    """

    def __init__(self, generation_id: str, made_at: str, now_at: str, conn_id: str) -> None:
        self.generation_id = generation_id
        self.made_at = made_at
        self.now_at = now_at
        super().__init__(
            f"Generation {generation_id} was made at {made_at}, but connection {conn_id!r} now points at "
            f"{now_at}; not submitting (and paying) again. Point the connection back, or fetch it with "
            f"KlingFxGenerationSensor(generation_id={generation_id!r}) on a connection to {made_at}"
        )


def abandoned_notice(generation_id: str) -> str:
    """What to tell a user whose task stopped watching a generation that may still be running."""
    return (
        f"Stopped watching Kling generation {generation_id}; the API has no cancel call, so it may still "
        f"finish (and be billed) at the vendor. Fetch it later with "
        f"KlingFxGenerationSensor(generation_id={generation_id!r})."
    )
