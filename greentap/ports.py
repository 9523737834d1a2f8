"""Endpoints the forwarder moves frames between ("ports").

Every port has the same shape: ``name``, ``kind``, ``counters``,
``max_frame_size``, ``header_size``, ``readable``, ``recv_into(buffer)``,
``send(frame) -> bool`` and ``close()``.  The forwarder knows nothing else
about them, so UDP, VXLAN or pcap ports fit without changing it.
"""

import types

from greentap.device import Tap
from greentap.errors import EndpointSyntaxError, TapError


class Port:
    """The common shape of an endpoint.  Subclasses fill in the I/O.

    Attributes:
        name: what logs and counters call it.
        kind: ``"tap"``, ...
        counters: a :class:`~greentap.counters.DeviceCounters`.
        max_frame_size: the buffer size :meth:`recv_into` needs.
        header_size: bytes before the Ethernet header in each frame (vnet header).
        readable: False for write-only ports.
        drops: frames dropped, by reason (e.g. ``rx_wrong_vni``), for ports
            that have reasons to tell.
    """

    kind = "port"
    readable = True
    header_size = 0
    drops = types.MappingProxyType({})  # ports that count drops replace it

    def recv_into(self, buffer):  # pragma: no cover - interface
        """Read one frame into ``buffer`` and return its length, blocking this greenlet."""
        raise NotImplementedError

    def send(self, frame):  # pragma: no cover - interface
        """Write one frame without blocking; return False if it was dropped."""
        raise NotImplementedError

    def close(self):  # pragma: no cover - interface
        """Release the port; idempotent; wakes a greenlet blocked in recv_into."""
        raise NotImplementedError

    def describe(self):
        """Return a dict describing the port for logs."""
        return {"endpoint": self.name, "kind": self.kind}

    def __repr__(self):
        return f"<{type(self).__name__} {self.name!r}>"


class FramePort(Port):
    """A port over a :class:`~greentap.polled.PolledTap`: any fd that keeps
    frame boundaries (a TAP, an adopted fd, a SEQPACKET socket in tests).

    Args:
        polled: the :class:`~greentap.polled.PolledTap`; the port owns it.
        kind: what to call this kind of port.
    """

    kind = "tap"

    def __init__(self, polled, *, kind=None):
        if kind is not None:
            self.kind = kind
        self.polled = polled
        self.name = polled.name
        self.counters = polled.counters
        self.max_frame_size = polled.max_frame_size
        self.header_size = polled.tap.header_size
        # Bound once: these are called per frame.
        self.recv_into = polled.recv_into
        self.send = polled.send

    def close(self):
        """Close the device; harmless if already closed."""
        self.polled.close()


class TapPort(FramePort):
    """A TAP interface as a forwarder port.

    Attaches to an existing device (left as it was found when the port
    closes: link state and MTU restored, device kept) or creates one (brought
    up, and gone when the port closes).

    Args:
        name: interface name or template.
        netns: namespace to open it in (see :class:`~greentap.device.Tap`).
        mtu: MTU to set, or None to leave it.
        hub: the gevent hub.
        tap: an already-open :class:`~greentap.device.Tap` to use instead of
            opening ``name`` (``name`` and ``netns`` are then ignored).
        offload: open with a virtio-net header and accept checksum and
            segmentation offloads (:meth:`Tap.enable_offloads`): frames keep
            their header and may be 64 KiB; only ports that all do the same
            can be forwarded between.

    Raises:
        TapError: as :class:`~greentap.device.Tap` and its link settings.
    """

    def __init__(self, name=None, *, netns=None, mtu=None, hub=None, tap=None, offload=False):
        if tap is None:
            tap = Tap(name, netns=netns, vnet_hdr=offload)
        self.tap = tap
        self.created = tap.created
        self._restore = None
        try:
            if not tap.created:
                self._restore = (tap.is_up, tap.mtu)
            if mtu is not None:
                tap.mtu = mtu
            if offload:
                tap.enable_offloads()
            tap.up()
            polled = tap.polled(hub)
        except BaseException:
            self._put_back()
            tap.close()
            raise
        super().__init__(polled)

    def _put_back(self):
        if self._restore is None:
            return
        was_up, mtu = self._restore
        try:
            if self.tap.mtu != mtu:
                self.tap.mtu = mtu
            if not was_up:
                self.tap.down()
        except TapError:
            pass  # the device is gone or moved: nothing left to restore

    def close(self):
        """Close the TAP; restore an attached device's link state first."""
        if self.polled.closed:
            return
        if not self.tap.closed:
            self._put_back()
        self.polled.close()

    def describe(self):
        """Return a dict describing the port for logs."""
        return {
            "endpoint": self.name,
            "kind": self.kind,
            "created": self.created,
            "netns": self.tap.netns,
            "offload": self.tap.offload,
        }


def open_port(spec, *, mtu=None, hub=None, logger=None, offload=False):
    """Open the port an :class:`~greentap.endpoints.EndpointSpec` describes.

    Args:
        spec: the parsed endpoint.
        mtu: MTU for TAP ports, or None.
        hub: the gevent hub.
        logger: a structlog logger for ports that log state changes (pcap).
        offload: for TAP ports, see :class:`TapPort`.

    Returns:
        A :class:`Port`.

    Raises:
        EndpointSyntaxError: a kind this build cannot open.
        TapError: the device could not be opened or configured.
    """
    if spec.kind == "tap":
        return TapPort(
            spec.name, netns=spec.options.get("netns"), mtu=mtu, hub=hub, offload=offload
        )
    if spec.kind in ("vxlan", "udp"):
        from greentap.tunnel_ports import open_tunnel  # it builds on this module's Port

        return open_tunnel(spec, hub=hub)
    if spec.kind == "pcap":
        from greentap.pcap_port import open_pcap

        return open_pcap(spec, logger=logger)
    if spec.kind == "fd":
        # Already attached by whoever opened it; no link settings: the link is
        # the helper's to configure, and this process may lack the privilege.
        tap = Tap.from_fd(spec.options["fd"])
        if tap.mode != "tap" or tap.vnet_hdr_size or tap.header_size:
            tap.close()
            raise EndpointSyntaxError(
                None,
                f"{spec.text}: a plain TAP fd is needed (no tun mode, vnet header or packet info)",
            )
        return FramePort(tap.polled(hub))
    raise EndpointSyntaxError(None, f"cannot open endpoint of kind {spec.kind!r}")


def open_ports(specs, **kw):
    """Open several ports; if one fails, close those already opened.

    Returns:
        A list of :class:`Port`.
    """
    ports = []
    try:
        for spec in specs:
            ports.append(open_port(spec, **kw))
    except BaseException:
        for port in ports:
            port.close()
        raise
    return ports
