"""Opening, attaching and configuring real TAP/TUN devices in a namespace."""

import errno
import os
import subprocess
import textwrap

import gevent
import pytest

import greentap
from greentap.core import kernel_constants as kc
from tests.privileged.conftest import capless_python, sh, unique


def test_template_gets_a_kernel_assigned_name(netns, open_tap):
    """'gt%d' becomes gt0, then gt1; the devices exist while open and vanish on close."""
    first = open_tap("gt%d")
    second = open_tap("gt%d")
    assert (first.name, second.name) == ("gt0", "gt1")
    assert first.created
    info = netns.link("gt0")
    assert info["linkinfo"]["info_kind"] == "tun"
    assert info["linkinfo"]["info_data"]["type"] == "tap"
    first.close()
    second.close()
    assert netns.link("gt0") is None and netns.link("gt1") is None


def test_device_is_created_in_the_requested_namespace_only(netns, open_tap):
    """netns= opens the device inside that namespace, never in the caller's."""
    tap = open_tap()
    assert netns.link(tap.name) is not None
    assert tap.name not in os.listdir("/sys/class/net")


def test_attach_to_a_persistent_device_leaves_it_behind(netns, open_tap):
    """An existing persistent TAP is attached, not recreated, and survives close()."""
    name = unique()
    netns.ip("tuntap", "add", "dev", name, "mode", "tap")
    index = netns.link(name)["ifindex"]
    tap = open_tap(name)
    assert not tap.created
    assert tap.persistent
    assert tap.ifindex == index
    tap.close()
    assert netns.link(name)["ifindex"] == index


def test_persist_owner_and_group_round_trip(netns, open_tap):
    """persist=True keeps the device after close; owner/group are set on it."""
    tap = open_tap(persist=True, owner=65534, group="nogroup")
    name = tap.name
    tap.close()
    info = netns.link(name)["linkinfo"]["info_data"]
    assert info["pi"] is False
    assert info["persist"] is True
    assert info["user"] in (65534, "65534", "nobody")
    assert info["group"] in (65534, "65534", "nogroup")
    again = open_tap(name, persist=False)
    assert not again.persistent
    again.close()
    assert netns.link(name) is None


def test_name_too_long_creates_nothing(netns, open_tap):
    """A 16-byte name raises TapNameTooLong; no truncated device appears."""
    name = "gt" + "x" * 14
    before = netns.links()
    with pytest.raises(greentap.TapNameTooLong, match="16 bytes"):
        open_tap(name)
    assert netns.links() == before


def test_nul_in_name_creates_nothing(netns, open_tap):
    """A NUL byte raises TapNameConversion; 'gt' is not created in its place."""
    with pytest.raises(greentap.TapNameConversion):
        open_tap("gt\x00evil")
    assert "gt" not in netns.links()


def test_busy_device_is_refused(netns, open_tap):
    """A second open of a single-queue device fails with EBUSY, saying why."""
    tap = open_tap()
    with pytest.raises(greentap.SetTapAttributes, match="busy") as info:
        open_tap(tap.name)
    assert info.value.errno == errno.EBUSY
    assert info.value.ifname == tap.name


def test_mode_mismatch_with_existing_device_is_refused(netns, open_tap):
    """Opening a persistent TUN as a TAP fails with EINVAL and a hint about the type."""
    name = unique()
    netns.ip("tuntap", "add", "dev", name, "mode", "tun")
    with pytest.raises(greentap.SetTapAttributes, match="another type") as info:
        open_tap(name, mode="tap")
    assert info.value.errno == errno.EINVAL


def test_exclusive_refuses_to_attach(netns, open_tap):
    """exclusive=True fails on an existing device instead of attaching."""
    name = unique()
    netns.ip("tuntap", "add", "dev", name, "mode", "tap")
    with pytest.raises(greentap.SetTapAttributes, match="already exists"):
        open_tap(name, exclusive=True)


