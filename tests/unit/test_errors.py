"""The error hierarchy: one base, messages a person can act on."""

import errno
import pickle

import pytest

import greentap
from greentap.errors import io_error


def test_message_names_interface_errno_and_remedy():
    """The text reads '<ifname>: <strerror> (<hint>)' and carries the errno."""
    exc = greentap.OpenTunFailed.from_errno("tap0", errno.EPERM, "needs CAP_NET_ADMIN")
    assert str(exc) == "tap0: Operation not permitted (needs CAP_NET_ADMIN)"
    assert exc.errno == errno.EPERM
    assert exc.ifname == "tap0"


@pytest.mark.parametrize(
    "cls",
    [
        greentap.OpenTunFailed,
        greentap.SetTapAttributes,
        greentap.NotATapDevice,
        greentap.LinkConfigFailed,
        greentap.NamespaceUnavailable,
        greentap.TapVanished,
        greentap.TapIOError,
    ],
)
def test_kernel_errors_are_oserrors_under_one_base(cls):
    """Everything the kernel refused is both a TapError and an OSError."""
    exc = cls.from_errno("tap0", errno.EBUSY)
    assert isinstance(exc, greentap.TapError)
    assert isinstance(exc, OSError)
    assert exc.errno == errno.EBUSY
    assert exc.strerror == "Device or resource busy"


def test_caller_mistakes_are_valueerrors():
    """Bad names and runt frames are the caller's fault: ValueError."""
    for cls in (greentap.TapNameTooLong, greentap.InvalidTapName, greentap.FrameRejected):
        assert issubclass(cls, ValueError)
        assert issubclass(cls, greentap.TapError)


def test_errors_survive_pickling():
    """Errors cross process boundaries (e.g. from a helper) intact."""
    exc = greentap.SetTapAttributes.from_errno("tap0", errno.EBUSY, "device is busy")
    again = pickle.loads(pickle.dumps(exc))
    assert type(again) is greentap.SetTapAttributes
    assert str(again) == str(exc)
    assert again.errno == errno.EBUSY


def test_odd_names_are_quoted():
    """A name with whitespace or control characters is shown with repr()."""
    assert str(greentap.InvalidTapName("a b", "name contains whitespace")).startswith("'a b':")


@pytest.mark.parametrize(
    ("code", "op", "cls"),
    [
        (errno.EBADFD, "read", greentap.TapVanished),
        (errno.EBADF, "read", greentap.TapClosed),
        (errno.EINVAL, "write", greentap.FrameRejected),
        (errno.EFAULT, "read", greentap.TapIOError),
    ],
)
def test_io_errors_are_translated_once(code, op, cls):
    """os.read/os.write failures map onto the hierarchy by errno."""
    exc = io_error("tap0", OSError(code, "x"), op)
    assert type(exc) is cls
    assert exc.ifname == "tap0"
