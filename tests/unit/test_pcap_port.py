"""The pcap mirror endpoint: valid files, snap length, rotation, backlog, closed pipes."""

import os
import stat

import gevent
import pytest

from greentap.core import pcap
from greentap.core.endpoints import parse_endpoint
from greentap.errors import EndpointSyntaxError, EndpointUnavailable
from greentap.ports.pcap import PcapPort


def frames(n, size=60):
    return [bytes([i % 256]) * size for i in range(n)]


def test_every_frame_lands_in_a_valid_file_with_monotonic_timestamps(tmp_path):
    """Frames sent to the port are all in the file after close(), in order."""
    path = tmp_path / "cap.pcap"
    port = PcapPort(str(path))
    sent = [*frames(500), bytes(1514)]
    for f in sent:
        assert port.send(f) is True
        gevent.sleep(0)
    port.close()
    snaplen, records = pcap.parse(path.read_bytes())
    assert snaplen == pcap.DEFAULT_SNAPLEN
    assert [body for _, _, body in records] == sent
    stamps = [ts for ts, _, _ in records]
    assert stamps == sorted(stamps)
    assert port.counters.tx_packets == len(sent)


def test_snaplen_keeps_the_head_of_each_frame(tmp_path):
    """?snaplen=N keeps N bytes and records the original length."""
    path = tmp_path / "cap.pcap"
    port = PcapPort(str(path), snaplen=64)
    port.send(bytes(range(200)))
    port.close()
    snaplen, [(_, orig, body)] = pcap.parse(path.read_bytes())
    assert (snaplen, orig, body) == (64, 200, bytes(range(64)))


def test_rotation_keeps_at_most_keep_files_each_valid_and_within_the_limit(tmp_path):
    """rotate=SIZE&keep=N: never more than N files, none larger than SIZE, all readable."""
    path = tmp_path / "cap.pcap"
    limit = 4096
    port = PcapPort(str(path), rotate=limit, keep=3)
    sent = frames(300, size=100)
    for f in sent:
        port.send(f)
    port.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["cap.pcap", "cap.pcap.1", "cap.pcap.2"]
    kept = []
    for name in ("cap.pcap.2", "cap.pcap.1", "cap.pcap"):  # oldest first
        data = (tmp_path / name).read_bytes()
        assert len(data) <= limit
        kept += [body for _, _, body in pcap.parse(data)[1]]
    assert kept == sent[-len(kept) :]  # the newest frames, in order, none torn
    assert len(kept) > 0


def test_sighup_rotates_a_rotating_capture(tmp_path):
    """reopen() (what SIGHUP does) on a capture with rotate=: the frames so far are in
    PATH.1, the frames after it in a new PATH, both valid files."""
    path = tmp_path / "cap.pcap"
    port = PcapPort(str(path), rotate=1 << 20, keep=3)
    before, after = frames(5, size=80), frames(7, size=90)
    for f in before:
        port.send(f)
    port.reopen()
    for f in after:
        port.send(f)
    port.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cap.pcap", "cap.pcap.1"]
    assert [b for _, _, b in pcap.parse((tmp_path / "cap.pcap.1").read_bytes())[1]] == before
    assert [b for _, _, b in pcap.parse(path.read_bytes())[1]] == after


def test_sighup_starts_a_new_file_where_the_old_was_moved_away(tmp_path):
    """reopen() after log rotation moved PATH away: a new PATH gets the later frames;
    a file still in place is kept as it is (reopening would truncate it)."""
    path = tmp_path / "cap.pcap"
    port = PcapPort(str(path))
    port.send(frames(1, size=70)[0])
    port.reopen()  # still in place: nothing happens
    port.send(frames(1, size=71)[0])
    port._flush()
    wait_for(lambda: path.stat().st_size > pcap.GLOBAL_HEADER_SIZE + 2 * 16 + 70)
    os.rename(path, tmp_path / "moved.pcap")
    port.reopen()
    port.send(frames(1, size=72)[0])
    port.close()
    moved = [len(b) for _, _, b in pcap.parse((tmp_path / "moved.pcap").read_bytes())[1]]
    assert moved == [70, 71]
    assert [len(b) for _, _, b in pcap.parse(path.read_bytes())[1]] == [72]


def wait_for(predicate, timeout=5):
    with gevent.Timeout(timeout, AssertionError("the writer did not catch up")):
        while not predicate():
            gevent.sleep(0.01)


def fifo_with_idle_reader(tmp_path):
    path = tmp_path / "fifo"
    os.mkfifo(path)
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    return path, reader


@pytest.mark.timeout(20, method="signal")  # a send that blocked in a write would hang here
def test_a_stalled_reader_costs_frames_not_the_hub(tmp_path):
    """When the writer cannot keep up, frames for the capture are dropped and counted;
    send() never blocks (a blocking write to the stalled FIFO would hang the test
    until its signal-based timeout fails it)."""
    path, reader = fifo_with_idle_reader(tmp_path)
    port = PcapPort(str(path), backlog_limit=256 * 1024)
    assert stat.S_ISFIFO(os.stat(path).st_mode)
    ticks = []
    ticker = gevent.spawn(lambda: [ticks.append(1) or gevent.sleep(0) for _ in range(10**7)])
    results = [port.send(f) for f in frames(20000, size=200)]
    gevent.sleep(0)
    ticker.kill()
    assert results.count(False) > 0
    assert port.drops["tx_backlog"] == results.count(False) == port.counters.tx_dropped
    assert ticks
    os.close(reader)  # the reader leaves: the capture ends cleanly
    port.close(timeout=5)


def test_a_closed_pipe_ends_the_capture_cleanly(tmp_path):
    """EPIPE (tcpdump exited) ends the capture: later frames are refused, nothing raises."""
    path, reader = fifo_with_idle_reader(tmp_path)
    port = PcapPort(str(path))
    os.close(reader)
    with gevent.Timeout(5, AssertionError("the capture never noticed the closed pipe")):
        while port._ended is None:
            port.send(bytes(60))
            port._flush()
            gevent.sleep(0.01)
    assert port.send(bytes(60)) is False
    port.close()


def test_bad_options_are_refused(tmp_path):
    """keep without rotate, a tiny rotate, a stream that rotates: refused."""
    with pytest.raises(ValueError):
        PcapPort(str(tmp_path / "a"), keep=2)
    with pytest.raises(ValueError):
        PcapPort(str(tmp_path / "b"), rotate=10)
    with pytest.raises(ValueError):
        PcapPort("-", rotate=1 << 20)
    with pytest.raises(EndpointUnavailable, match="cannot create"):
        PcapPort(str(tmp_path / "no" / "such" / "dir.pcap"))


def test_pcap_endpoint_syntax():
    """pcap:PATH and pcap:- with snaplen, rotate (with size suffixes) and keep."""
    spec = parse_endpoint("pcap:/tmp/x.pcap?snaplen=96&rotate=10M&keep=4")
    assert (spec.kind, spec.name) == ("pcap", "/tmp/x.pcap")
    assert spec.options == {"snaplen": 96, "rotate": 10 << 20, "keep": 4}
    assert parse_endpoint("pcap:-").name == "-"
    for bad, match in (
        ("pcap:", "names no file"),
        ("pcap:x?keep=2", "needs rotate"),
        ("pcap:-?rotate=1M", "cannot rotate"),
        ("pcap:x?rotate=lots", "expected a size"),
        ("pcap:x?snaplen=0", "expected a whole number from 1 to 262144"),
    ):
        with pytest.raises(EndpointSyntaxError, match=match):
            parse_endpoint(bad)
