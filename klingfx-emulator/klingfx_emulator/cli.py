"""Command line: ``klingfx-emulator [options]``, or ``python -m klingfx_emulator [options]``.

Prints exactly one line on stdout once listening, ``KLINGFX EMULATOR LISTENING http://HOST:PORT``,
so scripts can start it with ``--port 0`` and read the port. Logs go to stderr. Stops cleanly on
SIGINT or SIGTERM.

``--outage`` times count from startup. A ``refuse`` outage in force from the start (``0:...``)
closes the port before the line is printed: the line gives the port that will answer once it ends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from typing import cast

from klingfx_emulator.config import (
    API_KEY_ENV,
    CANONICAL_STATUSES,
    DEFAULT_API_KEY,
    DEFAULT_USD_PER_CREDIT,
    EmulatorConfig,
    FaultRule,
    Outage,
    OutageMode,
)
from klingfx_emulator.server import serve

DEFAULT_PORT = 8765
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: How log lines look on stderr.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    p = argparse.ArgumentParser(
        prog="klingfx-emulator",
        description="Local emulator of the AI/ML API for the Kling v1.6 effects models.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="port; 0 picks a free one (default: %(default)s)"
    )
    p.add_argument(
        "--api-key",
        default=None,
        help=f"bearer key clients must send (default: ${API_KEY_ENV} or {DEFAULT_API_KEY!r})",
    )
    p.add_argument(
        "--queued-seconds", type=float, default=1.0, help="time in 'queued' (default: %(default)s)"
    )
    p.add_argument(
        "--generating-seconds", type=float, default=3.0, help="time in 'generating' (default: %(default)s)"
    )
    p.add_argument(
        "--generating-seconds-max",
        type=float,
        default=None,
        help="if set, draw each generating time uniformly between --generating-seconds and this",
    )
    p.add_argument("--seed", type=int, default=None, help="seed for the generating-time draw")
    p.add_argument(
        "--legacy-statuses",
        action="store_true",
        help="report 'waiting'/'active' instead of 'queued'/'generating' (--status-word wins)",
    )
    p.add_argument(
        "--status-word",
        action="append",
        default=[],
        metavar="STATUS=WORD",
        help=f"answer WORD instead of the canonical STATUS ({', '.join(CANONICAL_STATUSES)}), e.g. "
        "completed=succeeded or error=failed; repeatable (default: the canonical words)",
    )
    p.add_argument(
        "--usage-in",
        choices=("both", "create", "fetch", "none"),
        default="both",
        help="where usage (meta.usage and the x-aimlapi-credits-used / x-aimlapi-usd-spent headers) "
        "is reported: the create answer, the completed fetch answer, both or none (default: %(default)s)",
    )
    p.add_argument(
        "--usage-field",
        choices=("credits_used", "tokens_used"),
        default="credits_used",
        help="name of the credit count in meta.usage; older answers say tokens_used (default: %(default)s)",
    )
    p.add_argument(
        "--usd-per-credit",
        type=float,
        default=DEFAULT_USD_PER_CREDIT,
        help="USD per credit, for meta.usage.usd_spent and x-aimlapi-usd-spent "
        "(default: %(default)g, the vendor's 2480 credits = $0.00124)",
    )
    p.add_argument(
        "--error-body",
        choices=("documented", "live"),
        default="documented",
        help="HTTP error bodies: documented {message, path, requestId, statusCode, timestamp} or as seen "
        "live {title, status, message, instance, requestId, timestamp, error, detail} (default: %(default)s)",
    )
    p.add_argument(
        "--error-shape",
        choices=("detail", "name_message"),
        default="detail",
        help="shape of generation errors (default: %(default)s)",
    )
    p.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="JSON",
        help='fault rule, e.g. \'{"action": "status", "route": "create", "status": 503, "retry_after": 1}\'; '
        "actions: status, drop, drop_after_accept, accept_without_id, accept_unreadable (create only), "
        "truncate (video only), slow, garbage; repeatable",
    )
    p.add_argument(
        "--rate-limit",
        type=float,
        default=None,
        metavar="RPS",
        help="requests per second allowed per API key on create and fetch (both path styles; not the "
        "video, samples, /health or /_emulator/*); over it: 429 with Retry-After (default: no limit)",
    )
    p.add_argument(
        "--rate-limit-burst",
        type=float,
        default=None,
        metavar="N",
        help="requests a key may send at once (default: one second's worth, at least 1)",
    )
    p.add_argument(
        "--rate-limit-no-retry-after",
        action="store_true",
        help="send the rate limit's 429 without a Retry-After header",
    )
    p.add_argument(
        "--outage",
        action="append",
        default=[],
        metavar="START:END[:MODE]",
        help="an outage from START to END seconds after startup; MODE 503 (default: create and fetch "
        "answer 503, the other routes work) or refuse (the port stops listening and open connections "
        "are closed: nothing answers, /_emulator/* and /health included); repeatable; more can be "
        "scheduled at run time with POST /_emulator/outage",
    )
    p.add_argument("--credits", type=int, default=None, help="credit budget (default: unlimited)")
    p.add_argument(
        "--credits-per-generation",
        type=int,
        default=120_000,
        help="cost of a 5 s video (default: %(default)s)",
    )
    p.add_argument(
        "--render",
        choices=("eager", "lazy", "off"),
        default="eager",
        help="render videos at submission, on first download, or serve one fixed tiny video "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--video-dir", default=None, help="write rendered videos there instead of keeping them in memory"
    )
    p.add_argument(
        "--render-concurrency", type=int, default=2, help="videos rendered at once (default: %(default)s)"
    )
    p.add_argument(
        "--no-check-images",
        action="store_true",
        help="do not check input photos against Kling's limits (JPEG or PNG by content, at most 10 MB, "
        "each side at least 300 px, aspect ratio within 2.5:1); by default a photo breaking one makes "
        "its generation end in 'error', as the vendor does. Photos that cannot be downloaded get a "
        "placeholder frame either way; with --render off nothing is downloaded or checked",
    )
    p.add_argument(
        "--accept-data-uris",
        action="store_true",
        help="accept data:image/...;base64,... URIs in image_url and use their bytes as the photo "
        "(default: refuse them with 422, as it is unknown whether the vendor takes them for effects)",
    )
    p.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=LOG_LEVELS,
        help="logging level on stderr (default: %(default)s)",
    )
    return p


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    """Build the configuration from parsed arguments.

    :param args: the parsed arguments.
    :raises ValueError: on invalid values (e.g. a bad ``--fault``, ``--status-word`` or ``--outage``).
    """
    return EmulatorConfig(
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or DEFAULT_API_KEY,
        queued_seconds=args.queued_seconds,
        generating_seconds=args.generating_seconds,
        generating_seconds_max=args.generating_seconds_max,
        seed=args.seed,
        legacy_statuses=args.legacy_statuses,
        status_words=parse_status_words(args.status_word),
        usage_in=args.usage_in,
        usage_field=args.usage_field,
        usd_per_credit=args.usd_per_credit,
        error_body=args.error_body,
        error_shape=args.error_shape,
        faults=list(iter_fault_rules(args.fault)),
        rate_limit=args.rate_limit,
        rate_limit_burst=args.rate_limit_burst,
        rate_limit_retry_after=not args.rate_limit_no_retry_after,
        outages=parse_outages(args.outage),
        credits=args.credits,
        credits_per_generation=args.credits_per_generation,
        render=args.render,
        video_dir=args.video_dir,
        render_concurrency=args.render_concurrency,
        check_images=not args.no_check_images,
        accept_data_uris=args.accept_data_uris,
    )


def parse_status_words(raw: Sequence[str]) -> dict[str, str]:
    """Parse ``--status-word STATUS=WORD`` strings into ``status_words`` (a later one wins).

    :param raw: the strings, e.g. ``["completed=succeeded", "error=failed"]``.
    :raises ValueError: on a string without ``=``, an unknown status or an empty word.
    """
    words: dict[str, str] = {}
    for text in raw:
        status, sep, word = text.partition("=")
        status, word = status.strip(), word.strip()
        if not sep or not word:
            raise ValueError(f"--status-word must look like STATUS=WORD, got {text!r}")
        if status not in CANONICAL_STATUSES:
            raise ValueError(
                f"--status-word STATUS must be one of {list(CANONICAL_STATUSES)}, got {status!r}"
            )
        words[status] = word
    return words


def parse_outages(raw: Sequence[str]) -> list[Outage]:
    """Parse ``--outage START:END[:MODE]`` strings into outage windows.

    :param raw: the strings, e.g. ``["10:20", "30:35:refuse"]`` (MODE defaults to ``503``).
    :raises ValueError: on a malformed string or invalid window.
    """
    outages: list[Outage] = []
    for text in raw:
        parts = text.split(":")
        try:
            if len(parts) not in (2, 3):
                raise ValueError("expected START:END or START:END:MODE")
            mode = parts[2].strip() if len(parts) == 3 else "503"
            outages.append(Outage(float(parts[0]), float(parts[1]), cast("OutageMode", mode)))
        except ValueError as exc:
            raise ValueError(
                f"--outage must look like START:END[:MODE] (MODE 503 or refuse), got {text!r}: {exc}"
            ) from exc
    return outages


def iter_fault_rules(raw: Sequence[str]) -> Iterator[FaultRule]:
    """Parse ``--fault`` JSON strings (each an object, or an array of objects) into rules.

    :param raw: the strings.
    :raises ValueError: on invalid JSON or rules.
    """
    for text in raw:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"--fault is not valid JSON: {text!r} ({exc})") from exc
        for item in data if isinstance(data, list) else [data]:
            yield FaultRule.from_dict(item)


@contextlib.contextmanager
def logging_to_stderr(level: str) -> Iterator[None]:
    """Send every log record to stderr at ``level`` for the block; then put the root logger back.

    stdout must carry nothing but the LISTENING line, or a script that reads only that line would
    leave the pipe to fill up and block the server; and importing Airflow (through the provider's
    domain module) may have put a root handler on stdout. So the root logger's handlers are set
    aside while the server runs, and restored afterwards: ``main()`` called in a process that goes
    on (a test under ``capsys``) must leave no handler behind writing to a stream closed by then.

    :param level: a level name, e.g. ``INFO``.
    """
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    saved_handlers, saved_level = root.handlers[:], root.level
    root.handlers = [handler]
    root.setLevel(level)
    try:
        yield
    finally:
        root.handlers = saved_handlers
        root.setLevel(saved_level)
        handler.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code.

    :param argv: arguments (default: ``sys.argv[1:]``).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    with logging_to_stderr(args.log_level):
        try:
            asyncio.run(serve(config, args.host, args.port))
        except (RuntimeError, OSError) as exc:
            print(f"klingfx emulator: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            pass
    return 0