def test_multi_queue_opens_several_queues(netns, open_tap):
    """multi_queue=True attaches several fds to one device; multi_queue=False is refused."""
    q0 = open_tap(multi_queue=True)
    q1 = open_tap(q0.name, multi_queue=True)
    assert q1.name == q0.name and q1.fileno() != q0.fileno()
    assert netns.link(q0.name)["linkinfo"]["info_data"]["multi_queue"] is True
    with pytest.raises(greentap.SetTapAttributes, match="multi_queue difference"):
        open_tap(q0.name, multi_queue=False)


@pytest.mark.parametrize("made", ["multi_queue", "single"])
def test_default_attaches_as_the_device_was_made(netns, open_tap, made):
    """Without multi_queue=, an existing persistent device is attached as it was made."""
    name = unique()
    extra = ("multi_queue",) if made == "multi_queue" else ()
    netns.ip("tuntap", "add", "dev", name, "mode", "tap", *extra)
    tap = open_tap(name)
    assert tap.created is False
    assert bool(tap.flags & kc.IFF_MULTI_QUEUE) == (made == "multi_queue")
    with pytest.raises(greentap.SetTapAttributes, match="multi_queue difference"):
        open_tap(name, multi_queue=made != "multi_queue")  # the other mode, asked for


def test_link_settings_round_trip(netns, open_tap):
    """MTU, MAC and up/down set through ioctls are what `ip link` reports."""
    tap = open_tap()
    tap.mtu = 1400
    tap.mac = "02:00:5e:12:34:56"
    tap.up()
    info = netns.link(tap.name)
    assert (info["mtu"], info["address"]) == (1400, "02:00:5e:12:34:56")
    assert "UP" in info["flags"]
    assert (tap.mtu, tap.mac, tap.is_up) == (1400, "02:00:5e:12:34:56", True)
    tap.down()
    assert "UP" not in netns.link(tap.name)["flags"]
    assert not tap.is_up
    tap.txqueuelen = 4321
    assert netns.link(tap.name)["txqlen"] == 4321


def test_bad_link_settings_are_refused_and_change_nothing(netns, open_tap):
    """An out-of-range MTU or a multicast MAC raise LinkConfigFailed; the old values stay."""
    tap = open_tap()
    mac = tap.mac
    with pytest.raises(greentap.LinkConfigFailed, match="MTU") as info:
        tap.mtu = 70000
    assert info.value.errno == errno.EINVAL
    with pytest.raises(greentap.LinkConfigFailed, match="MAC"):
        tap.mac = "01:00:5e:00:00:01"
    with pytest.raises(ValueError, match="MAC"):
        tap.mac = "not-a-mac"
    assert (tap.mtu, tap.mac) == (1500, mac)


def test_link_settings_after_device_deleted_say_so(netns, open_tap):
    """Configuring a deleted device names the likely cause (deleted or moved)."""
    tap = open_tap()
    netns.ip("link", "del", tap.name)
    with pytest.raises(greentap.LinkConfigFailed, match="deleted, or moved"):
        tap.mtu = 1400


def test_tun_mode_has_no_mac(netns, open_tap):
    """A TUN device carries IP packets: no MAC, no Ethernet header to require."""
    tun = open_tap(mode="tun")
    assert tun.mode == "tun"
    assert tun.mac is None
    assert tun.min_frame_size == 1
    assert netns.link(tun.name)["linkinfo"]["info_data"]["type"] == "tun"


def test_vnet_hdr_sizes_the_reads(netns, open_tap):
    """With vnet_hdr the header size is read from the kernel and added to the read size."""
    tap = open_tap(vnet_hdr=True)
    plain = open_tap()
    assert tap.vnet_hdr_size == 10
    assert tap.max_frame_size == plain.max_frame_size + 10
    tap.set_vnet_hdr_size(12)
    assert tap.vnet_hdr_size == 12
    tap.set_offload(greentap.TUN_F_CSUM | greentap.TUN_F_TSO4 | greentap.TUN_F_TSO6)
    assert tap.offload == 0x7


def test_from_fd_adopts_an_attached_descriptor(netns, open_tap):
    """from_fd() learns the device's name and mode with TUNGETIFF."""
    tap = open_tap(vnet_hdr=True)
    adopted = greentap.Tap.from_fd(os.dup(tap.fileno()), netns=netns.name)
    try:
        assert (adopted.name, adopted.mode, adopted.vnet_hdr_size) == (tap.name, "tap", 10)
        assert adopted.ifindex == tap.ifindex
    finally:
        adopted.close()


