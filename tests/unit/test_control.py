"""The control socket and reloads, over real unix and UDP sockets on loopback (no root).

A forwarder between two ``udp://`` endpoints on 127.0.0.1 runs on the hub; the
tests talk to its control socket with the same client ``--command`` uses (in a
thread: the client blocks), change its configuration file and reload it.
"""

import json
import os
import socket
import textwrap

import gevent
import pytest
import structlog.testing

from greentap.app import startup
from greentap.app.control import MAX_LINE, ControlServer, ask, request_for
from greentap.app.daemon import Daemon
from greentap.app.forwarder import Forwarder
from greentap.app.live import LiveEndpoints
from greentap.core.endpoints import parse_endpoint
from greentap.errors import EndpointUnavailable, UsageError
from greentap.ports import open_ports


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def udp_table(name, port, peer):
    return (f'[[endpoint]]\nname = "{name}"\nkind = "udp"\nremote = "127.0.0.1:{peer}"\n'
            f'local = "127.0.0.1:{port}"\n')  # fmt: skip


class Running:
    """A forwarder started from a configuration file, with its control socket."""

    def __init__(self, tmp_path, text):
        self.tmp = tmp_path
        self.path = str(tmp_path / "tf.toml")
        self.write(text)
        self.options = startup.settle({"config": self.path,
                                       "control": str(tmp_path / "ctl.sock")})  # fmt: skip
        self.log = structlog.testing.CapturingLogger()
        specs = [parse_endpoint(t) for t in self.options.endpoints]
        self.ports = open_ports(specs)
        self.forwarder = Forwarder(self.ports, keep_warm=None, monitor_interval=0)
        self.live = LiveEndpoints(
            self.forwarder,
            [(n, t, p, "file") for (n, t), p in zip(self.options.named(), self.ports, strict=True)],
            config_path=self.path, options=self.options, log=self.log,
            file_options=self.options.file_options,
        )  # fmt: skip
        self.daemon = Daemon(self.forwarder, self.options, self.log, self.live)
        self.forwarder.start()
        self.daemon.start()

    def write(self, text):
        with open(self.path, "w") as f:
            f.write(textwrap.dedent(text))

    def ask(self, *words):
        """What ``--command WORDS`` prints, run in a thread as the client blocks."""
        pool = gevent.get_hub().threadpool
        return pool.apply(ask, (self.options.control, request_for(list(words))))

    def raw(self, data):
        """Send raw bytes, half-close, read every reply line."""

        def talk():
            s = socket.socket(socket.AF_UNIX)
            s.connect(self.options.control)
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            out = b""
            while chunk := s.recv(65536):
                out += chunk
            s.close()
            return [json.loads(line) for line in out.splitlines()]

        return gevent.get_hub().threadpool.apply(talk)

    def close(self):
        self.forwarder.stop()
        self.daemon.close()


@pytest.fixture
def running(tmp_path):
    a, b, c, d = (free_udp_port() for _ in range(4))
    run = Running(tmp_path, udp_table("a", a, b) + udp_table("b", c, d))
    run.ports_free = [free_udp_port() for _ in range(4)]
    yield run
    run.close()


def test_every_command_round_trips(running, tmp_path):
    """list, stats, macs, help, add, remove: each reply one JSON object with ok true and
    what was asked; an endpoint added shows in list with origin control, and is gone
    after remove; the socket file is 0600."""
    assert oct(os.stat(running.options.control).st_mode & 0o777) == "0o600"
    status, reply = running.ask("list")
    assert status == 0 and [e["name"] for e in reply["endpoints"]] == ["a", "b"]
    assert all(e["origin"] == "file" for e in reply["endpoints"])
    status, reply = running.ask("stats")
    assert status == 0 and reply["stats"]["mode"] == "wire"
    assert running.ask("macs") == (0, {"ok": True, "macs": []})
    assert set(running.ask("help")[1]["commands"]) >= {"add", "remove", "reload", "list"}
    cap = str(tmp_path / "cap.pcap")
    status, reply = running.ask("add", "cap", f"pcap:{cap}")
    assert status == 0 and reply["added"]["kind"] == "pcap" and os.path.exists(cap)
    assert "cap" in [e["name"] for e in running.ask("list")[1]["endpoints"]]
    assert running.forwarder.mirrors and running.forwarder.mirrors[0].kind == "pcap"
    status, reply = running.ask("remove", "cap")
    assert status == 0 and reply == {"ok": True, "removed": "cap"}
    assert running.forwarder.mirrors == []
    assert [e["name"] for e in running.ask("list")[1]["endpoints"]] == ["a", "b"]


