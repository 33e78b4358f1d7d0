"""A candidate poll schedule for the package: sparse early, dense near the expected completion.

Pure and stateless: the delay depends only on the seconds elapsed since submission, so a trigger
re-created after a triggerer restart (it serializes ``submitted_at``) keeps the same schedule, and the
worker-side wait can use it too. The package's fixed interval stays available
(``expected_seconds=None``).

To adopt it, ``GenerationWatch.observe`` would replace ``min(self.poll_interval, remaining)`` with
``min(next_poll_delay(elapsed, expected_seconds=self.expected_seconds, interval=self.poll_interval),
remaining)``, and the operator, sensor and trigger would take ``expected_seconds`` (None: today's
fixed interval) and serialize it.
"""

from __future__ import annotations

#: Start of the dense window, as a fraction of the expected duration (no poll before it).
DENSE_FROM = 0.75
#: End of the dense window, as a multiple of the expected duration (then the interval backs off).
DENSE_UNTIL = 1.5
#: The interval inside the dense window, as a fraction of ``interval``.
DENSE_FACTOR = 0.8
#: How fast the interval grows past the dense window: seconds of interval per second of overrun.
BACKOFF_SLOPE = 0.25
#: The longest interval of the back-off, as a multiple of ``interval``.
MAX_FACTOR = 3.0


def next_poll_delay(
    elapsed: float,
    *,
    expected_seconds: float | None,
    interval: float = 10.0,
    dense_from: float = DENSE_FROM,
    dense_until: float = DENSE_UNTIL,
    dense_factor: float = DENSE_FACTOR,
) -> float:
    """Seconds to wait before the next poll of a generation submitted ``elapsed`` seconds ago.

    * ``expected_seconds=None``: the fixed ``interval`` (today's behaviour);
    * before ``dense_from * expected_seconds`` (90 s for 120 s): sleep until then, no poll;
    * until ``dense_until * expected_seconds`` (180 s): every ``dense_factor * interval`` (8 s);
    * later (a generation running long): the interval grows by ``BACKOFF_SLOPE`` second per second
      of overrun, up to ``MAX_FACTOR * interval`` (30 s), so a stuck generation costs few polls.

    :param elapsed: seconds since the generation was submitted.
    :param expected_seconds: how long a generation usually takes (about 120 s for a 5 s video).
    :param interval: the fixed interval, and the scale of the dense and back-off intervals.
    :param dense_from: start of the dense window, as a fraction of ``expected_seconds``.
    :param dense_until: end of the dense window, as a multiple of ``expected_seconds``.
    :param dense_factor: the dense interval as a fraction of ``interval``.
    """
    if expected_seconds is None or expected_seconds <= 0:
        return interval
    start = dense_from * expected_seconds
    if elapsed < start:
        return start - elapsed
    dense = dense_factor * interval
    end = dense_until * expected_seconds
    if elapsed < end:
        return dense
    return min(MAX_FACTOR * interval, dense + BACKOFF_SLOPE * (elapsed - end))
