"""What a failed write means: the one errno-to-verdict table of every loop.  Pure.

Every place that writes a frame — :meth:`PolledTap.send
<greentap.green.polled.PolledTap.send>`, the relay's Python loop, its C loop
(``greentap/green/_relay.c`` is handed :func:`table` when it loads) and the
datagram ports — classifies the ``errno`` of a failed write here and nowhere
else.  What each loop then does with a verdict is its policy: a TAP port
fails on :attr:`Verdict.FAILED`, a UDP socket counts it and goes on.
"""

from __future__ import annotations

import enum
import errno

__all__ = ["WRITE_VERDICTS", "Verdict", "drop_reason", "table", "write_verdict"]


class Verdict(enum.IntEnum):
    """What a write's ``errno`` means for the frame and the endpoint."""

    #: EINTR: try the same write again.
    RETRY = 0
    #: EAGAIN, ENOBUFS: the endpoint cannot take a frame now; drop it and count
    #: it (``tx_dropped``), as a NIC with a full ring would.
    BACKPRESSURE = 1
    #: EIO from a TAP, ENETDOWN from a packet socket: the link is down; drop
    #: and count (``tx_link_down``).  A tunnel counts it as unreachable.
    LINK_DOWN = 2
    #: EINVAL, EMSGSIZE: this frame was refused; the next one may pass (``tx_errors``).
    REFUSED = 3
    #: A tunnel's remote cannot be reached now (no route, refused); drop and count.
    UNREACHABLE = 4
    #: Anything else: the endpoint itself is broken.
    FAILED = 5


WRITE_VERDICTS: dict[int, Verdict] = {
    errno.EINTR: Verdict.RETRY,
    errno.EAGAIN: Verdict.BACKPRESSURE,
    errno.EWOULDBLOCK: Verdict.BACKPRESSURE,
    errno.ENOBUFS: Verdict.BACKPRESSURE,
    errno.EIO: Verdict.LINK_DOWN,
    errno.EINVAL: Verdict.REFUSED,
    errno.EMSGSIZE: Verdict.REFUSED,
    errno.ECONNREFUSED: Verdict.UNREACHABLE,
    errno.EHOSTUNREACH: Verdict.UNREACHABLE,
    errno.ENETUNREACH: Verdict.UNREACHABLE,
    errno.EHOSTDOWN: Verdict.UNREACHABLE,
    errno.ENETDOWN: Verdict.LINK_DOWN,
}

# Drop-counter names (``tx_<reason>``) for errnos that share a meaning; any
# other errno is counted under its own name (``tx_EPERM``).
_REASONS = {
    errno.EAGAIN: "backpressure",
    errno.ENOBUFS: "backpressure",
    errno.EMSGSIZE: "too_big",
    errno.ENETDOWN: "unreachable",  # as a tunnel's send counts it
    **{code: "unreachable" for code, v in WRITE_VERDICTS.items() if v is Verdict.UNREACHABLE},
}


def write_verdict(code: int | None) -> Verdict:
    """Classify the ``errno`` of a failed write.

    Args:
        code: the error number (None counts as an unknown error).

    Returns:
        The :class:`Verdict`; :attr:`Verdict.FAILED` for any errno not in the table.
    """
    return WRITE_VERDICTS.get(code, Verdict.FAILED) if code is not None else Verdict.FAILED


def drop_reason(code: int | None) -> str:
    """Name the reason a write with this ``errno`` dropped a frame, for counters.

    Returns:
        ``"backpressure"``, ``"too_big"``, ``"unreachable"``
        or the errno's symbolic name (``"EPERM"``).
    """
    if code is None:
        return "error"
    return _REASONS.get(code) or errno.errorcode.get(code, str(code))


def table(size: int = 256) -> bytes:
    """The verdict table as bytes, indexed by errno, for the C loop.

    Args:
        size: entries; errnos at or above it are :attr:`Verdict.FAILED`.

    Returns:
        ``size`` bytes, each a :class:`Verdict` value.
    """
    return bytes(write_verdict(code) for code in range(size))
