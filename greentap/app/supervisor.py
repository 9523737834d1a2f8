"""``tap-forward --workers N``: one forwarder per CPU over multi-queue TAPs.

gevent runs one thread, so processes are how a forwarder uses more than one
core.  The supervisor (the process the operator started) opens every TAP
with ``IFF_MULTI_QUEUE``, one queue per worker, configures the links, and
starts N worker processes (:mod:`greentap.app.worker`), each given its own
queue of every TAP as ``fd:N`` endpoints.  The kernel spreads flows over the queues (by flow
hash, and it sends a flow's replies to the queue that flow was last written
on), so each worker sees whole flows.  Workers share nothing but the
devices.

Each worker runs the ordinary forwarder (wire or learning switch) and
reports its counters to the supervisor over a socket every half second and
once more when it stops; the supervisor adds them up for ``--stats`` and
``--metrics``.  A worker that dies is started again on the same queues (the
supervisor holds them, so the queues stay attached meanwhile); one that
fails at start with a usage or permission error stops everything.  SIGTERM
and SIGINT stop every worker, then the supervisor restores the links; SIGHUP
is passed on.  A worker whose supervisor vanished stops by itself (its
report socket reads end of file).

The MAC table is not shared.  Each worker learns from the frames it reads;
an address it has not learned is flooded, which is always correct, only
less economical.  A station that moves to another port is re-learned by
each worker when its frames next reach that worker (or after ``--aging``):
until then that worker may still send to the old port, as a switch without
move notification would.  Shorten ``--aging`` where stations move often.
"""

from __future__ import annotations

import json
import signal
import socket
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

import gevent
import gevent.socket
import gevent.subprocess

from greentap.app.exits import EXIT_BUSY, EXIT_PERMISSION, EXIT_SYSTEM, EXIT_USAGE
from greentap.app.service import Service
from greentap.core.counters import DeviceCounters
from greentap.core.endpoints import EndpointSpec
from greentap.core.vlan import format_vlan_list
from greentap.device.link import LinkState
from greentap.device.tun import TapDevice
from greentap.ports.tap import put_back

__all__ = ["REPORT_MAX", "Supervisor", "combine"]

REPORT_MAX = 1 << 20  # largest report message
#: Worker exit statuses that mean "this will never work": stop, do not restart.
_FATAL = {EXIT_USAGE, EXIT_PERMISSION, EXIT_BUSY, EXIT_SYSTEM}
_GAUGES = {"entries", "max_entries"}  # not summed over time when a worker is replaced


