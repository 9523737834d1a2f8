"""``packet:IFNAME``: an interface that already exists (a NIC, a veth, a bond) as a port.

The port reads the frames arriving on the interface from a ``TPACKET_V3``
ring (:class:`~greentap.device.packet.PacketSocket`): one wake-up for a
block of frames.  With offloads the wire's relay writes each frame straight
out of the ring in C (:meth:`PacketPort.relay_to`); otherwise
:meth:`PacketPort.recv_into` copies it out once.  A lone frame waits for the
block's retire timer (1 ms), the price of the ring; under load blocks fill
long before it fires.  VLAN tags the kernel took out of received frames are
put back (:func:`~greentap.core.tpacket.frame_with_tag`).  Without offloads
what a sender on this host left to the NIC is done here: checksums finished,
super-frames cut into segments (:func:`~greentap.core.tpacket.plain_frames`).
Frames are sent as they are, tags included: one ``write`` each, or, from
a TAP's relay with offloads in C, in batches through the interface's
transmit ring (:meth:`PacketPort.relay_batches`: copied into the ring's
slots, one ``send()`` a batch).  Frames sent out of the interface are
not read back.

Faults are handled as for TAPs: the link going down and up is reported once
each (frames sent meanwhile count as ``tx_link_down``); an interface deleted
or moved to another namespace fails the port, which binds the same socket
again when an interface of that name exists there again (no privilege
needed, so this works after ``--user``).
"""

from __future__ import annotations

import collections
import errno
import os
from collections.abc import Callable, Sequence
from typing import Any

from greentap.core import kernel_constants as kc
from greentap.core import tpacket
from greentap.core.counters import DeviceCounters
from greentap.core.endpoints import EndpointSpec
from greentap.core.segment import SegmentError
from greentap.core.tpacket import RingGeometry
from greentap.core.verdicts import Verdict, drop_reason, write_verdict
from greentap.device.link import Link
from greentap.device.netns import Netns
from greentap.device.packet import PacketSocket
from greentap.errors import (
    EndpointClosed,
    EndpointVanished,
    FrameRejected,
    GreentapError,
    LinkConfigFailed,
    io_error,
)
from greentap.green import relay, txring
from greentap.green.fdio import DEFAULT_BUDGET, GreenFd
from greentap.green.relay import checked_fd, send_counted
from greentap.ports.base import Port
from greentap.ports.registry import OpenOptions, register

__all__ = ["PacketPort"]

# How a C ring batch ended (greentap/green/_relay.c).
_RING_WAIT, _RING_WRITE_ERROR = 1, 4
# How often a reader whose link is down looks whether the interface is gone (seconds).
_DOWN_POLL = 0.5
# The vnet header of a finished frame: no checksum to fill in, no segmentation.
_NO_OFFLOAD = bytes(kc.VIRTIO_NET_HDR_SIZE)


