"""What ``tap-forward`` does once its arguments are understood: the start-up policy.

:class:`Options` holds everything the command can be told (the command line
fills it; a worker builds it from its supervisor's config).  :func:`run`
checks it whole before anything opens, decides the offload and workers
policy, opens the endpoints, and serves until a signal — one
:class:`~greentap.app.forwarder.Forwarder`, or a
:class:`~greentap.app.supervisor.Supervisor` of ``--workers`` processes,
both through the same :func:`serve`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from greentap.app import config
from greentap.app.daemon import Daemon
from greentap.app.exits import EXIT_OK
from greentap.app.forwarder import Forwarder
from greentap.app.live import LiveEndpoints
from greentap.app.privileges import drop_privileges, resolve
from greentap.app.service import Service
from greentap.app.stats import StatsReporter
from greentap.core import _accel
from greentap.core.endpoints import EndpointSpec, identity, parse_endpoint
from greentap.errors import UsageError
from greentap.green import relay
from greentap.ports import open_ports

__all__ = [
    "Options",
    "Plan",
    "describe_relay_loop",
    "execute",
    "offload_policy",
    "plan",
    "run",
    "serve",
    "settle",
]


@dataclasses.dataclass
class Options:
    """Everything ``tap-forward`` can be told.

    Attributes:
        endpoints: the endpoint descriptions (two or more).
        stats: seconds between two ``stats`` log lines; 0 turns them off.
        log_format: ``"console"``, ``"json"`` or None (console on a terminal).
        log_level: the least severe level logged.
        mtu: the MTU to set on TAPs opened, or None.
        offload: ``"auto"``, ``"on"`` or ``"off"`` (see :func:`offload_policy`).
        metrics: ``(host, port)`` to serve Prometheus metrics on, or None.
        user, group: drop root to these once the endpoints are open.
        max_macs: bound of the MAC table.
        aging: seconds before a learned MAC address is forgotten.
        keep_warm: milliseconds between hub ticks while frames flow; 0 = off.
        workers: forwarder processes over multi-queue TAPs.
        config: the configuration file the options and endpoints came from
            (what a reload reads again), or None.
        control: the control socket's path, or None.
        names: the endpoints' names (a file's ``name`` keys); empty: each
            endpoint's text is its name.
        file_options: the options the file set (a reload says which changed).
    """

    endpoints: Sequence[str] = ()
    stats: float = 10.0
    log_format: str | None = None
    log_level: str = "info"
    mtu: int | None = None
    offload: str = "auto"
    metrics: tuple[str, int] | None = None
    user: str | None = None
    group: str | None = None
    max_macs: int = 8192
    aging: float = 300.0
    keep_warm: float = 1.0
    workers: int = 1
    config: str | None = None
    control: str | None = None
    names: Sequence[str] = ()
    file_options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def named(self) -> list[tuple[str, str]]:
        """``[(name, text)]`` of every endpoint."""
        names = self.names or self.endpoints
        return list(zip(names, self.endpoints, strict=True))


def settle(given: dict[str, Any]) -> Options:
    """The options: the defaults, then a ``--config`` file's, then those ``given``.

    Args:
        given: the options given on the command line, by field (only those
            given; ``config`` names the file).

    Raises:
        ConfigError: the file has an error.
        UsageError: endpoints both in the file and on the command line.
    """
    path = given.get("config")
    if path is None:
        return Options(**given)
    loaded = config.load(path)
    if given.get("endpoints") and loaded.endpoints:
        raise UsageError(
            f"endpoints on the command line and in {path}: give them in one place "
            f"(a reload reads only the file)"
        )
    values: dict[str, Any] = {**loaded.options, "file_options": dict(loaded.options)}
    if loaded.endpoints:
        values["endpoints"] = [e.text for e in loaded.endpoints]
        values["names"] = [e.name for e in loaded.endpoints]
    values.update((k, v) for k, v in given.items() if k != "endpoints" or v)
    return Options(**values)


def describe_relay_loop() -> str:
    """Which loop moves a wire's frames: ``"C"`` or ``"pure Python (why)"``."""
    return "C" if relay.LOOP == "c" else f"pure Python ({relay.LOOP_REASON})"


