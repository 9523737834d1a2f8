"""Fixtures for the QEMU guest tests: the guest's images (built once per session) and
guests that are killed after each test, next to the privileged fixtures (namespaces,
tap-forward subprocesses, the root check) reused from tests/privileged.

Outside CI these tests skip when the guest cannot be built (no root, no apt, no
network); in CI (``CI=true``) or with ``GREENTAP_REQUIRE_PRIVILEGED=1`` that is a
failure: the guest tests must run there.
"""

import shutil
import socket
import tempfile

import pytest

from tests.conftest import must_run
from tests.privileged.conftest import _missing, _privileges, forwarders, make_netns  # noqa: F401
from tests.vm.guest import QEMU, Guest, GuestError, build_guest, ensure_packages


def _cannot(why):
    if must_run():
        pytest.fail(f"the QEMU guest tests must run here but cannot: {why}")
    pytest.skip(f"{why}; scripts/run-tests (as root) installs what these tests need")


@pytest.fixture(scope="session")
def guest_images():
    """(kernel, initrd) of the test guest: QEMU and busybox installed if missing, the
    image built (or found in its cache) once for the session."""
    why = _missing()
    if why:
        _cannot(why)
    try:
        ensure_packages()
        images = build_guest()
    except (GuestError, OSError) as exc:
        _cannot(f"cannot build the test guest: {exc}")
    if shutil.which(QEMU) is None:
        _cannot(f"{QEMU} is not installed")
    return images


@pytest.fixture
def guests(guest_images):
    """``guests(*args, **kw)`` makes a :class:`Guest` (the session's images), prints its
    QEMU command line and starts it; every guest is killed (SIGKILL by PID) after the
    test, also when it fails.  start() returns once the NIC is connected, before the
    guest boots, so several guests boot in parallel."""
    kernel, initrd = guest_images
    started = []

    def start(*args, **kw):
        guest = Guest(*args, kernel=kernel, initrd=initrd, **kw)
        started.append(guest)
        print(f"\n[{guest.name}] {' '.join(guest.command)}")
        return guest.start()

    yield start
    for guest in started:
        guest.kill()


@pytest.fixture
def sock_dir():
    """A short-named private directory for unix sockets (a socket path is at most 107
    bytes; pytest's tmp_path can be longer); removed after the test."""
    path = tempfile.mkdtemp(prefix="gt-vm-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
