#!/usr/bin/env bash
# Shared set-up for tools/test.sh and tools/demo.sh: the Debian packages the appliance and
# its lab need, then a venv in .venv with the project installed (a plain, non-editable
# install: what an operator gets). Idempotent; needs root for apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
    python3 python3-venv            # the runtime
    gcc python3-dev                 # the optional C accelerators (without them the plain Python paths run)
    iproute2 iptables iputils-ping socat kmod   # the namespace lab: links, NAT, ping, TCP transfer
    miredo miredo-server            # the reference implementation we interoperate with
    openssh-client                  # the console tests log in with a real ssh
    man-db groff-base               # the manual pages are rendered and linted
    systemd                         # systemd-analyze rates etc/teredo.service (--offline, no running systemd)
    util-linux                      # setpriv: the lab runs the daemon confined as that unit says
    miniupnpd-iptables miniupnpc    # the lab's UPnP IGD on a symmetric NAT (legacy iptables flavour, see LAB-NOTES) and upnpc to check it
    bird2                           # the anycast lab's BGP routers (one foreground BIRD per namespace; the host's service never starts)
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "setup: these Debian packages are missing and installing them needs root: ${missing[*]}" >&2
        exit 1
    fi
    echo "setup: installing ${missing[*]}"
    # Installing miredo must not start Debian's miredo service (it would dial a public
    # Teredo server): block service starts for the duration, unless a policy already does.
    policy=/usr/sbin/policy-rc.d
    own_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy" && own_policy=1
    fi
    trap '[ -n "$own_policy" ] && rm -f "$policy"' EXIT
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip 2>/dev/null || true
.venv/bin/python -m pip install -q '.[test]'
# The optional C accelerators are built in place as well: the tests and the lab import the
# package from this checkout, not the installed copy. setuptools (74.1 and later) reads them
# from pyproject.toml. Without a compiler the plain Python paths run (the wheel installs either way).
.venv/bin/python -m pip install -q 'setuptools>=77'
.venv/bin/python -c 'import setuptools; setuptools.setup()' -q build_ext --inplace 2>/dev/null \
    || echo "setup: the C accelerators did not build (no compiler?): the plain Python paths will run" >&2
