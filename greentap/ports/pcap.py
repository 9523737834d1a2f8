"""``pcap:PATH``: a write-only endpoint that mirrors every forwarded frame to a
classic pcap file, or to standard output with ``pcap:-``.

Frames are encoded and buffered on the hub; full chunks go to a writer thread
(a real OS thread, never a greenlet: a slow disk or a stalled pipe must not
block the hub).  When the backlog reaches its bound, frames for the capture
are dropped and counted (``tx_backlog``); forwarding is unaffected.  A pipe
whose reader went away (tcpdump exited) ends the capture cleanly: it is
logged once and the forwarder carries on.  A full disk drops what could not
be written (``tx_ENOSPC``) and truncates the file back to its last whole
record; the capture goes on when there is room again, and both changes are
logged once (``capture_write_failed``, ``capture_resumed``).  :meth:`reopen`
(SIGHUP) starts a new file at the same path when the old one was moved away,
as log rotation tools expect.  Rotation by size keeps at most ``keep``
files, each no larger than ``rotate`` bytes, each a valid pcap file.  :meth:`PcapPort.close` flushes
and waits for the writer, so the file is complete after SIGTERM/SIGINT.
"""

from __future__ import annotations

import _queue  # the C SimpleQueue: never monkey-patched
import _thread
import collections
import errno
import os
import time
from typing import Any

import gevent

from greentap.core import pcap
from greentap.core.counters import DeviceCounters
from greentap.core.endpoints import EndpointSpec
from greentap.errors import EndpointSyntaxError, EndpointUnavailable
from greentap.ports.base import Port
from greentap.ports.registry import OpenOptions, register

__all__ = ["PcapPort"]

CHUNK = 64 * 1024  # hand-over size to the writer thread
FLUSH_INTERVAL = 0.2  # seconds: a quiet capture still reaches the file promptly
BACKLOG_LIMIT = 16 * 1024 * 1024  # bytes buffered before frames are dropped

_ROTATE = object()
_REOPEN = object()
_STOP = object()


