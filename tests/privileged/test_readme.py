"""The README's example runs exactly as written."""

import os
import re
import subprocess
import sys

from tests.privileged.conftest import python_env

README = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")


def readme_example():
    with open(README, encoding="utf-8") as f:
        text = f.read()
    section = text.split("## Example", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_reads_three_arp_requests(netns, tmp_path):
    """The example, unchanged, in a namespace with IPv6 on (the kernel's IPv6
    chatter arrives too): it makes its own traffic, prints three ARP requests
    for 198.18.0.2 among whatever else comes, and exits 0 by itself."""
    netns.exec(
        "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0", "net.ipv6.conf.default.disable_ipv6=0"
    )
    script = tmp_path / "example.py"
    script.write_text(readme_example())
    proc = netns.popen(
        sys.executable,
        str(script),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=python_env(),
    )
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert lines[0] == "reading frames on tap0"
    arp = [line for line in lines if line.endswith(" ARP")]
    assert len(arp) == 3, out
    assert all(line.endswith("-> ff:ff:ff:ff:ff:ff 42 bytes ARP") for line in arp), out
    assert lines[-1] == arp[-1]  # it stopped at the third
    assert "tap0" not in netns.links()  # created, so gone with the program
