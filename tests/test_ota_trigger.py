"""What starts an OTA admin session: the SMS-PP push (ENVELOPE 'D1' with a TS 102 225 / TS 31.115 secured command
packet holding the TS 102 226 section 9 PUSH), the power-on trigger and the manual trigger.

Byte vectors of the secured packet layout, AES-CBC ciphering and AES-CMAC checksums come from pySim
(osmocom/pysim, tests/unittests/test_ota.py, SmsOtaTestCase dataset "AES128-SJA5-CIPHERED-CC" and
"3DES-SJA5-UNCIPHERED-NOCC"); they were produced by an independent implementation.
"""

from __future__ import annotations

from pathlib import Path

import trio

from bipsim.cp.bip_service import BipService
from bipsim.cp.card_driver import CardDriver
from bipsim.ota.admin import AdminServer
from bipsim.ota.campaign import Campaign
from bipsim.ota.server import OtaServer
from bipsim.trace.recorder import Tracer
from bipsim.uicc.bip_engine import BipConfig, BipEngine, EngineState, LinkMode
from bipsim.uicc.card import SimCard
from bipsim.uicc.cat import Tag, decode_envelope
from bipsim.uicc.gp_registry import SELECTABLE, GpRegistry
from bipsim.uicc.ota_agent import OtaAgent
from bipsim.uicc.ota_trigger import (
    Check,
    CounterMode,
    Counters,
    Keyset,
    PorMode,
    SecuredPacketReceiver,
    SmsTriggerToolkit,
    Spi,
    Status,
    TarConfig,
    command_packet,
    parse_por,
    push_script,
    sms_deliver,
    sms_pp_download,
    sms_user_data,
)
from bipsim.uicc.profile import load_profile
from bipsim.uicc.sim_transport import SimulatedCard
from bipsim.uicc.tlv import Ctlv

from .test_bip_session import DirectBearer

# pySim tests/unittests/test_ota.py: OTA_KEYSET_SJA5_AES128 (kic_idx 2, kid_idx 2)
PYSIM_KEYS = Keyset(
    2, bytes.fromhex("200102030405060708090a0b0c0d0e0f"), bytes.fromhex("201102030405060708090a0b0c0d0e0f")
)
PYSIM_TAR = bytes.fromhex("B00011")
PYSIM_APDU = bytes.fromhex("00a40004023f00")
PYSIM_SPI = Spi(Check.CC, True, CounterMode.NONE, PorMode.REQUIRED, Check.CC, True)  # SPI_CC_POR_CIPHERED_CC
PYSIM_CMD = bytes.fromhex(
    "00281506192222b00011e87cceebb2d93083011ce294f93fc4d8de80da1abae8c37ca3e72ec4432e5058"
)
PYSIM_POR = bytes.fromhex(
    "027100002412b00011ebc6b497e2cad7aedf36ace0e3a29b38853f0fe9ccde81913be5702b73abce1f"
)

KEYS = Keyset(1, bytes(range(16)), bytes(range(16, 32)))
APP = bytes.fromhex("A0000005590010FF01")


def test_spi_coding() -> None:
    assert PYSIM_SPI.encode() == bytes.fromhex("0619")
    assert Spi.decode(bytes.fromhex("0619")) == PYSIM_SPI
    # "MAC and encrypt, counter higher, PoR by SMS-SUBMIT": 16 21 (TS 102 225 5.1.1, TS 31.115 4.2)
    spi = Spi.decode(bytes.fromhex("1621"))
    assert (spi.check, spi.cipher, spi.counter, spi.por, spi.por_via_submit) == (
        Check.CC,
        True,
        CounterMode.HIGHER,
        PorMode.REQUIRED,
        True,
    )


def test_command_packet_matches_pysim() -> None:
    assert command_packet(PYSIM_APDU, spi=PYSIM_SPI, keys=PYSIM_KEYS, tar=PYSIM_TAR) == PYSIM_CMD


