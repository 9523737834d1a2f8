"""TAP ports: a TAP interface opened by name, or an inherited ``fd:N``."""

from __future__ import annotations

import contextlib
import errno
from typing import Any

from greentap.core.endpoints import EndpointSpec
from greentap.device.link import Link, LinkState
from greentap.device.netns import Netns
from greentap.errors import GreentapError, LinkConfigFailed, NotATapDevice
from greentap.green.polled import Tap
from greentap.ports.base import FramePort
from greentap.ports.registry import OpenOptions, register

__all__ = ["TapPort", "put_back"]


class TapPort(FramePort):
    """A TAP interface as a forwarder port.

    Attaches to an existing device (left as it was found when the port
    closes: link state and MTU restored, device kept) or creates one (brought
    up, and gone when the port closes).  An existing device is attached as
    it was made (single- or multi-queue).

    While it runs, :meth:`check` watches the link: taken down or up again,
    moved to another namespace or renamed (the fd follows the device, so
    frames still flow once it is up there) are each reported once.  A TAP
    opened by a plain name that vanishes is re-attached when a device of that
    name exists again (a persistent TAP re-created by its owner), through
    the fd it already holds (:meth:`TapDevice.reattach
    <greentap.device.tun.TapDevice.reattach>`): no new privilege is needed,
    so this works after ``--user`` when the device's owner is that user.  The
    port never creates the device itself: one made here would not be the one
    the operator's tools configure.

    Args:
        name: interface name or template.
        netns: namespace to open it in (see :class:`~greentap.device.tun.TapDevice`).
        mtu: MTU to set, or None to leave it.
        hub: the gevent hub.
        tap: an already-open :class:`~greentap.Tap` to use instead of
            opening ``name`` (``name`` and ``netns`` are then ignored, and the
            port does not re-attach).
        offload: open with a virtio-net header and accept checksum and
            segmentation offloads: frames keep their header and may be
            64 KiB; only ports that all do the same can be forwarded between.

    Attributes:
        link_state: ``"up"``, ``"down"``, ``"moved"`` or ``"gone"`` (vanished,
            waiting to come back), as last seen.

    Raises:
        GreentapError: as :class:`~greentap.device.tun.TapDevice` and its link settings.
    """

    tap: Tap

    def __init__(
        self,
        name: str | None = None,
        *,
        netns: Netns = None,
        mtu: int | None = None,
        hub: Any = None,
        tap: Tap | None = None,
        offload: bool = False,
    ) -> None:
        if tap is None:
            if name is None:
                raise TypeError("TapPort needs a name or a tap")
            tap = Tap(name, netns=netns, vnet_hdr=offload)
            self.recoverable = "%" not in name
        self._mtu, self._offload = mtu, offload
        self._found: LinkState | None = None
        self._closed = False
        self._refused: str | None = None  # why the last re-attach failed (reported once)
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

    @property
    def link(self) -> Link:
        """The device's :class:`~greentap.device.link.Link`."""
        assert self.tap.link is not None
        return self.tap.link

    def _configure(self, tap: Tap) -> None:
        """Take ``tap`` over: remember how it was found, apply MTU and offloads, bring it up."""
        self.tap = tap
        self._found = None if tap.created else self.link.snapshot()
        self._ifindex = self.link.ifindex
        if self._mtu is not None:
            self.link.mtu = self._mtu
        if self._offload:
            tap.enable_offloads()
        self.link.up()

    def _put_back(self) -> None:
        put_back(self.tap.link, self._found)

    # --- watching the link ------------------------------------------------
    def check(self) -> bool:
        """Report link changes once each; re-attach a vanished TAP that is back.

        Returns:
            True if the port had failed and works again.
        """
        if self._closed:
            return False
        if self.polled.closed:
            return self._reattach()
        try:
            same = self.link.ifindex == self._ifindex
            state = ("up" if self.link.is_up else "down") if same else "moved"
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

    def _set_state(self, state: str) -> None:
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

    def fail(self) -> None:
        """Release the dead device; a port that can come back waits for it in :meth:`check`.

        The fd is kept (detached from the hub): re-attaching reuses it.
        """
        if not self.recoverable or self.polled.closed:
            self.close()
            return
        self.link_state = "gone"
        self.polled.into_inner()

    def _reattach(self) -> bool:
        tap = self.tap
        if not self.recoverable or tap.closed or not tap.exists():
            return False
        try:
            tap.reattach()
            self._configure(tap)
            self.polled.reattach(tap)
        except GreentapError as exc:
            self._refuse(exc)
            if tap.closed:  # the kernel took the fd away with a device it made
                self.recoverable = False
            return False
        self._refused = None
        self.link_state = "up"
        return True

    def _refuse(self, exc: GreentapError) -> None:
        if str(exc) != self._refused:
            self._refused = str(exc)
            self.notify("endpoint_reattach_failed", error=str(exc), error_type=type(exc).__name__)

    # --- lifetime ---------------------------------------------------------
    def close(self) -> None:
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

    def describe(self) -> dict[str, Any]:
        """Return a dict describing the port for logs."""
        return {
            **super().describe(),
            "created": self.created,
            "netns": self.tap.netns,
            "offload": self.tap.offload,
        }


def put_back(link: Link | None, found: LinkState | None) -> None:
    """Leave a device attached to as it was found (see :meth:`Link.restore`).

    Nothing to do for None (a device this process created).  A device gone
    or moved meanwhile is left alone.
    """
    if link is None or found is None:
        return
    with contextlib.suppress(GreentapError):  # gone or moved: nothing left to restore
        link.restore(found)


@register("tap")
def _open_tap(spec: EndpointSpec, options: OpenOptions) -> TapPort:
    return TapPort(
        spec.name,
        netns=spec.options.get("netns"),
        mtu=options.mtu,
        hub=options.hub,
        offload=options.offload,
    )


@register("fd")
def _open_fd(spec: EndpointSpec, options: OpenOptions) -> FramePort:
    # Already attached by whoever opened it; no link settings: the link is
    # the helper's to configure, and this process may lack the privilege.  A
    # vnet header is fine (the forwarder checks that every port agrees); TUN
    # mode and packet info are not Ethernet frames.
    try:
        tap = Tap.from_fd(spec.options["fd"])
        assert isinstance(tap, Tap)
    except NotATapDevice as exc:
        raise NotATapDevice(exc.reason, endpoint=spec.text, errno=exc.errno) from exc
    if tap.mode != "tap" or tap.layout.packet_info:
        tap.close()
        raise NotATapDevice("a TAP fd is needed (not tun mode, no packet info)", endpoint=spec.text)
    return FramePort(tap.polled(options.hub))
