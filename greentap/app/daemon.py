"""What running as a service adds to a forwarder: systemd, the control socket, reloads.

:class:`Daemon` is set up before privileges are dropped (the control socket
is bound and systemd's notify socket opened as root) and started once the
service forwards:

* systemd (:mod:`~greentap.app.notify`): ``READY=1`` with a status line
  once every endpoint is open and its pump spawned, ``WATCHDOG=1`` at half
  of ``WatchdogSec`` from a greenlet (so a starved hub misses it and
  systemd restarts the service), the status line refreshed every
  ``STATUS_INTERVAL`` seconds, ``RELOADING=1`` and ``READY=1`` around a
  reload, ``STOPPING=1`` when a stop begins;
* the control socket (:mod:`~greentap.app.control`) with ``--control``;
* SIGHUP, with ``--config``: after the usual reopen (captures, endpoints),
  a reload of the file; a file with an error is refused with one log line.
"""

from __future__ import annotations

from typing import Any

from greentap.app.control import ControlServer
from greentap.app.notify import Notifier
from greentap.app.privileges import resolve
from greentap.errors import GreentapError

__all__ = ["STATUS_INTERVAL", "Daemon", "summary"]

STATUS_INTERVAL = 10.0  # seconds between two STATUS= lines


def summary(service: Any) -> str:
    """One line on how the service is: mode, endpoints, frames, failures."""
    stats = service.stats()
    ports = stats["ports"]
    failed = [p["endpoint"] for p in ports if p.get("failed")]
    rx = sum(p.get("rx_packets", 0) for p in ports)
    tx = sum(p.get("tx_packets", 0) for p in ports)
    line = f"{stats.get('mode', 'wire')} of {len(ports)} endpoints; {rx} frames in, {tx} out"
    return line + (f"; failed: {', '.join(failed)}" if failed else "")


class Daemon:
    """systemd notifications, the control socket and reloads for one service.

    Args:
        service: the forwarder or supervisor, set up, not started.
        options: the :class:`~greentap.app.startup.Options` (``control``,
            ``config``, ``user``).
        log: a structlog-style logger.
        live: the :class:`~greentap.app.live.LiveEndpoints`, or None (workers).

    Raises:
        GreentapError: the control socket cannot be made.
    """

    def __init__(self, service: Any, options: Any, log: Any, live: Any) -> None:
        self.service, self.options, self.log, self.live = service, options, log, live
        self.notifier = Notifier.from_environment(log)
        self.control: ControlServer | None = None
        try:
            if options.control is not None:
                uid = resolve(options.user, options.group)[1] if options.user else None
                reload = self.reload if live is not None else None
                self.control = ControlServer(options.control, service, live, uid=uid,
                                             log=log, reload=reload)  # fmt: skip
        except BaseException:
            self.close()
            raise
        if live is not None and options.config is not None:
            service.reopen_hooks.append(self._reload_on_signal)
        if self.notifier is not None:
            service.stop_hooks.append(self.notifier.stopping)

    def start(self) -> None:
        """The service forwards: tell systemd, serve the control socket."""
        if self.control is not None:
            self.service.spawn(self.control.serve)
            self.log.info("control_socket", path=self.control.path)
        notifier = self.notifier
        if notifier is None:
            return
        forwarding = getattr(self.service, "forwarding", None)
        if forwarding is None:
            notifier.ready(summary(self.service))
        else:  # workers: ready once each has reported that it forwards
            self.service.spawn(self._ready_when, forwarding)
        if notifier.watchdog_interval:
            self.service.every(notifier.watchdog_interval, lambda _: notifier.watchdog())
        self.service.every(STATUS_INTERVAL, lambda s: notifier.status(summary(s)))

    def _ready_when(self, forwarding: Any) -> None:
        while not forwarding():
            if self.service.wait(0.05):
                return  # stopped first
        assert self.notifier is not None
        self.notifier.ready(summary(self.service))

    def reload(self) -> dict[str, Any]:
        """Reload the configuration file, telling systemd (see :meth:`LiveEndpoints.reload`)."""
        with self.live.lock:  # two at once: RELOADING, READY, then RELOADING, READY
            if self.notifier is not None:
                self.notifier.reloading()
            try:
                result: dict[str, Any] = self.live.reload()
                return result
            except GreentapError as exc:
                self.log.error("reload_refused", path=self.options.config, error=str(exc),
                               error_type=type(exc).__name__)  # fmt: skip
                raise
            finally:
                if self.notifier is not None:
                    self.notifier.ready(summary(self.service))

    def _reload_on_signal(self) -> None:
        try:
            self.reload()
        except GreentapError:
            pass  # logged: the running setup stays
        except Exception:  # our bug: logged whole, and forwarding goes on
            self.log.error("reload_failed", path=self.options.config, exc_info=True)

    def close(self) -> None:
        """Stop the control socket and close the notify socket; harmless twice."""
        if self.control is not None:
            self.control.close()
        if self.notifier is not None:
            self.notifier.close()
