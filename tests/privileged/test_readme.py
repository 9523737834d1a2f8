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


def test_readme_example_reads_three_frames(netns, tmp_path):
    """Run the example in a namespace, cause three ARP requests, and see them printed."""
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
        first = proc.stdout.readline()
        assert first == "reading frames on tap0\n", first or proc.stderr.read()
        netns.ip("addr", "add", "198.18.0.1/24", "dev", "tap0")
        pings = [
            netns.popen("ping", "-c", "1", "-W", "1", f"198.18.0.{n}", stdout=subprocess.DEVNULL)
            for n in (2, 3, 4)
        ]
        out, err = proc.communicate(timeout=20)
        for p in pings:
            p.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    frames = [line for line in out.splitlines() if "->" in line]
    assert len(frames) == 3
    assert all(line.endswith("-> ff:ff:ff:ff:ff:ff 42 bytes") for line in frames), out
