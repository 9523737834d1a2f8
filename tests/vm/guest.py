"""A tiny Debian-kernel + busybox guest booted under QEMU on a ``-netdev stream`` socket.

The guest is built from Debian packages without installing a kernel: ``apt-get download``
fetches the image that ``linux-image-amd64`` depends on, and its ``vmlinuz`` plus the
virtio-net modules go into a gzip'd newc initramfs written here in pure Python, next to
busybox-static and an ``/init`` script.  The guest reads ``gt.ip=``, ``gt.ping=`` and
``gt.count=`` from the kernel command line and prints ``GT-READY <mac> <ip>`` and
``GT-PING rc=<rc> transmitted=<n> received=<n>`` on its serial console.

Typical use (the listener must be up first; QEMU 7.2 connects once)::

    with (
        Guest(path_a, "198.18.7.1/24", name="a") as a,
        Guest(path_b, "198.18.7.2/24", ping="198.18.7.1", count=5, name="b") as b,
    ):
        a.wait_for(READY_RE)
        assert b.ping_result(timeout=120) == (0, 5, 5), b.output

Smoke check (run from the repository root): ``python -m tests.vm.guest [--netdev KIND]``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import glob
import gzip
import hashlib
import ipaddress
import json
import lzma
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

try:  # Under gevent, wait_for must let the hub run (an in-process forwarder).
    from gevent import sleep as _sleep
except ImportError:  # pragma: no cover - the project always has gevent
    _sleep = time.sleep

#: Debian packages a test machine needs installed (CI installs these).
PACKAGES = ("qemu-system-x86", "busybox-static")
#: Metapackage whose kernel image is downloaded (never installed) by build_guest().
KERNEL_META = "linux-image-amd64"
DEFAULT_CACHE = os.environ.get("GREENTAP_GUEST_CACHE", "/var/cache/greentap-test-guest")
QEMU = "qemu-system-x86_64"
BUSYBOX = "/bin/busybox"
#: Modules the guest needs; their dependencies are added from each module's modinfo.
WANTED_MODULES = ("virtio_pci", "virtio_net")
NETDEVS = ("stream-unix", "stream-inet", "socket-connect")
#: The guest's console markers, for Guest.wait_for.
READY_RE = r"^GT-READY (?P<mac>\S+) (?P<ip>\S+)"
PING_RE = r"^GT-PING rc=(?P<rc>\d+) transmitted=(?P<tx>\d+) received=(?P<rx>\d+).*"

INIT_SCRIPT = r"""#!/bin/busybox sh
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev || mount -t tmpfs tmpfs /dev
exec </dev/console >/dev/console 2>&1
for m in /modules/*.ko; do insmod "$m" || echo "GT-ERROR insmod $m"; done
dmesg -n 1  # keep kernel messages from splitting our marker lines
IP= PING= COUNT=5
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    gt.ip=*) IP=${arg#gt.ip=} ;;
    gt.ping=*) PING=${arg#gt.ping=} ;;
    gt.count=*) COUNT=${arg#gt.count=} ;;
  esac
done
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
ip link set lo up
ip link set eth0 up
ip addr add "$IP" dev eth0 || echo "GT-ERROR ip addr add $IP"
echo "GT-READY $(cat /sys/class/net/eth0/address) $IP"
if [ -n "$PING" ]; then
  # ARP and the forwarder's learning may need a moment: wait (bounded) for one
  # reply so that the counted run below can expect every ping answered.
  w=0
  while [ $w -lt 20 ] && ! ping -c 1 -W 1 "$PING" >/dev/null 2>&1; do w=$((w + 1)); done
  ping -c "$COUNT" -W 1 "$PING" >/tmp/ping.out 2>&1
  rc=$?
  cat /tmp/ping.out
  tx=$(sed -n 's/^\([0-9]*\) packets transmitted.*/\1/p' /tmp/ping.out)
  rx=$(sed -n 's/.*, \([0-9]*\) packets received.*/\1/p' /tmp/ping.out)
  echo "GT-PING rc=$rc transmitted=${tx:-0} received=${rx:-0} warmup=$w"
