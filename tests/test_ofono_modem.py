"""oFono drives the whole modem through `bipsim cp --listen` (issue 16, "Real peers"): powered and online,
NetworkRegistration registered on the network model's operator, SimManager showing the card's IMSI and ICCID, and
a ConnectionManager context (+CGATT, +CGDCONT, +CGACT) activated and deactivated. Read over D-Bus from the test."""

from __future__ import annotations

from pathlib import Path

from bipsim.cp.network import NetworkConfig
from bipsim.uicc.profile import load_profile
from tests.ofono_peer import OfonoPeer


def test_ofono_powers_registers_reads_the_sim_and_runs_a_context(tmp_path: Path) -> None:
    profile = load_profile(None)
    config = NetworkConfig()
    with OfonoPeer(tmp_path) as peer:
        peer.power_on()
        modem = peer.properties("org.ofono.Modem")
        assert modem["Powered"] is True and modem["Online"] is True

        peer.wait_for(
            "SimManager's IMSI", lambda: "SubscriberIdentity" in peer.properties("org.ofono.SimManager")
        )
        sim = peer.properties("org.ofono.SimManager")
        assert sim["SubscriberIdentity"] == profile.imsi
        assert sim["CardIdentifier"] == profile.iccid

        # oFono publishes Status on +CREG and the operator's codes only after its +COPS query that follows.
        peer.wait_for(
            "registration on a named operator",
            lambda: (
                {"Status", "MobileCountryCode"} <= peer.properties("org.ofono.NetworkRegistration").keys()
                and peer.properties("org.ofono.NetworkRegistration")["Status"] == "registered"
            ),
        )
        registration = peer.properties("org.ofono.NetworkRegistration")
        assert registration["MobileCountryCode"] == config.mcc
        assert registration["MobileNetworkCode"] == config.mnc

        peer.wait_for(
            "the packet domain attached",
            lambda: peer.properties("org.ofono.ConnectionManager").get("Attached") is True,
        )
        (path,) = peer.call("org.ofono.ConnectionManager", "AddContext", "s", "internet")
        context = "org.ofono.ConnectionContext"
        peer.call(context, "SetProperty", "sv", "AccessPointName", "s", "internet", path=path)
        peer.call(context, "SetProperty", "sv", "Active", "b", "true", path=path)
        peer.wait_for("the context active", lambda: peer.properties(context, path=path).get("Active") is True)
        peer.call(context, "SetProperty", "sv", "Active", "b", "false", path=path)
        peer.wait_for(
            "the context inactive", lambda: peer.properties(context, path=path).get("Active") is False
        )
        log = peer.ofono_log()
    assert "AT+CGATT?" in log or "AT+CGATT=1" in log
    assert 'AT+CGDCONT=1,"IP","internet"' in log and "AT+CGACT=1,1" in log and "AT+CGACT=0,1" in log