class PcapPort(Port):
    """Mirror frames into a pcap file or stream.

    Args:
        path: a file path, or ``"-"`` for standard output.
        snaplen: bytes kept of each frame (default: whole frames).
        rotate: rotate when the file would exceed this many bytes (None: never).
        keep: with ``rotate``, how many files to keep (``PATH``, ``PATH.1`` ...).
        logger: a structlog logger for state changes (capture ended, disk full).
        backlog_limit: bytes buffered for the writer before frames are dropped.

    Raises:
        EndpointUnavailable: the file cannot be created.
        EndpointSyntaxError: bad snaplen, rotate or keep (a ValueError).
    """

    kind = "pcap"
    readable = False

    def __init__(
        self,
        path: str,
        *,
        snaplen: int = pcap.DEFAULT_SNAPLEN,
        rotate: int | None = None,
        keep: int | None = None,
        logger: Any = None,
        backlog_limit: int = BACKLOG_LIMIT,
    ) -> None:
        self.name = f"pcap:{path}"
        if snaplen < 1:
            raise EndpointSyntaxError("snaplen must be at least 1", endpoint=self.name)
        header = pcap.global_header(snaplen)
        if rotate is not None:
            if path == "-":
                raise EndpointSyntaxError(
                    "pcap:- is a stream: it cannot rotate", endpoint=self.name
                )
            if rotate < pcap.MIN_ROTATE:
                raise EndpointSyntaxError(
                    f"rotate={rotate} is too small for even one frame", endpoint=self.name
                )
            keep = 1 if keep is None else keep
            if keep < 1:
                raise EndpointSyntaxError("keep must be at least 1", endpoint=self.name)
        elif keep is not None:
            raise EndpointSyntaxError("keep needs rotate", endpoint=self.name)
        self.path = path
        self.snaplen = snaplen
        self.rotate = rotate
        self.keep = keep
        self.counters = DeviceCounters()
        self._hub_drops: collections.Counter[str] = collections.Counter()  # the hub's
        self._writer_drops: collections.Counter[str] = collections.Counter()  # the writer's
        self.max_frame_size = 0
        if logger is not None:
            self.notify = lambda event, level="warning", **fields: getattr(logger, level)(
                event, endpoint=self.name, **fields
            )
        self._header = header
        self._limit = backlog_limit
        self._fd = 1 if path == "-" else self._open(path)
        self._buf = bytearray(header)
        self._buf_records = 0
        self._file_size = len(header)  # bytes queued for the current file
        self._queued = len(header)  # written by the hub only
        self._written = 0  # written by the writer thread only
        self._ended: str | None = None  # why the capture ended (set by the writer thread)
        self._reported: str | None = None
        self._failing: str | None = None  # the errno name while writes fail (writer thread)
        self._failing_reported: str | None = None
        self._ino = None if path == "-" else os.fstat(self._fd).st_ino  # the writer's file
        self._closed = False
        self._queue: _queue.SimpleQueue[Any] = _queue.SimpleQueue()
        self._done = _thread.allocate_lock()
        self._done.acquire()
        _thread.start_new_thread(self._writer, ())
        self._flusher = gevent.spawn(self._flush_periodically)

    def _open(self, path: str) -> int:
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            hint = f"cannot create {path}"
            raise EndpointUnavailable.from_errno(exc.errno, hint, endpoint=self.name) from exc

    @property
    def drops(self) -> collections.Counter[str]:  # type: ignore[override]
        """Frames dropped, by reason: ``tx_backlog`` (the writer could not keep
        up) and ``tx_<errno>`` (e.g. ``tx_ENOSPC``: the disk was full)."""
        return self._hub_drops + self._writer_drops

    def describe(self) -> dict[str, Any]:
        """Return a dict describing the port for logs."""
        info = {"endpoint": self.name, "kind": self.kind, "snaplen": self.snaplen}
        if self.rotate:
            info.update(rotate=self.rotate, keep=self.keep)
        return info

    # --- the hub side -----------------------------------------------------
    def send(self, frame: bytes | bytearray | memoryview) -> bool:
        """Add one frame to the capture; return False if it was dropped."""
        if self._ended is not None or self._closed:
            return False
        rec = pcap.record(frame, time.time_ns(), self.snaplen)
        size = len(rec)
        if self._queued - self._written + size > self._limit:
            self._hub_drops["tx_backlog"] += 1
            self.counters.tx_dropped += 1
            return False
        if self.rotate is not None and self._file_size + size > self.rotate:
            self._rotate()
        self._buf += rec
        self._buf_records += 1
        self._queued += size
        self._file_size += size
        self.counters.tx_packets += 1
        self.counters.tx_bytes += size
        if len(self._buf) >= CHUNK:
            self._flush()
        return True

    def _flush(self) -> None:
        if self._buf:
            self._queue.put((bytes(self._buf), self._buf_records))
            self._buf.clear()
            self._buf_records = 0

    def _rotate(self, how: object = _ROTATE) -> None:
        self._flush()
        self._queue.put(how)
        self._buf += self._header
        self._queued += len(self._header)
        self._file_size = len(self._header)

    def _flush_periodically(self) -> None:
        while not self._closed:
            gevent.sleep(FLUSH_INTERVAL)
            self._flush()
            self._report()

    def _report(self) -> None:
        failing = self._failing
        if failing != self._failing_reported:
            self._failing_reported = failing
            if failing is None:
                self.notify("capture_resumed", level="info", dropped=dict(self._writer_drops))
            else:
                hint = "frames for the capture are dropped and counted until it can grow again"
                self.notify("capture_write_failed", error=failing, hint=hint)
        if self._ended != self._reported:
            self._reported = self._ended
            self.notify("capture_ended", reason=self._ended)

    def reopen(self) -> None:
        """Start a new file at :attr:`path` if the current one was moved away.

        With ``rotate``, rotate now instead.  A file still in place is kept
        (reopening it would truncate it); ``pcap:-`` has nothing to reopen.
        """
        if self._closed or self._ended is not None or self.path == "-":
            return
        if self.rotate is not None:
            self._rotate()
            return
        try:
            still_there = os.stat(self.path).st_ino == self._ino
        except OSError:
            still_there = False
        if not still_there:
            self._rotate(_REOPEN)

    def close(self, timeout: float = 5.0) -> None:
        """Flush everything and wait (up to ``timeout``) for the writer; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._flusher.kill(block=False)
        self._flush()
        self._queue.put(_STOP)
        # Waiting for a real thread: poll cooperatively so the hub keeps running.
        deadline = time.monotonic() + timeout
        while not self._done.acquire(False):
            if time.monotonic() > deadline:
                break
            gevent.sleep(0.005)
        self._report()

    # --- the writer thread ------------------------------------------------
    def _writer(self) -> None:
        fd, size = self._fd, 0
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    break
                if item is _ROTATE or item is _REOPEN:
                    if self._ended is None:
                        fd = self._rotate_files(fd, shift=item is _ROTATE)
                        size = 0
                    continue
                chunk, records = item
                try:
                    if self._ended is None:  # once over, let the hub's data go
                        _write_all(fd, chunk)
                        size += len(chunk)
                        self._failing = None
                except OSError as exc:
                    if exc.errno in (errno.EPIPE, errno.ECONNRESET):
                        self._ended = "the reader closed the pipe"
                    else:
                        # ENOSPC and friends: drop the chunk, cut back to the last
                        # whole record so the file stays valid.
                        self._failing = errno.errorcode.get(exc.errno or 0, str(exc.errno))
                        self._writer_drops[f"tx_{self._failing}"] += records
                        if fd != 1:
                            try:
                                os.ftruncate(fd, size)
                                os.lseek(fd, size, os.SEEK_SET)
                            except OSError:
                                self._ended = f"write failed: {exc.strerror}"
                finally:
                    self._written += len(chunk)
        finally:
            if fd >= 0 and self.path != "-":
                os.close(fd)
            self._done.release()

    def _rotate_files(self, fd: int, shift: bool = True) -> int:
        os.close(fd)
        path = self.path
        for n in range((self.keep or 1) - 1, 0, -1) if shift else ():
            older = f"{path}.{n - 1}" if n > 1 else path
            if os.path.exists(older):
                os.replace(older, f"{path}.{n}")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        except OSError as exc:  # e.g. no longer allowed after --user
            self._ended = f"cannot open a new {path}: {exc.strerror}"
            return -1
        self._ino = os.fstat(fd).st_ino
        return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


@register("pcap")
def _open_pcap(spec: EndpointSpec, options: OpenOptions) -> PcapPort:
    opts = spec.options
    return PcapPort(
        spec.name,
        snaplen=opts.get("snaplen", pcap.DEFAULT_SNAPLEN),
        rotate=opts.get("rotate"),
        keep=opts.get("keep"),
        logger=options.logger,
    )
