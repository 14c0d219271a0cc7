#!/usr/bin/env bash
# System packages the test suite needs, installed with apt-get when missing.
set -euo pipefail

packages=()
need() { command -v "$1" >/dev/null 2>&1 || packages+=("$2"); }

need redis-server redis-server   # tests/integration/test_redis_store.py
need curl curl                   # tests/integration/test_readme.py runs the README's curl lines
# tests/browser/: Playwright drives Debian's Chromium at /usr/bin/chromium (no browser download)
[ -x /usr/bin/chromium ] || packages+=(chromium)

if [ ${#packages[@]} -eq 0 ]; then
    exit 0
fi
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
echo "installing system packages: ${packages[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${packages[@]}" >/dev/null
