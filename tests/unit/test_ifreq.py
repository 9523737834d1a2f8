"""struct ifreq packing and the per-architecture ioctl table."""

import struct

import pytest

from greentap.core import ifreq
from greentap.core import kernel_constants as kc
from greentap.errors import UnsupportedArchitecture


def test_ifreq_size_matches_the_abi():
    """struct ifreq is 40 bytes on LP64 and 32 on ILP32."""
    expected = 40 if struct.calcsize("P") == 8 else 32
    assert kc.IFREQ_SIZE == expected
    assert len(ifreq.pack_flags(b"tap0", 0)) == expected
    assert len(ifreq.pack_int(b"tap0", 1500)) == expected
    assert len(ifreq.pack_hwaddr(b"tap0", 1, b"\x02" * 6)) == expected


def test_flags_round_trip_and_layout():
    """The name fills the first 16 bytes NUL-padded; flags follow as a native short."""
    buf = ifreq.pack_flags(b"tap0", kc.IFF_TAP | kc.IFF_NO_PI)
    assert buf[:16] == b"tap0" + b"\0" * 12
    assert struct.unpack_from("=H", buf, 16)[0] == 0x1002
    assert ifreq.unpack_flags(buf) == ("tap0", 0x1002)


def test_flags_are_truncated_to_sixteen_bits_not_overflowing():
    """ifr_flags is a short: a value beyond 16 bits must not spill into the union."""
    buf = ifreq.pack_flags(b"x", 0x1_0001)
    assert ifreq.unpack_flags(buf)[1] == 1
    assert buf[18:] == bytes(len(buf) - 18)


def test_int_member_round_trip():
    """ifr_mtu / ifr_ifindex sit right after the name."""
    buf = ifreq.pack_int(b"eth0", 9000)
    assert struct.unpack_from("=i", buf, 16)[0] == 9000
    assert ifreq.unpack_int(buf) == 9000


def test_hwaddr_round_trip():
    """ifr_hwaddr is a sockaddr: family then the 6-byte MAC."""
    mac = bytes.fromhex("020000000001")
    buf = ifreq.pack_hwaddr(b"tap0", kc.ARPHRD_ETHER, mac)
    assert struct.unpack_from("=H", buf, 16)[0] == kc.ARPHRD_ETHER
    assert buf[18:24] == mac
    assert ifreq.unpack_hwaddr(buf) == (kc.ARPHRD_ETHER, mac)


@pytest.mark.parametrize(
    ("machine", "tunsetiff", "tungetiff"),
    [
        ("x86_64", 0x400454CA, 0x800454D2),
        ("aarch64", 0x400454CA, 0x800454D2),
        ("ppc64le", 0x800454CA, 0x400454D2),
        ("mips", 0x800454CA, 0x400454D2),
    ],
)
def test_ioctl_numbers_follow_the_architecture(machine, tunsetiff, tungetiff):
    """_IOW/_IOR encode direction differently on x86/ARM and PowerPC/MIPS."""
    ioc = kc.tun_ioctls(machine)
    assert ioc.TUNSETIFF == tunsetiff
    assert ioc.TUNGETIFF == tungetiff


def test_known_x86_numbers_from_the_headers():
    """Spot-check against the values printed by a C program on x86_64."""
    ioc = kc.tun_ioctls("x86_64")
    assert ioc.TUNSETPERSIST == 0x400454CB
    assert ioc.TUNSETOWNER == 0x400454CC
    assert ioc.TUNSETGROUP == 0x400454CE
    assert ioc.TUNSETOFFLOAD == 0x400454D0
    assert ioc.TUNGETVNETHDRSZ == 0x800454D7
    assert ioc.TUNSETVNETHDRSZ == 0x400454D8
    assert ioc.TUNGETDEVNETNS == 0x54E3


def test_unknown_architecture_is_a_clear_error():
    """An architecture missing from the table is refused, not guessed."""
    with pytest.raises(UnsupportedArchitecture, match="IOC_ENCODINGS"):
        kc.tun_ioctls("vax")
