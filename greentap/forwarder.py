"""The forwarding engine: one greenlet per port, reading and forwarding frames.

Write-only ports (a pcap capture) are mirrors: every frame read from any
port is also given to each of them; they take no part in switching.

With two ports the forwarder is a wire: every frame read on one is written
to the other.  With three or more it is a MAC learning switch
(:mod:`greentap.switching`).  Writes never block: a destination that cannot
take a frame drops it and counts it on that port.

A port that fails (its interface deleted, an I/O error) is logged once,
closed and taken out of the switch; the other ports keep forwarding.  The
error is counted once in its ``tx_errors`` (or as a read failure); in a
wire, which has nowhere else to send, every later frame for it is counted
there too.  A TAP that vanished is put back when a device of its name exists
again (see :class:`~greentap.ports.TapPort`).  A monitor greenlet checks
every port about once a second, and ports report state changes (a link
down or up, a peer unreachable, a full disk) through their ``notify``,
which logs each change once.  The forwarder never stops by itself: whoever
runs it decides (``stop()``, a signal).
"""

import functools
import signal

import gevent
import gevent.event
import structlog

from greentap.errors import FrameRejected, TapClosed, TapError
from greentap.ethernet import format_mac
from greentap.kernel_constants import ETH_HLEN
from greentap.ports import FramePort
from greentap.switching import DEFAULT_AGING, DEFAULT_MAX_ENTRIES, LearningSwitch

#: Default ``keep_warm`` tick (seconds): 1 ms kept ping RTT at 0.05 ms here,
#: 2 ms at 0.07 ms, 5 ms at 0.11 ms; without it 0.17 ms.
DEFAULT_KEEP_WARM = 0.001
#: Seconds after the last frame during which the hub is kept warm.
KEEP_WARM_LINGER = 5.0
_KEEP_WARM_TICKS = 100  # ticks between two looks at the counters
_IDLE_CHECK = 0.05  # seconds between looks at the counters while idle


