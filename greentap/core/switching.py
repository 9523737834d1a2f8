"""The learning-switch decision: frames in, egress ports out.  Pure code, no I/O.

Ports are small integers.  :class:`LearningSwitch` learns which port each
source MAC lives behind, forwards known unicast to that one port, floods
broadcast, multicast and unknown unicast to every other port, never sends a
frame back out of the port it came in on, ages entries, and keeps the table
bounded: when it is full a new address is refused (and counted) rather than
evicting a live one, and the frame is still delivered by flooding, as a
hardware switch does.

Time is passed in by the caller (seconds, any monotonic clock), so the core
is deterministic under test.
"""

from __future__ import annotations

from greentap.core.kernel_constants import ETH_ALEN, ETH_HLEN
from greentap.core.vlan import VlanPolicy

DEFAULT_AGING = 300.0
DEFAULT_MAX_ENTRIES = 8192
# An entry's timestamp is refreshed at most this often (or a quarter of the
# aging time, if shorter, so a station that keeps talking is never forgotten):
# a dict write per frame would cost more than the forwarding itself.
_REFRESH = 1.0
# A full table is swept for expired entries at most this often.
_SWEEP_INTERVAL = 1.0


class MacTable:
    """A bounded, aging map of MAC address -> port.

    Args:
        aging: seconds after which an address not seen again is forgotten.
        max_entries: the most addresses held at once.

    Attributes:
        learned: new addresses added.
        moved: addresses that appeared on another port.
        refused: new addresses not added because the table was full.
        expired: addresses forgotten after ``aging`` seconds.
    """

    def __init__(
        self, *, aging: float = DEFAULT_AGING, max_entries: int = DEFAULT_MAX_ENTRIES
    ) -> None:
        if aging <= 0:
            raise ValueError("aging must be positive")
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.aging = float(aging)
        self._refresh = min(_REFRESH, self.aging / 4)
        self.max_entries = int(max_entries)
        self._entries: dict[bytes, list] = {}  # mac bytes -> [port, last_seen]
        self._next_sweep = 0.0
        self.learned = self.moved = self.refused = self.expired = 0

    def __len__(self) -> int:
        return len(self._entries)

    def learn(self, mac: bytes, port: int, now: float) -> None:
        """Record that ``mac`` was seen as a source on ``port`` at ``now``.

        Args:
            mac: 6 bytes (a unicast address; the caller filters group addresses).
            port: the ingress port number.
            now: the current time in seconds.
        """
        entry = self._entries.get(mac)
        if entry is not None:
            if entry[0] != port:
                entry[0] = port
                entry[1] = now
                self.moved += 1
            elif now - entry[1] >= self._refresh:
                entry[1] = now
            return
        if len(self._entries) >= self.max_entries:
            if now >= self._next_sweep:
                self._next_sweep = now + _SWEEP_INTERVAL
                self.expire(now)
            if len(self._entries) >= self.max_entries:
                self.refused += 1
                return
        self._entries[mac] = [port, now]
        self.learned += 1

    def lookup(self, mac: bytes, now: float) -> int | None:
        """Return the port ``mac`` was last seen on, or None if unknown or aged out."""
        entry = self._entries.get(mac)
        if entry is None:
            return None
        if now - entry[1] > self.aging:
            del self._entries[mac]
            self.expired += 1
            return None
        return entry[0]

    def expire(self, now: float) -> int:
        """Forget every address not seen for ``aging`` seconds.

        Returns:
            How many entries were removed.
        """
        limit = now - self.aging
        stale = [mac for mac, (_, seen) in self._entries.items() if seen < limit]
        for mac in stale:
            del self._entries[mac]
        self.expired += len(stale)
        return len(stale)

    def forget_port(self, port: int) -> int:
        """Forget every address learned on ``port`` (it went away)."""
        gone = [mac for mac, (p, _) in self._entries.items() if p == port]
        for mac in gone:
            del self._entries[mac]
        return len(gone)

    def entries(self, now: float) -> list[tuple[bytes, int, float]]:
        """Return ``[(mac, port, age_seconds), ...]`` for live entries, oldest last."""
        live = [
            (mac, port, now - seen)
            for mac, (port, seen) in self._entries.items()
            if now - seen <= self.aging
        ]
        return sorted(live, key=lambda e: e[2])

    def stats(self) -> dict[str, int]:
        """Return the table's size and event counters as a dict."""
        return {
            "size": len(self._entries),
            "max_entries": self.max_entries,
            "learned": self.learned,
            "moved": self.moved,
            "refused": self.refused,
            "expired": self.expired,
        }


