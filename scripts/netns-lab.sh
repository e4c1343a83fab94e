#!/usr/bin/env bash
# A self-contained lab of network namespaces, like a home router:
#   <prefix>-gw   the gateway: br-lan (192.168.77.1/24, fd77::1/64) and wan0 (203.0.113.1/24)
#   <prefix>-gw   ... and wan0 2001:db8:ff::1/64 for IPv6
#   <prefix>-lan  a LAN host: eth0 192.168.77.10/24, fd77::10/64, default via the gateway
#   <prefix>-lan2 a second LAN host: eth0 192.168.77.11/24, fd77::11/64
#   <prefix>-wan  a WAN host: eth0 203.0.113.2/24 and 203.0.113.3/24, 2001:db8:ff::2/64
# Usage: netns-lab.sh up PREFIX | down PREFIX
# Namespaces have their own stacks, so these addresses never collide with the machine's.
set -euo pipefail
action=${1:?usage: netns-lab.sh up|down PREFIX}
prefix=${2:?usage: netns-lab.sh up|down PREFIX}
gw=$prefix-gw lan=$prefix-lan lan2=$prefix-lan2 wan=$prefix-wan

down() {
    for ns in "$gw" "$lan" "$lan2" "$wan"; do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true
    done
}

sysctl_in() { ip netns exec "$1" sysctl -qw "$2" >/dev/null 2>&1 || true; }

up() {
    down
    for ns in "$gw" "$lan" "$lan2" "$wan"; do
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        sysctl_in "$ns" net.ipv6.conf.all.accept_dad=0
        sysctl_in "$ns" net.ipv6.conf.default.accept_dad=0
        sysctl_in "$ns" net.ipv4.conf.all.rp_filter=0
        sysctl_in "$ns" net.ipv4.conf.default.rp_filter=0
    done
    # the gateway's LAN bridge, as OpenWrt's br-lan
    ip -n "$gw" link add br-lan type bridge
    ip -n "$gw" link add lan1 type veth peer name eth0 netns "$lan"
    ip -n "$gw" link set lan1 master br-lan
    ip -n "$gw" link add lan2 type veth peer name eth0 netns "$lan2"
    ip -n "$gw" link set lan2 master br-lan
    ip -n "$gw" link add wan0 type veth peer name eth0 netns "$wan"
    for sys in bridge-nf-call-iptables bridge-nf-call-ip6tables bridge-nf-call-arptables; do
        sysctl_in "$gw" "net.bridge.$sys=0"
    done
    sysctl_in "$gw" net.ipv4.ip_forward=1
    sysctl_in "$gw" net.ipv6.conf.all.forwarding=1
    ip -n "$gw" addr add 192.168.77.1/24 dev br-lan
    ip -n "$gw" addr add fd77::1/64 dev br-lan nodad
    ip -n "$gw" addr add 203.0.113.1/24 dev wan0
    ip -n "$gw" addr add 2001:db8:ff::1/64 dev wan0 nodad
    for dev in br-lan lan1 lan2 wan0; do ip -n "$gw" link set "$dev" up; done

    ip -n "$lan" addr add 192.168.77.10/24 dev eth0
    ip -n "$lan" addr add fd77::10/64 dev eth0 nodad
    ip -n "$lan" link set eth0 up
    ip -n "$lan" route add default via 192.168.77.1
    ip -n "$lan" route add 224.0.0.0/4 dev eth0
    ip -n "$lan" -6 route add default via fd77::1

    ip -n "$lan2" addr add 192.168.77.11/24 dev eth0
    ip -n "$lan2" addr add fd77::11/64 dev eth0 nodad
    ip -n "$lan2" link set eth0 up
    ip -n "$lan2" route add default via 192.168.77.1
    ip -n "$lan2" route add 224.0.0.0/4 dev eth0
    ip -n "$lan2" -6 route add default via fd77::1

    ip -n "$wan" addr add 203.0.113.2/24 dev eth0
    ip -n "$wan" addr add 203.0.113.3/24 dev eth0
    ip -n "$wan" addr add 2001:db8:ff::2/64 dev eth0 nodad
    ip -n "$wan" link set eth0 up
    ip -n "$wan" -6 route add fd77::/64 via 2001:db8:ff::1
    # a WAN neighbour that routes the LAN prefix at us (as an attacker upstream could)
    ip -n "$wan" route add 192.168.77.0/24 via 203.0.113.1
}

case "$action" in
    up) up ;;
    down) down ;;
    *) echo "usage: netns-lab.sh up|down PREFIX" >&2; exit 2 ;;
esac
