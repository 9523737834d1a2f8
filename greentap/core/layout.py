"""Frame geometry of a TUN/TAP fd: what precedes each frame, how long one can be.  Pure."""

from __future__ import annotations

import dataclasses

from greentap.core import kernel_constants as kc

__all__ = ["FrameLayout"]


@dataclasses.dataclass(frozen=True)
class FrameLayout:
    """How frames read from and written to one fd are laid out.

    Attributes:
        mode: ``"tap"`` (Ethernet frames) or ``"tun"`` (IP packets).
        vnet_hdr_size: bytes of virtio-net header before each frame (0: none).
        packet_info: whether the 4-byte ``struct tun_pi`` precedes the frame.
    """

    mode: str = "tap"
    vnet_hdr_size: int = 0
    packet_info: bool = False

    @classmethod
    def from_flags(cls, flags: int, vnet_hdr_size: int = 0) -> FrameLayout:
        """The layout of an fd attached with these ``IFF_*`` flags."""
        return cls(
            mode="tun" if flags & kc.IFF_TUN else "tap",
            vnet_hdr_size=vnet_hdr_size if flags & kc.IFF_VNET_HDR else 0,
            packet_info=not flags & kc.IFF_NO_PI,
        )

    @property
    def header_size(self) -> int:
        """Bytes before the frame proper: the vnet header and ``tun_pi``."""
        return self.vnet_hdr_size + (kc.TUN_PI_SIZE if self.packet_info else 0)

    @property
    def max_frame_size(self) -> int:
        """The largest read the fd can return, whatever the MTU becomes.

        Sized for ``ETH_MAX_MTU`` (or a 64 KiB GSO frame) plus the Ethernet
        and VLAN headers and the header, so a read is never truncated when
        someone raises the MTU at run time.
        """
        base = kc.MAX_L2_FRAME if self.mode == "tap" else max(kc.ETH_MAX_MTU, 65536)
        return base + self.header_size

    @property
    def min_frame_size(self) -> int:
        """The shortest write the kernel accepts (an Ethernet header for a TAP)."""
        return (kc.ETH_HLEN if self.mode == "tap" else 1) + self.header_size
