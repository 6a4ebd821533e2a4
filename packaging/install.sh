#!/bin/sh
# Installs exota-milter on a systemd host (or into $DESTDIR for packaging):
#   dist/exota-milter      -> /usr/local/bin/exota-milter
#   systemd units          -> /etc/systemd/system/
#   env file, policy       -> /etc/exota-milter/ (never overwritten)
#   README                 -> /usr/local/share/doc/exota-milter/
#   man page exota-milter(8) -> /usr/local/share/man/man8/ (what the binary prints
#                             with --man, else exota-milter.8 beside it)
# Creates the system user exota-milter when installing into the live system.
# Usage: sudo packaging/install.sh [path/to/exota-milter]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
binary=${1:-$top/dist/exota-milter}
dest=${DESTDIR:-}

# A downloaded release executable is not executable yet: install sets the mode.
[ -f "$binary" ] || { echo "install.sh: $binary not found; run npm run build first" >&2; exit 1; }

install -d "$dest/usr/local/bin" "$dest/etc/systemd/system" "$dest/etc/exota-milter" "$dest/usr/local/share/doc/exota-milter" \
  "$dest/usr/local/share/man/man8"
install -m 0755 "$binary" "$dest/usr/local/bin/exota-milter"
install -m 0644 "$here/systemd/exota-milter.socket" "$here/systemd/exota-milter.service" "$dest/etc/systemd/system/"
install -m 0644 "$top/README.md" "$dest/usr/local/share/doc/exota-milter/README.md"
# The man page of exactly this binary; a binary for another CPU (packaging
# into DESTDIR) cannot run here, so then the build's page beside it.
man=$dest/usr/local/share/man/man8/exota-milter.8
if "$dest/usr/local/bin/exota-milter" --man >"$man" 2>/dev/null || install -m 0644 "$(dirname "$binary")/exota-milter.8" "$man" 2>/dev/null; then
  chmod 0644 "$man"
else
  rm -f "$man"
  echo "install.sh: no man page: $binary --man did not run here and there is no exota-milter.8 beside it" >&2
fi
# Settings and policy belong to the postmaster: never replace them.
for pair in "exota-milter.env:$here/exota-milter.env" "policy.json:$top/policy.example.json"; do
  name=${pair%%:*}
  src=${pair#*:}
  if [ -e "$dest/etc/exota-milter/$name" ]; then
    echo "install.sh: keeping existing /etc/exota-milter/$name"
  else
    install -m 0640 "$src" "$dest/etc/exota-milter/$name"
  fi
done

if [ -z "$dest" ]; then
  getent group exota-milter >/dev/null || groupadd --system exota-milter
  getent passwd exota-milter >/dev/null ||
    useradd --system --gid exota-milter --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin exota-milter
  chgrp exota-milter /etc/exota-milter/exota-milter.env /etc/exota-milter/policy.json
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    echo "install.sh: now edit /etc/exota-milter/*, then: systemctl enable --now exota-milter.socket"
  fi
fi
echo "install.sh: installed into ${dest:-/}"
