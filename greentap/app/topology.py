"""Which ports a forwarder has now, by number, and what that makes it: a wire or a switch.

Ports carrying traffic are numbered (the learning switch knows them by
number); a port that leaves frees its number for the next to join.  With
exactly two ports the forwarder is a wire, with any other number a switch
(one port alone, or none, forwards nowhere).  Listening endpoints and
mirrors are kept beside them, unnumbered.  No gevent here: the
:class:`~greentap.app.forwarder.Forwarder` runs the greenlets and decides
when to call what.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from greentap.core.ethernet import format_mac
from greentap.core.switching import LearningSwitch
from greentap.errors import UsageError
from greentap.green import relay
from greentap.ports.base import Port

__all__ = ["Topology"]


def _nowhere(frame: Any) -> bool:
    return False  # a number no port holds: decide() never picks it


class Topology:
    """The forwarder's ports: numbered data ports, listeners and mirrors.

    Args:
        ports: the ports at start: data ports (``readable``), listeners
            (``accepts``) and mirrors (neither).
        aging, max_entries: for the :class:`~greentap.core.switching.LearningSwitch`.

    Attributes:
        slots: the data ports by number; None where one left.
        sends: each number's ``send`` (shared with the switch pumps, updated
            in place as ports join and leave).
        listeners, mirrors: as given.
        switch: the learning switch (consulted only in switch mode).
        header: bytes before the Ethernet header in every frame.

    Raises:
        UsageError: fewer than two data ports and no listener, or ports
            with different header sizes.
    """

    def __init__(self, ports: Iterable[Port], *, aging: float, max_entries: int) -> None:
        ports = list(ports)
        data = [p for p in ports if p.readable]
        self.listeners = [p for p in ports if getattr(p, "accepts", False)]
        self.mirrors = [p for p in ports if not p.readable and p not in self.listeners]
        if len(data) < 2 and not self.listeners:
            raise UsageError(
                "a forwarder needs at least two ports that carry traffic, or a listening one"
            )
        headers = {p.header_size for p in data + self.listeners}
        if len(headers) > 1:
            sizes = ", ".join(f"{p.name}: {p.header_size}" for p in data + self.listeners)
            raise UsageError(
                f"every endpoint must carry frames with the same header (vnet header) "
                f"size, not {sizes}: open them all with or all without offloads"
            )
        self.header = headers.pop() if headers else 0
        self.slots: list[Port | None] = list(data)
        self.sends: list[Callable[[Any], Any]] = [p.send for p in data]
        self.switch = LearningSwitch(len(data), aging=aging, max_entries=max_entries)
        for number, port in enumerate(data):
            self.switch.set_policy(number, port.vlan)

    @property
    def mode(self) -> str:
        """``"wire"`` with exactly two data ports and no VLAN ports, ``"switch"`` otherwise."""
        return "wire" if self.count == 2 and not self.switch.vlans else "switch"

    @property
    def shape(self) -> tuple[str, bool]:
        """``(mode, VLANs)``: when either changes, the pumps take another path."""
        return self.mode, self.switch.vlans

    @property
    def count(self) -> int:
        """How many data ports there are now."""
        return sum(p is not None for p in self.slots)

    def relay_loop(self) -> tuple[str, str | None]:
        """Which loop moves the frames: ``("c", None)`` or ``("python", why)``."""
        data = [p for _, p in self.data()]
        if self.mode == "switch":
            vlans = " with VLANs" if self.switch.vlans else ""
            return "python", f"a switch of {len(data)} ports{vlans}"
        if self.mirrors:
            return "python", "a mirror gets every frame"
        if any(p.policer is not None for p in data):
            return "python", "a rate limit polices the frames"
        if not all(p.sink is not None for p in data):
            return "python", "an endpoint takes frames one at a time (it has no tight relay)"
        return relay.LOOP, relay.LOOP_REASON

    def data(self) -> list[tuple[int, Port]]:
        """``[(number, port)]`` of the data ports now."""
        return [(i, p) for i, p in enumerate(self.slots) if p is not None]

    def everything(self) -> list[Port]:
        """Every port: data ports by number, then listeners, then mirrors."""
        return [p for _, p in self.data()] + self.listeners + self.mirrors

    def number(self, port: Port) -> int | None:
        """The number of ``port``, or None if it is not (or no longer) here."""
        for i, p in enumerate(self.slots):
            if p is port:
                return i
        return None

    def peer(self, index: int) -> int:
        """In a wire: the number of the other data port."""
        (other,) = [i for i, _ in self.data() if i != index]
        return other

    def add(self, port: Port) -> int:
        """Give ``port`` the lowest free number and let the switch send to it.

        Raises:
            UsageError: its header size differs from the others'.
        """
        if port.header_size != self.header:
            raise UsageError(
                f"{port.name} carries a {port.header_size}-byte header, the others {self.header}",
                endpoint=port.name,
            )
        try:
            index = self.slots.index(None)
            self.slots[index] = port
            self.sends[index] = port.send
        except ValueError:
            index = len(self.slots)
            self.slots.append(port)
            self.sends.append(port.send)
        self.switch.add_port(index)
        self.switch.set_policy(index, port.vlan)
        return index

    def add_unnumbered(self, port: Port) -> None:
        """Add a listener (``accepts``) or a mirror (neither readable nor accepting).

        Raises:
            UsageError: it is here already, or a listener whose connections'
                header size differs.
        """
        if any(p is port for p in self.everything()):
            raise UsageError(f"{port.name} is a port of this forwarder already", endpoint=port.name)
        if getattr(port, "accepts", False):
            if port.header_size != self.header:
                raise UsageError(
                    f"{port.name} carries a {port.header_size}-byte header, the others "
                    f"{self.header}", endpoint=port.name,
                )  # fmt: skip
            self.listeners.append(port)
        else:
            self.mirrors.append(port)  # in place: the forwarder shares this list

    def remove_unnumbered(self, port: Port) -> bool:
        """Take a listener or a mirror out; False if it is not here."""
        for group in (self.listeners, self.mirrors):
            if any(p is port for p in group):
                group[:] = [p for p in group if p is not port]
                return True
        return False

    def remove(self, index: int) -> Port:
        """Take port ``index`` out: its number is free, its addresses forgotten.

        Returns:
            The port that held the number.
        """
        port = self.slots[index]
        if port is None:
            raise ValueError(f"no port {index}")
        self.slots[index] = None
        self.sends[index] = _nowhere
        self.switch.remove_port(index)
        self.switch.set_policy(index, None)
        while self.slots and self.slots[-1] is None:
            self.slots.pop()
            self.sends.pop()
        return port

    def stats(self, mode: str, failed: dict[int, str]) -> dict[str, Any]:
        """Every port's counters and the switch's, as plain data.

        Args:
            mode: the forwarder's mode (the switch is reported in switch mode).
            failed: error text by port number, for the ports that failed.
        """
        why = {id(self.slots[i]): text for i, text in failed.items() if i < len(self.slots)}
        switch = self.switch
        return {
            "mode": mode,
            "ports": [
                {
                    **p.describe(),
                    **p.counters.as_dict(),
                    "drops": dict(p.drops),
                    "failed": why.get(id(p)),
                }
                for p in self.everything()
            ],
            "switch": None
            if mode != "switch"
            else {
                "runts": switch.runts,
                "filtered": switch.filtered,
                "flooded": switch.flooded,
                "mac_table": switch.table.stats(),
                **(
                    {"vlans": {str(v): n for v, n in sorted(switch.vlan_frames.items())}}
                    if switch.vlans
                    else {}
                ),
            },
        }

    def mac_table(self, now: float) -> list[tuple[str, str, float]]:
        """The learned addresses as ``[(mac, port name, age seconds)]``."""
        slots = self.slots
        return [
            (_format_key(mac), slots[port].name, age)  # type: ignore[union-attr]
            for mac, port, age in self.switch.table.entries(now)
            if port < len(slots) and slots[port] is not None
        ]


def _format_key(key: bytes) -> str:
    """A MAC table key: the address, or with VLANs ``address@vlanN``."""
    if len(key) == 8:  # the VLAN (2 bytes) before the address
        return f"{format_mac(key[2:])}@vlan{int.from_bytes(key[:2], 'big')}"
    return format_mac(key)
