#!/usr/bin/env bash
# Install what portgate needs on Debian 12, as root, idempotently:
#  - Debian packages (nftables and its Python module, iproute2, real clients for the tests),
#  - a .venv made from Debian's own python3 with --system-site-packages, so that libnftables'
#    Python module (python3-nftables) is importable inside it,
#  - the project itself, editable, with its test extras.
# A second run finds everything in place and returns within a second or two.
set -euo pipefail
cd "$(dirname "$0")/.."

# coturn: a real STUN server for the CGNAT test (tests/robustness/test_cgnat.py runs its
# turnserver inside a namespace; the system service it ships is disabled below).
DEB_PACKAGES=(nftables python3-nftables iproute2 python3-venv procps miniupnpc natpmpc python3-libtorrent python3-miniupnpc systemd coturn)
PY=/usr/bin/python3
VENV=.venv
STAMP="$VENV/.portgate-installed"

missing=()
for pkg in "${DEB_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: missing Debian packages: ${missing[*]}; run as root (or apt-get install them)" >&2
        exit 1
    fi
    echo "setup: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if [[ " ${missing[*]} " == *" coturn "* ]]; then
        # Debian enables coturn's own STUN/TURN service on install; the tests need only the
        # binary, so do not leave a server listening on every interface of this machine.
        systemctl disable --now coturn.service >/dev/null 2>&1 || true
    fi
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV from $PY (with Debian's site packages)"
    "$PY" -m venv --system-site-packages "$VENV"
fi

if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
    echo "setup: installing portgate and its test dependencies into $VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]'
    touch "$STAMP"
fi

"$VENV/bin/python" -c 'import nftables' 2>/dev/null || {
    echo "setup: the venv cannot import nftables (python3-nftables); was it made from $PY?" >&2
    exit 1
}
