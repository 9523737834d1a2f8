"""``tap-forward --workers N``: one forwarder per CPU over multi-queue TAPs.

gevent runs one thread, so processes are how a forwarder uses more than one
core.  The supervisor (the process the operator started) opens every TAP
with ``IFF_MULTI_QUEUE``, one queue per worker, configures the links, and
starts N worker processes, each given its own queue of every TAP as
``fd:N`` endpoints.  The kernel spreads flows over the queues (by flow
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

import contextlib
import json
import signal
import socket
import sys
import time

import gevent
import gevent.event
import gevent.socket
import gevent.subprocess

from greentap.counters import DeviceCounters
from greentap.device import Tap
from greentap.ports import put_back

REPORT_INTERVAL = 0.5  # seconds between two counter reports of a worker
_REPORT_MAX = 1 << 20  # largest report message
#: Worker exit statuses that mean "this will never work": stop, do not restart.
_FATAL = {2, 3, 4, 5}
_GAUGES = {"entries", "max_entries"}  # not summed over time when a worker is replaced


def combine(snapshots):
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


def _add(a, b):
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


def _without_gauges(snap):
    """A dead worker's final counters, minus what only describes its present."""
    snap = json.loads(json.dumps(snap))
    table = (snap.get("switch") or {}).get("mac_table") or {}
    for key in _GAUGES & table.keys():
        table[key] = 0
    return snap


