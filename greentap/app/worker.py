"""A worker of ``tap-forward --workers N``: its own entry point, not the command line.

The :class:`~greentap.app.supervisor.Supervisor` starts each worker as
``python -m greentap.app.worker CONFIG``, ``CONFIG`` being one JSON object:

* ``index``: the worker's number (logged with every line);
* ``report_fd``: a ``SOCK_SEQPACKET`` socket to the supervisor;
* ``endpoints``: ``fd:N[?rate=...]`` descriptions of its queues (inherited fds);
* ``aging``, ``max_macs``, ``keep_warm`` (ms), ``log_format``, ``log_level``,
  and ``user``/``group`` to drop to before the first frame.

So the worker protocol is no part of the user-facing command line.  The
worker runs the ordinary forwarder, reports its counters every
:data:`REPORT_INTERVAL` seconds and once more when
it stops, and stops by itself when the supervisor vanishes (the report
socket reads end of file).  It exits with the command's exit statuses
(:mod:`greentap.app.exits`): a usage or permission error stops everything.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

import gevent.socket
import structlog

from greentap.app import startup
from greentap.app.exits import EXIT_INTERNAL, EXIT_OK, EXIT_USAGE, exit_status
from greentap.app.logs import PROG, configure_logging
from greentap.errors import GreentapError

__all__ = ["REPORT_INTERVAL", "main", "report_to"]

REPORT_INTERVAL = 0.5  # seconds between two counter reports to the supervisor


def report_to(forwarder: Any, fd: int, interval: float = REPORT_INTERVAL) -> Callable[[], None]:
    """Report ``forwarder.stats()`` to the supervisor over socket ``fd``.

    Every ``interval`` seconds, and once more from the function returned.
    End of file on the socket means the supervisor is gone: the forwarder is
    asked to stop.

    Returns:
        A function sending the final report (call it after the forwarder stopped).
    """
    sock = gevent.socket.socket(fileno=fd)

    def send() -> None:
        # Full (the supervisor is busy) or gone: the next report will tell.
        with contextlib.suppress(OSError):
            sock.send(json.dumps(forwarder.stats()).encode(), socket.MSG_DONTWAIT)

    def watch_supervisor() -> None:
        with contextlib.suppress(OSError):
            while sock.recv(1):
                pass
        if forwarder.wait(0):
            return  # stopping anyway: the socket closed under us
        forwarder.log.warning("supervisor_gone", action="stop")
        forwarder.request_stop()

    forwarder.every(interval, lambda _: send())
    forwarder.spawn(watch_supervisor)

    def final_report() -> None:
        send()
        sock.close()

    return final_report


def main(argv: Sequence[str] | None = None) -> int:
    """Run one worker; return its exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        config: dict[str, Any] = json.loads(args[0])
        index = int(config["index"])
    except (IndexError, ValueError, KeyError, TypeError):
        print(f"{PROG} worker: expected one JSON argument from the supervisor", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(config.get("log_format"), config.get("log_level", "info"))
    log = structlog.get_logger(PROG).bind(worker=index)
    options = startup.Options(
        endpoints=config["endpoints"],
        stats=0,
        aging=config.get("aging", startup.Options.aging),
        max_macs=config.get("max_macs", startup.Options.max_macs),
        keep_warm=config.get("keep_warm", startup.Options.keep_warm),
        user=config.get("user"),
        group=config.get("group"),
    )
    try:
        report_fd = int(config["report_fd"])
        return startup.run(options, log, attach=lambda service: report_to(service, report_fd))
    except GreentapError as exc:
        print(f"{PROG}: error: worker {index}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return exit_status(exc)
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception as exc:  # one line, never a traceback
        log.debug("internal_error", exc_info=True)
        print(f"{PROG}: internal error in worker {index}: {exc!r}", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