fi
while true; do sleep 3600; done
"""


class GuestError(RuntimeError):
    """The guest could not be built, started, or exited early."""


def _run(cmd: list[str], timeout: float, cwd: str | None = None) -> str:
    """Run ``cmd`` and return its stdout.

    Raises:
        GuestError: naming the command, when it fails or times out.
    """
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C")
    try:
        done = subprocess.run(
            cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise GuestError(f"`{' '.join(cmd)}` failed: {exc}") from exc
    if done.returncode:
        last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["?"]
        raise GuestError(f"`{' '.join(cmd)}` exited {done.returncode}: {last[0]}")
    return done.stdout


def _apt(cmd: list[str], timeout: float, cwd: str | None = None) -> str:
    """Run an apt command, retrying once after ``apt-get update``: a fresh machine's
    package lists may be empty or stale."""
    try:
        return _run(cmd, timeout, cwd)
    except GuestError:
        _run(["apt-get", "update", "-q"], timeout=600)
        return _run(cmd, timeout, cwd)


def ensure_packages(packages: tuple[str, ...] = PACKAGES) -> None:
    """Install whichever of ``packages`` is missing with apt-get.

    Raises:
        GuestError: when apt-get fails (even after an ``apt-get update``).
    """
    missing = []
    for name in packages:
        query = ["dpkg-query", "-W", "-f=${Status}", name]
        status = subprocess.run(query, capture_output=True, text=True, timeout=60)
        if status.stdout.strip() != "install ok installed":
            missing.append(name)
    if missing:
        _apt(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], 900)


def _kernel_package() -> tuple[str, str]:
    """Return the (name, version) of the image package that KERNEL_META depends on."""
    show = ["apt-cache", "show", "--no-all-versions", KERNEL_META]
    text = _apt(show, timeout=60)
    found = re.search(r"^Depends:.*?\b(linux-image-[^\s,(]+) \(= ([^)\s]+)\)", text, re.M)
    if not found:
        raise GuestError(f"no linux-image dependency in `{' '.join(show)}`")
    return found[1], found[2]


def _load_module(path: str) -> bytes:
    """Return a kernel module's bytes, decompressed so that busybox insmod can load it."""
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".xz"):
        return lzma.decompress(data)
    if path.endswith(".gz"):
        return gzip.decompress(data)
    if path.endswith(".zst"):
        raise GuestError(f"{path}: zstd modules are not supported (no zstd in Python)")
    return data


