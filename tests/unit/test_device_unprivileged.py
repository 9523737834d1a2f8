"""Tap construction errors that need no privileges."""

import socket

import pytest

import greentap
from tests.conftest import open_fds


@pytest.mark.parametrize(
    ("name", "exc"),
    [
        ("x" * 16, greentap.TapNameTooLong),
        ("tap\x00", greentap.TapNameConversion),
        ("a/b", greentap.InvalidTapName),
    ],
)
def test_bad_name_fails_before_anything_is_opened(name, exc):
    """A bad name is refused before /dev/net/tun is touched: no fd, no device."""
    before = open_fds()
    with pytest.raises(exc):
        greentap.Tap(name)
    assert open_fds() == before


def test_unknown_mode_is_refused():
    """Only 'tap' and 'tun' are modes."""
    with pytest.raises(ValueError, match="mode"):
        greentap.Tap("tap0", mode="ethernet")


def test_from_fd_refuses_a_non_tun_fd():
    """Adopting a socket fd fails with NotATapDevice naming the fd."""
    s = socket.socket()
    try:
        with pytest.raises(greentap.NotATapDevice, match=r"fd \d+: .*not a /dev/net/tun"):
            greentap.Tap.from_fd(s.fileno())
    finally:
        s.close()


def test_from_fd_refuses_a_closed_fd():
    """A closed fd number is reported as such."""
    s = socket.socket()
    fd = s.fileno()
    s.close()
    with pytest.raises(greentap.NotATapDevice, match="not an open file descriptor"):
        greentap.Tap.from_fd(fd)


def test_polled_budget_must_be_positive():
    """A budget of 0 would never read: refused."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    tap = greentap.Tap._adopt(a.detach(), "sp")
    try:
        with pytest.raises(ValueError, match="budget"):
            tap.polled(budget=0)
    finally:
        tap.close()
        b.close()


def test_an_adopted_fd_without_a_link_refuses_link_settings_clearly():
    """A device adopted without a control socket has no link settings: asking for one
    is a LinkConfigFailed naming the device, as it always was."""
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    tap = greentap.TapDevice._adopt(ours.detach(), "sp9")
    try:
        with pytest.raises(greentap.LinkConfigFailed, match="sp9: no control socket"):
            tap.mtu  # noqa: B018 - the read is the test
        with pytest.raises(greentap.LinkConfigFailed):
            tap.up()
    finally:
        tap.close()
        peer.close()
