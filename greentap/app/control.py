"""``--control PATH``: a unix socket to look at and change a running tap-forward.

The protocol is JSON lines: each request one JSON object on one line, each
reply one JSON object on one line, in order.  A request names its
``command``; an ``id``, if given, is echoed::

    {"command": "list"}                       every endpoint, by name
    {"command": "stats"}                      counters (as --stats logs them)
    {"command": "macs"}                       the learned MAC table
    {"command": "add", "name": "vm3", "endpoint": "tap:vm3"}
    {"command": "remove", "name": "vm3"}
    {"command": "reload"}                     read --config again, apply the difference
    {"command": "help"}

A reply has ``"ok": true`` and what was asked, or ``"ok": false`` with an
``error`` line, the error's ``type`` and the exit ``status`` the command
would have had.  A request that is not JSON, not an object, longer than
64 KiB or unknown gets such an error object; the connection stays usable
(except after an over-long line, which is closed).

The socket file is created 0600 and given to the ``--user`` uid, if any;
each connection's peer is checked with ``SO_PEERCRED``: only root, this
process's uid and the ``--user`` uid are served, others are closed with
an error object.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

import gevent
import gevent.pool
import gevent.socket

from greentap.app.exits import EXIT_OK, EXIT_PERMISSION, EXIT_SYSTEM, EXIT_USAGE, exit_status
from greentap.errors import EndpointUnavailable, GreentapError, UsageError
from greentap.ports.listener import bind_private, unlink_if_ours

__all__ = ["COMMANDS", "ControlServer", "ask", "request_for"]

MAX_LINE = 64 * 1024
MAX_CLIENTS = 16
_IDLE = 300.0  # seconds a client may stay silent
_SEND = 10.0  # seconds a client has to take a reply: one that does not read is closed
_UCRED = struct.Struct("3i")  # pid, uid, gid
#: Each command and the words it takes on the command line (after ``--command``).
COMMANDS = {
    "list": (), "stats": (), "macs": (), "add": ("name", "endpoint"),
    "remove": ("name",), "reload": (), "help": (),
}  # fmt: skip


class ControlServer:
    """Serve the control protocol on a unix socket, on the hub.

    Args:
        path: the socket's path.
        service: the running forwarder or supervisor (``stats()``, ``mac_table()``).
        live: the :class:`~greentap.app.live.LiveEndpoints`, or None where
            endpoints cannot change (``--workers``).
        uid: the ``--user`` uid, also allowed (and given the socket), or None.
        log: a structlog-style logger.
        reload: what ``reload`` calls (default ``live.reload``): the service
            wraps it in its notifications.

    Raises:
        EndpointUnavailable: the path is in use or cannot be made.
    """

    def __init__(
        self,
        path: str,
        service: Any,
        live: Any,
        *,
        uid: int | None,
        log: Any,
        reload: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.path, self.service, self.live, self.log = path, service, live, log
        self.reload = reload or (live.reload if live is not None else None)
        self.allowed = {0, os.getuid()} | ({uid} if uid is not None else set())
        self.clients = 0
        # 0600, given to the --user (who may then connect; root always can).
        sock, self._file = bind_private(
            path, "--control", uid=-1 if uid is None else uid, backlog=MAX_CLIENTS
        )
        self._sock = gevent.socket.socket(fileno=sock.detach())
        self._closed = False
        self._clients = gevent.pool.Group()

    def serve(self) -> None:
        """Accept and serve clients until :meth:`close` (run it in a greenlet)."""
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                if self._closed:
                    return
                gevent.sleep(0.1)  # out of fds: rest, then try again
                continue
            self._clients.spawn(self._client, conn)

    def close(self) -> None:
        """Stop listening and remove the socket file if it is still ours."""
        if self._closed:
            return
        self._closed = True
        self._sock.close()
        # A request in progress (an add waiting to open) ends with the service.
        self._clients.kill(block=False)
        unlink_if_ours(self.path, self._file)  # after --user, RuntimeDirectory= cleans

    # --- one client ---------------------------------------------------------
    def _client(self, conn: Any) -> None:
        try:
            pid, uid, _ = _UCRED.unpack(
                conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
            )
            if uid not in self.allowed:
                self.log.warning("control_refused", uid=uid, pid=pid)
                _send(conn, _error(f"uid {uid} may not use this socket", EXIT_PERMISSION))
                _linger(conn)
                return
            if self.clients >= MAX_CLIENTS:
                _send(conn, _error(f"already {MAX_CLIENTS} clients", EXIT_SYSTEM))
                _linger(conn)
                return
            self.clients += 1
            try:
                self._serve_client(conn)
            finally:
                self.clients -= 1
        except OSError:
            pass  # the client went away
        finally:
            conn.close()

    def _serve_client(self, conn: Any) -> None:
        buffer = b""
        while True:
            line, sep, rest = buffer.partition(b"\n")
            if not sep:
                if len(buffer) > MAX_LINE:
                    _send(conn, _error(f"a request longer than {MAX_LINE} bytes", EXIT_USAGE))
                    _linger(conn)
                    return
                with gevent.Timeout(_IDLE, False):
                    data = conn.recv(65536)
                    if data:
                        buffer += data
                        continue
                return  # end of file or idle
            buffer = rest
            if line.strip():
                _send(conn, self.handle(line))

    def handle(self, line: bytes) -> dict[str, Any]:
        """One request line's reply (never raises for what the client sent)."""
        try:
            request = json.loads(line)
        except (ValueError, RecursionError) as exc:  # nested 2000 deep: RecursionError
            return _error(f"not JSON: {type(exc).__name__}: {str(exc)[:200]}", EXIT_USAGE)
        if not isinstance(request, dict):
            return _error('a request is a JSON object: {"command": ...}', EXIT_USAGE)
        reply = self._dispatch(request)
        ident = request.get("id")
        if isinstance(ident, (str, int)) and not isinstance(ident, bool):
            reply["id"] = ident  # echoed as given: a string or a whole number
        return reply

    def _dispatch(self, request: dict[str, Any]) -> dict[str, Any]:
        command = request.get("command")
        if not isinstance(command, str) or command not in COMMANDS:
            return _error(f"unknown command {command!r} (commands: {', '.join(COMMANDS)})",
                          EXIT_USAGE)  # fmt: skip
        for word in COMMANDS[command]:
            if not isinstance(request.get(word), str):
                return _error(f"{command} needs {word!r}: a string", EXIT_USAGE)
        try:
            return {"ok": True, **self._run(command, request)}
        except GreentapError as exc:
            return _error(str(exc), exit_status(exc), type(exc).__name__)
        except Exception as exc:  # our bug: the reply says so, the service goes on
            self.log.error("control_failed", command=command, exc_info=True)
            return _error(f"internal error: {type(exc).__name__}: {exc}", 1, "InternalError")

    def _run(self, command: str, request: dict[str, Any]) -> dict[str, Any]:
        if command == "help":
            return {"commands": {c: list(w) for c, w in COMMANDS.items()}}
        if command == "stats":
            return {"stats": self.service.stats()}
        if command == "list":
            if self.live is None:
                return {
                    "endpoints": [
                        {"name": p["endpoint"], "endpoint": p["endpoint"], "kind": p["kind"]}
                        for p in self.service.stats()["ports"]
                    ]
                }
            return {"endpoints": self.live.list()}
        if command == "macs":
            table: list[tuple[str, str, float]] = getattr(self.service, "mac_table", list)()
            return {"macs": [{"mac": m, "endpoint": e, "age": round(a, 3)} for m, e, a in table]}
        if self.live is None:
            raise UsageError(f"{command}: endpoints cannot change with --workers")
        if command == "add":
            return {"added": self.live.add(request["name"], request["endpoint"])}
        if command == "remove":
            self.live.remove(request["name"])
            return {"removed": request["name"]}
        assert self.reload is not None
        return {"reloaded": self.reload()}


