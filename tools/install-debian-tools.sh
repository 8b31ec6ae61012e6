#!/usr/bin/env bash
# Installs the Debian programs the tests run as real peers, only when missing and only as root.
# Usage: tools/install-debian-tools.sh [--demo]   (--demo: only what the demo needs)
set -euo pipefail
# command name -> Debian package
# (pcscd with the vsmartcard vpcd reader, pcsc_scan, opensc-tool and scriptor are the PC/SC peers of docs/hil.md)
declare -A pkg=([socat]=socat [tshark]=tshark [gammu]=gammu [openssl]=openssl [chromium]=chromium
    [pcscd]=pcscd [pcsc_scan]=pcsc-tools [scriptor]=pcsc-tools [opensc-tool]=opensc
    [ofonod]=ofono [dbus-daemon]=dbus [busctl]=systemd [ModemManager]=modemmanager [mmcli]=modemmanager
    [gdbus]=libglib2.0-bin [pppd]=ppp)
# (ofonod on a private dbus-daemon, driven by busctl, is the oFono peer of tests/ofono_peer.py)
# (ModemManager's test profile on a private bus, driven by mmcli and gdbus, is the peer of tests/mm_peer.py)
wanted=(socat tshark gammu openssl chromium pcscd pcsc_scan scriptor opensc-tool ofonod dbus-daemon busctl
    ModemManager mmcli gdbus)
# pppd is a real peer only where the kernel has PPP (tests/test_ppp_call.py skips with the reason elsewhere)
if [ -e /dev/ppp ]; then wanted+=(pppd); fi
[ "${1:-}" = "--demo" ] && wanted=()
missing=()
for cmd in "${wanted[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$cmd" >/dev/null 2>&1 \
        || missing+=("${pkg[$cmd]}")
done
# sslpsk3 builds against OpenSSL's headers when no wheel fits.
[ -e /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
if [ "${1:-}" != "--demo" ]; then
    # pyscard (a dev dependency) builds against pcsclite's headers; vpcd is a pcscd driver, not a command
    [ -e /usr/include/PCSC/winscard.h ] || missing+=(libpcsclite-dev)
    [ -e /etc/reader.conf.d/vpcd ] || missing+=(vsmartcard-vpcd)
    # oFono's test scripts (enable-modem, list-modems...) for trying the CP by hand as docs/protocols.md shows
    [ -e /usr/share/ofono/scripts/list-modems ] || missing+=(ofono-scripts)
    # tests/mm_peer.py's PolicyKit stand-in on the private bus runs on the system python with D-Bus and GLib
    /usr/bin/python3 -c "import dbus, gi" 2>/dev/null || missing+=(python3-dbus python3-gi)
fi
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "note: missing Debian packages (${missing[*]}); run as root or install them to run every test" >&2
    exit 0
fi
echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# tshark asks whether non-root users may capture; answer "no" up front.
echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
apt-get update -qq
# one package may provide several wanted commands
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
