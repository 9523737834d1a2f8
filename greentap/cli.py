"""``tap-forward``: forward Ethernet frames between endpoints.

A thin shell: parse the arguments into :class:`~greentap.app.startup.Options`,
configure structlog, call :func:`greentap.app.startup.run` (or the demo),
and turn every error into one line on stderr and a documented exit status
(:mod:`greentap.app.exits`).  Nothing else happens here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import structlog

from greentap._version import __version__
from greentap.app import startup
from greentap.app.control import ask, request_for
from greentap.app.demo import run_demo
from greentap.app.exits import (
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_USAGE,
    STATUSES,
    exit_status,
    one_line,
)
from greentap.app.logs import PROG, configure_logging, quiet
from greentap.app.settings import SETTINGS
from greentap.core.endpoints import SYNTAX
from greentap.errors import GreentapError, UsageError

__all__ = ["build_parser", "main"]

EPILOG = f"""\
endpoints:
  NAME | tap:NAME        a TAP interface: attached if it exists (a persistent
                         device, left as it was found on exit), created
                         otherwise (brought up, removed on exit). NAME may be
                         a template such as tap%d.
  tap:NAME?netns=NS      the same, inside network namespace NS (ip netns name)
  fd:N                   an inherited /dev/net/tun fd already attached to a TAP,
                         e.g. received from a privileged helper (SCM_RIGHTS):
                         then tap-forward itself needs no CAP_NET_ADMIN
  packet:IFNAME[?netns=NS&qdisc=use]
                         an Ethernet interface that exists (a NIC, a veth, a
                         bond), through AF_PACKET: frames arriving on it are
                         read (it is promiscuous while attached), frames are
                         sent out of it. Needs CAP_NET_RAW. qdisc=use keeps its
                         traffic control for frames sent (default: bypassed)
  vxlan://REMOTE[:PORT]?vni=N[&remote=HOST[:PORT]...][&local=ADDR:PORT]
                         a VXLAN tunnel (RFC 7348, UDP port 4789 by default) to
                         one or more remote VTEPs: the Linux kernel's vxlan,
                         Open vSwitch, another tap-forward. VXLAN adds 50 bytes:
                         give the TAPs an MTU of the path's minus 50 (--mtu).
                         &srcport=MIN-MAX: outer source ports from a hash of
                         each inner flow, for ECMP underlays (RFC 7348 5)
  udp://REMOTE:PORT[?local=ADDR:PORT&mtu=N]
                         raw frames, one per datagram (QEMU's -netdev dgram);
                         mtu=N: the guest's MTU, no frame sent is larger
                         IPv6 addresses go in brackets: udp://[::1]:5555
  unix:PATH | tcp://HOST:PORT
                         a stream socket carrying QEMU's framing (each frame
                         behind a 4-byte length; -netdev stream or socket,
                         passt): connected to, and again with backoff (0.1 to
                         5 s) when the peer goes
  unix:PATH?listen[&mode=0660&group=G&max=N] | tcp://[ADDR]:PORT?listen[&max=N]
                         listen: each VM that connects is a switch port until
                         it disconnects (max=N at once, default 64). The
                         socket file is made 0600 unless mode=/group= say
                         otherwise and removed at exit; TCP listens on
                         127.0.0.1 unless given an address
  pcap:PATH[?snaplen=N&rotate=SIZE&keep=N] | pcap:-
                         write-only: every frame forwarded, as a pcap file
                         (rotated at SIZE such as 100M, keeping N files) or
                         a pcap stream on stdout (logs stay on stderr)
  ...?rate=PPS[&burst=N] on any endpoint but pcap (&rate= after other options):
                         police what it receives: frames beyond PPS a second
                         (bursts of N, default PPS/10) are dropped and counted
                         as rx_rate_limited
  ...?vlan=N | ...?trunk=N,M,A-B[&native=N] on any endpoint but pcap:
                         802.1Q: an access port of VLAN N (untagged frames are
                         VLAN N; tagged ones arriving are dropped) or a trunk
                         (frames of those VLANs tagged, others dropped; the
                         native VLAN untagged). MAC learning and floods per
                         VLAN; endpoints without either pass tags as they are

