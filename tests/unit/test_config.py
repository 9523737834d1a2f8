"""--config: a TOML file checked whole, every error naming the file, the line and the key."""

import os
import textwrap

import pytest

from greentap.app import config, startup
from greentap.errors import ConfigError

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "tap-forward.toml")


def write(tmp_path, text):
    path = tmp_path / "tf.toml"
    path.write_text(textwrap.dedent(text))
    return str(path)


GOOD = """\
    stats = 5
    log-format = "json"
    mtu = 1450
    metrics = 9100
    [[endpoint]]
    name = "vm1"
    kind = "tap"
    device = "tap-vm1"
    netns = "blue"
    rate = 20000
    [[endpoint]]
    name = "up"
    kind = "vxlan"
    remote = ["198.18.0.2", "198.18.0.3:4790"]
    vni = 42
    [[endpoint]]
    name = "vms"
    kind = "unix"
    path = "/run/vms.sock"
    listen = true
    mode = 0o660
    [[endpoint]]
    name = "cap"
    url = "pcap:/var/tmp/x.pcap?rotate=100M&keep=3"
"""


def test_a_good_file_gives_options_and_named_endpoints(tmp_path):
    """Options by their Options field, endpoints by name as the command line would give
    them: a TAP's device, several VXLAN remotes, a listening socket's octal mode, a url."""
    loaded = config.load(write(tmp_path, GOOD))
    assert loaded.options == {"stats": 5.0, "log_format": "json", "mtu": 1450,
                              "metrics": ("127.0.0.1", 9100)}  # fmt: skip
    by_name = {e.name: e for e in loaded.endpoints}
    assert list(by_name) == ["vm1", "up", "vms", "cap"]
    assert by_name["vm1"].spec.name == "tap-vm1"
    assert by_name["vm1"].spec.options == {"netns": "blue", "rate": 20000.0}
    assert by_name["up"].spec.options["remotes"] == [("198.18.0.2", 4789), ("198.18.0.3", 4790)]
    assert by_name["vms"].spec.options["mode"] == 0o660
    assert by_name["cap"].text == "pcap:/var/tmp/x.pcap?rotate=100M&keep=3"
    assert by_name["vm1"].line == 5 and by_name["cap"].line == 22


def test_a_tap_table_without_device_opens_its_name(tmp_path):
    """kind = "tap" with no device opens the TAP named as the endpoint."""
    loaded = config.load(write(tmp_path, '[[endpoint]]\nname = "tap7"\nkind = "tap"\n'))
    assert loaded.endpoints[0].spec.name == "tap7"


# (file text, line, key, words in the message)
ERRORS = [
    ('mtu = "big"\n', 1, "mtu", "expected a number, not a string"),
    ("stats = 1\nmtu = 5\n", 2, "mtu", "from 68 to 65535, not 5"),
    ("bogus = 1\n", 1, "bogus", "unknown key"),
    ('log-format = "xml"\n', 1, "log-format", "one of console, json"),
    ("user = 7\n", 1, "user", "expected a string, not an integer"),
    ("[options]\nmtu = 1500\n", 1, "options", "unknown key"),
    ("endpoint = 3\n", 1, "endpoint", "[[endpoint]] tables"),
    ("x = = 3\n", 1, None, "not valid TOML"),
    ('[[endpoint]]\nkind = "tap"\n', 1, "name", "needs a name: missing"),
    ('[[endpoint]]\nname = "a b"\nkind = "tap"\n', 2, "name", "letters, digits"),
    ('[[endpoint]]\nname = "a"\n', 1, None, "either url"),
    ('[[endpoint]]\nname = "a"\nkind = "tap"\nurl = "tap0"\n', 1, None, "either url"),
    ('[[endpoint]]\nname = "a"\nkind = "tap"\nvni = 3\n', 4, "vni", "unknown key for a tap"),
    ('[[endpoint]]\nname = "a"\nkind = "warp"\n', 3, "kind", "expected one of tap"),
    ('[[endpoint]]\nname="a"\nkind="vxlan"\nremote="198.18.0.1"\nvni="x"\n', 5, "vni",
     "expected a number, not a string"),
    ('[[endpoint]]\nname="a"\nkind="vxlan"\nremote="198.18.0.1"\nvni=99999999\n', 5, "vni",
     "from 0 to 16777215"),
    ('[[endpoint]]\nname="a"\nkind="vxlan"\nvni=3\n', 1, "remote", "needs remote"),
    ('[[endpoint]]\nname="a"\nkind="unix"\npath="/x"\nlisten="yes"\n', 5, "listen",
     "true or false"),
    ('[[endpoint]]\nname="a"\nkind="tap"\ndevice="much-too-long-name"\n', 4, "device",
     "at most 15"),
    ('[[endpoint]]\nname="a"\nurl="bogus:x"\n', 3, "url", "unknown endpoint type"),
    ('[[endpoint]]\nname="a"\nurl="tap0"\nnetns="x"\n', 4, "netns", "a url takes no other"),
    ('[[endpoint]]\nname="a"\nurl="tap0"\n[[endpoint]]\nname="a"\nurl="tap1"\n', 5, "name",
     "also the name of the endpoint on line 1"),
    ('[[endpoint]]\nname="a"\nurl="tap0"\n[[endpoint]]\nname="b"\nkind="tap"\ndevice="tap0"\n',
     4, None, "the same endpoint as 'a' on line 1"),
    ('[[endpoint]]\nname="a"\nkind="unix"\npath="/x?y"\n', 4, "path", "cannot name"),
    ("stats = 1\nmtu = 0x" + "1" * 5000 + "\n", 2, "mtu", "far out of range"),
    ('[[endpoint]]\nname="a"\nkind="fd"\nfd=0x' + "f" * 900 + "\n", 4, "fd", "far out of range"),
    ("# caf\x85\u2028\nstats = 1\nmtu = 5\n", 3, "mtu", "from 68"),  # only \n ends a line
    ("stats = 1\nmtu.x = 3\n", 2, "mtu", "expected a number, not a table"),
    ('group = "root"\n', 1, "group", "needs user"),
    ('user = "no-such-user-here"\n', 1, "user", "no such user"),
    ('workers = 2\n[[endpoint]]\nname="a"\nurl="udp://127.0.0.1:9"\n', 1, "workers",
     "every endpoint to be a TAP, not a"),
    ('[["endpoint"]]\nname="a"\nkind="tap"\nvni=1\n', 4, "vni", "unknown key for a tap"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "line", "key", "words"), ERRORS)
