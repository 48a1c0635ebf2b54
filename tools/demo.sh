#!/usr/bin/env bash
# The README's first command: install everything (see tools/setup.sh), then run the demo:
# every role ours in network namespaces, server and relay in one twistd process, the six
# checks and each process's status() read over its SSH console. Needs root.
# `bash tools/demo.sh --keep` leaves the lab up and prints how to log in and tear it down.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "demo: run as root (the lab creates network namespaces, TUN devices and NAT rules)" >&2
    exit 1
fi
bash tools/setup.sh
exec .venv/bin/teredo-lab demo "$@"
