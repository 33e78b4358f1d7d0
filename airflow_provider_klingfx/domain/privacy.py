"""What of a photo's URL may be shown: never a query, a signature or user info."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

# Everything up to whitespace or a quote: stopping earlier (at a comma, say) could leave part of a
# signature behind.
_URL_IN_TEXT = re.compile(r"\b(?:https?|s3|gs|gcs|file|data):[^\s'\"<>]+", re.IGNORECASE)


def redact_url(url: str) -> str:
    """Show a URL as ``scheme://host/path``: never its query, fragment or user info.

    A presigned URL carries its signature in the query (a credential), and face photos are
    personal data, so this is the only form in which an image URL reaches a log, an exception, a
    trigger event or XCom. A ``data:`` URI is shown as its media type and length.

    :param url: the URL to show.
    """
    text = url.strip()
    if text[:5].lower() == "data:":
        return f"{text.split(',', 1)[0][:60]},… ({len(text)} chars)"
    try:
        parts = urlsplit(text)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "(unreadable URL)"
    if not parts.scheme:
        return text.split("?", 1)[0].split("#", 1)[0][:200]
    if port is not None:
        host = f"{host}:{port}"
    return f"{parts.scheme}://{host}{parts.path}"[:300]


# Query parameters that carry a signature or a token (S3, GCS, Azure SAS, CloudFront, OAuth), for
# what is left after a URL was cut short in free text (at a space, say).
_SIGNED_PARAM = re.compile(
    r"(?i)([?&](?:x-amz-[\w-]*|x-goog-[\w-]*|signature|sig|se|sp|sv|st|skoid|sktid|key-pair-id|policy|"
    r"googleaccessid|expires|token|access_token|auth|key)=)[^&\s'\"<>]*"
)


def redact_urls(text: str) -> str:
    """Replace every URL inside free text (a vendor message, say) by :func:`redact_url` of it, and
    blank the value of any signature-like query parameter left over.

    :param text: the text to clean.
    """
    return _SIGNED_PARAM.sub(r"\1…", _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text))
