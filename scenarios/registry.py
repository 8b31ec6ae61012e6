"""The named scenarios of `bipsim scenario` (docs/protocols.md names them): name -> function(options) -> result."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable

from bipsim.scenarios.base import ScenarioOptions, ScenarioResult
from bipsim.scenarios.channels import two_channels
from bipsim.scenarios.embodiments import embodiment1, embodiment2
from bipsim.scenarios.esim import (
    esim_chunked,
    esim_cloud_retry,
    esim_download,
    esim_no_key_kept,
    esim_not_logged_in,
    esim_second_download_refused,
)
from bipsim.scenarios.faults import ap_no_network, large_download, line_drop, server_drops, server_refuses
from bipsim.scenarios.link_modes import immediate, on_demand
from bipsim.scenarios.omapi import (
    omapi_denied,
    omapi_nfc_legacy,
    omapi_no_rules,
    omapi_non_nfc,
    omapi_two_readers,
)
from bipsim.scenarios.packet_plane import (
    bip_dns,
    bip_server,
    bip_udp,
    pdp_drop,
    radio_gprs,
    radio_lossy,
    radio_outage,
)
from bipsim.scenarios.push import (
    push_active,
    push_applet,
    push_auth_fails,
    push_corrupt_package,
    push_declined,
    push_ip,
    push_lost_notice,
    push_sms,
    push_wap,
)
from bipsim.scenarios.sim_sync import (
    sim_sync_conflict,
    sim_sync_edit,
    sim_sync_insert,
    sim_sync_remove,
    sim_sync_virtual,
)
from bipsim.scenarios.sms_trigger import sms_trigger, sms_trigger_bad_mac
from bipsim.scenarios.usat import usat_menu

Scenario = Callable[[ScenarioOptions], ScenarioResult]

SCENARIOS: dict[str, Scenario] = {
    "embodiment1": embodiment1,
    "embodiment2": embodiment2,
    "on-demand": on_demand,
    "immediate": immediate,
    "large-download": large_download,
    "ap-no-network": ap_no_network,
    "server-refuses": server_refuses,
    "server-drops": server_drops,
    "line-drop": line_drop,
    "two-channels": two_channels,
    "sms-trigger": sms_trigger,
    "sms-trigger-bad-mac": sms_trigger_bad_mac,
    "usat-menu": usat_menu,
    "omapi-non-nfc": omapi_non_nfc,
    "omapi-no-rules": omapi_no_rules,
    "omapi-denied": omapi_denied,
    "omapi-two-readers": omapi_two_readers,
    "omapi-nfc-legacy": omapi_nfc_legacy,
    "radio-lossy": radio_lossy,
    "radio-gprs": radio_gprs,
    "pdp-drop": pdp_drop,
    "radio-outage": radio_outage,
    "bip-udp": bip_udp,
    "bip-server": bip_server,
    "bip-dns": bip_dns,
    "sim-sync-insert": sim_sync_insert,
    "sim-sync-remove": sim_sync_remove,
    "sim-sync-edit": sim_sync_edit,
    "sim-sync-virtual": sim_sync_virtual,
    "sim-sync-conflict": sim_sync_conflict,
    "push-sms": push_sms,
    "push-wap": push_wap,
    "push-ip": push_ip,
    "push-active": push_active,
    "push-declined": push_declined,
    "push-auth-fails": push_auth_fails,
    "push-corrupt-package": push_corrupt_package,
    "push-lost-notice": push_lost_notice,
    "push-applet": push_applet,
    "esim-download": esim_download,
    "esim-cloud-retry": esim_cloud_retry,
    "esim-not-logged-in": esim_not_logged_in,
    "esim-chunked": esim_chunked,
    "esim-second-download-refused": esim_second_download_refused,
    "esim-no-key-kept": esim_no_key_kept,
}


# a sentence ends at . ! or ? before a space and a capital: "S401..S415", "8.12.2" and "e.g. the" do not end one
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def describe(name: str) -> str:
    """The first sentence of scenario `name`'s docstring, on one line (docstrings wrap at the line length)."""
    doc = inspect.cleandoc(SCENARIOS[name].__doc__ or "")
    paragraph = doc.split("\n\n", 1)[0]
    text = " ".join(paragraph.split())
    return _SENTENCE_END.split(text, maxsplit=1)[0]
