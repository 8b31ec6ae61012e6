"""`bipsim decode`: card bytes copied from a trace (C-APDU, R-APDU, CAT BER-TLV, SMS TPDU) to a readable tree or to
JSON (docs/protocols.md, "Decoding what traces show")."""

from __future__ import annotations

import json
import re

import click

from bipsim.errors import CliError

_KINDS = ["auto", "proactive", "terminal_response", "envelope", "tlv", "apdu", "rapdu", "sms"]
_KINDS.append("terminal_profile")  # uicc/terminal_profile.py, not a CAT message

_AS_HELP = """What the bytes are (default auto: found from the bytes themselves).
proactive: a proactive command 'D0'.
terminal_response: a terminal response in simple-TLV.
envelope: an envelope 'D1'..'D7'.
tlv: any of those three, by its first byte.
apdu: a C-APDU (CLA INS P1 P2 [Lc data] [Le]); FETCH or GET RESPONSE may be followed by the answer and SW.
rapdu: an R-APDU: data (maybe none) then SW1 SW2.
sms: an SMS-DELIVER/SUBMIT TPDU (TS 23.040), or SMS user data holding a secured packet (TS 31.115).
terminal_profile: the data of a TERMINAL PROFILE (TS 102 223 section 5.2), or the whole 80 10 C-APDU: every set
bit named, RFU bits said so."""


@click.command("decode")
@click.argument("hex_data", metavar="HEX", nargs=-1, required=True)
@click.option("--as", "kind", type=click.Choice(_KINDS), default="auto", show_default=True, help=_AS_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (docs/protocols.md) instead of the tree.")
def decode(hex_data: tuple[str, ...], kind: str, as_json: bool) -> None:
    """Decode card bytes as a trace shows them (ETSI TS 102 221, TS 102 223, 3GPP TS 23.040 / 31.115).

    \b
    In auto mode HEX may be:
      a C-APDU     80 14 ... TERMINAL RESPONSE, 80 C2 ... ENVELOPE, 80 10 ... TERMINAL PROFILE,
                   80 12 00 00 Le FETCH, 00 A4 ... SELECT, 00 B0 ... READ BINARY, ...
      an R-APDU    D0 ... 90 00 (a FETCH's answer), 90 00, 91 0F, 61 24, 6C 12, any data + SW
      a BER-TLV    D0 proactive command, D1..D7 envelope; a terminal response (81 03 ...)
      an SMS       SMS-DELIVER TPDU, or user data 02 70 00 ... / 02 71 00 ... (command packet, PoR)
    Values are shown with their names (bearer type, transport protocol, DCS, result, event, qualifier bits).

    HEX may contain spaces or colons or be split over several arguments. Malformed input exits 2 with the byte
    offset and the rule that failed.
    """
    from bipsim.uicc.cat_render import decode_input, render_json, render_tree
    from bipsim.uicc.tlv import TlvError

    text = re.sub(r"[\s:]", "", "".join(hex_data))
    try:
        data = bytes.fromhex(text)
    except ValueError as exc:
        raise CliError(f"not hexadecimal: {exc}", exit_code=2) from exc
    if kind == "terminal_profile":
        _terminal_profile(data, as_json)
        return
    try:
        decoded = decode_input(data, kind)
    except TlvError as exc:
        raise CliError(f"malformed input at offset {exc.offset}: {exc.rule}", exit_code=2) from exc
    if as_json:
        click.echo(json.dumps(render_json(decoded), indent=2))
    else:
        click.echo(render_tree(decoded), nl=False)


def _terminal_profile(data: bytes, as_json: bool) -> None:
    """`--as terminal_profile`: the profile bytes, or a TERMINAL PROFILE C-APDU (80 10 00 00 Lc data)."""
    from bipsim.uicc import terminal_profile

    if len(data) >= 5 and data[1] == 0x10 and data[0] in (0x80, 0xA0) and len(data) == 5 + data[4]:
        data = data[5:]
    if not data:
        raise CliError("malformed input at offset 0: a TERMINAL PROFILE has at least one byte", exit_code=2)
    if as_json:
        click.echo(json.dumps(terminal_profile.to_json(data), indent=2))
    else:
        click.echo(terminal_profile.describe(data), nl=False)
