"""systemd's notify protocol (``Type=notify``), without a dependency.

A service started by systemd with ``NOTIFY_SOCKET`` set tells it how it is
by sending datagrams of ``KEY=VALUE`` lines to that socket (sd_notify(3)):
``READY=1`` once it serves, ``STATUS=...`` a line ``systemctl status``
shows, ``RELOADING=1`` (with ``MONOTONIC_USEC``) and ``READY=1`` around a
reload, ``STOPPING=1`` when it stops, and ``WATCHDOG=1`` at least every
``WatchdogSec`` (systemd sets ``WATCHDOG_USEC``; we send at half of it).

The socket is opened when the service starts (before ``--user`` drops
root) and the variables are taken out of the environment, so the worker
processes, which are not the service systemd watches, do not inherit them.
A message that cannot be sent is logged once and the service goes on:
readiness is systemd's business, forwarding ours.
"""

from __future__ import annotations

import collections
import os
import socket
import time
from collections.abc import MutableMapping
from typing import Any

__all__ = ["Notifier"]

_KEEP = 64  # messages remembered: a watchdog pings for months


class Notifier:
    """Send sd_notify messages to ``$NOTIFY_SOCKET``.

    Args:
        address: the socket's path, or ``@name`` for an abstract socket.
        watchdog_usec: ``$WATCHDOG_USEC``, or None.
        log: a structlog-style logger.

    Attributes:
        watchdog_interval: seconds between two ``WATCHDOG=1`` (half of
            ``WatchdogSec``), or None when systemd watches nothing.
        sent: the last messages sent, in order.
    """

    def __init__(self, address: str, watchdog_usec: int | None, log: Any) -> None:
        self.log = log
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._sock: socket.socket | None = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._failed = False
        self.watchdog_interval = watchdog_usec / 2e6 if watchdog_usec else None
        self.sent: collections.deque[str] = collections.deque(maxlen=_KEEP)

    @classmethod
    def from_environment(
        cls, log: Any, environ: MutableMapping[str, str] | None = None
    ) -> Notifier | None:
        """The notifier systemd asks for, or None when not started by it.

        Takes ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` out
        of ``environ`` (default ``os.environ``).  A ``WATCHDOG_PID`` that is
        not this process means the watchdog is meant for another.
        """
        env = os.environ if environ is None else environ
        address = env.pop("NOTIFY_SOCKET", None)
        usec, pid = env.pop("WATCHDOG_USEC", None), env.pop("WATCHDOG_PID", None)
        if not address or address[0] not in "/@":
            return None
        watchdog = int(usec) if usec and usec.isdigit() and int(usec) > 0 else None
        if pid is not None and pid != str(os.getpid()):
            watchdog = None
        return cls(address, watchdog, log)

    def notify(self, *lines: str) -> bool:
        """Send one message of ``lines``; False (logged once) if it could not be sent."""
        message = "\n".join(lines)
        if self._sock is None:
            return False
        try:
            self._sock.sendto(message.encode("utf-8", "replace"), self._address)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                self.log.warning("notify_failed", error=exc.strerror, socket=self._address)
            return False
        self.sent.append(message)
        return True

    def ready(self, status: str) -> bool:
        """``READY=1`` with a ``STATUS=`` line."""
        return self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        """``STATUS=``: one line ``systemctl status`` shows."""
        return self.notify(f"STATUS={status}")

    def reloading(self) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC`` (systemd's Type=notify-reload wants it)."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading")

    def stopping(self) -> bool:
        """``STOPPING=1``."""
        return self.notify("STOPPING=1", "STATUS=stopping")

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the hub still turns."""
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        """Close the socket; harmless twice."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