def test_errors_come_back_as_error_objects_with_the_exit_status(running):
    """A name already running, an unknown one, a bad endpoint, a port already in use:
    ok false, the error's type and the status --command exits with."""
    status, reply = running.ask("add", "a", "pcap:/tmp/x.pcap")
    assert status == 2 and "already running" in reply["error"]
    status, reply = running.ask("remove", "zz")
    assert (status, reply["type"]) == (2, "UsageError")
    status, reply = running.ask("add", "q", "warp:x")
    assert status == 2 and "unknown endpoint type" in reply["error"]
    busy = running.forwarder.ports[0].describe()  # a's local port, taken
    local = running.options.named()[0][1].split("local=")[1]
    status, reply = running.ask("add", "q", f"udp://127.0.0.1:9?local={local}")
    assert status == 4 and reply["type"] == "EndpointUnavailable", (busy, reply)
    with pytest.raises(UsageError, match="usage: --command add NAME ENDPOINT"):
        request_for(["add", "x"])
    status, reply = running.ask("add", "f", "fd:0")
    assert status == 2 and "given at start only" in reply["error"]
    status, reply = running.ask("add", "n" * 65, "pcap:/tmp/x.pcap")
    assert status == 2 and "1 to 64 letters" in reply["error"]


def test_garbage_requests_get_error_objects_and_the_connection_stays(running):
    """Not JSON, not an object, an unknown command, a missing argument: each an error
    object, in order, and a good request after them on the same connection is served."""
    replies = running.raw(
        b'garbage\n[1, 2]\n{"command": 5}\n{"command": "remove"}\n\xff\xfe\n\n'
        b'{"command": "list", "id": 7}\n{"command": []}\n{"command": {}}\n'
        + b"[" * 3000
        + b'\n{"command": "help", "id": 1e999}\n{"command": "help", "id": "x"}\n'
    )
    assert [r["ok"] for r in replies] == [False] * 5 + [True] + [False] * 3 + [True] * 2
    assert "unknown command" in replies[6]["error"] and "not JSON" in replies[8]["error"]
    assert "id" not in replies[9] and replies[10]["id"] == "x"  # Infinity is not JSON
    assert "not JSON" in replies[0]["error"] and "JSON object" in replies[1]["error"]
    assert "unknown command" in replies[2]["error"]
    assert "needs 'name'" in replies[3]["error"]
    assert replies[5]["id"] == 7 and len(replies[5]["endpoints"]) == 2


def test_an_over_long_request_is_refused_and_the_service_goes_on(running):
    """A line over 64 KiB: one error object, the connection closed; the next client is
    served."""
    replies = running.raw(b"x" * (MAX_LINE + 70000))
    assert len(replies) == 1 and "longer than" in replies[0]["error"]
    assert running.ask("list")[0] == 0


def test_reload_adds_removes_changes_and_leaves_the_rest_alone(running):
    """A reload applies the difference: b unchanged (the same port object, not
    reopened), a changed (reopened on a new port), c added, a control-added endpoint
    left alone; a file with an error is refused whole and nothing changes."""
    p = running.ports_free
    b_port = running.live.named["b"].port
    a_port = running.live.named["a"].port
    b_text = running.live.named["b"].text
    cap = str(running.tmp / "c.pcap")
    assert running.ask("add", "extra", f"pcap:{cap}")[0] == 0
    b_table = udp_table("b", *[int(x.rsplit(":", 1)[1]) for x in
                               (b_text.split("local=")[1], b_text.split("?")[0])])  # fmt: skip
    running.write(udp_table("a", p[0], p[1]) + b_table + udp_table("c", p[2], p[3]))
    status, reply = running.ask("reload")
    assert status == 0, reply
    assert reply["reloaded"]["changed"] == ["a"] and reply["reloaded"]["added"] == ["c"]
    assert reply["reloaded"]["unchanged"] == ["b"] and reply["reloaded"]["removed"] == []
    assert running.live.named["b"].port is b_port
    assert running.live.named["a"].port is not a_port and a_port not in running.forwarder.ports
    assert set(running.live.named) == {"a", "b", "c", "extra"}
    assert running.forwarder.mode == "switch"
    # Remove c: back to a wire of two (and the mirror).
    running.write(udp_table("a", p[0], p[1]) + b_table)
    assert running.ask("reload")[1]["reloaded"]["removed"] == ["c"]
    assert running.forwarder.mode == "wire"
    before = dict(running.live.named)
    running.write(udp_table("a", p[0], p[1]) + 'mtu = "x"\n')
    status, reply = running.ask("reload")
    assert status == 2 and "tf.toml:" in reply["error"] and "key 'mtu'" in reply["error"]
    assert running.live.named == before
    assert any(e["event"] == "reload_refused" for e in
               [c.kwargs | {"event": c.args[0]} for c in running.log.calls])  # fmt: skip


