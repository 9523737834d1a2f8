"""Named endpoints of a running forwarder: listed, added, removed, reloaded.

Every endpoint has a name: the ``name`` of its ``[[endpoint]]`` table in a
configuration file, or, given on the command line, its own text.  The
control socket (:mod:`greentap.app.control`) adds and removes endpoints by
name, and a reload (SIGHUP or the control socket) reads the file again and
applies the difference to what the file gave before:

* an endpoint the file names now and did not: opened and added;
* one it no longer names: removed and closed;
* one whose description changed: closed, then opened as now described,
  unless only its rate limit (``rate=``, ``burst=``) changed: that is
  applied in place, without closing it (a TAP it created would otherwise be
  a new device, without the addresses others gave it);
* one unchanged: not touched, so no frame is lost on it.

An endpoint added through the control socket is not the file's: a reload
leaves it alone unless the file now names it too (then the file's
description holds).  A file with any error is refused whole and the running
endpoints stay as they are.  Options other than endpoints take effect at the
next start; a reload that changes one says so in its log line.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gevent.lock

from greentap.app import config
from greentap.core.endpoints import EndpointSpec, identity, parse_endpoint
from greentap.core.ratelimit import TokenBucket
from greentap.errors import GreentapError, UsageError
from greentap.ports import open_port
from greentap.ports.base import Port

__all__ = ["LiveEndpoints", "Named"]


@dataclasses.dataclass
class Named:
    """A running endpoint and where it came from.

    Attributes:
        name: its name.
        text: its description.
        port: the open port.
        origin: ``"file"``, ``"command line"`` or ``"control"``.
        spec: the text parsed.
    """

    name: str
    text: str
    port: Port
    origin: str
    spec: EndpointSpec


class LiveEndpoints:
    """The forwarder's endpoints by name, and the changes made to them while it runs.

    Args:
        forwarder: the running :class:`~greentap.app.forwarder.Forwarder`.
        named: ``(name, text, port, origin)`` of every endpoint opened at start.
        config_path: the configuration file to reload, or None.
        options: the options the service started with (``mtu``; the
            offload policy is the forwarder's: ports added carry the same
            header).
        log: a structlog-style logger.
        file_options: the options the file set at start (a reload says
            which of them it changed).
    """

    def __init__(
        self,
        forwarder: Any,
        named: list[tuple[str, str, Port, str]],
        *,
        config_path: str | None,
        options: Any,
        log: Any,
        file_options: dict[str, Any] | None = None,
    ) -> None:
        self.forwarder = forwarder
        self.config_path = config_path
        self.options = options
        self.log = log
        self.named = {n: Named(n, t, p, o, parse_endpoint(t)) for n, t, p, o in named}
        self._file_options = dict(file_options or {})
        # A reload and a control request must not interleave (opening may wait).
        self.lock = gevent.lock.RLock()

    # --- what is running ----------------------------------------------------
    def list(self) -> list[dict[str, Any]]:
        """Every endpoint: its name, description, origin, and how its port is."""
        stats = {
            id(p): s
            for p, s in zip(self.forwarder.ports, self.forwarder.stats()["ports"], strict=True)
        }
        out = []
        for item in self.named.values():
            port_stats = stats.get(id(item.port), {})
            out.append({"name": item.name, "endpoint": item.text, "origin": item.origin,
                        "kind": item.port.kind, "failed": port_stats.get("failed")})  # fmt: skip
        return out

    # --- changes ------------------------------------------------------------
    def add(self, name: str, text: str, origin: str = "control") -> dict[str, Any]:
        """Open an endpoint and add it to the forwarder.

        Raises:
            UsageError: a bad name or description, a name or endpoint already
                running, or a port whose header differs from the others'.
            GreentapError: it cannot be opened (nothing is left open).
        """
        with self.lock:
            return self._add(name, text, origin)

    def _add(self, name: str, text: str, origin: str) -> dict[str, Any]:
        if not config.valid_name(name):
            raise UsageError(f"name {name!r}: {config.NAME_RULE}")
        if name in self.named:
            raise UsageError(f"an endpoint named {name!r} is already running")
        if getattr(self.forwarder, "stopped", False):
            raise UsageError("tap-forward is stopping", endpoint=text)
        spec = parse_endpoint(text)
        if spec.kind == "fd":  # only our own fds could be meant: one a port holds already
            raise UsageError("fd: endpoints are given at start only (a socket cannot pass "
                             "a descriptor here)", endpoint=text)  # fmt: skip
        same = identity(spec)
        for item in self.named.values():
            if identity(item.spec) == same:
                raise UsageError(f"the same endpoint as {item.name!r} is already running",
                                 endpoint=text)  # fmt: skip
        offload = self.forwarder.topology.header > 0
        port = open_port(spec, mtu=self.options.mtu, logger=self.log, offload=offload)
        try:
            self.forwarder.add_port(port)
        except BaseException:
            port.close()
            raise
        self.named[name] = Named(name, text, port, origin, spec)
        self.log.info("endpoint_added", name=name, origin=origin, **port.describe())
        return {"name": name, "endpoint": text, **port.describe()}

    def remove(self, name: str, reason: str = "removed by the control socket") -> None:
        """Remove an endpoint by name and close it.

        Raises:
            UsageError: no endpoint has that name.
        """
        with self.lock:
            item = self.named.pop(name, None)
            if item is None:
                raise UsageError(f"no endpoint is named {name!r}")
            self.forwarder.remove_port(item.port, reason=reason)
            item.port.close()

    def reload(self) -> dict[str, Any]:
        """Read the configuration file again and apply the difference (see the module).

        Returns:
            What changed: ``added``, ``removed``, ``changed`` (of which
            ``in_place``: only the rate limit), ``unchanged`` (names),
            ``failed`` (name -> error: endpoints that could not be opened)
            and ``restart_needed`` (options that changed).

        Raises:
            UsageError: there is no configuration file to reload.
            ConfigError: the file has an error; nothing was changed.
        """
        if self.config_path is None:
            raise UsageError("nothing to reload: tap-forward was started without --config")
        with self.lock:
            return self._reload()

    def _reload(self) -> dict[str, Any]:
        assert self.config_path is not None
        new = config.load(self.config_path)  # checked whole before anything changes
        wanted = {e.name: e.text for e in new.endpoints}
        ours = {n for n, item in self.named.items() if item.origin == "file"}
        removed = sorted(ours - wanted.keys())
        changed = sorted(n for n in wanted if n in self.named and self.named[n].text != wanted[n])
        unchanged = sorted(n for n in wanted if n in self.named and n not in changed)
        added = [n for n in wanted if n not in self.named]
        failed: dict[str, str] = {}
        specs = {e.name: e.spec for e in new.endpoints}
        retuned = [n for n in changed if self._retune(self.named[n], specs[n], wanted[n])]
        # Removals first: an endpoint that moved to another name must be free to open.
        for name in removed + [n for n in changed if n not in retuned]:
            self.remove(name, reason="reload")
        for name in unchanged + retuned:
            self.named[name].origin = "file"
        for name in [n for n in wanted if n in added or (n in changed and n not in retuned)]:
            try:
                self.add(name, wanted[name], origin="file")
            except GreentapError as exc:
                failed[name] = f"{type(exc).__name__}: {exc}"
                self.log.error("endpoint_not_opened", name=name, endpoint=wanted[name],
                               error=str(exc), error_type=type(exc).__name__)  # fmt: skip
        before, self._file_options = self._file_options, dict(new.options)
        restart = sorted(k for k in before.keys() | new.options.keys()
                         if before.get(k) != new.options.get(k))  # fmt: skip
        result = {"added": added, "removed": removed, "changed": changed, "in_place": retuned,
                  "unchanged": unchanged, "failed": failed, "restart_needed": restart}  # fmt: skip
        self.log.info("reloaded", path=self.config_path, **result)
        return result

    def _retune(self, item: Named, spec: EndpointSpec, text: str) -> bool:
        """Apply a change of the rate limit alone in place; False for any other change."""
        old = item.spec
        policing = ("rate", "burst")

        def rest(s: EndpointSpec) -> tuple[Any, ...]:
            options = {k: v for k, v in s.options.items() if k not in policing}
            return (s.kind, s.name if s.name != s.text else None, options)  # tunnels: the text

        if rest(old) != rest(spec) or getattr(item.port, "accepts", False):
            return False  # a listener hands its rate to each connection it accepts
        rate = spec.options.get("rate")
        item.port.policer = TokenBucket(rate, spec.options.get("burst")) if rate else None
        item.text, item.spec = text, spec
        self.forwarder.rewire()  # the pumps read the new policer
        self.log.info("endpoint_retuned", name=item.name, endpoint=text, rate=rate,
                      burst=spec.options.get("burst"))  # fmt: skip
        return True
