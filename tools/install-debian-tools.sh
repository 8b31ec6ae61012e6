#!/usr/bin/env bash
# Installs the Debian programs the tests run as real peers, only when missing and only as root.
# Usage: tools/install-debian-tools.sh [--demo]   (--demo: only what the demo needs)
set -euo pipefail
# command name -> Debian package
declare -A pkg=([socat]=socat [tshark]=tshark [gammu]=gammu [openssl]=openssl [chromium]=chromium)
wanted=(socat tshark gammu openssl chromium)
[ "${1:-}" = "--demo" ] && wanted=()
missing=()
for cmd in "${wanted[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${pkg[$cmd]}")
done
# sslpsk3 builds against OpenSSL's headers when no wheel fits.
[ -e /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
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
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
