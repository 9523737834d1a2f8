"""``tap-forward``: forward Ethernet frames between endpoints.

A thin shell over :class:`greentap.forwarder.Forwarder`: parse arguments,
configure structlog, open the ports, serve until SIGINT/SIGTERM, and turn
every error into one line on stderr and a documented exit status.
"""

import argparse
import errno
import sys
import time

import structlog

import greentap
from greentap.endpoints import SYNTAX, parse_endpoint, parse_hostport
from greentap.errors import (
    EndpointSyntaxError,
    EndpointUnavailable,
    PrivilegeDropFailed,
    SetTapAttributes,
    TapError,
    TapNameError,
)

PROG = "tap-forward"

# Exit statuses (also in --help and the README).
EXIT_OK = 0  # stopped by SIGINT/SIGTERM, or --demo succeeded
EXIT_INTERNAL = 1  # a bug: please report it
EXIT_USAGE = 2  # bad arguments: syntax, names, fewer than two endpoints
EXIT_PERMISSION = 3  # not privileged (CAP_NET_ADMIN), or --user failed
EXIT_BUSY = 4  # device busy or conflicting with an existing one
EXIT_SYSTEM = 5  # anything else the system refused (no /dev/net/tun, ...)

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
  vxlan://REMOTE[:PORT]?vni=N[&remote=HOST[:PORT]...][&local=ADDR:PORT]
                         a VXLAN tunnel (RFC 7348, UDP port 4789 by default) to
                         one or more remote VTEPs: the Linux kernel's vxlan,
                         Open vSwitch, another tap-forward. VXLAN adds 50 bytes:
                         give the TAPs an MTU of the path's minus 50 (--mtu).
  udp://REMOTE:PORT[?local=ADDR:PORT]
                         raw frames, one per datagram (QEMU's -netdev dgram)
                         IPv6 addresses go in brackets: udp://[::1]:5555
  pcap:PATH[?snaplen=N&rotate=SIZE&keep=N] | pcap:-
                         write-only: every frame forwarded, as a pcap file
                         (rotated at SIZE such as 100M, keeping N files) or
                         a pcap stream on stdout (logs stay on stderr)
  ...?rate=PPS[&burst=N] on any endpoint but pcap (&rate= after other options):
                         police what it receives: frames beyond PPS a second
                         (bursts of N, default PPS/10) are dropped and counted
                         as rx_rate_limited

examples:
  {PROG} --demo                 see it work: two namespaces, a ping across
  {PROG} tap0 tap1              a wire between two TAPs
  {PROG} tap0 tap1 tap2         a learning switch between three TAPs
  {PROG} --stats 5 --log-format json tap:vm1 tap:vm2
  {PROG} --mtu 1450 tap0 'vxlan://192.0.2.7?vni=42'      a TAP into a VXLAN segment
  {PROG} tap0 'udp://127.0.0.1:5555?local=127.0.0.1:5556' a QEMU guest's dgram netdev
  {PROG} tap0 tap1 pcap:- | tcpdump -n -r -    watch the traffic live
  {PROG} --metrics 9100 tap0 tap1 'pcap:/var/tmp/sw.pcap?rotate=100M&keep=5'
  {PROG} --user nobody tap0 tap1        open as root, then forward as nobody
  {PROG} 'tap0?rate=20000' tap1 tap2    a switch; at most 20,000 frames/s from tap0

signals:
  SIGINT, SIGTERM  stop: flush captures, log final counters, exit 0
  SIGHUP           reopen: a new pcap file where the old one was moved away
                   (log rotation), look at every endpoint now; keeps forwarding

exit status:
  0 stopped by SIGINT/SIGTERM (or --demo succeeded)   1 internal error
  2 usage: bad syntax, bad name, fewer than two endpoints
  3 not permitted (needs CAP_NET_ADMIN), or --user could not be applied
  4 device busy or conflicting
  5 other system error (e.g. /dev/net/tun missing)
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line, not argparse's usage block.
        self.exit(EXIT_USAGE, f"{PROG}: error: {message} (see --help)\n")


def build_parser():
    """Return the argument parser of ``tap-forward``."""
    p = _Parser(
        prog=PROG,
        description="Forward Ethernet frames between TAP interfaces, VXLAN tunnels and "
        "UDP sockets: two endpoints make a wire, three or more a MAC learning switch.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("endpoints", nargs="*", metavar="ENDPOINT", help=SYNTAX)
    p.add_argument(
        "--stats",
        type=_non_negative_float,
        default=10.0,
        metavar="SECONDS",
        help="log per-endpoint counters every SECONDS (default 10; 0 = off)",
    )
    p.add_argument(
        "--log-format",
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
    p.add_argument("--mtu", type=_mtu, metavar="N", help="set the MTU of the TAPs it opens")
    p.add_argument(
        "--offload",
        choices=("auto", "on", "off"),
        default="auto",
        help="pass checksum/segmentation offloads (virtio-net headers, 64 KiB frames) "
        "between TAPs: auto (the default) = on when every forwarding endpoint is a TAP, "
        "off otherwise (tunnels carry finished frames); about 8x the TCP throughput",
    )
    p.add_argument(
        "--metrics",
        type=_listen_address,
        metavar="[ADDR:]PORT",
        help="serve Prometheus metrics over HTTP (address default 127.0.0.1)",
    )
    p.add_argument(
        "--user",
        metavar="USER",
        help="once the endpoints are open, drop root to USER (fails closed)",
    )
    p.add_argument(
        "--group",
        metavar="GROUP",
        help="with --user: the group to run as (default: USER's primary group)",
    )
    p.add_argument(
        "--max-macs",
        type=_positive_int,
        default=8192,
        metavar="N",
        help="bound of the MAC learning table (default 8192)",
    )
    p.add_argument(
        "--aging",
        type=_positive_float,
        default=300.0,
        metavar="SECONDS",
        help="forget a MAC address not seen for SECONDS (default 300)",
    )
    p.add_argument(
        "--keep-warm",
        type=_non_negative_float,
        default=1.0,
        metavar="MS",
        help="while frames flow (and 5 s after), wake every MS milliseconds so the CPU "
        "stays out of deep idle: a third of the latency (ping RTT 0.05 instead of "
        "0.17 ms here) for a few %% of a core while traffic flows; 0 = off (default 1)",
    )
    p.add_argument(
        "--workers",
        type=_workers,
        default=1,
        metavar="N",
        help="forward with N worker processes over multi-queue TAPs, one per core "
        "(every endpoint must be a TAP; default 1: one process)",
    )
    # Set by the supervisor of --workers for each worker; not for people.
    p.add_argument("--report-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    p.add_argument(
        "--demo",
        action="store_true",
        help="build two throw-away namespaces, forward between them, ping across, clean up",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {greentap.__version__}")
    return p


def _number(name, convert, accept, expectation):
    """An argparse type: ``convert`` the text, then require ``accept(value)``."""

    def parse(text):
        value = convert(text)
        if not accept(value):
            raise argparse.ArgumentTypeError(f"{expectation}, not {text}")
        return value

    parse.__name__ = name  # argparse names it in "invalid <name> value"
    return parse


_positive_int = _number("count", int, lambda v: v >= 1, "must be at least 1")
_positive_float = _number("seconds", float, lambda v: v > 0, "must be positive")
_non_negative_float = _number("seconds", float, lambda v: v >= 0, "must not be negative")
_mtu = _number("MTU", int, lambda v: 68 <= v <= 65535, "an MTU is between 68 and 65535")
_workers = _number("count", int, lambda v: 1 <= v <= 256, "must be between 1 and 256")


def _listen_address(text):
    if text.isdigit():
        host, port = "127.0.0.1", int(text)
    else:
        try:
            host, port = parse_hostport(text, what="--metrics address")
        except EndpointSyntaxError as exc:
            raise argparse.ArgumentTypeError(exc.reason) from None
    if port > 65535:
        raise argparse.ArgumentTypeError(f"invalid port {port}")
    return host, port


def configure_logging(fmt=None, level="info", stream=None):
    """Configure structlog for the command line: one event per line on ``stream``.

    Warnings are rate-limited per event and endpoint (at most 5 a minute; the
    next one says how many were held back), and a log stream that breaks (its
    reader went away) never stops the forwarder.  JSON lines carry
    ``timestamp`` (ISO 8601, UTC), ``level``, ``event`` and ``logger``, for a
    log shipper.

    Args:
        fmt: ``"console"`` or ``"json"``; None picks console on a terminal.
        level: the least severe level logged.
        stream: where logs go (default stderr, keeping stdout for data).

    Returns:
        The :class:`~greentap.logs.SafeStream` the lines go to.
    """
    import logging

    from greentap.logs import RateLimitWarnings, SafeStream

    stream = SafeStream(stream if stream is not None else sys.stderr)
    if log_format(fmt, stream) == "json":
        tail = [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        tail = [structlog.dev.ConsoleRenderer(colors=stream.isatty())]
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            RateLimitWarnings(),
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _add_logger_name,
            *tail,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        # One write per line (print() makes two): lines of --workers' processes
        # sharing stderr never interleave.
        logger_factory=structlog.WriteLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    return stream


def log_format(fmt, stream):
    """The log rendering asked for, or by default console on a terminal, json otherwise."""
    if fmt is not None:
        return fmt
    return "console" if stream.isatty() else "json"


def _add_logger_name(logger, method_name, event_dict):
    event_dict.setdefault("logger", PROG)
    return event_dict


def exit_status(exc):
    """Map an error to the documented exit status."""
    if isinstance(exc, (TapNameError, EndpointSyntaxError)):
        return EXIT_USAGE
    if isinstance(exc, PrivilegeDropFailed):
        return EXIT_PERMISSION
    if getattr(exc, "errno", None) in (errno.EPERM, errno.EACCES):
        return EXIT_PERMISSION
    if isinstance(exc, SetTapAttributes):
        return EXIT_BUSY
    return EXIT_SYSTEM


def fail(message, status):
    """Print one error line on stderr and return ``status``."""
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return status


def log_stats(log, clock=time.monotonic):
    """Return a callback that logs one line of counters and rates per endpoint.

    Rates (``rx_pps``, ``tx_pps``, ``rx_bps``, ``tx_bps``) are over the time
    since the previous report.
    """
    previous = {}

    def report(forwarder):
        now = clock()
        stats = forwarder.stats()
        for index, port in enumerate(stats["ports"]):
            rates = {}
            last = previous.get(index)
            if last is not None and now > last[0]:
                dt = now - last[0]
                for side in ("rx", "tx"):
                    packets = port[f"{side}_packets"] - last[1][f"{side}_packets"]
                    octets = port[f"{side}_bytes"] - last[1][f"{side}_bytes"]
                    rates[f"{side}_pps"] = round(packets / dt, 1)
                    rates[f"{side}_bps"] = round(octets * 8 / dt)
            previous[index] = (now, port)
            log.info("stats", **port, **rates)
        if stats["switch"] is not None:
            log.info("switch_stats", **stats["switch"]["mac_table"], runts=stats["switch"]["runts"])

    return report


def serve_metrics(forwarder, address, log):
    """Serve the forwarder's Prometheus metrics on ``address``.

    Raises:
        EndpointUnavailable: the address cannot be bound.
    """
    from greentap.metrics import make_wsgi_app

    try:
        host, port = forwarder.serve_wsgi(make_wsgi_app(forwarder), address)
    except OSError as exc:
        where = "{}:{}".format(*address)
        raise EndpointUnavailable.from_errno(
            None, exc.errno, f"cannot serve --metrics on {where}"
        ) from exc
    log.info("metrics_listening", url=f"http://{host}:{port}/metrics")


def run(args):
    """Open the endpoints and forward until a signal; return the exit status."""
    from greentap.forwarder import Forwarder
    from greentap.ports import open_ports

    if args.group is not None and args.user is None:
        raise EndpointSyntaxError(None, "--group needs --user")
    log = structlog.get_logger(PROG)
    specs = [parse_endpoint(text) for text in args.endpoints]
    carriers = {spec.kind for spec in specs if spec.kind != "pcap"}
    if args.offload == "on" and carriers != {"tap"}:
        raise EndpointSyntaxError(
            None, "--offload on needs every forwarding endpoint to be a TAP "
            "(fd:, VXLAN and UDP endpoints carry plain frames)",
        )  # fmt: skip
    offload = args.offload == "on" or (args.offload == "auto" and carriers == {"tap"})
    if args.workers > 1:
        if {spec.kind for spec in specs} != {"tap"}:
            raise EndpointSyntaxError(
                None, "--workers needs every endpoint to be a TAP (tap:NAME or NAME): "
                "tunnels, captures and fd: endpoints cannot be split into queues",
            )  # fmt: skip
        return run_workers(args, specs, offload, log)
    if args.worker_index is not None:
        log = log.bind(worker=args.worker_index)
    ports = open_ports(specs, mtu=args.mtu, logger=log, offload=offload)
    for port in ports:
        log.info("endpoint_opened", **port.describe())
    forwarder = Forwarder(
        ports,
        aging=args.aging,
        max_entries=args.max_macs,
        logger=log,
        keep_warm=args.keep_warm / 1000,
    )
    final_report = None
    try:
        forwarder.handle_signals()
        if args.metrics:
            serve_metrics(forwarder, args.metrics, log)
        if args.report_fd is not None:  # a worker of --workers; before the drop: it imports
            from greentap.workers import report_to

            final_report = report_to(forwarder, args.report_fd)
        if args.user is not None:
            from greentap.privileges import drop_privileges

            uid, gid = drop_privileges(args.user, args.group)
            log.info("privileges_dropped", user=args.user, uid=uid, gid=gid)
    except BaseException:
        forwarder.stop()  # fail closed: close everything opened, forward nothing
        raise
    report = log_stats(log)
    if args.stats:
        forwarder.every(args.stats, report)
    try:
        forwarder.serve_forever()
    finally:
        forwarder.stop()
        if final_report is not None:
            final_report()
        report(forwarder)
        log.info("stopped")
    return EXIT_OK


def run_workers(args, specs, offload, log):
    """``--workers N``: supervise N forwarder processes over multi-queue TAPs."""
    from greentap.workers import Supervisor

    worker_args = ["--log-format", log_format(args.log_format, sys.stderr),
                   "--log-level", args.log_level,
                   "--aging", repr(args.aging), "--max-macs", str(args.max_macs),
                   "--keep-warm", repr(args.keep_warm)]  # fmt: skip
    if args.user is not None:
        worker_args += ["--user", args.user]
        if args.group is not None:
            worker_args += ["--group", args.group]
    supervisor = Supervisor(
        specs, args.workers, worker_args=worker_args, mtu=args.mtu, offload=offload, log=log
    )
    report = log_stats(log)
    try:
        for info in supervisor.describe():
            log.info("endpoint_opened", **info)
        supervisor.handle_signals()
        if args.metrics:
            serve_metrics(supervisor, args.metrics, log)
        if args.user is not None:
            # Workers, which read every frame, drop to --user before the first;
            # the supervisor keeps root to start them again.
            log.info(
                "privileges_kept", reason="the supervisor restarts workers", workers_as=args.user
            )
        if args.stats:
            supervisor.every(args.stats, report)
        log.info(
            "forwarding",
            mode="wire" if len(specs) == 2 else "switch",
            endpoints=[q[0].name for q in supervisor.queues],
            workers=args.workers,
        )
        status = supervisor.serve_forever()
    finally:
        supervisor.close()
    report(supervisor)
    log.info("stopped")
    return status


def main(argv=None):
    """Entry point of ``tap-forward``; returns the exit status."""
    args = build_parser().parse_args(argv)
    configure_logging(args.log_format, args.log_level)
    try:
        if args.demo:
            if args.endpoints:
                return fail("--demo takes no endpoints", EXIT_USAGE)
            from greentap.demo import run_demo

            return run_demo()
        if len(args.endpoints) < 2:
            return fail(
                f"need at least two endpoints, got {len(args.endpoints)} (see --help)", EXIT_USAGE
            )
        return run(args)
    except TapError as exc:
        return fail(f"{type(exc).__name__}: {exc}", exit_status(exc))
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception as exc:  # one line, never a traceback; details at debug level
        structlog.get_logger(PROG).debug("internal_error", exc_info=True)
        return fail(f"internal error: {type(exc).__name__}: {exc}", EXIT_INTERNAL)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