def describe_offloads() -> str:
    """What does the software offloads' per-byte work (checksums, cutting, merging):
    ``"C"`` or ``"pure Python (why)"``."""
    return "C" if _accel.offload is not None else f"pure Python ({_accel.REASON})"


# Endpoint kinds whose frames carry a virtio-net header, so super-frames pass
# whole: natively (TAPs, packet:) or cut and merged in software (tunnels).
_SUPER_FRAME_CARRIERS = frozenset({"tap", "packet", "vxlan", "udp", "unix", "tcp"})
# Of those, the ones whose peer takes super-frames: offloads pay only with one.
_NATIVE_CARRIERS = frozenset({"tap", "packet"})


def offload_policy(specs: Sequence[EndpointSpec], offload: str) -> bool:
    """Decide whether endpoints are opened with offloads (frames behind a vnet header).

    ``auto`` turns them on when there is a TAP or a ``packet:`` interface and
    every endpoint that carries traffic can carry super-frames: TAPs and
    ``packet:`` natively, tunnels and streams (``unix:``, ``tcp://``) by
    cutting and merging in software; an ``fd:`` endpoint carries plain
    frames.  ``on`` insists.

    Raises:
        UsageError: ``on`` with an endpoint that cannot carry super-frames.
    """
    carriers = {spec.kind for spec in specs if spec.kind != "pcap"}
    whole = carriers <= _SUPER_FRAME_CARRIERS
    if offload == "on" and not whole:
        raise UsageError(
            "--offload on needs every forwarding endpoint to be a TAP, a packet: interface, "
            "a tunnel or a stream (fd: endpoints carry plain frames)"
        )
    return offload == "on" or (offload == "auto" and whole and bool(carriers & _NATIVE_CARRIERS))


@dataclasses.dataclass(frozen=True)
class Plan:
    """What :func:`plan` decided: the options, the parsed endpoints, the offload policy."""

    options: Options
    specs: tuple[EndpointSpec, ...]
    offload: bool


def plan(options: Options) -> Plan:
    """Check everything that can be checked before anything is opened.

    Raises:
        UsageError: bad endpoints or options (fewer than two endpoints that
            carry traffic and no listening one, one listed twice, ``--group`` without ``--user``,
            ``--workers`` with endpoints that are not TAPs, ...).
        PrivilegeDropFailed: ``--user`` or ``--group`` does not exist.
    """
    if options.group is not None and options.user is None:
        raise UsageError("--group needs --user")
    specs = tuple(parse_endpoint(text) for text in options.endpoints)
    carriers = [spec for spec in specs if spec.kind != "pcap"]
    # A listening endpoint is a switch by itself: the peers that connect are its ports.
    if len(carriers) < 2 and not any(spec.options.get("listen") for spec in carriers):
        raise UsageError(
            f"need at least two endpoints that carry traffic (a pcap mirror does not), "
            f"or a listening one (unix:PATH?listen, tcp://ADDR:PORT?listen), got {len(carriers)}"
        )
    seen: dict[tuple[str, Any, Any], str] = {}
    for spec in specs:
        key = identity(spec)
        if key in seen:
            raise UsageError(f"{spec.text!r} and {seen[key]!r} are the same endpoint")
        seen[key] = spec.text
    if options.user is not None:
        resolve(options.user, options.group)  # an unknown user fails before anything opens
    offload = offload_policy(specs, options.offload)
    if options.workers > 1 and {spec.kind for spec in specs} != {"tap"}:
        raise UsageError(
            "--workers needs every endpoint to be a TAP (tap:NAME or NAME): "
            "tunnels, captures and fd: endpoints cannot be split into queues"
        )
    return Plan(options, specs, offload)


Attach = Callable[[Service], "Callable[[], None] | None"]


def run(options: Options, log: Any, *, attach: Attach | None = None) -> int:
    """:func:`plan`, then :func:`execute`: check, open, forward until a signal.

    Returns:
        The exit status.
    """
    return execute(plan(options), log, attach=attach)


