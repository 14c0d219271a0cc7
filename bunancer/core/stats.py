"""Live statistics: counters, sliding windows and latency histograms per server and pool.

Recording a finished request (`ServerStats.record`) is a handful of integer operations on
lists that already exist: no allocation, no clock read, no lock. Time is cut into one-second
windows by a timer (`rotate`, once a second), never on the request path. The last 60
windows keep requests/s that falls to zero when traffic stops, error counts and latency
histograms; lifetime totals feed Prometheus. Reading them (windows, rates, summaries) is
the telemetry's business.

A server's counters hold every answer it gave, including those the client never saw
because the request was tried again on another server (`record_retried`): a server that
fails shows its failures even when retries hide them from clients. A pool's figures, which
are what its clients saw, leave those retried answers out again.

Latencies go into log-scaled buckets: four per power of two of microseconds, so a bucket's
upper edge is at most 25% above its lower edge and a percentile read from the buckets is
within one bucket of the exact value. The bucket of a value is found with `bit_length` and
a shift, no floating point.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

BUCKETS: Final = 112  # up to 2**27 us (134 s); slower requests land in the last bucket
WINDOW_SECONDS: Final = 60

# Error classes, by index in `errors` (the order is the Prometheus label order too).
CONNECT: Final = 0
TIMEOUT: Final = 1
UPSTREAM_5XX: Final = 2
CLIENT_4XX: Final = 3
CLIENT_ABORT: Final = 4
REJECTED: Final = 5
ERROR_NAMES = ("connect", "timeout", "upstream_5xx", "client_4xx", "client_abort", "rejected")


def error_class(status: int) -> int:
    """The error class of an answer we relayed: 5xx and 4xx, or -1 for none."""
    if status >= 500:
        return UPSTREAM_5XX
    if status >= 400:
        return CLIENT_4XX
    return -1


def bucket_of(us: int) -> int:
    """Bucket index of a latency in microseconds (four buckets per power of two)."""
    if us < 4:
        return us if us > 0 else 0
    length = us.bit_length()
    index = (length << 2) + ((us >> (length - 3)) & 3)
    return index if index < BUCKETS else BUCKETS - 1


def bucket_bounds(index: int) -> tuple[int, int]:
    """[low, high) in microseconds of a bucket."""
    if index < 4:
        return index, index + 1
    length, sub = divmod(index, 4)
    base = 1 << (length - 1)
    quarter = base >> 2
    low = base + sub * quarter
    return low, low + quarter


def percentile(counts: Iterable[int], q: float) -> float | None:
    """The q-quantile (0..1) in seconds from bucket counts, interpolated linearly inside its
    bucket (so fast servers whose p99 falls in the same bucket still read differently)."""
    counts = list(counts)
    total = sum(counts)
    if not total:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(counts):
        if count and seen + count >= rank:
            low, high = bucket_bounds(index)
            share = max(rank - seen, 0.0) / count
            return (low + (high - low) * share) / 1e6
        seen += count
    return bucket_bounds(len(counts) - 1)[1] / 1e6


@dataclass(slots=True)
class Second:
    """One closed one-second window."""

    requests: int  # answers and failed attempts, retried ones included
    errors: int
    bytes_in: int
    bytes_out: int
    max_us: int
    latency: list[int]  # of the answers clients got (retried attempts are not timed)
    retried: int = 0  # of `requests`, those tried again elsewhere (each is also an error)


class ServerStats:
    """Counters of one server (or of one pool's requests that reached no server)."""

    __slots__ = (
        "_mark",
        "by_class",
        "bytes_in",
        "bytes_out",
        "cur_latency",
        "errors",
        "latency",
        "redispatches",
        "retries",
        "seconds",
    )

    def __init__(self) -> None:
        # lifetime totals
        self.by_class = [0] * 10  # index: status // 100 (0 when no status was sent)
        self.errors = [0] * len(ERROR_NAMES)
        self.latency = [0] * BUCKETS
        self.bytes_in = 0
        self.bytes_out = 0
        # Failed attempts tried again: on this same server (retries: a pool of one), or on
        # another one (redispatches), as HAProxy counts them.
        self.retries = 0
        self.redispatches = 0
        # the current second (its counts are lifetime totals minus the mark at rotation)
        self.cur_latency = [0] * BUCKETS
        # requests, errors, bytes in, bytes out, retried at the last rotation
        self._mark = (0, 0, 0, 0, 0)
        # closed seconds, newest last
        self.seconds: deque[Second] = deque(maxlen=WINDOW_SECONDS)

    @property
    def requests(self) -> int:
        return sum(self.by_class)

    @property
    def retried(self) -> int:
        """Attempts of this server that the client never saw: it was tried again."""
        return self.retries + self.redispatches

    def record(self, status: int, us: int, bytes_in: int, bytes_out: int, error: int) -> None:
        """One finished request: `error` is an error class index, or -1 for none. Every
        request passes here, so it stays a few integer operations (bench/hotpath.py)."""
        self.by_class[status // 100] += 1
        self.cur_latency[bucket_of(us)] += 1  # lifetime `latency` takes it in at `rotate`
        self.bytes_in += bytes_in
        self.bytes_out += bytes_out
        if error >= 0:
            self.errors[error] += 1

    def record_retried(self, status: int, error: int, redispatched: bool) -> None:
        """A failed answer or attempt (`status` 0 when nothing was answered) after which the
        request was tried again: it counts against this server, not the client's request."""
        self.by_class[status // 100] += 1
        self.errors[error] += 1
        if redispatched:
            self.redispatches += 1
        else:
            self.retries += 1

    def rotate(self) -> None:
        """Close the current second (called once a second by a timer)."""
        totals = (
            self.requests,
            sum(self.errors),
            self.bytes_in,
            self.bytes_out,
            self.retries + self.redispatches,
        )
        requests, errors, bytes_in, bytes_out, retried = (
            now - before for now, before in zip(totals, self._mark, strict=True)
        )
        self._mark = totals
        if requests:
            latency = self.cur_latency
            self.cur_latency = [0] * BUCKETS
            lifetime = self.latency
            for index, count in enumerate(latency):
                if count:
                    lifetime[index] += count
            # The slowest request of the second, to within its bucket (no compare per request);
            # a second of retried answers only timed none.
            top = max((index for index, count in enumerate(latency) if count), default=-1)
            max_us = bucket_bounds(top)[1] if top >= 0 else 0
        else:
            latency = _EMPTY
            max_us = 0
        self.seconds.append(Second(requests, errors, bytes_in, bytes_out, max_us, latency, retried))

    # -- reading -------------------------------------------------------------------------------

    def last(self, seconds: int) -> list[Second]:
        window = self.seconds
        return list(window)[-seconds:] if seconds < len(window) else list(window)

    def history(self, seconds: int = WINDOW_SECONDS) -> list[int]:
        """Requests per second for the last `seconds` (oldest first), for sparklines."""
        window = self.last(seconds)
        return [0] * (seconds - len(window)) + [s.requests for s in window]


_EMPTY: Final[list[int]] = [0] * BUCKETS  # shared by every idle second; never written to


def merge_latency(windows: Iterable[list[int]]) -> list[int]:
    merged = [0] * BUCKETS
    for counts in windows:
        if counts is _EMPTY:
            continue
        for index, count in enumerate(counts):
            if count:
                merged[index] += count
    return merged


def merge(stats: Iterable[ServerStats]) -> ServerStats:
    """Pool totals: the sum of its servers' (and its own rejected requests') counters."""
    total = ServerStats()
    parts = list(stats)
    for part in parts:
        total.bytes_in += part.bytes_in
        total.bytes_out += part.bytes_out
        for index, value in enumerate(part.by_class):
            total.by_class[index] += value
        for index, value in enumerate(part.errors):
            total.errors[index] += value
        for index, value in enumerate(part.latency):
            total.latency[index] += value
        total.retries += part.retries
        total.redispatches += part.redispatches
    depth = max((len(p.seconds) for p in parts), default=0)
    for offset in range(depth, 0, -1):
        seconds = [p.seconds[-offset] for p in parts if len(p.seconds) >= offset]
        total.seconds.append(
            Second(
                sum(s.requests for s in seconds),
                sum(s.errors for s in seconds),
                sum(s.bytes_in for s in seconds),
                sum(s.bytes_out for s in seconds),
                max((s.max_us for s in seconds), default=0),
                merge_latency(s.latency for s in seconds),
                sum(s.retried for s in seconds),
            )
        )
    return total