def test_from_fd_refuses_an_unattached_tun_fd():
    """A /dev/net/tun fd without TUNSETIFF is refused with a hint."""
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        with pytest.raises(greentap.NotATapDevice, match="not attached") as info:
            greentap.Tap.from_fd(fd)
        assert info.value.errno == errno.EBADFD
    finally:
        os.close(fd)


def test_unknown_namespace_is_a_clear_error():
    """A namespace that does not exist says so and how to create it."""
    with pytest.raises(greentap.NamespaceUnavailable, match="ip netns add"):
        greentap.Tap(unique(), netns="gt-no-such-namespace")


def test_missing_privilege_is_reported_as_open_tun_failed(netns):
    """Without CAP_NET_ADMIN, creating a TAP fails with OpenTunFailed naming the capability."""
    code = textwrap.dedent(
        f"""
        import greentap
        print(open('/proc/self/status').read().split('CapEff:')[1].split()[0])
        try:
            greentap.Tap({unique()!r})
        except greentap.OpenTunFailed as exc:
            print(type(exc).__name__ + ': ' + str(exc))
        """
    )
    out = capless_python(netns, code)
    assert out.returncode == 0, out.stderr
    capeff, message = out.stdout.splitlines()
    assert int(capeff, 16) == 0
    assert message.startswith("OpenTunFailed: gt")
    assert message.endswith("Operation not permitted (needs CAP_NET_ADMIN)")


def test_owner_may_attach_without_privilege(netns, open_tap):
    """A persistent TAP owned by uid 0 can be attached by a capability-less uid-0
    process; one owned by another user cannot."""
    mine = open_tap(persist=True, owner=0)
    theirs = open_tap(persist=True, owner=65534)
    mine.close()
    theirs.close()
    code = textwrap.dedent(
        f"""
        import greentap
        with greentap.Tap({mine.name!r}) as t:
            print('attached', t.name, t.created)
        try:
            greentap.Tap({theirs.name!r})
        except greentap.OpenTunFailed as exc:
            print(exc)
        """
    )
    out = capless_python(netns, code)
    assert out.returncode == 0, out.stderr
    attached, refused = out.stdout.splitlines()
    assert attached == f"attached {mine.name} False"
    assert "owner/group" in refused and "CAP_NET_ADMIN" in refused


def test_no_fd_leaks_across_failed_opens(netns, open_tap):
    """Failed opens (busy device) close everything they opened."""
    tap = open_tap()
    before = set(os.listdir("/proc/self/fd"))
    for _ in range(50):
        with pytest.raises(greentap.SetTapAttributes):
            greentap.Tap(tap.name, netns=netns.name)
    assert set(os.listdir("/proc/self/fd")) == before


def test_a_moved_tap_keeps_its_fd_but_leaves_its_link_settings_behind(make_netns, open_tap):
    """`ip link set TAP netns OTHER`: the fd stays attached (attached() is true, frames
    still flow through it), but the link settings, made through a socket in the
    original namespace, fail with LinkConfigFailed saying why, and exists() is false."""
    tap = open_tap()
    other = make_netns()
    first = tap.link.netns
    sh("ip", "-n", first, "link", "set", tap.name, "netns", other.name)
    assert tap.attached() and not tap.exists()
    with pytest.raises(greentap.LinkConfigFailed, match="moved to another namespace") as exc:
        tap.mtu = 1400
    assert exc.value.errno == errno.ENODEV and exc.value.endpoint == tap.name
    other.ip("link", "set", tap.name, "up")
    with tap.polled() as polled:  # the moved device still carries frames, both ways
        other.exec("ip", "addr", "add", "198.18.0.1/24", "dev", tap.name)
        proc = other.popen("ping", "-c", "1", "-W", "1", "198.18.0.2", stdout=subprocess.DEVNULL)
        with gevent.Timeout(5, AssertionError("no ARP request from the moved TAP")):
            frame = polled.recv()
        proc.wait(timeout=10)
    assert frame[12:14] == b"\x08\x06"