def test_every_error_names_the_file_the_line_and_the_key(tmp_path, text, line, key, words):
    """Each bad file is refused with a ConfigError (a UsageError: exit 2) whose text
    starts with FILE:LINE and names the key at fault."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    err = caught.value
    assert (err.path, err.line, err.key) == (path, line, key)
    assert str(err).startswith(f"{path}:{line}: ")
    if key is not None:
        assert f"key {key!r}" in str(err)
    assert words in str(err)


@pytest.mark.parametrize(
    "text", ["mtu = 1" + "0" * 5000 + "\n", "mtu = " + "[" * 5000 + "\n"], ids=["digits", "nesting"]
)
def test_numbers_and_nesting_beyond_the_parser_are_config_errors(tmp_path, text):
    """A 5,000-digit number (beyond Python's int text limit) or arrays nested 5,000 deep:
    a ConfigError saying the TOML is not valid, never another exception."""
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(write(tmp_path, text))


def test_a_byte_order_mark_is_allowed(tmp_path):
    """A file some editor began with a UTF-8 byte-order mark loads."""
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbfmtu = 1500\n")
    assert config.load(str(path)).options == {"mtu": 1500}


def test_a_file_that_cannot_be_read_or_is_not_utf8_is_refused(tmp_path):
    """A missing file and bytes that are not UTF-8 are ConfigErrors naming the file."""
    with pytest.raises(ConfigError, match="cannot read it"):
        config.load(str(tmp_path / "nope.toml"))
    bad = tmp_path / "bin.toml"
    bad.write_bytes(b"mtu = 1500\n\xff\n")
    with pytest.raises(ConfigError, match=r"bin.toml:2: not UTF-8"):
        config.load(str(bad))


def test_the_example_file_is_valid():
    """examples/tap-forward.toml, which the README points to, loads as documented."""
    loaded = config.load(EXAMPLE)
    assert {e.name for e in loaded.endpoints} == {"vm1", "vm2", "uplink", "guests", "capture"}
    assert loaded.options["control"] == "/run/tap-forward/control.sock"
    assert startup.plan(startup.Options(endpoints=[e.text for e in loaded.endpoints]))


def test_the_command_line_overrides_the_file(tmp_path):
    """settle(): defaults, then the file, then what the command line gave; endpoints come
    from the file with their names."""
    path = write(tmp_path, GOOD)
    options = startup.settle({"config": path, "mtu": 9000, "endpoints": []})
    assert options.mtu == 9000  # the command line's
    assert options.stats == 5.0 and options.log_format == "json"  # the file's
    assert options.aging == 300.0  # the default
    assert options.names == ["vm1", "up", "vms", "cap"]
    assert options.named()[0] == ("vm1", "tap:tap-vm1?netns=blue&rate=20000")
    assert options.file_options["mtu"] == 1450


def test_endpoints_in_both_places_are_refused(tmp_path):
    """Endpoints on the command line and in the file: a usage error (a reload reads only
    the file, so the two would disagree)."""
    from greentap.errors import UsageError

    with pytest.raises(UsageError, match="give them in one place"):
        startup.settle({"config": write(tmp_path, GOOD), "endpoints": ["tap9", "tap8"]})
