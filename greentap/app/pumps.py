"""The forwarder's per-frame loops: a wire between two ports, a switch among more.

Each pump runs in its own greenlet, reads one port until it closes and
sends every frame on.  Nothing here decides what happens to a port that
fails: a pump hands the error to ``on_send_error`` (its destination failed)
or raises it (its own port failed), and the
:class:`~greentap.app.forwarder.Forwarder` decides.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Sequence
from typing import Any

from greentap.core.kernel_constants import ETH_HLEN
from greentap.core.switching import LearningSwitch
from greentap.core.vlan import CUT_TAG, VlanPolicy, pop_tag, push_tag, set_vid, tag_of
from greentap.errors import FrameRejected, GreentapError
from greentap.ports.base import Port

__all__ = ["admission", "mirror_sends", "switch", "wire"]

Admit = Callable[[], bool]
Send = Callable[[Any], Any]


def wire(
    src: Port,
    dst: Port,
    on_send_error: Callable[[GreentapError], Any],
    admit: Admit | None,
    mirrors: Sequence[Send],
) -> None:
    """Send every frame read from ``src`` to ``dst`` until ``src`` closes.

    A TAP or a ``packet:`` ring read with no policer into a port that takes
    frames by ``write`` (a TAP, a ``packet:`` interface) takes the tight relay
    (one or two system calls per frame, in C when it was built); anything else
    the generic loop.

    Raises:
        EndpointClosed: ``src`` was closed (the normal end).
        GreentapError: ``src`` failed.
    """
    if admit is None and dst.sink is not None and src.relay_to(dst.sink, on_send_error, mirrors):
        return
    recv_into, buf, view = _reader(src)
    send = dst.send
    while True:
        n = recv_into(buf)
        if admit is not None and not admit():
            continue
        frame = view[:n]
        for mirror in mirrors:
            mirror(frame)
        try:
            send(frame)
        except FrameRejected:
            pass  # counted by the port
        except GreentapError as exc:
            on_send_error(exc)


def switch(
    index: int,
    port: Port,
    sends: Sequence[Send],
    decision: LearningSwitch,
    on_send_error: Callable[[int, GreentapError], Any],
    admit: Admit | None,
    mirrors: Sequence[Send],
    header: int,
    now: Callable[[], float],
) -> None:
    """Switch every frame read from ``port`` until it closes.

    Args:
        index: the ingress port's number.
        port: the ingress port.
        sends: every port's ``send``, numbered as ``decision`` knows them
            (a list the forwarder updates as ports join and leave).
        decision: the learning switch (where each frame goes).
        on_send_error: called with ``(egress index, error)`` for a failed send.
        admit: the ingress policer's verdict per frame, or None.
        mirrors: the mirrors' send functions.
        header: bytes before the Ethernet header (vnet header).
        now: the clock the MAC table ages by.

    Raises:
        EndpointClosed: the port was closed (the normal end).
        GreentapError: the port failed.
    """
    if decision.vlans:
        return _switch_vlans(index, port, sends, decision, on_send_error, admit, mirrors,
                             header, now)  # fmt: skip
    recv_into, buf, view = _reader(port)
    decide = decision.decide
    counters = port.counters
    while True:
        n = recv_into(buf)
        if admit is not None and not admit():
            continue
        frame = view[:n]
        for mirror in mirrors:
            mirror(frame)
        egress = decide(index, view[header:n], now())
        if not egress and n - header < ETH_HLEN:
            counters.rx_errors += 1
        for out in egress:
            try:
                sends[out](frame)
            except FrameRejected:
                pass
            except GreentapError as exc:
                on_send_error(out, exc)


def _switch_vlans(
    index: int,
    port: Port,
    sends: Sequence[Send],
    decision: LearningSwitch,
    on_send_error: Callable[[int, GreentapError], Any],
    admit: Admit | None,
    mirrors: Sequence[Send],
    header: int,
    now: Callable[[], float],
) -> None:
    """:func:`switch` with access ports and trunks: each frame within its VLAN.

    A frame arriving is given its VLAN by the ingress port's policy (or
    dropped, counted by reason); it leaves each egress port tagged or
    untagged as that port's policy says, the tag pushed or popped once per
    form and shared by the ports that take that form.
    """
    recv_into, buf, view = _reader(port)
    decide, policies = decision.decide_vlan, decision.policies
    mine = policies.get(index, _TRANSPARENT)
    counters, drops = port.counters, port.drops
    while True:
        n = recv_into(buf)
        if admit is not None and not admit():
            continue
        frame = view[:n]
        for mirror in mirrors:
            mirror(frame)
        found = tag_of(frame, header)
        if found == CUT_TAG or n - header < ETH_HLEN:
            counters.rx_errors += 1
            decision.runts += 1
            continue
        tag = found if found > 0 else None  # a priority tag (0) is untagged
        vlan, reason = mine.ingress(tag)
        if vlan is None:
            drops[reason] += 1  # type: ignore[index]
            continue
        tagged: Any = frame if tag is not None else None
        untagged: Any = frame if tag is None else None
        for out in decide(index, view[header:n], vlan, now()):
            if policies.get(out, _TRANSPARENT).egress(vlan):
                if tagged is None:  # a priority tag gets the VLAN id: never two tags
                    tagged = set_vid(frame, header, vlan) if found == 0 else push_tag(
                        frame, header, vlan)  # fmt: skip
                form = tagged
            else:
                if untagged is None:
                    untagged = pop_tag(frame, header)
                form = untagged
            try:
                sends[out](form)
            except FrameRejected:
                pass
            except GreentapError as exc:
                on_send_error(out, exc)


_TRANSPARENT = VlanPolicy()


def _reader(port: Port) -> tuple[Callable[..., int], mmap.mmap, memoryview]:
    """The port's recv_into and a reused buffer (with a view) sized for its largest frame.

    An anonymous mapping rather than a bytearray: only the pages frames reach
    cost memory (a 64 KiB buffer read 60-byte frames into costs one page), and
    it all goes back to the system when the pump ends, so ports that come and
    go (a listener's connections) leave no heap behind.
    """
    buf = mmap.mmap(-1, port.max_frame_size)
    return port.recv_into, buf, memoryview(buf)


def admission(port: Port, now: Callable[[], float]) -> Admit | None:
    """None, or a function saying whether the frame just read passes the port's policer."""
    policer = port.policer
    if policer is None:
        return None
    take, drops = policer.take, port.drops

    def admit() -> bool:
        if take(now()):
            return True
        drops["rx_rate_limited"] += 1  # type: ignore[index]
        return False

    return admit


def mirror_sends(mirrors: Sequence[Port], header: int) -> list[Send]:
    """The mirrors' send functions, given frames without the vnet header."""
    if not header:
        return [m.send for m in mirrors]
    return [_without_header(m.send, header) for m in mirrors]


def _without_header(send: Send, header: int) -> Send:
    return lambda frame: send(memoryview(frame)[header:])
