#!/usr/bin/env bash
# `make run`: start portgate for real inside a demo network of namespaces (see netns-lab.sh),
# print how to try it, and remove everything on Ctrl-C or exit.
set -euo pipefail
cd "$(dirname "$0")/.."
here=$(pwd)
prefix=${PORTGATE_DEMO_PREFIX:-pgdemo}
rundir=${PORTGATE_DEMO_DIR:-/run/portgate-demo}
[ "$(id -u)" -eq 0 ] || { echo "make run needs root (network namespaces)" >&2; exit 1; }

daemon=""
cleanup() {
    trap - EXIT INT TERM
    if [ -n "$daemon" ] && kill -0 "$daemon" 2>/dev/null; then
        kill -TERM "$daemon" 2>/dev/null || true
        wait "$daemon" 2>/dev/null || true
    fi
    scripts/netns-lab.sh down "$prefix"
    rm -rf "$rundir"
    echo "demo network removed"
}
trap cleanup EXIT INT TERM

scripts/netns-lab.sh up "$prefix"
mkdir -p "$rundir"
cat > "$rundir/portgate.yaml" <<YAML
# demo configuration written by scripts/demo.sh
wan:
  interface: wan0
lan:
  - interface: br-lan
state:
  lease_file: $rundir/leases.sqlite3
control:
  socket: $rundir/control.sock
YAML

ip netns exec "$prefix-gw" "$here/.venv/bin/portgate" run --config "$rundir/portgate.yaml" &
daemon=$!
for _ in $(seq 50); do
    [ -S "$rundir/control.sock" ] && break
    kill -0 "$daemon" 2>/dev/null || { echo "portgate did not start" >&2; exit 1; }
    sleep 0.1
done

ctl="ip netns exec $prefix-gw $here/.venv/bin/portgate"
lan="ip netns exec $prefix-lan"
cat <<TXT

portgate is running in namespace $prefix-gw (pid $daemon), nftables backend
  LAN host: $prefix-lan (192.168.77.10, fd77::10)   WAN host: $prefix-wan (203.0.113.2)
  external address: 203.0.113.1 (learned from wan0)

Try it from another terminal, as a LAN client would:
  $lan upnpc -i -l                                  # find the gateway by SSDP, show its state
  $lan upnpc -i -a 192.168.77.10 8000 8080 TCP 600  # UPnP: map 203.0.113.1:8080 -> :8000
  $lan natpmpc -g 192.168.77.1 -a 9000 9000 udp 600 # NAT-PMP: map UDP 9000
  $lan upnpc -i -d 8080 TCP                         # remove it again
(-i: upnpc refuses the lab's documentation address 203.0.113.1 as "not connected" otherwise)

And as the administrator:
  $ctl list --socket $rundir/control.sock
  $ctl status --socket $rundir/control.sock
  $ctl add tcp 8443 192.168.77.10:443 --lifetime 600 --socket $rundir/control.sock
  ip netns exec $prefix-gw nft list table inet portgate   # the kernel's view
  kill -HUP $daemon          # reload $rundir/portgate.yaml

Press Ctrl-C to stop portgate and remove the demo network.
TXT
wait "$daemon"

