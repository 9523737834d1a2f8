"""Frame builders and parsers used by the tests (ARP and IPv4 only)."""

import ipaddress
import struct

ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800


def mac(text):
    return bytes.fromhex(text.replace(":", ""))


def ip4(text):
    return ipaddress.IPv4Address(text).packed


def arp(op, src_mac, src_ip, dst_ip, dst_mac=b"\x00" * 6, eth_dst=None):
    """An Ethernet frame carrying an ARP request (op=1) or reply (op=2)."""
    if eth_dst is None:
        eth_dst = b"\xff" * 6 if op == 1 else dst_mac
    body = struct.pack(
        "!HHBBH6s4s6s4s", 1, ETH_P_IP, 6, 4, op, src_mac, ip4(src_ip), dst_mac, ip4(dst_ip)
    )
    return eth_dst + src_mac + struct.pack("!H", ETH_P_ARP) + body


def parse_arp(frame):
    """Return a dict of an ARP frame's fields, or None if it is not ARP."""
    if len(frame) < 42 or struct.unpack_from("!H", frame, 12)[0] != ETH_P_ARP:
        return None
    _, _, _, _, op, sha, spa, tha, tpa = struct.unpack_from("!HHBBH6s4s6s4s", frame, 14)
    return {
        "eth_dst": frame[:6],
        "eth_src": frame[6:12],
        "op": op,
        "sha": sha,
        "spa": str(ipaddress.IPv4Address(spa)),
        "tha": tha,
        "tpa": str(ipaddress.IPv4Address(tpa)),
    }


def _checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def icmp_echo_reply(request, src_mac):
    """Turn an Ethernet/IPv4/ICMP echo request into the matching reply."""
    ihl = (request[14] & 0x0F) * 4
    ip = bytearray(request[14 : 14 + ihl])
    ip[12:16], ip[16:20] = request[30:34], request[26:30]
    ip[10:12] = b"\0\0"
    ip[10:12] = struct.pack("!H", _checksum(bytes(ip)))
    icmp = bytearray(request[14 + ihl :])
    icmp[0] = 0
    icmp[2:4] = b"\0\0"
    icmp[2:4] = struct.pack("!H", _checksum(bytes(icmp)))
    return request[6:12] + src_mac + request[12:14] + bytes(ip) + bytes(icmp)
