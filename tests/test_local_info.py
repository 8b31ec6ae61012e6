"""PROVIDE LOCAL INFORMATION carried out by the CP (cp/local_info.py, TS 102 223 section 6.4.15). The expected bytes
are worked out by hand from TS 24.008 sections 10.5.1.3 and 10.5.1.4 and TS 102 223 sections 8.39 and 8.61."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from bipsim.cp.bip_gateway import BipGateway, SendTerminalResponse
from bipsim.cp.local_info import LocalInfo, date_time, mobile_identity, plmn, provide_local_information
from bipsim.uicc.cat import CommandType, GeneralResult, ProactiveCommand, Tag

DEFAULT = LocalInfo()


def answer(qualifier: int, info: LocalInfo = DEFAULT) -> tuple[int, list[tuple[int, bytes]]]:
    command = ProactiveCommand.build(CommandType.PROVIDE_LOCAL_INFORMATION, qualifier=qualifier)
    general, objects = provide_local_information(command, info, datetime(2026, 11, 30, 15, 20, 5, tzinfo=UTC))
    return general, [(o.tag, o.value) for o in objects]


def test_codings() -> None:
    assert plmn("001", "01") == bytes.fromhex("00F110")
    assert plmn("310", "260") == bytes.fromhex("130062")
    assert mobile_identity("490154203237518", 2) == bytes.fromhex("4A09512430325781")  # odd: no filler
    assert mobile_identity("4901542032375101", 3) == bytes.fromhex("43095124303257 01F1")
    assert date_time(datetime(2026, 11, 30, 15, 20, 5, tzinfo=UTC)) == bytes.fromhex("62110351025000")
    minus = timezone(timedelta(hours=-5))
    assert date_time(datetime(2026, 1, 2, 3, 4, 5, tzinfo=minus))[-1] == 0x02 | 0x08  # 20 quarters, negative


def test_each_qualifier() -> None:
    assert answer(0x00) == (
        GeneralResult.OK,
        [(Tag.LOCATION_INFORMATION, bytes.fromhex("00F1100001") + bytes.fromhex("0000A1BF"))],
    )
    gsm = LocalInfo(rat=0, cell_id=0x1234)
    assert answer(0x00, gsm)[1] == [(Tag.LOCATION_INFORMATION, bytes.fromhex("00F11000011234"))]
    # 14 digits, then the spare digit 0 in place of the check digit 8 (TS 23.003 section 6.2.1)
    assert answer(0x01)[1] == [(Tag.IMEI, bytes.fromhex("4A09512430325701"))]
    assert answer(0x03)[1] == [(Tag.DATE_TIME_AND_TIME_ZONE, bytes.fromhex("62110351025000"))]
    assert answer(0x04)[1] == [(Tag.LANGUAGE, b"en")]
    assert answer(0x06)[1] == [(Tag.ACCESS_TECHNOLOGY, b"\x08")]
    assert answer(0x08)[1] == [(Tag.IMEISV, bytes.fromhex("4309512430325701F1"))]
    assert answer(0x02) == (GeneralResult.BEYOND_TERMINAL_CAPABILITIES, [])  # NMR: not offered


def test_the_gateway_answers_it() -> None:
    command = ProactiveCommand.build(CommandType.PROVIDE_LOCAL_INFORMATION, qualifier=0x01)
    (tr,) = BipGateway().on_command(command)
    assert isinstance(tr, SendTerminalResponse) and tr.response.result == (GeneralResult.OK, b"")
    assert tr.response.get(Tag.IMEI).value == bytes.fromhex("4A09512430325701")  # type: ignore[union-attr]
