"""atheris target: SMS-PP secured command packets (uicc/ota_trigger.py SecuredPacketReceiver) and their SMS-PP DOWNLOAD envelope."""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["bipsim"]):
    from tests.fuzz import targets

from tests.fuzz.atheris._run import main

SEEDS = [
    bytes.fromhex("027000001a0d00010000000000000000000000000080ec010100"),
]


def test_one_input(data: bytes) -> None:
    targets.sms_user_data_packet(data)
    targets.sms_pp_envelope(data)


if __name__ == "__main__":
    main(test_one_input, SEEDS)
