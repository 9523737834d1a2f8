"""Which port kind opens which endpoint: a registry the endpoint factory uses.

Each port module registers an opener for the endpoint kinds it serves
(``@register("vxlan", "udp")``); :func:`open_port` looks the kind of a
parsed :class:`~greentap.core.endpoints.EndpointSpec` up here.  So the
factory imports no port module, and no port module imports the factory:
a new kind of port is one new module and one decorator.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

from greentap.core.endpoints import EndpointSpec
from greentap.core.ratelimit import TokenBucket
from greentap.core.vlan import VlanPolicy
from greentap.errors import EndpointSyntaxError
from greentap.ports.base import Port

__all__ = ["OpenOptions", "kinds", "open_port", "open_ports", "register", "vlan_policy"]


@dataclasses.dataclass(frozen=True)
class OpenOptions:
    """What every opener is told besides the endpoint itself.

    Attributes:
        mtu: the MTU to set on TAPs it opens, or None.
        hub: the gevent hub (None: the current one).
        logger: a structlog-style logger for ports that log state changes.
        offload: open TAPs with a virtio-net header and offloads.
    """

    mtu: int | None = None
    hub: Any = None
    logger: Any = None
    offload: bool = False


Opener = Callable[[EndpointSpec, OpenOptions], Port]
_OPENERS: dict[str, Opener] = {}


def register(*kinds: str) -> Callable[[Opener], Opener]:
    """Register the decorated function as the opener of endpoints of ``kinds``.

    Raises:
        ValueError: a kind already has an opener.
    """

    def decorate(opener: Opener) -> Opener:
        for kind in kinds:
            if kind in _OPENERS:
                raise ValueError(f"port kind {kind!r} is registered twice")
            _OPENERS[kind] = opener
        return opener

    return decorate


def kinds() -> list[str]:
    """The endpoint kinds that can be opened."""
    return sorted(_OPENERS)


def open_port(
    spec: EndpointSpec,
    *,
    mtu: int | None = None,
    hub: Any = None,
    logger: Any = None,
    offload: bool = False,
) -> Port:
    """Open the port a parsed endpoint describes.

    Args:
        spec: the parsed endpoint.
        mtu: MTU for TAP ports, or None.
        hub: the gevent hub.
        logger: a logger for ports that log state changes (pcap).
        offload: for TAP ports (see :class:`~greentap.ports.tap.TapPort`).

    Returns:
        A :class:`~greentap.ports.base.Port`, with its ``?rate=`` policer.

    Raises:
        EndpointSyntaxError: a kind no port module registered.
        GreentapError: the endpoint could not be opened or configured.
    """
    try:
        opener = _OPENERS[spec.kind]
    except KeyError:
        raise EndpointSyntaxError(
            f"cannot open endpoints of kind {spec.kind!r}", endpoint=spec.text
        ) from None
    port = opener(spec, OpenOptions(mtu=mtu, hub=hub, logger=logger, offload=offload))
    rate = spec.options.get("rate")
    if rate is not None:
        port.policer = TokenBucket(rate, spec.options.get("burst"))
    port.vlan = vlan_policy(spec)
    return port


def vlan_policy(spec: EndpointSpec) -> VlanPolicy | None:
    """The access port or trunk an endpoint's ``vlan=``/``trunk=``/``native=`` ask for."""
    options = spec.options
    if "vlan" not in options and "trunk" not in options:
        return None
    return VlanPolicy(options.get("vlan"), options.get("trunk", frozenset()), options.get("native"))


def open_ports(specs: Iterable[EndpointSpec], **options: Any) -> list[Port]:
    """Open several ports; if one fails, close those already opened.

    Args:
        specs: the parsed endpoints.
        **options: as for :func:`open_port`.

    Returns:
        The ports, in order.
    """
    ports: list[Port] = []
    try:
        for spec in specs:
            ports.append(open_port(spec, **options))
    except BaseException:
        for port in ports:
            port.close()
        raise
    return ports