class PacketPort(Port):
    """An existing Ethernet interface as a forwarder port.

    Args:
        name: the interface.
        netns: the namespace it lives in, None for this process's.
        hub: the gevent hub.
        offload: frames carry a virtio-net header, super-frames pass whole
            (as :class:`~greentap.ports.tap.TapPort` with ``offload``).
        qdisc_bypass: send straight to the driver (see
            :mod:`greentap.device.packet` for when not to).
        geometry: the receive ring's shape.
        budget: frames read back to back before yielding to the hub.

    Attributes:
        link_state: ``"up"``, ``"down"`` or ``"gone"`` (deleted or moved away,
            waiting to come back), as last seen.

    Raises:
        GreentapError: as :class:`~greentap.device.packet.PacketSocket`.
    """

    kind = "packet"
    recoverable = True

    def __init__(
        self,
        name: str,
        *,
        netns: Netns = None,
        hub: Any = None,
        offload: bool = False,
        qdisc_bypass: bool = True,
        geometry: RingGeometry | None = None,
        budget: int = DEFAULT_BUDGET,
    ) -> None:
        self.name = name
        self.netns = netns
        # A vnet header always: without offloads it tells which checksums a
        # sender on this host left unfinished (see tpacket.plain_frames).
        self.sock = PacketSocket(
            name, netns=netns, vnet_hdr=True, geometry=geometry, qdisc_bypass=qdisc_bypass
        )
        try:
            self.link = Link(name, netns=netns)
            self.io = GreenFd(self.sock.holder, hub=hub, budget=budget)
        except BaseException:
            self.sock.close()
            raise
        self.counters = DeviceCounters()
        self.drops: collections.Counter[str] = collections.Counter()
        self.offload = offload
        self.header_size = self.sock.vnet_hdr_size if offload else 0
        # With offloads the wire's relay writes frames (vnet header first) to
        # the socket itself; without, each needs the header put in front.
        self.sink = self if offload else None
        self.max_frame_size = kc.MAX_L2_FRAME + self.header_size
        self._min_frame = kc.ETH_HLEN + self.header_size
        self._pending: collections.deque[bytearray] = collections.deque()  # segments to read
        self._down = False  # the reader saw the link go down and has read no frame since
        self._closed = False
        self._refused: str | None = None
        self.link_state = "up" if self.link.is_up else "down"

    # --- receive ------------------------------------------------------------
    def recv_into(self, buffer: bytearray | memoryview) -> int:
        """Copy the next frame from the ring into ``buffer``, waiting cooperatively for one.

        Args:
            buffer: at least :attr:`max_frame_size` bytes.

        Returns:
            The frame's length (with its vnet header and its VLAN tag put back).

        Raises:
            ValueError: ``buffer`` is too short.
            EndpointClosed: the port was closed.
            EndpointVanished: the interface was deleted or moved away.
        """
        if len(buffer) < self.max_frame_size:
            raise ValueError(f"recv_into needs a buffer of at least {self.max_frame_size} bytes")
        sock, counters = self.sock, self.counters
        self.io.before_read()
        if self._pending:
            n = self._deliver(self._pending.popleft(), buffer)
            self.io.count()
            return n
        while True:
            slot = sock.next_slot()
            if slot is None:
                if sock.corrupt_blocks:
                    self.drops["rx_ring_corrupt"] += sock.corrupt_blocks
                    counters.rx_errors += sock.corrupt_blocks
                    sock.corrupt_blocks = 0
                self._wait()
                continue
            self._down = False
            n = self._copy(slot, sock.view, buffer)  # type: ignore[arg-type]  # open: a slot came
            if n:
                self.io.count()  # the next call yields after a budget of frames
                return n

    def relay_to(
        self, sink: Any, on_send_error: Callable[[GreentapError], Any], mirrors: Sequence[Any]
    ) -> bool:
        """Write every frame of the ring to ``sink`` in C, straight out of the ring.

        The tight relay of a ``packet:`` port with offloads (its frames go on
        as they are, a tag put back): ``ring_batch`` of the C extension, one
        write per frame and none per read.  Without the extension, without
        offloads or with mirrors there is none (False): the generic loop
        reads through :meth:`recv_into`, the same steps in Python.

        Raises:
            EndpointClosed: the port was closed (the normal end).
            EndpointVanished: the interface was deleted or moved away.
        """
        if relay.ring_batch is None or not self.offload or mirrors:
            return False
        if not relay.takes_frames(sink):
            return False  # a tunnel's or a stream's sink: not a frame per write()
        _relay_ring(self, sink, on_send_error)
        return True  # pragma: no cover - it ends by raising

    def _copy(self, slot: tpacket.Slot, view: memoryview, buffer: Any) -> int:
        counters = self.counters
        if slot.truncated:
            self.drops["rx_truncated"] += 1
            counters.rx_errors += 1
            return 0
        start, n = slot.start, slot.length
        if not self.offload:
            return self._copy_plain(view[start : start + n], slot.tag, buffer)
        if slot.tag is None:
            buffer[:n] = view[start : start + n]
        else:
            try:
                frame = tpacket.frame_with_tag(view[start : start + n], self.header_size, slot.tag)
            except ValueError:
                self.drops["rx_runt"] += 1
                counters.rx_errors += 1
                return 0
            n = len(frame)
            buffer[:n] = frame
        counters.rx_packets += 1
        counters.rx_bytes += n
        return n

    def _copy_plain(self, frame: memoryview, tag: Any, buffer: Any) -> int:
        try:
            plain = tpacket.plain_frames(frame, tag)
        except ValueError as exc:
            reason = "rx_bad_super_frame" if isinstance(exc, SegmentError) else "rx_bad_vnet_header"
            self.drops[reason] += 1
            self.counters.rx_errors += 1
            return 0
        self._pending.extend(plain[1:])  # a super-frame's other segments: read next
        return self._deliver(plain[0], buffer)

    def _deliver(self, frame: bytearray, buffer: Any) -> int:
        n = len(frame)
        buffer[:n] = frame
        self.counters.rx_packets += 1
        self.counters.rx_bytes += n
        return n

    def _wait(self) -> None:
        """Wait for a block; read the error behind a wake-up without one (link down, gone)."""
        # While the link is down nothing wakes the reader when the interface
        # is then deleted (the kernel reports ENETDOWN once, at the down): look.
        timeout = _DOWN_POLL if self._down else None
        readable = self.io.wait_readable(timeout)  # raises EndpointClosed if closed meanwhile
        code = self.sock.pending_error() if readable else 0
        if code == errno.ENETDOWN:
            self._down = True
        if (code or self._down) and not self.sock.bound():
            self._down = False
            raise EndpointVanished(
                "the interface was deleted or moved to another namespace", endpoint=self.name,
                errno=code or errno.ENETDOWN,
            )  # fmt: skip

    # --- send ---------------------------------------------------------------
    def relay_batches(self, src: Any, on_send_error: Callable[[GreentapError], Any]) -> None:
        """Send every frame read from ``src`` (a TAP) through the transmit ring.

        The relay of a wire into this port (:func:`greentap.green.txring.relay_to_ring`):
        a TAP's frames with their vnet headers go as they are, a batch per ``send()``.

        Raises:
            EndpointClosed: ``src`` was closed (the normal end).
            GreentapError: ``src`` failed.
        """
        txring.relay_to_ring(src, self, on_send_error)

    def send(self, frame: bytes | bytearray | memoryview) -> bool:
        """Send one frame out of the interface without blocking.

        Returns:
            True if sent; False if dropped: the driver's queue was full
            (``tx_dropped``) or the link is down (``tx_link_down``).

        Raises:
            FrameRejected: a runt or a frame the kernel refused (``tx_errors``).
            EndpointClosed: the port was closed.
            EndpointVanished: the interface was deleted or moved away.
        """
        fd, size = checked_fd(self, frame, self._min_frame)
        counters = self.counters
        try:
            if self.offload:
                return send_counted(fd, frame, size, counters)
            return send_counted(fd, (_NO_OFFLOAD, frame), size, counters, os.writev)
        except OSError as exc:
            if self.io.closed:
                raise EndpointClosed(endpoint=self.name) from exc
            counters.tx_errors += 1
            self.drops[f"tx_{drop_reason(exc.errno)}"] += 1
            if write_verdict(exc.errno) is Verdict.REFUSED:
                raise FrameRejected.from_errno(exc.errno, "the kernel refused the frame",
                                               endpoint=self.name) from exc  # fmt: skip
            if exc.errno in (errno.ENXIO, errno.ENODEV):
                raise EndpointVanished("the interface was deleted or moved to another namespace",
                                       endpoint=self.name, errno=exc.errno) from exc  # fmt: skip
            raise io_error(self.name, exc, "write") from exc

    # --- watching the link ----------------------------------------------------
    def check(self) -> bool:
        """Report link changes once each; bind again to an interface that is back.

        Returns:
            True if the port had failed and works again.
        """
        if self._closed:
            return False
        if self.sock.bound():
            self._watch_link()
            return False
        if not self.link.exists():
            self.link_state = "gone"
            return False
        try:
            self.sock.rebind()
        except GreentapError as exc:
            if str(exc) != self._refused:
                self._refused = str(exc)
                self.notify("endpoint_reattach_failed", error=str(exc),
                            error_type=type(exc).__name__)  # fmt: skip
            return False
        self._refused = None
        self.link_state = "gone"  # so that the state found now is reported
        self._watch_link()
        if self.io.closed:  # failed: the reader let go of the fd
            self.io.attach(self.sock.holder)
            return True
        return False

    def _watch_link(self) -> None:
        try:
            state = "up" if self.link.is_up else "down"
        except LinkConfigFailed:
            return  # gone meanwhile: the reader reports it
        previous, self.link_state = self.link_state, state
        if state != previous:
            if state == "up":
                self.notify("link_up", level="info", previous=previous)
            else:
                self.notify("link_down", previous=previous)

    def fail(self) -> None:
        """The interface left: wake the reader and stop; keep the socket for :meth:`check`."""
        if self._closed:
            return
        self.link_state = "gone"
        if not self.io.closed:
            self.io.release("the interface left")

    # --- lifetime -------------------------------------------------------------
    def close(self) -> None:
        """Close the socket and unmap its ring (the interface's promiscuity is undone)."""
        if self._closed:
            return
        self._closed = True
        self.link.close()
        if self.io.closed:
            self.sock.close()
        else:
            self.io.close("endpoint was closed", then=self.sock.close)

    def describe(self) -> dict[str, Any]:
        """Return a dict describing the port for logs."""
        return {
            **super().describe(),
            "netns": self.netns,
            "offload": self.offload,
            "ring_bytes": self.sock.geometry.size,
            "tx_ring_bytes": self.sock.tx.geometry.size,
        }


