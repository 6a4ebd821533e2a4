#!/usr/bin/env bash
# Installs what `npm run bench` needs besides Node.js and npm:
#   gcc, libc6-dev   to build the reference filter (bench/reference/null-filter.c)
#   libmilter-dev    the libmilter it is built on
#   python3          bench/first-answer.py hands the start-up row its socket
# Run as root (or with sudo) on Debian 12.
set -euo pipefail
if [ "$(id -u)" -ne 0 ]; then
  echo "bench-deps.sh: run as root, e.g. sudo $0" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
packages=(gcc libc6-dev libmilter-dev python3)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
echo "bench-deps.sh: ${packages[*]} installed"