class Forwarder:
    """Forward Ethernet frames between ports on the gevent hub.

    Args:
        ports: two or more :class:`~greentap.ports.Port` objects; the
            forwarder owns them and closes them when it stops.
        aging: seconds before a learned MAC address is forgotten (switch mode).
        max_entries: bound of the MAC table (switch mode).
        logger: a structlog logger (default: ``structlog.get_logger("greentap")``).
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
        ValueError: fewer than two ports, or ports with different header sizes.
    """

    def __init__(
        self,
        ports,
        *,
        aging=DEFAULT_AGING,
        max_entries=DEFAULT_MAX_ENTRIES,
        logger=None,
        hub=None,
        monitor_interval=1.0,
        keep_warm=DEFAULT_KEEP_WARM,
    ):
        ports = list(ports)
        data = [p for p in ports if p.readable]
        # Write-only ports (pcap) mirror every frame read; they take no part
        # in switching.  Indices 0..len(data)-1 are the switch's port numbers.
        self.mirrors = [p for p in ports if not p.readable]
        if len(data) < 2:
            raise ValueError("a forwarder needs at least two ports that carry traffic")
        headers = {p.header_size for p in data}
        if len(headers) != 1:
            raise ValueError("all ports must use the same frame header (vnet header) size")
        self.ports = data + self.mirrors
        self.mode = "wire" if len(data) == 2 else "switch"
        self.switch = (
            LearningSwitch(len(data), aging=aging, max_entries=max_entries)
            if self.mode == "switch"
            else None
        )
        self._header = headers.pop()
        self._hub = hub if hub is not None else gevent.get_hub()
        self.log = logger if logger is not None else structlog.get_logger("greentap")
        self.failed = {}  # port index -> error text
        self.monitor_interval = monitor_interval
        self.keep_warm = keep_warm
        for port in self.ports:
            port.notify = functools.partial(self._port_event, port)
        self._greenlets = []
        self._helpers = []
        self._signals = []
        self._servers = []
        self._stop_requested = gevent.event.Event()
        self._started = self._stopped = False

    # --- lifecycle --------------------------------------------------------
    def start(self):
        """Start one reading greenlet per readable port.  Idempotent."""
        if self._started:
            return
        self._started = True
        for index, port in enumerate(self.ports):
            if port.readable:
                self._spawn_pump(index)
        if self.monitor_interval:
            self._helpers.append(gevent.spawn(self._monitor))
        if self.keep_warm:
            self._helpers.append(gevent.spawn(self._keep_warm))
        self.log.info(
            "forwarding",
            mode=self.mode,
            endpoints=[p.name for p in self.ports],
        )

    def _spawn_pump(self, index):
        g = gevent.spawn(self._pump, index)
        g.name = f"greentap-{self.ports[index].name}"
        self._greenlets = [other for other in self._greenlets if not other.dead]
        self._greenlets.append(g)

    def request_stop(self, *_):
        """Ask :meth:`serve_forever` to stop; safe to call from a signal handler."""
        self._stop_requested.set()

    def wait(self, timeout=None):
        """Block this greenlet until a stop is requested or ``timeout`` passes.

        Returns:
            True if a stop was requested.
        """
        return self._stop_requested.wait(timeout)

    def stop(self, timeout=1.0):
        """Stop forwarding and close every port.  Idempotent.

        Args:
            timeout: seconds to wait for the port greenlets to finish before
                killing them.
        """
        self._stop_requested.set()
        if self._stopped:
            return
        self._stopped = True
        for cancel in self._signals:
            cancel.cancel()
        for server in self._servers:
            server.stop(timeout=timeout)
        for port in self.ports:
            port.close()  # wakes each reader with TapClosed
        everyone = self._greenlets + self._helpers
        gevent.joinall(everyone, timeout=timeout)
        gevent.killall([g for g in everyone if not g.dead], block=True, timeout=timeout)

    def serve_forever(self):
        """Start, then block this greenlet until a stop is requested; then stop."""
        self.start()
        try:
            self._stop_requested.wait()
        finally:
            self.stop()

    def handle_signals(self, signals=(signal.SIGINT, signal.SIGTERM), reopen=(signal.SIGHUP,)):
        """Handle signals on the hub (main thread only).

        Args:
            signals: request a graceful stop.
            reopen: run :meth:`reopen` (what daemons do on SIGHUP); forwarding
                goes on.
        """
        for signum in signals:
            self._signals.append(gevent.signal_handler(signum, self._on_signal, signum))
        for signum in reopen:
            self._signals.append(gevent.signal_handler(signum, self._on_reopen_signal, signum))

    def _on_signal(self, signum):
        self.log.info("signal_received", signal=signal.Signals(signum).name)
        self.request_stop()

    def _on_reopen_signal(self, signum):
        self.log.info("signal_received", signal=signal.Signals(signum).name, action="reopen")
        # Not in the signal callback itself: reopening may log and wait.
        self._helpers = [g for g in self._helpers if not g.dead]
        self._helpers.append(gevent.spawn(self.reopen))

    def reopen(self):
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

    def check_ports(self):
        """Look at every port's state once (see ``monitor_interval``)."""
        for index, port in enumerate(self.ports):
            if self._stopped:
                return
            if port.check():
                self._port_recovered(index)

    def _monitor(self):
        while not self._stop_requested.wait(self.monitor_interval):
            self.check_ports()

    def _keep_warm(self):
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

    def every(self, interval, callback):
        """Call ``callback(self)`` every ``interval`` seconds until stopped."""

        def loop():
            while not self._stop_requested.wait(interval):
                callback(self)

        self._helpers.append(gevent.spawn(loop))

    def serve_wsgi(self, app, address):
        """Serve a WSGI app (e.g. metrics) on this hub until the forwarder stops.

        Args:
            app: the WSGI application.
            address: ``(host, port)`` to listen on; port 0 picks one.

        Returns:
            The ``(host, port)`` actually bound.

        Raises:
            OSError: the address cannot be bound.
        """
        from gevent.pywsgi import WSGIServer

        server = WSGIServer(address, app, log=None, error_log=None)
        server.start()
        self._servers.append(server)
        return server.address[:2]

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc_info):
        self.stop()

    # --- introspection ----------------------------------------------------
    def stats(self):
        """Return counters for every port and the switch as plain data."""
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
            if self.switch is None
            else {
                "runts": self.switch.runts,
                "filtered": self.switch.filtered,
                "flooded": self.switch.flooded,
                "mac_table": self.switch.table.stats(),
            },
        }

    def mac_table(self):
        """Return the learned addresses as ``[(mac, port name, age seconds)]``."""
        if self.switch is None:
            return []
        now = self._hub.loop.now()
        return [
            (format_mac(mac), self.ports[port].name, age)
            for mac, port, age in self.switch.table.entries(now)
        ]

    # --- the per-port loops -----------------------------------------------
    def _pump(self, index):
        try:
            if self.switch is None:
                self._wire(index)
            else:
                self._switch(index)
        except TapClosed:
            return  # stop() or a failure closed the port
        except TapError as exc:
            self._port_failed(index, exc)

    def _wire(self, index):
        out = 1 - index
        src, dst = self.ports[index], self.ports[out]
        mirrors = self._mirror_sends()
        admit = self._admission(src)
        if admit is None and isinstance(src, FramePort) and isinstance(dst, FramePort):
            # Both are fd devices: the tight relay (two syscalls per frame).
            src.polled.relay_to(dst.polled, lambda exc: self._send_failed(out, exc), mirrors)
            return
        recv_into, buf, view = self._reader(src)
        send = dst.send
        while True:
            n = recv_into(buf)
            if admit is not None and not admit():
                continue
            frame = view[:n]
            for mirror in mirrors:
                mirror(frame)
            try:
                send(frame)
            except FrameRejected:
                pass  # counted by the port
            except TapError as exc:
                self._send_failed(out, exc)

    def _switch(self, index):
        recv_into, buf, view = self._reader(self.ports[index])
        decide = self.switch.decide
        now = self._hub.loop.now
        sends = [p.send for p in self.ports]
        header = self._header
        counters = self.ports[index].counters
        mirrors = self._mirror_sends()
        admit = self._admission(self.ports[index])
        while True:
            n = recv_into(buf)
            if admit is not None and not admit():
                continue
            frame = view[:n]
            for mirror in mirrors:
                mirror(frame)
            egress = decide(index, view[header:n], now())
            if not egress and n - header < ETH_HLEN:
                counters.rx_errors += 1
            for out in egress:
                try:
                    sends[out](frame)
                except FrameRejected:
                    pass
                except TapError as exc:
                    self._send_failed(out, exc)

    @staticmethod
    def _reader(port):
        """The port's recv_into and a reused buffer (with a view) sized for it."""
        buf = bytearray(port.max_frame_size)
        return port.recv_into, buf, memoryview(buf)

    def _admission(self, port):
        """None, or a function saying whether the frame just read passes the port's policer."""
        if port.policer is None:
            return None
        take, now, drops = port.policer.take, self._hub.loop.now, port.drops

        def admit():
            if take(now()):
                return True
            drops["rx_rate_limited"] += 1
            return False

        return admit

    def _mirror_sends(self):
        """The mirrors' send functions, given frames without the vnet header."""
        header = self._header
        if not header:
            return [m.send for m in self.mirrors]
        return [lambda frame, send=m.send: send(memoryview(frame)[header:]) for m in self.mirrors]

    def _send_failed(self, index, exc):
        # A port counts the errors it sees; a frame for a port that is already
        # closed (it failed) is counted here.
        if isinstance(exc, TapClosed):
            self.ports[index].counters.tx_errors += 1
        else:
            self._port_failed(index, exc)

    def _port_failed(self, index, exc):
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

    def _port_recovered(self, index):
        port = self.ports[index]
        if self._stopped or self.failed.pop(index, None) is None:
            return
        if self.switch is not None:
            self.switch.add_port(index)
        if port.readable:
            self._spawn_pump(index)
        self.log.info("endpoint_recovered", **port.describe())

    def _port_event(self, port, event, level="warning", **fields):
        getattr(self.log, level)(event, endpoint=port.name, kind=port.kind, **fields)
