"""Endpoints the forwarder moves frames between ("ports").

Every port has the same shape: ``name``, ``kind``, ``counters``,
``max_frame_size``, ``header_size``, ``readable``, ``recv_into(buffer)``,
``send(frame) -> bool`` and ``close()``; and for a long run ``check()``
(called every second or so: notice link changes, recover), ``fail()``,
``reopen()`` (SIGHUP) and ``notify`` (how a port reports a state change).
The forwarder knows nothing else about them, so UDP, VXLAN or pcap ports
fit without changing it.
"""

import collections
import errno
import types

from greentap.device import Tap
from greentap.errors import EndpointSyntaxError, LinkConfigFailed, TapError
from greentap.ratelimit import TokenBucket


def _ignore(event, level="warning", **fields):
    pass


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
        policer: a :class:`~greentap.ratelimit.TokenBucket` limiting the
            frames read from this port (``?rate=PPS``), or None.
        notify: ``notify(event, level="warning", **fields)`` reports a state
            change (link down, peer unreachable, ...); the forwarder sets it
            to log once per change.
    """

    kind = "port"
    readable = True
    header_size = 0
    drops = types.MappingProxyType({})  # ports that count drops replace it
    policer = None
    recoverable = False  # may come back after failing (see check())
    notify = staticmethod(_ignore)

    def check(self):
        """Look at the port's state and report changes through :attr:`notify`.

        Returns:
            True if a port that had failed works again (the forwarder then
            puts it back), False otherwise.
        """
        return False

    def fail(self):
        """The port failed: release it.  Ports that can come back wait in :meth:`check`."""
        self.close()

    def reopen(self):
        """Reopen what an operator may have moved away (SIGHUP): capture files."""

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
        self.drops = collections.Counter()  # rx_rate_limited

    def close(self):
        """Close the device; harmless if already closed."""
        self.polled.close()


class TapPort(FramePort):
    """A TAP interface as a forwarder port.

    Attaches to an existing device (left as it was found when the port
    closes: link state and MTU restored, device kept) or creates one (brought
    up, and gone when the port closes).

    While it runs, :meth:`check` watches the link: taken down or up again,
    moved to another namespace or renamed (the fd follows the device, so
    frames still flow once it is up there) are each reported once.  A TAP
    opened by a plain name that vanishes is re-attached when a device of that
    name exists again (a persistent TAP re-created by its owner), through
    the fd it already holds (:meth:`Tap.reattach`): no new privilege is
    needed, so this works after ``--user`` when the device's owner is that
    user.  The port never creates the device itself: one made here would not
    be the one the operator's tools configure.

    Args:
        name: interface name or template.
        netns: namespace to open it in (see :class:`~greentap.device.Tap`).
        mtu: MTU to set, or None to leave it.
        hub: the gevent hub.
        tap: an already-open :class:`~greentap.device.Tap` to use instead of
            opening ``name`` (``name`` and ``netns`` are then ignored, and the
            port does not re-attach).
        offload: open with a virtio-net header and accept checksum and
            segmentation offloads (:meth:`Tap.enable_offloads`): frames keep
            their header and may be 64 KiB; only ports that all do the same
            can be forwarded between.

    Attributes:
        link_state: ``"up"``, ``"down"``, ``"moved"`` or ``"gone"`` (vanished,
            waiting to come back), as last seen.

    Raises:
        TapError: as :class:`~greentap.device.Tap` and its link settings.
    """

    def __init__(self, name=None, *, netns=None, mtu=None, hub=None, tap=None, offload=False):
        self.recoverable = tap is None and "%" not in name
        if tap is None:
            tap = Tap(name, netns=netns, vnet_hdr=offload)
        self._mtu, self._offload = mtu, offload
        self._restore = None
        self._closed = False
        self._refused = None  # why the last re-attach failed (reported once)
        try:
            self._configure(tap)
            polled = tap.polled(hub)
        except BaseException:
            self._put_back()
            tap.close()
            raise
        self.created = tap.created
        super().__init__(polled)
        self.link_state = "up"

    def _configure(self, tap):
        """Take ``tap`` over: remember how it was found, apply MTU and offloads, bring it up."""
        self.tap = tap
        self._restore = None if tap.created else (tap.is_up, tap.mtu)
        self._ifindex = tap.ifindex
        if self._mtu is not None:
            tap.mtu = self._mtu
        if self._offload:
            tap.enable_offloads()
        tap.up()

    def _put_back(self):
        put_back(self.tap, self._restore)

    # --- watching the link ------------------------------------------------
    def check(self):
        """Report link changes once each; re-attach a vanished TAP that is back.

        Returns:
            True if the port had failed and works again.
        """
        if self._closed:
            return False
        if self.polled.closed:
            return self._reattach()
        try:
            same = self.tap.ifindex == self._ifindex
            state = ("up" if self.tap.is_up else "down") if same else "moved"
        except LinkConfigFailed as exc:
            if exc.errno != errno.ENODEV:
                return False  # not something the link's state explains
            state = "moved"
        if state == "moved" and not self.tap.attached():
            # Deleted, not moved: the reader hits the same wall and reports it once.
            self.link_state = "gone"
            return False
        self._set_state(state)
        return False

    def _set_state(self, state):
        previous, self.link_state = self.link_state, state
        if state == previous:
            return
        if state == "up":
            self.notify("link_up", level="info", previous=previous)
        elif state == "down":
            self.notify("link_down", previous=previous)
        elif state == "moved":
            self.notify(
                "endpoint_moved",
                previous=previous,
                hint="moved to another namespace or renamed: the fd follows the device, "
                "frames flow again once its link is up there",
            )

    def fail(self):
        """Release the dead device; a port that can come back waits for it in :meth:`check`.

        The fd is kept (detached from the hub): re-attaching reuses it.
        """
        if not self.recoverable or self.polled.closed:
            self.close()
            return
        self.link_state = "gone"
        self.polled.into_inner()

    def _reattach(self):
        tap = self.tap
        if not self.recoverable or tap.closed or not tap.exists():
            return False
        try:
            tap.reattach()
            self._configure(tap)
            self.polled.reattach(tap)
        except TapError as exc:
            self._refuse(exc)
            if tap.closed:  # the kernel took the fd away with a device it made
                self.recoverable = False
            return False
        self._refused = None
        self.link_state = "up"
        return True

    def _refuse(self, exc):
        if str(exc) != self._refused:
            self._refused = str(exc)
            self.notify("endpoint_reattach_failed", error=str(exc), error_type=type(exc).__name__)

    # --- lifetime ---------------------------------------------------------
    def close(self):
        """Close the TAP; restore an attached device's link state first."""
        if self._closed:
            return
        self._closed = True
        if self.polled.closed:
            self.tap.close()  # waiting to come back: the fd was detached from the hub
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


def put_back(tap, found):
    """Leave a device attached to as it was found: ``found`` is ``(was up, MTU)``.

    Nothing to do for None (a device this process created).  A device gone
    or moved meanwhile is left alone.
    """
    if found is None:
        return
    was_up, mtu = found
    try:
        if tap.mtu != mtu:
            tap.mtu = mtu
        if not was_up:
            tap.down()
    except TapError:
        pass  # the device is gone or moved: nothing left to restore


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
    port = _open(spec, mtu=mtu, hub=hub, logger=logger, offload=offload)
    rate = spec.options.get("rate")
    if rate is not None:
        port.policer = TokenBucket(rate, spec.options.get("burst"))
    return port


def _open(spec, *, mtu, hub, logger, offload):
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
        # A vnet header is fine (the forwarder checks that every port agrees);
        # TUN mode and packet info are not Ethernet frames.
        tap = Tap.from_fd(spec.options["fd"])
        if tap.mode != "tap" or tap.header_size != tap.vnet_hdr_size:
            tap.close()
            raise EndpointSyntaxError(
                None, f"{spec.text}: a TAP fd is needed (not tun mode, no packet info)"
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