examples:
  {PROG} --demo                 see it work: two namespaces, a ping across
  {PROG} tap0 tap1              a wire between two TAPs
  {PROG} tap0 tap1 tap2         a learning switch between three TAPs
  {PROG} tap:vm1 packet:eth1    a VM's TAP bridged to a NIC
  {PROG} --stats 5 --log-format json tap:vm1 tap:vm2
  {PROG} --mtu 1450 tap0 'vxlan://192.0.2.7?vni=42'      a TAP into a VXLAN segment
  {PROG} tap0 'udp://127.0.0.1:5555?local=127.0.0.1:5556' a QEMU guest's dgram netdev
  {PROG} tap0 'unix:/run/vms.sock?listen'   a switch QEMU guests join and leave:
      qemu-system-x86_64 ... -netdev stream,id=n0,server=off,addr.type=unix,\\
          addr.path=/run/vms.sock -device virtio-net-pci,netdev=n0
  {PROG} tap0 tap1 pcap:- | tcpdump -n -r -    watch the traffic live
  {PROG} --metrics 9100 tap0 tap1 'pcap:/var/tmp/sw.pcap?rotate=100M&keep=5'
  {PROG} --user nobody tap0 tap1        open as root, then forward as nobody
  {PROG} 'tap0?rate=20000' tap1 tap2    a switch; at most 20,000 frames/s from tap0
  {PROG} --config /etc/tap-forward.toml --control /run/tap-forward/control.sock
                                        as a service (systemd Type=notify)
  {PROG} --control /run/tap-forward/control.sock --command add vm3 tap:vm3
                                        ask it: list, stats, macs, add, remove, reload

config file (TOML; every option by its long name, endpoints as tables):
  mtu = 1450
  [[endpoint]]
  name = "vm1"
  kind = "tap"                          tap: device, packet: interface, vxlan/udp:
  device = "tap-vm1"                    remote, unix/pcap: path, tcp: address, fd: fd;
  [[endpoint]]                          other keys are the ?key=value options
  name = "uplink"
  url = "vxlan://198.18.0.2?vni=42"     or the endpoint as on the command line

signals:
  SIGINT, SIGTERM  stop: flush captures, log final counters, exit 0
  SIGHUP           reopen: a new pcap file where the old one was moved away
                   (log rotation), look at every endpoint now; keeps forwarding;
                   with --config, then reload the file: endpoints added, removed
                   and changed are applied, unchanged ones untouched; a file with
                   an error is refused and the running setup stays

systemd:
  with NOTIFY_SOCKET set (Type=notify): READY=1 once every endpoint forwards,
  STATUS= lines, WATCHDOG=1 at half of WatchdogSec, RELOADING=1, STOPPING=1

exit status:
""" + "\n".join(f"  {status} {meaning}" for status, meaning in STATUSES.items())


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, not argparse's usage block.
        self.exit(EXIT_USAGE, f"{PROG}: error: {one_line(message)} (see --help)\n")

    def _print_message(self, message: str, file: Any = None) -> None:
        # `tap-forward --help | head -1`: a reader gone early is not an error
        # (argparse ignores it from Python 3.11 on; 3.10 raises).
        try:
            super()._print_message(message, file)
        except OSError:
            quiet(file or sys.stderr)


class _Version(argparse.Action):
    """``--version``: the version, then which relay loop runs and why."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kw: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the version and relay loop")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> NoReturn:
        print(
            f"{PROG} {__version__}\nrelay loop: {startup.describe_relay_loop()}\n"
            f"software offloads: {startup.describe_offloads()}"
        )
        parser.exit(EXIT_OK)


