"""`bipsim decode`: CAT/BIP bytes to a readable tree or to the JSON of PROTOCOL.md section 5."""

from __future__ import annotations

import json
import re

import click

from bipsim.errors import CliError


@click.command("decode")
@click.argument("hex_data", metavar="HEX", nargs=-1, required=True)
@click.option(
    "--as",
    "kind",
    type=click.Choice(["proactive", "terminal_response", "envelope", "apdu", "auto"]),
    default="auto",
    show_default=True,
    help="What the bytes are; auto: 'D0' proactive, 'D1'..'D7' envelope, 80 xx CAT APDU, else a TR.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the JSON of PROTOCOL.md section 5.")
def decode(hex_data: tuple[str, ...], kind: str, as_json: bool) -> None:
    """Decode a proactive command, terminal response, envelope or CAT command APDU (ETSI TS 102 223).

    HEX may contain spaces or be split over several arguments. Malformed input exits 2 with the byte offset and
    the rule that failed.
    """
    from bipsim.uicc.cat_render import decode_as, to_json, to_tree
    from bipsim.uicc.tlv import TlvError

    text = re.sub(r"[\s:]", "", "".join(hex_data))
    try:
        data = bytes.fromhex(text)
    except ValueError as exc:
        raise CliError(f"not hexadecimal: {exc}", exit_code=2) from exc
    try:
        message = decode_as(data, kind)
    except TlvError as exc:
        raise CliError(f"malformed input at offset {exc.offset}: {exc.rule}", exit_code=2) from exc
    if as_json:
        click.echo(json.dumps(to_json(message), indent=2))
    else:
        click.echo(to_tree(message), nl=False)
