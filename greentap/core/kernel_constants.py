"""Linux kernel constants used by greentap, grouped by the header that defines them.

The one place for kernel numbers (pyroute2 keeps them the same way).  Nothing
here does I/O. ioctl request numbers are computed from the ``_IOC``
encoding of the running architecture (``asm-generic/ioctl.h`` and its
per-architecture variants) because the direction bits differ between, for
example, x86 and PowerPC; an architecture missing from the table gets a clear
:class:`~greentap.errors.UnsupportedArchitecture` instead of a wrong number.
"""

from __future__ import annotations

import functools
import platform
import struct
import types

from greentap.errors import UnsupportedArchitecture

# --- linux/if.h ----------------------------------------------------------
IFNAMSIZ = 16  # includes the terminating NUL: names are at most 15 bytes
IFF_UP = 0x1
IFF_BROADCAST = 0x2
IFF_RUNNING = 0x40
IFF_MULTICAST = 0x1000

# struct ifreq is IFNAMSIZ bytes of name plus a union whose largest member
# (struct ifmap) holds unsigned longs: 24 bytes on LP64, 16 on ILP32.
IFREQ_SIZE = IFNAMSIZ + (24 if struct.calcsize("P") == 8 else 16)

# --- linux/if_tun.h ------------------------------------------------------
IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_NAPI = 0x0010
IFF_NAPI_FRAGS = 0x0020
IFF_NO_CARRIER = 0x0040
IFF_MULTI_QUEUE = 0x0100
IFF_ATTACH_QUEUE = 0x0200
IFF_DETACH_QUEUE = 0x0400
IFF_PERSIST = 0x0800
IFF_NO_PI = 0x1000
IFF_ONE_QUEUE = 0x2000
IFF_VNET_HDR = 0x4000
IFF_TUN_EXCL = 0x8000

# Features for TUNSETOFFLOAD.
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_UFO = 0x10
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40

# struct tun_pi: __u16 flags, __be16 proto.
TUN_PI_SIZE = 4

# --- linux/sockios.h (architecture-independent numbers) ------------------
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCGIFMTU = 0x8921
SIOCSIFMTU = 0x8922
SIOCSIFHWADDR = 0x8924
SIOCGIFHWADDR = 0x8927
SIOCGIFINDEX = 0x8933
SIOCGIFTXQLEN = 0x8942
SIOCSIFTXQLEN = 0x8943

# --- linux/if_arp.h ------------------------------------------------------
ARPHRD_ETHER = 1
ARPHRD_NONE = 0xFFFE

# --- linux/if_ether.h ----------------------------------------------------
ETH_ALEN = 6
ETH_HLEN = 14
ETH_MAX_MTU = 0xFFFF
VLAN_HLEN = 4  # linux/if_vlan.h
ETH_P_ALL = 0x0003  # every protocol: what a packet socket bound to an interface reads
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8

# --- linux/socket.h, linux/if_packet.h -----------------------------------
SOL_PACKET = 263
PACKET_OUTGOING = 4  # sll_pkttype of a frame this host sent
PACKET_ADD_MEMBERSHIP = 1
PACKET_RX_RING = 5
PACKET_TX_RING = 13
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_VNET_HDR = 15
PACKET_QDISC_BYPASS = 20
PACKET_IGNORE_OUTGOING = 23
PACKET_MR_PROMISC = 1
TPACKET_V2 = 1  # the transmit ring's version: the kernel has no TPACKET_V3 transmit ring
TPACKET_V3 = 2
# tp_status / block_status bits.
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1 << 0
TP_STATUS_COPY = 1 << 1  # the frame was longer than the ring's slot: truncated
TP_STATUS_LOSING = 1 << 2
TP_STATUS_CSUMNOTREADY = 1 << 3
TP_STATUS_VLAN_VALID = 1 << 4
TP_STATUS_VLAN_TPID_VALID = 1 << 6
TP_STATUS_BLK_TMO = 1 << 29
# tp_status of a transmit ring's frame.
TP_STATUS_AVAILABLE = 0  # user space may fill it
TP_STATUS_SEND_REQUEST = 1 << 0  # filled: the next send() takes it
TP_STATUS_SENDING = 1 << 1  # taken, still in flight (the driver holds it)
TP_STATUS_WRONG_FORMAT = 1 << 2  # refused as malformed: the ring stops at it

# --- linux/virtio_net.h --------------------------------------------------
VIRTIO_NET_HDR_SIZE = 10  # struct virtio_net_hdr
VIRTIO_NET_HDR_MRG_RXBUF_SIZE = 12  # struct virtio_net_hdr_mrg_rxbuf
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_UDP_L4 = 5

# Largest frame a TAP can hand us: an MTU of ETH_MAX_MTU plus the Ethernet
# and VLAN headers, or a 64 KiB GSO super-frame when offloads are on.
MAX_L2_FRAME = max(ETH_MAX_MTU, 65536) + ETH_HLEN + VLAN_HLEN

