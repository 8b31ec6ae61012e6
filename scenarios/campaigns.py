"""Campaign text for scenarios, tests and benchmarks: the TOML steps of an OTA campaign (the format ota/campaign.py
reads; RFM per ETSI TS 102 226, RAM per GlobalPlatform Card Specification section 11), built from one place so that
every run that updates EF_SPN or loads the test applet says it the same way."""

from __future__ import annotations

import json

# the test applet: its load file, the module in it and the application installed from that module
LOAD_FILE = "A0000005590010"
MODULE = "A0000005590010FF"
APPLICATION = "A0000005590010FF01"
# EF_SPN (TS 31.102 4.2.12): display condition 01, then "BIPSIM-OTA" padded with FF to 17 bytes
SPN_DATA = "0142495053494D2D4F5441FFFFFFFFFFFF"


def step(kind: str, **fields: str | int) -> str:
    """One `[[card.step]]` table: `kind` first, then `fields` in the order given."""
    lines = ["[[card.step]]", f"kind = {json.dumps(kind)}"]
    # a JSON string of ASCII text is also a TOML basic string
    lines += [f"{key} = {json.dumps(value)}" for key, value in fields.items()]
    return "\n".join(lines) + "\n"


SPN_UPDATE = step("rfm", path="7FFF/6F46", data=SPN_DATA)  # UPDATE BINARY of EF_SPN under the USIM ADF
RAM_STATUS = step("ram-status")  # GET STATUS of applications


def ram_load(load_file: str = LOAD_FILE, module: str = MODULE, size: int = 600) -> str:
    """INSTALL [for load] and the LOAD blocks of a simulated load file of `size` bytes."""
    return step("ram-load", load_file=load_file, module=module, size=size)


def ram_install(load_file: str = LOAD_FILE, module: str = MODULE, application: str = APPLICATION) -> str:
    """INSTALL [for install and make selectable] of `application` from `module` of `load_file`."""
    return step("ram-install", load_file=load_file, module=module, application=application)


def campaign(*steps: str) -> str:
    """A campaign for every card (iccid "*") running `steps` in order."""
    return '[[card]]\niccid = "*"\n' + "".join(steps)


def applet_download(size: int) -> str:
    """Update EF_SPN, load the test applet's load file (`size` bytes) and install the applet."""
    return campaign(SPN_UPDATE, ram_load(size=size), ram_install())
