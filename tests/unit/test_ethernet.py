"""MAC address parsing and formatting."""

import pytest

from greentap.core.ethernet import format_mac, is_multicast, parse_mac


def test_mac_round_trip():
    """Text -> bytes -> text is lossless and lower-case."""
    raw = parse_mac("02:00:5E:10:00:0A")
    assert raw == bytes([2, 0, 0x5E, 0x10, 0, 0x0A])
    assert format_mac(raw) == "02:00:5e:10:00:0a"
    assert parse_mac("02-00-5e-10-00-0a") == raw
    assert parse_mac(raw) == raw


@pytest.mark.parametrize(
    "text", ["", "02:00", "02:00:5e:10:00:0a:01", "zz:00:00:00:00:00", "123:0:0:0:0:0"]
)
def test_bad_mac_is_rejected(text):
    """Anything but six hex octets raises ValueError."""
    with pytest.raises(ValueError, match="MAC"):
        parse_mac(text)


def test_multicast_bit():
    """The I/G bit of the first octet marks group addresses."""
    assert is_multicast(b"\xff" * 6)
    assert is_multicast(bytes.fromhex("01005e000001"))
    assert not is_multicast(bytes.fromhex("020000000001"))
