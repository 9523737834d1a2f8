"""greentap: Linux TAP/TUN interfaces for gevent programs.

Open a device with :class:`Tap`, drive it cooperatively with
:meth:`Tap.polled`, which returns a :class:`PolledTap`::

    import gevent, greentap

    with greentap.Tap("tap%d").polled() as tap:
        for frame in tap:
            ...
"""

from greentap.counters import DeviceCounters
from greentap.device import Tap
from greentap.errors import (
    EndpointSyntaxError,
    EndpointUnavailable,
    FrameRejected,
    InvalidTapName,
    LinkConfigFailed,
    NamespaceUnavailable,
    NotATapDevice,
    OpenTunFailed,
    PrivilegeDropFailed,
    SetTapAttributes,
    TapClosed,
    TapError,
    TapIOError,
    TapNameConversion,
    TapNameError,
    TapNameTooLong,
    TapVanished,
    UnsupportedArchitecture,
)
from greentap.kernel_constants import (
    TUN_F_CSUM,
    TUN_F_TSO4,
    TUN_F_TSO6,
    TUN_F_TSO_ECN,
    TUN_F_UFO,
    TUN_F_USO4,
    TUN_F_USO6,
)
from greentap.polled import PolledTap

__version__ = "0.1.0"

__all__ = [
    "DeviceCounters",
    "EndpointSyntaxError",
    "EndpointUnavailable",
    "FrameRejected",
    "InvalidTapName",
    "LinkConfigFailed",
    "NamespaceUnavailable",
    "NotATapDevice",
    "OpenTunFailed",
    "PolledTap",
    "PrivilegeDropFailed",
    "SetTapAttributes",
    "TUN_F_CSUM",
    "TUN_F_TSO4",
    "TUN_F_TSO6",
    "TUN_F_TSO_ECN",
    "TUN_F_UFO",
    "TUN_F_USO4",
    "TUN_F_USO6",
    "Tap",
    "TapClosed",
    "TapError",
    "TapIOError",
    "TapNameConversion",
    "TapNameError",
    "TapNameTooLong",
    "TapVanished",
    "UnsupportedArchitecture",
    "__version__",
]