def _linger(conn: Any) -> None:
    """Close our side, then read what the client still sends for a moment: closed with
    unread data, the socket would reset and the client might lose the reply."""
    conn.shutdown(socket.SHUT_WR)
    with gevent.Timeout(1.0, False):
        for _ in range(64):
            if not conn.recv(65536):
                break


def _error(message: str, status: int, kind: str = "UsageError") -> dict[str, Any]:
    return {"ok": False, "error": message, "type": kind, "status": status}


def _send(conn: Any, reply: dict[str, Any]) -> None:
    data = json.dumps(reply, default=str).encode() + b"\n"
    with gevent.Timeout(_SEND, OSError("the client does not read its replies")):
        conn.sendall(data)


def request_for(words: list[str]) -> dict[str, Any]:
    """The request ``--command WORDS...`` stands for.

    Raises:
        UsageError: an unknown command or the wrong number of words.
    """
    command, args = words[0], words[1:]
    if command not in COMMANDS:
        raise UsageError(f"unknown command {command!r} (commands: {', '.join(COMMANDS)})")
    wanted = COMMANDS[command]
    if len(args) != len(wanted):
        shown = " ".join(w.upper() for w in wanted)
        raise UsageError(f"usage: --command {command}{' ' + shown if shown else ''}")
    return {"command": command, **dict(zip(wanted, args, strict=True))}


def ask(path: str, request: dict[str, Any], timeout: float = 60.0) -> tuple[int, dict[str, Any]]:
    """Send one request to a running tap-forward's control socket.

    Returns:
        ``(exit status, reply)``: 0 for an ``ok`` reply, else the status it names.

    Raises:
        EndpointUnavailable: nothing listens there, or the reply is not one.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
            sock.sendall(json.dumps(request).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                data += chunk
        except OSError as exc:
            raise EndpointUnavailable.from_errno(
                exc.errno, "cannot reach the control socket", endpoint=path
            ) from exc
    finally:
        sock.close()
    try:
        reply = json.loads(data)
    except ValueError:
        raise EndpointUnavailable("the control socket sent no reply", endpoint=path) from None
    if not isinstance(reply, dict):
        raise EndpointUnavailable("the control socket sent no reply", endpoint=path)
    status = EXIT_OK if reply.get("ok") else int(reply.get("status") or EXIT_SYSTEM)
    return status, reply
