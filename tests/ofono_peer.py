"""oFono as a real peer of `bipsim cp --listen` (docs/protocols.md, "--listen"): a private D-Bus system bus, an
ofonod whose phonesim plugin connects to the CP over TCP, and D-Bus calls from the test through busctl's JSON output.

Nothing is shared with the machine: the bus is a dbus-daemon of the test's own (its socket in the test's folder),
and ofonod runs in a private mount namespace (unshare -m, root) where /etc/ofono (phonesim.conf) and /var/lib/ofono
(the settings oFono keeps per IMSI) are the test's folders, so tests may run in parallel and start clean.

Use:
    with OfonoPeer(tmp_path, cp_args=["--profile", "phonebook"]) as peer:
        peer.power_on()                     # Powered, then Online, waited for with a deadline
        peer.call("org.ofono.Phonebook", "Import")   # the method's answer, decoded from busctl's JSON
        peer.ofono_log()                    # ofonod's log with every AT line (OFONO_AT_DEBUG)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import missing, require_tool
from tests.cp_process import Processes, start_listening_cp, stop, wait_until
from tests.dbus_peer import PrivateBus

MODEM = "/bipsim"  # the phonesim.conf group's name is the modem's object path
DEADLINE = 60.0  # seconds for a modem state to be there (oFono's own AT timeouts are 5-20 s)


def _unwrap(value: Any) -> Any:
    """busctl's JSON gives variants as {"type": "...", "data": ...}: the data alone, recursively."""
    if isinstance(value, dict):
        if set(value) == {"type", "data"}:
            return _unwrap(value["data"])
        return {key: _unwrap(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_unwrap(item) for item in value]
    return value


class OfonoPeer(Processes):
    """The CP (`bipsim cp --listen 127.0.0.1:0` plus `cp_args`), a private system bus and ofonod with one
    phonesim modem pointing at the CP. Needs root (the mount namespace) and ofonod, dbus-daemon, busctl, unshare."""

    def __init__(self, folder: Path, *, cp_args: list[str] | None = None) -> None:
        self.folder = folder
        self.cp_args = cp_args or []
        self.cp: subprocess.Popen[bytes] | None = None
        self.bus = PrivateBus(folder)
        self.ofonod: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.address = self.bus.address
        self.cp_trace = folder / "cp.jsonl"

    # -- start and stop ---------------------------------------------------------------------------------------
    def start(self) -> None:
        for tool in ("dbus-daemon", "busctl", "unshare"):
            require_tool(tool)
        if shutil.which("ofonod") is None and not Path("/usr/sbin/ofonod").exists():
            require_tool("ofonod")
        if os.geteuid() != 0:
            missing("oFono's private mount namespace needs root")
        self.cp, self.port = start_listening_cp(self.folder, ["--trace", str(self.cp_trace), *self.cp_args])
        self.bus.start()
        self._start_ofono()

    def close(self) -> None:
        stop(self.ofonod)
        self.bus.close()
        stop(self.cp)

    def _start_ofono(self) -> None:
        etc, lib = self.folder / "etc-ofono", self.folder / "var-lib-ofono"
        etc.mkdir()
        lib.mkdir()
        (etc / "phonesim.conf").write_text(f"[bipsim]\nAddress=127.0.0.1\nPort={self.port}\n")
        log = self.folder / "ofonod.log"
        script = f"mount --bind {etc} /etc/ofono && mount --bind {lib} /var/lib/ofono && exec ofonod -n -d"
        env = self.bus.env(OFONO_AT_DEBUG="1")
        with log.open("wb") as out:
            self.ofonod = subprocess.Popen(
                ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                stdout=out,
                stderr=out,
                env=env,
            )
        wait_until("ofonod", lambda: MODEM in self.modem_paths(), self.ofonod, self.ofono_log)

    # -- D-Bus ------------------------------------------------------------------------------------------------
    def busctl(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["busctl", f"--address={self.address}", "--json=short", *args],
            capture_output=True,
            text=True,
            timeout=timeout + 5,
        )

    def call(self, interface: str, method: str, signature: str = "", *args: str, path: str = MODEM) -> Any:
        """Calls interface.method on oFono's object `path`; returns the answer's values (a list), or raises
        OfonoError with D-Bus's error text."""
        result = self.busctl("--timeout=60", "call", "org.ofono", path, interface, method, signature, *args)
        if result.returncode != 0:
            raise OfonoError(f"{interface}.{method}: {result.stderr.strip()}")
        if not result.stdout.strip():
            return []
        return _unwrap(json.loads(result.stdout)["data"])

    def modem_paths(self) -> list[str]:
        result = self.busctl("call", "org.ofono", "/", "org.ofono.Manager", "GetModems", timeout=5)
        if result.returncode != 0:
            return []
        return [path for path, _ in _unwrap(json.loads(result.stdout)["data"])[0]]

    def properties(self, interface: str, path: str = MODEM) -> dict[str, Any]:
        try:
            answer = self.call(interface, "GetProperties", path=path)
        except OfonoError:
            return {}
        props: dict[str, Any] = answer[0]
        return props

    def wait_for(self, what: str, ready: Callable[[], bool], *, deadline: float = DEADLINE) -> None:
        """Polls `ready` until true, failing after `deadline` seconds with the end of ofonod's AT log."""
        end = time.monotonic() + deadline
        while not ready():
            assert self.ofonod is not None and self.ofonod.poll() is None, (
                "ofonod died: " + self.ofono_log()[-3000:]
            )
            assert self.cp is not None and self.cp.poll() is None, "the CP died"
            if time.monotonic() > end:
                raise AssertionError(
                    f"oFono: {what} not reached in {deadline} s\n" + self.ofono_log()[-4000:]
                )
            time.sleep(0.2)

    def power_on(self) -> None:
        """Powers the modem, then puts it online, as enable-modem and online-modem do; waits for each."""
        self.call("org.ofono.Modem", "SetProperty", "sv", "Powered", "b", "true")
        self.wait_for("Powered", lambda: self.properties("org.ofono.Modem").get("Powered") is True)
        self.call("org.ofono.Modem", "SetProperty", "sv", "Online", "b", "true")
        self.wait_for("Online", lambda: self.properties("org.ofono.Modem").get("Online") is True)

    def interfaces(self) -> list[str]:
        found: list[str] = self.properties("org.ofono.Modem").get("Interfaces", [])
        return found

    def ofono_log(self) -> str:
        return (self.folder / "ofonod.log").read_text(errors="replace")


class OfonoError(Exception):
    """A D-Bus call to oFono answered an error."""
