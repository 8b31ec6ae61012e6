"""A private PC/SC daemon (pcsc-lite's pcscd with the vsmartcard vpcd reader driver) for tests.

Each instance runs in its own mount namespace (`unshare -m`) with a tmpfs on /run/pcscd, so its socket never
collides with a system pcscd or with another test's, and it reads its own reader.conf.d whose vpcd CHANNELID is a
free TCP port: the driver listens there for reader "Virtual PCD 00 00" and on the next port for "00 01". Clients
reach the daemon by setting PCSCLITE_CSOCK_NAME to `peer.socket` (the socket seen through /proc/<pid>/root);
`peer.env()` is the environment to give them. libpcsclite reads that variable once per process, so a client of a
private daemon runs as a subprocess.

Use the `pcscd` fixture (import it into the test module) or `private_pcscd(directory)` as a context manager.
Tests that use it need pcscd, root or a user namespace that may mount, and the vpcd driver; they skip with the
reason otherwise (fail under CI=true when pcscd is missing, like every `needs` tool).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import missing, require_tool

VPCD_DRIVER = Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so")
READY_DEADLINE = (
    15.0  # seconds for pcscd to come up: a loaded 2-core CI machine is slow, a healthy one ~0.7 s
)
READER_NAMES = ("Virtual PCD 00 00", "Virtual PCD 00 01")


def _free_port_pair() -> int:
    """A port P such that P and P + 1 are both free now (vpcd listens on both, on every address)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("0.0.0.0", 0))
            port = first.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("0.0.0.0", port + 1))
                except OSError:
                    continue
                return int(port)
    raise RuntimeError("no free pair of TCP ports for vpcd")


def _listening_inodes(port: int) -> set[str]:
    """Inodes of the sockets listening on TCP `port` (any address), from /proc/net/tcp and tcp6."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(cols[9])
    return inodes


def _socket_inodes(pid: int) -> set[str]:
    out: set[str] = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                out.add(target[len("socket:[") : -1])
    except OSError:
        pass
    return out


def unshare_refusal() -> str | None:
    """Why `unshare -m` cannot be used here, or None when it can."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"], capture_output=True, text=True, timeout=10
    )
    if probe.returncode != 0:
        return f"unshare -m is refused here: {probe.stderr.strip() or probe.returncode}"
    return None


@dataclass
class PcscPeer:
    """One private pcscd: `socket` for PCSCLITE_CSOCK_NAME, `vpcd_port` where a virtual card connects for reader
    `reader` ("Virtual PCD 00 00"; reader "00 01" is on vpcd_port + 1), `log` its debug output (with APDUs)."""

    directory: Path
    vpcd_port: int
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.directory / "pcscd.log"

    @property
    def reader(self) -> str:
        return READER_NAMES[0]

    @property
    def pid(self) -> int:
        assert self.process is not None, "pcscd is not running"
        return self.process.pid

    @property
    def socket(self) -> str:
        return f"/proc/{self.pid}/root/run/pcscd/pcscd.comm"

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """`base` (default: this process's environment) with PCSCLITE_CSOCK_NAME set to this daemon."""
        out = dict(os.environ if base is None else base)
        out["PCSCLITE_CSOCK_NAME"] = self.socket
        return out

    def start(self) -> None:
        """Starts the daemon and returns once its socket answers and vpcd listens on both ports."""
        conf = self.directory / "reader.conf.d"
        conf.mkdir(parents=True, exist_ok=True)
        (conf / "vpcd").write_text(
            'FRIENDLYNAME "Virtual PCD"\n'
            f"DEVICENAME   /dev/null:0x{self.vpcd_port:04X}\n"
            f"LIBPATH      {VPCD_DRIVER}\n"
            f"CHANNELID    0x{self.vpcd_port:04X}\n"
        )
        script = f"mkdir -p /run/pcscd && mount -t tmpfs tmpfs /run/pcscd && exec pcscd -f -d -a -c {conf}"
        with self.log.open("ab") as log:
            # unshare and sh exec in turn, so the Popen's pid is pcscd's own
            self.process = subprocess.Popen(
                ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.starts += 1
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_DEADLINE
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"pcscd exited with {self.process.returncode}: {self._tail()}")
            if self._ready():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"pcscd not ready within {READY_DEADLINE} s: {self._tail()}")
            time.sleep(0.02)

    def _ready(self) -> bool:
        mine = _socket_inodes(self.pid)
        for port in (self.vpcd_port, self.vpcd_port + 1):
            if not _listening_inodes(port) & mine:
                return False
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(self.socket)
        except OSError:
            return False
        finally:
            probe.close()
        return True

    def _tail(self) -> str:
        try:
            return " | ".join(self.log.read_text(errors="replace").splitlines()[-5:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s; waits for the process."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def restart(self) -> None:
        """Stops the daemon and starts a new one on the same vpcd ports (the socket path changes with the pid)."""
        self.stop()
        self.start()


def skip_reason() -> str | None:
    """Why a private pcscd cannot run here (None when it can); pcscd itself missing goes through require_tool."""
    require_tool("pcscd")
    if not VPCD_DRIVER.exists():
        missing(
            f"the vpcd reader driver {VPCD_DRIVER} is not installed (apt vsmartcard-vpcd; make test installs it)"
        )
    return unshare_refusal()  # the kernel or the sandbox refusing a mount namespace: a skip with its reason


@contextmanager
def private_pcscd(directory: Path, vpcd_port: int | None = None) -> Iterator[PcscPeer]:
    """A running private pcscd (skips the calling test when one cannot run here); stopped at the end."""
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    directory.mkdir(parents=True, exist_ok=True)
    peer = PcscPeer(directory, vpcd_port if vpcd_port is not None else _free_port_pair())
    peer.start()
    try:
        yield peer
    finally:
        peer.stop()


@pytest.fixture
def pcscd(tmp_path: Path) -> Iterator[PcscPeer]:
    """A private pcscd with vpcd on free ports, for this test only."""
    with private_pcscd(tmp_path / "pcscd") as peer:
        yield peer