def execute(decided: Plan, log: Any, *, attach: Attach | None = None) -> int:
    """Open the endpoints and forward until a signal.

    Args:
        decided: what :func:`plan` decided.
        log: a structlog-style logger.
        attach: called with the service once it is set up, before privileges
            are dropped (it may still import or open); what it returns, if
            anything, is called once the service has stopped.

    Returns:
        The exit status.

    Raises:
        GreentapError: an endpoint cannot be opened; nothing is left open.
    """
    options, specs, offload = decided.options, decided.specs, decided.offload
    if options.workers > 1:
        supervisor = _supervisor(options, specs, offload, log)  # imports it: see below
        for info in supervisor.describe():
            log.info("endpoint_opened", **info)
        return serve(supervisor, options, log, drop=False)
    ports = open_ports(specs, mtu=options.mtu, logger=log, offload=offload)
    for port in ports:
        log.info("endpoint_opened", **port.describe())
    forwarder = Forwarder(
        ports,
        aging=options.aging,
        max_entries=options.max_macs,
        logger=log,
        keep_warm=options.keep_warm / 1000,
    )
    origin = "file" if options.config and options.names else "command line"
    named = zip(options.named(), ports, strict=True)
    live = LiveEndpoints(
        forwarder,
        [(name, text, port, origin) for (name, text), port in named],
        config_path=options.config, options=options, log=log,
        file_options=options.file_options,
    )  # fmt: skip
    return serve(forwarder, options, log, attach=attach, live=live)


def _supervisor(options: Options, specs: Sequence[EndpointSpec], offload: bool, log: Any) -> Any:
    # Imported on use, as the metrics below: what a single forwarder does not need
    # (gevent.subprocess, prometheus_client) stays out of its resident memory.
    from greentap.app.supervisor import Supervisor

    config = {
        "log_format": options.log_format, "log_level": options.log_level,
        "aging": options.aging, "max_macs": options.max_macs, "keep_warm": options.keep_warm,
        "user": options.user, "group": options.group,
    }  # fmt: skip
    return Supervisor(
        specs, options.workers, worker_config=config, mtu=options.mtu, offload=offload, logger=log
    )


def serve(
    service: Service,
    options: Options,
    log: Any,
    *,
    attach: Attach | None = None,
    drop: bool = True,
    live: LiveEndpoints | None = None,
) -> int:
    """Serve until a signal: signals, metrics, control, systemd, ``--user``, ``--stats``.

    Args:
        service: a forwarder or a supervisor, set up but not started.
        options: for ``metrics``, ``user``/``group`` and ``stats``.
        log: a structlog-style logger.
        attach: see :func:`run`.
        drop: drop privileges to ``options.user`` (False for the workers'
            supervisor, which keeps root to restart them; the workers drop).
        live: the forwarder's named endpoints (the control socket changes
            them, SIGHUP reloads them from ``options.config``), or None.

    Returns:
        The service's exit status.
    """
    after: Callable[[], None] | None = None
    daemon = None
    try:
        service.handle_signals()
        if options.metrics:
            from greentap.app.metrics import serve_metrics  # on use: see _supervisor

            serve_metrics(service, options.metrics, log)
        daemon = Daemon(service, options, log, live)  # binds --control as root
        if attach is not None:
            after = attach(service)
        if options.user is not None and drop:
            uid, gid = drop_privileges(options.user, options.group)
            log.info("privileges_dropped", user=options.user, uid=uid, gid=gid)
        elif options.user is not None:
            log.info("privileges_kept", reason="the supervisor restarts workers",
                     workers_as=options.user)  # fmt: skip
    except BaseException:
        service.stop()  # fail closed: close everything opened, forward nothing
        if daemon is not None:
            daemon.close()
        raise
    report = StatsReporter(log)
    if options.stats:
        service.every(options.stats, report)
    status = EXIT_OK
    try:
        service.start()
        daemon.start()  # READY=1: every endpoint open, every pump spawned
        status = service.serve_forever()
    finally:
        service.stop()
        daemon.close()
        if after is not None:
            after()
        report(service)
        log.info("stopped")
    return status