def _module_closure(moddir: str) -> list[tuple[str, bytes]]:
    """Return WANTED_MODULES and their dependencies as (name, bytes), dependencies first.

    The .deb ships no modules.dep (depmod makes it on install), so the ``depends=``
    field of each module's .modinfo is read instead; built-in modules are skipped.
    """
    files: dict[str, str] = {}
    for root, _dirs, names in os.walk(os.path.join(moddir, "kernel")):
        for name in names:
            base = re.sub(r"\.ko(\.(xz|gz|zst))?$", "", name)
            if base != name:
                files[base.replace("-", "_")] = os.path.join(root, name)
    with open(os.path.join(moddir, "modules.builtin")) as f:
        builtin = {os.path.basename(line.strip())[:-3].replace("-", "_") for line in f}
    ordered: list[tuple[str, bytes]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen or name in builtin:
            return
        seen.add(name)
        if name not in files:
            raise GuestError(f"kernel module {name} is neither a module nor built in")
        data = _load_module(files[name])
        deps = re.search(rb"\0depends=([^\0]*)\0", data)
        for dep in deps[1].decode().split(",") if deps else []:
            if dep:
                visit(dep.replace("-", "_"))
        ordered.append((name, data))

    for wanted in WANTED_MODULES:
        visit(wanted)
    return ordered


def _cpio(entries: list[tuple[str, int, bytes, int]]) -> bytes:
    """Return a newc cpio archive of (name, mode, data, rdev) entries (data: symlink target)."""
    out = bytearray()
    for ino, (name, mode, data, rdev) in enumerate([*entries, ("TRAILER!!!", 0, b"", 0)], 1):
        raw = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev >> 8, rdev & 0xFF, len(raw), 0)
        out += b"070701" + b"".join(b"%08x" % v for v in fields) + raw
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def build_guest(cache_dir: str = DEFAULT_CACHE) -> tuple[str, str]:
    """Build (once) the guest's kernel and initramfs under ``cache_dir``.

    The cache key is the kernel package and version plus a hash of the init script,
    WANTED_MODULES and busybox, so a change to any of them rebuilds; a lock file makes
    concurrent builds (e.g. pytest workers) wait for one another.

    Returns:
        (kernel_path, initrd_path).

    Raises:
        GuestError: when a package lookup, download or extraction fails.
    """
    ensure_packages()
    package, version = _kernel_package()
    digest = hashlib.sha256(INIT_SCRIPT.encode() + repr(WANTED_MODULES).encode())
    with open(BUSYBOX, "rb") as f:
        digest.update(f.read())
    key = f"{package}_{version.replace(':', '_')}-{digest.hexdigest()[:12]}"
    target = os.path.join(cache_dir, key)
    kernel, initrd = os.path.join(target, "vmlinuz"), os.path.join(target, "initrd.gz")
    os.makedirs(cache_dir, exist_ok=True)
    with open(os.path.join(cache_dir, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(initrd):
            return kernel, initrd
        with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".build-") as tmp:
            # Sandbox user root: _apt cannot write into a 0700 temp dir.
            download = ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root"]
            _apt([*download, f"{package}={version}"], timeout=900, cwd=tmp)
            for deb in glob.glob(os.path.join(tmp, "*.deb")):
                _run(["dpkg-deb", "-x", deb, os.path.join(tmp, "x")], timeout=300)
            images = glob.glob(os.path.join(tmp, "x/boot/vmlinuz-*"))
            moddirs = glob.glob(os.path.join(tmp, "x/lib/modules/*"))
            moddirs += glob.glob(os.path.join(tmp, "x/usr/lib/modules/*"))
            if len(images) != 1 or len(moddirs) != 1:
                raise GuestError(f"{package}: expected one vmlinuz and one module dir")
            with open(BUSYBOX, "rb") as f:
                busybox = f.read()
            dirs = ["bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp"]
            entries = [(d, 0o40755, b"", 0) for d in [*dirs, "modules"]]
            entries += [
                ("dev/console", 0o20600, b"", (5 << 8) | 1),
                ("bin/busybox", 0o100755, busybox, 0),
                ("bin/sh", 0o120777, b"busybox", 0),
                ("init", 0o100755, INIT_SCRIPT.encode(), 0),
            ]
            for i, (name, data) in enumerate(_module_closure(moddirs[0])):
                entries.append((f"modules/{i:02d}-{name}.ko", 0o100644, data, 0))
            os.makedirs(os.path.join(tmp, "out"))
            shutil.copyfile(images[0], os.path.join(tmp, "out/vmlinuz"))
            with open(os.path.join(tmp, "out/initrd.gz"), "wb") as f:
                f.write(gzip.compress(_cpio(entries), mtime=0))
            os.rename(os.path.join(tmp, "out"), target)  # atomic: complete or absent
    return kernel, initrd


def _read(path: str) -> str:
    """Return a text file's contents, or "" while it does not exist yet."""
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def _escape(value: str) -> str:
    """Escape a QEMU option value (a comma is written as two)."""
    return value.replace(",", ",,")


class Guest:
    """One QEMU guest whose virtio NIC is a stream/socket netdev client.

    QEMU 7.2 connects once at start and has no ``reconnect=``: the listener (e.g.
    ``tap-forward ... unix:PATH?listen``) must be up before start().
    """

    def __init__(
        self,
        socket_path: str | None,
        ip: str,
        mac: str | None = None,
        ping: str | None = None,
        count: int = 5,
        kernel: str | None = None,
        initrd: str | None = None,
        name: str = "guest",
        netdev: str = "stream-unix",
        host: str = "127.0.0.1",
        port: int | None = None,
        accel: str = "tcg",
    ) -> None:
        """Describe a guest and its QEMU command line (``command``); nothing runs yet.

        Args:
            socket_path: unix stream socket to connect to (netdev "stream-unix").
            ip: the guest's eth0 address with prefix, from 198.18.0.0/15.
            mac: eth0's MAC; by default 52:54:00 plus the address's last three bytes.
            ping: an address to ping once the network is up (see the module doc).
            count: how many pings the counted run sends.
            kernel, initrd: the guest's images; by default build_guest()'s.
            name: QEMU's -name, also in the name of the guest's scratch directory.
            netdev: one of NETDEVS; "stream-inet" and "socket-connect" use host/port.
            host, port: the TCP listener for the inet variants.
            accel: QEMU accelerator; TCG, because this host's KVM boots no stock guest.

        Raises:
            ValueError: for an unknown netdev, a missing socket_path/port, or an address
                outside 198.18.0.0/15.
        """
        iface = ipaddress.ip_interface(ip)
        for addr in (iface.ip, *([ipaddress.ip_address(ping)] if ping else [])):
            if addr not in ipaddress.ip_network("198.18.0.0/15"):
                raise ValueError(f"{addr} is outside 198.18.0.0/15")
        if netdev == "stream-unix" and socket_path:
            nd = f"stream,id=n0,server=off,addr.type=unix,addr.path={_escape(socket_path)}"
        elif netdev == "stream-inet" and port is not None:
            nd = f"stream,id=n0,server=off,addr.type=inet,addr.host={host},addr.port={port}"
        elif netdev == "socket-connect" and port is not None:
            nd = f"socket,id=n0,connect={host}:{port}"
        else:
            raise ValueError(f"netdev {netdev!r} (one of {NETDEVS}) lacks socket_path or port")
        if mac is None:
            mac = "52:54:00:" + ":".join(f"{b:02x}" for b in iface.ip.packed[1:])
        if kernel is None or initrd is None:
            kernel, initrd = build_guest()
        self.name, self.ip, self.mac = name, str(iface), mac
        self.peer = socket_path if netdev == "stream-unix" else f"{host}:{port}"
        # Made by start(): a guest never started leaves nothing behind.
        self._dir = os.path.join(tempfile.gettempdir(), f"greentap-{name}-{os.urandom(4).hex()}")
        self._serial, self._stderr = f"{self._dir}/serial.log", f"{self._dir}/qemu.log"
        self._qmp_path = f"{self._dir}/qmp.sock"
        self._proc: subprocess.Popen[bytes] | None = None
        self._final: str | None = None
        append = f"console=ttyS0 panic=-1 quiet gt.ip={self.ip}"
        if ping:
            append += f" gt.ping={ping} gt.count={count}"
        # -nodefaults: no VGA, default NIC, monitor or serial; serial goes to a file so
        # output survives and wait_for needs no reader thread.  romfile= skips iPXE.
        self.command = [
            QEMU, "-name", name, "-accel", accel, "-m", "256", "-smp", "1",
            "-nodefaults", "-display", "none", "-no-reboot",
            "-serial", f"file:{self._serial}",
            "-qmp", f"unix:{self._qmp_path},server=on,wait=off",
            "-kernel", kernel, "-initrd", initrd, "-append", append,
            "-netdev", nd,
            "-device", f"virtio-net-pci,netdev=n0,mac={mac},romfile=",
        ]  # fmt: skip

    def start(self, check_connected: bool = True) -> Guest:
        """Launch QEMU in the background and return self.

        Args:
            check_connected: wait (up to 10 s) until the netdev has connected.  QEMU 7.2
                does not fail on a refused connection: it boots with an unplugged NIC,
                which would only show as a failed ping much later.

        Raises:
            GuestError: when QEMU cannot be started or connected, or was started before.
        """
        if self._proc is not None:
            raise GuestError(f"{self.name} was already started")
        os.mkdir(self._dir, 0o700)
        with open(self._stderr, "wb") as err:
            try:
                self._proc = subprocess.Popen(
                    self.command, stdin=subprocess.DEVNULL, stdout=err, stderr=err
                )
            except OSError as exc:
                raise GuestError(f"cannot start {QEMU}: {exc}") from exc
        deadline, connected = time.monotonic() + 10, r"type=\w+,(unix:|tcp:|socket: connect to)"
        try:
            while check_connected and not re.search(connected, info := self.netdev_info()):
                # 7.2 never retries: a "connection error" is final.
                if time.monotonic() > deadline or "connection error" in info:
                    raise GuestError(f"{self.name}: no listener at {self.peer}? ({info})")
                _sleep(0.05)
        except GuestError:
            self.kill()  # __exit__ does not run when __enter__ raises
            raise
        return self

    def netdev_info(self) -> str:
        """Return QEMU's ``info network`` line for the guest's netdev (via QMP).

        A connected one names its peer (``unix:PATH``, ``tcp:H:P``, ``socket: connect
        to H:P``); a failed one reads ``connection error`` or names none.

        Raises:
            GuestError: when QEMU has exited or its QMP socket does not answer.
        """
        deadline = time.monotonic() + 10
        while True:  # QMP's socket appears a moment after QEMU starts
            if self._proc is None or self._proc.poll() is not None:
                raise GuestError(f"{self.name} is not running:\n{self.output[-2000:]}")
            try:
                with socket.socket(socket.AF_UNIX) as sock:
                    sock.settimeout(10)
                    sock.connect(self._qmp_path)
                    with sock.makefile("rw") as qmp:
                        info = {"command-line": "info network"}
                        for cmd, args in (
                            ("qmp_capabilities", {}),
                            ("human-monitor-command", info),
                        ):
                            qmp.write(json.dumps({"execute": cmd, "arguments": args}) + "\n")
                            qmp.flush()
                            # Skip the greeting and events up to the command's reply.
                            while "return" not in (reply := json.loads(qmp.readline() or "{}")):
                                if "error" in reply or not reply:
                                    raise OSError(f"QMP said {reply}")
                lines = reply["return"].splitlines()
                return next((ln.strip(" \\") for ln in lines if "n0:" in ln), "")
            except (OSError, ValueError) as exc:
                if time.monotonic() > deadline:
                    raise GuestError(f"{self.name}: QMP failed: {exc}") from exc
                _sleep(0.05)

    @property
    def output(self) -> str:
        """The serial console so far, then QEMU's own messages if it printed any."""
        if self._final is not None:
            return self._final
        serial, stderr = _read(self._serial), _read(self._stderr)
        return serial + (f"\n[qemu stderr]\n{stderr}" if stderr.strip() else "")

    def wait_for(self, pattern: str, timeout: float = 120.0) -> re.Match[str]:
        """Wait until ``pattern`` (a multiline regex) matches the console output.

        Returns:
            The match.

        Raises:
            TimeoutError: after ``timeout`` seconds, with the output's tail.
            GuestError: when QEMU exits (or was never started) first.
        """
        regex = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        while not (found := regex.search(self.output)):
            tail = "\n".join(self.output.splitlines()[-40:])
            if self._proc is None or self._proc.poll() is not None:
                code = self._proc and self._proc.returncode
                raise GuestError(f"{self.name} exited ({code}) before {pattern!r}:\n{tail}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: no {pattern!r} in {timeout} s:\n{tail}")
            _sleep(0.1)
        return found

    def ping_result(self, timeout: float = 120.0) -> tuple[int, int, int]:
        """Wait for the guest's GT-PING line.

        Returns:
            (ping's exit status, packets transmitted, packets received).
        """
        found = self.wait_for(PING_RE, timeout)
        return int(found["rc"]), int(found["tx"]), int(found["rx"])

    def kill(self) -> None:
        """SIGKILL QEMU by PID, reap it and remove the scratch directory; idempotent."""
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=30)
        if self._final is None:
            self._final = self.output
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Guest:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


