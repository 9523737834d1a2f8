"""The port protocol: what the forwarder knows about an endpoint.

Every port has the same shape: ``name``, ``kind``, ``counters``,
``max_frame_size``, ``header_size``, ``readable``, ``recv_into(buffer)``,
``send(frame) -> bool`` and ``close()``; and for a long run ``check()``
(called every second or so: notice link changes, recover), ``fail()``,
``reopen()`` (SIGHUP) and ``notify`` (how a port reports a state change).
The forwarder knows nothing else about them, so UDP, VXLAN or pcap ports
fit without changing it.
"""

from __future__ import annotations

import collections
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from greentap.core.counters import DeviceCounters
from greentap.core.ratelimit import TokenBucket
from greentap.core.vlan import VlanPolicy, format_vlan_list
from greentap.errors import GreentapError
from greentap.green import relay
from greentap.green.polled import PolledTap

__all__ = ["FramePort", "Port"]


def _ignore(event: str, level: str = "warning", **fields: Any) -> None:
    pass


class Port:
    """The common shape of an endpoint.  Subclasses fill in the I/O.

    Attributes:
        name: what logs and counters call it.
        kind: ``"tap"``, ``"vxlan"``, ...
        counters: a :class:`~greentap.core.counters.DeviceCounters`.
        max_frame_size: the buffer size :meth:`recv_into` needs.
        header_size: bytes before the Ethernet header in each frame (vnet header).
        readable: False for write-only ports.
        drops: frames dropped, by reason (e.g. ``rx_wrong_vni``), for ports
            that have reasons to tell.
        policer: a :class:`~greentap.core.ratelimit.TokenBucket` limiting the
            frames read from this port (``?rate=PPS``), or None.
        vlan: a :class:`~greentap.core.vlan.VlanPolicy` (an access port or a
            trunk), or None: VLAN-transparent.
        recoverable: the port may come back after failing (see :meth:`check`).
        sink: what the wire's relay may write to directly, one frame per
            ``write`` (a :class:`~greentap.green.relay.Sink`), or None.
        notify: ``notify(event, level="warning", **fields)`` reports a state
            change (link down, peer unreachable, ...); the forwarder sets it
            to log once per change.
    """

    name: str
    counters: DeviceCounters
    max_frame_size: int
    kind = "port"
    readable = True
    header_size = 0
    drops: Mapping[str, int] = types.MappingProxyType({})  # ports that count drops replace it
    policer: TokenBucket | None = None
    vlan: VlanPolicy | None = None
    recoverable = False
    sink: Any = None
    notify: Any = staticmethod(_ignore)

    def relay_to(
        self, sink: Any, on_send_error: Callable[[GreentapError], Any], mirrors: Sequence[Any]
    ) -> bool:
        """Forward every frame read to ``sink`` through the tight relay, until this port closes.

        Args:
            sink: the destination's :attr:`sink`.
            on_send_error: called with the error of a write that failed for good.
            mirrors: the mirrors' send functions.

        Returns:
            False at once when this port has no tight relay (for these
            mirrors); otherwise it returns only by raising.

        Raises:
            EndpointClosed: this port was closed (the normal end).
            GreentapError: this port failed.
        """
        return False

    def check(self) -> bool:
        """Look at the port's state and report changes through :attr:`notify`.

        Returns:
            True if a port that had failed works again (the forwarder then
            puts it back), False otherwise.
        """
        return False

    def fail(self) -> None:
        """The port failed: release it.  Ports that can come back wait in :meth:`check`."""
        self.close()

    def reopen(self) -> None:
        """Reopen what an operator may have moved away (SIGHUP): capture files."""

    def recv_into(self, buffer: bytearray | memoryview) -> int:  # pragma: no cover - interface
        """Read one frame into ``buffer`` and return its length, blocking this greenlet."""
        raise NotImplementedError

    def send(self, frame: bytes | bytearray | memoryview) -> bool:  # pragma: no cover
        """Write one frame without blocking; return False if it was dropped."""
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - interface
        """Release the port; idempotent; wakes a greenlet blocked in recv_into."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Return a dict describing the port for logs (with its rate limit, if any)."""
        info: dict[str, Any] = {"endpoint": self.name, "kind": self.kind}
        if self.policer is not None:
            info.update(rate=self.policer.rate, burst=self.policer.burst)
        vlan = self.vlan
        if vlan is not None and vlan.access is not None:
            info["vlan"] = vlan.access
        elif vlan is not None:
            info["trunk"] = format_vlan_list(vlan.allowed)
            if vlan.native is not None:
                info["native"] = vlan.native
        return info

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class FramePort(Port):
    """A port over a :class:`~greentap.green.polled.PolledTap`: any fd that keeps
    frame boundaries (a TAP, an adopted fd, a SEQPACKET socket in tests).

    Args:
        polled: the PolledTap; the port owns it.
        kind: what to call this kind of port.
    """

    kind = "tap"

    def __init__(self, polled: PolledTap, *, kind: str | None = None) -> None:
        if kind is not None:
            self.kind = kind
        self.polled = polled
        self.name = polled.name
        self.counters = polled.counters
        self.max_frame_size = polled.max_frame_size
        self.header_size = polled.layout.header_size
        # Bound once: these are called per frame.
        self.recv_into = polled.recv_into  # type: ignore[method-assign]
        self.send = polled.send  # type: ignore[method-assign]
        self.sink = polled
        self.drops: collections.Counter[str] = collections.Counter()  # rx_rate_limited

    def relay_to(
        self, sink: Any, on_send_error: Callable[[GreentapError], Any], mirrors: Sequence[Any]
    ) -> bool:
        """The relay of :meth:`PolledTap.relay_to <greentap.green.polled.PolledTap.relay_to>`.

        Returns False at once for a sink the relay cannot serve with these
        mirrors (a tunnel's, with mirrors or without the C loop).
        """
        if not relay.takes(sink, mirrors):
            return False
        self.polled.relay_to(sink, on_send_error, mirrors)
        return True  # pragma: no cover - relay_to only ends by raising

    def close(self) -> None:
        """Close the device; harmless if already closed."""
        self.polled.close()
