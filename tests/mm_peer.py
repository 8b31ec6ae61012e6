"""ModemManager 1.20 as a real peer of `bipsim cp --listen`: a private D-Bus system bus, ModemManager's test
interface (`--test-enable --test-no-udev`, Test.SetProfile with the generic plugin and one AT port), and mmcli.

ModemManager finds no pty through udev, but its test profile takes AT ports that are UNIX sockets, which it closes
and opens again while it probes; socat relays each of those connections to the CP's TCP listener (the CP serves
one client at a time, and keeps its state between them). ModemManager asks PolicyKit before it enables a modem:
the private bus has no polkitd, so a stand-in authority (python3-dbus, as the Debian package of ModemManager's
own tests would have it) grants every request and logs the action it granted. Nothing is shared with the machine.

Use:
    with MmPeer(tmp_path, cp_args=["--profile", "pin"]) as peer:
        peer.mmcli("-m", "0", "-e")             # (exit code, output)
        peer.modem()                            # `mmcli -m 0 -J` as a dict
        peer.mm_log()                           # ModemManager's debug log with every AT line
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import missing, require_tool
from tests.cp_process import Processes, start_listening_cp, stop, wait_until
from tests.dbus_peer import PrivateBus

DEADLINE = 60.0  # seconds for a modem state to be there

# org.freedesktop.PolicyKit1.Authority.CheckAuthorization answering (is_authorized, is_challenge, details)
_POLKIT = """
import dbus, dbus.service, dbus.mainloop.glib
from gi.repository import GLib
dbus.mainloop.glib.DBusGMainLoop(set_as_default=True)
bus = dbus.SystemBus()
name = dbus.service.BusName("org.freedesktop.PolicyKit1", bus)
class Authority(dbus.service.Object):
    @dbus.service.method("org.freedesktop.PolicyKit1.Authority", in_signature="(sa{sv})sa{ss}us",
                         out_signature="(bba{ss})")
    def CheckAuthorization(self, subject, action_id, details, flags, cancellation_id):
        print("granted", action_id, flush=True)
        return (True, False, dbus.Dictionary({}, signature="ss"))
Authority(bus, "/org/freedesktop/PolicyKit1/Authority")
print("ready", flush=True)
GLib.MainLoop().run()
"""
SYSTEM_PYTHON = "/usr/bin/python3"


class MmPeer(Processes):
    """The CP (`bipsim cp --listen 127.0.0.1:0` plus `cp_args`), a private system bus with a PolicyKit stand-in,
    a socat relay from a UNIX socket to the CP, and ModemManager with the relay's socket as its one AT port."""

    def __init__(self, folder: Path, *, cp_args: list[str] | None = None) -> None:
        self.folder = folder
        self.cp_args = cp_args or []
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.port = 0
        self.bus = PrivateBus(folder)
        self.address = self.bus.address
        self.socket = folder / "mm.sock"
        self.env = self.bus.env()

    def start(self) -> None:
        for tool in ("dbus-daemon", "socat", "mmcli", "gdbus"):
            require_tool(tool)
        if shutil.which("ModemManager", path=self.env["PATH"]) is None:
            require_tool("ModemManager")
        check = subprocess.run(
            [SYSTEM_PYTHON, "-c", "import dbus, dbus.service, gi"], capture_output=True, text=True
        )
        if check.returncode != 0:
            missing(f"the PolicyKit stand-in needs python3-dbus and python3-gi: {check.stderr.strip()}")
        self.procs["cp"], self.port = start_listening_cp(
            self.folder,
            ["--trace", str(self.folder / "cp.jsonl"), "--state", str(self.folder / "card.json")]
            + self.cp_args,
        )
        self.bus.start()
        self._start("polkit", [SYSTEM_PYTHON, "-c", _POLKIT])
        self._wait("the PolicyKit stand-in", lambda: "ready" in self._log("polkit"), "polkit")
        self._start("relay", ["socat", f"UNIX-LISTEN:{self.socket},fork", f"TCP:127.0.0.1:{self.port}"])
        self._wait("socat", self.socket.exists, "relay")
        mm_log = self.folder / "mm-debug.log"
        self._start(
            "mm",
            ["ModemManager", "--test-enable", "--test-no-udev", "--no-auto-scan", "--debug"]
            + [f"--log-file={mm_log}"],
        )
        self._wait("ModemManager", self._mm_on_bus, "mm")
        profile = subprocess.run(
            ["gdbus", "call", "--system", "--dest", "org.freedesktop.ModemManager1"]
            + ["--object-path", "/org/freedesktop/ModemManager1"]
            + ["--method", "org.freedesktop.ModemManager1.Test.SetProfile", "bipsim", "generic"]
            + [f"['{self.socket}']"],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=30,
        )
        assert profile.returncode == 0, profile.stderr
        self.wait_for("a modem", lambda: self.mmcli("-L")[1].count("/Modem/") == 1)

    def close(self) -> None:
        for name in ("mm", "relay", "polkit"):
            stop(self.procs.get(name))
        self.bus.close()
        stop(self.procs.get("cp"))

    # -- processes ---------------------------------------------------------------------------------------------
    def _start(self, name: str, argv: list[str]) -> None:
        with (self.folder / f"{name}.log").open("wb") as out:
            self.procs[name] = subprocess.Popen(argv, stdout=out, stderr=out, env=self.env)

    def _log(self, name: str) -> str:
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _wait(self, what: str, ready: Callable[[], bool], name: str) -> None:
        wait_until(what, ready, self.procs[name], lambda: self._log(name))

    def _mm_on_bus(self) -> bool:
        result = subprocess.run(["mmcli", "-L"], capture_output=True, text=True, env=self.env, timeout=30)
        return result.returncode == 0

    # -- mmcli -------------------------------------------------------------------------------------------------
    def mmcli(self, *args: str, timeout: float = 120) -> tuple[int, str]:
        result = subprocess.run(
            ["mmcli", *args], capture_output=True, text=True, env=self.env, timeout=timeout + 10
        )
        return result.returncode, result.stdout + result.stderr

    def modem(self) -> dict[str, Any]:
        """`mmcli -m 0 -J`: the modem's properties."""
        code, out = self.mmcli("-m", "0", "-J")
        if code != 0:
            return {}
        found: dict[str, Any] = json.loads(out)["modem"]
        return found

    def wait_for(self, what: str, ready: Callable[[], bool], *, deadline: float = DEADLINE) -> None:
        """Polls `ready` until true (a daemon's state, with a deadline), failing with the end of MM's log."""
        end = time.monotonic() + deadline
        while not ready():
            for name in ("mm", "cp"):
                proc = self.procs.get(name)
                assert proc is not None and proc.poll() is None, f"{name} died: " + self.mm_log()[-3000:]
            if time.monotonic() > end:
                raise AssertionError(
                    f"ModemManager: {what} not reached in {deadline} s\n" + self.mm_log()[-4000:]
                )
            time.sleep(0.2)

    def mm_log(self) -> str:
        """ModemManager's debug log (every AT line it sent and received)."""
        return self._log("mm-debug")
