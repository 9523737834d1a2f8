"""Interface-name validation: the kernel's rules, checked before any syscall."""

import pytest

from greentap.core.names import decode_ifname, encode_ifname
from greentap.errors import InvalidTapName, TapNameConversion, TapNameError, TapNameTooLong


@pytest.mark.parametrize(
    "name", ["tap0", "t", "a" * 15, "tap%d", "br-lan.10", "veth_x", "ünï", b"tap1"]
)
def test_valid_names_are_encoded_unchanged(name):
    """A valid name comes back as the same bytes, never altered."""
    raw = encode_ifname(name)
    assert raw == (name if isinstance(name, bytes) else name.encode())
    assert decode_ifname(raw + b"\0" * (16 - len(raw))) == (
        name.decode() if isinstance(name, bytes) else name
    )


@pytest.mark.parametrize("name", ["a" * 16, "a" * 40, "ü" * 8])
def test_sixteen_bytes_or_more_is_too_long(name):
    """16+ bytes (counted in bytes, not characters) raise TapNameTooLong with the length."""
    with pytest.raises(TapNameTooLong) as info:
        encode_ifname(name)
    assert info.value.length == len(name.encode())
    assert "at most 15" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_nul_byte_is_a_conversion_error():
    """A NUL byte cannot go into a C string: TapNameConversion, not truncation."""
    with pytest.raises(TapNameConversion, match="NUL"):
        encode_ifname("tap\x000")


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "empty"),
        (".", "not allowed"),
        ("..", "not allowed"),
        ("a/b", "'/'"),
        ("a:b", "':'"),
        ("a b", "whitespace"),
        ("a\tb", "whitespace"),
        ("tap\n", "whitespace"),
        ("à", "whitespace"),  # UTF-8 C3 A0: the kernel's isspace() accepts 0xA0
        ("tap%s", "template"),
        ("t%d%d", "template"),
        ("t%", "template"),
    ],
)
def test_invalid_names_are_rejected_with_a_reason(name, why):
    """Names the kernel would refuse raise InvalidTapName saying why."""
    with pytest.raises(InvalidTapName, match=why):
        encode_ifname(name)


def test_template_can_be_forbidden():
    """Where a template makes no sense, '%d' is refused."""
    with pytest.raises(InvalidTapName, match="template"):
        encode_ifname("tap%d", allow_template=False)


def test_non_string_name_is_a_type_error():
    """A name must be str or bytes."""
    with pytest.raises(TypeError):
        encode_ifname(5)


def test_all_name_errors_share_a_base():
    """Callers can catch every naming mistake with TapNameError."""
    for exc in (TapNameTooLong, TapNameConversion, InvalidTapName):
        assert issubclass(exc, TapNameError)
