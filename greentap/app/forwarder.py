"""The forwarding engine: one greenlet per port, reading and forwarding frames.

Write-only ports (a pcap capture) are mirrors: every frame read from any
port is also given to each of them; they take no part in switching.

With two ports the forwarder is a wire: every frame read on one is written
to the other.  With three or more it is a MAC learning switch
(:mod:`greentap.core.switching`).  Writes never block: a destination that
cannot take a frame drops it and counts it on that port.

A port that fails (its interface deleted, an I/O error) is logged once,
closed and taken out of the switch; the other ports keep forwarding.  The
error is counted once in its ``tx_errors`` (or as a read failure); in a
wire, which has nowhere else to send, every later frame for it is counted
there too.  A TAP that vanished is put back when a device of its name exists
again (see :class:`~greentap.ports.tap.TapPort`).  A monitor greenlet checks
every port about once a second, and ports report state changes (a link
down or up, a peer unreachable, a full disk) through their ``notify``,
which logs each change once.  The forwarder never stops by itself: whoever
runs it decides (``stop()``, a signal).

Ports may join and leave while it runs (:meth:`Forwarder.add_port`,
:meth:`Forwarder.remove_port`): the connections a listening endpoint
accepts join this way and leave when they disconnect.  Two ports make a
wire, any other number a switch; when a join or a leave changes which, the
other ports' pumps are rewired: each is interrupted only where it waits for
a frame, never with one in hand, so no frame is lost on them.  A port that
left is forgotten: its MAC addresses at once, and its line in
:meth:`~Forwarder.stats` (and so its metrics series); a listener's
connection hands its counters to the listener, whose totals keep them.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Iterable
from typing import Any

import gevent

from greentap.app.logs import library_logger
from greentap.app.pumps import admission, mirror_sends, switch, wire
from greentap.app.service import Service
from greentap.app.topology import Topology
from greentap.core.switching import DEFAULT_AGING, DEFAULT_MAX_ENTRIES
from greentap.errors import EndpointClosed, EndpointUnavailable, GreentapError
from greentap.ports.base import Port

__all__ = ["DEFAULT_KEEP_WARM", "Forwarder"]

#: Default ``keep_warm`` tick (seconds): 1 ms kept ping RTT at 0.05 ms here,
#: 2 ms at 0.07 ms, 5 ms at 0.11 ms; without it 0.17 ms.
DEFAULT_KEEP_WARM = 0.001
#: Seconds after the last frame during which the hub is kept warm.
KEEP_WARM_LINGER = 5.0
_KEEP_WARM_TICKS = 100  # ticks between two looks at the counters
_IDLE_CHECK = 0.05  # seconds between looks at the counters while idle
_ACCEPT_PAUSE = 0.1  # seconds a listener rests after accept failed for want of resources


class _Rewire(Exception):
    """Thrown into a pump waiting for a frame: the ports changed, start over."""


class Forwarder(Service):
    """Forward Ethernet frames between ports on the gevent hub.

    Args:
        ports: two or more :class:`~greentap.ports.base.Port` objects that
            carry traffic, plus any write-only mirrors; the forwarder owns
            them and closes them when it stops.
        aging: seconds before a learned MAC address is forgotten (switch mode).
        max_entries: bound of the MAC table (switch mode).
        logger: a structlog-style logger (default: the ``greentap`` logger
            of the standard library, silent unless the program configures it).
        hub: the gevent hub (default: the current one).
        monitor_interval: seconds between two looks at every port's state
            (link up/down, moved, vanished and back); 0 turns it off.
        keep_warm: while frames flow (and for ``KEEP_WARM_LINGER`` seconds
            after), wake the hub every this many seconds, so that the CPU
            does not sink into deep idle between frames: a frame arriving
            then is forwarded in about a third of the time (ping RTT 0.05
            instead of 0.17 ms here).  Costs a little CPU only while traffic
            flows; None or 0 turns it off.

    Raises:
        UsageError: fewer than two ports and no listening one, or ports with
            different header sizes (a ValueError).
    """

    def __init__(
        self,
        ports: Iterable[Port],
        *,
        aging: float = DEFAULT_AGING,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        logger: Any = None,
        hub: Any = None,
        monitor_interval: float = 1.0,
        keep_warm: float | None = DEFAULT_KEEP_WARM,
    ) -> None:
        self.topology = Topology(ports, aging=aging, max_entries=max_entries)
        super().__init__(logger=logger or library_logger("greentap.forwarder"), hub=hub)
        self.mirrors = self.topology.mirrors
        self._header = self.topology.header
        self.failed: dict[int, str] = {}  # port number -> error text
        self.monitor_interval = monitor_interval
        self.keep_warm = keep_warm
        for port in self.topology.everything():
            port.notify = functools.partial(self._port_event, port)
        self._pumps: dict[int, gevent.Greenlet] = {}
        self._running: weakref.WeakSet[gevent.Greenlet] = weakref.WeakSet()
        self._mode = self.topology.shape

    @property
    def ports(self) -> list[Port]:
        """Every port now: those carrying traffic, then listeners, then mirrors."""
        return self.topology.everything()

    @property
    def mode(self) -> str:
        """``"wire"`` (two ports carry traffic) or ``"switch"`` (any other number)."""
        return self.topology.mode

    @property
    def switch(self) -> Any:
        """The :class:`~greentap.core.switching.LearningSwitch` in switch mode, else None."""
        return self.topology.switch if self.mode == "switch" else None

    # --- lifecycle --------------------------------------------------------
    def _start(self) -> None:
        self._mode = self.topology.shape  # ports may have been added before the start
        for index, _ in self.topology.data():
            self._spawn_pump(index)
        for listener in self.topology.listeners:
            self.spawn(accept_loop, self, listener)
        if self.monitor_interval:
            self.spawn(self._monitor)
        if self.keep_warm:
            self.spawn(self._keep_warm)
        loop, why = self.relay_loop()
        self.log.info(
            "forwarding",
            mode=self.mode,
            endpoints=[p.name for p in self.ports],
            loop=loop,
            **({"loop_reason": why} if why else {}),
        )

    def relay_loop(self) -> tuple[str, str | None]:
        """Which loop moves the frames: ``("c", None)`` or ``("python", why)``."""
        return self.topology.relay_loop()

    def _spawn_pump(self, index: int) -> None:
        g = gevent.spawn(self._pump, index)
        g.name = f"greentap-{self.topology.slots[index].name}"  # type: ignore[union-attr]
        self._pumps[index] = g

    def _stop(self, timeout: float) -> None:
        for port in self.ports:
            port.close()  # wakes each reader with EndpointClosed
        pumps = list(self._pumps.values())
        gevent.joinall(pumps, timeout=timeout)
        gevent.killall([g for g in pumps if not g.dead], block=True, timeout=timeout)

    # --- ports joining and leaving --------------------------------------------
    def add_port(self, port: Port) -> int | None:
        """Add a port while the forwarder runs (or before it starts).

        A wire of two becomes a switch when a third joins, losing no frame.
        A listener starts accepting; a mirror gets every frame from the
        next one on.

        Returns:
            The port's number; None for a listener or a mirror.

        Raises:
            UsageError: its header (vnet header) size differs from the others'.
        """
        if not port.readable:
            _add_unnumbered(self, port)
            return None
        index = self.topology.add(port)
        port.notify = functools.partial(self._port_event, port)
        self.log.info("endpoint_joined", ports=self.topology.count, **port.describe())
        if self._started and not self._stopped:
            self._spawn_pump(index)
            self._topology_changed()
        return index

    def remove_port(self, port: Port, reason: str = "removed") -> bool:
        """Take a port out and close it; its MAC addresses are forgotten at once.

        A switch of three becomes a wire when one leaves.  A listener's
        connections leave with it.  Harmless for a port that already left.

        Returns:
            True if the port was here.
        """
        index = self.topology.number(port)
        if index is None:
            return _remove_unnumbered(self, port, reason)
        self.topology.remove(index)
        self.failed.pop(index, None)
        pump = self._pumps.pop(index, None)
        port.close()  # its pump, if waiting, ends with EndpointClosed
        # Break the port -> notify -> port cycle: a connection's buffers are
        # freed when it leaves, not at the next collection.
        port.__dict__.pop("notify", None)
        if pump is not None and pump is not gevent.getcurrent() and not pump.dead:
            pump.kill(block=False)
        self.log.info("endpoint_left", endpoint=port.name, kind=port.kind, reason=reason,
                      ports=self.topology.count, **port.counters.as_dict())  # fmt: skip
        if not self._stopped:
            self._topology_changed()
        return True

    def _topology_changed(self) -> None:
        shape = self.topology.shape  # a wire or a switch, with VLANs or without
        if shape == self._mode:
            return
        self._mode, mode = shape, shape[0]
        loop, why = self.relay_loop()
        why_field = {"loop_reason": why} if why else {}
        self.log.info("mode_changed", mode=mode, vlans=shape[1], loop=loop,
                      ports=self.topology.count, **why_field)  # fmt: skip
        self.rewire()

    def rewire(self) -> None:
        """Make every pump start over with the ports as they are now (see the module)."""
        # Only pumps waiting in their loop: one not started yet reads the ports when it starts.
        current = gevent.getcurrent()
        for g in list(self._running):
            if g is not current and not g.dead:
                g.kill(_Rewire, block=False)

    def reopen(self) -> None:
        """Reopen capture files moved away (log rotation) and look at every port now.

        A vanished TAP that exists again is put back at once rather than at
        the next monitor tick.
        """
        if self._stopped:
            return
        for port in self.ports:
            port.reopen()
        self.check_ports()
        slots = self.topology.slots
        self.log.info("reopened", failed=[slots[i].name for i in sorted(self.failed)])  # type: ignore[union-attr]

    def check_ports(self) -> None:
        """Look at every port's state once (see ``monitor_interval``)."""
        for port in self.ports:
            if self._stopped:
                return
            if port.check():
                index = self.topology.number(port)
                if index is not None:
                    self._port_recovered(index)

    def _monitor(self) -> None:
        while not self.wait(self.monitor_interval):
            self.check_ports()

    def _keep_warm(self) -> None:
        keep_warm(self, self.keep_warm)  # type: ignore[arg-type]  # set: this runs only then

    # --- introspection ----------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Return counters for every port and the switch as plain data.

        Ports are listed as :attr:`ports` lists them; one that left is not (a
        listener's connection: its counters are in the listener's line).
        """
        return self.topology.stats(self.mode, self.failed)

    def mac_table(self) -> list[tuple[str, str, float]]:
        """Return the learned addresses as ``[(mac, port name, age seconds)]``."""
        return self.topology.mac_table(self._hub.loop.now()) if self.switch is not None else []

    # --- the per-port loops -----------------------------------------------
    def _pump(self, index: int) -> None:
        port = self.topology.slots[index]
        assert port is not None
        self._running.add(gevent.getcurrent())  # from here on a _Rewire is caught
        try:
            while True:
                try:  # mirrors and a rate limit may change while it runs
                    admit = admission(port, self._hub.loop.now)
                    mirrors = mirror_sends(self.mirrors, self._header)
                    self._forward(index, port, admit, mirrors)
                except _Rewire:
                    continue  # thrown only where the pump waits: no frame in hand
        except GreentapError as exc:  # EndpointClosed too
            if getattr(port, "transient", False):
                if not self._stopped:  # a connection leaves, whatever ended it
                    self.remove_port(port, reason=exc.reason)
            elif not isinstance(exc, EndpointClosed):  # closed: stop() or a failure
                self._port_failed(index, exc)
        except Exception as exc:
            if not getattr(port, "transient", False):
                raise
            # Our bug, not the peer's: it is logged whole, and the port leaves
            # rather than holding a number and a place under max= for ever.
            self.log.error("endpoint_crashed", endpoint=port.name, exc_info=True)
            self.remove_port(port, reason=f"internal error: {type(exc).__name__}")
        finally:
            self._running.discard(gevent.getcurrent())

    def _forward(self, index: int, port: Port, admit: Any, mirrors: Any) -> None:
        topology = self.topology
        if topology.mode == "wire":
            out = topology.peer(index)
            dst = topology.slots[out]
            assert dst is not None  # peer() names a port that is here
            wire(port, dst, lambda exc: self._send_failed(out, exc), admit, mirrors)
        else:
            switch(
                index, port, topology.sends, topology.switch, self._send_failed, admit,
                mirrors, self._header, self._hub.loop.now,
            )  # fmt: skip

    def _send_failed(self, index: int, exc: GreentapError) -> None:
        # A port counts the errors it sees; a frame for a port that is already
        # closed (it failed) is counted here.
        port = self.topology.slots[index] if index < len(self.topology.slots) else None
        if port is None:
            return  # it left meanwhile
        if isinstance(exc, EndpointClosed):
            port.counters.tx_errors += 1
        else:
            self._port_failed(index, exc)

    def _port_failed(self, index: int, exc: GreentapError) -> None:
        port = self.topology.slots[index]
        if index in self.failed or self._stopped or port is None:
            return
        if getattr(port, "transient", False):
            self.remove_port(port, reason=exc.reason)
            return
        self.failed[index] = str(exc)
        self.log.warning(
            "endpoint_failed",
            endpoint=port.name,
            kind=port.kind,
            error=str(exc),
            error_type=type(exc).__name__,
            waiting_for_it=port.recoverable,
        )
        self.topology.switch.remove_port(index)
        # Releasing wakes the port's own reader (if this came from a send).
        gevent.spawn(port.fail)

    def _port_recovered(self, index: int) -> None:
        port = self.topology.slots[index]
        if self._stopped or port is None or self.failed.pop(index, None) is None:
            return
        self.topology.switch.add_port(index)
        self._spawn_pump(index)
        self.log.info("endpoint_recovered", **port.describe())

    def _port_event(self, port: Port, event: str, level: str = "warning", **fields: Any) -> None:
        getattr(self.log, level)(event, endpoint=port.name, kind=port.kind, **fields)


def _add_unnumbered(forwarder: Forwarder, port: Port) -> None:
    """A listener starts accepting, a mirror gets every frame from the next one on."""
    forwarder.topology.add_unnumbered(port)
    port.notify = functools.partial(forwarder._port_event, port)
    forwarder.log.info("endpoint_joined", ports=forwarder.topology.count, **port.describe())
    if forwarder._started and not forwarder._stopped:
        if getattr(port, "accepts", False):
            forwarder.spawn(accept_loop, forwarder, port)
        else:
            forwarder.rewire()  # the pumps pick the new mirror up


def _remove_unnumbered(forwarder: Forwarder, port: Port, reason: str) -> bool:
    """A listener (and its connections) or a mirror leaves."""
    if not forwarder.topology.remove_unnumbered(port):
        return False
    port.close()  # a listener's accept loop ends with EndpointClosed
    for _, conn in forwarder.topology.data():
        if getattr(conn, "origin", None) is port:
            forwarder.remove_port(conn, reason="its listener was removed")
    forwarder.log.info("endpoint_left", endpoint=port.name, kind=port.kind, reason=reason,
                       ports=forwarder.topology.count)  # fmt: skip
    if not forwarder._stopped:
        forwarder.rewire()
    return True


def keep_warm(forwarder: Forwarder, interval: float) -> None:
    """Tick the hub every ``interval`` seconds while frames flow (see ``keep_warm``)."""
    # Measured here (2 vCPUs): a process woken from idle takes ~0.1 ms
    # longer to run than one woken within the last millisecond, for C
    # and Python alike.  So while traffic flows, tick every `interval`
    # seconds; once it stops, look only every IDLE_CHECK seconds.
    sleep, clock, data = gevent.sleep, forwarder._hub.loop.now, forwarder.topology.data
    seen, last_active = -1, -KEEP_WARM_LINGER
    while not forwarder._stopped:
        total = sum(p.counters.rx_packets for _, p in data())
        now = clock()
        if total != seen:
            seen, last_active = total, now
        if now - last_active < KEEP_WARM_LINGER:
            for _ in range(_KEEP_WARM_TICKS):
                sleep(interval)
        else:
            sleep(_IDLE_CHECK)


def accept_loop(forwarder: Forwarder, listener: Any) -> None:
    """Add each connection ``listener`` accepts to ``forwarder`` until either closes."""
    while not forwarder._stopped:
        try:
            conn = listener.accept()
        except EndpointClosed:
            return
        except EndpointUnavailable as exc:  # out of fds or memory: rest, try again
            forwarder.log.warning("accept_failed", endpoint=listener.name, error=str(exc))
            if forwarder.wait(_ACCEPT_PAUSE):
                return
            continue
        if forwarder._stopped:
            conn.close()
            return
        forwarder.add_port(conn)
