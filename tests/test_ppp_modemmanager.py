"""ModemManager 1.20's `--simple-connect` reaches PPP on the CP (issue 16, 27.007 10.2.1.1): it defines the context,
dials ATD*99***<cid># on its AT port and, on CONNECT, hands the port to a PPP daemon (NetworkManager's pppd) with
the bearer's IP method "ppp". The CP's trace shows the data call and its first LCP Configure-Request; a
`--simple-disconnect` ends it."""

from __future__ import annotations

import json
from pathlib import Path

from tests.mm_peer import MmPeer


def test_modemmanager_simple_connect_reaches_ppp(tmp_path: Path) -> None:
    with MmPeer(tmp_path, cp_args=["--trace", str(tmp_path / "cp.jsonl")]) as peer:
        peer.wait_for("initialised", lambda: peer.modem().get("generic", {}).get("state") == "disabled")
        code, out = peer.mmcli("-m", "0", "-e")
        assert code == 0, out + peer.mm_log()[-3000:]
        peer.wait_for("registered", lambda: peer.modem().get("generic", {}).get("state") == "registered")
        code, out = peer.mmcli("-m", "0", "--simple-connect=apn=internet,ip-type=ipv4", timeout=100)
        assert code == 0, out + peer.mm_log()[-4000:]
        log = peer.mm_log()
        assert "ATD*99***" in log, log[-4000:]
        code, listing = peer.mmcli("-m", "0", "-J")
        bearers = json.loads(listing)["modem"]["generic"]["bearers"]
        assert bearers, listing
        code, bearer = peer.mmcli("-b", bearers[0], "-J")
        assert code == 0, bearer
        details = json.loads(bearer)["bearer"]
        assert details["status"]["connected"] == "yes", bearer
        assert details["ipv4-config"]["method"] == "ppp", bearer
        # MM "flashes" the data port (here: closes the socket, the line's end) and deactivates the context
        code, out = peer.mmcli("-m", "0", "--simple-disconnect", timeout=60)
        assert code == 0, out + peer.mm_log()[-3000:]
        peer.wait_for(
            "registered again", lambda: peer.modem().get("generic", {}).get("state") == "registered"
        )
    events = [json.loads(line) for line in (tmp_path / "cp.jsonl").read_text().splitlines()]
    calls = [e for e in events if e.get("kind") == "ppp.call" and e["fields"].get("event") == "connect"]
    assert calls, "no data call in the CP's trace"
    assert any(e.get("kind") == "ppp.lcp" and e["fields"].get("direction") == "out" for e in events)
    assert any(e.get("kind") == "ppp.call" and e["fields"].get("event") == "ended" for e in events)
