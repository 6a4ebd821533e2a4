#!/usr/bin/env bash
# Installs what `npm run bench` and `npm run bench:chain` need besides Node.js and npm:
#   gcc, libc6-dev   to build the reference filters and the C load generator (bench/reference/)
#   libmilter-dev    the libmilter they are built on
#   python3          bench/first-answer.py hands the start-up row its socket
#   postfix, opendkim, swaks, libnet-ssleay-perl, python3-dkim, openssl
#                    the private Postfix chain of tests/e2e that bench:chain drives
#                    (smtp-source and smtp-sink come with postfix)
#   strace           times each smtp-source session (connect to close)
# Run as root (or with sudo) on Debian 12.
set -euo pipefail
if [ "$(id -u)" -ne 0 ]; then
  echo "bench-deps.sh: run as root, e.g. sudo $0" >&2
  exit 1
fi
# The bench runs its own Postfix instance; /etc/postfix stays unconfigured.
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
exec "$(dirname "$0")/apt-install.sh" bench-deps.sh gcc libc6-dev libmilter-dev python3 \
  postfix opendkim swaks libnet-ssleay-perl python3-dkim openssl strace
