"""The life of a long-running service on gevent's hub.

:class:`Service` is what the :class:`~greentap.app.forwarder.Forwarder` and
the workers' :class:`~greentap.app.supervisor.Supervisor` share, as gevent's
``BaseServer`` is for servers: ``start()``, ``stop()``, ``serve_forever()``
and a stop that may be requested from a signal handler; signal handling
(SIGINT/SIGTERM stop, SIGHUP calls :meth:`Service.reopen`); periodic jobs
(:meth:`Service.every`); and a WSGI server on the same hub (the metrics).
Subclasses fill in :meth:`Service._start` and :meth:`Service._stop`.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterable
from typing import Any

import gevent
import gevent.event

__all__ = ["Service"]


class Service:
    """Start, serve until asked to stop, stop; with signals, periodic jobs and WSGI.

    Args:
        logger: a structlog-style logger.
        hub: the gevent hub (default: the current one).

    Attributes:
        log: the logger.
        stop_hooks: called (no arguments) when a stop begins, before
            anything is closed (systemd's ``STOPPING=1``).
        reopen_hooks: called after :meth:`reopen` on SIGHUP (a reload).
    """

    def __init__(self, *, logger: Any, hub: Any = None) -> None:
        self.log = logger
        self._hub = hub if hub is not None else gevent.get_hub()
        self._stop_requested = gevent.event.Event()
        self._helpers: list[gevent.Greenlet] = []
        self._signals: list[Any] = []
        self._servers: list[Any] = []
        self._started = self._stopped = False
        self.stop_hooks: list[Callable[[], Any]] = []
        self.reopen_hooks: list[Callable[[], Any]] = []

    # --- what subclasses provide ---------------------------------------------
    def _start(self) -> None:
        """Start the service's own greenlets."""

    def _stop(self, timeout: float) -> None:
        """Release what the service holds; its greenlets must end within ``timeout``."""

    def reopen(self) -> None:
        """What SIGHUP asks for (reopen files, look at endpoints); nothing by default."""

    @property
    def exit_status(self) -> int:
        """What :meth:`serve_forever` returns: 0 unless the service failed for good."""
        return 0

    # --- lifecycle --------------------------------------------------------------
    @property
    def stopped(self) -> bool:
        """True once a stop has begun."""
        return self._stopped

    def start(self) -> None:
        """Start serving.  Idempotent."""
        if self._started:
            return
        self._started = True
        self._start()

    def request_stop(self, *_: object) -> None:
        """Ask :meth:`serve_forever` to stop; safe to call from a signal handler."""
        self._stop_requested.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block this greenlet until a stop is requested or ``timeout`` passes.

        Returns:
            True if a stop was requested.
        """
        return bool(self._stop_requested.wait(timeout))

    def stop(self, timeout: float = 1.0) -> None:
        """Stop serving and release everything.  Idempotent.

        Args:
            timeout: seconds the service's greenlets get to finish before
                they are killed.
        """
        self._stop_requested.set()
        if self._stopped:
            return
        self._stopped = True
        for hook in self.stop_hooks:
            hook()
        for cancel in self._signals:
            cancel.cancel()
        for server in self._servers:
            server.stop(timeout=timeout)
        # Helpers only sleep between periodic jobs: nothing to finish.
        gevent.killall(self._helpers, block=True, timeout=timeout)
        self._stop(timeout)

    def serve_forever(self) -> int:
        """Start, then block this greenlet until a stop is requested; then stop.

        Returns:
            :attr:`exit_status`.
        """
        self.start()
        try:
            self._stop_requested.wait()
        finally:
            self.stop()
        return self.exit_status

    def __enter__(self) -> Service:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- helpers ---------------------------------------------------------------
    def spawn(self, function: Callable[..., Any], *args: Any) -> gevent.Greenlet:
        """Run ``function(*args)`` in a helper greenlet, killed at :meth:`stop`."""
        self._helpers = [g for g in self._helpers if not g.dead]
        greenlet = gevent.spawn(function, *args)
        self._helpers.append(greenlet)
        return greenlet

    def every(self, interval: float, callback: Callable[[Any], Any]) -> None:
        """Call ``callback(self)`` every ``interval`` seconds until stopped."""

        def loop() -> None:
            while not self._stop_requested.wait(interval):
                callback(self)

        self.spawn(loop)

    def handle_signals(
        self,
        stop: Iterable[int] = (signal.SIGINT, signal.SIGTERM),
        reopen: Iterable[int] = (signal.SIGHUP,),
    ) -> None:
        """Handle signals on the hub (main thread only).

        Args:
            stop: signals that request a graceful stop.
            reopen: signals that run :meth:`reopen` (what daemons do on
                SIGHUP); serving goes on.
        """
        for signum in stop:
            self._signals.append(gevent.signal_handler(signum, self._on_stop_signal, signum))
        for signum in reopen:
            self._signals.append(gevent.signal_handler(signum, self._on_reopen_signal, signum))

    def _on_stop_signal(self, signum: int) -> None:
        self.log.info("signal_received", signal=signal.Signals(signum).name)
        self.request_stop()

    def _on_reopen_signal(self, signum: int) -> None:
        self.log.info("signal_received", signal=signal.Signals(signum).name, action="reopen")
        # Not in the signal callback itself: reopening may log and wait.
        self.spawn(self._reopen_all)

    def _reopen_all(self) -> None:
        self.reopen()
        for hook in self.reopen_hooks:
            hook()

    def serve_wsgi(self, app: Callable[..., Any], address: tuple[str, int]) -> tuple[str, int]:
        """Serve a WSGI app (e.g. metrics) on this hub until the service stops.

        Args:
            app: the WSGI application.
            address: ``(host, port)`` to listen on; port 0 picks one.

        Returns:
            The ``(host, port)`` actually bound.

        Raises:
            OSError: the address cannot be bound.
        """
        # Imported on use: a few MB of resident memory a service without a web
        # server does not need.
        from gevent.pywsgi import WSGIServer

        server = WSGIServer(address, app, log=None, error_log=None)
        server.start()
        self._servers.append(server)
        host, port = server.address[:2]
        return host, port
