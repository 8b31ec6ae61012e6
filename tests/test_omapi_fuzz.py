"""Fuzz properties of the AP's OMAPI side (docs/development.md, "Fuzzing"): what the card and the modem send is
data, never a crash.

- The GP SEAC parser (ap/omapi/seac.py) takes any bytes: a rule set, or RuleFormatError with an offset inside the
  input; a rule set it accepts decides every (AID, hash) pair without raising.
- The Framework's rule load over a modem whose every answer is fuzzed (final results, +CCHO/+CGLA lines with any
  text, status words, FF40 headers announcing any length): the load ends (bounded GET DATA [Next] rounds), the
  variable is true only with a parsed rule set, and an application's open raises only OMAPI exceptions.
"""

from __future__ import annotations

import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from bipsim.ap.omapi.errors import OmapiError
from bipsim.ap.omapi.seac import RuleFormatError, RuleSet, parse_rules
from bipsim.ap.omapi.service import AppIdentity
from bipsim.ap.omapi.stack import OmapiOptions, OmapiStack
from bipsim.link.at_chat_core import AtResponse
from tests.fuzz._settings import bounded, fuzz_settings

ECHO = bytes.fromhex("A000000476416E64726F696443545331")
HASH = bytes(20)

pieces = st.sampled_from(
    [
        bytes.fromhex("FF40"),
        bytes.fromhex("E2"),
        bytes.fromhex("E1"),
        bytes.fromhex("E3"),
        bytes.fromhex("4F10") + ECHO,
        bytes.fromhex("4F00"),
        bytes.fromhex("C000"),
        bytes.fromhex("C114") + HASH,
        bytes.fromhex("C100"),
        bytes.fromhex("D00101"),
        bytes.fromhex("D00100"),
        bytes.fromhex("D00800A4040000FFFF00"),
        bytes.fromhex("D10101"),
        bytes.fromhex("DB080000000000000001"),
        bytes.fromhex("CA03616263"),
        bytes.fromhex("81"),
        bytes.fromhex("82FFFF"),
    ]
)
rule_bytes = st.one_of(
    st.binary(max_size=80), st.lists(st.one_of(pieces, st.binary(max_size=3)), max_size=14).map(b"".join)
)


@fuzz_settings(300)
@given(rule_bytes)
def test_rule_parser_answers_a_rule_set_or_its_error(data: bytes) -> None:
    with bounded(5):
        try:
            rules = parse_rules(data)
        except RuleFormatError as exc:
            assert 0 <= exc.offset <= len(data)
            return
        decision = RuleSet(rules).decide(ECHO, HASH, "org.x")
        assert decision.reason  # every decision says why
        for apdu in (bytes.fromhex("00A4040000"), bytes.fromhex("80CA9F7F00")):
            allowed = decision.allows(apdu)
            if not decision.granted:
                assert allowed is False, decision  # a denied channel carries no APDU at all
            elif not decision.filters:
                assert allowed is True, decision  # granted without APDU filters: every APDU
            else:  # granted with filters: allowed exactly when one filter matches the header (both CLAs
                # here have no channel bits to clear)
                expected = any(
                    all((a & m) == (r & m) for a, r, m in zip(apdu[:4], ref, mask, strict=True))
                    for ref, mask in decision.filters
                )
                assert allowed is expected, decision


class FuzzedModem:
    """Answers each command with the next drawn answer (a final result and information lines)."""

    def __init__(self, answers: list[tuple[str, tuple[str, ...]]]) -> None:
        self.answers = answers
        self.lines: list[str] = []

    async def command(
        self, line: str, *, timeout: float | None = None, step: str | None = None
    ) -> AtResponse:
        await trio.lowlevel.checkpoint()
        self.lines.append(line)
        final, info = self.answers[len(self.lines) % len(self.answers)] if self.answers else ("ERROR", ())
        return AtResponse(line, info, final)


hexes = st.binary(max_size=40).map(lambda b: b.hex().upper())
info_line = st.one_of(
    st.just("+CPIN: READY"),
    st.integers(0, 9).map(lambda n: f"+CCHO: {n}"),
    st.text(max_size=12),
    st.builds(
        lambda h, sw: f'+CGLA: {len(h) + 4},"{h}{sw}"', hexes, st.sampled_from(["9000", "6A88", "6100", ""])
    ),
    st.builds(lambda h: f'+CGLA: 10,"FF4082FFFF{h}9000"', hexes),
    st.builds(lambda h: f'+CGLA: 4,"{h}"', st.text(max_size=6)),
    st.just("%SLOTS: 1,1,2,0"),
)
answer = st.tuples(
    st.sampled_from(
        [
            "OK",
            "OK",
            "OK",
            "ERROR",
            "+CME ERROR: 10",
            "+CME ERROR: 20",
            "+CME ERROR: 22",
            "+CME ERROR: 14",
            "+CME ERROR: 21",
            "+CME ERROR: 3",
        ]
    ),
    st.lists(info_line, max_size=2).map(tuple),
)


@fuzz_settings(150)
@given(st.lists(answer, min_size=1, max_size=12), st.integers(1, 2))
def test_the_rule_load_and_an_open_over_a_fuzzed_modem_end_with_omapi_outcomes(
    answers: list[tuple[str, tuple[str, ...]]], slots: int
) -> None:
    async def main() -> None:
        modem = FuzzedModem(answers)
        stack = OmapiStack(OmapiOptions(slots=slots))
        service = await stack.start(modem)
        for record in service.framework.cards.values():
            assert record.enforce_carrier_privilege == (record.rules is not None)
        se = service.se_service(AppIdentity("org.x", HASH))
        try:
            session = await (await se.reader("SIM1")).open_session()
            channel = await session.open_logical_channel(ECHO)
            if channel is not None:
                await channel.transmit(bytes.fromhex("00010000"))
                await channel.close()
        except OmapiError:
            pass
        assert len(modem.lines) < 5000

    with bounded(20):
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
