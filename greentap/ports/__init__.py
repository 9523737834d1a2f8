"""Ports: the endpoints a forwarder moves frames between.

:class:`~greentap.ports.base.Port` is the protocol; the kinds are TAPs and
inherited ``fd:N`` (:mod:`~greentap.ports.tap`), VXLAN and raw UDP tunnels
(:mod:`~greentap.ports.tunnel`), existing interfaces (:mod:`~greentap.ports.packet`)
pcap mirrors (:mod:`~greentap.ports.pcap`) and stream sockets carrying QEMU's
framing, connected (:mod:`~greentap.ports.stream`) or listening, whose
connections join and leave at runtime (:mod:`~greentap.ports.listener`).
Each registers its opener with :mod:`~greentap.ports.registry`, which
:func:`open_port` consults; importing this package registers them all.
"""

from greentap.ports import client, listener, packet, pcap, stream, superstream, tap, tunnel
from greentap.ports.base import FramePort, Port
from greentap.ports.client import StreamClient
from greentap.ports.listener import StreamListener
from greentap.ports.packet import PacketPort
from greentap.ports.pcap import PcapPort
from greentap.ports.registry import OpenOptions, kinds, open_port, open_ports, register
from greentap.ports.stream import StreamConnection
from greentap.ports.tap import TapPort, put_back
from greentap.ports.tunnel import DatagramPort, UdpPort, VxlanPort

__all__ = [
    "DatagramPort",
    "FramePort",
    "OpenOptions",
    "PacketPort",
    "PcapPort",
    "Port",
    "StreamClient",
    "StreamConnection",
    "StreamListener",
    "TapPort",
    "UdpPort",
    "VxlanPort",
    "client",
    "kinds",
    "listener",
    "open_port",
    "open_ports",
    "packet",
    "pcap",
    "put_back",
    "register",
    "stream",
    "superstream",
    "tap",
    "tunnel",
]