def test_receiver_deciphers_pysim_packet_and_answers_pysim_por() -> None:
    executed: list[list[bytes]] = []

    def usim_rfm(apdus: list[bytes]) -> list[bytes]:
        executed.append(apdus)
        return [b"\x61\x32"]  # as the card in pySim's vector answered

    receiver = SecuredPacketReceiver([PYSIM_KEYS], {PYSIM_TAR: TarConfig(usim_rfm)}, Counters())
    outcome = receiver.receive(sms_user_data(PYSIM_CMD))
    assert outcome.status is Status.POR_OK, outcome
    assert executed == [[PYSIM_APDU]]
    assert outcome.por == PYSIM_POR  # ciphered and checksummed exactly as pySim expects
    por = parse_por(PYSIM_POR, spi=PYSIM_SPI, keys=PYSIM_KEYS)
    assert (por.tar, por.status, por.data) == (PYSIM_TAR, Status.POR_OK, bytes.fromhex("016132"))


def test_unprotected_por_from_pysim() -> None:
    # pySim SmsOtaTestCase "3DES-SJA5-UNCIPHERED-NOCC" encoded_resp: no CC, not ciphered
    por = parse_por(bytes.fromhex("027100000e0ab0001100000000000000016132"))
    assert (por.tar, por.counter, por.status, por.data) == (
        PYSIM_TAR,
        0,
        Status.POR_OK,
        bytes.fromhex("016132"),
    )


# --- the card: ENVELOPE (SMS-PP DOWNLOAD) through the APDU processor --------------------------------------------


def make_card(
    tmp_path: Path | None = None, *, trigger_on_profile: bool = False, **security: bool
) -> tuple[SimCard, BipEngine, SmsTriggerToolkit, OtaAgent]:
    profile = load_profile()
    card = SimCard(profile, state_path=tmp_path / "card.json" if tmp_path else None)
    registry = GpRegistry()
    card.attach_state("gp", registry)
    agent = OtaAgent(
        card, registry, host="127.0.0.1", identity=profile.psk_identity.encode(), psk=profile.psk
    )
    # port 1: nothing listens there; only the PUSH's transport level object leads to the server
    engine = BipEngine(
        BipConfig(port=1, link_mode=LinkMode.BACKGROUND), agent, trigger_on_profile=trigger_on_profile
    )
    counters = Counters()
    card.attach_state("ota_counters", counters)
    toolkit = SmsTriggerToolkit(engine, [KEYS], counters, **security)
    card.toolkit = toolkit
    return card, engine, toolkit, agent


def push(port: int = 4443) -> bytes:
    return push_script([Ctlv(Tag.TRANSPORT_LEVEL, b"\x02" + port.to_bytes(2, "big"))])


def envelope(packet: bytes) -> bytes:
    return sms_pp_download(sms_deliver(sms_user_data(packet)))


def send_sms(card: SimCard, packet: bytes) -> tuple[bytes, int]:
    """ENVELOPE, then GET RESPONSE for the PoR as a terminal does (TS 31.111 7.1.1.2); returns (PoR, final SW)."""
    data = envelope(packet)
    answer = card.process(b"\x80\xc2\x00\x00" + bytes((len(data),)) + data)
    sw = int.from_bytes(answer[-2:], "big")
    if sw >> 8 == 0x61:
        answer = card.process(bytes((0x00, 0xC0, 0x00, 0x00, sw & 0xFF)))
        return answer[:-2], int.from_bytes(answer[-2:], "big")
    return b"", sw


TERMINAL_PROFILE = b"\x80\x10\x00\x00\x02\xff\xff"
PROTECTED = Spi(Check.CC, True, CounterMode.HIGHER, PorMode.REQUIRED)