class LearningSwitch:
    """Decides where each frame goes among ``nports`` ports.

    Args:
        nports: how many ports at first (numbered 0..nports-1); more join
            through :meth:`add_port`.
        aging, max_entries: see :class:`MacTable`.

    Attributes:
        table: the :class:`MacTable`.
        runts: frames too short to carry an Ethernet header (dropped).
        filtered: unicast frames whose destination lives on the ingress port (dropped).
        flooded: frames sent to every other port.
    """

    def __init__(
        self, nports: int, *, aging: float = DEFAULT_AGING, max_entries: int = DEFAULT_MAX_ENTRIES
    ) -> None:
        if nports < 0:
            raise ValueError("a switch cannot have fewer than no ports")
        self.table = MacTable(aging=aging, max_entries=max_entries)
        self._active = set(range(nports))
        self._nports = nports
        self._flood: dict[int, tuple[int, ...]] = {}
        self.policies: dict[int, VlanPolicy] = {}  # by port; absent: transparent
        self._vlan_flood: dict[tuple[int, int], tuple[int, ...]] = {}
        self._rebuild()
        self.runts = self.filtered = self.flooded = 0
        self.vlan_frames: dict[int, int] = {}  # frames switched per VLAN

    @property
    def vlans(self) -> bool:
        """Whether any port is an access port or a trunk (frames are switched per VLAN)."""
        return bool(self.policies)  # set_policy() keeps only those

    def set_policy(self, port: int, policy: VlanPolicy | None) -> None:
        """Make ``port`` an access port or a trunk (None: transparent)."""
        if policy is None or policy.transparent:
            self.policies.pop(port, None)
        else:
            self.policies[port] = policy
        self._rebuild()

    def _rebuild(self) -> None:
        ports = sorted(self._active)
        self._flood = {i: tuple(p for p in ports if p != i) for i in range(self._nports)}
        self._vlan_flood = {}  # filled as VLANs are seen

    def remove_port(self, port: int) -> None:
        """Stop sending to ``port`` (it failed) and forget what was learned on it."""
        self._active.discard(port)
        self._rebuild()
        self.table.forget_port(port)

    def decide_vlan(
        self, ingress: int, frame: bytes | bytearray | memoryview, vlan: int, now: float
    ) -> tuple[int, ...]:
        """:meth:`decide` within one VLAN: learning per VLAN, floods to its members only.

        Args:
            vlan: the VLAN the frame belongs to (see :class:`~greentap.core.vlan.VlanPolicy`).

        Returns:
            The egress ports; the caller tags or untags for each.
        """
        if len(frame) < ETH_HLEN:
            self.runts += 1
            return ()
        self.vlan_frames[vlan] = self.vlan_frames.get(vlan, 0) + 1
        key = vlan.to_bytes(2, "big")
        src = bytes(frame[ETH_ALEN : 2 * ETH_ALEN])
        if not src[0] & 1:
            self.table.learn(key + src, ingress, now)
        if not frame[0] & 1:
            port = self.table.lookup(key + bytes(frame[:ETH_ALEN]), now)
            if port == ingress:
                self.filtered += 1
                return ()
            if port is not None and port in self._active and self._member(port, vlan):
                return (port,)
        self.flooded += 1
        flood = self._vlan_flood.get((ingress, vlan))
        if flood is None:
            flood = tuple(p for p in self._flood[ingress] if self._member(p, vlan))
            self._vlan_flood[ingress, vlan] = flood
        return flood

    def _member(self, port: int, vlan: int) -> bool:
        policy = self.policies.get(port)
        return policy.member(vlan) if policy is not None else True

    def add_port(self, port: int) -> None:
        """Send to ``port`` (again: it came back; or for the first time: it joined).

        A number past the last port grows the switch to it.
        """
        if port < 0:
            raise ValueError(f"no port {port}: ports are numbered from 0")
        self._nports = max(self._nports, port + 1)
        self._active.add(port)
        self._rebuild()

    def decide(
        self, ingress: int, frame: bytes | bytearray | memoryview, now: float
    ) -> tuple[int, ...]:
        """Learn from a frame's source and return the ports it must go out of.

        Args:
            ingress: the port the frame came in on.
            frame: the Ethernet frame (bytes-like, starting at the destination MAC).
            now: the current time in seconds.

        Returns:
            A tuple of egress port numbers; empty means drop.
        """
        if len(frame) < ETH_HLEN:
            self.runts += 1
            return ()
        src = bytes(frame[ETH_ALEN : 2 * ETH_ALEN])
        if not src[0] & 1:  # a group address is never a valid source
            self.table.learn(src, ingress, now)
        if frame[0] & 1:  # broadcast or multicast
            self.flooded += 1
            return self._flood[ingress]
        port = self.table.lookup(bytes(frame[:ETH_ALEN]), now)
        if port is None or port not in self._active:
            self.flooded += 1
            return self._flood[ingress]
        if port == ingress:
            self.filtered += 1
            return ()
        return (port,)
