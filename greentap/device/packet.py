"""A packet socket on an existing interface, with a TPACKET_V3 receive ring.  Blocking layer.

:class:`PacketSocket` attaches to an interface that already exists — a NIC,
a veth into a container, a bond — the way a bridge port does: it reads
every frame that *arrives* on it and sends frames out of it.

- Bound to the interface with ``ETH_P_ALL`` (the socket is created with
  protocol 0 so that it sees nothing before it is bound).
- Promiscuous through a packet membership (``PACKET_ADD_MEMBERSHIP``,
  ``PACKET_MR_PROMISC``): the kernel counts it with the interface's other
  users and drops it when the socket closes, even if the process dies, so
  the interface is never left promiscuous.
- ``PACKET_IGNORE_OUTGOING``: frames sent out of the interface (ours, and
  the host's own) are never read back, so a forwarder cannot loop through it.
- ``PACKET_QDISC_BYPASS`` unless asked not to: frames go straight to the
  driver.  That is right for a forwarding port (it is what a bridge's
  frames skip too) but wrong when the interface carries a traffic-control
  setup (shaping, policing, ``netem``) that must apply to forwarded frames,
  or a real NIC whose short hardware queue needs the qdisc to absorb
  bursts: without the qdisc a full queue drops the frame (``ENOBUFS``).
- ``PACKET_VNET_HDR`` on request: frames carry a virtio-net header as a
  TAP's do, so super-frames (GRO on receive, GSO on send) pass whole.
- Beside it a second socket, bound to the interface with protocol 0 (it
  receives nothing), carries a ``TPACKET_V2`` transmit ring
  (:class:`TxRing`, :mod:`greentap.core.txring`): a batch of frames leaves
  with one ``send()``.  It has a socket of its own because the kernel has no
  ``TPACKET_V3`` transmit ring, and so that sending never wakes the reader
  (every packet sent frees buffer space, which wakes whoever waits on its
  socket).

Opening needs ``CAP_NET_RAW``; re-binding the same socket to the interface
when it is created again (:meth:`PacketSocket.rebind`) does not, so it
works after privileges were dropped.

The ring's memory is unmapped before the socket is closed: a mapping keeps
the socket (and so the promiscuous membership) alive.
"""

from __future__ import annotations

import _socket
import errno
import fcntl
import mmap
import socket
import struct
from typing import Any

from greentap.core import ifreq, tpacket
from greentap.core import kernel_constants as kc
from greentap.core.names import encode_ifname
from greentap.core.tpacket import RingCorrupt, RingGeometry, Slot
from greentap.core.txring import TxGeometry
from greentap.device.fd import FdHolder
from greentap.device.netns import Netns, entered
from greentap.errors import EndpointClosed, EndpointUnavailable, GreentapError, NotATapDevice

__all__ = ["PacketSocket", "TxRing"]

_MREQ = struct.Struct("iHH8s")  # struct packet_mreq
_ARPHRD_NAMES = {
    772: "a loopback interface",  # ARPHRD_LOOPBACK
    kc.ARPHRD_NONE: "an interface without Ethernet headers",
}