def test_a_reload_without_a_file_and_changes_with_workers_are_refused(tmp_path):
    """Without --config, reload is an error object; a service whose endpoints cannot
    change (workers: no LiveEndpoints) refuses add, remove and reload but lists."""
    a, b, c, d = (free_udp_port() for _ in range(4))
    ports = open_ports([parse_endpoint(f"udp://127.0.0.1:{b}?local=127.0.0.1:{a}"),
                        parse_endpoint(f"udp://127.0.0.1:{d}?local=127.0.0.1:{c}")])  # fmt: skip
    fwd = Forwarder(ports, keep_warm=None, monitor_interval=0)
    log = structlog.testing.CapturingLogger()
    live = LiveEndpoints(fwd, [(p.name, p.name, p, "command line") for p in ports],
                         config_path=None, options=startup.Options(), log=log)  # fmt: skip
    server = ControlServer(str(tmp_path / "c.sock"), fwd, live, uid=None, log=log)
    assert server.handle(b'{"command": "reload"}')["error"].startswith("nothing to reload")
    fixed = ControlServer(str(tmp_path / "d.sock"), fwd, None, uid=None, log=log)
    assert fixed.handle(b'{"command": "remove", "name": "x"}')["error"].endswith("--workers")
    assert len(fixed.handle(b'{"command": "list"}')["endpoints"]) == 2
    for s in (server, fixed):
        s.close()
    fwd.stop()


def test_the_socket_path_is_refused_when_in_use_and_cleaned_at_close(tmp_path):
    """A second server on a live socket path fails (exit 4: in use); a stale file is
    replaced; close() removes the file; a client of no socket gets EndpointUnavailable."""
    log = structlog.testing.CapturingLogger()
    path = str(tmp_path / "s.sock")
    first = ControlServer(path, None, None, uid=None, log=log)
    gevent.spawn(first.serve)
    with pytest.raises(EndpointUnavailable, match="already listens") as caught:
        ControlServer(path, None, None, uid=None, log=log)
    assert caught.value.errno == 98  # EADDRINUSE: exit status 4
    first.close()
    assert not os.path.exists(path)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # a file nothing listens on
    ControlServer(path, None, None, uid=None, log=log).close()
    with pytest.raises(EndpointUnavailable, match="cannot reach the control socket"):
        ask(path, {"command": "list"})


def test_an_endpoint_the_file_takes_over_is_the_files_even_when_retuned(running):
    """An endpoint added through the control socket that the file comes to name with only
    another rate limit is retuned in place and becomes the file's: a later reload that no
    longer names it removes it."""
    cap = str(running.tmp / "t.pcap")
    p = running.ports_free
    assert running.ask("add", "t", f"udp://127.0.0.1:{p[1]}?local=127.0.0.1:{p[0]}")[0] == 0
    with open(running.path) as f:
        a, b = f.read().split("[[endpoint]]")[1:]
    base = "[[endpoint]]" + a + "[[endpoint]]" + b
    running.write(base + f'[[endpoint]]\nname = "t"\nurl = "udp://127.0.0.1:{p[1]}?local='
                  f'127.0.0.1:{p[0]}&rate=100"\n')  # fmt: skip
    reply = running.ask("reload")[1]["reloaded"]
    assert reply["in_place"] == ["t"] and running.live.named["t"].origin == "file"
    assert running.live.named["t"].port.policer.rate == 100
    running.write(base)
    assert running.ask("reload")[1]["reloaded"]["removed"] == ["t"]
    assert "t" not in running.live.named and not os.path.exists(cap)