def test_unsecured_push_starts_a_session() -> None:
    card, engine, toolkit, _ = make_card()
    assert card.process(TERMINAL_PROFILE) == b"\x90\x00"  # no power-on trigger
    por, sw = send_sms(card, command_packet(push(4443), spi=Spi()))
    assert sw >> 8 == 0x91  # a proactive command (SET UP EVENT LIST) waits
    answer = parse_por(por)
    assert answer.status is Status.POR_OK and answer.tar == b"\x00\x00\x00"
    assert answer.data == b"\x01\x90\x00"  # compact response: one command, 90 00
    assert engine.state is EngineState.EVENTS and engine.config.port == 4443
    assert toolkit.log.sessions_started == 1


def test_aes_protected_push_starts_a_session_and_the_por_is_protected() -> None:
    card, engine, toolkit, _ = make_card(require_cc=True, require_cipher=True, require_counter=True)
    card.process(TERMINAL_PROFILE)
    spi = Spi(Check.CC, True, CounterMode.HIGHER, PorMode.REQUIRED, Check.CC, True)
    por, sw = send_sms(card, command_packet(push(5000), spi=spi, keys=KEYS, counter=7))
    answer = parse_por(por, spi=spi, keys=KEYS)
    assert answer.status is Status.POR_OK and answer.counter == 7 and len(answer.checksum) == 8
    assert sw >> 8 == 0x91 and engine.state is EngineState.EVENTS and engine.config.port == 5000


def check_refused(card: SimCard, engine: BipEngine, packet: bytes, status: Status) -> None:
    por, sw = send_sms(card, packet)
    assert sw == 0x9000, hex(sw)  # nothing pending: no session
    answer = parse_por(por)
    assert answer.status is status, answer
    assert answer.data == b"" and len(answer.checksum) == 0  # a refused packet gets an unprotected PoR
    assert engine.state is EngineState.IDLE


def test_bad_checksum_gets_status_01_and_no_session() -> None:
    card, engine, toolkit, _ = make_card()
    card.process(TERMINAL_PROFILE)
    packet = bytearray(command_packet(push(), spi=Spi(Check.CC, False), keys=KEYS))
    packet[16] ^= 0x01  # first CC byte: after CPL, CHL, SPI, KIc, KID, TAR, CNTR, PCNTR
    check_refused(card, engine, bytes(packet), Status.RC_CC_DS_FAILED)
    # a wrong KID key fails the same way
    other = Keyset(1, KEYS.kic, bytes(16))
    check_refused(
        card, engine, command_packet(push(), spi=PROTECTED, keys=other, counter=1), Status.RC_CC_DS_FAILED
    )
    assert toolkit.log.sessions_started == 0


def test_replayed_counter_gets_status_02_also_after_a_restart(tmp_path: Path) -> None:
    card, engine, toolkit, _ = make_card(tmp_path)
    card.process(TERMINAL_PROFILE)
    first = command_packet(push(), spi=PROTECTED, keys=KEYS, counter=5)
    _, sw = send_sms(card, first)
    assert sw >> 8 == 0x91 and toolkit.log.sessions_started == 1
    card.save_state()
    # the card restarts (its counter persisted) and the same packet is replayed
    card, engine, toolkit, _ = make_card(tmp_path)
    card.process(TERMINAL_PROFILE)
    check_refused(card, engine, first, Status.CNTR_LOW)
    lower = command_packet(push(), spi=PROTECTED, keys=KEYS, counter=4)
    check_refused(card, engine, lower, Status.CNTR_LOW)
    # "exactly one higher" mode: 7 after 5 is too high
    spi = Spi(Check.CC, True, CounterMode.ONE_HIGHER, PorMode.REQUIRED)
    check_refused(card, engine, command_packet(push(), spi=spi, keys=KEYS, counter=7), Status.CNTR_HIGH)
    _, sw = send_sms(card, command_packet(push(), spi=spi, keys=KEYS, counter=6))
    assert sw >> 8 == 0x91 and toolkit.log.sessions_started == 1


def test_unknown_tar_gets_status_09() -> None:
    card, engine, _, _ = make_card()
    card.process(TERMINAL_PROFILE)
    packet = command_packet(push(), spi=Spi(), tar=bytes.fromhex("B00001"))
    check_refused(card, engine, packet, Status.TAR_UNKNOWN)
    assert parse_por(send_sms(card, packet)[0]).tar == bytes.fromhex("B00001")