def combine(snapshots: Iterable[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Add up ``Forwarder.stats()`` snapshots of several workers.

    Counters are summed per endpoint (drops per reason too); the MAC-table
    size is the sum of the workers' tables and its bound the sum of theirs.

    Returns:
        One snapshot of the same shape, or None if there is none.
    """
    total = None
    for snap in snapshots:
        if snap is None:
            continue
        if total is None:
            total = json.loads(json.dumps(snap))  # a deep copy of plain data
            continue
        total["ports"] = [_add(a, b) for a, b in zip(total["ports"], snap["ports"], strict=True)]
        if total.get("switch") is not None and snap.get("switch") is not None:
            total["switch"] = _add(total["switch"], snap["switch"])
    return total


def _add(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key, value in b.items():
        mine = out.get(key)
        if isinstance(value, bool) or key == "failed":
            out[key] = mine or value
        elif isinstance(value, (int, float)) and isinstance(mine, (int, float)):
            out[key] = mine + value
        elif isinstance(value, dict):
            out[key] = _add(mine or {}, value)
        elif key not in out:
            out[key] = value
    return out


def _vlan_options(spec: EndpointSpec) -> list[str]:
    """The endpoint's ``vlan=``, ``trunk=`` and ``native=``, for its queues' ``fd:`` endpoints."""
    options = spec.options
    out = [f"vlan={options['vlan']}"] if "vlan" in options else []
    if "trunk" in options:
        out.append(f"trunk={format_vlan_list(options['trunk'])}")
    if "native" in options:
        out.append(f"native={options['native']}")
    return out


def _without_gauges(snap: dict[str, Any]) -> dict[str, Any]:
    """A dead worker's final counters, minus what only describes its present."""
    snap = json.loads(json.dumps(snap))
    table = (snap.get("switch") or {}).get("mac_table") or {}
    for key in _GAUGES & table.keys():
        table[key] = 0
    return snap


class Supervisor(Service):
    """Open multi-queue TAPs, run a forwarder process per queue, keep them running.

    Args:
        specs: the TAP endpoints.
        workers: how many worker processes (and queues per TAP).
        worker_config: what every worker is told besides its queues (log
            format and level, MAC table, keep-warm, ``--user``): see
            :mod:`greentap.app.worker`.
        mtu: the MTU to set on every TAP, or None.
        offload: open the queues with a virtio-net header and offloads.
        logger: a structlog-style logger.
        restart_delay: seconds before restarting a dead worker (doubled,
            up to 30 s, while workers keep dying young).

    Raises:
        GreentapError: a TAP cannot be opened or configured (nothing is left open).
    """

    def __init__(
        self,
        specs: Sequence[EndpointSpec],
        workers: int,
        *,
        worker_config: dict[str, Any] | None = None,
        mtu: int | None = None,
        offload: bool = False,
        logger: Any,
        restart_delay: float = 0.5,
    ) -> None:
        super().__init__(logger=logger)
        self.workers = workers
        self.worker_config = dict(worker_config or {})
        self.restart_delay = restart_delay
        self.queues: list[list[TapDevice]] = []  # per endpoint: queue 0 .. N-1
        self._found: list[LinkState | None] = []  # per endpoint: how a device found was
        self._policers = [(spec.options.get("rate"), spec.options.get("burst")) for spec in specs]
        self._vlans = [_vlan_options(spec) for spec in specs]  # each worker's ports get them
        self._latest: list[dict[str, Any] | None] = [None] * workers  # each worker's last report
        self._retired: dict[str, Any] | None = None  # counters of workers that died, added up
        self._procs: list[Any] = [None] * workers
        self._fatal = 0
        self._slots: list[gevent.Greenlet] = []
        try:
            for spec in specs:
                self._open(spec, mtu, offload)
        except BaseException:
            self._close_queues()
            raise

    def _open(self, spec: EndpointSpec, mtu: int | None, offload: bool) -> None:
        netns = spec.options.get("netns")
        first = TapDevice(spec.name, netns=netns, multi_queue=True, vnet_hdr=offload)
        queues = [first]
        assert first.link is not None
        try:
            found = None if first.created else first.link.snapshot()
        except BaseException:
            first.close()
            raise
        self.queues.append(queues)
        self._found.append(found)
        if mtu is not None:
            first.link.mtu = mtu
        for _ in range(self.workers - 1):
            queues.append(TapDevice(first.name, netns=netns, multi_queue=True, vnet_hdr=offload))
        if offload:
            for queue in queues:
                queue.enable_offloads()
        first.link.up()

    def describe(self) -> list[dict[str, Any]]:
        """One dict per TAP, for logs."""
        return [
            {"endpoint": q[0].name, "kind": "tap", "created": q[0].created, "queues": len(q),
             "netns": q[0].netns, "offload": q[0].offload}
            for q in self.queues
        ]  # fmt: skip

    # --- running ----------------------------------------------------------
    @property
    def exit_status(self) -> int:
        """0, or the exit status of a worker that could never work."""
        return self._fatal

    def _start(self) -> None:
        self._slots = [gevent.spawn(self._run_slot, i) for i in range(self.workers)]
        self.log.info(
            "forwarding",
            mode="wire" if len(self.queues) == 2 else "switch",
            endpoints=[q[0].name for q in self.queues],
            workers=self.workers,
        )

    def reopen(self) -> None:
        """SIGHUP: passed on to every worker."""
        for proc in self._procs:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGHUP)

    def pids(self) -> list[int]:
        """The process IDs of the running workers."""
        return [p.pid for p in self._procs if p is not None and p.poll() is None]

    def _worker_config(self, index: int, report_fd: int) -> dict[str, Any]:
        endpoints = []
        for queues, (rate, burst), vlans in zip(self.queues, self._policers, self._vlans,
                                                strict=True):  # fmt: skip
            options = list(vlans)
            if rate is not None:
                # Each worker polices its share; the kernel spreads flows, not frames.
                options.append(f"rate={rate / self.workers!r}")
                if burst is not None:
                    options.append(f"burst={max(1.0, burst / self.workers)!r}")
            text = f"fd:{queues[index].fileno()}"
            endpoints.append(text + ("?" + "&".join(options) if options else ""))
        return {**self.worker_config, "index": index, "report_fd": report_fd,
                "endpoints": endpoints}  # fmt: skip

    def _spawn(self, index: int) -> tuple[Any, Any]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            fds = [q[index].fileno() for q in self.queues] + [theirs.fileno()]
            config = json.dumps(self._worker_config(index, theirs.fileno()))
            proc = gevent.subprocess.Popen(
                [sys.executable, "-m", "greentap.app.worker", config],
                pass_fds=fds,
                stdin=gevent.subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return proc, gevent.socket.socket(fileno=ours.detach())

    def _run_slot(self, index: int) -> None:
        delay = self.restart_delay
        while not self.wait(0):
            proc, sock = self._spawn(index)
            self._procs[index] = proc
            started = time.monotonic()
            self.log.info("worker_started", worker=index, pid=proc.pid)
            reader = gevent.spawn(self._read_reports, index, sock)
            status = proc.wait()
            reader.join(timeout=2)
            reader.kill()
            sock.close()
            reported = self._latest[index] is not None
            self._retire(index)
            if self.wait(0):
                return
            if status in _FATAL and not reported:
                self.log.error("worker_failed_to_start", worker=index, status=status)
                self._fatal = status
                self.request_stop()
                return
            lived = time.monotonic() - started
            delay = self.restart_delay if lived > 10 else min(delay * 2, 30.0)
            self.log.warning(
                "worker_exited", worker=index, pid=proc.pid, status=_describe_status(status),
                restart_in=delay,
            )  # fmt: skip
            if self.wait(delay):
                return

    def _read_reports(self, index: int, sock: Any) -> None:
        while True:
            try:
                data = sock.recv(REPORT_MAX)
            except OSError:
                return
            if not data:
                return
            try:
                self._latest[index] = json.loads(data)
            except ValueError:
                self.log.warning("worker_report_unreadable", worker=index)

    def _retire(self, index: int) -> None:
        last, self._latest[index] = self._latest[index], None
        if last is not None:
            self._retired = combine([self._retired, _without_gauges(last)])

    def _stop(self, timeout: float, grace: float = 5.0) -> None:
        for proc in self._procs:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for slot in self._slots:
            slot.join(timeout=max(0.0, deadline - time.monotonic()))
        for proc in self._procs:
            if proc is not None and proc.poll() is None:
                self.log.warning("worker_killed", pid=proc.pid, reason="did not stop in time")
                proc.kill()
                proc.wait()
        gevent.killall(self._slots, timeout=timeout)
        self._close_queues()

    # --- counters ---------------------------------------------------------
    def forwarding(self) -> bool:
        """Whether every worker has reported (so forwards): systemd's READY=1 waits for it."""
        return all(report is not None for report in self._latest)

    def stats(self) -> dict[str, Any]:
        """The workers' counters added up, in the shape of ``Forwarder.stats()``."""
        total = combine([self._retired, *self._latest])
        if total is None:  # no report yet: zeros, named
            total = {
                "mode": "wire" if len(self.queues) == 2 else "switch",
                "ports": [_zero_port(q[0].name) for q in self.queues],
                "switch": None,
            }
        total["workers"] = self.workers
        return total

    # --- lifetime ---------------------------------------------------------
    def _close_queues(self) -> None:
        """Restore the links of devices found, close every queue (created TAPs vanish)."""
        for queues, found in zip(self.queues, self._found, strict=False):
            put_back(queues[0].link, found)
            for queue in queues:
                queue.close()
        self.queues = []


def _zero_port(name: str) -> dict[str, Any]:
    return {"endpoint": name, "kind": "tap", **DeviceCounters().as_dict(), "drops": {},
            "failed": None}  # fmt: skip


def _describe_status(status: int | None) -> str:
    if status is not None and status < 0:
        return f"killed by {signal.Signals(-status).name}"
    return f"exit status {status}"