def _checksum(data: bytes) -> int:
    """Return the Internet checksum of ``data`` (even length, as every header here is)."""
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _answer(frame: bytes, ip: bytes, mac: bytes) -> bytes | None:
    """Return the ARP or ICMP echo reply owed by ``ip``/``mac`` to ``frame``, if any."""
    peer, kind = frame[6:12], frame[12:14]
    if kind == b"\x08\x06" and frame[20:22] == b"\0\1" and frame[38:42] == ip:
        arp = frame[14:20] + b"\0\2" + mac + ip + frame[22:28] + frame[28:32]
        return peer + mac + kind + arp
    ihl = (frame[14] & 15) * 4 if len(frame) > 34 else 0
    icmp = frame[14 + ihl : 14 + int.from_bytes(frame[16:18], "big")]  # drop Ethernet padding
    if kind == b"\x08\x00" and frame[23] == 1 and frame[30:34] == ip and icmp[:1] == b"\x08":
        hdr = bytearray(frame[14 : 14 + ihl])
        hdr[8], hdr[10:12], hdr[12:20] = 64, b"\0\0", frame[30:34] + frame[26:30]
        hdr[10:12] = struct.pack("!H", _checksum(bytes(hdr)))
        body = icmp[4:] + b"\0" * (len(icmp) % 2)  # pad only for the checksum
        csum = _checksum(b"\0\0\0\0" + body)  # type 0 (echo reply), code 0
        return peer + mac + kind + bytes(hdr) + b"\0\0" + struct.pack("!H", csum) + icmp[4:]
    return None


