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
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import gevent

from greentap.app.logs import library_logger
from greentap.app.pumps import admission, mirror_sends, switch, wire
from greentap.app.service import Service
from greentap.core.ethernet import format_mac
from greentap.core.switching import DEFAULT_AGING, DEFAULT_MAX_ENTRIES, LearningSwitch
from greentap.errors import EndpointClosed, GreentapError, UsageError
from greentap.green import relay
from greentap.ports.base import Port

__all__ = ["DEFAULT_KEEP_WARM", "Forwarder"]

#: Default ``keep_warm`` tick (seconds): 1 ms kept ping RTT at 0.05 ms here,
#: 2 ms at 0.07 ms, 5 ms at 0.11 ms; without it 0.17 ms.
DEFAULT_KEEP_WARM = 0.001
#: Seconds after the last frame during which the hub is kept warm.
KEEP_WARM_LINGER = 5.0
_KEEP_WARM_TICKS = 100  # ticks between two looks at the counters
_IDLE_CHECK = 0.05  # seconds between looks at the counters while idle


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
        UsageError: fewer than two ports, or ports with different header sizes
            (a ValueError).
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
        ports = list(ports)
        data = [p for p in ports if p.readable]
        # Indices 0..len(data)-1 are the switch's port numbers.
        self.mirrors = [p for p in ports if not p.readable]
        if len(data) < 2:
            raise UsageError("a forwarder needs at least two ports that carry traffic")
        headers = {p.header_size for p in data}
        if len(headers) != 1:
            sizes = ", ".join(f"{p.name}: {p.header_size}" for p in data)
            raise UsageError(
                f"every endpoint must carry frames with the same header (vnet header) "
                f"size, not {sizes}: open them all with or all without offloads"
            )
        super().__init__(logger=logger or library_logger("greentap.forwarder"), hub=hub)
        self.ports = data + self.mirrors
        self.mode = "wire" if len(data) == 2 else "switch"
        self.switch = (
            LearningSwitch(len(data), aging=aging, max_entries=max_entries)
            if self.mode == "switch"
            else None
        )
        self._header = headers.pop()
        self.failed: dict[int, str] = {}  # port index -> error text
        self.monitor_interval = monitor_interval
        self.keep_warm = keep_warm
        for port in self.ports:
            port.notify = functools.partial(self._port_event, port)
        self._pumps: list[gevent.Greenlet] = []

    # --- lifecycle --------------------------------------------------------
    def _start(self) -> None:
        for index, port in enumerate(self.ports):
            if port.readable:
                self._spawn_pump(index)
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
        if self.mode == "switch":
            return "python", f"a switch of {len(self.ports) - len(self.mirrors)} ports"
        if self.mirrors:
            return "python", "a mirror gets every frame"
        if any(p.policer is not None for p in self.ports):
            return "python", "a rate limit polices the frames"
        if not all(p.sink is not None for p in self.ports):
            return "python", "an endpoint is not a TAP or a packet: interface with offloads"
        return relay.LOOP, relay.LOOP_REASON

    def _spawn_pump(self, index: int) -> None:
        g = gevent.spawn(self._pump, index)
        g.name = f"greentap-{self.ports[index].name}"
        self._pumps = [other for other in self._pumps if not other.dead]
        self._pumps.append(g)

    def _stop(self, timeout: float) -> None:
        for port in self.ports:
            port.close()  # wakes each reader with EndpointClosed
        gevent.joinall(self._pumps, timeout=timeout)
        gevent.killall([g for g in self._pumps if not g.dead], block=True, timeout=timeout)

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
        self.log.info("reopened", failed=[self.ports[i].name for i in sorted(self.failed)])

    def check_ports(self) -> None:
        """Look at every port's state once (see ``monitor_interval``)."""
        for index, port in enumerate(self.ports):
            if self._stopped:
                return
            if port.check():
                self._port_recovered(index)

    def _monitor(self) -> None:
        while not self.wait(self.monitor_interval):
            self.check_ports()

    def _keep_warm(self) -> None:
        # Measured here (2 vCPUs): a process woken from idle takes ~0.1 ms
        # longer to run than one woken within the last millisecond, for C
        # and Python alike.  So while traffic flows, tick every `keep_warm`
        # seconds; once it stops, look only every IDLE_CHECK seconds.
        counters = [p.counters for p in self.ports if p.readable]
        interval, sleep, clock = self.keep_warm, gevent.sleep, self._hub.loop.now
        seen, last_active = -1, -KEEP_WARM_LINGER
        while not self._stopped:
            total = sum(c.rx_packets for c in counters)
            now = clock()
            if total != seen:
                seen, last_active = total, now
            if now - last_active < KEEP_WARM_LINGER:
                for _ in range(_KEEP_WARM_TICKS):
                    sleep(interval)
            else:
                sleep(_IDLE_CHECK)

    # --- introspection ----------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Return counters for every port and the switch as plain data."""
        switch = self.switch
        return {
            "mode": self.mode,
            "ports": [
                {
                    **p.describe(),
                    **p.counters.as_dict(),
                    "drops": dict(p.drops),
                    "failed": self.failed.get(i),
                }
                for i, p in enumerate(self.ports)
            ],
            "switch": None
            if switch is None
            else {
                "runts": switch.runts,
                "filtered": switch.filtered,
                "flooded": switch.flooded,
                "mac_table": switch.table.stats(),
            },
        }

    def mac_table(self) -> list[tuple[str, str, float]]:
        """Return the learned addresses as ``[(mac, port name, age seconds)]``."""
        if self.switch is None:
            return []
        now = self._hub.loop.now()
        return [
            (format_mac(mac), self.ports[port].name, age)
            for mac, port, age in self.switch.table.entries(now)
        ]

    # --- the per-port loops -----------------------------------------------
    def _pump(self, index: int) -> None:
        port = self.ports[index]
        admit = admission(port, self._hub.loop.now)
        mirrors = mirror_sends(self.mirrors, self._header)
        try:
            if self.switch is None:
                out = 1 - index
                wire(port, self.ports[out], lambda exc: self._send_failed(out, exc), admit, mirrors)
            else:
                switch(
                    index, self.ports, self.switch, self._send_failed, admit, mirrors,
                    self._header, self._hub.loop.now,
                )  # fmt: skip
        except EndpointClosed:
            return  # stop() or a failure closed the port
        except GreentapError as exc:
            self._port_failed(index, exc)

    def _send_failed(self, index: int, exc: GreentapError) -> None:
        # A port counts the errors it sees; a frame for a port that is already
        # closed (it failed) is counted here.
        if isinstance(exc, EndpointClosed):
            self.ports[index].counters.tx_errors += 1
        else:
            self._port_failed(index, exc)

    def _port_failed(self, index: int, exc: GreentapError) -> None:
        if index in self.failed or self._stopped:
            return
        port = self.ports[index]
        self.failed[index] = str(exc)
        self.log.warning(
            "endpoint_failed",
            endpoint=port.name,
            kind=port.kind,
            error=str(exc),
            error_type=type(exc).__name__,
            waiting_for_it=port.recoverable,
        )
        if self.switch is not None:
            self.switch.remove_port(index)
        # Releasing wakes the port's own reader (if this came from a send).
        gevent.spawn(port.fail)

    def _port_recovered(self, index: int) -> None:
        port = self.ports[index]
        if self._stopped or self.failed.pop(index, None) is None:
            return
        if self.switch is not None:
            self.switch.add_port(index)
        if port.readable:
            self._spawn_pump(index)
        self.log.info("endpoint_recovered", **port.describe())

    def _port_event(self, port: Port, event: str, level: str = "warning", **fields: Any) -> None:
        getattr(self.log, level)(event, endpoint=port.name, kind=port.kind, **fields)
