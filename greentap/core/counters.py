"""Per-device frame counters.  Pure data, no I/O."""

from __future__ import annotations


class DeviceCounters:
    """Frame and byte counters of one device, readable at any time.

    Attributes:
        rx_packets, rx_bytes: frames read from the device, and their bytes.
        rx_errors: frames read but unusable (e.g. too short to switch).
        tx_packets, tx_bytes: frames written to the device, and their bytes.
        tx_dropped: frames dropped because the device could not take them now
            (EAGAIN/ENOBUFS): the backpressure drop a NIC would make.
        tx_link_down: frames dropped because the link was down (EIO).
        tx_errors: writes that failed otherwise (runt or invalid frames, I/O errors).
    """

    __slots__ = (
        "rx_packets",
        "rx_bytes",
        "rx_errors",
        "tx_packets",
        "tx_bytes",
        "tx_dropped",
        "tx_link_down",
        "tx_errors",
    )

    rx_packets: int
    rx_bytes: int
    rx_errors: int
    tx_packets: int
    tx_bytes: int
    tx_dropped: int
    tx_link_down: int
    tx_errors: int

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    def as_dict(self) -> dict[str, int]:
        """Return a snapshot of every counter as a plain dict."""
        return {name: getattr(self, name) for name in self.__slots__}

    def __repr__(self) -> str:
        inner = " ".join(f"{k}={v}" for k, v in self.as_dict().items())
        return f"<DeviceCounters {inner}>"
