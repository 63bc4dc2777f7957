#!/bin/sh
# Installs the system tools the lab and the interop tests use, if missing (Debian packages).
set -e
need=""
command -v ip >/dev/null 2>&1 || need="$need iproute2"
command -v dig >/dev/null 2>&1 || need="$need bind9-dnsutils"
command -v kdig >/dev/null 2>&1 || need="$need knot-dnsutils"
command -v knotd >/dev/null 2>&1 || [ -x /usr/sbin/knotd ] || need="$need knot"
[ -z "$need" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "missing system packages:$need (install them as root: apt-get install$need)" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends $need >/dev/null
