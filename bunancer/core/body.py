"""RequestBody: what an exchange must still have of its request's body.

Bytes read before an upstream connection is attached are held, then sent with the head.
An idempotent request's body is also kept, up to the pool's `retry_body_max`, so that a
retry can replay it on another server; a body that outgrows the limit is not kept (and
such a request, once its body went out, is never retried). Made at a request's first body
byte: most requests have none and never pay for it.
"""

from __future__ import annotations

from .framing import IDEMPOTENT_METHODS


class RequestBody:
    __slots__ = ("held", "held_size", "kept", "limit", "size")

    def __init__(self, keep: bool, limit: int) -> None:
        self.held: list[bytes] | None = None  # read, not yet sent: no connection yet
        self.held_size = 0
        # The whole body as sent, for a replay; None when the request may not be replayed.
        self.kept: list[bytes] | None = [] if keep else None
        self.limit = limit
        self.size = 0  # body bytes read (as the client sent them)

    def read(self, data: bytes, framed: bytes) -> None:
        """`data` arrived (`framed`: as it goes upstream, chunked again if it was)."""
        self.size += len(data)
        kept = self.kept
        if kept is not None:
            if self.size <= self.limit:
                kept.append(framed)
            else:
                self.kept = None  # outgrew the limit: this request will not be replayed

    def ended(self, last: bytes) -> None:
        """The body's end arrived (`last`: the last-chunk of a chunked body)."""
        if self.kept is not None:
            self.kept.append(last)

    def hold(self, framed: bytes) -> int:
        """Keep `framed` until a connection is attached; the size now held."""
        if self.held is None:
            self.held = [framed]
        else:
            self.held.append(framed)
        self.held_size += len(framed)
        return self.held_size

    def take_held(self) -> list[bytes]:
        """What was held, to send with the head; nothing is held afterwards."""
        held = self.held or []
        self.held = None
        self.held_size = 0
        return held

    @property
    def replayable(self) -> bool:
        return self.kept is not None


def replayable(method: bytes, complete: bool, body_sent: bool, body: RequestBody | None) -> bool:
    """Can a request go to another server after one saw it? Idempotent, fully received, and
    its body (if any was sent) kept."""
    if method not in IDEMPOTENT_METHODS or not complete:
        return False
    return not body_sent or (body is not None and body.replayable)
