#!/bin/sh
# Removes what install.sh installed (binary, units, README, man page), except
# /etc/exota-milter (settings and policy stay; remove them by hand) and the
# exota-milter user.
set -eu
dest=${DESTDIR:-}
if [ -z "$dest" ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  systemctl disable --now exota-milter.socket exota-milter.service 2>/dev/null || true
fi
rm -f "$dest/usr/local/bin/exota-milter" "$dest/usr/local/share/man/man8/exota-milter.8" \
  "$dest/etc/systemd/system/exota-milter.socket" "$dest/etc/systemd/system/exota-milter.service"
rm -rf "$dest/usr/local/share/doc/exota-milter"
if [ -z "$dest" ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
fi
echo "uninstall.sh: removed from ${dest:-/}; /etc/exota-milter was kept"
