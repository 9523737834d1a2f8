"""greentap: Linux TAP/TUN interfaces for gevent programs.

Open a device with :class:`Tap`, drive it cooperatively with
:meth:`Tap.polled`, which returns a :class:`PolledTap`::

    import gevent, greentap

    with greentap.Tap("tap%d").polled() as tap:
        for frame in tap:
            ...

The names below are loaded on first use: ``import greentap`` imports neither
gevent nor any layer of the package, so the pure core (``greentap.core``:
codecs, the MAC table, endpoint parsing) and the blocking devices
(``greentap.device``) work without gevent.  The package's layers and the
rule of which may import which are in README.md ("Architecture").

greentap logs under the standard library's ``greentap`` logger, which has a
``NullHandler``: a program that configures no logging sees nothing.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from greentap._version import __version__
from greentap.errors import (
    ConfigError,
    EndpointClosed,
    EndpointIOError,
    EndpointSyntaxError,
    EndpointUnavailable,
    EndpointVanished,
    FrameRejected,
    GreentapError,
    InterfaceNameError,
    InvalidInterfaceName,
    InvalidTapName,
    LinkConfigFailed,
    NamespaceUnavailable,
    NotATapDevice,
    OpenTunFailed,
    PeerBrokeFraming,
    PeerError,
    PeerGone,
    PrivilegeDropFailed,
    SetTapAttributes,
    SystemRefused,
    TapClosed,
    TapError,
    TapIOError,
    TapNameConversion,
    TapNameError,
    TapNameTooLong,
    TapVanished,
    UnsupportedArchitecture,
    UsageError,
)

logging.getLogger("greentap").addHandler(logging.NullHandler())

# Public name -> the module that defines it, imported on first use.
_LAZY = {
    "Tap": "greentap.green.polled",
    "PolledTap": "greentap.green.polled",
    "TapDevice": "greentap.device.tun",
    "Link": "greentap.device.link",
    "LinkState": "greentap.device.link",
    "DeviceCounters": "greentap.core.counters",
    "FrameLayout": "greentap.core.layout",
    "Forwarder": "greentap.app.forwarder",
    **{
        f"TUN_F_{flag}": "greentap.core.kernel_constants"
        for flag in ("CSUM", "TSO4", "TSO6", "TSO_ECN", "UFO", "USO4", "USO6")
    },
}

if TYPE_CHECKING:  # what type checkers and IDEs see
    from greentap.app.forwarder import Forwarder
    from greentap.core.counters import DeviceCounters
    from greentap.core.kernel_constants import (
        TUN_F_CSUM,
        TUN_F_TSO4,
        TUN_F_TSO6,
        TUN_F_TSO_ECN,
        TUN_F_UFO,
        TUN_F_USO4,
        TUN_F_USO6,
    )
    from greentap.core.layout import FrameLayout
    from greentap.device.link import Link, LinkState
    from greentap.device.tun import TapDevice
    from greentap.green.polled import PolledTap, Tap


def __getattr__(name: str) -> Any:
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'greentap' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "TUN_F_CSUM",
    "TUN_F_TSO4",
    "TUN_F_TSO6",
    "TUN_F_TSO_ECN",
    "TUN_F_UFO",
    "TUN_F_USO4",
    "TUN_F_USO6",
    "ConfigError",
    "DeviceCounters",
    "EndpointClosed",
    "EndpointIOError",
    "EndpointSyntaxError",
    "EndpointUnavailable",
    "EndpointVanished",
    "Forwarder",
    "FrameLayout",
    "FrameRejected",
    "GreentapError",
    "InterfaceNameError",
    "InvalidInterfaceName",
    "InvalidTapName",
    "Link",
    "LinkConfigFailed",
    "LinkState",
    "NamespaceUnavailable",
    "NotATapDevice",
    "OpenTunFailed",
    "PeerError",
    "PeerBrokeFraming",
    "PeerGone",
    "PolledTap",
    "PrivilegeDropFailed",
    "SetTapAttributes",
    "SystemRefused",
    "Tap",
    "TapClosed",
    "TapDevice",
    "TapError",
    "TapIOError",
    "TapNameConversion",
    "TapNameError",
    "TapNameTooLong",
    "TapVanished",
    "UnsupportedArchitecture",
    "UsageError",
    "__version__",
]