def test_ciphering_error_and_insufficient_security_level() -> None:
    card, engine, _, _ = make_card(require_cc=True)
    card.process(TERMINAL_PROFILE)
    check_refused(card, engine, command_packet(push(), spi=Spi()), Status.INSUFFICIENT_SECURITY_LEVEL)
    good = command_packet(push(), spi=PROTECTED, keys=KEYS, counter=1)
    cut = (len(good) - 3).to_bytes(2, "big") + good[2:-1]  # one ciphered byte short, CPL adjusted
    check_refused(card, engine, cut, Status.CIPHERING_ERROR)


def test_por_only_on_error_and_malformed_sms() -> None:
    card, engine, _, _ = make_card()
    card.process(TERMINAL_PROFILE)
    spi = Spi(por=PorMode.ON_ERROR)
    por, sw = send_sms(card, command_packet(push(), spi=spi))
    assert por == b"" and sw >> 8 == 0x91  # accepted, nothing to report
    card2, engine2, _, _ = make_card()
    card2.process(TERMINAL_PROFILE)
    data = sms_pp_download(sms_deliver(b"\x00\x01", udhi=False))
    assert card2.process(b"\x80\xc2\x00\x00" + bytes((len(data),)) + data) == b"\x6f\x00"
    assert engine2.state is EngineState.IDLE


def test_power_on_and_manual_triggers() -> None:
    card, engine, _, _ = make_card(trigger_on_profile=True)
    assert card.process(TERMINAL_PROFILE)[0] == 0x91 and engine.state is EngineState.EVENTS
    card, engine, toolkit, _ = make_card(trigger_on_profile=False)
    assert card.process(TERMINAL_PROFILE) == b"\x90\x00" and engine.state is EngineState.IDLE
    toolkit.trigger()
    assert card.process(b"\x80\xf2\x00\x0c\x00")[0] == 0x91 and engine.state is EngineState.EVENTS


# --- end to end: the push opens the BIP channel to a real OTA server ---------------------------------------------


async def test_sms_push_runs_a_full_admin_session(tmp_path: Path) -> None:
    profile = load_profile()
    admin = AdminServer(Campaign.load(), results_path=tmp_path / "results.json")
    server = OtaServer(admin, keys={profile.psk_identity: profile.psk})
    tracer = Tracer(keep=True)
    card, engine, toolkit, agent = make_card(tmp_path, require_cc=True, require_cipher=True)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.serve, "127.0.0.1", 0)
            driver = CardDriver(SimulatedCard(card), tracer=tracer)
            service = BipService(driver, DirectBearer(), tracer=tracer, poll_interval=0.05)
            await nursery.start(service.run)
            assert engine.state is EngineState.IDLE  # TERMINAL PROFILE did not start anything
            raw = envelope(command_packet(push(port), spi=PROTECTED, keys=KEYS, counter=1))
            decode_envelope(raw)  # a well-formed SMS-PP DOWNLOAD for the codec too
            # GET RESPONSE with CLA 00 (TS 102 221 table 10.5); CardDriver.transmit sends 80 C0 after an ENVELOPE
            answer = await driver.raw(b"\x80\xc2\x00\x00" + bytes((len(raw),)) + raw, "ENVELOPE (SMS-PP)")
            assert answer[-2] == 0x61
            answer = await driver.raw(b"\x00\xc0\x00\x00" + answer[-1:], "GET RESPONSE")
            assert parse_por(answer[:-2]).status is Status.POR_OK and answer[-2] == 0x91
            await service.session_finished.wait()
            while engine.busy:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert agent.log.finished, agent.log.errors
    assert toolkit.log.sessions_started == 1 and engine.state is EngineState.DONE
    assert card.toolkit is toolkit and APP in agent.registry.applications
    assert agent.registry.applications[APP].state == SELECTABLE
    (result,) = admin.results().values()
    assert result["completed"] and result["all_ok"]
