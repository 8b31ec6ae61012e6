"""A private D-Bus system bus for the tests of real D-Bus peers (oFono, ModemManager: docs/protocols.md,
"--listen"): a dbus-daemon of the test's own, its socket in the test's folder, so that nothing is shared with the
machine's bus and tests may run in parallel.

Use:
    bus = PrivateBus(tmp_path)
    bus.start()                 # returns once the socket is there
    env = bus.env()             # os.environ with DBUS_SYSTEM_BUS_ADDRESS set to it, /usr/sbin on PATH
    bus.close()
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.cp_process import stop, wait_until

_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={path}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"""


class PrivateBus:
    """dbus-daemon with a system bus configuration whose socket is FOLDER/bus and whose policy allows everything;
    its output goes to FOLDER/dbus.log."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.socket = folder / "bus"
        self.address = f"unix:path={self.socket}"
        self.log = folder / "dbus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a process on this bus (daemons in /usr/sbin found too), plus `extra`."""
        return {
            **os.environ,
            "DBUS_SYSTEM_BUS_ADDRESS": self.address,
            "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/sbin",
            **extra,
        }

    def start(self) -> None:
        config = self.folder / "bus.conf"
        config.write_text(_BUS_CONFIG.format(path=self.socket))
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                ["dbus-daemon", f"--config-file={config}", "--nofork", "--nopidfile"], stdout=out, stderr=out
            )
        wait_until("dbus-daemon", self.socket.exists, self.proc, lambda: self.log.read_text(errors="replace"))

    def close(self) -> None:
        stop(self.proc)