def _relay_ring(port: PacketPort, sink: Any, on_send_error: Callable[..., Any]) -> None:
    """The loop of :meth:`PacketPort.relay_to` over the C ring batch."""
    batch = relay.ring_batch
    sock, io, budget = port.sock, port.io, port.io.budget
    size, count, header = sock.geometry.block_size, sock.geometry.block_count, port.header_size
    rx_c, tx_c, drops = port.counters, sink.counters, port.drops
    while True:
        view = sock.view
        if view is None or io.closed:
            raise EndpointClosed(endpoint=port.name)
        out = sink.io.holder.fd  # re-read after every yield: it may have failed
        end, code, *counts = batch(view, size, count, sock.cursor, out, budget, header)
        *moved, truncated, runts, corrupt = counts
        relay.publish(rx_c, tx_c, *moved)
        if truncated or runts or corrupt:
            for reason, n in (("rx_truncated", truncated), ("rx_runt", runts),
                              ("rx_ring_corrupt", corrupt)):  # fmt: skip
                drops[reason] += n
            rx_c.rx_errors += truncated + runts + corrupt
        if end == _RING_WAIT:
            if moved[0]:
                port._down = False  # frames came: the link is up
            port._wait()
        elif end == _RING_WRITE_ERROR:
            relay.write_failed(sink, OSError(code, os.strerror(code)), on_send_error)
        else:
            io.pause()


@register("packet")
def _open_packet(spec: EndpointSpec, options: OpenOptions) -> PacketPort:
    return PacketPort(
        spec.name,
        netns=spec.options.get("netns"),
        hub=options.hub,
        offload=options.offload,
        qdisc_bypass=spec.options.get("qdisc", "bypass") == "bypass",
    )