class PacketSocket:
    """An AF_PACKET socket bound to one Ethernet interface, with a mapped receive ring.

    Args:
        name: the interface's name.
        netns: the namespace it lives in (an ``ip netns`` name or a path),
            None for this thread's.
        vnet_hdr: frames carry a 10-byte virtio-net header (``PACKET_VNET_HDR``).
        geometry: the receive ring's shape.
        qdisc_bypass: send straight to the driver (see the module's notes).
        tx_geometry: the transmit ring's shape.

    Attributes:
        holder: the :class:`~greentap.device.fd.FdHolder` owning the socket.
        tx: the :class:`TxRing` beside it, on a socket of its own.
        ring: the mapped ring (an ``mmap``), None once closed.
        view: a memoryview of the ring (frames are copied out of it), None once closed.
        corrupt_blocks: blocks refused by :func:`~greentap.core.tpacket.read_block`.
        ifindex: the interface index it is bound to.
        vnet_hdr_size: 10 with ``vnet_hdr``, else 0.

    Raises:
        InterfaceNameError: ``name`` is not a valid interface name.
        NamespaceUnavailable: ``netns`` cannot be entered.
        EndpointUnavailable: no such interface, no ``CAP_NET_RAW``, or the
            kernel refused a socket option (the message says which).
        NotATapDevice: the interface does not carry Ethernet frames.
    """

    def __init__(
        self,
        name: str,
        *,
        netns: Netns = None,
        vnet_hdr: bool = False,
        geometry: RingGeometry | None = None,
        qdisc_bypass: bool = True,
        tx_geometry: TxGeometry | None = None,
    ) -> None:
        encode_ifname(name)
        self.name = name
        self.netns = netns
        self.geometry = geometry or RingGeometry()
        self.vnet_hdr_size = kc.VIRTIO_NET_HDR_SIZE if vnet_hdr else 0
        self.ring: mmap.mmap | None = None
        sock = self._open_socket()
        try:
            self._option(sock, kc.PACKET_VERSION, kc.TPACKET_V3, "TPACKET_V3")
            self._option(sock, kc.PACKET_IGNORE_OUTGOING, 1, "PACKET_IGNORE_OUTGOING")
            if vnet_hdr:
                self._option(sock, kc.PACKET_VNET_HDR, 1, "PACKET_VNET_HDR")
            if qdisc_bypass:
                self._option(sock, kc.PACKET_QDISC_BYPASS, 1, "PACKET_QDISC_BYPASS")
            self._option(sock, kc.PACKET_RX_RING, self.geometry.request(), "a receive ring")
            try:
                self.ring = mmap.mmap(
                    sock.fileno(), self.geometry.size, mmap.MAP_SHARED,
                    mmap.PROT_READ | mmap.PROT_WRITE,
                )  # fmt: skip
            except OSError as exc:
                raise self._error(exc, "cannot map the receive ring") from exc
            self.ifindex = self._bind(sock)
            self.tx = TxRing(self, tx_geometry or TxGeometry(), qdisc_bypass=qdisc_bypass)
        except BaseException:
            if self.ring is not None:
                self.ring.close()
            sock.close()
            raise
        self.holder = FdHolder(sock, name=name)
        self.view: memoryview | None = memoryview(self.ring)
        self.corrupt_blocks = 0
        #: Where reading stands: [block, offset of the next frame's header,
        #: frames left in the block, 1 if the block was taken from the kernel].
        #: The C loop (greentap/green/_relay.c, ring_batch) reads and updates it too.
        self.cursor = [0, 0, 0, 0]

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self.holder.fd} ifindex={self.ifindex}"
        return f"<PacketSocket {self.name!r} {state}>"

    @property
    def closed(self) -> bool:
        """True once closed."""
        return self.ring is None

    def _error(self, exc: OSError, what: str) -> GreentapError:
        if exc.errno == errno.EPERM:
            what = f"{what}: needs CAP_NET_RAW (run as root, or give the capability)"
        elif exc.errno == errno.ENODEV:
            where = "" if self.netns is None else f" in network namespace {self.netns!s}"
            what = f"no interface {self.name!r}{where}"
        return EndpointUnavailable.from_errno(exc.errno, what, endpoint=self.name)

    def _open_socket(self) -> _socket.socket:
        try:
            with entered(self.netns, self.name):
                flags = socket.SOCK_RAW | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
                return _socket.socket(socket.AF_PACKET, flags, 0)
        except OSError as exc:
            if isinstance(exc, GreentapError):
                raise
            raise self._error(exc, "cannot open a packet socket") from exc

    def _option(self, sock: _socket.socket, option: int, value: int | bytes, what: str) -> None:
        try:
            sock.setsockopt(kc.SOL_PACKET, option, value)
        except OSError as exc:
            raise self._error(exc, f"the kernel refused {what}") from exc

    def _bind(self, sock: _socket.socket) -> int:
        """Bind to the interface of our name (in the socket's namespace); join promiscuously.

        Returns:
            The interface index.
        """
        try:
            sock.bind((self.name, kc.ETH_P_ALL))
            _, _, _, hatype, _ = sock.getsockname()
        except OSError as exc:
            raise self._error(exc, "cannot bind to the interface") from exc
        if hatype != kc.ARPHRD_ETHER:
            kind = _ARPHRD_NAMES.get(hatype, f"link type {hatype}")
            raise NotATapDevice(f"{kind}: packet: needs an Ethernet interface", endpoint=self.name)
        ifindex = self._index(sock)
        mreq = _MREQ.pack(ifindex, kc.PACKET_MR_PROMISC, 0, b"")
        self._option(sock, kc.PACKET_ADD_MEMBERSHIP, mreq, "promiscuous membership")
        return ifindex

    def _index(self, sock: _socket.socket) -> int:
        """The interface's index, asked through the socket (so in its namespace)."""
        try:
            request = ifreq.pack_int(encode_ifname(self.name))
            out = fcntl.ioctl(sock.fileno(), kc.SIOCGIFINDEX, request)
        except OSError as exc:
            raise self._error(exc, "cannot find the interface") from exc
        return ifreq.unpack_int(out)

    def bound(self) -> bool:
        """True while the socket is bound to a live interface.

        The kernel unbinds it (index -1) when the interface is deleted or
        moved to another namespace.
        """
        sock = self.holder.handle
        if not isinstance(sock, _socket.socket):
            return False
        try:
            return bool(sock.getsockname()[0])
        except OSError:
            return False

    def rebind(self) -> None:
        """Bind again to the interface of our name (created again after it was deleted).

        Needs no privilege: both sockets and their rings stay.

        Raises:
            EndpointUnavailable: no such interface (yet), or the bind failed.
            EndpointClosed: the socket is closed.
        """
        sock = self.holder.handle
        if not isinstance(sock, _socket.socket):
            raise EndpointClosed(endpoint=self.name)
        # The transmit socket first: bound() looks at the receive socket, so a
        # failure between the two binds is seen and retried as a whole.
        self.tx.bind()
        self.ifindex = self._bind(sock)

    def pending_error(self) -> int:
        """Read and clear the socket's pending error (``ENETDOWN`` after the link went down).

        Returns:
            The errno, or 0.
        """
        sock = self.holder.handle
        if not isinstance(sock, _socket.socket):
            return 0
        return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))

    # --- the ring -------------------------------------------------------------
    def next_slot(self) -> Slot | None:
        """The next frame the kernel handed over, or None if it has handed over no more.

        Blocks are given back to the kernel once every frame in them was
        taken; a block that does not add up is given back unread and counted
        in :attr:`corrupt_blocks`.  Copy a frame out of :attr:`view` before
        the next call.

        Raises:
            EndpointClosed: the socket is closed.
        """
        view = self.view
        if view is None:
            raise EndpointClosed(endpoint=self.name)
        cursor, size = self.cursor, self.geometry.block_size
        while True:
            block, offset, left, taken = cursor
            base = block * size
            try:
                if taken and left:
                    slot, cursor[1] = tpacket.frame_at(
                        view, offset, base + size, self.vnet_hdr_size, left == 1
                    )
                    cursor[2] = left - 1
                    return slot
                if taken:  # every frame of it was read: give it back
                    self._give_back(view)
                    continue
                if not tpacket.block_ready(view, base):
                    return None
                cursor[2], cursor[1] = tpacket.open_block(view, base, size)
                cursor[3] = 1
            except RingCorrupt:
                self.corrupt_blocks += 1
                self._give_back(view)

    def _give_back(self, view: memoryview) -> None:
        cursor = self.cursor
        at = cursor[0] * self.geometry.block_size + tpacket.STATUS_OFFSET
        view[at : at + 4] = bytes(4)  # TP_STATUS_KERNEL
        cursor[:] = [(cursor[0] + 1) % self.geometry.block_count, 0, 0, 0]

    def close(self) -> None:
        """Unmap the ring, then close the socket; harmless if already closed."""
        view, self.view = self.view, None
        ring, self.ring = self.ring, None
        try:
            if view is not None:
                view.release()
            if ring is not None:
                ring.close()
        except BufferError:  # pragma: no cover - a slice of the ring still alive somewhere
            pass  # unmapped when the last view goes; the socket is closed below all the same
        finally:
            try:
                self.holder.close()
            finally:
                self.tx.close()

    def __enter__(self) -> PacketSocket:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class TxRing:
    """A packet socket with a ``TPACKET_V2`` transmit ring, bound to the interface of a
    :class:`PacketSocket` to send out of it.

    Opened by the :class:`PacketSocket` (in its namespace, with its vnet
    header and qdisc choices); bound with protocol 0, so it reads nothing.

    Attributes:
        holder: the :class:`~greentap.device.fd.FdHolder` owning the socket.
        geometry: the ring's shape.
        map: the mapped ring, None once closed.
        cursor: ``[slot]``: the next slot to fill, which is the kernel's head
            between batches (see :mod:`greentap.core.txring`).

    Raises:
        EndpointUnavailable: the kernel refused the ring or the bind.
    """

    def __init__(self, owner: PacketSocket, geometry: TxGeometry, *, qdisc_bypass: bool) -> None:
        self.owner = owner
        self.geometry = geometry
        self.map: mmap.mmap | None = None
        sock = owner._open_socket()
        try:
            owner._option(sock, kc.PACKET_VERSION, kc.TPACKET_V2, "TPACKET_V2")
            if owner.vnet_hdr_size:
                owner._option(sock, kc.PACKET_VNET_HDR, 1, "PACKET_VNET_HDR")
            if qdisc_bypass:
                owner._option(sock, kc.PACKET_QDISC_BYPASS, 1, "PACKET_QDISC_BYPASS")
            owner._option(sock, kc.PACKET_TX_RING, geometry.request(), "a transmit ring")
            try:
                self.map = mmap.mmap(
                    sock.fileno(), geometry.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
                )
            except OSError as exc:
                raise owner._error(exc, "cannot map the transmit ring") from exc
            self._sock = sock
            self.bind()
        except BaseException:
            if self.map is not None:
                self.map.close()
            sock.close()
            raise
        self.holder = FdHolder(sock, name=owner.name)
        self.cursor = [0]

    def bind(self) -> None:
        """Bind to the interface of the owner's name (again, after it was created again).

        Raises:
            EndpointUnavailable: no such interface.
        """
        try:
            self._sock.bind((self.owner.name, 0))
        except OSError as exc:
            raise self.owner._error(exc, "cannot bind to the interface") from exc

    def close(self) -> None:
        """Unmap the ring, then close the socket; harmless if already closed."""
        ring, self.map = self.map, None
        try:
            if ring is not None:
                ring.close()
        except BufferError:  # pragma: no cover - a view of the ring still alive somewhere
            pass  # unmapped when the last view goes; the socket is closed below all the same
        finally:
            self.holder.close()
