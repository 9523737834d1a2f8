"""802.1Q VLANs: which VLAN a frame belongs to on a port, and how it leaves.  Pure.

A port is an *access* port of one VLAN (``?vlan=N``: untagged frames belong
to VLAN N, tagged ones arriving are dropped), a *trunk* (``?trunk=LIST``:
tagged frames of the allowed VLANs, others dropped; ``&native=N``: untagged
frames belong to VLAN N and leave untagged), or, with neither, transparent:
what arrives keeps its tag or its absence of one (untagged frames are
"VLAN 0"), as Open vSwitch treats a port without ``tag`` or ``trunks``.

Frames may carry a virtio-net header before the Ethernet header (offloads):
pushing or popping a tag moves what follows by 4 bytes, so the header's
``csum_start`` (where the checksum starts) and ``hdr_len`` move with it.
"""

from __future__ import annotations

import dataclasses
import struct

from greentap.core.kernel_constants import ETH_HLEN

__all__ = [
    "MAX_VID",
    "TPID",
    "UNTAGGED",
    "VlanPolicy",
    "format_vlan_list",
    "frame_vid",
    "set_vid",
    "tag_of",
    "parse_vlan_list",
    "pop_tag",
    "push_tag",
]

TPID = 0x8100  # IEEE 802.1Q
MAX_VID = 4094  # 0 and 4095 are reserved
UNTAGGED = 0  # the VLAN of an untagged frame on a transparent port
NO_TAG = -1  # tag_of(): no 802.1Q tag
CUT_TAG = -2  # tag_of(): the 802.1Q type, but the frame ends before the tag does
TAG_LEN = 4
_MAC_PAIR = 12  # the tag goes after the destination and source addresses
_VNET = struct.Struct("=BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
_NEEDS_CSUM = 1
_GSO_NONE = 0
# Drop reasons, as counted in a port's drops.
TAGGED_ON_ACCESS = "rx_vlan_tagged_on_access"
NOT_ALLOWED = "rx_vlan_not_allowed"
UNTAGGED_ON_TRUNK = "rx_vlan_untagged_on_trunk"


def parse_vlan_list(text: str) -> frozenset[int]:
    """``N,M,A-B``: VLAN ids 1 to 4094.

    Raises:
        ValueError: says what was expected.
    """
    out: set[int] = set()
    for item in text.split(","):
        low, dash, high = item.partition("-")
        try:
            first = _vid(low)
            last = _vid(high) if dash else first
        except ValueError:
            raise ValueError(f"VLAN ids 1 to {MAX_VID} as N,M,A-B, not {item!r}") from None
        if first > last:
            raise ValueError(f"a range from low to high, not {item!r}")
        out.update(range(first, last + 1))
    return frozenset(out)


def format_vlan_list(vids: frozenset[int]) -> str:
    """``N,M,A-B``: the list :func:`parse_vlan_list` reads, in ranges where it can."""
    runs: list[list[int]] = []  # [first, last]
    for vid in sorted(vids):
        if runs and vid == runs[-1][1] + 1:
            runs[-1][1] = vid
        else:
            runs.append([vid, vid])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _vid(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_VID:
        raise ValueError(text)
    return int(text)


def tag_of(frame: bytes | bytearray | memoryview, at: int) -> int:
    """What tag the frame at ``at`` (after any vnet header) carries.

    Returns:
        :data:`NO_TAG`, :data:`CUT_TAG` (an 802.1Q type with no room for the
        tag after it: a runt), or the tag's VLAN id (0 for a priority tag).
    """
    if len(frame) - at < ETH_HLEN or frame[at + 12] != 0x81 or frame[at + 13] != 0:
        return NO_TAG
    if len(frame) - at < ETH_HLEN + TAG_LEN:
        return CUT_TAG
    return ((frame[at + 14] << 8) | frame[at + 15]) & 0x0FFF


def frame_vid(frame: bytes | bytearray | memoryview, at: int) -> int | None:
    """The VLAN id of the frame at ``at`` (after any vnet header), or None if untagged.

    A priority tag (VLAN id 0) counts as untagged, as 802.1Q says; it stays in the frame.
    """
    tag = tag_of(frame, at)
    return tag if tag > 0 else None


def set_vid(frame: bytes | bytearray | memoryview, at: int, vid: int) -> bytearray:
    """A copy of a frame with a tag (a priority tag) whose VLAN id is now ``vid``
    (its priority kept)."""
    out = bytearray(frame)
    tci = (out[at + 14] << 8 | out[at + 15]) & 0xF000 | vid
    out[at + 14 : at + 16] = tci.to_bytes(2, "big")
    return out


def push_tag(frame: bytes | bytearray | memoryview, at: int, vid: int) -> bytearray:
    """A copy of the frame with an 802.1Q tag (priority 0) for ``vid``.

    Args:
        at: where the Ethernet header starts (the vnet header's size, or 0).
    """
    out = bytearray(len(frame) + TAG_LEN)
    out[: at + _MAC_PAIR] = frame[: at + _MAC_PAIR]
    out[at + _MAC_PAIR : at + _MAC_PAIR + TAG_LEN] = struct.pack("!HH", TPID, vid)
    out[at + _MAC_PAIR + TAG_LEN :] = frame[at + _MAC_PAIR :]
    if at:
        _shift(out, TAG_LEN)
    return out


def pop_tag(frame: bytes | bytearray | memoryview, at: int) -> bytearray:
    """A copy of the frame without its 802.1Q tag (the caller checked it has one)."""
    out = bytearray(len(frame) - TAG_LEN)
    out[: at + _MAC_PAIR] = frame[: at + _MAC_PAIR]
    out[at + _MAC_PAIR :] = frame[at + _MAC_PAIR + TAG_LEN :]
    if at:
        _shift(out, -TAG_LEN)
    return out


def _shift(frame: bytearray, by: int) -> None:
    """Move the vnet header's offsets into the frame by ``by`` bytes (a tag came or went)."""
    flags, gso_type, hdr_len, gso_size, start, offset = _VNET.unpack_from(frame)
    # Clamped: a header whose offsets make no sense (a peer's) is carried, not fatal.
    if flags & _NEEDS_CSUM:
        start = min(max(start + by, 0), 0xFFFF)
    if gso_type != _GSO_NONE:
        hdr_len = min(max(hdr_len + by, 0), 0xFFFF)
    _VNET.pack_into(frame, 0, flags, gso_type, hdr_len, gso_size, start, offset)


@dataclasses.dataclass(frozen=True)
class VlanPolicy:
    """How one port treats VLANs.

    Attributes:
        access: the VLAN of an access port, or None.
        allowed: the VLANs a trunk carries tagged (empty: not a trunk).
        native: a trunk's untagged VLAN, or None (untagged frames are dropped).
    """

    access: int | None = None
    allowed: frozenset[int] = frozenset()
    native: int | None = None

    @property
    def transparent(self) -> bool:
        """Neither access nor trunk: tags pass as they are."""
        return self.access is None and not self.allowed

    def ingress(self, tag: int | None) -> tuple[int | None, str | None]:
        """The VLAN a frame arriving with ``tag`` (None: untagged) belongs to.

        Returns:
            ``(vlan, None)``, or ``(None, drop reason)``.
        """
        if self.access is not None:
            return (self.access, None) if tag is None else (None, TAGGED_ON_ACCESS)
        if not self.allowed:
            return (UNTAGGED if tag is None else tag), None
        if tag is None:
            return (self.native, None) if self.native is not None else (None, UNTAGGED_ON_TRUNK)
        if tag in self.allowed or tag == self.native:  # the native VLAN tagged: accepted
            return tag, None
        return None, NOT_ALLOWED

    def egress(self, vlan: int) -> bool | None:
        """How a frame of ``vlan`` leaves: True tagged, False untagged, None not at all."""
        if self.access is not None:
            return False if vlan == self.access else None
        if not self.allowed:
            return vlan != UNTAGGED
        if vlan == self.native:
            return False
        return True if vlan in self.allowed else None

    def member(self, vlan: int) -> bool:
        """Whether frames of ``vlan`` may leave through this port."""
        return self.egress(vlan) is not None