class Supervisor:
    """Open multi-queue TAPs, run a forwarder process per queue, keep them running.

    Args:
        specs: the TAP :class:`~greentap.endpoints.EndpointSpec` list.
        workers: how many worker processes (and queues per TAP).
        worker_args: command-line options every worker gets (log format,
            MAC table, ``--user``).
        mtu: the MTU to set on every TAP, or None.
        offload: open the queues with a virtio-net header and offloads.
        log: a structlog logger.
        restart_delay: seconds before restarting a dead worker (doubled,
            up to 30 s, while workers keep dying young).

    Raises:
        TapError: a TAP cannot be opened or configured (nothing is left open).
    """

    def __init__(
        self, specs, workers, *, worker_args=(), mtu=None, offload=False, log, restart_delay=0.5
    ):
        self.workers = workers
        self.worker_args = list(worker_args)
        self.log = log
        self.restart_delay = restart_delay
        self.queues = []  # per endpoint: [Tap of queue 0, ..., queue N-1]
        self._restore = []  # per endpoint: (was up, mtu) of a device found, or None
        self._policers = [
            (spec.options.get("rate"), spec.options.get("burst")) for spec in specs
        ]  # fmt: skip
        self._latest = [None] * workers  # each worker's last report
        self._retired = None  # counters of workers that died, added up
        self._procs = [None] * workers
        self._stopping = gevent.event.Event()
        self._fatal = None
        self._slots = []
        self._servers = []
        try:
            for spec in specs:
                self._open(spec, mtu, offload)
        except BaseException:
            self.close()
            raise

    def _open(self, spec, mtu, offload):
        netns = spec.options.get("netns")
        first = Tap(spec.name, netns=netns, multi_queue=True, vnet_hdr=offload)
        queues = [first]
        try:
            restore = None if first.created else (first.is_up, first.mtu)
        except BaseException:
            first.close()
            raise
        self.queues.append(queues)
        self._restore.append(restore)
        if mtu is not None:
            first.mtu = mtu
        for _ in range(self.workers - 1):
            queues.append(Tap(first.name, netns=netns, multi_queue=True, vnet_hdr=offload))
        if offload:
            for queue in queues:
                queue.enable_offloads()
        first.up()

    def describe(self):
        """One dict per TAP, for logs."""
        return [
            {"endpoint": q[0].name, "kind": "tap", "created": q[0].created, "queues": len(q),
             "netns": q[0].netns, "offload": q[0].offload}
            for q in self.queues
        ]  # fmt: skip

    # --- running ----------------------------------------------------------
    def serve_forever(self):
        """Start the workers and keep them running until :meth:`request_stop`.

        Returns:
            0, or the exit status of a worker that could never work.
        """
        self._slots = [gevent.spawn(self._run_slot, i) for i in range(self.workers)]
        try:
            self._stopping.wait()
        finally:
            self._stop_workers()
        return self._fatal or 0

    def request_stop(self, *_):
        """Stop every worker; safe from a signal handler."""
        self._stopping.set()

    def handle_signals(self):
        """SIGINT/SIGTERM stop everything; SIGHUP is passed on to the workers."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            gevent.signal_handler(signum, self._on_stop_signal, signum)
        gevent.signal_handler(signal.SIGHUP, self._pass_on, signal.SIGHUP)

    def _on_stop_signal(self, signum):
        self.log.info("signal_received", signal=signal.Signals(signum).name)
        self.request_stop()

    def _pass_on(self, signum):
        self.log.info("signal_received", signal=signal.Signals(signum).name, action="pass_on")
        for proc in self._procs:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signum)

    def every(self, interval, callback):
        """Call ``callback(self)`` every ``interval`` seconds until stopped."""

        def loop():
            while not self._stopping.wait(interval):
                callback(self)

        gevent.spawn(loop)

    def serve_wsgi(self, app, address):
        """Serve a WSGI app (metrics) on this hub; return the address bound."""
        from gevent.pywsgi import WSGIServer

        server = WSGIServer(address, app, log=None, error_log=None)
        server.start()
        self._servers.append(server)
        return server.address[:2]

    def pids(self):
        """The process IDs of the running workers."""
        return [p.pid for p in self._procs if p is not None and p.poll() is None]

    def _worker_argv(self, index, report_fd):
        endpoints = []
        for queues, (rate, burst) in zip(self.queues, self._policers, strict=True):
            text = f"fd:{queues[index].fileno()}"
            if rate is not None:
                # Each worker polices its share; the kernel spreads flows, not frames.
                share = {"rate": rate / self.workers}
                if burst is not None:
                    share["burst"] = max(1.0, burst / self.workers)
                text += "?" + "&".join(f"{k}={v!r}" for k, v in share.items())
            endpoints.append(text)
        return [
            sys.executable, "-m", "greentap.cli", "--stats", "0", "--report-fd", str(report_fd),
            "--worker-index", str(index), *self.worker_args, *endpoints,
        ]  # fmt: skip

    def _spawn(self, index):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            fds = [q[index].fileno() for q in self.queues] + [theirs.fileno()]
            proc = gevent.subprocess.Popen(
                self._worker_argv(index, theirs.fileno()),
                pass_fds=fds,
                stdin=gevent.subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return proc, gevent.socket.socket(fileno=ours.detach())

    def _run_slot(self, index):
        delay = self.restart_delay
        while not self._stopping.is_set():
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
            if self._stopping.is_set():
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
            if self._stopping.wait(delay):
                return

    def _read_reports(self, index, sock):
        while True:
            try:
                data = sock.recv(_REPORT_MAX)
            except OSError:
                return
            if not data:
                return
            try:
                self._latest[index] = json.loads(data)
            except ValueError:
                self.log.warning("worker_report_unreadable", worker=index)

    def _retire(self, index):
        last, self._latest[index] = self._latest[index], None
        if last is not None:
            self._retired = combine([self._retired, _without_gauges(last)])

    def _stop_workers(self, timeout=5.0):
        for server in self._servers:
            server.stop(timeout=1)
        for proc in self._procs:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for slot in self._slots:
            slot.join(timeout=max(0.0, deadline - time.monotonic()))
        for proc in self._procs:
            if proc is not None and proc.poll() is None:
                self.log.warning("worker_killed", pid=proc.pid, reason="did not stop in time")
                proc.kill()
                proc.wait()
        gevent.killall(self._slots, timeout=1)

    # --- counters ---------------------------------------------------------
    def stats(self):
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
    def close(self):
        """Restore the links of devices found, close every queue (created TAPs vanish)."""
        for queues, found in zip(self.queues, self._restore, strict=True):
            put_back(queues[0], found)
            for queue in queues:
                queue.close()
        self.queues = []


def _zero_port(name):
    return {"endpoint": name, "kind": "tap", **DeviceCounters().as_dict(), "drops": {},
            "failed": None}  # fmt: skip


def _describe_status(status):
    if status is not None and status < 0:
        return f"killed by {signal.Signals(-status).name}"
    return f"exit status {status}"


def report_to(forwarder, fd, interval=REPORT_INTERVAL):
    """In a worker: report ``forwarder.stats()`` to the supervisor over socket ``fd``.

    Every ``interval`` seconds, and once more from :func:`final_report`.  End
    of file on the socket means the supervisor is gone: the forwarder is
    asked to stop.

    Returns:
        A function sending the final report (call it after the forwarder stopped).
    """
    sock = gevent.socket.socket(fileno=fd)

    def send():
        # Full (the supervisor is busy) or gone: the next report will tell.
        with contextlib.suppress(OSError):
            sock.send(json.dumps(forwarder.stats()).encode(), socket.MSG_DONTWAIT)

    def watch_supervisor():
        try:
            while sock.recv(1):
                pass
        except OSError:
            pass
        if forwarder.wait(0):
            return  # stopping anyway: the socket closed under us
        forwarder.log.warning("supervisor_gone", action="stop")
        forwarder.request_stop()

    forwarder.every(interval, lambda _: send())
    gevent.spawn(watch_supervisor)

    def final_report():
        send()
        sock.close()

    return final_report