def _number(name: str, parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type: ``parse`` the text; its ValueError says what was expected."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected {exc}, not {text!r}") from None

    convert.__name__ = name  # argparse names it in "invalid <name> value"
    return convert


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``tap-forward``."""
    p = _Parser(
        prog=PROG,
        description="Forward Ethernet frames between TAP interfaces, existing interfaces, "
        "VXLAN and UDP tunnels, VMs' stream sockets and pcap captures: two endpoints make "
        "a wire, three or more a MAC learning switch.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # `--work 2` must not silently mean --workers
    )
    p.add_argument("endpoints", nargs="*", metavar="ENDPOINT", help=SYNTAX)
    p.add_argument(
        "--stats",
        type=_number("seconds", SETTINGS["stats"].parse),
        default=10.0,
        metavar="SECONDS",
        help="log per-endpoint counters every SECONDS (default 10; 0 = off)",
    )
    p.add_argument(
        "--log-format",
        type=str.lower,
        choices=("console", "json"),
        default=None,
        help="log rendering (default: console on a terminal, json otherwise)",
    )
    p.add_argument(
        "--log-level",
        default="info",
        type=str.lower,
        choices=("debug", "info", "warning", "error", "critical"),
        help="least severe level logged (default info)",
    )
    p.add_argument(
        "--mtu",
        type=_number("MTU", SETTINGS["mtu"].parse),
        metavar="N",
        help="set the MTU of the TAPs it opens",
    )
    p.add_argument(
        "--offload",
        type=str.lower,
        choices=("auto", "on", "off"),
        default="auto",
        help="pass checksum/segmentation offloads (virtio-net headers, 64 KiB frames): "
        "auto (the default) = on with a TAP or packet: endpoint, unless an fd: endpoint "
        "(plain frames) is among them; tunnels cut super-frames with UDP GSO and merge "
        "what they receive; about 8x the TCP throughput",
    )
    p.add_argument(
        "--metrics",
        type=_number("address", SETTINGS["metrics"].parse),
        metavar="[ADDR:]PORT",
        help="serve Prometheus metrics over HTTP (address default 127.0.0.1)",
    )
    p.add_argument(
        "--user",
        type=_number("name", SETTINGS["user"].parse),
        metavar="USER",
        help="once the endpoints are open, drop root to USER (fails closed)",
    )
    p.add_argument(
        "--group",
        type=_number("name", SETTINGS["group"].parse),
        metavar="GROUP",
        help="with --user: the group to run as (default: USER's primary group)",
    )
    p.add_argument(
        "--max-macs",
        type=_number("count", SETTINGS["max-macs"].parse),
        default=8192,
        metavar="N",
        help="bound of the MAC learning table (default 8192)",
    )
    p.add_argument(
        "--aging",
        type=_number("seconds", SETTINGS["aging"].parse),
        default=300.0,
        metavar="SECONDS",
        help="forget a MAC address not seen for SECONDS (default 300)",
    )
    p.add_argument(
        "--keep-warm",
        type=_number("milliseconds", SETTINGS["keep-warm"].parse),
        default=1.0,
        metavar="MS",
        help="while frames flow (and 5 s after), wake every MS milliseconds so the CPU "
        "stays out of deep idle: a third of the latency (ping RTT 0.05 instead of "
        "0.17 ms here) for a few %% of a core while traffic flows; 0 = off (default 1)",
    )
    p.add_argument(
        "--workers",
        type=_number("count", SETTINGS["workers"].parse),
        default=1,
        metavar="N",
        help="forward with N worker processes over multi-queue TAPs, one per core "
        "(every endpoint must be a TAP; default 1: one process)",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="read options and endpoints from a TOML file (see examples/tap-forward.toml); "
        "options on the command line override it; SIGHUP or --command reload re-reads "
        "it and applies the difference",
    )
    p.add_argument(
        "--control",
        type=_number("path", SETTINGS["control"].parse),
        metavar="PATH",
        help="serve a control socket at PATH (0600; root and --user only): JSON lines "
        "to list endpoints, read stats and the MAC table, add, remove, reload",
    )
    p.add_argument(
        "--command",
        nargs="+",
        metavar="WORD",
        help="with --control: ask the tap-forward serving PATH and print its JSON reply: "
        "list | stats | macs | add NAME ENDPOINT | remove NAME | reload | help",
    )
    p.add_argument(
        "--demo",
        action="store_true",
        help="build two throw-away namespaces, forward between them, ping across, clean up",
    )
    p.add_argument("--version", action=_Version)
    return p


def fail(message: str, status: int) -> int:
    """Print one error line on stderr and return ``status``."""
    print(f"{PROG}: error: {one_line(message)}", file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``tap-forward``; returns the exit status."""
    parser = build_parser()
    # Options given are told from defaults, so that a --config file's hold
    # unless the command line says otherwise: argparse leaves preset ones be.
    unset = object()
    preset = {a.dest: unset for a in parser._actions if a.dest != argparse.SUPPRESS}
    args = parser.parse_args(argv, argparse.Namespace(**preset))
    given = {k: v for k, v in vars(args).items() if v is not unset}
    if "group" in given and "user" not in given and "config" not in given:
        parser.error("--group needs --user")
    if given.get("demo") and given.get("endpoints"):
        parser.error("--demo takes no endpoints")
    if "command" in given and "control" not in given:
        parser.error("--command needs --control PATH")
    if "command" in given and given.get("endpoints"):
        parser.error("--command takes no endpoints (add one with: --command add NAME ENDPOINT)")
    try:
        if "command" in given:
            status, reply = ask(given["control"], request_for(given["command"]))
            print(json.dumps(reply, indent=2, default=str))
            return status
        fields = {f.name for f in dataclasses.fields(startup.Options)}
        options = startup.settle({k: v for k, v in given.items() if k in fields})
    except GreentapError as exc:
        return fail(f"{'' if isinstance(exc, UsageError) else type(exc).__name__ + ': '}{exc}",
                    exit_status(exc))  # fmt: skip
    configure_logging(options.log_format, options.log_level)
    try:
        if given.get("demo"):
            return run_demo()
        return startup.execute(startup.plan(options), structlog.get_logger(PROG))
    except GreentapError as exc:
        kind = "" if type(exc) is UsageError else f"{type(exc).__name__}: "
        return fail(f"{kind}{exc}", exit_status(exc))
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception as exc:  # one line, never a traceback; details at debug level
        structlog.get_logger(PROG).debug("internal_error", exc_info=True)
        return fail(f"internal error: {type(exc).__name__}: {exc}", EXIT_INTERNAL)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
