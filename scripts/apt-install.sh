#!/usr/bin/env bash
# Installs the given Debian packages that are not installed yet, without
# recommends; the shared part of test-deps.sh and bench-deps.sh.
#   apt-install.sh NAME PACKAGE...     (NAME labels the messages)
# Run as root (or with sudo) on Debian 12.
set -euo pipefail
name=$1
shift
if [ "$(id -u)" -ne 0 ]; then
  echo "$name: run as root, e.g. sudo ./scripts/$name" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
missing=()
for p in "$@"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
echo "$name: $* installed"
