"""oFono reads the card's phonebook through `bipsim cp --listen`: its phonesim modem powered and online, then
org.ofono.Phonebook.Import returns the `phonebook` profile's contacts as vCards (oFono reads them with +CPBS, +CPBR
under +CSCS="UCS2", docs/protocols.md "Phonebook"), and SimManager shows EF_MSISDN's number."""

from __future__ import annotations

import re
from pathlib import Path

from bipsim.uicc.profile import load_profile
from tests.ofono_peer import OfonoPeer


def _vcards(text: str) -> list[dict[str, str]]:
    cards = []
    for block in re.findall(r"BEGIN:VCARD\r\n(.*?)END:VCARD", text, re.S):
        fields = {}
        for line in block.split("\r\n"):
            key, sep, value = line.partition(":")
            if sep:
                fields[key.split(";")[0]] = value
        cards.append(fields)
    return cards


def test_phonebook_import_returns_the_profiles_contacts(tmp_path: Path) -> None:
    profile = load_profile("phonebook")
    with OfonoPeer(tmp_path, cp_args=["--profile", "phonebook"]) as peer:
        peer.power_on()
        modem = peer.properties("org.ofono.Modem")
        assert modem["Powered"] is True and modem["Online"] is True
        peer.wait_for("the Phonebook interface", lambda: "org.ofono.Phonebook" in peer.interfaces())
        (text,) = peer.call("org.ofono.Phonebook", "Import")
        sim = peer.properties("org.ofono.SimManager")
        log = peer.ofono_log()
    cards = _vcards(text)
    assert [(card["FN"], card["TEL"]) for card in cards] == [
        (entry["name"], entry["number"]) for entry in profile.contacts
    ]
    # the names in UCS2 (Cyrillic, CJK) came through the UCS2 character set oFono chose
    assert 'AT+CSCS="UCS2"' in log and "AT+CPBR=1,50" in log
    assert sim["SubscriberNumbers"] == [profile.msisdn[0]["number"]]