def _smoke(netdev: str) -> int:
    """Boot one guest against a Python peer answering ARP and ping; return an exit status."""
    t0 = time.monotonic()
    kernel, initrd = build_guest()
    print(f"build_guest: {time.monotonic() - t0:.1f} s -> {kernel} {initrd}")
    me_ip, me_mac = socket.inet_aton("198.18.77.1"), bytes.fromhex("020000007701")
    family = socket.AF_UNIX if netdev == "stream-unix" else socket.AF_INET
    with (
        tempfile.TemporaryDirectory(prefix="greentap-smoke-") as tmp,
        socket.socket(family, socket.SOCK_STREAM) as listener,
    ):
        listener.bind(f"{tmp}/net.sock" if family == socket.AF_UNIX else ("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(60)
        where = listener.getsockname()
        path, port = (where, None) if family == socket.AF_UNIX else (None, where[1])
        guest = Guest(path, "198.18.77.2/24", ping="198.18.77.1", count=3, kernel=kernel,
                      initrd=initrd, name="smoke", netdev=netdev, port=port)  # fmt: skip
        print("command:", " ".join(guest.command))
        try:
            t1 = time.monotonic()
            guest.start()
            conn = listener.accept()[0]
            buf, ready = b"", None
            while time.monotonic() < t1 + 300:
                if select.select([conn], [], [], 0.2)[0]:
                    if not (chunk := conn.recv(65536)):
                        break
                    buf += chunk
                    # QEMU's stream framing: a 4-byte big-endian length, then the frame.
                    while len(buf) >= 4 and len(buf) >= 4 + (
                        size := int.from_bytes(buf[:4], "big")
                    ):
                        frame, buf = buf[4 : 4 + size], buf[4 + size :]
                        if reply := _answer(frame, me_ip, me_mac):
                            conn.sendall(len(reply).to_bytes(4, "big") + reply)
                if ready is None and re.search(READY_RE, guest.output, re.M):
                    ready = time.monotonic() - t1
                    print(f"boot to GT-READY: {ready:.1f} s")
                if found := re.search(PING_RE, guest.output, re.M):
                    print(found[0], f"({time.monotonic() - t1:.1f} s after start)")
                    return 0 if found["rc"] == "0" and found["tx"] == found["rx"] == "3" else 1
            print(f"FAIL: no GT-PING\n{guest.output}", file=sys.stderr)
            return 1
        finally:
            guest.kill()
            with contextlib.suppress(NameError):
                conn.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Build and boot the test guest once.")
    parser.add_argument("--netdev", choices=NETDEVS, default="stream-unix")
    sys.exit(_smoke(parser.parse_args().netdev))
