#!/usr/bin/env bash
# Make sure promtool and amtool are on PATH, for tests/unit/test_promtool.py
# (`promtool check config|rules`, `promtool test rules`, `amtool check-config`).
#
# Idempotent: does nothing when both are there. Otherwise, as root on Debian/Ubuntu, installs
# Debian's `prometheus` (promtool) and `prometheus-alertmanager` (amtool) without recommends
# and without starting their daemons; anywhere else prints what to install and exits 1.
set -euo pipefail

missing=()
command -v promtool > /dev/null 2>&1 || missing+=(prometheus)
command -v amtool > /dev/null 2>&1 || missing+=(prometheus-alertmanager)

if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get > /dev/null 2>&1; then
    {
        echo "ensure-tools: missing: ${missing[*]} (promtool/amtool)."
        echo "  Debian/Ubuntu: sudo apt-get install --no-install-recommends ${missing[*]}"
        echo "  elsewhere: promtool and amtool from the Prometheus and Alertmanager release archives."
    } >&2
    exit 1
fi

echo "ensure-tools: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Install the tools only: keep the packages' prometheus/alertmanager services from starting
# (they would take ports 9090/9093, which docker-compose.yml publishes).
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
fi
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"

command -v promtool > /dev/null 2>&1 && command -v amtool > /dev/null 2>&1 || {
    echo "ensure-tools: promtool/amtool still not on PATH after installing ${missing[*]}" >&2
    exit 1
}
promtool --version 2>&1 | head -n 1 >&2
