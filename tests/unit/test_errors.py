"""The error hierarchy: one base, three families named for whose fault it was."""

import errno
import pickle

import pytest

import greentap
from greentap import errors
from greentap.errors import io_error


def test_message_names_endpoint_errno_and_remedy():
    """The text reads '<endpoint>: <strerror> (<hint>)' and carries the errno."""
    exc = greentap.OpenTunFailed.from_errno(errno.EPERM, "needs CAP_NET_ADMIN", endpoint="tap0")
    assert str(exc) == "tap0: Operation not permitted (needs CAP_NET_ADMIN)"
    assert exc.errno == errno.EPERM
    assert exc.endpoint == exc.ifname == "tap0"


def test_endpoint_is_a_keyword_and_optional():
    """Errors about no endpoint in particular read as the reason alone."""
    assert str(greentap.EndpointSyntaxError("--group needs --user")) == "--group needs --user"
    with pytest.raises(TypeError):
        greentap.EndpointSyntaxError("reason", "tap0")  # the endpoint is keyword-only


@pytest.mark.parametrize(
    "cls",
    [
        greentap.OpenTunFailed,
        greentap.SetTapAttributes,
        greentap.LinkConfigFailed,
        greentap.NamespaceUnavailable,
        greentap.EndpointUnavailable,
        greentap.PrivilegeDropFailed,
        greentap.EndpointVanished,
        greentap.EndpointIOError,
    ],
)
def test_system_refusals_are_oserrors_under_one_base(cls):
    """Everything the system refused is a SystemRefused, a GreentapError and an OSError."""
    exc = cls.from_errno(errno.EBUSY, endpoint="tap0")
    assert isinstance(exc, greentap.SystemRefused)
    assert isinstance(exc, greentap.GreentapError)
    assert isinstance(exc, OSError)
    assert exc.errno == errno.EBUSY
    assert exc.strerror == "Device or resource busy"


@pytest.mark.parametrize(
    "cls",
    [
        greentap.TapNameTooLong,
        greentap.TapNameConversion,
        greentap.InvalidInterfaceName,
        greentap.EndpointSyntaxError,
        greentap.FrameRejected,
        greentap.NotATapDevice,
    ],
)
def test_caller_mistakes_are_usage_errors_and_valueerrors(cls):
    """Bad names, endpoints, frames and fds are the caller's fault: UsageError, ValueError."""
    assert issubclass(cls, greentap.UsageError)
    assert issubclass(cls, ValueError)
    assert not issubclass(cls, greentap.SystemRefused)


def test_the_peer_and_nobody_have_their_own_families():
    """A peer that left is a PeerError; a closed endpoint is neither usage nor system."""
    assert issubclass(greentap.PeerGone, greentap.PeerError)
    for cls in (greentap.PeerGone, greentap.EndpointClosed):
        assert not issubclass(cls, (greentap.UsageError, greentap.SystemRefused))
        assert issubclass(cls, greentap.GreentapError)


def test_names_of_earlier_releases_still_work():
    """The seed's names and earlier public names stay importable, as aliases."""
    assert greentap.TapError is greentap.GreentapError
    assert greentap.TapClosed is greentap.EndpointClosed
    assert greentap.TapVanished is greentap.EndpointVanished
    assert greentap.TapIOError is greentap.EndpointIOError
    assert greentap.TapNameError is greentap.InterfaceNameError
    assert greentap.InvalidTapName is greentap.InvalidInterfaceName
    for name in ("TapNameTooLong", "OpenTunFailed", "SetTapAttributes", "TapNameConversion"):
        assert getattr(greentap, name).__name__ == name  # the seed's four, by their own names
    assert {n for n in errors.__all__ if n[0].isupper()} <= set(dir(greentap))


@pytest.mark.parametrize(
    "exc",
    [
        greentap.SetTapAttributes.from_errno(errno.EBUSY, "device is busy", endpoint="tap0"),
        greentap.TapNameTooLong(endpoint="x" * 20),
        greentap.EndpointClosed(endpoint="tap0"),
        greentap.EndpointSyntaxError("bad", endpoint="foo:bar"),
    ],
)
def test_errors_survive_pickling(exc):
    """Errors cross process boundaries (e.g. from a helper) intact."""
    again = pickle.loads(pickle.dumps(exc))
    assert type(again) is type(exc)
    assert str(again) == str(exc)
    assert (again.errno, again.endpoint, again.reason) == (exc.errno, exc.endpoint, exc.reason)


def test_odd_names_are_quoted():
    """A name with whitespace or control characters is shown with repr()."""
    exc = greentap.InvalidInterfaceName("name contains whitespace", endpoint="a b")
    assert str(exc).startswith("'a b':")


@pytest.mark.parametrize(
    ("code", "op", "cls"),
    [
        (errno.EBADFD, "read", greentap.EndpointVanished),
        (errno.EBADF, "read", greentap.EndpointClosed),
        (errno.EINVAL, "write", greentap.FrameRejected),
        (errno.EFAULT, "read", greentap.EndpointIOError),
    ],
)
def test_io_errors_are_translated_once(code, op, cls):
    """Read/write failures map onto the hierarchy by errno."""
    exc = io_error("tap0", OSError(code, "x"), op)
    assert type(exc) is cls
    assert exc.endpoint == "tap0"
