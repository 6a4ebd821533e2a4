#!/usr/bin/env bash
# Installs what `npm run bench` needs besides Node.js and npm:
#   gcc, libc6-dev   to build the reference filter (bench/reference/null-filter.c)
#   libmilter-dev    the libmilter it is built on
#   python3          bench/first-answer.py hands the start-up row its socket
# Run as root (or with sudo) on Debian 12.
set -euo pipefail
exec "$(dirname "$0")/apt-install.sh" bench-deps.sh gcc libc6-dev libmilter-dev python3
