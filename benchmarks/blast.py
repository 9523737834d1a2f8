"""Send raw Ethernet frames out of one interface, bounded in count and time.

Run it inside a test namespace (``ip netns exec NS python blast.py ...``): it
writes frames with an ``AF_PACKET`` socket on DEV, so on a TAP they reach the
program holding the TAP's fd.  Used by the flood tests and the soak script.

    blast.py DEV --count N [--seconds S] [--dst MAC] [--distinct-sources] [--base N]
             [--size BYTES]

Prints one JSON line: ``{"sent": N, "dropped": N, "seconds": S}``.
"""

import argparse
import json
import socket
import struct
import time

ETH_P_IP = 0x0800


def frames(dst, count, size, distinct, base):
    """Yield ``count`` frames of ``size`` bytes; with ``distinct`` each has its own
    locally administered source MAC (02:gt:N), else all share one."""
    payload = bytes(size - 14)
    head = dst
    if not distinct:
        fixed = head + bytes.fromhex("02aa00000001") + struct.pack("!H", ETH_P_IP) + payload
        for _ in range(count):
            yield fixed
        return
    for i in range(base, base + count):
        yield head + b"\x02\x67" + struct.pack("!I", i) + struct.pack("!H", ETH_P_IP) + payload


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dev")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--seconds", type=float, default=30.0, help="stop after this long anyway")
    p.add_argument("--dst", default="ff:ff:ff:ff:ff:ff", help="destination MAC")
    p.add_argument("--distinct-sources", action="store_true", help="a new source MAC per frame")
    p.add_argument("--base", type=int, default=0, help="first source MAC number")
    p.add_argument("--size", type=int, default=60, help="frame size (without FCS)")
    args = p.parse_args(argv)
    if not 14 <= args.size <= 1514:
        p.error("--size must be between 14 and 1514")
    dst = bytes.fromhex(args.dst.replace(":", ""))
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((args.dev, 0))
    sock.setblocking(False)
    sent = dropped = 0
    start = time.monotonic()
    deadline = start + args.seconds
    for i, frame in enumerate(frames(dst, args.count, args.size, args.distinct_sources, args.base)):
        while True:
            try:
                sock.send(frame)
                sent += 1
                break
            except BlockingIOError:
                time.sleep(0.0005)  # the device queue is full: wait, do not lose count
            except OSError:
                dropped += 1  # e.g. the link went down mid-burst
                break
            if time.monotonic() > deadline:
                break
        if i % 1024 == 0 and time.monotonic() > deadline:
            break
    print(json.dumps({"sent": sent, "dropped": dropped, "seconds": time.monotonic() - start}))


if __name__ == "__main__":
    main()