# --- linux/udp.h (Python 3.11's socket module lacks these names) ------------
SOL_UDP = 17  # IPPROTO_UDP
UDP_SEGMENT = 103  # setsockopt/cmsg: send one buffer as datagrams of this size
UDP_GRO = 104  # setsockopt: receive coalesced datagrams; cmsg: their size
# The kernel takes up to 64 segments per UDP_SEGMENT send (128 on newer ones).
UDP_MAX_SEGMENTS = 64

# --- asm-generic/socket.h (x86, arm64, riscv; not alpha, mips, parisc, sparc) --
SO_SNDBUFFORCE = 32  # SO_SNDBUF beyond net.core.wmem_max, with CAP_NET_ADMIN
SO_RCVBUFFORCE = 33

# --- linux/sched.h -------------------------------------------------------
CLONE_NEWNET = 0x40000000

# --- asm/ioctl.h: the _IOC encoding, per architecture ---------------------
# (dirbits, sizebits, IOC_NONE, IOC_WRITE, IOC_READ)
_GENERIC = (2, 14, 0, 1, 2)  # asm-generic/ioctl.h
_PPC_MIPS_SPARC = (3, 13, 1, 4, 2)  # arch/{powerpc,mips,sparc,alpha}
IOC_ENCODINGS = {
    "x86_64": _GENERIC,
    "amd64": _GENERIC,
    "i386": _GENERIC,
    "i486": _GENERIC,
    "i586": _GENERIC,
    "i686": _GENERIC,
    "aarch64": _GENERIC,
    "arm64": _GENERIC,
    "armv6l": _GENERIC,
    "armv7l": _GENERIC,
    "armv8l": _GENERIC,
    "riscv64": _GENERIC,
    "s390x": _GENERIC,
    "loongarch64": _GENERIC,
    "ppc": _PPC_MIPS_SPARC,
    "ppc64": _PPC_MIPS_SPARC,
    "ppc64le": _PPC_MIPS_SPARC,
    "mips": _PPC_MIPS_SPARC,
    "mipsel": _PPC_MIPS_SPARC,
    "mips64": _PPC_MIPS_SPARC,
    "mips64el": _PPC_MIPS_SPARC,
    "sparc": _PPC_MIPS_SPARC,
    "sparc64": _PPC_MIPS_SPARC,
    "alpha": _PPC_MIPS_SPARC,
}

_INT = 4  # sizeof(int) / sizeof(unsigned int) on every Linux ABI


def _ioc(encoding: tuple[int, ...], direction: int, type_: int, nr: int, size: int) -> int:
    sizebits = encoding[1]
    nrbits = typebits = 8
    size_shift = nrbits + typebits
    dir_shift = size_shift + sizebits
    if size >= 1 << sizebits:  # pragma: no cover - all our sizes are small
        raise ValueError("ioctl argument too large for this architecture")
    return (direction << dir_shift) | (size << size_shift) | (type_ << nrbits) | nr


@functools.cache
def tun_ioctls(machine: str | None = None) -> types.SimpleNamespace:
    """Return the ``linux/if_tun.h`` ioctl request numbers for an architecture.

    Args:
        machine: a ``platform.machine()`` string; the running machine if None.

    Returns:
        A namespace with ``TUNSETIFF``, ``TUNGETIFF``, ``TUNSETPERSIST`` and
        the other TUN ioctls used by greentap.

    Raises:
        UnsupportedArchitecture: the architecture's ioctl encoding is not known.
    """
    machine = machine or platform.machine()
    try:
        enc = IOC_ENCODINGS[machine]
    except KeyError:
        raise UnsupportedArchitecture(endpoint=machine) from None
    _, _, none, write, read = enc
    t = ord("T")
    return types.SimpleNamespace(
        TUNSETIFF=_ioc(enc, write, t, 202, _INT),
        TUNSETPERSIST=_ioc(enc, write, t, 203, _INT),
        TUNSETOWNER=_ioc(enc, write, t, 204, _INT),
        TUNSETGROUP=_ioc(enc, write, t, 206, _INT),
        TUNGETFEATURES=_ioc(enc, read, t, 207, _INT),
        TUNSETOFFLOAD=_ioc(enc, write, t, 208, _INT),
        TUNGETIFF=_ioc(enc, read, t, 210, _INT),
        TUNGETVNETHDRSZ=_ioc(enc, read, t, 215, _INT),
        TUNSETVNETHDRSZ=_ioc(enc, write, t, 216, _INT),
        TUNSETQUEUE=_ioc(enc, write, t, 217, _INT),
        TUNSETCARRIER=_ioc(enc, write, t, 226, _INT),
        TUNGETDEVNETNS=_ioc(enc, none, t, 227, 0),
    )
