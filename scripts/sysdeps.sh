#!/bin/sh
# Installs the system tools the lab, the probe's wire evidence and the interop tests use, if
# missing (Debian packages).
set -e
need=""
command -v ip >/dev/null 2>&1 || need="$need iproute2"
command -v dig >/dev/null 2>&1 || need="$need bind9-dnsutils"
command -v kdig >/dev/null 2>&1 || need="$need knot-dnsutils"
command -v knotd >/dev/null 2>&1 || [ -x /usr/sbin/knotd ] || need="$need knot"
# openssl makes the test CA of DoT tests and the lab; dnsdist's TLS frontend is the DoT
# interop peer.
command -v openssl >/dev/null 2>&1 || need="$need openssl"
command -v dnsdist >/dev/null 2>&1 || need="$need dnsdist"
# libpcap compiles the capture filter of `dnstfo probe --pcap`; tshark reads the pcap back
# in the tests.
ldconfig -p 2>/dev/null | grep -q 'libpcap\.so' || need="$need libpcap0.8"
command -v tshark >/dev/null 2>&1 || need="$need tshark"
[ -z "$need" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "missing system packages:$need (install them as root: apt-get install$need)" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
# tshark's package asks whether to install dumpcap setuid; answer no without a prompt.
echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
apt-get update -qq
apt-get install -y -qq --no-install-recommends $need >/dev/null
